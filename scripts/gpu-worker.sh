#!/usr/bin/env bash
# Set up a GPU machine as Prefect workers for sciml: one worker per visible GPU, each pinned to
# its GPU with CUDA_VISIBLE_DEVICES (docs/orchestration.md, "GPU nodes").
#
#   PREFECT_API_URL=http://prefect-host:4200/api scripts/gpu-worker.sh            # install + start
#   PREFECT_API_URL=... SCIML_GPU_POOL=sciml-gpu scripts/gpu-worker.sh --no-install  # start only
#   scripts/gpu-worker.sh --dry-run       # which GPUs, which workers; starts and installs nothing
#
# The server asks for basic authentication (scripts/prefect-server.sh): copy its auth file
# (.secrets/prefect-auth on the server's machine) to the same place in this checkout, mode 0600,
# or to SCIML_PREFECT_AUTH_FILE. The script refuses a file others can read, exports its content
# as PREFECT_API_AUTH_STRING (never printing it) and checks that the server accepts it. The flow
# runs the workers start inherit it from the workers' environment; it is deliberately not a
# work-pool job variable (those are stored on the server and shown in its UI). An
# already exported PREFECT_API_AUTH_STRING wins over the file (empty: a server without auth).
#
# What it does, on the GPU machine, from a checkout of this repository:
#   1. finds the GPUs: CUDA_VISIBLE_DEVICES when set (a scheduler's allocation, e.g. SLURM's),
#      else every GPU nvidia-smi lists, else SCIML_GPUS (comma-separated indices or UUIDs);
#   2. creates .venv (if missing) and installs the project with a GPU extra: pip install
#      '.[cuda12]' (SCIML_CUDA=13: '.[cuda13]'; the CUDA runtime comes from pip wheels, the
#      machine needs an NVIDIA driver);
#   3. checks that the server accepts the auth string, and that JAX sees every one of those GPUs
#      (fails loudly otherwise: runs would silently use the CPU);
#   4. creates the work pool (type process) if it is missing;
#   5. starts one worker per GPU on that pool, named HOST-gpuID, with CUDA_VISIBLE_DEVICES=ID
#      (devices numbered as nvidia-smi does: CUDA_DEVICE_ORDER=PCI_BUS_ID), at most
#      SCIML_WORKER_LIMIT flow runs each (default 1: one training program per GPU). The flow runs
#      a worker starts inherit its CUDA_VISIBLE_DEVICES; the pool's job variables (prefect.yaml,
#      deployment discover/gpu) add JAX_PLATFORMS=cuda, on-demand GPU memory and the JAX
#      compilation cache.
# Deployments reach them with: sciml deploy discover/gpu, then sciml batch ... --deployment
# discover/gpu (or prefect deployment run discover/gpu).
#
# Settings: PREFECT_API_URL (required: the team's server), SCIML_PREFECT_AUTH_FILE (default
# .secrets/prefect-auth), SCIML_GPU_POOL (default sciml-gpu), SCIML_GPUS, SCIML_CUDA (12 or 13),
# PYTHON (default python3), SCIML_WORKER_LIMIT (concurrent runs per GPU, default 1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
pool="${SCIML_GPU_POOL:-sciml-gpu}"
python="${PYTHON:-python3}"
limit="${SCIML_WORKER_LIMIT:-1}"
cuda="${SCIML_CUDA:-12}"
install=1 dry=0
for arg in "$@"; do
    case "$arg" in
    --no-install) install=0 ;;
    --dry-run) dry=1 ;;
    *)
        echo "gpu-worker: unknown argument $arg (--no-install, --dry-run)" >&2
        exit 64
        ;;
    esac
done
case "$cuda" in 12 | 13) ;; *)
    echo "gpu-worker: SCIML_CUDA is 12 or 13, not $cuda" >&2
    exit 64
    ;;
esac

# The GPUs: the scheduler's allocation, else every GPU the driver lists, else SCIML_GPUS.
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    gpus="$CUDA_VISIBLE_DEVICES" source_="CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1; then
    gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | paste -sd, -)"
    source_="nvidia-smi"
else
    gpus="${SCIML_GPUS:-}" source_="SCIML_GPUS"
