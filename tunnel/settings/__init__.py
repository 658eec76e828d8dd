"""What the operator asks for: flags, config files, links, and the words the roles print.

Common command-line options and one-line errors (``cli``), TOML config files (``config``),
``--link``/``--expose`` and the catalog (``links``), the effective configuration rendered back
(``effective``), and how counts and addresses are written (``wording``).
"""
