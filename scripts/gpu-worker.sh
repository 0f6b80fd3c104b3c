#!/usr/bin/env bash
# Set up a GPU machine as a Prefect worker for sciml (docs/orchestration.md, "GPU nodes").
#
#   PREFECT_API_URL=http://prefect-host:4200/api scripts/gpu-worker.sh            # install + start
#   PREFECT_API_URL=... SCIML_GPU_POOL=gpu scripts/gpu-worker.sh --no-install      # start only
#
# The server asks for basic authentication (scripts/prefect-server.sh): copy its auth file
# (.secrets/prefect-auth on the server's machine) to the same place in this checkout, mode 0600,
# or to SCIML_PREFECT_AUTH_FILE. The script refuses a file others can read, exports its content
# as PREFECT_API_AUTH_STRING (never printing it) and checks that the server accepts it. The flow
# runs the worker starts inherit it from the worker's environment; it is deliberately not a
# work-pool job variable (those are stored on the server and shown in its UI). An
# already exported PREFECT_API_AUTH_STRING wins over the file (empty: a server without auth).
#
# What it does, on the GPU machine, from a checkout of this repository:
#   1. creates .venv (if missing) and installs the project with the GPU extra: pip install '.[gpu]'
#      (jax[cuda12]: the CUDA runtime comes from pip wheels; the machine needs an NVIDIA driver);
#   2. checks that the server accepts the auth string, and that JAX sees a GPU (fails loudly
#      otherwise: runs would silently use the CPU);
#   3. creates the work pool (type process) if it is missing;
#   4. starts a worker on that pool, with JAX pinned to the GPU (JAX_PLATFORMS=cuda) and
#      memory grown on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false), so several runs can share.
# Deployments reach it with: sciml deploy DATA --model M --out DIR --pool gpu --gpu
#
# Settings: PREFECT_API_URL (required: the team's server), SCIML_PREFECT_AUTH_FILE (default
# .secrets/prefect-auth), SCIML_GPU_POOL (default gpu), PYTHON (default python3),
# SCIML_WORKER_LIMIT (concurrent runs, default 1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
pool="${SCIML_GPU_POOL:-gpu}"
python="${PYTHON:-python3}"
limit="${SCIML_WORKER_LIMIT:-1}"
install=1
[ "${1:-}" = "--no-install" ] && install=0

[ -n "${PREFECT_API_URL:-}" ] || {
    echo "gpu-worker: set PREFECT_API_URL to the Prefect server (http://HOST:4200/api)" >&2
    exit 64
}
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"

# The server's auth string (before installing anything: a missing secret fails in a second).
authfile="${SCIML_PREFECT_AUTH_FILE:-$here/.secrets/prefect-auth}"
if [ -n "${PREFECT_API_AUTH_STRING+set}" ]; then
    echo "gpu-worker: using the auth string in PREFECT_API_AUTH_STRING" >&2
elif [ -f "$authfile" ]; then
    mode="$(stat -c %a "$authfile")" owner="$(stat -c %u "$authfile")"
    if [ "$owner" != "$(id -u)" ] || { [ "$mode" != 600 ] && [ "$mode" != 400 ]; }; then
        echo "gpu-worker: $authfile (mode $mode, uid $owner) holds a secret: it must be yours" \
            "and readable by you only (chown $(id -u) and chmod 600 it)" >&2
        exit 78
    fi
    IFS= read -r PREFECT_API_AUTH_STRING <"$authfile" || true
    export PREFECT_API_AUTH_STRING
    echo "gpu-worker: auth string from $authfile" >&2
else
    echo "gpu-worker: no auth string for the server: copy its .secrets/prefect-auth to" \
        "$authfile (chmod 600), or export PREFECT_API_AUTH_STRING" >&2
    exit 78
fi

if [ "$install" = 1 ]; then
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e '.[gpu]'
fi

# the server takes the auth string (a clear message rather than a 401 from the CLI)
.venv/bin/python - <<'PY'
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError

try:
    with get_client(sync_client=True) as client:
        client.read_work_pools(limit=1)
except PrefectHTTPStatusError as e:
    if e.response.status_code == 401:
        raise SystemExit("gpu-worker: the server refused the auth string (401 Unauthorized)")
    raise
PY

export JAX_PLATFORMS=cuda
export XLA_PYTHON_CLIENT_PREALLOCATE=false
.venv/bin/python - <<'PY'
import jax
devices = jax.devices()
print("gpu-worker: JAX", jax.__version__, "devices:", devices)
if devices[0].platform != "gpu":
    raise SystemExit("gpu-worker: JAX sees no GPU (check the NVIDIA driver and jax[cuda12])")
PY

.venv/bin/prefect work-pool inspect "$pool" >/dev/null 2>&1 ||
    .venv/bin/prefect work-pool create "$pool" --type process
echo "gpu-worker: starting a worker on pool $pool against $PREFECT_API_URL" >&2

# SIGTERM/SIGINT (SLURM, Kubernetes, systemd, `timeout`) are forwarded as SIGTERM to the worker
# (which then stops polling and exits) and to its flow runs (each stops like `sciml` does: its
# folder lock released, its checkpoint kept). Whatever of that process tree is left after
# SCIML_STOP_GRACE seconds (default 20) is killed, so that no flow run or Dask worker outlives
# the script. A second signal kills at once. Exit status 128 + the signal (143 for SIGTERM).
grace="${SCIML_STOP_GRACE:-20}"
worker=""
descendants() { # every process below $1, depth first
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
alive() { # the given processes that are still running (zombies count as gone)
    local pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        case "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" in Z | "") ;; *) echo "$pid" ;; esac
    done
}
stop() { # $1: signal name, $2: exit status
    tree="$worker $(descendants "$worker")"
    # shellcheck disable=SC2064 # $2 now, $tree when it fires
    trap "echo 'gpu-worker: second signal: killing now' >&2; kill -KILL \$tree 2>/dev/null; exit $2" TERM INT
    echo "gpu-worker: $1: stopping the worker (process $worker) and its runs" >&2
    # shellcheck disable=SC2086 # a list of process ids
    kill -TERM $tree 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
        [ -n "$(alive $tree)" ] || break
        sleep 0.1
    done
    tree="$tree $(descendants "$worker")"
    left="$(alive $tree | sort -u)"
    if [ -n "$left" ]; then
        echo "gpu-worker: still running after ${grace} s, killed:" $left >&2
        kill -KILL $left 2>/dev/null || true
    fi
    wait "$worker" 2>/dev/null || true
    exit "$2"
}
trap 'stop SIGTERM 143' TERM
trap 'stop SIGINT 130' INT
# SIGINT back to its default first: a background job (and a script started in the background)
# ignores it, and the worker sends itself SIGINT on SIGTERM to shut down
.venv/bin/python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' .venv/bin/prefect worker start --pool "$pool" --type process \
    --limit "$limit" &
worker=$!
wait "$worker"
