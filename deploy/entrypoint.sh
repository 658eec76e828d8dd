#!/bin/sh
# Entrypoint of the Ambassador image: choose a role, then exec it, so that the role is PID 1
# and receives the signals itself (SIGTERM drains, SIGHUP reloads).
#
#   (no arguments)   drop-in for the old svendowideit/ambassador image: plain per-port
#                    forwarding, on 0.0.0.0, of every service named by the Docker link
#                    variables (REDIS_PORT_6379_TCP=tcp://HOST:6379), without a tunnel peer
#   server ARGS...   ambassador-server ARGS...   (also: server certs ..., server status)
#   client ARGS...   ambassador-client ARGS...   (also: client status)
#   --FLAG ...       flags without a role go to ambassador-server
set -eu

if [ "$#" -eq 0 ]; then
    exec ambassador-server --links-from-env --forward
fi

case "$1" in
    server)
        shift
        exec ambassador-server "$@"
        ;;
    client)
        shift
        exec ambassador-client "$@"
        ;;
    -*)
        exec ambassador-server "$@"
        ;;
    *)
        echo "ambassador: unknown role '$1': give 'server ARGS...', 'client ARGS...'," \
            "or no arguments for drop-in forwarding of the linked containers" >&2
        exit 2
        ;;
esac
