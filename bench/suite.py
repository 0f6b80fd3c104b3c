"""Discovery on many systems: our pipeline and two PySINDy peers, scored on ODEBench's protocol.

    .venv/bin/python bench/suite.py CASES_DIR --out DIR [--jobs N] [--only 1,25,40-45]
        [--methods sciml,pysindy,weak-sindy] [--seed 0] [--engines sindy,operon,pysr] [--quick]
        [--timeout SECONDS] [--retry-failed] [--ude KEY=VALUE,...]

CASES_DIR holds one folder per system (e.g. ODEBench's odebench-dev/cases_noise05; not in git):
`data.csv` (long form trajectory,t,x0[,x1..]), `model.toml` (no theory), `truth.json` (true
right-hand sides, `odebench.init` initial states, `odebench.terms` term sets). The protocol is
ODEBench's (as in the ODEFormer paper). Per system, every method fits trajectory 0 only:

- `sciml`: `sciml.discover.run_discovery` on a copy of trajectory 0 (DIR/runs/<case>/input.csv),
  run folder DIR/runs/<case>/ with its report; DIR/runs/index.html links them all.
- `pysindy`: plain PySINDy, PolynomialLibrary(degree=3), STLSQ(threshold=0.05),
  SmoothedFiniteDifference.
- `weak-sindy`: PySINDy's WeakPDELibrary over PolynomialLibrary(degree=3), K=200 subdomains
  (their centres drawn from NumPy's global generator, seeded with --seed), STLSQ(0.05); its
  coefficients multiply the same polynomial features, which give the ODE right-hand side.

Scoring (bench/_scoring.py): integrate the discovered system from the *true* initial state of
trajectory 0 (reconstruction) and of trajectory 1 (generalization) over the data's times and
compare with the noise-free true trajectory (truth.json's right-hand side integrated the same
way): variance-weighted R², solved at R² ≥ 0.9, plus the exact term set. A failed or blown-up
solve scores R² = -inf; a method that raised scores NaN with its error recorded.

Each (case, method) result is written atomically to DIR/rows/<case>__<method>.json as soon as it
is done; a rerun with the same settings skips those (so a killed suite resumes where it stopped;
--retry-failed redoes the ones that raised). Cases run in separate processes (--jobs at a time,
each single-threaded when jobs > 1), logging to DIR/logs/<case>.log. At the end, every row in
DIR for a case of CASES_DIR goes into DIR/results.csv and DIR/results.md (printed too).

`--ude KEY=VALUE,...` changes the UDE's training schedule as `sciml discover --ude` does (its
settings are part of the rows' settings); the suite's own test uses a short one.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _scoring as scoring  # noqa: E402

METHODS = ("sciml", "pysindy", "weak-sindy")
COLUMNS = (
    "system",
    "method",
    "r2_reconstruction",
    "r2_generalization",
    "solved_reconstruction",
    "solved_generalization",
    "exact_terms",
    "seconds",
    "equations",
    "error",
)
BLOWUP = 1e3  # a solve leaving 1e3 × (1 + max |true state|) counts as blown up
SOLVE_TIME_LIMIT = 60.0  # seconds per integration (per SciPy method tried)


# -- cases -------------------------------------------------------------------------------------
def case_number(case: Path) -> int | None:
    head = case.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def parse_only(text: str | None) -> set[int] | None:
    """'1,25,40-45' -> {1, 25, 40, ..., 45}; None for all."""
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def find_cases(cases_dir: Path, only: set[int] | None = None) -> list[Path]:
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir() and (p / "truth.json").is_file())
    if only is not None:
        cases = [p for p in cases if case_number(p) in only]
    return cases


class Case:
    """One system: its states, trajectory 0 (the fitting data), the truth and its trajectories."""

    def __init__(self, path: Path):
        import numpy as np
        import pandas as pd

        self.path = path
        self.name = path.name
        with open(path / "model.toml", "rb") as f:
            model = tomllib.load(f)["model"]
        self.states: list[str] = list(model["states"])
        self.time_col = model.get("time_column", "t")
        self.traj_col = model.get("trajectory_column", "trajectory")
        with open(path / "truth.json") as f:
            self.truth = json.load(f)
        bench = self.truth["odebench"]
        self.terms: dict[str, list[str]] = bench["terms"]
        self.inits: list[list[float]] = bench["init"]
        data = pd.read_csv(path / "data.csv")
        names = list(dict.fromkeys(data[self.traj_col]))
        fit = bench.get("fit_trajectory", 0)
        gen = bench.get("generalization_trajectory", 1)
        self.fit_frame = data[data[self.traj_col] == names[fit]]
        self.t = self.fit_frame[self.time_col].to_numpy(dtype=float)
        self.x = self.fit_frame[self.states].to_numpy(dtype=float)
        gen_frame = data[data[self.traj_col] == names[gen]] if len(names) > gen else self.fit_frame
        self.t_gen = gen_frame[self.time_col].to_numpy(dtype=float)
        self.rhs = scoring.parse_system({s: self.truth[s] for s in self.states}, self.states)
        self.true_fit = scoring.simulate(self.rhs, self.states, self.inits[fit], self.t)
        self.true_gen = scoring.simulate(self.rhs, self.states, self.inits[gen], self.t_gen)
        if self.true_fit is None or self.true_gen is None:
            raise RuntimeError(f"{self.name}: the true system cannot be integrated")
        self.init_fit, self.init_gen = self.inits[fit], self.inits[gen]
        scale = float(np.max(np.abs(np.vstack([self.true_fit, self.true_gen]))))
        self._bound = BLOWUP * (1 + scale)

    def write_fit_data(self, path: Path) -> Path:
        """Trajectory 0 alone, as a long-form CSV."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        self.fit_frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
        return path

    def score(self, equations: dict[str, str]) -> dict[str, Any]:
        rhs = scoring.parse_system(equations, self.states)
        known = set(scoring.state_symbols(self.states).values())
        unknown = set().union(*(e.free_symbols for e in rhs.values())) - known
        if unknown:
            raise ValueError(f"names that are not states: {sorted(map(str, unknown))}")
        out: dict[str, Any] = {}
        for key, y0, t, truth in (
            ("reconstruction", self.init_fit, self.t, self.true_fit),
            ("generalization", self.init_gen, self.t_gen, self.true_gen),
        ):
            pred = scoring.simulate(
                rhs, self.states, y0, t, bound=self._bound, time_limit=SOLVE_TIME_LIMIT
            )
            r2 = scoring.r2(pred, truth)
            out[f"r2_{key}"] = r2
            out[f"solved_{key}"] = scoring.solved(r2)
        out["exact_terms"] = scoring.exact_terms(rhs, self.terms, self.states)
        out["term_shapes"] = {
            s: {
                "discovered": scoring.fmt_shapes(scoring.term_shapes(rhs[s])),
                "truth": scoring.fmt_shapes(scoring.truth_term_shapes(self.terms[s], self.states)),
            }
            for s in self.states
        }
        return out


