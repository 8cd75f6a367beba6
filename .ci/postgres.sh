#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the PostgreSQL tests (tests/test_postgres.py,
# tests/test_migrations.py).
#
#   eval "$(.ci/postgres.sh start)"   # prints export lines for the two variables below
#   .ci/postgres.sh stop              # stops the server and deletes its folder
#
# start: installs Debian's postgresql when its binaries are missing (apt-get), creates a cluster
# in a new temporary folder with initdb (no systemd, no system cluster touched: other servers on
# this machine keep running), starts it with pg_ctl on 127.0.0.1 and a free port, creates a role
# and a database for the tests, and prints on stdout
#     export MODELFORGE_TEST_POSTGRES_URL=postgresql+psycopg://modelforge:PASSWORD@127.0.0.1:PORT/modelforge_test
#     export MODELFORGE_TEST_POSTGRES_DIR=/tmp/modelforge-pg.XXXXXX
# Everything else goes to stderr. The role may create databases: tests/test_postgres.py makes a
# fresh one per test. The database's default time zone is deliberately not UTC (Asia/Kolkata), so
# that a datetime stored in the session's zone instead of UTC shows up in the tests.
#
# Runs as root (CI: the server runs as the postgres user, through runuser) or as an ordinary user
# who can run initdb. MODELFORGE_PG_PORT picks the port (default: a free one).
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] && echo "$bin"
}

as_owner() {  # run a server command as the cluster's owner
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local bin dir port password
    bin=$(pg_bin || true)
    if [ -z "$bin" ]; then
        [ "$(id -u)" = 0 ] || { say "PostgreSQL is not installed; run as root, or: sudo apt-get install -y postgresql"; exit 1; }
        say "installing Debian's postgresql..."
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(pg_bin)
    fi
    dir=$(mktemp -d /tmp/modelforge-pg.XXXXXX)
    chmod 755 "$dir"
    port=${MODELFORGE_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
        chown postgres: "$dir"
    fi
    # Local socket connections (in $dir) trust the owner; TCP needs the password.
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2 \
        || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q >&2 <<SQL
CREATE ROLE modelforge LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE modelforge_test OWNER modelforge;
ALTER DATABASE modelforge_test SET timezone TO 'Asia/Kolkata';
SQL
    say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (folder $dir)"
    echo "export MODELFORGE_TEST_POSTGRES_URL=postgresql+psycopg://modelforge:$password@127.0.0.1:$port/modelforge_test"
    echo "export MODELFORGE_TEST_POSTGRES_DIR=$dir"
}

stop() {
    local dir=${1:-${MODELFORGE_TEST_POSTGRES_DIR:-}} bin
    [ -n "$dir" ] && [ -d "$dir/data" ] || { say "no server folder given (MODELFORGE_TEST_POSTGRES_DIR)"; return 0; }
    case "$dir" in /tmp/modelforge-pg.*) ;; *) say "refusing to remove $dir"; return 1 ;; esac
    bin=$(pg_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
}

case "${1:-start}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) say "usage: $0 [start|stop [DIR]]"; exit 2 ;;
esac
