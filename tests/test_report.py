"""The review report: a synthetic run folder (no training), rendered and opened in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy.integrate import solve_ivp

from sciml import InputError
from sciml.report import findings, load_run, render_index, render_report
from sciml.report._math import residual_formula

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STATES = ["x", "y"]


def _lv(t, y, a=1.3, b=0.9, c=0.8, d=1.8):
    x, yy = y
    return [a * x - b * x * yy, c * x * yy - d * yy]


def _simulate(field, y0, t) -> np.ndarray:
    return solve_ivp(field, (t[0], t[-1]), y0, t_eval=t, rtol=1e-8, atol=1e-10).y.T


def write_run(folder: Path, *, n_points: int = 20) -> Path:
    """A complete run folder (docs/outputs.md) of a known Lotka–Volterra system, written here."""
    folder.mkdir(parents=True)
    t = np.linspace(0.0, 5.0, n_points)
    y0 = [1.0, 1.0]
    ys = _simulate(_lv, y0, t)
    pd.DataFrame({"t": t, "x": ys[:, 0], "y": ys[:, 1]}).to_csv(folder / "data.csv", index=False)
    (folder / "model.toml").write_text(
        '[model]\nstates = ["x", "y"]\n[model.parameters]\nalpha = 1.3\ndelta = 1.8\n'
        '[model.equations]\nx = "alpha*x"\ny = "-delta*y"\n[residual]\nstates = ["x", "y"]\n'
    )
    grid = np.linspace(0.0, 7.5, 120)
    truth = _simulate(_lv, y0, grid)
    mech = _simulate(lambda _, y: [1.3 * y[0], -1.8 * y[1]], y0, grid)
    frames = []
    for model, pred in [("mechanistic", mech), ("ude", truth * 1.01), ("final", truth)]:
        frames.append(
            pd.DataFrame(
                {"model": model, "trajectory": "0", "t": grid, "x": pred[:, 0], "y": pred[:, 1]}
            )
        )
    pd.concat(frames).to_parquet(folder / "predictions.parquet", index=False)
    dense_t = np.linspace(0.0, 5.0, 80)
    X = _simulate(_lv, y0, dense_t)
    pd.DataFrame(
        {
            "source": 0,
            "t": dense_t,
            "x": X[:, 0],
            "y": X[:, 1],
            "residual_x": -0.9 * X[:, 0] * X[:, 1] * 1.02,
            "residual_y": 0.8 * X[:, 0] * X[:, 1],
            "dx_dt": [_lv(0, r)[0] for r in X],
            "dy_dt": [_lv(0, r)[1] for r in X],
        }
    ).to_parquet(folder / "dense.parquet", index=False)
    rows = [
        ("x", "sindy", 1, 5.0, 0.0, "-1.2", False, {"1": -1.2}, {"1": 0.4}),
        ("x", "sindy", 4, 0.02, 1.2, "-0.9*x*y", True, {"x*y": -0.9}, {"x*y": 0.01}),
        ("x", "operon", 7, 0.01, 0.1, "-0.91*x*y + 0.01", False, None, None),
        ("y", "sindy", 1, 4.0, 0.0, "0.9", False, {"1": 0.9}, {"1": 0.3}),
        ("y", "operon", 4, 0.03, 1.0, "0.8*x*y", True, None, None),
        ("y", "operon", 8, 0.02, 0.1, "0.79*x*y + 0.02*y", False, None, None),
    ]
    pd.DataFrame(
        [
            {
                "state": s,
                "engine": e,
                "complexity": c,
                "loss": lo,
                "score": sc,
                "equation": eq,
                "selected": sel,
                "coefficients": json.dumps(co) if co else None,
                "coef_std": json.dumps(sd) if sd else None,
            }
            for s, e, c, lo, sc, eq, sel, co, sd in rows
        ]
    ).to_csv(folder / "equations.csv", index=False)
    terms = [
        ("x", "x", 1.3, 0.01, "theory", True),
        ("x", "x*y", -0.9, 0.02, "discovered", True),
        ("y", "y", -1.8, 0.01, "theory", True),
        ("y", "x*y", 0.8, 0.015, "discovered", True),
        ("y", "1", 0.0, None, "discovered", False),
    ]
    discovered = {
        "parameters": {"alpha": 1.3, "delta": 1.8},
        "equations": {"x": "1.3*x - 0.9*x*y", "y": "0.8*x*y - 1.8*y"},
        "residual": {
            "x": {
                "engine": "sindy",
                "equation": "-0.9*x*y",
                "complexity": 4,
                "loss": 0.02,
                "final": "-0.9*x*y",
            },
            "y": {
                "engine": "operon",
                "equation": "0.8*x*y",
                "complexity": 4,
                "loss": 0.03,
                "final": "0.8*x*y",
            },
        },
        "metrics": {
            "extrapolation_bounded": {"mechanistic": False, "ude": True, "final": True},
            "mechanistic_rmse": {"x": 1.5, "y": 1.2},
            "ude_rmse": {"x": 0.02, "y": 0.02},
            "final_rmse": {"x": 0.015, "y": 0.018},
            "final_vs_ude_extrapolation": {"x": 0.01, "y": 0.01},
        },
        "mechanistic": {"equations": {"x": "1.3*x", "y": "-1.8*y"}, "cost": 20.0},
        "engines": {
            "requested": ["sindy", "operon"],
            "used": ["sindy", "operon"],
            "unavailable": {},
        },
        "terms": [
            dict(zip(["state", "term", "coefficient", "stderr", "origin", "kept"], r))
            for r in terms
        ],
        "pruned": [
            {
                "state": "y",
                "term": "1",
                "coefficient": 0.002,
                "bic_before": -100.0,
                "bic_after": -104.0,
            }
        ],
        "refit": {"sse": 0.01, "bic": -104.0, "n": 2 * n_points, "candidates_tried": []},
    }
    (folder / "discovered.json").write_text(json.dumps(discovered))
    config = {
        "data": str(folder / "data.csv"),
        "model_file": str(folder / "model.toml"),
        "inputs": {"states": STATES, "n_trajectories": 1, "n_points": n_points},
        "model": {
            "states": STATES,
            "parameters": {"alpha": 1.3, "delta": 1.8},
            "fixed": [],
            "equations": {"x": "alpha*x", "y": "-delta*y"},
            "residual": STATES,
        },
        "config": {"seed": 7, "engines": ["sindy", "operon"], "holdout": 0.2, "extrapolate": 0.5},
        "versions": {"sciml": "0.1.0"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "run.json").write_text(
        json.dumps(
            {
                "timings": {"mechanistic": 1.0, "ude": 10.0, "engine:sindy": 0.5},
                "versions": {"sciml": "0.1.0", "python": "3.11"},
            }
        )
    )
    return folder


def _edit(folder: Path, change) -> None:
    path = folder / "discovered.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run")


def _titles(run_dir: Path) -> list[str]:
    return [f.title for f in findings(load_run(run_dir)) if f.level == "warning"]


# -- content --------------------------------------------------------------------------------------
def test_report_is_self_contained_and_shows_the_run(run_dir):
    path = render_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    # offline: nothing fetched from elsewhere; figures embedded, equations as MathML
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text
    images = re.findall(r'<img src="data:image/png;base64,', text)
    assert len(images) == 1 + 2 + 2  # fits; residual per state; Pareto per state
    assert text.count("<math") >= 3 * 2 + 4
    for expected in ["data.csv", "model.toml", "seed", "10.0 s", "sindy", "operon", "Pruned"]:
        assert expected in text
    # SINDy bootstrap std of the selected x formula's term, and the refit stderr
    assert "-0.9 ± 0.01" in text and "0.02" in text
    assert "No warnings" in text  # this run is healthy (20 points, good fit)
    assert not list(run_dir.glob(".report.html.*"))  # atomic write left no temporary file


def test_training_curves_are_shown_when_the_run_has_them(run_dir):
    text = render_report(run_dir).read_text()
    assert "No UDE training history" in text
    history = {
        "collocation": [1.0, 0.5, 0.2],
        "adam": [0.2, 0.1, 0.05],
        "lbfgs": [0.05, 0.04],
        "validation": [0.5, 0.1, 0.06],
        "best": [None],
    }
    (run_dir / "history.json").write_text(json.dumps(history))
    text = render_report(run_dir).read_text()
    section = text[text.index('id="training"') :]
    assert section.index("<img") < section.index("<h2", 5)  # the figure is in this section
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 2 + 2 + 1


def test_training_figure_shows_every_phase_with_its_chunks():
    from sciml.report._figures import phase_chunks, training_figure

    history = {
        "collocation": [1.0] * 120,  # 3 chunks of 50 (the last 20 steps)
        "adam": [0.5] * 200,  # 4 chunks
        "lbfgs": [0.1, None, 0.09],  # None: infinity, as history.json writes it; 1 chunk
        "validation": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
        "best": [0.09],
    }
    assert phase_chunks(history, 50) == [("collocation", 120, 3), ("adam", 200, 4), ("lbfgs", 3, 1)]
    fig = training_figure(history, chunk=50)
    loss, held = fig.axes[:2]
    assert [
        line.get_label() for line in loss.get_lines() if not line.get_label().startswith("_")
    ] == [
        "collocation (no ODE solves): 120 steps",
        "Adam through the ODE (growing windows): 200 steps",
        "L-BFGS polish: 3 steps",
    ]
    assert [len(line.get_xdata()) for line in held.get_lines()] == [3, 4, 1]
    # without the chunk size (an older run): chunks shared out in proportion, all shown
    assert sum(c for *_, c in phase_chunks(history, None)) == 8
    # a phase that did not run is not drawn; one that ran alone still is
    only = {"collocation": [1.0, 0.5], "adam": [], "lbfgs": [], "validation": [0.5]}
    assert phase_chunks(only, 50) == [("collocation", 2, 1)]
    assert training_figure(only, 50) is not None


def test_warning_count_counts_warnings_only(run_dir):
    """Notes are listed apart; the count above the warnings is theirs alone."""

    def one_warning_two_notes(d):
        d["engines"]["unavailable"] = {"pysr": "No Julia was found"}  # a warning
        d["metrics"]["extrapolation_bounded"]["ude"] = False  # a note
        d["metrics"]["final_vs_ude_extrapolation"]["x"] = 0.9  # a note

    _edit(run_dir, one_warning_two_notes)
    levels = [f.level for f in findings(load_run(run_dir))]
    assert levels.count("warning") == 1 and levels.count("note") == 2
    text = render_report(run_dir).read_text()
    warnings = text[text.index('id="warnings"') : text.index('id="notes"')]
    notes = text[text.index('id="notes"') : text.index('id="equations"')]
    assert "<b>1 warning</b>" in warnings and warnings.count("<li") == 1
    assert "<b>2 notes</b>" in notes and notes.count("<li") == 2
    assert "Engine pysr unavailable" in warnings and "disagree past the data" in notes


def test_latex_of_the_final_equations_is_shown(run_dir):
    text = render_report(run_dir).read_text()  # an older run: no latex in discovered.json
    block = text[text.index('id="latex"') :]
    assert "\\frac{d x}{d t} = - 0.9 x y + 1.3 x" in block

    def sympy_names(d):
        d["latex"] = {"x": "\\frac{d S}{d t} = - \\beta I S", "y": None}

    _edit(run_dir, sympy_names)
    block = render_report(run_dir).read_text().split('id="latex"')[1]
    assert "\\beta I S" in block and "None" not in block.split("</details>")[0]


def test_poor_fit_and_other_problems_are_warned_about(run_dir):
    assert _titles(run_dir) == []

    def worse(d):
        d["metrics"]["final_rmse"]["x"] = 0.3  # 15x the UDE's, and large against the data
        d["metrics"]["extrapolation_bounded"]["final"] = False
        d["terms"][1]["stderr"] = 0.5  # 0.5 / 0.9: wide
        d["engines"]["unavailable"] = {"pysr": "PySR cannot run: No Julia was found"}

    _edit(run_dir, worse)
    titles = _titles(run_dir)
    assert "Poor fit of x in the training window" in titles
    assert "Poor fit of y in the training window" not in titles
    assert "The final model diverges in extrapolation" in titles
    assert "Wide uncertainty: x*y in dx/dt" in titles
    assert "Engine pysr unavailable" in titles
    text = render_report(run_dir).read_text()
    box = text[text.index('id="warnings"') : text.index('id="equations"')]
    assert "Poor fit of x" in box and "15.0× the UDE" in box
    assert "No Julia was found" in box


def test_few_points_are_warned_about(tmp_path):
    assert "Few data points: 10 per state" in _titles(write_run(tmp_path / "r", n_points=10))


def test_residual_with_refit_inner_constants_is_recovered():
    d = {
        "equations": {"x": "1.30997*x - 88.4894*y*tanh(0.0101385*x)"},
        "residual": {"x": {"final": "-88.4894*y*tanh(k_x_2_0*x)"}},
        "terms": [
            {"state": "x", "term": "x", "origin": "theory", "kept": True},
            {"state": "x", "term": "y*tanh(k_x_2_0*x)", "origin": "discovered", "kept": True},
        ],
    }
    expr = residual_formula(d, "x", STATES)
    x, y = sp.symbols("x y", real=True)
    assert sp.simplify(expr - (-88.4894 * y * sp.tanh(0.0101385 * x))) == 0


def test_missing_parts_degrade_to_notes(run_dir):
    (run_dir / "dense.parquet").unlink()
    (run_dir / "data.csv").unlink()
    text = render_report(run_dir).read_text()
    assert "no dense.parquet found" in text and "cannot be read" in text
    assert text.count("data:image/png;base64,") == 1 + 2  # fits (no data points) and Pareto


def test_not_a_run(tmp_path):
    with pytest.raises(InputError, match="discovered.json"):
        render_report(tmp_path)


def test_index_over_two_runs(tmp_path):
    runs = tmp_path / "runs"
    a = write_run(runs / "2024-01-01")
    b = write_run(runs / "2024-01-02")
    _edit(b, lambda d: d["equations"].update(x="1.25*x - 0.875*x*y"))
    (runs / "not-a-run").mkdir()
    path = render_index(runs)
    assert path == runs / "index.html"
    text = path.read_text()
    assert "2 run(s)" in text
    assert text.index("2024-01-01") < text.index("2024-01-02")
    assert 'href="2024-01-01/report.html"' in text and 'href="2024-01-02/report.html"' in text
    assert "0.875" in text and "<mn>0.9</mn>" in text  # both runs' equations, as MathML
    assert (a / "report.html").exists() and (b / "report.html").exists()
    assert "not-a-run" not in text


def test_cli_report(run_dir, tmp_path, capsys):
    from pipelines.cli import main

    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()
    assert main(["report", str(run_dir.parent), "--index"]) == 0
    assert (run_dir.parent / "index.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "discovered.json" in capsys.readouterr().err


# -- in a browser ---------------------------------------------------------------------------------
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  e.message || ("failed to load " + (e.target && (e.target.src || e.target.href)))), true);
const _err = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); _err(...a); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const maths = [...document.querySelectorAll("math")];
  const flat = maths.filter(m => m.getBoundingClientRect().width === 0).length;
  document.title = (bad || flat || window.__errors.length)
    ? `fail:${bad}:${flat}:${window.__errors.join("|")}` : `ok:${imgs.length}:${maths.length}`;
});
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make test-deps)")
def test_report_opens_in_chromium(run_dir, tmp_path):
    report = render_report(run_dir)
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("<head>", "<head>" + PROBE, 1))
    done = _chromium(
        "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile"
    )
    title = re.search(r"<title>(.*?)</title>", done.stdout)
    assert title, done.stderr[-2000:]
    n_images = report.read_text().count("<img ")
    assert title.group(1).startswith(f"ok:{n_images}:"), title.group(1)
    shot = tmp_path / "report.png"
    _chromium(
        "--window-size=1400,2400",
        f"--screenshot={shot}",
        report.as_uri(),
        profile=tmp_path / "profile",
    )
    assert shot.exists() and shot.stat().st_size > 50_000