# -- methods -----------------------------------------------------------------------------------
def _rhs_from_features(names: Sequence[str], coefs, states: Sequence[str]) -> dict[str, str]:
    """PySINDy feature names ('1', 'x0', 'x0^2', 'x0 x1') and coefficients -> {state: rhs}."""
    import sympy as sp

    feats = [scoring.parse(n.replace("^", "**").replace(" ", "*"), states) for n in names]
    out = {}
    for s, row in zip(states, coefs):
        out[s] = str(sp.Add(*[float(c) * f for c, f in zip(row, feats) if c != 0]))
    return out


def fit_pysindy(t, x, states: Sequence[str]) -> dict[str, str]:
    import pysindy as ps

    model = ps.SINDy(
        optimizer=ps.STLSQ(threshold=0.05),
        feature_library=ps.PolynomialLibrary(degree=3),
        differentiation_method=ps.SmoothedFiniteDifference(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, t=t, feature_names=list(states))
    return _rhs_from_features(model.get_feature_names(), model.coefficients(), states)


def fit_weak_sindy(t, x, states: Sequence[str], seed: int = 0) -> dict[str, str]:
    import numpy as np
    import pysindy as ps

    # the subdomain centres come from NumPy's global generator, drawn when the library is made
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        library = ps.WeakPDELibrary(
            function_library=ps.PolynomialLibrary(degree=3), spatiotemporal_grid=t, K=200
        )
        model = ps.SINDy(optimizer=ps.STLSQ(threshold=0.05), feature_library=library)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, t=t, feature_names=list(states))
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    # The weak library's features are its function library's, in the same order.
    names = library.function_library.get_feature_names(list(states))
    return _rhs_from_features(names, model.coefficients(), states)


