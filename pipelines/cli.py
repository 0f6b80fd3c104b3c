"""The `sciml` command line (docs/cli.md).

Exit codes: 0 success; 2 bad input (the message names the file, column, row or key); 3 a
numerical failure (one line naming the stage, the trajectory and what to try; the traceback in
the run's `run.log`); 1 anything else; 128 + N when stopped by signal N (143 for SIGTERM, 130
for SIGINT: the run's children are stopped, its flow runs marked Cancelled, its checkpoint kept;
see `pipelines._signals`).

Each command validates its input first (fast, before Prefect starts), then runs its Prefect flow:
against the server at `PREFECT_API_URL` when set, else Prefect's embedded temporary API (SQLite).
`deploy` registers the deployments of `prefect.yaml`; `batch` (a work pool) and `sweep` (Dask)
spread the same flows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Offline and quiet by default; set before Prefect is imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _ude_arg(p: argparse.ArgumentParser) -> None:
    """`--ude KEY=VALUE,...`: UDE schedule settings (discover, pipeline, sweep, batch)."""
    p.add_argument(
        "--ude",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="UDE training settings over the default or --quick schedule, e.g. "
        "adam_steps=50,lbfgs_steps=10,windows=0.5,1.0 (repeatable; docs/cli.md)",
    )


def _discovery_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--engines",
        default="sindy,operon,pysr",
        help="symbolic engines, comma-separated (sindy, operon, pysr)",
    )
    d.add_argument("--quick", action="store_true", help="fewer training steps (smoke runs)")
    _ude_arg(d)
    d.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="fraction of each trajectory's span held out to test extrapolation",
    )
    d.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="also train K UDEs in one compiled program (other seeds, bootstrap resamples) "
        "and distil each: every discovered term's inclusion frequency and coefficient interval",
    )
    d.add_argument(
        "--results",
        default=None,
        help="folder of cached task results (default: OUT/results); share it to reuse "
        "trained UDEs between runs",
    )
    d.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget, checked between stages: once spent, the remaining stages are "
        "skipped and the results (written as usual) are marked partial",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sciml", description="From trajectory data to trustworthy equations."
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="fit the model, train the UDE, distil equations")
    d.add_argument("data", help="trajectory data (CSV or Parquet, long form)")
    d.add_argument(
        "--model",
        default=None,
        help="model file (TOML); without one, no theory: every column but the time and "
        "trajectory columns is a state whose whole right-hand side is discovered",
    )
    d.add_argument("--out", required=True, help="output folder")
    _discovery_args(d)
    d.add_argument(
        "--review",
        action="store_true",
        help="after selection, pause for a reviewer's decision in the Prefect UI, then refit",
    )
    d.add_argument(
        "--review-timeout",
        type=int,
        default=3600,
        help="seconds to wait for the decision (then the run ends 'awaiting review')",
    )

    a = sub.add_parser(
        "pipeline", help="the parent flow: discovery, and optionally the CNF and classifier"
    )
    a.add_argument("data", help="trajectory data for discovery")
    a.add_argument("--model", required=True, help="model file (TOML)")
    a.add_argument("--out", required=True, help="output folder (one subfolder per stage)")
    _discovery_args(a)
    a.add_argument("--cnf-data", default=None, help="also fit a CNF to this table")
    a.add_argument("--cnf-steps", type=int, default=None)
    a.add_argument(
        "--classify",
        choices=["digits", "shapes", "textures", "bars"],
        default=None,
        help="also train a classifier",
    )
    a.add_argument("--classify-epochs", type=int, default=None)

    c = sub.add_parser("cnf", help="continuous normalising flow: density estimation")
    c.add_argument("--data", required=True, help="CSV/Parquet with numeric columns, or NPZ")
    c.add_argument("--out", required=True)
    c.add_argument("--test", default=None, help="held-out data (default: a split of DATA)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--steps", type=int, default=None, help="most training steps (stops at convergence)"
    )

    k = sub.add_parser("classify", help="neural-ODE classifier")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset",
        choices=["digits", "shapes", "textures", "bars"],
        help="a bundled (digits) or generated (shapes, textures, bars) data set",
    )
    src.add_argument("--data", help="training NPZ with `images` and `labels`")
    k.add_argument("--test", default=None, help="test NPZ (default: a stratified split)")
    k.add_argument("--out", required=True)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--epochs", type=int, default=None, help="most epochs (stops at convergence)")

    r = sub.add_parser("report", help="(re)render the review report of a run")
    r.add_argument("dir", help="a run folder, or with --index a folder of runs")
    r.add_argument("--index", action="store_true", help="write an index over a folder of runs")

    v = sub.add_parser(
        "review",
        help="a reviewer's decision on a finished run: refit its selection (no retraining) into "
        "the run's next revision",
    )
    v.add_argument("dir", help="a finished discovery run's folder")
    v.add_argument(
        "--reject", action="append", default=[], metavar="STATE:TERM", help="remove this term"
    )
    v.add_argument(
        "--keep", action="append", default=[], metavar="STATE:TERM", help="never prune this term"
    )
    v.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="STATE:TERM",
        help="try this term from the candidates' table (pruned if the data do not support it)",
    )
    v.add_argument("--accept", action="store_true", help="accept the model as it is")
    v.add_argument("--reviewer", default=None, help="who decides (default: the user name)")
    v.add_argument("--note", default="", help="why")

    s = sub.add_parser("sweep", help="discovery over many data files/models/seeds on Dask")
    s.add_argument("data", nargs="+", help="trajectory data files")
    s.add_argument("--model", required=True, action="append", help="model file (repeatable)")
    s.add_argument("--out", required=True, help="folder of the runs' folders")
    s.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    s.add_argument("--engines", default="sindy,operon", help="symbolic engines (no pysr)")
    s.add_argument("--quick", action="store_true")
    _ude_arg(s)
    s.add_argument("--holdout", type=float, default=0.0)
    s.add_argument(
        "--dask-address", default=None, help="existing Dask scheduler (default: local cluster)"
    )
    s.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    s.add_argument(
        "--cluster-class",
        default=None,
        help="Dask cluster class to start, e.g. dask_jobqueue.SLURMCluster (pip install "
        "'sciml[hpc]')",
    )
    s.add_argument(
        "--cluster-kwargs",
        default="{}",
        help='its keyword arguments as JSON, e.g. \'{"cores": 8, "memory": "16GB"}\'',
    )

    y = sub.add_parser(
        "deploy",
        help="the deployments of prefect.yaml: create their work pools, then `prefect deploy`",
    )
    y.add_argument(
        "names", nargs="*", help="deployments (FLOW/NAME or NAME; default: all in prefect.yaml)"
    )
    y.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="POOL=N",
        help="concurrency limit of a work pool (repeatable), e.g. sciml-gpu=4",
    )

    b = sub.add_parser(
        "batch", help="discovery runs sent to a deployment's work pool, with an index report"
    )
    b.add_argument("data", nargs="+", help="trajectory data files (paths the workers can read)")
    b.add_argument("--model", action="append", default=None, help="model file (repeatable)")
    b.add_argument("--out", required=True, help="folder of the runs' folders and the index")
    b.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    b.add_argument("--engines", default="sindy,operon,pysr", help="symbolic engines")
    b.add_argument("--quick", action="store_true")
    _ude_arg(b)
    b.add_argument("--holdout", type=float, default=0.0)
    b.add_argument("--results", default=None, help="shared cache folder (default OUT/results)")
    b.add_argument(
        "--deployment", default="discover/cpu", help="discovery deployment (default discover/cpu)"
    )
    b.add_argument("--timeout", type=float, default=None, help="seconds to wait for all runs")
    return p


def _engines(text: str) -> tuple[str, ...]:
    return tuple(e.strip().lower() for e in text.split(",") if e.strip())


def _discover_params(args: argparse.Namespace):
    from pipelines.params import DiscoverParams

    return DiscoverParams(
        data=Path(args.data).resolve(),
        model=Path(args.model).resolve() if args.model else None,
        out=Path(args.out).resolve(),
        seed=args.seed,
        engines=_engines(args.engines),
        quick=args.quick,
        holdout=args.holdout,
        ude=_ude_settings(args.ude),
        ensemble=getattr(args, "ensemble", 0),
        results=Path(args.results).resolve() if args.results else None,
        review=getattr(args, "review", False),
        review_timeout=getattr(args, "review_timeout", 3600),
        max_minutes=getattr(args, "max_minutes", None),
    )


def _check_out(path: str | os.PathLike[str]) -> None:
    """The output folder can be made and written (checked before Prefect starts; nothing is
    created): not an existing file, no file on the way to it, writable, not held by a run."""
    from sciml import OutputDirError
    from sciml.io import LOCK, pid_alive

    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: exists and is not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputDirError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"{path}: cannot write here ({parent} is not writable)")
    try:
        pid = int((path / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and pid != os.getpid() and pid_alive(pid):
        raise OutputDirError(f"{path}: another run (process {pid}) is writing into this folder")


# Exceptions that end a command with its own one-line message (exit 2 or 3): Prefect's console
# log of them (traceback, "Finished in state Failed(...)") would repeat it; run.log keeps it.
_EXPECTED = ("InputError", "DataError", "ModelFileError", "OutputDirError", "NumericalError")


class _NoExpectedFailures:
    """A logging filter for the console: drops Prefect's records of an expected failure."""

    def filter(self, record) -> bool:
        from sciml import InputError, NumericalError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InputError | NumericalError):
            return False
        text = record.getMessage() if record.name.startswith("prefect") else ""
        if "Failed(" in text or "failed with exception" in text or "exception during" in text:
            return not any(name in text for name in _EXPECTED)
        return True


