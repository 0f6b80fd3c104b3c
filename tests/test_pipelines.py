"""Prefect orchestration: parameters, cache keys, tasks via `.fn()`, the CLI's exit codes,
the discovery flow's cache, and a sweep on a local Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines import _store
from pipelines.params import ClassifyParams, DiscoverParams, SweepParams, UDESettings

ROOT = Path(__file__).resolve().parent.parent
LV = ROOT / "data" / "lotka_volterra"
CSV, MODEL, MODEL_FULL = LV / "lotka_volterra.csv", LV / "model.toml", LV / "model_full.toml"
TINY = UDESettings(windows=(1.0,), adam_steps=30, lbfgs_steps=10)


def tiny_params(out: Path, results: Path, **kw) -> DiscoverParams:
    return DiscoverParams(
        data=CSV, model=MODEL, out=out, engines=("sindy",), ude=TINY, results=results, **kw
    )


def task_runs(flow_run_id) -> dict[str, str]:
    """Task name -> state name of a flow run's task runs, read back through the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0] if r.name[-4] == "-" else r.name: r.state.name for r in runs}


# -- parameters --------------------------------------------------------------------------------
def test_parameters_are_validated():
    with pytest.raises(ValidationError, match="engines"):
        DiscoverParams(data=CSV, model=MODEL, out="x", engines=("eureqa",))
    with pytest.raises(ValidationError, match="holdout"):
        DiscoverParams(data=CSV, model=MODEL, out="x", holdout=0.95)
    with pytest.raises(ValidationError, match="windows"):
        UDESettings(windows=(0.5, 0.25))
    with pytest.raises(ValidationError, match="exactly one"):
        ClassifyParams(dataset="digits", data="d.npz", out="x")
    with pytest.raises(ValidationError, match="pysr"):
        SweepParams(data=(CSV,), models=(MODEL,), out="x", engines=("sindy", "pysr"))
    p = DiscoverParams.model_validate({"data": str(CSV), "model": str(MODEL), "out": "/tmp/o"})
    assert p.results_dir == Path("/tmp/o/results")
    assert DiscoverParams.model_validate(p.model_dump(mode="json")) == p  # deployments: JSON


def test_sweep_runs_get_one_folder_each(tmp_path):
    sweep = SweepParams(data=(CSV,), models=(MODEL, MODEL_FULL), seeds=(0, 1), out=tmp_path)
    outs = [r.out for r in sweep.runs()]
    assert len(outs) == 4 and len(set(outs)) == 4
    with pytest.raises(ValueError, match="share an output folder"):
        SweepParams(data=(CSV, CSV), models=(MODEL,), out=tmp_path).runs()


# -- cache keys --------------------------------------------------------------------------------
def _inputs(data_sha="d" * 64, model_sha="m" * 64):
    return {"data_sha256": data_sha, "model_sha256": model_sha}


def test_stage_key_sees_version_config_and_content(monkeypatch):
    import sciml
    from pipelines.flows import discovery_config

    config = discovery_config(tiny_params(Path("o"), Path("r")))
    key = _store.stage_key("ude-training", _inputs(), config)
    assert key == _store.stage_key("ude-training", _inputs(), dict(config))
    # which engines run does not change the UDE
    assert key == _store.stage_key("ude-training", _inputs(), {**config, "engines": ["pysr"]})
    assert key != _store.stage_key("ude-training", _inputs(data_sha="e" * 64), config)
    assert key != _store.stage_key("ude-training", _inputs(model_sha="n" * 64), config)
    changed = {**config, "ude": {**config["ude"], "adam_steps": 21}}
    assert key != _store.stage_key("ude-training", _inputs(), changed)
    assert key != _store.stage_key("ude-training", _inputs(), {**config, "seed": 1})
    assert key != _store.stage_key("dense-sampling", _inputs(), config)
    # the mechanistic fit does not depend on the UDE's settings
    fit_key = _store.stage_key("mechanistic-fit", _inputs(), config)
    assert fit_key == _store.stage_key("mechanistic-fit", _inputs(), changed)
    assert fit_key != _store.stage_key("mechanistic-fit", _inputs(), {**config, "seed": 1})
    monkeypatch.setattr(sciml, "__version__", "999.0")
    assert key != _store.stage_key("ude-training", _inputs(), config)


