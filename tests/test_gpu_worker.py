"""scripts/gpu-worker.sh without a GPU or a server: which GPUs it finds and how it pins one
worker to each (`--dry-run` starts and installs nothing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_WORKER = ROOT / "scripts" / "gpu-worker.sh"


def dry_run(tmp_path: Path, gpus: str | None, **env: str) -> subprocess.CompletedProcess:
    """The script with a stand-in `nvidia-smi` listing `gpus` (None: no nvidia-smi at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.unlink(missing_ok=True)
    if gpus is not None:
        lines = "".join(f"echo '{g}'\n" for g in gpus.split(","))
        smi.write_text(f"#!/bin/sh\n{lines}")
        smi.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SCIML_GPUS")}
    path = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run(
        [GPU_WORKER, "--dry-run"],
        env={**base, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def workers(r: subprocess.CompletedProcess) -> list[str]:
    """Each planned worker's CUDA_VISIBLE_DEVICES (its name ends in `-gpu<that>`)."""
    found = []
    for line in r.stdout.splitlines():
        name, _, command = line.removeprefix("worker ").partition(": ")
        variable, value = command.split()[0].split("=", 1)
        assert variable == "CUDA_VISIBLE_DEVICES" and name.endswith(f"-gpu{value}"), line
        found.append(value)
    return found


def test_one_worker_per_gpu_each_pinned(tmp_path):
    r = dry_run(tmp_path, "0,1,2,3")
    assert r.returncode == 0, r.stderr
    assert workers(r) == ["0", "1", "2", "3"]
    assert all("--pool sciml-gpu" in line and "--limit 1" in line for line in r.stdout.splitlines())
    assert "4 GPU(s) from nvidia-smi" in r.stderr


def test_a_schedulers_allocation_wins(tmp_path):
    """CUDA_VISIBLE_DEVICES set (SLURM's allocation): only those GPUs, whatever the node has."""
    r = dry_run(tmp_path, "0,1,2,3", CUDA_VISIBLE_DEVICES="2,3", SCIML_WORKER_LIMIT="2")
    assert r.returncode == 0, r.stderr
    assert workers(r) == ["2", "3"]
    assert all("--limit 2" in line for line in r.stdout.splitlines())


def test_no_gpu_is_an_error(tmp_path):
    r = dry_run(tmp_path, None)
    assert r.returncode == 69 and "no GPU found" in r.stderr
    assert r.stdout == ""
    named = dry_run(tmp_path, None, SCIML_GPUS="GPU-5a1b,GPU-77c0", SCIML_GPU_POOL="gpu-a100")
    assert named.returncode == 0, named.stderr
    assert workers(named) == ["GPU-5a1b", "GPU-77c0"]
    assert all("--pool gpu-a100" in line for line in named.stdout.splitlines())


def test_bad_arguments_are_refused(tmp_path):
    r = dry_run(tmp_path, "0", SCIML_CUDA="11")
    assert r.returncode == 64 and "SCIML_CUDA is 12 or 13" in r.stderr
