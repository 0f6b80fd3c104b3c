#!/usr/bin/env bash
# A project-local PostgreSQL cluster for the Prefect server (docs/orchestration.md).
#
#   scripts/pg-server.sh start    # initdb on first use, start, create the database
#   scripts/pg-server.sh stop     # fast shutdown
#   scripts/pg-server.sh status   # exit 0 when running
#   scripts/pg-server.sh url      # the SQLAlchemy URL for PREFECT_API_DATABASE_CONNECTION_URL
#                                 # (it holds the password: capture it, never log it)
#
# Settings (environment):
#   SCIML_PG_DIR   cluster folder (default: .pg in the repository; holds data/, postgres.log and
#                  the owner-only secrets `password` and `url`)
#   SCIML_PG_PORT  TCP port (default 5433, so that a system PostgreSQL on 5432 is left alone)
#   SCIML_PG_HOST  listen address (default 127.0.0.1: the database is not reachable from other
#                  machines; the Prefect server in front of it is what a team shares)
#   SCIML_PG_DB / SCIML_PG_USER   database and role (default: prefect / prefect)
#   PG_BIN         folder of the PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#
# Authentication is scram-sha-256 with a generated password, on every line of pg_hba.conf (no
# `trust`: on a shared machine every local user can reach 127.0.0.1). The password is generated
# at initdb and kept in SCIML_PG_DIR/password (mode 0600); SCIML_PG_DIR/url (0600) holds the full
# connection URL. A cluster made by an older version of this script with `trust` is switched to
# scram-sha-256 on its next start. The password never appears in a command line or a log.
# PostgreSQL refuses to run as root: as root the cluster is owned by and run as `postgres` (the
# secrets stay root's: only the client side needs them).
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
pwfile="$dir/password"
urlfile="$dir/url"

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# check_private FILE: the invoking user's, readable and writable by that user only.
. "$here/scripts/secret-file.sh"

# 32 random characters from [A-Za-z0-9_-] (URL-safe: no escaping in the connection URL).
new_secret() {
    head -c 24 /dev/urandom | base64 | tr '+/' '-_'
}

# The password into $pw (a plain statement: `die` here must end the script).
load_password() {
    [ -f "$pwfile" ] || die "no password in $pwfile (run: $0 start)"
    check_private "$pwfile"
    IFS= read -r pw <"$pwfile" || true
    [ -n "$pw" ] || die "$pwfile is empty"
}

url() {
    printf 'postgresql+asyncpg://%s:%s@%s:%s/%s\n' "$user" "$pw" "$host" "$port" "$db"
}

init() {
    # parents as usual (as root, `postgres` must be able to traverse them) ...
    mkdir -p "$(dirname "$dir")"
    # ... and from here on everything is owner-only: the cluster folder and the secrets
    umask 077
    mkdir -p "$dir"
    chmod 700 "$dir"
    # keep the cluster out of git without touching the repository's .gitignore
    [ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (apt-get install postgresql creates it)"
        chown postgres: "$dir"  # root's secrets in it stay root's (0600)
        as_owner test -w "$dir" ||
            die "user postgres cannot write $dir (a parent folder is not searchable: chmod o+x it)"
    fi
    if [ ! -f "$pwfile" ]; then
        if [ -f "$data/PG_VERSION" ] && ! trust_lines >/dev/null; then
            die "the cluster in $data needs the password that was in $pwfile: restore that file, or remove $dir to start afresh"
        fi
        new_secret >"$pwfile.tmp"
        mv "$pwfile.tmp" "$pwfile"
    fi
    load_password
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "pg-server: initdb $data (scram-sha-256, password in $pwfile)" >&2
        # initdb reads the superuser's password from a file, as the cluster owner: a copy only
        # that owner can read, removed right after.
        local tmp="$dir/.initdb-pw"
        printf '%s\n' "$pw" >"$tmp"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$tmp"; fi
        if ! as_owner "$PG_BIN/initdb" -D "$data" -U "$user" --auth=scram-sha-256 --pwfile="$tmp" \
            --encoding=UTF8 --no-instructions >"$dir/initdb.log" 2>&1; then
            rm -f "$tmp"
            cat "$dir/initdb.log" >&2
            die "initdb failed"
        fi
        rm -f "$tmp"
    fi
    if [ "$(id -u)" = 0 ]; then
        touch "$log" && chown postgres: "$log"
    fi
}

# Lines of pg_hba.conf (not comments) whose method is `trust`.
trust_lines() {
    as_owner grep -En '^[[:space:]]*[^#[:space:]].*[[:space:]]trust([[:space:]]|$)' "$data/pg_hba.conf"
}

running() {
    [ -f "$data/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

# psql as the invoking user over TCP (a client needs no cluster ownership); the password goes
# through the environment of psql alone, never its command line.
psql_() {
    PGPASSWORD="$pw" PGCONNECT_TIMEOUT=10 \
        "$PG_BIN/psql" -X -q -w -h "$host" -p "$port" -U "$user" "$@"
}

# A cluster from before scram: give the role the password, then replace `trust` in pg_hba.conf.
# The statement is read from stdin and kept out of the server log (even if it fails).
migrate_from_trust() {
    echo "pg-server: switching $data/pg_hba.conf from trust to scram-sha-256" >&2
    {
        echo "SET log_statement = 'none'; SET log_min_error_statement = 'panic';"
        echo "SET password_encryption = 'scram-sha-256';"
        printf 'ALTER ROLE "%s" PASSWORD '"'"'%s'"'"';\n' "$user" "$pw"
    } | PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -q -w -v ON_ERROR_STOP=1 -h "$host" -p "$port" \
        -U "$user" -d postgres >/dev/null || die "could not set the password of role $user"
    as_owner sed -E -i \
        's/^([[:space:]]*[^#[:space:]].*[[:space:]])trust([[:space:]]*(#.*)?)$/\1scram-sha-256\2/' \
        "$data/pg_hba.conf"
    ! trust_lines >/dev/null || die "$data/pg_hba.conf still has trust lines: edit it by hand"
    as_owner "$PG_BIN/pg_ctl" -D "$data" reload >/dev/null
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
    if trust_lines >/dev/null; then
        migrate_from_trust
    fi
    if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        psql_ -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    fi
    url >"$urlfile.tmp"
    mv "$urlfile.tmp" "$urlfile"
    echo "pg-server: running on $host:$port, database $db ($data; connection URL in $urlfile)" >&2
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
url)
    load_password
    url
    ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 64
    ;;
esac