def _quiet_expected_failures() -> None:
    """Prefect's console handlers stop repeating the CLI's own message (after Prefect set up
    its logging, which replaces handlers)."""
    import logging

    quiet = _NoExpectedFailures()
    for lg in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _NoExpectedFailures) for f in handler.filters
            ):
                handler.addFilter(quiet)


def _validate_discovery(params) -> None:
    """Fail fast on bad input, before Prefect starts (it takes seconds)."""
    from pipelines.flows import discovery_config
    from sciml.discover import load_inputs

    _check_out(params.out)
    discovery_config(params)
    load_inputs(params.data, params.model)


def _print_discovery(result: dict) -> None:
    for state, rhs in result["equations"].items():
        print(f"  d{state}/dt = {rhs}")
    print(f"results in {result['out']}")
    if result.get("partial"):
        print(f"partial results: {result['partial']['reason']}")
    if result.get("report"):
        print(f"report: {result['report']}")


def _report_command(args: argparse.Namespace) -> None:
    """`sciml report DIR [--index]`: (re)render a run's report or an index of runs."""
    from sciml.report import render_index, render_report

    path = render_index(args.dir) if args.index else render_report(args.dir)
    print(f"report: {path}")


def _discover_command(args: argparse.Namespace) -> None:
    """`sciml discover`: the discovery flow on one data file."""
    params = _discover_params(args)
    _validate_discovery(params)
    from pipelines.flows import discover

    _quiet_expected_failures()
    result = discover(params)
    _print_discovery(result)


