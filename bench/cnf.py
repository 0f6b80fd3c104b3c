"""CNF benchmark: held-out NLL on sharp 2-D targets with known densities, against the truth.

    .venv/bin/python bench/cnf.py                 # 4 targets, ~5-10 min each on 2 CPU cores
    .venv/bin/python bench/cnf.py --quick         # a smoke run (few steps, small data)
    .venv/bin/python bench/cnf.py --rnode         # also: solver steps with/without RNODE
    .venv/bin/python bench/cnf.py --set learning_rate=0.003 dt=none   # other settings (all targets)

1. For each target in `data/cnf/generate.py:SHARP` (ring of 8 and 4x4 grid of narrow
   Gaussians, a spiral of narrow Gaussians, a checkerboard; 20 000 training and 5 000 test
   samples): `run_cnf` with its default configuration (training to convergence on a
   validation share of the training rows; nothing is set per target), then the test NLL
   beside the true density's NLL on the same points. Target: within 0.05 nats. Also the cost:
   milliseconds per optimiser step (the first chunk, which compiles, left out; validation
   checks included) and solver steps per training and per evaluation solve.
2. (`--rnode`) Solver steps per adaptive evaluation solve without and with the RNODE
   regularisers on the ring: same data, seed and steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import tempfile
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
import pandas as pd

from sciml.cnf import CNFConfig, evaluate_log_prob, fit_cnf, run_cnf

ROOT = Path(__file__).resolve().parents[1]
TARGET_GAP = 0.05


def _generator():
    spec = importlib.util.spec_from_file_location("cnf_generate", ROOT / "data/cnf/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, x: np.ndarray) -> Path:
    pd.DataFrame(x, columns=["x", "y"]).to_csv(path, index=False, float_format="%.7g")
    return path


def one_target(name, draw, logpdf, root: Path, *, n_train, n_test, seed, config, time_limit):
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    x_train, x_test = draw(n_train, rng), draw(n_test, rng)
    # The CSV rounding is far below the mode width; the truth is scored on the rounded points.
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    train = _write(folder / "train.csv", x_train)
    test = _write(folder / "test.csv", x_test)
    x_test = pd.read_csv(test).to_numpy()
    true_nll = -float(np.mean(logpdf(x_test)))
    m = run_cnf(
        train,
        folder / "run",
        test=test,
        seed=seed,
        config=config,
        progress=False,
        time_limit=time_limit,
    )
    history = pd.read_csv(folder / "run" / "history.csv")
    ms = float("nan")
    if len(history) > 1:  # the first chunk compiles: left out
        ms = 1e3 * history["seconds"].diff().iloc[1:].sum() / history["step"].diff().iloc[1:].sum()
    png = (folder / "run" / "density.png").read_bytes()
    return {"name": name, "true_nll": true_nll, "ms_per_step": ms, "density_png": png, **m}


def tile_densities(path: Path, images: list[tuple[str, bytes]]) -> None:
    """One figure of every target's `density.png` (data | CNF density), one row each."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(images), 1, figsize=(9, 4.2 * len(images)), squeeze=False)
    for ax, (name, png) in zip(axes[:, 0], images):
        ax.imshow(plt.imread(io.BytesIO(png), format="png"))
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_settings(pairs: list[str]) -> dict:
    """`["learning_rate=0.003", "dt=none"]` -> CNFConfig field values (`none`: None)."""
    fields = {f.name: f for f in dataclasses.fields(CNFConfig)}
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD in {list(fields)}")
        default = getattr(CNFConfig(), name)
        if text.lower() == "none":
            out[name] = None
        elif isinstance(default, bool):
            out[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[name] = int(text)
        elif isinstance(default, str):
            out[name] = text
        else:
            out[name] = float(text)
    return out


def rnode(gen, seed: int, steps: int) -> None:
    draw, logpdf = gen.SHARP["ring8"]
    rng = np.random.default_rng(seed)
    x_train, x_test = draw(5000, rng), draw(2000, rng)
    true_nll = -float(np.mean(logpdf(x_test)))
    print("\n2. solver steps per solve, with and without RNODE (kinetic + Jacobian-Frobenius)")
    print(f"   ring8, {steps} steps each (no early stop); eval: Tsit5, rtol = atol = 1e-5")
    base = CNFConfig(steps=steps, validation_fraction=0.0)
    for label, cfg in [
        ("no regulariser", dataclasses.replace(base, kinetic=0.0, jacobian=0.0)),
        (f"kinetic {base.kinetic}", dataclasses.replace(base, jacobian=0.0)),
        ("RNODE 0.01/0.01", dataclasses.replace(base, kinetic=0.01, jacobian=0.01)),
    ]:
        fit = fit_cnf(x_train, cfg, key=jr.key(seed), seed=seed)
        lp, eval_steps = evaluate_log_prob(fit.model, x_test)
        train_steps = float(np.mean([r["solver_steps"] for r in fit.history[-3:]]))
        print(
            f"   {label:16s} train steps/solve {train_steps:5.1f}   eval steps/solve "
            f"{eval_steps:5.1f}   test NLL gap {-np.mean(lp) - true_nll:+.4f}   "
            f"train {fit.train_seconds:.1f} s",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small data, few steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated target names")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps")
    p.add_argument(
        "--time-limit", type=float, default=None, help="seconds of training per target (cap)"
    )
    p.add_argument("--rnode", action="store_true", help="also compare RNODE solver steps")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="CNFConfig fields for every target (e.g. the previous defaults, to compare)",
    )
    p.add_argument("--out", default=None, help="keep runs (plots, curves) here")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--figure", default=None, help="PNG: the targets' density plots side by side")
    args = p.parse_args()

    gen = _generator()
    n_train, n_test = (2000, 1000) if args.quick else (20000, 5000)
    config = CNFConfig(**parse_settings(args.set))
    if args.quick or args.max_steps:
        config = dataclasses.replace(config, steps=args.max_steps or 300)
    names = list(gen.SHARP) if args.only is None else args.only.split(",")
    print(f"CNF benchmark on {platform.machine()}, {jax.devices()[0]}")
    print(
        f"config: width {config.width}, depth {config.depth}, batch "
        f"{config.batch_size}, lr {config.learning_rate}, at most {config.steps} steps, "
        f"patience {config.patience} checks of {config.checkpoint_every} steps"
    )
    train_solve = (
        f"RK4, {config.t1 / config.dt:g} fixed steps"
        if config.dt is not None
        else f"adaptive Tsit5 (rtol {config.rtol:g}, atol {config.atol:g})"
    )
    print(
        f"training solve: {train_solve}; kinetic {config.kinetic:g}, Jacobian "
        f"{config.jacobian:g}; evaluation: adaptive Tsit5 (rtol = atol = 1e-5), exact trace"
    )
    limit = "none" if args.time_limit is None else f"{args.time_limit:.0f} s"
    print(f"data: {n_train} train / {n_test} test samples per target; time limit {limit}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for name in names:
            draw, logpdf = gen.SHARP[name]
            r = one_target(
                name,
                draw,
                logpdf,
                root,
                n_train=n_train,
                n_test=n_test,
                seed=args.seed,
                config=config,
                time_limit=args.time_limit,
            )
            rows.append(r)
            gap = r["test_nll"] - r["true_nll"]
            print(
                f"  {name:13s} test NLL {r['test_nll']:.4f}  true {r['true_nll']:.4f}  "
                f"gap {gap:+.4f} (target <= {TARGET_GAP})  "
                f"{'met' if gap <= TARGET_GAP else 'MISSED'}"
                f"  steps {r['best_step']}/{r['steps']} ({r['stopped']})  "
                f"{r['train_seconds']:.0f} s  {r['ms_per_step']:.0f} ms/step",
                flush=True,
            )
    print(
        f"\n{'target':13s}{'test NLL':>10s}{'true NLL':>10s}{'gap':>9s}{'target':>9s}"
        f"{'met':>5s}{'kept/ran':>13s}{'stopped':>12s}{'train s':>9s}{'ms/step':>9s}"
        f"{'train steps':>12s}{'eval steps':>11s}"
    )
    for r in rows:
        gap = r["test_nll"] - r["true_nll"]
        print(
            f"{r['name']:13s}{r['test_nll']:>10.4f}{r['true_nll']:>10.4f}{gap:>+9.4f}"
            f"{'<=' + str(TARGET_GAP):>9s}{'yes' if gap <= TARGET_GAP else 'no':>5s}"
            f"{str(r['best_step']) + '/' + str(r['steps']):>13s}{r['stopped']:>12s}"
            f"{r['train_seconds']:>9.0f}{r['ms_per_step']:>9.0f}"
            f"{r['train_solver_steps']:>12.1f}{r['eval_solver_steps']:>11.1f}"
        )
    if args.figure:
        tile_densities(Path(args.figure), [(r["name"], r["density_png"]) for r in rows])
    if args.json:
        keep = (
            "name",
            "test_nll",
            "test_nll_se",
            "true_nll",
            "best_step",
            "steps",
            "stopped",
            "train_seconds",
            "ms_per_step",
            "train_solver_steps",
            "eval_solver_steps",
            "validation_nll",
        )
        report = {
            "config": config.to_dict(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "targets": [{k: r[k] for k in keep} for r in rows],
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.rnode:
        rnode(gen, args.seed, 200 if args.quick else 600)


if __name__ == "__main__":
    main()
