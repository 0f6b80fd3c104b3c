"""CNF benchmark: held-out NLL on sharp 2-D targets with known densities, against the truth.

    .venv/bin/python bench/cnf.py                 # 4 targets, ~5-10 min each on 2 CPU cores
    .venv/bin/python bench/cnf.py --quick         # a smoke run (few steps, small data)
    .venv/bin/python bench/cnf.py --rnode         # also: solver steps with/without RNODE

1. For each target in `data/cnf/generate.py:SHARP` (ring of 8 and 4x4 grid of narrow
   Gaussians, a spiral of narrow Gaussians, a checkerboard; 20 000 training and 5 000 test
   samples): `run_cnf` with its default configuration (training to convergence on a
   validation share of the training rows; nothing is set per target), then the test NLL
   beside the true density's NLL on the same points. Target: within 0.05 nats.
2. (`--rnode`) Solver steps per solve with and without the RNODE regulariser (kinetic energy +
   Jacobian Frobenius norm) on the ring: same data, seed and steps; adaptive Tsit5.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
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
    return {"name": name, "true_nll": true_nll, **m}


def rnode(gen, seed: int, steps: int) -> None:
    draw, logpdf = gen.SHARP["ring8"]
    rng = np.random.default_rng(seed)
    x_train, x_test = draw(5000, rng), draw(2000, rng)
    true_nll = -float(np.mean(logpdf(x_test)))
    print("\n2. solver steps per solve, with and without RNODE (kinetic + Jacobian-Frobenius)")
    print(f"   ring8, {steps} steps each (no early stop); eval: Tsit5, rtol = atol = 1e-5")
    base = CNFConfig(steps=steps, validation_fraction=0.0)
    for label, cfg in [
        ("no regulariser", base),
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
    p.add_argument("--out", default=None, help="keep runs (plots, curves) here")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    gen = _generator()
    n_train, n_test = (2000, 1000) if args.quick else (20000, 5000)
    config = CNFConfig()
    if args.quick or args.max_steps:
        config = dataclasses.replace(config, steps=args.max_steps or 300)
    names = list(gen.SHARP) if args.only is None else args.only.split(",")
    print(f"CNF benchmark on {platform.machine()}, {jax.devices()[0]}")
    print(
        f"default config: width {config.width}, depth {config.depth}, batch "
        f"{config.batch_size}, lr {config.learning_rate}, at most {config.steps} steps, "
        f"patience {config.patience} checks of {config.checkpoint_every} steps"
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
                f"{r['train_seconds']:.0f} s",
                flush=True,
            )
    print(
        f"\n{'target':13s}{'test NLL':>10s}{'true NLL':>10s}{'gap':>9s}{'target':>9s}"
        f"{'met':>5s}{'kept/ran':>13s}{'stopped':>12s}{'train s':>9s}{'eval steps':>11s}"
    )
    for r in rows:
        gap = r["test_nll"] - r["true_nll"]
        print(
            f"{r['name']:13s}{r['test_nll']:>10.4f}{r['true_nll']:>10.4f}{gap:>+9.4f}"
            f"{'<=' + str(TARGET_GAP):>9s}{'yes' if gap <= TARGET_GAP else 'no':>5s}"
            f"{str(r['best_step']) + '/' + str(r['steps']):>13s}{r['stopped']:>12s}"
            f"{r['train_seconds']:>9.0f}{r['eval_solver_steps']:>11.1f}"
        )
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
            "eval_solver_steps",
            "validation_nll",
        )
        Path(args.json).write_text(json.dumps([{k: r[k] for k in keep} for r in rows], indent=1))
    if args.rnode:
        rnode(gen, args.seed, 200 if args.quick else 600)


if __name__ == "__main__":
    main()
