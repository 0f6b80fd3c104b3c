"""Prefect orchestration: parameters, cache keys, tasks via `.fn()`, the CLI's exit codes,
the discovery flow's cache, and a sweep on a local Dask cluster."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines import _cache
from pipelines.params import ClassifyParams, DiscoverParams, SweepParams, UDESettings

ROOT = Path(__file__).resolve().parent.parent
LV = ROOT / "data" / "lotka_volterra"
CSV, MODEL, MODEL_FULL = LV / "lotka_volterra.csv", LV / "model.toml", LV / "model_full.toml"
# The flow's plumbing (caching, locks), not the fit: no L-BFGS polish, whose program alone costs
# about 7 s to build per training.
TINY = UDESettings(windows=(1.0,), adam_steps=30, lbfgs_steps=0, collocation_steps=20)


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
def _inputs(data_sha="d" * 64, model_sha="m" * 64, folder="/a"):
    return {
        "data": f"{folder}/lv.csv",
        "model": f"{folder}/model.toml",
        "data_sha256": data_sha,
        "model_sha256": model_sha,
    }


def test_stage_key_sees_content_settings_and_upstream():
    from pipelines.flows import discovery_config

    config = discovery_config(tiny_params(Path("o"), Path("r")))

    def key(stage="ude-training", **params):
        base = {"inputs": _inputs(), "fit": "/r/fit.json", "config": config, "results": "/r"}
        return _cache._digest(_cache.stage_payload(stage, {**base, **params}))

    k = key()
    assert k == key(config=dict(config))
    # the same contents elsewhere, another results folder, timings: the same key
    assert k == key(inputs=_inputs(folder="/elsewhere"), results="/other", timings={"x": 1.0})
    # which engines run, or an ensemble beside the run, does not change the UDE
    assert k == key(config={**config, "engines": ["pysr"]})
    assert k == key(config={**config, "ensemble": 8})
    assert key("selection-and-refit") != key(
        "selection-and-refit", config={**config, "ensemble": 8}
    )
    assert k != key(inputs=_inputs(data_sha="e" * 64))
    assert k != key(inputs=_inputs(model_sha="n" * 64))
    changed = {**config, "ude": {**config["ude"], "adam_steps": 21}}
    assert k != key(config=changed)
    assert k != key(config={**config, "seed": 1})
    assert k != key(fit="/r/fit-2.json")  # an upstream stage computed again
    assert k != key("dense-sampling")
    # the mechanistic fit does not depend on the UDE's settings
    assert key("mechanistic-fit") == key("mechanistic-fit", config=changed)
    assert key("mechanistic-fit") != key("mechanistic-fit", config={**config, "seed": 1})


def test_library_digest_sees_every_source_file(tmp_path):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "a.py").write_text("x = 1\n")
    (lib / "sub" / "b.py").write_text("y = 2\n")
    (lib / "notes.txt").write_text("not code")
    first = _cache.source_digest(lib, ["numpy"])
    assert first == _cache.source_digest(lib, ["numpy"])
    (lib / "notes.txt").write_text("changed, still not code")
    assert first == _cache.source_digest(lib, ["numpy"])
    (lib / "sub" / "b.py").write_text("y = 3\n")
    edited = _cache.source_digest(lib, ["numpy"])
    assert edited != first
    assert edited != _cache.source_digest(lib, ["numpy", "jax"])  # versions count
    (lib / "sub" / "b.py").rename(lib / "b.py")  # same content, another module
    assert _cache.source_digest(lib, ["numpy"]) != edited


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    """A lock whose process is gone does not block; one held by a live process does."""
    import threading

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    locks = _cache.LockManager(tmp_path)
    (tmp_path / "k.lock").write_text(
        json.dumps(
            {"holder": "dead", "host": __import__("socket").gethostname(), "pid": int(gone.stdout)}
        )
    )
    assert not locks.is_locked("k")
    assert locks.acquire_lock("k", holder="me", acquire_timeout=1)
    assert locks.acquire_lock("k", holder="me", acquire_timeout=1)  # already ours
    other = _cache.LockManager(tmp_path)  # another run: waits, times out
    assert other.is_locked("k") and not other.acquire_lock("k", holder="it", acquire_timeout=0.3)
    threading.Timer(0.3, locks.release_lock, ("k", "me")).start()
    assert other.acquire_lock("k", holder="it", acquire_timeout=10)
    assert json.loads((tmp_path / "k.lock").read_text())["holder"] == "it"


# -- tasks, by their functions -----------------------------------------------------------------
def test_ingest_hashes_the_inputs_and_rejects_bad_data(tmp_path):
    from pipelines import tasks
    from sciml import DataError

    inputs = tasks.ingest.fn(str(CSV), str(MODEL))
    assert inputs["data_sha256"] == hashlib.sha256(CSV.read_bytes()).hexdigest()
    assert inputs["states"] == ["x", "y"] and inputs["residual_states"] == ["x", "y"]
    assert inputs["n_points"] == 21
    bad = tmp_path / "bad.csv"
    bad.write_text("t,x,y\n0,1,2\n,1,2\n1,1,2\n")  # no time: refused (an empty state is not)
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
    from sciml.discover import EngineCandidates

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
    fit.save(tmp_path / "fit.json")
    back = MechanisticFit.load(tmp_path / "fit.json", model)
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
    EngineCandidates("sindy", table).save(tmp_path / "c")
    back = EngineCandidates.load(tmp_path / "c", ["x", "y"])
    assert back.engine == "sindy" and back.unavailable is None
    assert list(back.table["equation"]) == list(table["equation"])
    assert str(back.table["sympy_format"][0]) == "-0.9*x*y"
    EngineCandidates("pysr", pd.DataFrame(), "no Julia").save(tmp_path / "u")
    assert EngineCandidates.load(tmp_path / "u", ["x", "y"]).unavailable == "no Julia"


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
@pytest.fixture
def frozen_library(tmp_path, monkeypatch) -> Path:
    """A copy of the library's source that the stages' cache keys are taken from: other edits
    of this working tree during the test do not change the keys, and a test can edit it."""
    import shutil

    copy = tmp_path / "library"
    shutil.copytree(ROOT / "sciml", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "LIBRARY", copy)
    return copy


@pytest.fixture(scope="module")
def fit_and_train():
    """The discovery flow's first stages (the same task objects and cache policy), so that the
    checks do not depend on the later stages' numerics."""
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
        state = fit_and_train(params, return_state=True)
        assert state.is_completed(), state.message
        return task_runs(state.state_details.flow_run_id), state.result()

    return run


