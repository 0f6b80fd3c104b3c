"""The CNF stage: density accuracy against a known density, samples, trace estimators, bad
data, resumable training.

One module-scoped training run on a 2-D Gaussian mixture with a known density serves the
accuracy, sample and trace tests (training dominates the cost; ~1 min on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from sciml import DataError, InputError
from sciml.cnf import (
    RK4,
    CNFConfig,
    energy_distance,
    evaluate_log_prob,
    fit_cnf,
    gaussian_logpdf,
    integrate_to_base,
    load_cnf,
    load_table,
    log_prob,
    resolve_trace,
    run_cnf,
    validation_rows,
)

GENERATE = Path(__file__).resolve().parents[1] / "data" / "cnf" / "generate.py"

# ---------------------------------------------------------------------------------------------
# A 2-D Gaussian mixture with a known density.

WEIGHTS = np.array([0.5, 0.5])
MEANS = np.array([[-1.5, 0.0], [1.5, 0.5]])
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]])


def draw_mixture(n: int, rng: np.random.Generator) -> np.ndarray:
    comp = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    chol = np.linalg.cholesky(COVS)
    z = rng.standard_normal((n, 2))
    return MEANS[comp] + np.einsum("nij,nj->ni", chol[comp], z)


def mixture_logpdf(x: np.ndarray) -> np.ndarray:
    dens = sum(w * multivariate_normal(m, c).pdf(x) for w, m, c in zip(WEIGHTS, MEANS, COVS))
    return np.log(dens)


# The default training (loose training solves, kinetic regulariser, learning rate, batch) with
# a narrower field and few steps: well under a minute on 2 CPU cores.
FAST = CNFConfig(width=32, depth=3, steps=600)


def _write(path, x, columns=("x", "y")):
    pd.DataFrame(x, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnf")
    rng = np.random.default_rng(1234)
    train = _write(root / "train.csv", draw_mixture(2000, rng))
    test = _write(root / "test.csv", draw_mixture(1000, rng))
    out = root / "run"
    metrics = run_cnf(train, out, test=test, seed=0, config=FAST)
    x_test = pd.read_csv(test).to_numpy()
    return {"metrics": metrics, "out": out, "x_test": x_test}


# ---------------------------------------------------------------------------------------------
# Accuracy


@pytest.mark.slow
def test_nll_within_0p1_nats_of_true_density(trained):
    true_nll = -float(np.mean(mixture_logpdf(trained["x_test"])))
    got = trained["metrics"]["test_nll"]
    # An untrained flow (the standardised Gaussian) is ~0.67 nats off on this mixture, so the
    # bound is informative: it needs the bimodality learnt.
    assert abs(got - true_nll) < 0.1, (got, true_nll)


@pytest.mark.slow
def test_outputs_written_and_model_reloads(trained):
    out, metrics = trained["out"], trained["metrics"]
    for name in ("metrics.json", "model.eqx", "model.json", "samples.csv", "history.csv"):
        assert (out / name).is_file(), name
    for name in ("density.png", "samples.png", "training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "checkpoint.eqx").exists() and not (out / "checkpoint.json").exists()
    assert not list(out.glob(".*.tmp"))
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("test_nll", "train_seconds", "eval_solver_steps", "train_solver_steps"):
        assert on_disk[key] == pytest.approx(metrics[key])
    assert on_disk["eval_trace"] == "exact" and on_disk["n_test"] == 1000
    assert metrics["eval_solver_steps"] >= 1 and metrics["train_seconds"] > 0
    # The loss curves: one row per check, validation NLL included; the kept model is the
    # best check's (its validation NLL is the smallest in the curve).
    history = pd.read_csv(out / "history.csv")
    assert {"step", "loss", "val_nll", "lr"} <= set(history.columns)
    assert len(history) == metrics["steps"] // FAST.checkpoint_every
    assert metrics["validation_nll"] == pytest.approx(history["val_nll"].min(), abs=1e-4)
    assert metrics["best_step"] == int(history["step"][history["val_nll"].idxmin()])
    assert metrics["n_validation"] == 200 and metrics["n_train"] == 2000

    model = load_cnf(out)
    lp, _ = evaluate_log_prob(model, trained["x_test"])
    assert -np.mean(lp) == pytest.approx(metrics["test_nll"], abs=1e-5)
    samples = pd.read_csv(out / "samples.csv")
    assert list(samples.columns) == ["x", "y"] and len(samples) == 2000
    assert np.isfinite(samples.to_numpy()).all()


@pytest.mark.slow
def test_samples_match_heldout_data(trained):
    """Energy distance of CNF samples to held-out data, against two references:

    - null: the same statistic between two independent samples of the true mixture of the same
      sizes (what a perfect model scores; 20 repeats give its mean and spread);
    - wrong: a single Gaussian with the mixture's mean and covariance (right first two moments,
      wrong shape), which a model that failed to learn the bimodality would resemble.

    The model must be within the null's 99th percentile plus 10% of the wrong model's gap.
    """
    x_test = trained["x_test"]
    samples = pd.read_csv(trained["out"] / "samples.csv").to_numpy()
    rng = np.random.default_rng(7)
    null = [energy_distance(draw_mixture(len(samples), rng), x_test) for _ in range(20)]
    allx = draw_mixture(20000, rng)
    wrong_samples = rng.multivariate_normal(allx.mean(0), np.cov(allx.T), size=len(samples))
    wrong = energy_distance(wrong_samples, x_test)
    model = energy_distance(samples, x_test)
    threshold = np.quantile(null, 0.99) + 0.1 * (wrong - np.mean(null))
    assert wrong > 10 * np.quantile(null, 0.99)  # the wrong model is clearly separable
    assert model < threshold, (model, threshold, np.mean(null), wrong)


@pytest.mark.slow
def test_exact_trace_and_hutchinson_agree_within_standard_error(trained):
    model = load_cnf(trained["out"])
    x = jnp.asarray(trained["x_test"], jnp.float32)
    exact, st_e = log_prob(model, x, trace="exact")
    hutch, st_h = log_prob(model, x, trace="hutchinson", key=jr.key(3))
    hutch2, _ = log_prob(model, x, trace="hutchinson", key=jr.key(4))
    assert bool(st_e.ok) and bool(st_h.ok)
    diff = np.asarray(hutch - exact, np.float64)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.std() > 1e-4  # the estimator really is stochastic ...
    assert not np.allclose(hutch, hutch2)  # ... and the noise follows the key
    # Unbiased: the mean difference over 1000 points is within 3 standard errors (plus a
    # 1e-3-nat allowance for the two adaptive solves taking different steps).
    assert abs(diff.mean()) < 3 * se + 1e-3, (diff.mean(), se)


@pytest.mark.slow
def test_loose_training_solve_agrees_with_the_tight_evaluation(trained):
    """Training solves at rtol = atol = 1e-3; the reported densities at 1e-5.

    On the trained model the loose solve gives nearly the same log-densities as the tight one
    (the error control bounds the difference; a model that had learnt to exploit a coarse
    solver's error would not pass), in fewer steps."""
    model = load_cnf(trained["out"])
    config = CNFConfig.from_dict(json.loads((trained["out"] / "model.json").read_text())["config"])
    assert config.dt is None and config.rtol == 1e-3 and config.kinetic > 0  # the defaults
    x = jnp.asarray(trained["x_test"], jnp.float32)
    out, stats = integrate_to_base(
        model.field, model.standardise(x), model.t1, trace="exact", rtol=1e-3, atol=1e-3
    )
    assert bool(stats.ok)
    loose = gaussian_logpdf(out.z) + out.delta_logp - model.log_scale()
    tight, tight_stats = log_prob(model, x)
    diff = np.abs(np.asarray(loose - tight))
    assert diff.mean() < 0.01, diff.mean()
    assert int(stats.num_steps) < int(tight_stats.num_steps)
    assert 0 < trained["metrics"]["train_solver_steps"] < trained["metrics"]["eval_solver_steps"]


def test_rk4_converges_at_fourth_order():
    """`RK4` with fixed steps on dy/dt = cos(t) y (exact: exp(sin t)): halving the step divides
    the error by about 2^4 = 16 (a wrong tableau gives another order or no convergence).
    In float64: float32's rounding over the steps is of the size of the smaller error."""
    from sciml import ensure_float64

    ensure_float64()

    def error(dt: float) -> float:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: jnp.cos(t) * y),
            RK4(),
            t0=0.0,
            t1=4.0,
            dt0=dt,
            y0=jnp.asarray(1.0, dtype=jnp.float64),
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        return abs(float(sol.ys[-1]) - math.exp(math.sin(4.0)))

    e1, e2 = error(0.1), error(0.05)  # in the asymptotic range (at 0.4 -> 0.2: 10.7)
    assert 1e-8 < e1 < 1e-5
    assert 13 < e1 / e2 < 19, (e1, e2)


