"""Ambassador's shared core, in folders by layer; imports run one way (docs/architecture.md).

Read it bottom-up: the sans-IO protocol first (``protocol``: ``frames`` -> ``windows`` ->
``session``, with ``events`` and ``limits`` beside it; ``messages`` is the application layer
spoken on top of yamux streams), with ``errors`` beside every folder; then what the user gives
us (``settings``: ``links``, ``config``, ``cli``), who may connect (``security``) and how a
running role is watched (``operations``); then the thin asyncio layer (``aio``: ``transport``
drives a session over a socket, ``relay`` joins a local TCP connection to one stream), and
finally the two roles in the ``server`` and ``client`` packages.
"""

__version__ = "0.1.0"