def test_ude_training_is_cached(prefect_harness, frozen_library, tmp_path, fit_and_train):
    """Same inputs: the UDE training task is Cached; a changed setting trains again; a stage
    whose files were deleted by hand runs again."""
    params = tiny_params(tmp_path / "a", tmp_path / "results")
    runs, first = fit_and_train(params)
    assert runs["ude-training"] == "Completed"
    assert {"ude.eqx", "ude.json", "history.json"} <= {p.name for p in Path(first).iterdir()}
    mtime = (Path(first) / "ude.eqx").stat().st_mtime_ns

    runs, second = fit_and_train(params.model_copy(update={"out": tmp_path / "b"}))
    assert runs["ude-training"] == "Cached" and runs["mechanistic-fit"] == "Cached"
    assert second == first and (Path(first) / "ude.eqx").stat().st_mtime_ns == mtime

    changed = params.model_copy(update={"ude": TINY.model_copy(update={"adam_steps": 35})})
    runs, third = fit_and_train(changed)
    assert runs["ude-training"] == "Completed" and runs["mechanistic-fit"] == "Cached"
    assert third != first and (Path(third) / "ude.eqx").exists()

    import shutil

    shutil.rmtree(first)
    runs, fourth = fit_and_train(params)
    assert fourth == first and (Path(first) / "ude.eqx").stat().st_mtime_ns > mtime


