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


def stand_in_checkout(tmp_path: Path) -> Path:
    """A copy of the script in a checkout whose `.venv` has stand-ins: `python -` (the script's
    checks of the server and of JAX) succeeds, and `prefect worker start` sleeps until
    SIGTERM (as `sleep`, the same process)."""
    import shutil
    import sys

    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(GPU_WORKER, root / "scripts" / "gpu-worker.sh")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(
        f'#!/bin/sh\nif [ "$1" = - ]; then cat >/dev/null; exit 0; fi\nexec {sys.executable} "$@"\n'
    )
    (venv / "prefect").write_text(
        '#!/bin/sh\nif [ "$1" = worker ]; then exec sleep 300; fi\nexit 0\n'
    )
    for f in venv.iterdir():
        f.chmod(0o755)
    return root


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _started_workers(proc, expected: int, timeout: float = 30) -> dict[int, str]:
    """Worker process -> its CUDA_VISIBLE_DEVICES, once `expected` of them run."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for pid in _children(proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[0].endswith(b"sleep"):  # the stand-in worker, after its execs
                cvd = [e for e in env if e.startswith(b"CUDA_VISIBLE_DEVICES=")]
                found[pid] = cvd[0].split(b"=", 1)[1].decode() if cvd else ""
        if len(found) == expected:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{expected} workers did not start: {found}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_workers_are_pinned_and_stop_together(tmp_path):
    """Two GPUs: two workers, CUDA_VISIBLE_DEVICES 0 and 1; SIGTERM to the script stops both
    (exit 143); a worker that exits on its own stops the other."""
    import signal

    root = stand_in_checkout(tmp_path)
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SCIML_GPUS")}
    env = {
        **base,
        "PATH": "/usr/bin:/bin",
        "SCIML_GPUS": "0,1",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "PREFECT_API_AUTH_STRING": "",
        "SCIML_STOP_GRACE": "5",
    }

    def start():
        return subprocess.Popen(
            [root / "scripts" / "gpu-worker.sh", "--no-install"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    proc = start()
    workers = _started_workers(proc, 2)
    assert sorted(workers.values()) == ["0", "1"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert not any(_alive(pid) for pid in workers), err

    proc = start()
    workers = _started_workers(proc, 2)
    first, second = sorted(workers, key=workers.get)
    os.kill(first, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert "a worker exited" in err and proc.returncode != 0, err
    assert not _alive(second)
