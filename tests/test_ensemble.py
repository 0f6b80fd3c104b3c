"""Ensembles of UDEs in one compiled program (`sciml._ensemble`), their summary, the CLI option,
the report section and the benchmark scripts (run small)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sciml
from sciml._ensemble import (
    MemberTerms,
    annotate_terms,
    bootstrap_weights,
    ensemble_table,
    half_sample,
    summarise_ensemble,
    train_ensemble,
)
from sciml._mechanistic import fit_mechanistic
from sciml._ude import UDEConfig

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "data/lotka_volterra/lotka_volterra.csv"
MODEL = ROOT / "data/lotka_volterra/model.toml"
TINY = UDEConfig(collocation_steps=60, windows=(0.5, 1.0), adam_steps=20, chunk=10, patience=50)


@pytest.fixture(scope="module")
def lv():
    model = sciml.load_model(MODEL)
    data = sciml.load_trajectories(CSV, model.states)
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    return model, data, fit


def test_bootstrap_weights_resample_the_points_of_the_mask():
    mask = np.ones((2, 7))
    mask[1, 5:] = 0  # padding
    w = bootstrap_weights(mask, 5, seed=3)
    assert w.shape == (5, 2, 7)
    assert np.all(w[:, 1, 5:] == 0)
    assert np.all(w.sum(axis=(1, 2)) == mask.sum())  # as many draws as points
    assert np.all(w == np.rint(w)) and w.min() >= 0
    assert len({w[m].tobytes() for m in range(5)}) == 5  # every member its own resample
    assert np.array_equal(w, bootstrap_weights(mask, 5, seed=3))  # reproducible
    assert np.array_equal(bootstrap_weights(mask, 2, seed=3, resample=False)[1], mask)


def test_half_samples_are_distinct_halves(lv):
    _, data, _ = lv
    (orig,) = data.trajectories
    halves = [half_sample(data, seed=s).trajectories[0] for s in range(3)]
    for tr in halves:
        assert len(tr.t) == len(orig.t) // 2
        assert np.all(np.diff(tr.t) > 0)  # strictly increasing: smoothing and shooting work
        rows = np.searchsorted(orig.t, tr.t)
        assert np.array_equal(orig.t[rows], tr.t) and np.array_equal(orig.y[rows], tr.y)
    assert not np.array_equal(halves[0].t, halves[1].t)
    assert np.array_equal(halves[2].t, half_sample(data, seed=2).trajectories[0].t)


def _member(terms, error=None):
    return MemberTerms(terms, {"x": "..."} if error is None else {}, error)


def test_summary_counts_members_and_spreads_coefficients():
    members = [_member({("x", "x*y"): -0.9 + 0.01 * i, ("y", "x*y"): 0.8}) for i in range(8)]
    members[0] = _member({("x", "x*y"): -0.5, ("x", "x**2"): 0.1})
    members.append(_member({}, error="cannot be integrated"))
    members.append(_member({("x", "x**2"): 0.3}))
    s = summarise_ensemble(members, level=0.8)
    assert s["members"] == 10 and s["distilled"] == 9 and s["failed"] == ["cannot be integrated"]
    by = {(t["state"], t["term"]): t for t in s["terms"]}
    xy = by[("x", "x*y")]
    assert xy["frequency"] == pytest.approx(0.8) and xy["members"] == 8
    values = [-0.5] + [-0.9 + 0.01 * i for i in range(1, 8)]
    assert xy["median"] == pytest.approx(np.median(values))
    lo, hi = xy["interval"]
    assert lo == pytest.approx(np.percentile(values, 10))
    assert hi == pytest.approx(np.percentile(values, 90))
    assert lo < xy["median"] < hi
    assert by[("y", "x*y")]["frequency"] == pytest.approx(0.7)
    assert by[("y", "x*y")]["interval"] == pytest.approx([0.8, 0.8])
    assert by[("x", "x**2")]["frequency"] == pytest.approx(0.2)

    terms = [
        {"state": "x", "term": "x", "origin": "theory", "kept": True},
        {"state": "x", "term": "x*y", "origin": "discovered", "kept": True},
        {"state": "x", "term": "y**3", "origin": "discovered", "kept": False},
    ]
    annotated = annotate_terms(terms, s)
    assert "ensemble_frequency" not in annotated[0]
    assert annotated[1]["ensemble_frequency"] == pytest.approx(0.8)
    assert annotated[1]["ensemble_interval"] == pytest.approx([lo, hi])
    assert annotated[2]["ensemble_frequency"] == 0.0 and annotated[2]["ensemble_interval"] is None

    table = ensemble_table(s)
    assert list(table.columns) == [
        "state",
        "term",
        "frequency",
        "members",
        "median",
        "lower",
        "upper",
    ]
    assert len(table) == 3 and table["lower"].le(table["upper"]).all()


def test_members_train_together_and_differ(lv):
    _, data, fit = lv
    ens = train_ensemble(fit, data, 3, key=jax.random.key(5), config=TINY)
    assert len(ens) == 3 and ens.weights.shape[0] == 3 and not ens.failed.any()
    assert ens.steps == TINY.collocation_steps + TINY.adam_steps * len(TINY.windows)
    outs = []
    for member in ens.members:
        h = member.history
        assert len(h["collocation"]) == TINY.collocation_steps
        assert len(h["adam"]) == TINY.adam_steps * len(TINY.windows)
        assert h["collocation"][-1] < h["collocation"][0]  # each member learns
        assert np.isfinite(h["adam"]).all()
        outs.append(np.asarray(member.ude.network(jnp.asarray([1.0, 2.0]))))
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
    with pytest.raises(ValueError, match="at least one member"):
        train_ensemble(fit, data, 0, key=jax.random.key(0), config=TINY)


def test_a_member_that_leaves_the_box_is_frozen_not_the_others(lv):
    """In the members' joint solve, a member whose state leaves the box around the data, or
    that is stopped, gets a zero field: it cannot make everyone's solve fail."""
    import equinox as eqx

    from sciml._ensemble import _member_field, _stack
    from sciml._ude import init_ude

    model, data, fit = lv
    y0s = jnp.asarray(fit.y0)
    parts = [
        eqx.partition((init_ude(model, fit.params, data, key=k), y0s), eqx.is_inexact_array)
        for k in jax.random.split(jax.random.key(2), 3)
    ]
    trainables, static = _stack([p[0] for p in parts]), parts[0][1]
    y = jnp.asarray([[1.0, 2.0], [1e9, 2.0], [1.5, 0.5]])
    field = _member_field(static, jnp.asarray([True, True, False]), jnp.asarray([1e3, 1e3]))
    dy = np.asarray(field(trainables, 0.0, y))
    own = eqx.combine(parts[0][0], static)[0]
    assert np.allclose(dy[0], np.asarray(own(0.0, y[0])))  # unchanged
    assert np.all(dy[1] == 0) and np.all(dy[2] == 0)  # out of the box; stopped