def test_two_concurrent_runs_train_once(prefect_harness, frozen_library, tmp_path, fit_and_train):
    """Two runs at once on one results folder: one trains, the other waits for its lock and
    reads its record (SERIALIZABLE isolation, a file lock per key)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tiny_params(tmp_path / "a", tmp_path / "results")
    both = [base, base.model_copy(update={"out": tmp_path / "b"})]
    with ThreadPoolExecutor(2) as pool:
        (runs_a, ude_a), (runs_b, ude_b) = pool.map(fit_and_train, both)
    assert ude_a == ude_b
    assert sorted([runs_a["ude-training"], runs_b["ude-training"]]) == ["Cached", "Completed"]
    assert sorted([runs_a["mechanistic-fit"], runs_b["mechanistic-fit"]]) == [
        "Cached",
        "Completed",
    ]
    assert [p.name for p in (tmp_path / "results").glob("ude-training-*")] == [Path(ude_a).name]
    assert not list((tmp_path / "results" / _cache.LOCKS).glob("*.lock"))  # all released


STAGE = """
from prefect import task
from pipelines.tasks import JSON
from pipelines._cache import stage_dir

@task(name="mechanistic-fit", **JSON)
def stage(inputs, config, results):
    folder = stage_dir(results, "mechanistic-fit")
    folder.mkdir(parents=True)
    (folder / "fit.json").write_text(str({BODY}))
    return str(folder / "fit.json")
"""


def test_editing_a_stages_code_invalidates_its_cache(prefect_harness, frozen_library, tmp_path):
    """The task's own source and the library's source are in the key."""
    import importlib.util

    from prefect import flow

    from pipelines.tasks import in_results

    def load(body: str, name: str):
        path = tmp_path / f"{name}.py"
        path.write_text(STAGE.replace("{BODY}", body))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.stage

    @flow
    def one_stage(stage, results: str) -> str:
        return in_results(stage, results)(_inputs(), {"seed": 0}, results)

    def state_of(stage) -> str:
        state = one_stage(stage, str(tmp_path / "results"), return_state=True)
        assert state.is_completed(), state.message
        return task_runs(state.state_details.flow_run_id)["mechanistic-fit"]

    stage = load("1 + 1", "stage_v1")
    assert state_of(stage) == "Completed"
    assert state_of(stage) == "Cached"
    assert state_of(load("1 + 1", "stage_v1_again")) == "Cached"  # same source, same key
    edited = load("2 + 2", "stage_v2")
    assert state_of(edited) == "Completed"  # the task's code changed
    assert state_of(edited) == "Cached"
    with open(frozen_library / "_mechanistic.py", "a") as f:
        f.write("\n\ndef _an_edit() -> int:\n    return 1\n")
    assert state_of(edited) == "Completed"  # the library's code changed
    assert state_of(edited) == "Cached"


def quick_params(out: Path, results: Path) -> DiscoverParams:
    """`--quick --engines sindy`: the selection and refit want a better UDE than TINY's."""
    return DiscoverParams(
        data=CSV, model=MODEL, out=out, engines=("sindy",), quick=True, results=results
    )


@pytest.mark.slow
def test_discover_end_to_end(prefect_harness, frozen_library, shared_results, tmp_path):
    """Every stage of the discovery flow; a second run reuses the cached stages.

    The results folder is shared by every xdist worker (conftest.py), so the first run's stages
    were computed here or by another file's run of the same settings (test_review, test_server)
    in either worker; which one got there first depends on scheduling. That a stage computes on
    a fresh key and is a cache hit after is test_ude_training_is_cached's."""
    from pipelines.flows import discover

    params = quick_params(tmp_path / "a", shared_results)
    state = discover(params, return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    for stage in ("ingest", "mechanistic-fit", "ude-training", "dense-sampling", "symbolic-sindy"):
        assert stage in runs
    assert runs["selection-and-refit"] in ("Completed", "Cached")
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
        data=tuple(files),
        models=(MODEL_FULL,),
        seeds=(0, 1),
        out=tmp_path / "sweep",
        cluster_class="distributed.LocalCluster",  # what dask_jobqueue.SLURMCluster plugs into
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None},
    )
    results = sweep(params)
    assert len(results) == 4
    assert len({r["out"] for r in results}) == 4
    index = (tmp_path / "sweep" / "index.html").read_text()
    for r in results:
        assert r["report"] == str(Path(r["out"]) / "report.html") and Path(r["report"]).exists()
        assert f"{Path(r['out']).name}/report.html" in index
        discovered = json.loads((Path(r["out"]) / "discovered.json").read_text())
        assert discovered["parameters"] == pytest.approx(r["parameters"])
        for name, true in TRUE.items():
            assert discovered["parameters"][name] == pytest.approx(true, rel=0.2), (r["out"], name)


