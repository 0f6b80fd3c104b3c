"""Hardening, round 2 (docs/hardening.md): clean failures, odd names, big and odd inputs, quiet
logs. Each test checks one row of the tables there."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import sympy as sp

import sciml
from pipelines import cli

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data/lotka_volterra/lotka_volterra.csv"
MODEL = ROOT / "data/lotka_volterra/model.toml"
# x' = x^2 from x0 ~ 1 blows up at t ~ 1, inside the data's span; nothing to fit or steer
BLOWS_UP = '[model]\nstates = ["x", "y"]\n[model.equations]\nx = "x^2"\ny = "-y"\n'


# -- expected failures never show a traceback --------------------------------------------------
def test_numerical_failure_exits_3_with_one_line_and_the_traceback_in_run_log(tmp_path):
    """Through the real command (its own process, the console as a user sees it), into a
    folder whose path has a space and non-ASCII characters."""
    model = tmp_path / "modèle à tester.toml"
    model.write_text(BLOWS_UP, encoding="utf-8")
    out = tmp_path / "runs é" / "out 1"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "discover", str(DATA), "--model", str(model)]
        + ["--out", str(out), "--engines", "sindy", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 3, console
    assert "Traceback" not in console, console
    assert "algebraic_simplifier" not in console
    lines = [ln for ln in console.splitlines() if "[mechanistic]" in ln]
    assert len(lines) == 1, console  # Prefect does not repeat the CLI's message
    (line,) = lines
    assert line.startswith("sciml discover: numerical failure: [mechanistic] trajectory '0'")
    assert "; try " in line and str(out / "run.log") in line
    assert "Traceback" in (out / "run.log").read_text(encoding="utf-8")
    assert not (out / "discovered.json").exists()


def _flows_must_not_run(monkeypatch):
    import pipelines.flows

    def refuse(*args, **kwargs):
        raise AssertionError("the flow started: the check should have run before Prefect")

    for name in ("discover", "pipeline", "cnf", "classify", "sweep"):
        monkeypatch.setattr(pipelines.flows, name, refuse)


@pytest.mark.parametrize(
    "argv",
    [
        ["discover", str(DATA), "--model", str(MODEL)],
        ["pipeline", str(DATA), "--model", str(MODEL)],
        ["cnf", "--data", str(ROOT / "data/cnf/two_moons.csv")],
        ["classify", "--dataset", "digits"],
        ["sweep", str(DATA), "--model", str(MODEL)],
    ],
    ids=["discover", "pipeline", "cnf", "classify", "sweep"],
)
def test_output_path_that_is_a_file_is_refused_before_prefect(argv, tmp_path, monkeypatch, capsys):
    _flows_must_not_run(monkeypatch)
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code = cli.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "results.txt: exists and is not a folder" in err and "Traceback" not in err
    assert out.read_text() == "keep me"


def test_output_path_below_a_file_is_refused(tmp_path, monkeypatch, capsys):
    _flows_must_not_run(monkeypatch)
    (tmp_path / "f").write_text("")
    code = cli.main(["discover", str(DATA), "--out", str(tmp_path / "f" / "out")])
    assert code == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def _record(msg, exc=None, name="prefect.task_runs"):
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), exc_info)


def test_prefect_console_log_of_an_expected_failure_is_dropped():
    quiet = cli._NoExpectedFailures()
    err = sciml.NumericalError("cannot be integrated", stage="mechanistic", trajectory="0")
    assert not quiet.filter(_record(f"Task run failed with exception: {err!r}", err))
    assert not quiet.filter(_record("Encountered exception during execution", sciml.DataError()))
    assert not quiet.filter(
        _record("Finished in state Failed('Task run encountered an exception NumericalError: x')")
    )
    # anything else still reaches the console
    assert quiet.filter(_record("Task run failed with exception", RuntimeError("bug")))
    assert quiet.filter(_record("Finished in state Failed('... RuntimeError: bug')"))
    assert quiet.filter(_record("Finished in state Completed()"))


def test_numerical_error_survives_pickling():
    """It crosses process boundaries (Dask workers, Prefect results) with its fields."""
    err = sciml.NumericalError("diverged", stage="ude", trajectory="a b", hint="a shorter window")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is sciml.NumericalError and str(back) == str(err)
    assert (back.stage, back.trajectory, back.hint) == ("ude", "a b", "a shorter window")


# -- model files: bounds and names -------------------------------------------------------------
def _lv_doc(params: dict) -> dict:
    return {
        "model": {
            "states": ["x", "y"],
            "parameters": params,
            "equations": {"x": "a*x", "y": "-b*y"},
        }
    }


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"value": 1.0, "min": 2.0}, "a.value: 1 is outside [min, max] = [2, inf]"),
        ({"value": 1.0, "min": 1.0, "max": 1.0}, "min (1) must be below max (1)"),
        ({"value": 1.0, "max": "2"}, "a.max: expected a number, got '2'"),
        ({"value": 1.0, "min": float("nan")}, "a.min: nan is not a usable finite number"),
        ({"value": 1.0, "lower": 0.0}, "takes `value` and optional `fixed`, `min`, `max`"),
    ],
)
def test_bad_bounds_are_refused(spec, fragment):
    with pytest.raises(sciml.ModelFileError, match="model.parameters.a") as info:
        sciml.model_from_dict(_lv_doc({"a": spec, "b": 1.0}), source="m.toml")
    assert fragment in str(info.value)


def test_bounds_are_kept_and_described():
    model = sciml.model_from_dict(_lv_doc({"a": {"value": 1.0, "min": 0.0}, "b": 1.0}))
    assert model.parameter_bounds == ((0.0, np.inf), (-np.inf, np.inf))
    assert model.describe()["bounds"] == {"a": [0.0, None]}
    wider = model.with_equations(model.equations, ["a", "c"], [-5.0, 1.0])
    assert wider.parameter_bounds == ((0.0, np.inf), (-np.inf, np.inf))
    assert wider.guesses[0] == 0.0  # a guess outside its bounds is clipped into them


@pytest.mark.parametrize("name", ["lambda", "if", "class", "None", "True", "def"])
def test_python_keywords_are_refused_as_names_with_a_way_out(name):
    doc = _lv_doc({"a": 1.0, "b": 1.0})
    doc["model"]["states"] = ["x", name]
    doc["model"]["equations"] = {"x": "a*x", name: "0"}
    with pytest.raises(sciml.ModelFileError, match="Python keyword") as info:
        sciml.model_from_dict(doc)
    assert repr(name + "_") in str(info.value)


ODD_NAMES = [
    *["S", "I", "E", "N", "O", "Q", "C", "beta", "gamma", "zeta", "Lambda", "lambda_", "pi"],
    *["if_x", "class1", "def_", "None_", "is_", "lambda1", "import_", "Symbol", "Function"],
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_round_trip_through_equations_and_report_math(name):
    """A state and a parameter with the name: the equation means them (never SymPy's objects),
    its printed form parses back to the same expression, and the report renders it."""
    from sciml.report._math import mathml, parse

    other = "p" if name != "p" else "q"
    doc = {
        "model": {
            "states": [name, "y"],
            "parameters": {f"k_{name}": 0.5, other: 2.0},
            "equations": {name: f"-k_{name}*{name}*y + {other}", "y": f"{name} - y"},
        }
    }
    model = sciml.model_from_dict(doc)
    s, y = model.state_symbols
    k, p = model.parameter_symbols
    assert model.equations[0] == -k * s * y + p
    assert all(isinstance(a, sp.Symbol) for a in model.equations[0].free_symbols)
    out = model.vector_field(0.0, jnp.asarray([3.0, 2.0]), jnp.asarray([0.5, 2.0]))
    np.testing.assert_allclose(np.asarray(out), [-0.5 * 3 * 2 + 2.0, 3.0 - 2.0])
    text = model.inlined([0.5, 2.0])[name]
    back = parse(text, list(model.states), where="test")
    assert back is not None and sp.simplify(back - (-0.5 * s * y + 2.0)) == 0
    assert "<code>" not in mathml(back, lhs=name)


def _smoothed_candidates(model, data):
    """SINDy candidates from the smoothed data's derivative residual (no UDE needed)."""
    from sciml._smooth import smooth
    from sciml.symbolic import make_engines

    X, dydt = smooth(data).inner()
    params = jnp.asarray(model.guesses)
    field = np.asarray(jax.vmap(lambda v: model.vector_field(0.0, v, params))(jnp.asarray(X)))
    parts = []
    for j in model.residual_index:
        (engine,) = make_engines(["sindy"], seed=0)
        engine.set_params(n_bootstrap=0)
        engine.fit(X, dydt[:, j] - field[:, j], feature_names=list(model.states))
        part = engine.equations_.copy()
        part.insert(0, "samples", "data")
        part.insert(0, "engine", "sindy")
        part.insert(0, "state", model.states[j])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _discover_without_ude(states, params, folder):
    """Selection, evaluation, outputs and report for Lotka-Volterra data whose states and
    parameters carry the given names (candidates from the smoothed data: no UDE training)."""
    from sciml._io import write_json
    from sciml.discover import (
        DiscoveryConfig,
        EngineCandidates,
        findings_stage,
        mechanistic_stage,
        write_outputs,
    )
    from sciml.report import render_report

    a, b = states
    folder.mkdir(parents=True)
    csv = folder / "data.csv"
    pd.read_csv(DATA).rename(columns={"x": a, "y": b}).to_csv(csv, index=False)
    doc = {
        "model": {
            "states": list(states),
            "parameters": {
                params[0]: {"value": 1.3, "fixed": True},
                params[1]: {"value": 1.8, "fixed": True},
            },
            "equations": {a: f"{params[0]}*{a}", b: f"-{params[1]}*{b}"},
        },
        "residual": {"states": list(states)},
    }
    model = sciml.model_from_dict(doc)
    data = sciml.load_trajectories(csv, model.states)
    config = DiscoveryConfig.make(engines=("sindy",), quick=True)
    fit = mechanistic_stage(model, data, config)
    table = _smoothed_candidates(model, data)
    found = [EngineCandidates("sindy", table)]
    findings = findings_stage(model, fit, None, found, None, data, None, config)
    out = folder / "out"
    out.mkdir()
    write_json(out / "config.json", {"data": str(csv), "model": model.describe()})
    result = write_outputs(out, findings, {})
    report = render_report(out).read_text(encoding="utf-8")
    return model, result, out, report


@pytest.fixture(scope="module")
def plain_names_run(tmp_path_factory):
    return _discover_without_ude(("x", "y"), ("p", "q"), tmp_path_factory.mktemp("plain") / "run")


@pytest.mark.slow
@pytest.mark.parametrize("states, params", [(("I", "if_x"), ("E", "lambda_"))], ids=["I-if_x"])
def test_odd_names_through_selection_outputs_and_report(states, params, plain_names_run, tmp_path):
    """The same data under odd names gives the same equations as under x and y, and the
    outputs and the report carry the names."""
    model, result, out, report = _discover_without_ude(states, params, tmp_path / "odd")
    plain_model, plain, _, _ = plain_names_run
    assert list(result["equations"]) == list(states)
    rename = dict(zip(model.state_symbols, plain_model.state_symbols, strict=True))
    for state, plain_state in zip(states, ("x", "y"), strict=True):
        expr = sciml.parse_expression(result["equations"][state], model.symbol_table(), where=state)
        assert expr.free_symbols <= set(model.state_symbols)
        want = sciml.parse_expression(
            plain["equations"][plain_state], plain_model.symbol_table(), where=plain_state
        )
        got = sp.Poly(expr.xreplace(rename), *plain_model.state_symbols).as_dict()
        ref = sp.Poly(want, *plain_model.state_symbols).as_dict()
        assert set(got) == set(ref), (state, result["equations"][state])
        for monomial, c in ref.items():
            assert abs(float(got[monomial]) - float(c)) <= 1e-6 * abs(float(c))
    assert [t["state"] for t in result["terms"]] == [
        dict(zip(("x", "y"), states))[t["state"]] for t in plain["terms"]
    ]
    written = pd.read_csv(out / "equations.csv")
    assert set(written["state"]) == set(states) and written["selected"].sum() == 2
    assert "<code>" not in report.split('id="warnings"')[0]  # every equation shown as MathML


# -- big and odd inputs ------------------------------------------------------------------------
def test_a_million_row_file_is_thinned_with_a_note_within_memory(tmp_path):
    """Loaded in a fresh process so its peak memory is its own."""
    csv = tmp_path / "big data é.csv"
    t = np.linspace(0.0, 100.0, 1_000_000)
    pd.DataFrame({"t": t, "x": np.sin(t), "y": np.cos(t)}).to_csv(csv, index=False)
    script = (
        "import logging, sys, sciml\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "d = sciml.load_trajectories(sys.argv[1], ['x', 'y'])\n"
        "tr = d.trajectories[0]\n"
        "print(len(d), d.n_points, tr.t[0], tr.t[-1])\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the forking pytest
        # process's own memory (6.5 GB late in a full run).
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('peak_kb', hwm.split()[1])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(csv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    n_traj, n_points, t0, t1 = first.split()
    from sciml._data import MAX_PER_TRAJECTORY

    assert (int(n_traj), int(n_points)) == (1, MAX_PER_TRAJECTORY)
    assert float(t0) == 0.0 and float(t1) == 100.0  # the whole span, first and last kept
    assert "1000000 points" in proc.stderr and "evenly spaced samples" in proc.stderr
    assert int(second.split()[1]) < 1_500_000  # KiB: well within a laptop's memory


def test_many_trajectories_are_thinned_to_a_subset(tmp_path, monkeypatch, caplog):
    from sciml import _data

    monkeypatch.setattr(_data, "MAX_POINTS", 300)
    monkeypatch.setattr(_data, "MAX_TRAJECTORIES", 20)
    rows = [(f"r{i}", k, float(i + k)) for i in range(200) for k in range(5)]
    csv = tmp_path / "many.csv"
    pd.DataFrame(rows, columns=["trajectory", "t", "x"]).to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="sciml"):
        data = sciml.load_trajectories(csv, ["x"])
    assert len(data) == 20 and data.names[0] == "r0" and data.names[-1] == "r199"
    assert all(len(tr.t) == 5 for tr in data.trajectories)  # 20 x 5 = 100 <= 300: kept whole
    assert "20 of 200 trajectories" in caplog.text


def test_oversized_files_are_refused_before_reading(tmp_path, monkeypatch):
    from sciml import _data

    csv = tmp_path / "d.csv"
    csv.write_text("t,x\n" + "".join(f"{i},{i}\n" for i in range(100)))
    monkeypatch.setattr(_data, "MAX_FILE_BYTES", 100)
    with pytest.raises(sciml.DataError, match="d.csv: 0 MiB is more than the 0 MiB"):
        sciml.load_trajectories(csv, ["x"])
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"t": range(100), "x": range(100)}).to_parquet(pq)
    monkeypatch.setattr(_data, "MAX_ROWS", 50)
    with pytest.raises(sciml.DataError, match="d.parquet: 100 rows is more than the 50"):
        sciml.load_trajectories(pq, ["x"])


