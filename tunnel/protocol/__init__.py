"""The sans-IO protocol: bytes and the current time in, events and bytes out.

yamux framing (``frames``), one stream's life (``streams``) and window (``windows``), the
session that joins them (``session``, reporting ``events``), the numbers that bound it all
(``limits``), the application layer spoken on top (``messages``), and how a string that came
from a peer is shown (``peertext``). Nothing here imports asyncio, socket, ssl, time or any
other folder of the project but ``tunnel.errors``: tests/tunnel/test_sansio.py checks it.
"""