def fit_sciml(case: Case, run_dir: Path, settings: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Our discovery on trajectory 0: the equations, and notes (engines unavailable, a report
    that failed to render) for the row's error column."""
    import shutil

    from sciml.discover import run_discovery

    run_dir.mkdir(parents=True, exist_ok=True)
    data_csv = case.write_fit_data(run_dir / "input.csv")
    model_toml = run_dir / "model.toml"
    shutil.copyfile(case.path / "model.toml", model_toml)
    result = run_discovery(
        data_csv.resolve(),
        model_toml.resolve(),
        run_dir.resolve(),
        seed=settings["seed"],
        engines=settings["engines"],
        quick=settings["quick"],
        ude={k: tuple(v) if isinstance(v, list) else v for k, v in settings.get("ude", {}).items()},
        show_progress=False,
    )
    notes = []
    unavailable = (result.get("engines") or {}).get("unavailable") or {}
    if unavailable:  # the equations then fall back to the (empty) theory
        # Short: the reason (e.g. no Julia for PySR) is in the run's discovered.json.
        notes += [f"{e} unavailable" for e in unavailable]
    try:
        from sciml.report import render_report

        render_report(run_dir)
    except Exception as err:  # noqa: BLE001 - a report failure does not void the discovery
        notes.append(f"report failed: {type(err).__name__}: {err}")
    return {s: str(v) for s, v in result["equations"].items()}, "; ".join(notes)


# -- rows --------------------------------------------------------------------------------------
def method_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    if method == "sciml":
        settings = {"seed": args.seed, "engines": list(args.engines), "quick": bool(args.quick)}
        if args.ude:  # only when given: rows written before --ude existed stay done
            # as JSON holds them (windows a list), so that a written row's settings compare equal
            settings["ude"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in args.ude.items()
            }
        return settings
    if method == "weak-sindy":
        return {"seed": args.seed}
    return {}


def row_path(out: Path, case: str, method: str) -> Path:
    return out / "rows" / f"{case}__{method}.json"


def read_row(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_done(out: Path, case: str, method: str, settings: dict, retry_failed: bool) -> bool:
    row = read_row(row_path(out, case, method))
    if row is None or row.get("settings") != settings:
        return False
    return not (retry_failed and row.get("failed"))


def write_row(out: Path, row: dict[str, Any]) -> None:
    path = row_path(out, row["system"], row["method"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row, indent=1))
    os.replace(tmp, path)


def _display(equations: dict[str, str], states: Sequence[str]) -> str:
    """'x0\' = ...; x1\' = ...' with numbers shown to 4 significant digits."""
    import sympy as sp

    parts = []
    for s in states:
        try:
            e = scoring.parse(equations.get(s, "0"), states)
            e = e.xreplace({f: sp.Float(f, 4) for f in e.atoms(sp.Float)})
            text = str(e)
        except Exception:  # noqa: BLE001
            text = str(equations.get(s, "0"))
        parts.append(f"{s}' = {text}")
    return "; ".join(parts)


def failure_row(case: str, method: str, settings: dict, error: str, seconds=math.nan) -> dict:
    return {
        "system": case,
        "method": method,
        "r2_reconstruction": math.nan,
        "r2_generalization": math.nan,
        "solved_reconstruction": False,
        "solved_generalization": False,
        "exact_terms": False,
        "seconds": seconds,
        "equations": "",
        "error": error,
        "failed": True,
        "settings": settings,
    }


def run_method(case: Case, method: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    settings = method_settings(method, args)
    start = time.perf_counter()
    note = ""
    try:
        if method == "sciml":
            equations, note = fit_sciml(case, out / "runs" / case.name, settings)
        elif method == "pysindy":
            equations = fit_pysindy(case.t, case.x, case.states)
        elif method == "weak-sindy":
            equations = fit_weak_sindy(case.t, case.x, case.states, seed=args.seed)
        else:
            raise ValueError(f"unknown method {method}")
        seconds = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - one failed fit is a row, the suite goes on
        msg = f"{type(err).__name__}: {err}".strip()
        return failure_row(case.name, method, settings, msg, time.perf_counter() - start)
    try:
        scores = case.score(equations)
    except Exception as err:  # noqa: BLE001 - e.g. an unparsable equation
        row = failure_row(case.name, method, settings, f"scoring: {type(err).__name__}: {err}")
        row.update(seconds=seconds, equations=_display(equations, case.states), rhs=equations)
        return row
    return {
        "system": case.name,
        "method": method,
        **{k: v for k, v in scores.items() if k != "term_shapes"},
        "seconds": seconds,
        "equations": _display(equations, case.states),
        "error": note,
        "failed": False,
        "settings": settings,
        "rhs": equations,
        "term_shapes": scores["term_shapes"],
    }


def worker(case_dir: Path, out: Path, args: argparse.Namespace) -> int:
    """Run every method not yet done on one case (in its own process)."""
    todo = [
        m
        for m in args.methods
        if not is_done(out, case_dir.name, m, method_settings(m, args), args.retry_failed)
    ]
    if not todo:
        return 0
    try:
        case = Case(case_dir)
    except Exception as err:  # noqa: BLE001
        for m in todo:
            msg = f"case unreadable: {type(err).__name__}: {err}"
            write_row(out, failure_row(case_dir.name, m, method_settings(m, args), msg))
        return 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"--- {stamp} worker {os.getpid()}: {', '.join(todo)}", flush=True)
    # imports outside the timings (each process pays them once, whatever it fits)
    if any(m != "sciml" for m in todo):
        import pysindy  # noqa: F401
    # the cheap peers first, so their rows land even if the discovery is killed
    for method in sorted(todo, key=lambda m: m == "sciml"):
        print(f"[{case.name}] {method} ...", flush=True)
        if method == "sciml":
            try:
                import sciml.discover  # noqa: F401
            except Exception:  # noqa: BLE001 - raised again, and recorded, by run_method
                pass
        row = run_method(case, method, out, args)
        write_row(out, row)
        print(
            f"[{case.name}] {method}: R² {row['r2_reconstruction']:.4g} / "
            f"{row['r2_generalization']:.4g}, exact {row['exact_terms']}, "
            f"{row['seconds']:.1f} s {row['error']}",
            flush=True,
        )
    return 0


# -- the suite ---------------------------------------------------------------------------------
def _worker_argv(case: Path, out: Path, args: argparse.Namespace) -> list[str]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        str(case.parent),
        "--out",
        str(out),
        "--worker",
        case.name,
        "--methods",
        ",".join(args.methods),
        "--seed",
        str(args.seed),
        "--engines",
        ",".join(args.engines),
    ]
    if args.quick:
        argv.append("--quick")
    if args.retry_failed:
        argv.append("--retry-failed")
    for key, value in args.ude.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        argv += ["--ude", f"{key}={text}"]
    return argv


def _worker_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if jobs > 1:  # one thread per process: N processes share the cores
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
    return env


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): be sent SIGTERM when the suite's process dies, so a
    killed suite leaves no worker behind to collide with the rerun's."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-500:]


