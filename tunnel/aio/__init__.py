"""The asyncio adapter: moves bytes between sockets and the sans-IO protocol.

``transport`` drives a :class:`~tunnel.protocol.session.Session` over a socket (and its
timers), ``relay`` joins a local connection to one stream, ``tlslayer`` puts TLS between a
socket and the transport.
"""
