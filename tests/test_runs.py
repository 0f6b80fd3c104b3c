"""No lost or mixed results: folder locks, concurrent runs, transient failures retried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sciml
from pipelines.cli import main
from sciml._rundir import LOCK, run_directory

DATA, MODEL = "data/lotka_volterra/lotka_volterra.csv", "data/lotka_volterra/model_full.toml"


def test_second_run_into_a_folder_in_use_is_refused(tmp_path):
    with run_directory(tmp_path / "out"):
        with pytest.raises(sciml.OutputDirError, match="another run"):
            with run_directory(tmp_path / "out"):
                pass
    with run_directory(tmp_path / "out"):  # released: usable again
        pass


def test_cli_refuses_a_folder_held_by_a_live_process(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / LOCK).write_text(str(holder.pid))
        code = main(["discover", DATA, "--model", MODEL, "--out", str(out)])
        assert code == 2
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert not (out / "discovered.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(str(dead.pid))
    (out / "discovered.json").write_text("{}")  # a previous run's result
    with run_directory(out, clear=("discovered.json",)):
        assert not (out / "discovered.json").exists()  # never mistaken for this run's
    assert not (out / LOCK).exists()


def test_two_runs_at_once_into_different_folders(tmp_path):
    """Two plain mechanistic fits in parallel processes give what each gives alone."""
    script = (
        "import sys; from sciml.discover import run_discovery; "
        "run_discovery(sys.argv[1], sys.argv[2], sys.argv[3], seed=int(sys.argv[4]), "
        "show_progress=False)"
    )
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, DATA, MODEL, str(o), str(seed)], cwd=os.getcwd()
        )
        for o, seed in zip(outs, (0, 1))
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    together = [json.loads((o / "discovered.json").read_text()) for o in outs]
    alone = tmp_path / "alone"
    subprocess.run(
        [sys.executable, "-c", script, DATA, MODEL, str(alone), "0"], check=True, timeout=600
    )
    assert (
        together[0]["parameters"]
        == json.loads((alone / "discovered.json").read_text())["parameters"]
    )
    for result in together:
        assert result["parameters"]["alpha"] == pytest.approx(1.3, rel=0.05)
    for o in outs:
        assert not (o / LOCK).exists()
        assert json.loads((o / "config.json").read_text())["data"] == str(Path(DATA).resolve())


def test_transient_failure_is_retried_and_the_flow_completes(prefect_harness, monkeypatch):
    from prefect import flow

    import pipelines.tasks as tasks
    import sciml._fingerprint as fingerprint

    calls = {"n": 0}
    real = fingerprint.file_digest

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("transient: disk busy")  # injected
        return real(path)

    monkeypatch.setattr(fingerprint, "file_digest", flaky)
    monkeypatch.setattr(tasks.ingest, "retry_delay_seconds", [0, 0])

    @flow
    def just_ingest():
        return tasks.ingest(DATA, MODEL, return_state=True)

    state = just_ingest()
    assert state.is_completed()
    assert state.result()["n_points"] == 21
    assert calls["n"] >= 3  # failed once (data digest), then data and model digests
