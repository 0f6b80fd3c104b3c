#!/usr/bin/env bash
# A Prefect server on PostgreSQL, in the foreground (`make server`). Ctrl-C stops both.
#
#   scripts/prefect-server.sh            # UI and API on http://127.0.0.1:4200
#   PREFECT_SERVER_API_HOST=0.0.0.0 scripts/prefect-server.sh   # serve the team's network
#   scripts/prefect-server.sh --check    # settings and secrets only: starts nothing
#
# The API asks for HTTP basic authentication (Prefect's PREFECT_SERVER_API_AUTH_STRING): the
# auth string `user:password` is generated on the first start into SCIML_PREFECT_AUTH_FILE
# (default .secrets/prefect-auth, mode 0600; the folder 0700) and read from there afterwards.
# Clients, workers and the UI need the same string (docs/orchestration.md):
#     export PREFECT_API_URL=http://HOST:4200/api
#     export PREFECT_API_AUTH_STRING="$(cat .secrets/prefect-auth)"
#
#   PREFECT_SERVER_API_AUTH_STRING=user:password   use this string instead of the file
#   PREFECT_SERVER_API_AUTH_STRING=                no authentication: allowed on a loopback
#                                                  address only, refused on any other (exit 78)
#
# The secret is never printed: only the path of the file that holds it.
# PostgreSQL settings: see scripts/pg-server.sh (SCIML_PG_DIR, SCIML_PG_PORT, ...).
# SCIML_PG_KEEP=1 leaves PostgreSQL running after the server stops.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check=0
if [ "${1:-}" = "--check" ]; then
    check=1
    shift
fi

die() {
    echo "prefect-server: $*" >&2
    exit "${code:-1}"
}

export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PREFECT_SERVER_API_HOST="${PREFECT_SERVER_API_HOST:-127.0.0.1}"
export PREFECT_SERVER_API_PORT="${PREFECT_SERVER_API_PORT:-4200}"
host="$PREFECT_SERVER_API_HOST"
authfile="${SCIML_PREFECT_AUTH_FILE:-$here/.secrets/prefect-auth}"

loopback() {
    case "$1" in
    127.* | localhost | ::1 | "[::1]") return 0 ;;
    *) return 1 ;;
    esac
}

# check_private FILE: the invoking user's, readable and writable by that user only.
. "$here/scripts/secret-file.sh"

# --- authentication (before anything starts) ---------------------------------------------------
if [ -n "${PREFECT_SERVER_API_AUTH_STRING+set}" ] && [ -z "$PREFECT_SERVER_API_AUTH_STRING" ]; then
    # explicitly empty: the user asks for no authentication
    if ! loopback "$host"; then
        code=78 die "refusing to serve the API on $host without authentication" \
            "(PREFECT_SERVER_API_AUTH_STRING is set but empty). Unset it to use the generated" \
            "auth string in $authfile, set it to user:password, or bind 127.0.0.1."
    fi
    unset PREFECT_SERVER_API_AUTH_STRING # an empty string would lock every client out
    auth="authentication OFF (PREFECT_SERVER_API_AUTH_STRING is empty; loopback only)"
    hint=""
elif [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then
    auth="basic authentication on (the string in PREFECT_SERVER_API_AUTH_STRING)"
    hint=" PREFECT_API_AUTH_STRING=<the same string>"
else
    if [ ! -e "$authfile" ]; then
        (
            umask 077
            mkdir -p "$(dirname "$authfile")"
            secrets="$(dirname "$authfile")"
            [ -e "$secrets/.gitignore" ] || echo '*' >"$secrets/.gitignore"
            # user:password; the password is 32 characters from [A-Za-z0-9_-]
            printf 'sciml:%s\n' "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')" \
                >"$authfile.tmp"
            mv "$authfile.tmp" "$authfile"
        )
        echo "prefect-server: generated the API auth string in $authfile (mode 0600)" >&2
    fi
    [ -f "$authfile" ] || die "$authfile is not a file"
    check_private "$authfile"
    IFS= read -r PREFECT_SERVER_API_AUTH_STRING <"$authfile" || true
    [ -n "$PREFECT_SERVER_API_AUTH_STRING" ] || die "$authfile is empty"
    export PREFECT_SERVER_API_AUTH_STRING
    auth="basic authentication on (auth string in $authfile, mode 0600)"
    hint=" PREFECT_API_AUTH_STRING=\"\$(cat $authfile)\""
fi

case "$host" in
0.0.0.0 | :: | "[::]")
    # every interface: name this machine, and tell the UI (in other browsers) where the API is
    url="http://$(hostname):$PREFECT_SERVER_API_PORT"
    export PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-$url/api}"
    ;;
*) url="http://$host:$PREFECT_SERVER_API_PORT" ;;
esac
echo "prefect-server: UI $url, API $url/api, $auth" >&2
echo "prefect-server: clients and workers: export PREFECT_API_URL=$url/api$hint" >&2
if [ -n "$hint" ]; then
    echo "prefect-server: other machines need a copy of that string (mode 0600; scripts/gpu-worker.sh" \
        "reads .secrets/prefect-auth); the UI asks for it on first load" >&2
fi
if ! loopback "$host"; then
    echo "prefect-server: plain HTTP on $host: put TLS in front (docs/orchestration.md)" >&2
fi
[ "$check" = 0 ] || exit 0

# --- PostgreSQL, then the server ---------------------------------------------------------------
prefect="${PREFECT:-$here/.venv/bin/prefect}"
[ -x "$prefect" ] || prefect="$(command -v prefect)" || die "prefect not found"

"$here/scripts/pg-server.sh" start
PREFECT_API_DATABASE_CONNECTION_URL="$("$here/scripts/pg-server.sh" url)"
export PREFECT_API_DATABASE_CONNECTION_URL

if [ "${SCIML_PG_KEEP:-0}" != 1 ]; then
    trap '"$here/scripts/pg-server.sh" stop' EXIT
fi
# On SIGINT/SIGTERM (sent to the process group, the server gets them too) exit once the server
# has stopped, so that the EXIT trap stops PostgreSQL.
trap 'exit 130' INT
trap 'exit 143' TERM
# not exec: the trap stops PostgreSQL when the server exits
"$prefect" server start --host "$host" --port "$PREFECT_SERVER_API_PORT" "$@"
