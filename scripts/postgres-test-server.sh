#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, from Debian's packages.
#
#   scripts/postgres-test-server.sh start DIR   # installs PostgreSQL if absent, starts a server with its
#                                               # data in DIR (e.g. a new /tmp/pg-XXXX) on a free port;
#                                               # prints postgresql://... on stdout
#   scripts/postgres-test-server.sh stop DIR    # stops it and removes DIR
#
# The server listens on 127.0.0.1 only, trusts local connections (superuser "postgres") and runs with
# fsync off: it is for tests. PostgreSQL refuses to run as root, so as root it runs as the "postgres"
# user the Debian package creates. Idempotent: the install is skipped when initdb exists.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2

pg_bin() {
    local candidates=(/usr/lib/postgresql/*/bin/initdb)
    [ -x "${candidates[-1]}" ] || return 1
    dirname "$(printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1)"
}

install_postgresql() {
    echo "installing Debian's postgresql (one-time)..." >&2
    "$(dirname "$0")/apt-install.sh" postgresql
}

# Run a PostgreSQL program as a user it accepts: ourselves, or "postgres" when we are root.
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$action" in
start)
    bin=$(pg_bin) || { install_postgresql; bin=$(pg_bin); }
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
    as_server_user test -w "$dir" || { echo "$dir is not writable by the server's user (as root: its parents must be traversable by 'postgres')" >&2; exit 1; }
    as_server_user "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(free_port)
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        >&2 || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    bin=$(pg_bin)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_server_user "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
*)
    usage
    ;;
esac