def test_a_cluster_class_that_is_not_installed_is_bad_input(tmp_path):
    from pipelines.flows import check_cluster_class
    from sciml import InputError

    check_cluster_class("distributed.LocalCluster")
    import importlib.util

    if importlib.util.find_spec("dask_jobqueue") is None:  # the hpc extra is not installed
        with pytest.raises(InputError, match=r"sciml\[hpc\]"):
            check_cluster_class("dask_jobqueue.SLURMCluster")
    else:
        check_cluster_class("dask_jobqueue.SLURMCluster")
    with pytest.raises(InputError, match="no class 'NoSuchCluster'"):
        check_cluster_class("distributed.NoSuchCluster")
    with pytest.raises(ValidationError, match="not both"):
        SweepParams(
            data=(CSV,), models=(MODEL,), out="x", dask_address="tcp://h:8786", cluster_class="a.B"
        )
    r = _sciml(
        "sweep",
        str(CSV),
        "--model",
        str(MODEL),
        "--out",
        str(tmp_path / "o"),
        "--cluster-class",
        "no_such_module.Cluster",
    )
    assert r.returncode == 2 and "cannot import no_such_module" in r.stderr, r.stderr
    r = _sciml(
        "sweep",
        str(CSV),
        "--model",
        str(MODEL),
        "--out",
        str(tmp_path / "o"),
        "--cluster-kwargs",
        "[1, 2]",
    )
    assert r.returncode == 2 and "--cluster-kwargs: a JSON object" in r.stderr, r.stderr


# -- batches and deployments -------------------------------------------------------------------
def test_batch_runs_one_folder_each_sharing_the_cache(tmp_path):
    from pipelines.params import BatchParams

    batch = BatchParams(
        data=(CSV,), models=(MODEL, MODEL_FULL, None), seeds=(0, 3), out=tmp_path, ude=TINY
    )
    runs = batch.runs()
    names = [r.out.name for r in runs]
    assert len(names) == 6 and len(set(names)) == 6
    assert "lotka_volterra-model_full-seed3" in names and "lotka_volterra-no-theory-seed0" in names
    assert {r.results for r in runs} == {tmp_path / "results"}
    assert all(r.ude == TINY and r.engines == ("sindy", "operon", "pysr") for r in runs)
    # each run's parameters survive the trip through the API (JSON)
    assert all(DiscoverParams.model_validate(r.model_dump(mode="json")) == r for r in runs)
    with pytest.raises(ValidationError, match="deployment"):
        BatchParams(data=(CSV,), out=tmp_path, deployment="discover")
    with pytest.raises(ValueError, match="share an output folder"):
        BatchParams(data=(CSV, CSV), out=tmp_path).runs()


def test_batch_summary_reads_finished_runs(tmp_path):
    from prefect.states import Completed, Failed

    from pipelines.batch import summary

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "discovered.json").write_text(
        json.dumps({"equations": {"x": "x"}, "parameters": {"k": 1.0}})
    )
    done = summary(str(tmp_path / "a"), Completed())
    assert done["state"] == "Completed" and done["equations"] == {"x": "x"}
    failed = summary(str(tmp_path / "b"), Failed(message="diverged"))
    assert failed["state"] == "Failed" and failed["message"] == "diverged"
    assert "equations" not in failed
    assert summary(str(tmp_path / "c"), None)["state"] == "Unknown"


