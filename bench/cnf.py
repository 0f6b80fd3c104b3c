"""CNF benchmark: time to fit a known density, and what the RNODE regulariser saves.

    .venv/bin/python bench/cnf.py            # ~5-10 min on 2 CPU cores
    .venv/bin/python bench/cnf.py --quick    # fewer steps, for a smoke run

1. Time to within 0.1 nats: fit the bundled ring of 8 Gaussians (known density) and report the
   training time (compiled chunks only; evaluation excluded) until the held-out NLL is within
   0.1 nats of the true density's NLL on the same points.
2. Solver steps per solve with and without the RNODE regulariser (kinetic energy + Jacobian
   Frobenius norm): same data, seed and steps; adaptive Tsit5, rtol = atol = 1e-5.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import time
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from scipy.special import logsumexp

from sciml.cnf import CNFConfig, evaluate_log_prob, fit_cnf

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("cnf_generate", ROOT / "data/cnf/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ring_logpdf(x: np.ndarray, k: int = 8, radius: float = 2.0, sd: float = 0.2) -> np.ndarray:
    """The exact log-density of `generate.ring` (equal mixture of isotropic Gaussians)."""
    angles = 2 * np.pi * np.arange(k) / k
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    sq = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    comp = -0.5 * sq / sd**2 - np.log(2 * np.pi * sd**2)
    return logsumexp(comp, axis=1) - np.log(k)


class _Reached(Exception):
    pass


def time_to_target(x_train, x_test, true_nll, config, seed=0, gap=0.1):
    hits: list[tuple[int, float, float]] = []
    trace: list[tuple[int, float, float]] = []

    def check(step, record, model):
        lp, _ = evaluate_log_prob(model, x_test)
        nll = -float(np.mean(lp))
        trace.append((step, record["seconds"], nll))
        print(
            f"   step {step:5d}  train {record['seconds']:7.1f} s  steps/solve "
            f"{record['solver_steps']:5.1f}  test NLL {nll:.4f}  gap {nll - true_nll:+.4f}",
            flush=True,
        )
        if nll - true_nll < gap:
            hits.append((step, record["seconds"], nll))
            raise _Reached

    tic = time.perf_counter()
    try:
        fit_cnf(x_train, config, key=jr.key(seed), seed=seed, callback=check)
    except _Reached:
        pass
    wall = time.perf_counter() - tic
    return hits[0] if hits else None, trace, wall


def steps_per_solve(x_train, x_test, config, seed=0):
    fit = fit_cnf(x_train, config, key=jr.key(seed), seed=seed)
    lp, eval_steps = evaluate_log_prob(fit.model, x_test)
    train_steps = float(np.mean([r["solver_steps"] for r in fit.history[-3:]]))
    return {
        "train_steps": train_steps,
        "eval_steps": eval_steps,
        "test_nll": -float(np.mean(lp)),
        "seconds": fit.train_seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["target", "rnode"], default=None, help="run one part")
    p.add_argument("--rnode-steps", type=int, default=600, help="training steps per RNODE run")
    args = p.parse_args()

    gen = _generator()
    rng = np.random.default_rng(args.seed)
    x_train, x_test = gen.ring(5000, rng), gen.ring(2000, rng)
    true_nll = -float(np.mean(ring_logpdf(x_test)))
    steps = 400 if args.quick else 3000
    print(f"CNF benchmark on {platform.processor() or platform.machine()}, {jax.devices()[0]}")
    print(f"data: ring of 8 Gaussians, {len(x_train)} train / {len(x_test)} test rows")
    print(f"true-density NLL on the test rows: {true_nll:.4f} nats")

    config = CNFConfig(width=64, depth=3, steps=steps, batch_size=256, checkpoint_every=100)
    if args.only in (None, "target"):
        print("\n1. time to within 0.1 nats of the true NLL (test NLL checked every 100 steps)")
        print(f"   config: width {config.width}, depth {config.depth}, batch {config.batch_size}")
        hit, trace, wall = time_to_target(x_train, x_test, true_nll, config, seed=args.seed)
        if hit is None:
            gap = trace[-1][2] - true_nll
            print(f"   not reached in {steps} steps (final gap {gap:+.4f} nats)")
        else:
            step, sec, nll = hit
            print(
                f"   reached at step {step}: {sec:.1f} s of training (compiled chunks, first "
                f"compilation included), {wall:.1f} s wall with evaluations; test NLL {nll:.4f}"
            )

    if args.only in (None, "rnode"):
        rsteps = 200 if args.quick else args.rnode_steps
        print("\n2. solver steps per solve, with and without RNODE (kinetic + Jacobian-Frobenius)")
        print(f"   {rsteps} training steps each; eval: Tsit5, rtol = atol = 1e-5, 2000 test rows")
        base = dataclasses.replace(config, steps=rsteps)
        for label, cfg in [
            ("no regulariser", base),
            ("RNODE 0.01/0.01", dataclasses.replace(base, kinetic=0.01, jacobian=0.01)),
            ("RNODE 0.05/0.05", dataclasses.replace(base, kinetic=0.05, jacobian=0.05)),
        ]:
            r = steps_per_solve(x_train, x_test, cfg, seed=args.seed)
            print(
                f"   {label:16s} train steps/solve {r['train_steps']:5.1f}   eval steps/solve "
                f"{r['eval_steps']:5.1f}   test NLL {r['test_nll']:.4f} "
                f"(gap {r['test_nll'] - true_nll:+.4f})   train {r['seconds']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
