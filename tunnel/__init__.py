"""Ambassador's shared core.

Read it top-down: the sans-IO protocol first (``frames`` -> ``windows`` -> ``session``, with
``events``, ``errors`` and ``limits`` beside it; ``messages`` is the application layer spoken on
top of yamux streams; ``links`` and ``config`` parse what the user gives us), then the thin
asyncio layer (``transport`` drives a session over a socket, ``relay`` joins a local TCP
connection to one stream), and finally the two roles in the ``server`` and ``client`` packages.
"""

__version__ = "0.1.0"