def test_prefect_yaml_declares_cpu_gpu_and_on_demand_deployments():
    from pipelines.deploy import deployments, select
    from sciml import InputError

    found = {d["full_name"]: d for d in deployments()}
    assert set(found) >= {"discover/cpu", "discover/gpu", "discover/nightly"}
    assert "discovery-batch/on-demand" in found
    cpu, gpu = found["discover/cpu"], found["discover/gpu"]
    assert cpu["work_pool"]["name"] != gpu["work_pool"]["name"]
    assert gpu["work_pool"]["job_variables"]["env"]["JAX_PLATFORMS"] == "cuda"
    assert not cpu["schedules"] and not gpu["schedules"]  # on demand
    for d in (cpu, gpu):
        env = d["work_pool"]["job_variables"]["env"]
        assert env["JAX_COMPILATION_CACHE_DIR"] and "CUDA_VISIBLE_DEVICES" not in env
        # the default parameters are valid, and name files of this checkout
        params = DiscoverParams.model_validate(d["parameters"]["params"])
        assert (ROOT / params.data).is_file() and (ROOT / params.model).is_file()
    batch_pool = found["discovery-batch/on-demand"]["work_pool"]["name"]
    assert batch_pool not in {cpu["work_pool"]["name"], gpu["work_pool"]["name"]}
    assert [d["full_name"] for d in select(["gpu"], list(found.values()))] == ["discover/gpu"]
    with pytest.raises(InputError, match="not in prefect.yaml"):
        select(["discover/nope"], list(found.values()))


def test_deploy_needs_a_server_and_names_it_knows(tmp_path):
    server = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # checked before any request
    r = _sciml("deploy", "--limit", "sciml-cpu=0", env=server)
    assert r.returncode == 2 and "POOL=N" in r.stderr, r.stderr
    r = _sciml("deploy", "no-such-deployment", env=server)
    assert r.returncode == 2 and "not in prefect.yaml" in r.stderr, r.stderr
    no_server = {"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path)}
    r = _sciml("deploy", env=no_server)
    assert r.returncode == 2 and "set PREFECT_API_URL" in r.stderr, r.stderr
    r = _sciml("batch", str(CSV), "--out", str(tmp_path / "b"), env=no_server)
    assert r.returncode == 2 and "set PREFECT_API_URL" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def test_ude_override_reaches_every_entry_point(tmp_path, capsys):
    """`--ude KEY=VALUE,...` (CLI), `ude=` of `run_discovery`'s config and the flows' params:
    typed `UDEConfig` fields over the default or quick schedule; an unknown key exits 2 naming
    it, before any folder is made."""
    from pipelines import cli
    from pipelines.flows import discovery_config
    from sciml import InputError, UDEConfig
    from sciml.discover import DiscoveryConfig

    argv = ["discover", str(CSV), "--model", str(MODEL), "--out", str(tmp_path), "--quick"]
    argv += ["--ude", "adam_steps=40,windows=0.5,1.0", "--ude", "train_mechanistic=false"]
    params = cli._discover_params(cli._parser().parse_args(argv))
    ude = discovery_config(params)["ude"]
    assert ude["adam_steps"] == 40 and ude["windows"] == [0.5, 1.0]
    assert ude["train_mechanistic"] is False
    assert ude["lbfgs_steps"] == UDEConfig().quick().lbfgs_steps  # the rest: quick's schedule

    config = DiscoveryConfig.make(quick=True, ude={"adam_steps": 40, "windows": [0.5, 1.0]})
    assert config.ude == UDEConfig().quick().replace(adam_steps=40, windows=(0.5, 1.0))
    assert DiscoveryConfig.make(ude={"lbfgs_steps": 7}).ude == UDEConfig(lbfgs_steps=7)
    with pytest.raises(InputError, match="adam_stepz"):
        DiscoveryConfig.make(ude={"adam_stepz": 1})

    sweep = SweepParams(data=(CSV,), models=(MODEL,), out=tmp_path, ude=TINY)
    assert all(r.ude == TINY for r in sweep.runs())

    for bad, word in (("adam_stepz=3", "adam_stepz"), ("adam_steps=1.5", "adam_steps")):
        out = tmp_path / "o"
        code = cli.main(
            ["discover", str(CSV), "--model", str(MODEL), "--out", str(out)] + ["--ude", bad]
        )
        assert code == 2 and word in capsys.readouterr().err
        assert not out.exists()
    code = cli.main(["discover", str(CSV), "--out", str(tmp_path / "o"), "--ude", "adam_steps=-1"])
    assert code == 2 and "adam_steps must not be negative" in capsys.readouterr().err
