"""The notebook API (`sciml.discover(...)`, `sciml.cnf(...)`, `sciml.classify(...)`, docs/api.md).

One short discovery of the bundled Lotka–Volterra data (the quick schedule, SINDy only) is
shared by the tests that read a result; the other inputs (a dict model, no theory) run on a
one-state decay whose stages are cheap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import sympy as sp

import sciml
from sciml import DataError, InputError, ModelFileError
from sciml.discover import DiscoveryConfig

ROOT = Path(__file__).resolve().parent.parent
LV_DATA = ROOT / "data/lotka_volterra/lotka_volterra.csv"
LV_MODEL = ROOT / "data/lotka_volterra/model.toml"
RATE = 0.5  # of the decay below


def decay(n: int = 25, rate: float = RATE, noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """dx/dt = -rate*x from x(0) = 2, with 1% multiplicative noise."""
    t = np.linspace(0.0, 4.0, n)
    x = 2.0 * np.exp(-rate * t) * (1 + noise * np.random.default_rng(seed).standard_normal(n))
    return pd.DataFrame({"t": t, "x": x})


@pytest.fixture(scope="module")
def lv(tmp_path_factory):
    """The bundled data as a DataFrame, the bundled model as a TOML string."""
    out = tmp_path_factory.mktemp("api") / "lv"
    found = sciml.discover(
        pd.read_csv(LV_DATA),
        LV_MODEL.read_text(),
        out=out,
        quick=True,
        engines="sindy",
        show_progress=False,
    )
    return found, out


def test_same_seed_same_result(lv, tmp_path):
    """A second run with the same inputs and seed writes the same `discovered.json`."""
    found, out = lv
    again = sciml.discover(
        pd.read_csv(LV_DATA),
        LV_MODEL.read_text(),
        out=tmp_path / "again",
        quick=True,
        engines="sindy",
        show_progress=False,
    )
    assert again.equations == found.equations
    first = json.loads((out / "discovered.json").read_text())
    assert json.loads((tmp_path / "again" / "discovered.json").read_text()) == first


def _coefficient(expr: sp.Expr, term: str) -> float:
    return float(sum(c for t, c in expr.as_coefficients_dict().items() if str(t) == term))


def test_discover_finds_the_bundled_missing_terms(lv):
    found, out = lv
    assert isinstance(found, sciml.Discovery)
    assert jax.config.read("jax_enable_x64")  # the library switched to float64 where it needs it
    assert (found.predictions[["x", "y"]].dtypes == np.float64).all()  # simulated in float64
    exprs = found.to_sympy()
    # -0.9xy and +0.8xy (the data's truth), found from 21 noisy points
    assert abs(_coefficient(exprs["x"], "x*y") / -0.9 - 1) < 0.1, found.equations
    assert abs(_coefficient(exprs["y"], "x*y") / 0.8 - 1) < 0.1, found.equations
    assert set(found.parameters) == {"alpha", "delta"}
    # the same result as the run folder's files
    written = json.loads((out / "discovered.json").read_text())
    assert written["equations"] == found.equations and written["latex"] == found.latex
    assert (out / "input.parquet").exists() and (out / "model.toml").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == str(out / "input.parquet")
    assert DiscoveryConfig.from_dict(config["config"]) == found.config
    assert found.config.engines == ("sindy",) and found.config.ude.adam_steps == 200


def test_sympy_and_latex_use_the_state_names(lv):
    found, _ = lv
    x, y = sp.Symbol("x", real=True), sp.Symbol("y", real=True)
    for expr in found.to_sympy().values():
        assert expr.free_symbols <= {x, y}
    latex = found.to_latex()
    assert latex.startswith("\\begin{aligned}") and latex.endswith("\\end{aligned}")
    assert "\\frac{d x}{d t} &=" in latex and "\\frac{d y}{d t} &=" in latex
    assert re.search(r"0\.8\d* x y", found.latex["y"]), found.latex


def test_table_lists_the_terms_with_their_coefficients(lv):
    found, _ = lv
    table = found.table()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns[:6]) == ["state", "term", "coefficient", "stderr", "origin", "kept"]
    kept = table[table["kept"]]
    assert {(s, t) for s, t in zip(kept["state"], kept["term"])} >= {("x", "x*y"), ("y", "x*y")}
    theory = kept[kept["origin"] == "theory"].set_index("state")["coefficient"]
    assert abs(theory["x"] / 1.3 - 1) < 0.05 and abs(theory["y"] / -1.8 - 1) < 0.05


def test_report_repr_and_html(lv, tmp_path):
    found, _ = lv
    path = found.report(tmp_path / "r.html")
    text = path.read_text()
    assert "<script" not in text and "\\frac{d x}{d t}" in text  # LaTeX shown, nothing loaded
    assert 'src="data:image/png;base64,' in text  # the data points: held in memory
    assert found.report(tmp_path) == tmp_path / "report.html"
    shown = repr(found)
    assert "dx/dt = " in shown and "x*y" in shown and str(found.out) in shown
    assert "<math" in found._repr_html_()


def test_dict_model_and_trajectory_set_in_memory(tmp_path):
    """A model as a dict and the data as a TrajectorySet, no run folder kept. The rate is
    declared known and there is no residual: no stage but the mechanistic one has work (the
    stages themselves are tested elsewhere)."""
    frame = decay()
    data = sciml.from_arrays(["x"], [frame["t"].to_numpy()], [frame[["x"]].to_numpy()])
    model = {
        "model": {
            "states": ["x"],
            "parameters": {"k": {"value": RATE, "fixed": True}},
            "equations": {"x": "-k*x"},
        }
    }
    found = sciml.discover(data, model, show_progress=False, engines=["sindy"], n_starts=1)
    assert found.out is None and found.parameters == {"k": RATE}
    assert found.discovered["metrics"]["mechanistic_rmse"]["x"] < 0.05  # 1% noise on x <= 2
    assert found.table().empty and list(found.table().columns)[:2] == ["state", "term"]
    assert found.latex["x"] == "\\frac{d x}{d t} = - 0.5 x"
    assert "not kept" in repr(found) and "k=0.5" in repr(found)
    text = found.report(tmp_path / "r.html").read_text()  # the folder is gone; the report not
    assert "not kept (in memory)" in text and "\\frac{d x}{d t} = - 0.5 x" in text


def test_no_theory_from_a_file(tmp_path):
    """No model: every column but t is a state whose whole right-hand side is learned. Stopped
    by the time budget after the mechanistic stage (the learning is tested on the bundled data
    above and in test_discovery.py): the inputs and the partial result are what is checked."""
    path = tmp_path / "decay.csv"
    decay().assign(z=1.0).to_csv(path, index=False)
    found = sciml.discover(path, out=tmp_path / "run", max_minutes=1e-4, show_progress=False)
    assert found.model.states == ("x", "z") and found.model.residual_states == ("x", "z")
    assert found.equations == {"x": "0", "z": "0"}
    assert found.discovered["partial"]["stopped_before"] == "UDE training"
    assert "PARTIAL" in repr(found)
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["data"] == str(path) and config["model_file"] is None


def test_settings_map_onto_the_config():
    from sciml._ude import UDEConfig
    from sciml.api import discovery_config

    assert discovery_config() == DiscoveryConfig()
    quick = discovery_config(quick=True, seed=3, engines="sindy, operon", holdout=0.2)
    assert quick.ude == UDEConfig().quick() and quick.seed == 3 and quick.holdout == 0.2
    assert quick.engines == ("sindy", "operon")
    assert discovery_config(quick=True, ude={"width": 8}).ude == UDEConfig().quick().replace(
        width=8
    )


def test_bad_settings_and_inputs_are_refused_before_any_file(tmp_path):
    out = tmp_path / "never"
    frame = decay()
    with pytest.raises(InputError, match="unknown setting.*\\bepochs\\b"):
        sciml.discover(frame, out=out, epochs=3)
    with pytest.raises(InputError, match="ude: unknown setting.*widht"):
        sciml.discover(frame, out=out, ude={"widht": 8})
    with pytest.raises(InputError, match="holdout"):
        sciml.discover(frame, out=out, holdout=2.0)
    with pytest.raises(InputError, match="engine"):
        sciml.discover(frame, out=out, engines="eureqa")
    bad = frame.copy()
    bad.loc[4, "t"] = bad.loc[3, "t"]
    with pytest.raises(DataError, match="^DataFrame: trajectory '0', row 5: duplicate time"):
        sciml.discover(bad, out=out)
    with pytest.raises(ModelFileError, match="TOML string"):
        sciml.discover(frame, "[model]\nstates = [", out=out)
    with pytest.raises(InputError, match="data must be"):
        sciml.discover([1, 2, 3], out=out)
    assert not out.exists()


def test_importing_sciml_leaves_jax_precision_alone():
    import subprocess
    import sys

    code = (
        "import jax, sciml; a = jax.config.read('jax_enable_x64'); "
        "sciml.load_model('data/lotka_volterra/model.toml'); "
        "print(a, jax.config.read('jax_enable_x64'), callable(sciml.discover), "
        "sciml.discover.run_discovery.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True", "True", "run_discovery"]


def test_cnf_and_classify_are_callable_with_settings_checked():
    with pytest.raises(InputError, match="sciml.cnf: unknown setting.*epochs"):
        sciml.cnf("sklearn:iris", epochs=3)
    with pytest.raises(InputError, match="sciml.classify: unknown setting.*steps"):
        sciml.classify("digits", steps=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)) * [1.0, 0.3]
    fit = sciml.cnf(x, steps=20, width=8, depth=1, checkpoint_every=10, n_samples=10)
    assert fit.out is None and fit.columns == ("x0", "x1") and np.isfinite(fit.metrics["test_nll"])
    assert fit.log_prob(x[:5]).shape == (5,) and fit.sample(10).shape == (10, 2)
    assert "DensityFit(2-D" in repr(fit)
