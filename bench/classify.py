"""Neural ODE vs its discretised counterpart (a ResNet) on scikit-learn's 8x8 digits.

    .venv/bin/python bench/classify.py [--epochs N] [--seed N] [--out DIR]

Trains both with `run_classify` (same stem, head, data split, optimiser and epochs; the ResNet
replaces the adaptive ODE solve by one residual block of the same convolutional field) and
prints held-out accuracy, training time, parameters and solver steps side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sciml.classify import DIGITS_CONFIG, run_classify


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help=f"default {DIGITS_CONFIG.epochs}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        rows = []
        for name, config in (
            ("neural ODE", DIGITS_CONFIG),
            ("ResNet", DIGITS_CONFIG.replace(model="resnet", depth=1)),
        ):
            m = run_classify(
                dataset="digits",
                out=root / config.model,
                seed=args.seed,
                epochs=args.epochs,
                config=config,
            )
            rows.append((name, m))

    print(f"\ndigits (8x8), {rows[0][1]['n_train']} train / {rows[0][1]['n_test']} held out")
    print(f"{'model':<12}{'accuracy':>10}{'params':>9}{'train s':>10}{'steps':>8}{'epochs':>8}")
    for name, m in rows:
        steps = f"{m['mean_solver_steps']:.2f}" if m["model"] == "ode" else "-"
        print(
            f"{name:<12}{m['test_accuracy']:>10.2%}{m['params']:>9}"
            f"{m['train_seconds']:>10.1f}{steps:>8}{m['epochs']:>8}"
        )
    print("steps: mean accepted+rejected adaptive steps per test image (Tsit5, rtol 1e-3)")


if __name__ == "__main__":
    main()
