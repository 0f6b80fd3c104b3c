"""The reviewer's decision on a finished discovery run, and the refit it asks for.

A reviewer reads the report and decides, per discovered term: accept it, reject it (removed from
the model) or keep it (never pruned); and may add a term from the candidates' table (it enters
the model and is pruned like any discovered term when the data do not support it). Terms are
named `state:term`, the term as the report and `discovered.json` write it (`x:x*y`,
`y:x**2`; a numeric coefficient in front is ignored).

`review_run` refits the run's current selection under the decision: every constant refit to the
data through the ODE solve, the discovered terms pruned again while the BIC improves (kept terms
exempt), the final model re-evaluated. The UDE is not retrained: the refit needs only the data
and the run's files. The result is the run's next *revision*:

- `DIR/revisions/N/` holds revision N's `discovered.json`, `predictions.parquet` and
  `report.html` (revision 0: the run as discovery left it); a revision folder, once written, is
  never changed;
- `DIR/`'s own files are the latest revision (what `sciml report` and the index show);
- `discovered.json["review"]` holds the status (`not reviewed`, `awaiting review`, `reviewed`),
  the current revision and the whole history: who decided what and when, the note, and the fit
  before and after.

Pure library: no Prefect here (the review step of the flow is in `pipelines/`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp

from ._errors import InputError, NumericalError, OutputDirError
from ._expr import parse_expression
from ._io import atomic_path, write_json
from ._mechanistic import MechanisticFit
from ._model import MechanisticModel
from ._rundir import run_directory
from .distil import Refitter, Selection, build_term_model, model_field, prune_terms

REVISIONS = "revisions"
SNAPSHOT = ("discovered.json", "predictions.parquet", "report.html")
NOT_REVIEWED, AWAITING, REVIEWED = "not reviewed", "awaiting review", "reviewed"
WORSE = 1.10  # final RMSE after / before beyond which a review is said to worsen the fit
MAX_SPECS = 100
MAX_TEXT = 2000


# -- the decision ---------------------------------------------------------------------------------
def split_spec(spec: str) -> tuple[str, str]:
    """`'x:x*y'` -> `('x', 'x*y')`; `InputError` naming the spec when it is not `state:term`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"term {spec!r}: write it as state:term, e.g. 'x:x*y'")
    state, term = (part.strip() for part in spec.split(":", 1))
    if not state or not term:
        raise InputError(f"term {spec!r}: write it as state:term, e.g. 'x:x*y'")
    return state, term


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the reviewer decided. Terms not named are accepted as they are."""

    reject: tuple[str, ...] = ()  # "state:term": removed from the model
    keep: tuple[str, ...] = ()  # "state:term": in the model and never pruned
    add: tuple[str, ...] = ()  # "state:term" from the candidates: tried, pruned if needless
    reviewer: str = ""
    note: str = ""
    via: str = "api"  # "cli", "prefect" or "api"

    def __post_init__(self) -> None:
        for name in ("reject", "keep", "add"):
            specs = tuple(getattr(self, name))
            object.__setattr__(self, name, specs)
            if len(specs) > MAX_SPECS:
                raise InputError(f"{name}: {len(specs)} terms (max {MAX_SPECS})")
            for spec in specs:
                split_spec(spec)
        for name in ("reviewer", "note", "via"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise InputError(f"{name}: text of at most {MAX_TEXT} characters")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- terms ----------------------------------------------------------------------------------------
def _key(expr: sp.Expr) -> str:
    """A term's identity: its text with inner constants to 6 significant digits."""
    floats = {f: sp.Float(f"{float(f):.6g}") for f in expr.atoms(sp.Float)}
    return str(expr.xreplace(floats))


def _form(expr: sp.Expr) -> sp.Expr:
    """The term without its numeric coefficient."""
    return sp.expand(expr).as_coeff_Mul()[1]


def _parse(text: str, model: MechanisticModel, where: str) -> sp.Expr:
    symbols = {s.name: s for s in model.state_symbols}
    symbols["t"] = model.time_symbol
    return parse_expression(text, symbols, where=where)