def test_cache_key_drops_a_record_whose_files_are_gone(tmp_path):
    class Ctx:
        class task:  # noqa: N801 - mimics Prefect's TaskRunContext.task
            name = "ude-training"

    params = {"inputs": _inputs(), "config": {"seed": 0}, "results": str(tmp_path)}
    key = _store.cache_key(Ctx, params)
    record = tmp_path / _store.RECORDS / key
    record.parent.mkdir()
    record.write_text("{}")
    (tmp_path / key).mkdir()
    assert _store.cache_key(Ctx, params) == key and record.exists()
    (tmp_path / key).rmdir()
    assert _store.cache_key(Ctx, params) == key and not record.exists()


# -- tasks, by their functions -----------------------------------------------------------------
def test_ingest_hashes_the_inputs_and_rejects_bad_data(tmp_path):
    from pipelines import tasks
    from sciml import DataError

    inputs = tasks.ingest.fn(str(CSV), str(MODEL))
    assert inputs["data_sha256"] == _store.file_digest(CSV)
    assert inputs["states"] == ["x", "y"] and inputs["residual_states"] == ["x", "y"]
    assert inputs["n_points"] == 21
    bad = tmp_path / "bad.csv"
    bad.write_text("t,x,y\n0,1,2\n0.5,1,\n1,1,2\n")
    with pytest.raises(DataError, match="bad.csv"):
        tasks.ingest.fn(str(bad), str(MODEL))


def test_retries_only_on_io_errors():
    from prefect.states import Failed

    from pipelines.tasks import _retry_io
    from sciml import DataError, NumericalError

    def failed(exc):
        return Failed(data=exc)

    assert _retry_io(None, None, failed(OSError("disk busy")))
    assert not _retry_io(None, None, failed(DataError("bad.csv: row 3")))
    assert not _retry_io(None, None, failed(NumericalError("diverged", stage="ude")))


def test_fit_and_candidates_round_trip(tmp_path):
    import numpy as np
    import pandas as pd

    from sciml import MechanisticFit, load_model

    model = load_model(MODEL_FULL)
    fit = MechanisticFit(
        model=model,
        params=np.array([1.3, 0.9, 0.8, 1.8]) + 1e-9,
        y0=np.array([[0.44, 4.6]]),
        cost=0.1,
        rmse=np.array([0.01, 0.02]),
        n_starts=8,
        success=True,
        message="ok",
    )
    _store.save_fit(fit, tmp_path / "fit.json")
    back = _store.load_fit(tmp_path / "fit.json", model)
    assert np.array_equal(back.params, fit.params) and back.parameter_dict == fit.parameter_dict
    table = pd.DataFrame(
        {
            "state": ["x", "y"],
            "engine": ["sindy", "sindy"],
            "complexity": [3, 5],
            "loss": [0.1, 0.01],
            "score": [0.0, 1.2],
            "equation": ["-0.9*x*y", "0.8*x*y + 0.01"],
            "coef_std": [{"x*y": 0.01}, {"x*y": 0.02}],
        }
    )
    _store.save_candidates(table, tmp_path / "c.parquet")
    back = _store.load_candidates([tmp_path / "c.parquet"], ["x", "y"])
    assert list(back["equation"]) == list(table["equation"])
    assert str(back["sympy_format"][0]) == "-0.9*x*y"