def _pipeline_command(args: argparse.Namespace) -> None:
    """`sciml pipeline`: discovery, and optionally CNF and classifier, as subflows."""
    from pipelines.flows import pipeline
    from pipelines.params import ClassifyParams, CNFParams, PipelineParams

    out = Path(args.out).resolve()
    _check_out(out)
    args.out = str(out / "discover")
    discover_params = _discover_params(args)
    _validate_discovery(discover_params)
    cnf_params = classify_params = None
    if args.cnf_data:
        from sciml.cnf import prepare_tables

        prepare_tables(args.cnf_data, None, seed=args.seed)
        cnf_params = CNFParams(
            data=args.cnf_data, out=out / "cnf", steps=args.cnf_steps, seed=args.seed
        )
    if args.classify:
        classify_params = ClassifyParams(
            dataset=args.classify,
            out=out / "classify",
            epochs=args.classify_epochs,
            seed=args.seed,
        )
    params = PipelineParams(discover=discover_params, cnf=cnf_params, classify=classify_params)
    _quiet_expected_failures()
    results = pipeline(params)
    _print_discovery(results["discover"])
    for stage in ("cnf", "classify"):
        if stage in results:
            print(f"{stage}: results in {out / stage}")


def _cnf_command(args: argparse.Namespace) -> None:
    """`sciml cnf`: a continuous normalising flow on a table of samples."""
    from pipelines.params import CNFParams

    params = CNFParams(
        data=args.data, out=args.out, test=args.test, seed=args.seed, steps=args.steps
    )
    from sciml.cnf import prepare_tables

    _check_out(params.out)
    prepare_tables(params.data, params.test, seed=params.seed)  # fail fast on bad data
    from pipelines.flows import cnf

    _quiet_expected_failures()
    metrics = cnf(params)
    print(f"test NLL {metrics['test_nll']:.4f} nats; results in {args.out}")


