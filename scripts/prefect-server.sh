#!/usr/bin/env bash
# A Prefect server on PostgreSQL, in the foreground (`make server`). Ctrl-C stops both.
#
#   scripts/prefect-server.sh            # UI and API on http://127.0.0.1:4200
#   PREFECT_SERVER_API_HOST=0.0.0.0 scripts/prefect-server.sh   # serve the team's network
#
# Then, in any shell that should use it:  export PREFECT_API_URL=http://HOST:4200/api
# PostgreSQL settings: see scripts/pg-server.sh (SCIML_PG_DIR, SCIML_PG_PORT, ...).
# SCIML_PG_KEEP=1 leaves PostgreSQL running after the server stops.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefect="${PREFECT:-$here/.venv/bin/prefect}"
[ -x "$prefect" ] || prefect="$(command -v prefect)" || { echo "prefect not found" >&2; exit 1; }

export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PREFECT_SERVER_API_HOST="${PREFECT_SERVER_API_HOST:-127.0.0.1}"
export PREFECT_SERVER_API_PORT="${PREFECT_SERVER_API_PORT:-4200}"

"$here/scripts/pg-server.sh" start
PREFECT_API_DATABASE_CONNECTION_URL="$("$here/scripts/pg-server.sh" url)"
export PREFECT_API_DATABASE_CONNECTION_URL

if [ "${SCIML_PG_KEEP:-0}" != 1 ]; then
    trap '"$here/scripts/pg-server.sh" stop' EXIT
fi
echo "prefect-server: UI http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT" \
    " - clients: export PREFECT_API_URL=http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT/api" >&2
# not exec: the trap stops PostgreSQL when the server exits
"$prefect" server start --host "$PREFECT_SERVER_API_HOST" --port "$PREFECT_SERVER_API_PORT" "$@"