def run_suite(cases: list[Path], out: Path, args: argparse.Namespace) -> None:
    """Run the cases not yet done, `args.jobs` worker processes at a time."""
    from sciml._progress import Progress

    def pending(case: Path) -> list[str]:
        return [
            m
            for m in args.methods
            if not is_done(out, case.name, m, method_settings(m, args), args.retry_failed)
        ]

    todo = [c for c in cases if pending(c)]
    skipped = len(cases) - len(todo)
    if skipped:
        print(f"{skipped} of {len(cases)} case(s) already done in {out} (skipped)")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = _worker_env(args.jobs)
    running: dict[Path, tuple[subprocess.Popen, float, Any]] = {}
    queue = list(todo)
    with Progress("cases", total=len(cases), completed=skipped, enabled=True) as progress:
        try:
            while queue or running:
                while queue and len(running) < args.jobs:
                    case = queue.pop(0)
                    log = open(out / "logs" / f"{case.name}.log", "a")  # noqa: SIM115
                    proc = subprocess.Popen(
                        _worker_argv(case, out, args),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                    running[case] = (proc, time.monotonic(), log)
                progress.update(note=", ".join(c.name for c in running))
                time.sleep(0.2)
                for case, (proc, started, log) in list(running.items()):
                    timed_out = args.timeout and time.monotonic() - started > args.timeout
                    if proc.poll() is None and not timed_out:
                        continue
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    log.close()
                    del running[case]
                    why = (
                        f"timed out after {args.timeout:g} s"
                        if timed_out
                        else f"worker exited with code {proc.returncode}"
                    )
                    for m in pending(case):  # what the worker left undone
                        tail = _log_tail(out / "logs" / f"{case.name}.log")
                        err = f"{why}: {tail}" if tail else why
                        write_row(out, failure_row(case.name, m, method_settings(m, args), err))
                    progress.update(advance=1)
        except KeyboardInterrupt:
            for proc, _, _log in running.values():
                proc.terminate()
            for proc, _, log in running.values():
                proc.wait()
                log.close()
            raise


# -- results -----------------------------------------------------------------------------------
def collect(out: Path, cases: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row in `out` for these cases: this run's methods with this run's settings, and
    whatever other methods earlier runs left there."""
    names = {c.name for c in cases}
    rows = []
    for path in sorted((out / "rows").glob("*.json")):
        row = read_row(path)
        if not row or row.get("system") not in names or row.get("method") not in METHODS:
            continue
        m = row["method"]
        if m not in args.methods or row.get("settings") == method_settings(m, args):
            rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["system"], order.get(r["method"], 99)))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _r2_text(v: float) -> str:
    if not _finite(v):
        return "fail"
    return f"{v:.4f}" if v >= -10 else f"{v:.3g}"


def _frac(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "—"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        secs = [r["seconds"] for r in mine if _finite(r["seconds"])]
        out.append(
            {
                "method": method,
                "systems": len(mine),
                "solved_reconstruction": sum(bool(r["solved_reconstruction"]) for r in mine),
                "solved_generalization": sum(bool(r["solved_generalization"]) for r in mine),
                "exact_terms": sum(bool(r["exact_terms"]) for r in mine),
                "failed": sum(bool(r.get("failed")) for r in mine),
                "median_seconds": statistics.median(secs) if secs else math.nan,
                "max_seconds": max(secs) if secs else math.nan,
            }
        )
    return out


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, cases_dir: Path) -> str:
    sums = summary(rows)
    sum_table = _md_table(
        [
            "method",
            "reconstruction R² ≥ 0.9",
            "generalization R² ≥ 0.9",
            "exact terms",
            "median s / system",
            "max s",
            "failed runs",
        ],
        [
            [
                s["method"],
                _frac(s["solved_reconstruction"], s["systems"]),
                _frac(s["solved_generalization"], s["systems"]),
                f"{s['exact_terms']}/{s['systems']}",
                f"{s['median_seconds']:.2f}",
                f"{s['max_seconds']:.2f}",
                s["failed"],
            ]
            for s in sums
        ],
    )
    row_table = _md_table(
        ["system", "method", "R² recon", "R² gen", "exact terms", "s", "equations", "error"],
        [
            [
                r["system"],
                r["method"],
                _r2_text(r["r2_reconstruction"]),
                _r2_text(r["r2_generalization"]),
                "yes" if r["exact_terms"] else "no",
                f"{r['seconds']:.2f}" if _finite(r["seconds"]) else "—",
                f"`{r['equations']}`" if r["equations"] else "",
                r["error"] or "",
            ]
            for r in rows
        ],
    )
    sciml = "sciml" in args.methods
    settings = f"seed {args.seed}" + (
        f", engines {','.join(args.engines)}" + (", --quick" if args.quick else "") if sciml else ""
    )
    if sciml and args.ude:  # a changed schedule is part of what the results mean
        settings += ", UDE " + ", ".join(f"{k}={v}" for k, v in args.ude.items())
    parts = [
        "# Discovery suite",
        "",
        f"Cases: `{cases_dir.parent.name}/{cases_dir.name}` (ODEBench); {settings}. Protocol: fit "
        "trajectory 0; R² against the noise-free "
        "truth from trajectory 0's (reconstruction) and trajectory 1's (generalization) true "
        "initial state; solved at R² ≥ 0.9.",
        "",
        "## Summary",
        "",
        sum_table,
        "",
        "## Per system",
        "",
        row_table,
        "",
    ]
    if sciml:
        parts[4:4] = ["[Every system's discovery report](runs/index.html)", ""]
    return "\n".join(parts)


def write_results(rows: list[dict[str, Any]], out: Path, text: str) -> None:
    tmp = out / ".results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.get(c, "") for c in COLUMNS])
    os.replace(tmp, out / "results.csv")
    tmp = out / ".results.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "results.md")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", type=Path, help="folder of case folders")
    p.add_argument("--out", type=Path, required=True, help="results, rows, runs and logs")
    p.add_argument("--jobs", type=int, default=1, help="cases at a time (separate processes)")
    p.add_argument("--only", default=None, help="system numbers, e.g. 1,25 or 1-9")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default="sindy,operon,pysr", help="discovery engines")
    p.add_argument("--quick", action="store_true", help="discovery's quick settings")
    p.add_argument("--timeout", type=float, default=None, help="seconds per case (all methods)")
    p.add_argument("--retry-failed", action="store_true", help="redo rows that raised")
    from pipelines.cli import _ude_arg, _ude_overrides  # the CLI's option and its parsing

    _ude_arg(p)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ude:  # the same keys and types as `sciml discover --ude`
        try:
            args.ude = _ude_overrides(args.ude)
        except ValueError as err:
            p.error(str(err))
    args.ude = dict(args.ude or {})
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    args.engines = [e.strip().lower() for e in args.engines.split(",") if e.strip()]
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if args.worker is not None:
        return worker(args.cases / args.worker, out, args)
    if not args.cases.is_dir():
        print(f"{args.cases}: not a folder", file=sys.stderr)
        return 2
    cases = find_cases(args.cases, parse_only(args.only))
    if not cases:
        print(f"no cases (folders with truth.json) in {args.cases} for --only {args.only}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        run_suite(cases, out, args)
    except KeyboardInterrupt:
        print(f"interrupted: the same command resumes where this stopped ({out / 'rows'})")
        return 130
    all_cases = find_cases(args.cases)
    rows = collect(out, all_cases, args)
    if "sciml" in args.methods and (out / "runs").is_dir():
        try:
            from sciml.report import render_index

            render_index(out / "runs")
        except Exception as err:  # noqa: BLE001
            print(f"index page failed: {type(err).__name__}: {err}", file=sys.stderr)
    text = markdown(rows, args, args.cases)
    write_results(rows, out, text)
    print(text)
    print(f"written: {out / 'results.csv'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
