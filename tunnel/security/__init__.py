"""Who may connect and what they may reach.

TLS contexts (``tls``), certificates of the private CA (``certs``) and their files
(``pemfiles``, ``issued``), tokens (``auth``), channel binding (``binding``), access rules
(``access``), and the check a reload runs on the sessions already admitted (``trust``).
"""
