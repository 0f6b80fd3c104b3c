#!/usr/bin/env bash
# Set up a GPU machine as a Prefect worker for sciml (docs/orchestration.md, "GPU nodes").
#
#   PREFECT_API_URL=http://prefect-host:4200/api scripts/gpu-worker.sh            # install + start
#   PREFECT_API_URL=... SCIML_GPU_POOL=gpu scripts/gpu-worker.sh --no-install      # start only
#
# What it does, on the GPU machine, from a checkout of this repository:
#   1. creates .venv (if missing) and installs the project with the GPU extra: pip install '.[gpu]'
#      (jax[cuda12]: the CUDA runtime comes from pip wheels; the machine needs an NVIDIA driver);
#   2. checks that JAX sees a GPU (fails loudly otherwise: runs would silently use the CPU);
#   3. creates the work pool (type process) if it is missing;
#   4. starts a worker on that pool, with JAX pinned to the GPU (JAX_PLATFORMS=cuda) and
#      memory grown on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false), so several runs can share.
# Deployments reach it with: sciml deploy DATA --model M --out DIR --pool gpu --gpu
#
# Settings: PREFECT_API_URL (required: the team's server), SCIML_GPU_POOL (default gpu),
# PYTHON (default python3), SCIML_WORKER_LIMIT (concurrent runs, default 1).
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

if [ "$install" = 1 ]; then
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e '.[gpu]'
fi

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
exec .venv/bin/prefect worker start --pool "$pool" --type process --limit "$limit"