# -- the command line --------------------------------------------------------------------------
def _sciml(*args: str, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_input_fails_fast_before_prefect(tmp_path):
    t = time.perf_counter()
    r = _sciml("discover", str(tmp_path / "missing.csv"), "--model", str(MODEL), "--out", "o")
    assert r.returncode == 2, r.stderr
    assert "missing.csv" in r.stderr
    assert "temporary server" not in r.stderr + r.stdout  # Prefect never started
    r = _sciml("discover", str(CSV), "--model", str(MODEL), "--out", "o", "--engines", "eureqa")
    assert r.returncode == 2 and "eureqa" in r.stderr
    assert time.perf_counter() - t < 120


def test_input_error_inside_a_task_exits_2(prefect_harness, tmp_path, monkeypatch, capsys):
    """A DataError raised by the ingest task, through Prefect, is exit code 2."""
    from pipelines import cli

    bad = tmp_path / "unsorted.csv"
    bad.write_text("t,x,y\n0,1,2\n1,1,2\n0.5,1,2\n2,1,2\n")
    monkeypatch.setattr(cli, "_validate_discovery", lambda params: None)  # skip the pre-check
    code = cli.main(["discover", str(bad), "--model", str(MODEL), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "unsorted.csv" in err


# -- flows -------------------------------------------------------------------------------------
def test_ude_training_is_cached(prefect_harness, shared_results, tmp_path):
    """Same inputs: the UDE training task is Cached; a changed setting trains again.

    The flow is the discovery flow's first stages (the same task objects and cache keys), so
    that the check does not depend on the later stages' numerics.
    """
    from prefect import flow

    from pipelines import tasks
    from pipelines.flows import discovery_config
    from pipelines.tasks import in_results

    @flow
    def fit_and_train(params: DiscoverParams) -> str:
        config, results = discovery_config(params), str(params.results_dir)
        inputs = tasks.ingest(str(params.data), str(params.model))
        fit = in_results(tasks.mechanistic_fit, results)(inputs, config, results)
        return in_results(tasks.ude_training, results)(inputs, fit, config, results)

    def run(params):
        t = time.perf_counter()
        state = fit_and_train(params, return_state=True)
        assert state.is_completed(), state.message
        runs = task_runs(state.state_details.flow_run_id)
        return runs, state.result(), time.perf_counter() - t

    params = tiny_params(tmp_path / "a", shared_results)
    runs, first, _ = run(params)
    assert runs["ude-training"] == "Completed"
    assert {"ude.eqx", "ude.json", "history.json"} <= {p.name for p in Path(first).iterdir()}
    mtime = (Path(first) / "ude.eqx").stat().st_mtime_ns

    runs, second, seconds = run(params.model_copy(update={"out": tmp_path / "b"}))
    assert runs["ude-training"] == "Cached" and runs["mechanistic-fit"] == "Cached"
    assert second == first and (Path(first) / "ude.eqx").stat().st_mtime_ns == mtime

    changed = params.model_copy(update={"ude": TINY.model_copy(update={"adam_steps": 35})})
    runs, third, _ = run(changed)
    assert runs["ude-training"] == "Completed" and runs["mechanistic-fit"] == "Cached"
    assert third != first and (Path(third) / "ude.eqx").exists()


def quick_params(out: Path, results: Path) -> DiscoverParams:
    """`--quick --engines sindy`: the selection and refit want a better UDE than TINY's."""
    return DiscoverParams(
        data=CSV, model=MODEL, out=out, engines=("sindy",), quick=True, results=results
    )


@pytest.mark.slow
def test_discover_end_to_end(prefect_harness, shared_results, tmp_path):
    """Every stage of the discovery flow; a second run reuses the cached stages."""
    from pipelines.flows import discover

    params = quick_params(tmp_path / "a", shared_results)
    state = discover(params, return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    for stage in ("ingest", "mechanistic-fit", "ude-training", "dense-sampling", "symbolic-sindy"):
        assert stage in runs
    assert runs["selection-and-refit"] == "Completed"
    result = json.loads((tmp_path / "a" / "discovered.json").read_text())
    assert set(result["equations"]) == {"x", "y"}
    for name in ("config.json", "ude.eqx", "equations.csv", "run.log"):
        assert (tmp_path / "a" / name).exists(), name
    again = discover(params.model_copy(update={"out": tmp_path / "b"}), return_state=True)
    runs = task_runs(again.state_details.flow_run_id)
    assert runs["ude-training"] == "Cached" and runs["selection-and-refit"] == "Cached"
    assert (
        json.loads((tmp_path / "b" / "discovered.json").read_text())["equations"]
        == (result["equations"])
    )


def test_sweep_on_a_local_dask_cluster(prefect_harness, tmp_path, monkeypatch):
    """Four discovery runs (2 data sets x 2 seeds) spread over a local Dask cluster."""
    import pandas as pd
    from prefect.settings import PREFECT_API_URL

    from data.lotka_volterra.generate import TRUE, noisy
    from pipelines.flows import sweep

    # Dask worker processes report to the session's API instead of starting their own
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    import numpy as np

    files = []
    for seed in (1, 2):
        ts = np.linspace(0.0, 5.0, 21)
        ys = noisy(ts, noise=0.02, seed=seed)
        path = tmp_path / f"lv{seed}.csv"
        pd.DataFrame({"t": ts, "x": ys[:, 0], "y": ys[:, 1]}).to_csv(path, index=False)
        files.append(path)
    params = SweepParams(
        data=tuple(files), models=(MODEL_FULL,), seeds=(0, 1), out=tmp_path / "sweep"
    )
    results = sweep(params)
    assert len(results) == 4
    assert len({r["out"] for r in results}) == 4
    for r in results:
        discovered = json.loads((Path(r["out"]) / "discovered.json").read_text())
        assert discovered["parameters"] == pytest.approx(r["parameters"])
        for name, true in TRUE.items():
            assert discovered["parameters"][name] == pytest.approx(true, rel=0.2), (r["out"], name)