def test_cli_takes_ensemble_and_refuses_a_negative_one(tmp_path, capsys):
    from pipelines import cli
    from pipelines.flows import discovery_config

    args = cli._parser().parse_args(
        ["discover", str(CSV), "--model", str(MODEL), "--out", str(tmp_path), "--ensemble", "7"]
    )
    params = cli._discover_params(args)
    assert params.ensemble == 7 and discovery_config(params)["ensemble"] == 7
    out = tmp_path / "o"
    argv = ["discover", str(CSV), "--model", str(MODEL), "--out", str(out), "--ensemble", "-2"]
    code = cli.main(argv)
    assert code == 2
    assert "ensemble" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_report_shows_the_ensemble():
    from sciml.report._html import _ensemble_section

    discovered = {
        "terms": [{"state": "x", "term": "x*y", "origin": "discovered", "kept": True}],
        "ensemble": summarise_ensemble(
            [_member({("x", "x*y"): -0.9}), _member({("x", "x*y"): -0.8, ("x", "y**2"): 0.1})]
        ),
    }
    html = _ensemble_section(types.SimpleNamespace(discovered=discovered, states=("x", "y")))
    assert "Ensemble of 2 UDEs" in html
    assert "100%" in html and "50%" in html  # x*y in both, y**2 in one
    assert html.count("<tr>") >= 3
    assert _ensemble_section(types.SimpleNamespace(discovered={}, states=("x",))) == ""