fi
IFS=, read -r -a gpu_list <<<"$gpus"
if [ "${#gpu_list[@]}" = 0 ] || [ -z "${gpu_list[0]}" ]; then
    echo "gpu-worker: no GPU found (no CUDA_VISIBLE_DEVICES, nvidia-smi lists none or is" \
        "missing, no SCIML_GPUS)" >&2
    exit 69
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID
host="$(hostname -s 2>/dev/null || hostname)"
echo "gpu-worker: ${#gpu_list[@]} GPU(s) from $source_: ${gpu_list[*]}" >&2
if [ "$dry" = 1 ]; then
    for gpu in "${gpu_list[@]}"; do
        echo "worker $host-gpu$gpu: CUDA_VISIBLE_DEVICES=$gpu prefect worker start --pool $pool" \
            "--type process --limit $limit"
    done
    exit 0
fi

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
    .venv/bin/pip install --quiet -e ".[cuda$cuda]"
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

# every GPU visible to JAX, on CUDA (a check in one process that sees them all)
CUDA_VISIBLE_DEVICES="$gpus" JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false \
    SCIML_N_GPUS="${#gpu_list[@]}" .venv/bin/python - <<'PY'
import os

import jax

devices = jax.devices()
print("gpu-worker: JAX", jax.__version__, "devices:", devices)
if devices[0].platform != "gpu":
    raise SystemExit("gpu-worker: JAX sees no GPU (check the NVIDIA driver and jax[cuda12])")
if len(devices) != int(os.environ["SCIML_N_GPUS"]):
    raise SystemExit(f"gpu-worker: JAX sees {len(devices)} GPUs, not {os.environ['SCIML_N_GPUS']}")
PY

.venv/bin/prefect work-pool inspect "$pool" >/dev/null 2>&1 ||
    .venv/bin/prefect work-pool create "$pool" --type process
echo "gpu-worker: starting ${#gpu_list[@]} worker(s) on pool $pool against $PREFECT_API_URL" >&2

# SIGTERM/SIGINT (SLURM, Kubernetes, systemd, `timeout`) are forwarded as SIGTERM to the workers
# (which then stop polling and exit) and to their flow runs (each stops like `sciml` does: its
# folder lock released, its checkpoint kept). Whatever of those process trees is left after
# SCIML_STOP_GRACE seconds (default 20) is killed, so that no flow run or Dask worker outlives
# the script. A second signal kills at once. Exit status 128 + the signal (143 for SIGTERM).
# A worker that exits by itself stops the others too (so that a supervisor restarts the set).
grace="${SCIML_STOP_GRACE:-20}"
workers=()
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
trees() { # the workers and everything below them
    local w
    for w in "${workers[@]}"; do
        echo "$w"
        descendants "$w"
    done
}
stop() { # $1: what happened, $2: exit status
    tree="$(trees)"
    # shellcheck disable=SC2064 # $2 now, $tree when it fires
    trap "echo 'gpu-worker: second signal: killing now' >&2; kill -KILL \$tree 2>/dev/null; exit $2" TERM INT
    echo "gpu-worker: $1: stopping the workers (processes ${workers[*]}) and their runs" >&2
    # shellcheck disable=SC2086 # a list of process ids
    kill -TERM $tree 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
        # shellcheck disable=SC2086
        [ -n "$(alive $tree)" ] || break
        sleep 0.1
    done
    tree="$tree $(trees)"
    # shellcheck disable=SC2086
    left="$(alive $tree | sort -u)"
    if [ -n "$left" ]; then
        echo "gpu-worker: still running after ${grace} s, killed:" $left >&2
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    exit "$2"
}
trap 'stop SIGTERM 143' TERM
trap 'stop SIGINT 130' INT
for gpu in "${gpu_list[@]}"; do
    # SIGINT back to its default first: a background job (and a script started in the
    # background) ignores it, and the worker sends itself SIGINT on SIGTERM to shut down
    CUDA_VISIBLE_DEVICES="$gpu" .venv/bin/python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' .venv/bin/prefect worker start --pool "$pool" --type process \
        --limit "$limit" --name "$host-gpu$gpu" &
    workers+=("$!")
    echo "gpu-worker: worker $host-gpu$gpu (process $!) on CUDA_VISIBLE_DEVICES=$gpu" >&2
done
status=0
wait -n "${workers[@]}" || status=$?
stop "a worker exited (status $status)" "$status"