@dataclasses.dataclass(frozen=True)
class _Term:
    state: str
    key: str
    form: sp.Expr
    coefficient: float
    origin: str  # "theory", "discovered" or "candidate"
    kept: bool


@dataclasses.dataclass(frozen=True)
class _Loaded:
    path: Path
    discovered: dict[str, Any]
    config: dict[str, Any]
    model: MechanisticModel
    train: Any
    test: Any
    settings: Any  # DiscoveryConfig
    terms: tuple[_Term, ...]  # the current revision's terms (kept or not)
    candidates: tuple[_Term, ...]  # terms of the candidates' table, not in `terms`


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing; is this a finished discovery run's folder?") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot be read ({err})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: not a JSON object")
    return value


def _candidate_terms(path: Path, model: MechanisticModel, known: set[tuple[str, str]]):
    """Every additive term of the candidates' table (`equations.csv`), with the coefficient of
    its first appearance (selected candidates first); terms already in the model left out."""
    csv = path / "equations.csv"
    if not csv.exists():
        return ()
    table = pd.read_csv(csv)
    if "selected" in table:
        table = table.sort_values("selected", ascending=False, kind="stable")
    out: dict[tuple[str, str], _Term] = {}
    for _, row in table.iterrows():
        state = str(row.get("state"))
        if state not in model.residual_states:
            continue
        try:
            expr = _parse(str(row.get("equation")), model, where=f"equations.csv ({state})")
        except InputError:
            continue  # a form this model's parser does not know: not offered
        for part in sp.Add.make_args(sp.expand(expr)):
            if part == 0:
                continue
            coeff, form = part.as_coeff_Mul()
            k = (state, _key(form))
            if k not in known and k not in out:
                out[k] = _Term(state, k[1], form, float(coeff), "candidate", False)
    return tuple(out.values())


def _load(run_dir: str | os.PathLike[str]) -> _Loaded:
    from .discover import DiscoveryConfig, load_inputs, split_data

    path = Path(run_dir)
    discovered = _read_json(path / "discovered.json")
    config = _read_json(path / "config.json")
    if not discovered.get("terms"):
        raise InputError(f"{path}: this run discovered no terms (nothing to review)")
    data_file, model_file = config.get("data"), config.get("model_file")
    if not data_file:
        raise InputError(f"{path / 'config.json'}: names no data file")
    model, data = load_inputs(data_file, model_file)
    digest = (config.get("inputs") or {}).get("data_sha256")
    if digest:
        import hashlib

        if hashlib.sha256(Path(data_file).read_bytes()).hexdigest() != digest:
            raise InputError(f"{data_file}: changed since the run (its sha256 differs)")
    settings = DiscoveryConfig.from_dict(config.get("config") or {})
    train, test = split_data(data, settings)
    terms = []
    for i, t in enumerate(discovered["terms"]):
        where = f"discovered.json terms[{i}]"
        if t.get("state") not in model.states:
            raise InputError(f"{where}: unknown state {t.get('state')!r}")
        form = _form(_parse(str(t.get("term")), model, where=where))
        coefficient = float(t.get("coefficient") or 0.0)
        terms.append(
            _Term(t["state"], _key(form), form, coefficient, t["origin"], bool(t.get("kept")))
        )
    known = {(t.state, t.key) for t in terms}
    candidates = _candidate_terms(path, model, known)
    return _Loaded(path, discovered, config, model, train, test, settings, tuple(terms), candidates)