@pytest.mark.slow
def test_ensemble_stage_finds_the_missing_terms_with_intervals(lv):
    """Four members in one program on the bundled data (21 points), each distilled (SINDy),
    its model refit to its own half of the data: x*y is each state's most frequent discovered
    term, kept by at least half of the members, its median coefficient near the truth, and the
    halves give an interval of non-zero width."""
    from sciml.discover import DiscoveryConfig, ensemble_stage

    model, data, fit = lv
    config = dataclasses.replace(
        DiscoveryConfig.make(engines=["sindy"], ensemble=4),
        ude=dataclasses.replace(TINY, collocation_steps=600, adam_steps=50, patience=2),
    )
    s = ensemble_stage(model, fit, data, config)
    assert s["members"] == 4 and s["distilled"] + len(s["failed"]) == 4
    assert len(s["equations"]) == 4
    for state, truth in (("x", -0.9), ("y", 0.8)):
        mine = [t for t in s["terms"] if t["state"] == state]
        top = max(mine, key=lambda t: t["frequency"])
        assert top["term"] == "x*y" and top["frequency"] >= 0.5, mine
        lo, hi = top["interval"]
        assert lo <= top["median"] <= hi
        assert abs(top["median"] - truth) < 0.15 * abs(truth)
        if top["members"] > 1:
            assert hi > lo  # different halves, different refits
    json.dumps(s)  # goes into discovered.json as it is


@pytest.mark.slow
def test_gpu_check_runs_degraded_on_cpu(tmp_path):
    """`bench/gpu.py --smoke` on this machine's CPU: every figure recorded, JSON + markdown."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    md = (tmp_path / "gpu-check.md").read_text()
    assert result["device"]["platform"] == "cpu"
    assert set(result["ensemble"]) == {"1", "2"}
    for k, row in result["ensemble"].items():
        assert row["member_steps_per_s"] > 0 and row["k"] == int(k)
    assert result["cnf"]["steps_per_s"] > 0 and result["classifier"]["steps_per_s"] > 0
    assert "member steps / s" in md and "SMOKE RUN" in md
    assert result["discovery_cpu"] == {"skipped": "--smoke"}


@pytest.mark.slow
def test_discover_flow_with_an_ensemble(prefect_harness, tmp_path):
    """`sciml discover --ensemble 2` through the Prefect flow: the ensemble in discovered.json,
    ensemble.csv and the report."""
    from pipelines.flows import discover
    from pipelines.params import DiscoverParams, UDESettings

    params = DiscoverParams(
        data=CSV,
        model=MODEL,
        out=tmp_path / "run",
        engines=("sindy",),
        ensemble=2,
        ude=UDESettings(
            collocation_steps=300, windows=(1.0,), adam_steps=20, lbfgs_steps=0, chunk=10
        ),  # no L-BFGS polish: the ensemble's way through the flow is what is checked
    )
    result = discover(params)
    out = Path(result["out"])
    discovered = json.loads((out / "discovered.json").read_text())
    ens = discovered["ensemble"]
    assert ens["members"] == 2 and len(ens["equations"]) == 2
    assert any(t.get("ensemble_frequency") is not None for t in discovered["terms"])
    table = (out / "ensemble.csv").read_text().splitlines()
    assert table[0] == "state,term,frequency,members,median,lower,upper"
    assert len(table) == 1 + len(ens["terms"])
    assert "Ensemble of 2 UDEs" in (out / "report.html").read_text()
