"""Worker processes: a role on more than one core, and bulk traffic kept apart from the rest.

With ``--workers N`` the role's main process runs exactly as it does alone (it listens, serves
the metrics endpoint, reloads, drains) and starts N-1 helpers: the same program with the same
arguments, told by ``AMBASSADOR_WORKER_FD`` that it is a helper and which descriptor leads back
to the main process. The main process accepts every connection, then keeps it or hands the
socket to a helper over that channel (a ``SOCK_SEQPACKET`` pair carrying the descriptor), and
the helper serves it from then on with its own tunnel connection.

Which process takes a connection is the role's choice:

- the server spreads tunnel connections by how many each process holds (few, long-lived);
- the client keeps a new consumer connection in the main process unless that one is busy
  with bulk data, and then sends it to the helper wanting the least CPU, so that a PING does
  not queue behind a bulk transfer's reads and writes. One event loop cannot answer quickly
  while it moves bulk data; another process can.

The channel carries scrapes too: the main process asks every helper for its metrics and status
and serves them merged, each series labelled with the ``worker`` it came from.

One module per part: ``pool`` (the main process's helpers: started, chosen, restarted,
stopped), ``handoff`` (an accepted connection on its way to a helper), ``channel`` (the
helper's end of the channel and its messages), ``report`` (what a helper answers a scrape),
``merge`` (its reports merged into the main process's metrics and status), ``logtag`` (a
helper's log lines tagged with its number).
"""
