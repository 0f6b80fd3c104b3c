"""Stopping a run cleanly (issue 20): SIGTERM/SIGINT stop every process of the run, keep its
checkpoint, leave no partial result and no lock, mark the flow run Cancelled and exit 128 + N;
a second signal ends at once, and the same command again resumes.

The first tests drive `pipelines._signals` in a small script (seconds, no Prefect); the others
send SIGTERM to real `sciml` commands mid-training (the temporary Prefect API server included).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
LV = ROOT / "data" / "lotka_volterra"
CSV, MODEL = LV / "lotka_volterra.csv", LV / "model.toml"
LOCK = ".sciml.lock"


# -- helpers -----------------------------------------------------------------------------------
def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: its own Prefect home (the temporary API's SQLite file is read back
    to check the flow run's state), no server of the caller's."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PYTHONUNBUFFERED="1",
        # `make test` sets WARNING; the UDE's progress lines (read back below) are INFO.
        PREFECT_LOGGING_LEVEL="INFO",
        **extra,
    )
    return env


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )


def _sciml(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _wait_for(proc: subprocess.Popen, ready, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before the signal:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not ready within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _tree(pid: int) -> list[psutil.Process]:
    """Every descendant of `pid`, grandchildren included (psutil keeps their start times, so a
    reused process id is not mistaken for a survivor)."""
    return psutil.Process(pid).children(recursive=True)


def _survivors(procs: list[psutil.Process]) -> list[str]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline()[:4])}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _stop(proc: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def _partial_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*.tmp")]


def _flow_runs(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(flow name, state type, state message) of the flow runs in the temporary API's DB."""
    db = sqlite3.connect(tmp_path / "prefect-home" / "prefect.db")
    try:
        return db.execute(
            "SELECT f.name, r.state_type, s.message FROM flow_run r JOIN flow f ON f.id = "
            "r.flow_id JOIN flow_run_state s ON s.id = r.state_id"
        ).fetchall()
    finally:
        db.close()


# -- the mechanism, in a small script ----------------------------------------------------------
SCRIPT = """
import os, subprocess, sys, time
from pathlib import Path
from pipelines import _signals
from sciml._io import atomic_path
from sciml._rundir import run_directory

_signals.install()
out = Path(sys.argv[1])
# a child, and a grandchild whose parent exits at once (adopted by the subreaper) and that
# ignores SIGTERM (SIGKILL after the grace period)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])"])
try:  # as pipelines.cli.main does it
    with run_directory(out):
        with atomic_path(out / "result.json") as tmp:
            tmp.write_text("half")
            (out / "ready").write_text("")
            {body}
except _signals.Stopped as stop:
    _signals.stop_descendants(timeout=1.0)
    sys.exit(stop.exit_code)
"""


def _script(tmp_path: Path, body: str, **env: str) -> tuple[subprocess.Popen, Path, Path]:
    out, log = tmp_path / "out", tmp_path / "script.log"
    code = SCRIPT.format(body=textwrap.indent(body, " " * 12).strip())
    proc = _start([sys.executable, "-c", code, str(out)], log, _env(tmp_path, **env))
    _wait_for(proc, lambda: (out / "ready").exists(), 60, log)
    time.sleep(0.3)  # the grandchild is up
    return proc, out, log


def _check_clean(out: Path, procs: list[psutil.Process]) -> None:
    assert not _survivors(procs)
    assert not (out / LOCK).exists()
    assert not (out / "result.json").exists()
    assert not _partial_files(out)


def test_sigterm_stops_children_releases_the_lock_and_exits_143(tmp_path):
    proc, out, log = _script(tmp_path, "time.sleep(300)")
    procs = _tree(proc.pid)
    assert len(procs) >= 2
    assert _stop(proc) == 143, log.read_text()
    _check_clean(out, procs)


def test_sigint_exits_130(tmp_path):
    proc, out, log = _script(tmp_path, "time.sleep(300)")
    procs = _tree(proc.pid)
    assert _stop(proc, signal.SIGINT) == 130, log.read_text()
    _check_clean(out, procs)


# A main thread that swallows every exception, the stop included: it never stops by itself.
SWALLOWS_SIGNALS = textwrap.dedent("""
    for _ in range(600):
        try:
            time.sleep(0.5)
        except BaseException:
            pass
""")


def test_second_signal_ends_at_once(tmp_path):
    """The first SIGTERM is swallowed (a main thread that does not stop); the second one kills
    the children, drops the lock and the temporary file, and exits 143."""
    proc, out, log = _script(tmp_path, SWALLOWS_SIGNALS)
    procs = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None
    t = time.monotonic()
    assert _stop(proc) == 143
    assert time.monotonic() - t < 5
    _check_clean(out, procs)
    assert "again while stopping" in log.read_text()


def test_a_stop_that_hangs_ends_after_the_grace_period(tmp_path):
    proc, out, log = _script(tmp_path, SWALLOWS_SIGNALS, SCIML_STOP_GRACE="1")
    procs = _tree(proc.pid)
    t = time.monotonic()
    assert _stop(proc, timeout=30) == 143
    assert 0.9 < time.monotonic() - t < 10
    _check_clean(out, procs)
    assert "still stopping" in log.read_text()


