#!/usr/bin/env bash
# A project-local PostgreSQL cluster for the Prefect server (DESIGN §1, docs/orchestration.md).
#
#   scripts/pg-server.sh start    # initdb on first use, start, create the database
#   scripts/pg-server.sh stop     # fast shutdown
#   scripts/pg-server.sh status   # exit 0 when running
#   scripts/pg-server.sh url      # the SQLAlchemy URL for PREFECT_API_DATABASE_CONNECTION_URL
#
# Settings (environment):
#   SCIML_PG_DIR   cluster folder (default: .pg in the repository; holds data/ and postgres.log)
#   SCIML_PG_PORT  TCP port (default 5433, so that a system PostgreSQL on 5432 is left alone)
#   SCIML_PG_HOST  listen address (default 127.0.0.1: the database is not reachable from other
#                  machines; the Prefect server in front of it is what a team shares)
#   SCIML_PG_DB / SCIML_PG_USER   database and role (default: prefect / prefect)
#   PG_BIN         folder of the PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#
# Authentication is `trust` on the listen address only, which is fine for 127.0.0.1. Bind it to
# another address only with a password (see docs/orchestration.md).
# PostgreSQL refuses to run as root: as root the cluster is owned by and run as `postgres`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${SCIML_PG_DIR:-$here/.pg}"
port="${SCIML_PG_PORT:-5433}"
host="${SCIML_PG_HOST:-127.0.0.1}"
db="${SCIML_PG_DB:-prefect}"
user="${SCIML_PG_USER:-prefect}"

die() { echo "pg-server: $*" >&2; exit 1; }

if [ -z "${PG_BIN:-}" ]; then
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] ||
    die "no PostgreSQL binaries (looked in /usr/lib/postgresql/*/bin; set PG_BIN). On Debian/Ubuntu: apt-get install -y postgresql"

data="$dir/data"
log="$dir/postgres.log"

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

init() {
    mkdir -p "$dir"
    # keep the cluster out of git without touching the repository's .gitignore
    [ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (apt-get install postgresql creates it)"
        chown postgres: "$dir"
        as_owner test -w "$dir" ||
            die "user postgres cannot write $dir (a parent folder is not searchable: chmod o+x it)"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "pg-server: initdb $data" >&2
        as_owner "$PG_BIN/initdb" -D "$data" -U "$user" --auth=trust --encoding=UTF8 \
            --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    if [ "$(id -u)" = 0 ]; then
        touch "$log" && chown postgres: "$log"
    fi
}

running() {
    [ -f "$data/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

psql_() {
    as_owner "$PG_BIN/psql" -X -q -h "$host" -p "$port" -U "$user" "$@"
}

start() {
    init
    if running; then
        echo "pg-server: already running ($data)" >&2
    else
        # TCP only (no Unix socket, whose folder may not be writable); fsync stays on.
        as_owner "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
            -o "-c listen_addresses=$host -p $port -c unix_socket_directories=''" start >/dev/null ||
            { tail -n 20 "$log" >&2; die "PostgreSQL did not start (log: $log)"; }
    fi
    if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        psql_ -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    fi
    echo "pg-server: running on $host:$port, database $db ($data)" >&2
}

stop() {
    if running; then
        as_owner "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
        echo "pg-server: stopped" >&2
    else
        echo "pg-server: not running" >&2
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) running ;;
url) echo "postgresql+asyncpg://$user@$host:$port/$db" ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 64
    ;;
esac