def test_trace_method_chosen_by_dimension():
    assert resolve_trace("auto", 2) == "exact"
    assert resolve_trace("auto", 30) == "hutchinson"
    assert resolve_trace("hutchinson", 2) == "hutchinson"
    with pytest.raises(ValueError):
        resolve_trace("lanczos", 2)


# ---------------------------------------------------------------------------------------------
# Bad data


def _csv(path, text):
    path.write_text(text)
    return path


def _good_rows(n, rng=None):
    rng = rng or np.random.default_rng(0)
    return "\n".join(f"{a:.4f},{b:.4f}" for a, b in rng.standard_normal((n, 2)))


BAD_CASES = {
    # name: (file contents or None for no file, substrings the message must contain)
    "non_numeric": ("x,y\n" + _good_rows(40) + "\n1.0,abc\n", ["'y'", "row 41", "abc"]),
    "nan": ("x,y\n1.0,2.0\nnan,3.0\n" + _good_rows(40) + "\n", ["'x'", "row 2", "NaN"]),
    "missing": ("x,y\n" + _good_rows(5) + "\n1.0,\n" + _good_rows(40) + "\n", ["'y'", "row 6"]),
    "constant": ("x,y\n" + "\n".join(f"{i},3.5" for i in range(60)) + "\n", ["'y'", "constant"]),
    "too_few_rows": ("x,y\n" + _good_rows(10) + "\n", ["10 data row", "row 10", "batch"]),
    "empty": ("", ["empty"]),
    "header_only": ("x,y\n", ["no data rows"]),
    "missing_file": (None, ["no such file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_raises_data_error_naming_file_column_row(tmp_path, case):
    text, needles = BAD_CASES[case]
    path = tmp_path / f"{case}.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError) as info:
        run_cnf(path, tmp_path / "out", steps=1)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_npz_names_column_and_row(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 3))
    x[17, 2] = np.nan
    np.savez(tmp_path / "d.npz", data=x)
    with pytest.raises(DataError, match=r"column 2 .*row 18"):
        load_table(tmp_path / "d.npz")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(DataError, match="exactly one array"):
        load_table(tmp_path / "two.npz")


def test_test_file_with_other_columns_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    train = _write(tmp_path / "train.csv", rng.standard_normal((64, 2)))
    test = _write(tmp_path / "test.csv", rng.standard_normal((16, 2)), columns=("x", "z"))
    with pytest.raises(DataError, match=r"test\.csv.*missing \['y'\]"):
        run_cnf(train, tmp_path / "out", test=test, steps=1)


def test_cli_bad_data_exit_code_2(prefect_harness, tmp_path):
    """Through the command line (and its Prefect flow): exit code 2, nothing written.

    (The message is checked by the tests above: pytest's capsys and Prefect's log handlers
    clash.)
    """
    from pipelines.cli import main

    bad = _csv(tmp_path / "bad.csv", "a,b\n" + _good_rows(40) + "\n2.0,oops\n")
    assert main(["cnf", "--data", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_sklearn_tabular_data_is_bundled():
    table = load_table("sklearn:wine")
    assert table.values.shape == (178, 13) and np.isfinite(table.values).all()
    assert table.columns[0] == "alcohol"
    with pytest.raises(DataError, match="sklearn:nope"):
        load_table("sklearn:nope")


def test_bundled_toy_csvs_load(tmp_path):
    spec = importlib.util.spec_from_file_location("cnf_generate", GENERATE)
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name in generate.DENSITIES:
        table = load_table(generate.HERE / f"{name}.csv")
        assert table.values.shape == (generate.N_ROWS, 2) and table.columns == ("x", "y")
    # The generator is deterministic: regenerating reproduces the committed files.
    paths = generate.main(tmp_path)
    for p in paths:
        assert p.read_text() == (generate.HERE / p.name).read_text()


# ---------------------------------------------------------------------------------------------
# Resume


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    """Interrupt after the first checkpoint, rerun: the result equals an uninterrupted run.

    Batches and noise are functions of (seed, step) and the checkpoint holds the exact float32
    parameters and optimiser state, so we expect bit-identical results; the tolerance is 1e-6
    (absolute, on parameters and NLL) only to allow for a different XLA reduction order.
    """
    data = _write(tmp_path / "mix.csv", draw_mixture(400, np.random.default_rng(5)))
    config = CNFConfig(width=16, depth=2, steps=60, batch_size=64, checkpoint_every=20)
    kwargs = dict(seed=0, config=config, n_samples=200, plots=False)

    full = run_cnf(data, tmp_path / "full", **kwargs)

    def stop_at_20(step, record, model):
        if step == 20:
            raise _Stop

    part = tmp_path / "part"
    with pytest.raises(_Stop):
        run_cnf(data, part, callback=stop_at_20, **kwargs)
    assert (part / "checkpoint.eqx").exists() and not (part / "metrics.json").exists()
    assert json.loads((part / "checkpoint.json").read_text())["step"] == 20

    # A checkpoint from another configuration (here: another seed) is not resumed.
    other = tmp_path / "other"
    shutil.copytree(part, other)
    assert run_cnf(data, other, **{**kwargs, "seed": 1})["resumed_from_step"] == 0

    resumed = run_cnf(data, part, **kwargs)
    assert resumed["resumed_from_step"] == 20 and full["resumed_from_step"] == 0
    assert not (part / "checkpoint.eqx").exists() and not (part / "checkpoint.json").exists()
    assert resumed["test_nll"] == pytest.approx(full["test_nll"], abs=1e-6)
    a, b = load_cnf(tmp_path / "full"), load_cnf(part)
    leaves_a = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    leaves_b = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    assert max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(leaves_a, leaves_b)) <= 1e-6
    hist_full = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns="seconds")
    hist_part = pd.read_csv(part / "history.csv").drop(columns="seconds")
    np.testing.assert_allclose(hist_part.to_numpy(), hist_full.to_numpy(), atol=1e-6)
    # ... and training does depend on the seed, so the comparison above could fail.
    assert (
        abs(resumed["test_nll"] - json.loads((other / "metrics.json").read_text())["test_nll"])
        > 1e-4
    )


def test_training_stops_when_validation_stops_improving_and_keeps_the_best():
    """On a plain Gaussian (which the untrained flow nearly is already) the validation NLL
    plateaus at once: the learning rate is halved down to its floor, training stops long before
    the step limit, and the returned model is the best check's, not the last one."""
    x = np.random.default_rng(3).standard_normal((600, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    config = CNFConfig(width=8, depth=1, steps=5000, batch_size=64, checkpoint_every=10, patience=4)
    fit = fit_cnf(x, config, key=jr.key(0), seed=0)
    assert fit.stopped == "converged" and fit.steps < config.steps
    val = [r["val_nll"] for r in fit.history]
    assert len(val) == fit.steps // 10 and fit.n_validation == 60
    assert fit.best_validation_nll == pytest.approx(min(val))
    assert fit.best_step == fit.history[int(np.argmin(val))]["step"]
    # It stopped at least `patience` checks after the last improvement by MIN_IMPROVEMENT ...
    gains = [i for i in range(1, len(val)) if val[i] < min(val[:i]) - 1e-3]
    assert len(val) - 1 - max(gains, default=0) >= config.patience
    # ... and only once the rate had been halved to its floor (lr / 64): the rate in use at
    # the last checks was at most lr / 32 (a plateau at a higher rate is not convergence).
    lrs = [r["lr"] for r in fit.history]
    assert lrs[0] == pytest.approx(config.learning_rate)
    assert min(lrs) <= config.learning_rate / 32 * (1 + 1e-6)
    # The returned model scores the best validation NLL on the validation rows.
    _, val_rows = validation_rows(len(x), config.validation_fraction, jr.split(jr.key(0), 3)[0])
    lp, _ = evaluate_log_prob(fit.model, x[val_rows])
    assert -float(np.mean(lp)) == pytest.approx(fit.best_validation_nll, abs=1e-5)


def test_sharp_targets_have_normalised_known_densities():
    """The benchmark targets' log-densities integrate to 1 and match their samplers."""
    spec = importlib.util.spec_from_file_location("cnf_generate", GENERATE)
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    # Cell midpoints 0.025 apart (a quarter of the narrowest mode's sd), none on a square edge.
    g = np.arange(-3.5, 3.5, 0.025) + 0.0125
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    cell = 0.025**2
    rng = np.random.default_rng(0)
    for name, (draw, logpdf) in generate.SHARP.items():
        assert np.exp(logpdf(pts)).sum() * cell == pytest.approx(1.0, abs=0.01), name
        x = draw(4000, rng)
        assert np.isfinite(logpdf(x)).all(), name
        # Samples fall where the density is high: its mean over the samples is several times
        # its mean over the box (E_p[p] against E_uniform[p]).
        assert np.exp(logpdf(x)).mean() > 3 * np.exp(logpdf(pts)).mean(), name


def test_config_roundtrip():
    c = dataclasses.replace(CNFConfig(), kinetic=0.01, dt=0.1)
    assert CNFConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_bad_config_refused():
    with pytest.raises(InputError, match="patience"):
        CNFConfig(patience=0)
    with pytest.raises(InputError, match="validation_fraction"):
        CNFConfig(validation_fraction=1.0)
    for dt in (0.0, -0.1, 2.0):
        with pytest.raises(InputError, match="dt must lie"):
            CNFConfig(dt=dt)
    with pytest.raises(InputError, match="max_steps"):
        CNFConfig(dt=0.01, max_steps=50)
    with pytest.raises(InputError, match="kinetic"):
        CNFConfig(kinetic=-0.1)
    with pytest.raises(InputError, match="activation must be one of silu, tanh, softplus"):
        CNFConfig(activation="relu")
    assert CNFConfig(dt=None).dt is None  # adaptive training solves stay available


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_model_reloads_with_its_activation_and_old_files_as_tanh(tmp_path, activation):
    """The activation is not in the saved leaves: `load_cnf` rebuilds it from `model.json`, and
    a file from before it was a setting (no `activation` there) was trained with tanh."""
    from sciml.cnf import init_cnf, save_cnf

    x = np.random.default_rng(0).standard_normal((64, 2))
    config = CNFConfig(width=8, depth=2, activation=activation)
    model = init_cnf(x, config, key=jr.key(5))
    save_cnf(tmp_path, model, config, ["x", "y"])
    xs = jnp.asarray(x[:16], jnp.float32)
    reference = log_prob(model, xs)[0]
    assert np.allclose(log_prob(load_cnf(tmp_path), xs)[0], reference, atol=1e-5)
    hyper = json.loads((tmp_path / "model.json").read_text())
    del hyper["config"]["activation"]
    (tmp_path / "model.json").write_text(json.dumps(hyper))
    old = log_prob(load_cnf(tmp_path), xs)[0]
    assert np.allclose(old, reference, atol=1e-5) is (activation == "tanh")


def test_nonpositive_steps_refused(tmp_path):
    data = _write(tmp_path / "d.csv", np.random.default_rng(0).standard_normal((64, 2)))
    with pytest.raises(InputError, match="steps"):
        run_cnf(data, tmp_path / "o", steps=0)