def review_choices(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a reviewer decides on: the current model's terms, and the candidates' terms that
    could be added (per state), each as `state:term`."""
    run = _load(run_dir)
    return {
        "terms": [
            {"spec": f"{t.state}:{t.key}", "coefficient": t.coefficient, "origin": t.origin}
            for t in run.terms
            if t.kept
        ],
        "addable": [f"{t.state}:{t.key}" for t in run.terms if not t.kept]
        + [f"{t.state}:{t.key}" for t in run.candidates],
        "status": review_status(run.discovered),
        "revision": revision(run.discovered),
    }


def _resolve(run: _Loaded, decision: Decision) -> dict[str, set[tuple[str, str]]]:
    """The decision's terms as (state, key), checked against the run: `InputError` naming the
    first term that the run does not have (or cannot take)."""
    model = run.model
    kept = {(t.state, t.key) for t in run.terms if t.kept}
    present = {(t.state, t.key) for t in run.terms}
    offered = present | {(t.state, t.key) for t in run.candidates}
    out: dict[str, set[tuple[str, str]]] = {"reject": set(), "keep": set(), "add": set()}
    for kind in out:
        for spec in getattr(decision, kind):
            state, text = split_spec(spec)
            if state not in model.states:
                states = ", ".join(model.states)
                raise InputError(f"{kind} {spec!r}: no state {state!r} (states: {states})")
            form = _form(_parse(text, model, where=f"{kind} {spec!r}"))
            k = (state, _key(form))
            current = sorted(t.key for t in run.terms if t.state == state and t.kept)
            if kind == "reject" and k not in kept:
                raise InputError(
                    f"reject {spec!r}: d{state}/dt has no term {k[1]} (its terms: "
                    f"{', '.join(current) or 'none'})"
                )
            if kind == "keep" and k not in offered:
                raise InputError(
                    f"keep {spec!r}: d{state}/dt has no term {k[1]}, and no candidate has it "
                    f"(its terms: {', '.join(current) or 'none'})"
                )
            if kind == "add":
                if k in kept:
                    raise InputError(f"add {spec!r}: d{state}/dt has the term {k[1]} already")
                if k not in offered:
                    raise InputError(
                        f"add {spec!r}: no candidate of d{state}/dt has the term {k[1]}"
                    )
            if kind != "reject" and state not in model.residual_states:
                raise InputError(f"{kind} {spec!r}: {state} has no residual to add terms to")
            out[kind].add(k)
    both = out["reject"] & (out["keep"] | out["add"])
    if both:
        s, k = sorted(both)[0]
        raise InputError(f"term '{s}:{k}' is both rejected and kept or added")
    return out


# -- status and history ---------------------------------------------------------------------------
def review_status(discovered: dict[str, Any]) -> str:
    return str((discovered.get("review") or {}).get("status") or NOT_REVIEWED)


def revision(discovered: dict[str, Any]) -> int:
    return int((discovered.get("review") or {}).get("revision") or 0)


def _fit_summary(d: dict[str, Any]) -> dict[str, Any]:
    m, refit = d.get("metrics") or {}, d.get("refit") or {}
    return {
        "equations": d.get("equations"),
        "rmse": m.get("final_rmse"),
        "rmse_holdout": m.get("final_rmse_holdout"),
        "bic": refit.get("bic"),
        "sse": refit.get("sse"),
        "bounded": (m.get("extrapolation_bounded") or {}).get("final"),
    }


def _worse(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Per state, after / before final RMSE where it grew beyond `WORSE` (or became missing)."""
    out = {}
    for state, b in (before.get("rmse") or {}).items():
        a = (after.get("rmse") or {}).get(state)
        if a is None or not np.isfinite(a):
            out[state] = float("inf")
        elif b and np.isfinite(b) and a > WORSE * b:
            out[state] = float(a / b)
    return out


# -- files ----------------------------------------------------------------------------------------
def _revision_numbers(path: Path) -> list[int]:
    folder = path / REVISIONS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _write_revision(path: Path, number: int, write: Callable[[Path], None]) -> Path:
    """`path/revisions/number/`, filled by `write(folder)`: all of it or nothing (a revision
    folder appears by one rename, and is never replaced)."""
    folder = path / REVISIONS
    folder.mkdir(exist_ok=True)
    target = folder / str(number)
    if target.exists():
        raise OutputDirError(f"{target}: revision {number} exists (revisions are never replaced)")
    partial = folder / f".{number}.partial"  # left by a killed writer; we hold the lock
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    write(partial)
    os.rename(partial, target)
    return target


def _copy(files: dict[str, Path]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for name, source in files.items():
            if source.exists():
                shutil.copy2(source, folder / name)

    return write


def _unreviewed(folder: Path) -> dict[str, Any]:
    """A revision's `discovered.json` without its review block (status changes aside)."""
    d = _read_json(folder / "discovered.json")
    d.pop("review", None)
    return d


def _render(path: Path) -> Path | None:
    try:
        from .report import render_report
    except ImportError:
        return None
    return render_report(path)


# -- the refit ------------------------------------------------------------------------------------
def _refit(run: _Loaded, chosen: dict[str, set[tuple[str, str]]]):
    """The current selection refit under the decision: Selection, metrics and predictions."""
    from ._ude import load_ude
    from .discover import evaluate_fields, summarise

    model, d = run.model, run.discovered
    rejected, forced, added = chosen["reject"], chosen["keep"], chosen["add"]
    by_key = {(t.state, t.key): t for t in (*run.terms, *run.candidates)}
    wanted = {k for k, t in by_key.items() if t.kept} | forced | added
    wanted -= rejected
    formulas: dict[str, sp.Expr] = {}
    for (state, _), t in sorted(by_key.items(), key=lambda kv: kv[0]):
        if (state, t.key) in wanted and t.origin != "theory":
            # coefficient 1 here (0 would drop the term); the start values are set below
            formulas[state] = formulas.get(state, sp.Integer(0)) + t.form
    params = d.get("parameters") or {}
    try:
        mech_params = [float(params[p]) for p in model.parameters]
    except KeyError as err:
        raise InputError(f"discovered.json: no fitted value for parameter {err}") from None
    tm = build_term_model(model, mech_params, formulas)
    keys = [(t.state, _key(_form(f))) for t, f in zip(tm.terms, tm.forms(tm.model.guesses))]
    known = [by_key.get(k) for k in keys]
    start = tm.with_coefficients(
        tm.model.guesses, [t.coefficient if t is not None else 0.0 for t in known]
    )
    mask = [
        (k in wanted or (t is None and term.origin == "theory")) and k not in rejected
        for k, t, term in zip(keys, known, tm.terms)
    ]
    force = {i for i, k in enumerate(keys) if k in forced}
    # The reviewer's model is fitted whatever its solve does (a rejected true term can make it
    # grow far past the data): selection's blow-up cut-off would fail it before the first step.
    fitter = Refitter(
        tm, run.train, fit_initial_state=run.settings.fit_initial_state, blow_up=math.inf
    )
    fit = fitter.fit(mask, start=start)
    # Without a true term the model can diverge within one shooting piece, and the least
    # squares then chase a blow-up: shorter pieces (each from its own fitted start) fit it.
    for _ in range(3):
        if fit.ok or not math.isfinite(fitter.horizon):
            break
        fitter = Refitter(
            tm,
            run.train,
            fit_initial_state=run.settings.fit_initial_state,
            blow_up=math.inf,
            horizon=fitter.horizon / 2,
        )
        fit = fitter.fit(mask, start=start)
    if not fit.ok:
        raise NumericalError(
            "the reviewed model cannot be refit to the data (its solve fails)",
            stage="review",
            hint="keeping or adding fewer terms",
        )
    fit, mask, pruned = prune_terms(tm, fitter, fit, mask, forced=frozenset(force))
    chosen_rows = {
        s: {k: v for k, v in r.items() if k != "final"}
        for s, r in (d.get("residual") or {}).items()
    }
    selection = Selection(tm, fit, tuple(mask), chosen_rows, pruned, [])
    models: dict[str, Any] = {}
    if (run.path / "ude.eqx").exists() and (run.path / "ude.json").exists():
        trained = load_ude(run.path, model, run.train)
        models["ude"] = (trained.ude, trained.y0)
    models["final"] = (model_field(selection.final_model(), []), fit.y0)
    metrics, predictions = evaluate_fields(models, model.states, run.train, run.test, run.settings)
    # the mechanistic fit is not redone: its figures are the run's
    old = d.get("metrics") or {}
    for key, value in old.items():
        if key.startswith("mechanistic_"):
            metrics[key] = value
    bounded = old.get("extrapolation_bounded") or {}
    if "mechanistic" in bounded:
        metrics["extrapolation_bounded"]["mechanistic"] = bounded["mechanistic"]
    previous = run.path / "predictions.parquet"
    if previous.exists():
        mech = pd.read_parquet(previous)
        mech = mech[mech["model"] == "mechanistic"]
        predictions = pd.concat([mech, predictions], ignore_index=True)
    recorded = MechanisticFit(
        model=model,
        params=np.asarray(mech_params),
        y0=np.empty((0, len(model.states))),  # not recorded, and not needed here
        cost=float((d.get("mechanistic") or {}).get("cost") or np.nan),
        rmse=np.asarray([np.nan] * len(model.states)),
        n_starts=0,
        success=True,
        message="as recorded by the run",
    )
    unavailable = (d.get("engines") or {}).get("unavailable") or {}
    result = summarise(model, recorded, selection, metrics, run.settings, unavailable)
    result["refit"]["candidates_tried"] = (d.get("refit") or {}).get("candidates_tried", [])
    return result, predictions


def review_run(
    run_dir: str | os.PathLike[str], decision: Decision, *, at: dt.datetime | None = None
) -> dict[str, Any]:
    """Refit a finished run's selection under `decision`; write and return its next revision's
    `discovered.json` (with the history in `review`). Bad term names raise `InputError` naming
    the term before anything is written."""
    start = time.perf_counter()
    run = _load(run_dir)
    chosen = _resolve(run, decision)
    at = at or dt.datetime.now(dt.UTC)
    with run_directory(run.path) as path:
        before_rev = revision(run.discovered)
        numbers = _revision_numbers(path)
        if 0 not in numbers:  # the run as discovery left it
            _write_revision(path, 0, _copy({n: path / n for n in SNAPSHOT}))
        elif before_rev == 0 and _unreviewed(path / REVISIONS / "0") != _unreviewed(path):
            raise OutputDirError(
                f"{path / REVISIONS}: holds the revisions of an earlier run in this folder; "
                "move it away to review this run"
            )
        result, predictions = _refit(run, chosen)
        number = max([before_rev, *numbers]) + 1
        before, after = _fit_summary(run.discovered), _fit_summary(result)
        old = run.discovered.get("review") or {}
        entry = {
            "revision": number,
            "based_on": before_rev,
            "reviewer": decision.reviewer or "unknown",
            "at": at.isoformat(timespec="seconds"),
            "via": decision.via,
            "note": decision.note,
            "rejected": sorted(f"{s}:{k}" for s, k in chosen["reject"]),
            "kept": sorted(f"{s}:{k}" for s, k in chosen["keep"]),
            "added": sorted(f"{s}:{k}" for s, k in chosen["add"]),
            "pruned": result.get("pruned", []),
            "fit_before": before,
            "fit_after": after,
            "worse": _worse(before, after),
            "seconds": round(time.perf_counter() - start, 2),
        }
        carried = {k: v for k, v in run.discovered.items() if k not in result and k != "review"}
        result = {
            **carried,
            **result,
            "review": {
                "status": REVIEWED,
                "revision": number,
                "history": [*(old.get("history") or []), entry],
            },
        }

        def write(folder: Path) -> None:
            predictions.to_parquet(folder / "predictions.parquet", index=False)
            write_json(folder / "discovered.json", result)

        target = _write_revision(path, number, write)
        for name in ("predictions.parquet", "discovered.json"):  # discovered.json last
            with atomic_path(path / name) as tmp:
                shutil.copy2(target / name, tmp)
        report = _render(path)
        if report is not None:
            shutil.copy2(report, path / REVISIONS / str(number) / report.name)
    return result


def mark_awaiting(
    run_dir: str | os.PathLike[str], *, message: str = "", at: dt.datetime | None = None
) -> dict[str, Any]:
    """Say in `discovered.json` (and the report) that the run awaits a review; its results are
    untouched. Returns the updated `discovered.json`."""
    at = at or dt.datetime.now(dt.UTC)
    with run_directory(run_dir) as path:
        d = _read_json(path / "discovered.json")
        old = d.get("review") or {}
        d["review"] = {
            **old,
            "status": AWAITING,
            "revision": revision(d),
            "requested_at": at.isoformat(timespec="seconds"),
            "message": message,
            "history": old.get("history") or [],
        }
        write_json(path / "discovered.json", d)
        _render(path)
    return d