def _classify_command(args: argparse.Namespace) -> None:
    """`sciml classify`: the neural-ODE classifier."""
    from pipelines.params import ClassifyParams

    params = ClassifyParams(
        dataset=args.dataset,
        data=args.data,
        test=args.test,
        out=args.out,
        seed=args.seed,
        epochs=args.epochs,
    )
    _check_out(params.out)
    from sciml.classify import load_npz

    for path in (params.data, params.test):
        if path is not None:
            load_npz(path)  # fail fast on bad data, before Prefect starts
    from pipelines.flows import classify

    _quiet_expected_failures()
    metrics = classify(params)
    print(f"test accuracy {metrics['test_accuracy']:.4f}; results in {args.out}")


def _sweep_command(args: argparse.Namespace) -> None:
    """`sciml sweep`: discovery over data files x models x seeds on Dask."""
    from pipelines.params import SweepParams
    from sciml.discover import load_inputs

    seeds = _seeds(args.seeds)
    params = SweepParams(
        data=tuple(Path(p).resolve() for p in args.data),
        models=tuple(Path(m).resolve() for m in args.model),
        seeds=seeds,
        out=Path(args.out).resolve(),
        engines=_engines(args.engines),
        quick=args.quick,
        holdout=args.holdout,
        ude=_ude_settings(args.ude),
        dask_address=args.dask_address,
        n_workers=args.workers,
        cluster_class=args.cluster_class,
        cluster_kwargs=_json_object("--cluster-kwargs", args.cluster_kwargs),
    )
    _check_out(params.out)
    for run_params in params.runs():
        _check_out(run_params.out)
    for data in params.data:
        for model in params.models:
            load_inputs(data, model)
    if params.cluster_class:
        from pipelines.flows import check_cluster_class

        check_cluster_class(params.cluster_class)
    from pipelines.flows import sweep

    _quiet_expected_failures()
    for run in sweep(params):
        print(f"{run['out']}: {run['equations']}")


def _deploy_command(args: argparse.Namespace) -> None:
    """`sciml deploy`: prefect.yaml's deployments on the server."""
    from pipelines.deploy import deploy

    limits = {}
    for item in args.limit:
        pool, _, n = item.partition("=")
        if not pool or not n.isdigit() or int(n) < 1:
            raise _bad_input(f"--limit: POOL=N with N >= 1, got {item!r}")
        limits[pool] = int(n)
    for name in deploy(args.names, limits):
        print(f"deployed {name}")


def _batch_command(args: argparse.Namespace) -> None:
    """`sciml batch`: discovery runs sent to a work pool, collected into one index."""
    from pipelines.params import BatchParams
    from sciml.discover import load_inputs

    params = BatchParams(
        data=tuple(Path(p) for p in args.data),
        models=tuple(Path(m) for m in args.model) if args.model else (None,),
        seeds=_seeds(args.seeds),
        out=Path(args.out),
        engines=_engines(args.engines),
        quick=args.quick,
        holdout=args.holdout,
        ude=_ude_settings(args.ude),
        results=Path(args.results) if args.results else None,
        deployment=args.deployment,
        timeout=args.timeout,
    )
    for data in params.data:
        for model in params.models:
            load_inputs(data, model)
    from pipelines.deploy import require_server

    require_server("a batch's runs go to a deployment's work pool")
    from pipelines.batch import batch

    result = batch(params)
    for run in result["runs"]:
        print(f"{run['out']}: {run.get('equations')}")
    print(f"index: {result['index']}")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise _bad_input(f"--seeds: integers separated by commas, got {text!r}") from None