def test_stale_temporary_files_are_removed_with_the_lock(tmp_path):
    from sciml._rundir import run_directory

    out = tmp_path / "out"
    out.mkdir()
    (out / ".discovered.json.abc123.tmp").write_text("half")
    (out / "keep.json").write_text("{}")
    with run_directory(out):
        assert not _partial_files(out)
        assert (out / "keep.json").exists()


# -- the commands ------------------------------------------------------------------------------
# Collocation and Adam, a few chunks each; no L-BFGS polish (about 7 s to build its program),
# what is checked is the stop and the resume.
SHORT = "collocation_steps=500,windows=1.0,adam_steps=100,lbfgs_steps=0"


def _ude_steps(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"UDE [^\n]*?: step (\d+)/\d+", text)]


@pytest.mark.slow
def test_discover_sigterm_mid_training_then_resume(tmp_path):
    """SIGTERM during UDE training: exit 143, the temporary API server and every other process
    gone, no result and no temporary file, the lock released, the checkpoint kept, the flow run
    Cancelled; the same command again resumes from the checkpoint and completes. A short
    schedule (`--ude`): the stop and the resume are what is checked, not the fit."""
    out, log = tmp_path / "run", tmp_path / "first.log"
    args = _sciml(
        "discover", str(CSV), "--model", str(MODEL), "--out", str(out), "--quick",
        "--ude", SHORT, "--engines", "sindy",
    )  # fmt: skip
    env = _env(tmp_path)
    proc = _start(args, log, env)
    checkpoints = out / "results" / "checkpoints"
    _wait_for(proc, lambda: any(checkpoints.glob("*/ude.json")), 300, log)
    procs = _tree(proc.pid)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in procs), "no temporary API server?"
    assert _stop(proc) == 143, log.read_text()[-3000:]

    first = log.read_text()
    assert "stopped by SIGTERM" in first
    assert not _survivors(procs)
    assert not (out / "discovered.json").exists()
    assert not _partial_files(out)
    assert not (out / LOCK).exists()
    assert list(checkpoints.glob("*/ude.eqx")) and list(checkpoints.glob("*/ude.json"))
    runs = _flow_runs(tmp_path)
    assert [(name, state) for name, state, _ in runs] == [("discover", "CANCELLED")], runs
    assert "SIGTERM" in runs[0][2]

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (out / "discovered.json").exists()
    resumed = _ude_steps(again.stdout + again.stderr)
    assert resumed and resumed[0] > _ude_steps(first)[0], (resumed, _ude_steps(first))
    assert not list(checkpoints.glob("*/ude.eqx"))  # removed once training completed
    assert not (out / LOCK).exists()


@pytest.mark.slow
def test_cnf_sigint_keeps_the_checkpoint_and_resumes(tmp_path):
    """SIGINT (Ctrl-C) during CNF training: exit 130, no process left, the checkpoint kept, no
    metrics, the flow run Cancelled; the same command again completes from the checkpoint."""
    out, log = tmp_path / "cnf", tmp_path / "cnf.log"
    args = _sciml(
        "cnf", "--data", str(ROOT / "data" / "cnf" / "two_moons.csv"), "--out", str(out),
        "--steps", "200",
    )  # fmt: skip
    env = _env(tmp_path)
    proc = _start(args, log, env)
    _wait_for(proc, lambda: (out / "checkpoint.json").exists(), 300, log)
    procs = _tree(proc.pid)
    assert _stop(proc, signal.SIGINT) == 130, log.read_text()[-3000:]
    assert "stopped by SIGINT" in log.read_text()
    assert not _survivors(procs)
    assert (out / "checkpoint.eqx").exists() and not (out / "metrics.json").exists()
    assert not _partial_files(out)
    runs = _flow_runs(tmp_path)
    assert [(name, state) for name, state, _ in runs] == [("cnf", "CANCELLED")], runs
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (out / "metrics.json").exists() and not (out / "checkpoint.eqx").exists()


def test_discover_second_sigterm_ends_at_once(tmp_path):
    """Two SIGTERMs in a row (a scheduler that escalates): still exit 143 within seconds, no
    process left, the lock released and no partial file."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = _sciml(
        "discover", str(CSV), "--model", str(MODEL), "--out", str(out), "--quick",
        "--engines", "sindy",
    )  # fmt: skip
    proc = _start(args, log, _env(tmp_path))
    _wait_for(proc, lambda: (out / "run.log").exists(), 300, log)  # the flow holds the folder
    procs = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    t = time.monotonic()
    assert _stop(proc, timeout=30) == 143, log.read_text()[-3000:]
    assert time.monotonic() - t < 10
    assert not _survivors(procs)
    assert not (out / LOCK).exists()
    assert not (out / "discovered.json").exists()
    assert not _partial_files(out)