# -- a wall-clock budget -----------------------------------------------------------------------
def test_max_minutes_stops_between_stages_with_results_marked_partial(
    prefect_harness, tmp_path, capsys
):
    out = tmp_path / "run dir ü"
    argv = ["discover", str(DATA), "--model", str(MODEL), "--out", str(out)]
    code = cli.main([*argv, "--engines", "sindy", "--quick", "--max-minutes", "0.0001"])
    printed = capsys.readouterr().out
    assert code == 0
    result = __import__("json").loads((out / "discovered.json").read_text())
    assert result["partial"]["stopped_before"] == "UDE training"
    assert "time budget" in result["partial"]["reason"] and "partial results" in printed
    assert not (out / "ude.eqx").exists() and result["residual"] == {}
    assert "Partial results" in (out / "report.html").read_text(encoding="utf-8")


# -- quiet logs ----------------------------------------------------------------------------------
def test_xla_circular_simplification_lines_are_filtered_from_the_commands_stderr():
    """XLA writes them from C++ straight to file descriptor 2; everything else passes, in
    order, up to the last byte before exit."""
    noise = (
        "E1128 10:23:25.986228   18584 algebraic_simplifier.cc:10564] Algebraic simplifier is "
        "likely stuck in a circular simplification loop and ran for 50 runs on computation main.57"
    )
    script = (
        "import os, sys\n"
        "from pipelines import cli\n"
        "cli._filter_xla_noise()\n"
        f"os.write(2, {(noise + chr(10)) * 3!r}.encode() + b'E1128 other.cc:1] a real error\\n')\n"
        "print('from Python', file=sys.stderr)\n"
        "os.write(2, b'last, no newline')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0
    assert proc.stderr == "E1128 other.cc:1] a real error\nfrom Python\nlast, no newline"


def test_run_discovery_max_minutes_marks_the_results_partial(tmp_path):
    from sciml.discover import run_discovery

    out = tmp_path / "lib run"
    result = run_discovery(
        DATA, MODEL, out, engines=("sindy",), quick=True, show_progress=False, max_minutes=1e-6
    )
    assert result["partial"]["stopped_before"] == "UDE training"
    written = __import__("json").loads((out / "discovered.json").read_text())
    assert written["partial"] == result["partial"] and not (out / "ude.eqx").exists()
    with pytest.raises(sciml.InputError, match="max_minutes must be positive"):
        run_discovery(DATA, MODEL, tmp_path / "x", max_minutes=0)


@pytest.mark.parametrize(
    "argv, target",
    [
        (["cnf", "--data", str(ROOT / "data/cnf/two_moons.csv")], "sciml.cnf.run_cnf"),
        (["classify", "--dataset", "digits"], "sciml.classify.run_classify"),
    ],
    ids=["cnf", "classify"],
)
def test_numerical_failure_in_cnf_and_classify_exits_3(
    argv, target, prefect_harness, tmp_path, monkeypatch, capsys
):
    import importlib

    out = tmp_path / "out é"
    module, name = target.rsplit(".", 1)

    def diverges(*args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        raise sciml.NumericalError("the loss became NaN", stage=argv[0], hint="fewer steps")

    monkeypatch.setattr(importlib.import_module(module), name, diverges)
    code = cli.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err == (
        f"sciml {argv[0]}: numerical failure: [{argv[0]}]: the loss became NaN; try fewer steps"
        f" (traceback in {out / 'run.log'})\n"
    )
    assert "Traceback" in (out / "run.log").read_text(encoding="utf-8")


def test_numerical_failure_in_the_pipeline_command_exits_3(prefect_harness, tmp_path, capsys):
    model = tmp_path / "m.toml"
    model.write_text(BLOWS_UP)
    out = tmp_path / "pipe line"
    code = cli.main(
        ["pipeline", str(DATA), "--model", str(model), "--out", str(out), "--engines", "sindy"]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("sciml pipeline: numerical failure: [mechanistic] trajectory '0'")
    assert "Traceback" in (out / "discover" / "run.log").read_text()