def _ude_overrides(items: Sequence[str]) -> dict:
    """`--ude KEY=VALUE,...` (repeatable) as `UDEConfig` fields with their types: integers,
    numbers, true/false, and for `windows` the numbers that follow it (`windows=0.5,1.0`).
    An unknown key or a value of the wrong kind is bad input naming the key (exit 2)."""
    import dataclasses
    import re

    from sciml import UDEConfig

    fields = {f.name: f.default for f in dataclasses.fields(UDEConfig)}
    out: dict = {}
    for item in items:
        # a comma starts a new setting only before the next KEY=
        for part in re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", item.strip()):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not key:
                raise _bad_input(f"--ude: KEY=VALUE settings separated by commas, got {part!r}")
            if key not in fields:
                raise _bad_input(f"--ude: unknown UDE setting {key!r}; known: {', '.join(fields)}")
            out[key] = _ude_value(key, value, fields[key])
    return out


def _ude_value(key: str, text: str, default):
    try:
        if isinstance(default, bool):
            flag = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            return flag[text.lower()]
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(float(x) for x in text.strip("()[]").split(",") if x.strip())
    except (ValueError, KeyError):
        pass
    else:
        return text
    kinds = {bool: "true or false", int: "an integer", float: "a number"}
    kind = kinds.get(type(default), "numbers separated by commas")
    raise _bad_input(f"--ude: {key} must be {kind}, got {text!r}")


def _ude_settings(items: Sequence[str]):
    from pipelines.params import UDESettings

    return UDESettings(**_ude_overrides(items))


def _json_object(option: str, text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as err:
        raise _bad_input(f"{option}: not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise _bad_input(f"{option}: a JSON object ({{...}}), got {text!r}")
    return value


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _review_command(args: argparse.Namespace) -> None:
    """`sciml review DIR`: without a decision, the terms to decide on; with one, the refit."""
    from sciml.review import Decision, review_choices, review_run

    decision = Decision(
        reject=tuple(args.reject),
        keep=tuple(args.keep),
        add=tuple(args.add),
        reviewer=args.reviewer or _user(),
        note=args.note,
        via="cli",
    )
    if not (args.accept or decision.reject or decision.keep or decision.add):
        choices = review_choices(args.dir)
        print(f"{args.dir}: {choices['status']} (revision {choices['revision']})")
        print("terms:  " + "  ".join(t["spec"] for t in choices["terms"]))
        print("addable: " + ("  ".join(choices["addable"]) or "none"))
        print("decide with --reject/--keep/--add STATE:TERM (repeatable), or --accept")
        return
    result = review_run(args.dir, decision)
    entry = result["review"]["history"][-1]
    print(f"revision {entry['revision']} (from {entry['based_on']}) by {entry['reviewer']}")
    for state, rhs in result["equations"].items():
        print(f"  d{state}/dt = {rhs}")
    before, after = entry["fit_before"]["rmse"] or {}, entry["fit_after"]["rmse"] or {}
    for state in after:
        worse = " WORSE" if state in entry["worse"] else ""
        print(f"  final RMSE {state}: {before.get(state)} -> {after[state]}{worse}")
    print(f"report: {Path(args.dir) / 'report.html'}")


def _bad_input(message: str) -> Exception:
    from sciml import InputError

    return InputError(message)


def _pydantic_message(err) -> str:
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(x) for x in e["loc"]) or "input"
        got = f" (got {e['input']!r})" if not isinstance(e.get("input"), dict | tuple) else ""
        parts.append(f"{where}: {e['msg']}{got}")
    return "; ".join(parts)


# XLA's CPU compiler logs `E… algebraic_simplifier.cc:…] Algebraic simplifier is likely stuck in
# a circular simplification loop and ran for 50 runs on computation main.N` (C++, straight to file
# descriptor 2) when it compiles the UDE's whole-series loss of some models (seen on SEIR, jaxlib
# 0.10.2); the compilation succeeds and the results are the same. To a user these lines look like
# errors, so the command filters them out of its stderr at the file-descriptor level.
_XLA_NOISE = (b"algebraic_simplifier.cc", b"circular simplification loop")


def _filter_xla_noise() -> None:
    """Make file descriptor 2 a pipe whose reader thread passes everything but XLA's
    circular-simplification lines on to the real stderr (children inherit it too)."""
    import atexit
    import threading

    try:
        real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
    except OSError:
        return

    def keep(line: bytes) -> bool:
        return not all(marker in line for marker in _XLA_NOISE)

    def pump() -> None:
        while data := os.read(read, 65536):
            *lines, rest = data.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if keep(line)) + rest
            while out:
                try:
                    out = out[os.write(real, out) :]
                except OSError:
                    return
        os.close(read)

    thread = threading.Thread(target=pump, name="sciml-stderr", daemon=True)
    thread.start()

    def restore() -> None:  # at exit (after Prefect's own exit handlers): drain, then restore
        try:
            sys.stderr.flush()
            os.dup2(real, 2)
        except (OSError, ValueError):
            return
        thread.join(timeout=2.0)

    atexit.register(restore)


