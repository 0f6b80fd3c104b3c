"""The `sciml` command line (DESIGN §1).

Exit codes: 0 success; 2 bad input (the message names the file, column, row or key); 1 anything
else. Each command validates its input, then runs the stage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# Offline and quiet by default; set before Prefect is imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sciml", description="From trajectory data to trustworthy equations."
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="fit the model, train the UDE, distil equations")
    d.add_argument("data", help="trajectory data (CSV or Parquet, long form)")
    d.add_argument("--model", required=True, help="model file (TOML)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--engines",
        default="sindy,operon,pysr",
        help="symbolic engines, comma-separated (sindy, operon, pysr)",
    )
    d.add_argument("--quick", action="store_true", help="fewer training steps (smoke runs)")

    c = sub.add_parser("cnf", help="continuous normalising flow: density estimation")
    c.add_argument("--data", required=True, help="CSV/Parquet with numeric columns, or NPZ")
    c.add_argument("--out", required=True)
    c.add_argument("--test", default=None, help="held-out data (default: a split of DATA)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--steps", type=int, default=None, help="training steps")

    k = sub.add_parser("classify", help="neural-ODE classifier")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=["digits"], help="a bundled data set")
    src.add_argument("--data", help="training NPZ with `images` and `labels`")
    k.add_argument("--test", default=None, help="test NPZ (default: a stratified split)")
    k.add_argument("--out", required=True)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--epochs", type=int, default=None)

    r = sub.add_parser("report", help="(re)render the review report of a run")
    r.add_argument("dir", help="a run folder, or with --index a folder of runs")
    r.add_argument("--index", action="store_true", help="write an index over a folder of runs")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.command == "discover":
        from sciml.discover import run_discovery

        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        result = run_discovery(
            args.data, args.model, args.out, seed=args.seed, engines=engines, quick=args.quick
        )
        print(f"results in {result['out']}")
    elif args.command == "cnf":
        from sciml.cnf import run_cnf

        metrics = run_cnf(args.data, args.out, test=args.test, seed=args.seed, steps=args.steps)
        print(f"test NLL {metrics['test_nll']:.4f} nats; results in {args.out}")
    elif args.command == "classify":
        from sciml.classify import run_classify

        metrics = run_classify(
            dataset=args.dataset,
            data=args.data,
            test=args.test,
            out=args.out,
            seed=args.seed,
            epochs=args.epochs,
        )
        print(f"test accuracy {metrics['test_accuracy']:.4f}; results in {args.out}")
    elif args.command == "report":
        from sciml.report import render_index, render_report

        path = render_index(args.dir) if args.index else render_report(args.dir)
        print(f"report: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sciml import InputError

    try:
        _run(args)
    except InputError as err:
        print(f"sciml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        print(f"sciml {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        if os.environ.get("SCIML_DEBUG"):
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