COMMANDS = {
    "report": _report_command,
    "review": _review_command,
    "discover": _discover_command,
    "pipeline": _pipeline_command,
    "cnf": _cnf_command,
    "classify": _classify_command,
    "sweep": _sweep_command,
    "deploy": _deploy_command,
    "batch": _batch_command,
}


def _run(args: argparse.Namespace) -> None:
    COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None, *, handle_signals: bool | None = None) -> int:
    """Run one command; returns the exit code.

    `handle_signals` (default: when called as the program, `argv` None) installs the SIGTERM and
    SIGINT handling of `pipelines._signals`: the run stops cleanly, its children with it, and the
    command exits 128 + the signal number (143 for SIGTERM).
    """
    args = _parser().parse_args(argv)
    if argv is None:
        _filter_xla_noise()
    if handle_signals is None:
        handle_signals = argv is None
    if handle_signals:
        from pipelines import _signals

        _signals.install()
    try:
        code = _main(args)
    except BaseException as err:
        if not handle_signals or not _signals.requested():
            raise
        code = _stopped(args, err)
    else:
        if handle_signals and _signals.requested():
            code = _stopped(args, None)  # a handler other than ours took it (Prefect's runner)
    return code


def _main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sciml import InputError, NumericalError

    try:
        _run(args)
    except InputError as err:
        print(f"sciml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NumericalError as err:
        from pipelines import _signals

        if _signals.requested():
            raise  # a failure caused by stopping: reported as the stop
        log = _log_traceback(args, err)
        where = f" (traceback in {log})" if log else ""
        print(f"sciml {args.command}: numerical failure: {err}{where}", file=sys.stderr)
        return 3
    except ValidationError as err:
        print(f"sciml {args.command}: error: {_pydantic_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        from pipelines import _signals

        if _signals.requested():
            raise  # a failure caused by stopping: reported as the stop
        print(f"sciml {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        if os.environ.get("SCIML_DEBUG"):
            raise
        return 1
    return 0


def _log_traceback(args: argparse.Namespace, err: BaseException) -> Path | None:
    """Append the failure's traceback to the run's `run.log` (the console gets one line)."""
    import traceback

    out = getattr(args, "out", None)
    if not out or not Path(out).is_dir():
        return None
    log = Path(out) / "run.log"
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"sciml {args.command}: numerical failure\n")
            f.writelines(traceback.format_exception(err))
    except OSError:
        return None
    return log


def _stopped(args: argparse.Namespace, err: BaseException | None) -> int:
    """After SIGTERM/SIGINT: flow runs Cancelled, children stopped, exit 128 + signal."""
    from pipelines import _signals

    _signals.stopping()  # a further signal ends at once
    signum = err.signum if isinstance(err, _signals.Stopped) else _signals.requested()
    reason = _signals.signal_name(signum)
    print(
        f"sciml {args.command}: stopped by {reason}; stopping its processes (a checkpoint, if "
        "any, is kept: the same command again resumes)",
        file=sys.stderr,
        flush=True,
    )
    _signals.mark_cancelled(f"stopped by {reason} (sciml {args.command})")
    stopped = _signals.stop_descendants(keep=_signals.api_servers())  # the API: at exit
    if getattr(args, "out", None):  # locks of stopped workers (a sweep's runs)
        _signals.release_locks(args.out, stopped)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
