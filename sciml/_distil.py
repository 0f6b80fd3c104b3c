"""Stages 4-6: dense samples from the learned field, formula selection, refit and pruning.

1. `dense_samples`: integrate the trained UDE densely from every trajectory's start and from
   starts spread around the data; the network's output at those states is the regression
   target for the symbolic engines (no finite differences of noisy data needed).
2. `select_and_refit`: per residual state, the engines' candidates on one Pareto table; the
   leading candidates go back into the ODE (mechanistic part + formula), every constant is refit
   against the *data* through the ODE solve, and discovered terms whose removal does not worsen
   the fit beyond the noise level (BIC) are pruned, one at a time.
3. `extrapolation`: the final, UDE and mechanistic models simulated past the training window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pandas as pd
import sympy as sp
from jaxtyping import PRNGKeyArray

from ._data import TrajectorySet
from ._errors import NumericalError
from ._mechanistic import simulate
from ._model import RESERVED, MechanisticModel
from ._smooth import Smoothed, smooth
from ._solve import solve
from ._ude import TrainedUDE

_FAILED = 1e3
DATA_SOURCE = -2  # `DenseSamples.source` of rows taken from the smoothed data (collocation)


# -- 1. dense samples ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DenseSamples:
    """States along integrated UDE trajectories and the network's residual there."""

    states: tuple[str, ...]
    residual_states: tuple[str, ...]
    t: np.ndarray  # (n,)
    X: np.ndarray  # (n, D) states
    residual: np.ndarray  # (n, R) network output on the residual states
    derivative: np.ndarray  # (n, D) the whole learned field
    source: np.ndarray  # (n,) trajectory index, -1 for the extra starts, -2 smoothed data

    def subset(self, rows: np.ndarray) -> DenseSamples:
        return dataclasses.replace(
            self,
            t=self.t[rows],
            X=self.X[rows],
            residual=self.residual[rows],
            derivative=self.derivative[rows],
            source=self.source[rows],
        )

    def from_ude(self) -> DenseSamples:
        """The rows sampled along the trained UDE."""
        return self.subset(self.source != DATA_SOURCE)

    def from_data(self) -> DenseSamples:
        """The rows from the smoothed data: spline states, and spline derivative minus the
        mechanistic field as the residual (no network involved)."""
        return self.subset(self.source == DATA_SOURCE)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.X, columns=list(self.states))
        df.insert(0, "t", self.t)
        df.insert(0, "source", self.source)
        for j, s in enumerate(self.residual_states):
            df[f"residual_{s}"] = self.residual[:, j]
        for j, s in enumerate(self.states):
            df[f"d{s}_dt"] = self.derivative[:, j]
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, states, residual_states) -> DenseSamples:
        return cls(
            states=tuple(states),
            residual_states=tuple(residual_states),
            t=df["t"].to_numpy(),
            X=df[list(states)].to_numpy(),
            residual=df[[f"residual_{s}" for s in residual_states]].to_numpy(),
            derivative=df[[f"d{s}_dt" for s in states]].to_numpy(),
            source=df["source"].to_numpy(),
        )


def dense_samples(
    trained: TrainedUDE,
    data: TrajectorySet,
    *,
    key: PRNGKeyArray,
    n_per_trajectory: int = 200,
    n_extra_starts: int = 4,
    spread: float = 0.05,
    smoothed: Smoothed | None = None,
) -> DenseSamples:
    """Sample the learned field densely along trajectories of the trained UDE.

    Extra starts are data states perturbed by `spread` of each state's range; their trajectories
    are kept only inside the region the data cover (its bounding box, widened by 5%), since the
    network is not trusted far from the data.

    With `smoothed`, the smoothed data's interior points are appended (source `DATA_SOURCE`):
    there the residual is the spline's derivative minus the fitted mechanistic field, a target
    that does not depend on how well the network trained.
    """
    ude = trained.ude
    allys = np.concatenate([tr.y for tr in data.trajectories])
    lo, hi = allys.min(0), allys.max(0)
    pad = 0.05 * (hi - lo)
    lo_box, hi_box = lo - pad, hi + pad
    starts, spans, sources = [], [], []
    for i, tr in enumerate(data.trajectories):
        starts.append(trained.y0[i])
        spans.append((tr.t0, tr.t1))
        sources.append(i)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1].item())
    for k in range(n_extra_starts):
        i = k % len(data)
        tr = data.trajectories[i]
        row = tr.y[rng.integers(len(tr.t))]
        y0 = np.clip(row + spread * (hi - lo) * rng.standard_normal(len(row)), lo, hi)
        starts.append(y0)
        spans.append((tr.t0, tr.t1))
        sources.append(-1)
    ts = np.stack([np.linspace(a, b, n_per_trajectory) for a, b in spans])
    ys, ok = jax.vmap(lambda y0, t: solve(ude, y0, t)[:2])(
        jnp.asarray(np.stack(starts)), jnp.asarray(ts)
    )
    ys, ok = np.asarray(ys), np.asarray(ok)
    keep_t, keep_y, keep_s = [], [], []
    for j in range(len(starts)):
        inside = np.all((ys[j] >= lo_box) & (ys[j] <= hi_box), axis=1) & np.all(
            np.isfinite(ys[j]), axis=1
        )
        if sources[j] >= 0 and not ok[j]:
            raise NumericalError(
                "the trained UDE cannot be integrated",
                stage="dense",
                trajectory=data.names[sources[j]],
            )
        keep_t.append(ts[j][inside])
        keep_y.append(ys[j][inside])
        keep_s.append(np.full(inside.sum(), sources[j]))
    X = np.concatenate(keep_y)
    idx = list(ude.model.residual_index)
    residual = np.asarray(jax.vmap(ude.residual)(jnp.asarray(X)))[:, idx]
    derivative = np.asarray(jax.vmap(ude)(jnp.asarray(np.concatenate(keep_t)), jnp.asarray(X)))
    t, source = np.concatenate(keep_t), np.concatenate(keep_s)
    if smoothed is not None:
        keep = smoothed.interior if smoothed.interior.sum() >= 2 else slice(None)
        ts_, xs_, ds_ = smoothed.t[keep], smoothed.y[keep], smoothed.dydt[keep]
        params = ude.mechanistic_params()
        mech = np.asarray(
            jax.vmap(lambda tt, y: ude.model.vector_field(tt, y, params))(
                jnp.asarray(ts_), jnp.asarray(xs_)
            )
        )
        t, X = np.concatenate([t, ts_]), np.concatenate([X, xs_])
        residual = np.concatenate([residual, (ds_ - mech)[:, idx]])
        derivative = np.concatenate([derivative, ds_])
        source = np.concatenate([source, np.full(len(ts_), DATA_SOURCE)])
    return DenseSamples(
        states=ude.model.states,
        residual_states=ude.model.residual_states,
        t=t,
        X=X,
        residual=residual,
        derivative=derivative,
        source=source,
    )


# -- 2. refit of a model in additive terms -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Term:
    state: str
    parameter: str  # the term's outer coefficient; 0 removes the term
    expr: sp.Expr  # the term with its coefficient symbolic
    origin: str  # "theory" (matches a term of the declared model) or "discovered"


@dataclasses.dataclass(frozen=True)
class TermModel:
    """A model written as a sum of terms per state, every constant a parameter."""

    model: MechanisticModel
    terms: tuple[Term, ...]

    def inlined(self, params, mask) -> dict[str, str]:
        subs = {
            sp.Symbol(n, real=True): sp.Float(float(v) * float(m), 6)
            for n, v, m in zip(self.model.parameters, params, self._param_mask(mask))
        }
        return {
            s: str(sp.expand(eq.xreplace(subs)))
            for s, eq in zip(self.model.states, self.model.equations)
        }

    def inner_constants(self, params, digits: int | None = None) -> dict[sp.Symbol, sp.Float]:
        """The constants inside terms (e.g. k in `tanh(k*x)`) at `params`: every parameter
        that is not a term's own coefficient."""
        coefficients = {t.parameter for t in self.terms}
        return {
            sp.Symbol(n, real=True): sp.Float(float(v), *([digits] if digits else []))
            for n, v in zip(self.model.parameters, params)
            if n not in coefficients
        }

    def _param_mask(self, term_mask) -> np.ndarray:
        m = np.ones(len(self.model.parameters))
        for term, keep in zip(self.terms, term_mask):
            m[self.model.parameters.index(term.parameter)] = float(keep)
        return m


def _monomial(term: sp.Expr) -> sp.Expr:
    coeff, rest = term.as_coeff_Mul()
    return rest


def build_term_model(
    model: MechanisticModel, mech_params: Sequence[float], formulas: dict[str, sp.Expr]
) -> TermModel:
    """Mechanistic equations (fitted numbers inlined) plus formulas, split into additive terms.

    Each term's numeric coefficient becomes a parameter `c_<state>_<k>`; constants inside a
    term (e.g. in `x/(1 + 0.5*y)`) become parameters `k_<state>_<k>` too, so the refit moves
    every number. A term is "theory" when the declared model has a term of the same form.
    """
    subs = dict(zip(model.parameter_symbols, [sp.Float(float(v)) for v in mech_params]))
    table = model.symbol_table()
    taken = set(model.states) | set(model.parameters) | set(RESERVED)

    def fresh(name: str) -> str:
        """`name`, or with underscores appended where a state or parameter has it already."""
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    ones = {p: sp.Integer(1) for p in model.parameter_symbols}
    names, guesses, equations, terms = [], [], [], []
    for state, eq in zip(model.states, model.equations):
        theory_forms = {
            _monomial(t) for t in sp.Add.make_args(sp.expand(eq.xreplace(ones))) if t != 0
        }
        parts = [eq.xreplace(subs)]
        if state in formulas:
            parts.append(
                formulas[state].xreplace({s: table[s.name] for s in formulas[state].free_symbols})
            )
        # Terms of the same form are merged, but a form stays even where the theory's and the
        # formula's coefficients cancel (a library term x beside the theory's -x): its
        # coefficient then starts at 0 and the refit moves it.
        merged: dict[sp.Expr, float] = {}
        for part in parts:
            for term in sp.Add.make_args(sp.expand(part)):
                if term != 0:
                    coeff, rest = term.as_coeff_Mul()
                    merged[rest] = merged.get(rest, 0.0) + float(coeff)
        rhs = sp.Integer(0)
        for k, (rest, coeff) in enumerate(merged.items()):
            inner = sorted(rest.atoms(sp.Float), key=str)
            for j, f in enumerate(inner):
                name = fresh(f"k_{state}_{k}_{j}")
                rest = rest.xreplace({f: sp.Symbol(name, real=True)})
                names.append(name)
                guesses.append(float(f))
            pname = fresh(f"c_{state}_{k}")
            names.append(pname)
            guesses.append(float(coeff))
            psym = sp.Symbol(pname, real=True)
            rhs = rhs + psym * rest
            origin = "theory" if not inner and rest in theory_forms else "discovered"
            terms.append(Term(state, pname, psym * rest, origin))
        equations.append(rhs)
    new = model.with_equations(equations, names, guesses)
    return TermModel(new, tuple(terms))


# Relative error below which data are taken as exact: BIC compares fits by log(SSE), and on
# noise-free data the ODE solver's own error would otherwise make needless tiny terms look
# significant (a 1e-9 * x**3 that improves a near-zero SSE by a factor of two).
_ERROR_FLOOR = 1e-4
SHOOTING_PERIODS = 1.0  # the refit's multiple-shooting pieces, in characteristic periods


@dataclasses.dataclass(frozen=True)
class Refit:
    params: np.ndarray
    stderr: np.ndarray
    y0: np.ndarray  # (trajectories, D) fitted initial states
    sse: float
    n: int
    k: int
    ok: bool

    @property
    def bic(self) -> float:
        sse = max(self.sse, self.n * _ERROR_FLOOR**2)
        return self.n * math.log(sse / self.n) + self.k * math.log(self.n)


class Refitter:
    """Least squares of a `TermModel` against data, with terms switched off by a mask.

    Compiled once per model structure; masks and starting values are arguments, so pruning
    costs no recompilation.

    Multiple shooting: each trajectory is cut into pieces `horizon` long (by default
    `SHOOTING_PERIODS` characteristic periods of the data, `2 pi * Smoothed.time_scale()`
    each), every piece from its own fitted initial state (the first piece's is fitted only with
    `fit_initial_state`). On oscillating, stiff or chaotic series one shooting over the whole
    span makes the right equations look wrong (a small phase error grows without bound) and the
    least squares stall far from the optimum; on slow, monotone series the horizon covers the
    whole span and nothing changes. Starts taken from the smoothed data instead of fitted would
    let spurious terms fit the smoothing error; pieces several periods long fail on chaos
    (Lorenz with coefficients 20% off: one period recovers them, three do not).
    `horizon=math.inf` is single shooting.
    """

    def __init__(
        self,
        term_model: TermModel,
        data: TrajectorySet,
        *,
        fit_initial_state=True,
        horizon: float | None = None,
        rtol=1e-7,
        atol=1e-9,
        max_iterations=100,
        max_steps=2048,
    ):
        self.term_model = term_model
        if horizon is None:
            horizon = SHOOTING_PERIODS * 2 * math.pi * smooth(data).time_scale()
        shooting = data.segments(horizon)
        self.data = data
        model = term_model.model
        ts, ys, mask = (jnp.asarray(a) for a in shooting.pieces.padded())
        starts = np.array(ys[:, 0, :])
        if shooting.cut:
            later = np.setdiff1d(np.arange(len(shooting.pieces)), shooting.first)
            starts[later] = smooth(data).y[shooting.rows[later]]
        free = np.ones((len(starts), 1))
        if not fit_initial_state:
            free[shooting.first] = 0.0
        starts, free = jnp.asarray(starts), jnp.asarray(free)
        self._first = shooting.first
        self._n_free = int(free.sum()) * ys.shape[-1]
        scale = jnp.asarray(data.state_scale())
        self.n = int(np.asarray(mask).sum()) * ys.shape[-1]
        guesses = np.asarray(model.guesses)
        pscale = jnp.asarray(np.maximum(np.abs(guesses), 1e-2))
        self._pscale = pscale
        self._fit_y0 = fit_initial_state

        def unpack(theta, pmask):
            z, dy0 = theta
            params = pmask * pscale * z
            y0s = starts + free * dy0 * scale
            return params, y0s

        def residuals(theta, pmask):
            params, y0s = unpack(theta, pmask)
            pred, _ = simulate(
                model,
                params,
                y0s,
                ts,
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
                adjoint=diffrax.ForwardMode(),
            )
            r = (mask[..., None] * (pred - ys) / scale).ravel()
            return jnp.where(jnp.isfinite(r), r, _FAILED)

        solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10)

        @eqx.filter_jit
        def run(theta, pmask):
            sol = optx.least_squares(
                residuals, solver, theta, args=pmask, max_steps=max_iterations, throw=False
            )
            r = residuals(sol.value, pmask)
            jac = jax.jacfwd(lambda th: residuals(th, pmask))(sol.value)
            return sol.value, jnp.sum(r**2), jac[0]

        self._unpack = eqx.filter_jit(unpack)
        self._run = run
        self._starts = starts

    def fit(
        self,
        term_mask: Sequence[bool],
        start: np.ndarray | None = None,
        y0: np.ndarray | None = None,
    ) -> Refit:
        tm = self.term_model
        pmask = jnp.asarray(tm._param_mask(term_mask))
        p0 = np.asarray(tm.model.guesses) if start is None else np.asarray(start)
        z0 = jnp.asarray(p0) / self._pscale
        dy0 = jnp.zeros_like(self._starts)
        if y0 is not None and self._fit_y0:
            first = self._first
            shift = (jnp.asarray(y0) - self._starts[first]) / jnp.asarray(self.data.state_scale())
            dy0 = dy0.at[first].set(shift)
        theta, sse, jz = self._run((z0, dy0), pmask)
        params, y0s = self._unpack(theta, pmask)
        params, sse = np.asarray(params), float(sse)
        k = int(np.asarray(pmask).sum()) + self._n_free
        # Standard errors from the Jacobian at the optimum: cov = s² (JᵀJ)⁻¹ (active columns).
        jz = np.asarray(jz) * np.asarray(self._pscale)[None, :]
        active = np.flatnonzero(np.asarray(pmask) > 0)
        stderr = np.zeros(len(params))
        dof = max(self.n - k, 1)
        try:
            cov = np.linalg.pinv(jz[:, active].T @ jz[:, active]) * (sse / dof)
            stderr[active] = np.sqrt(np.clip(np.diag(cov), 0, None))
        except np.linalg.LinAlgError:
            stderr[active] = np.nan
        ok = math.isfinite(sse) and sse < _FAILED**2 and bool(np.all(np.isfinite(params)))
        return Refit(params, stderr, np.asarray(y0s)[self._first], sse, self.n, k, ok)


# -- selection -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Selection:
    term_model: TermModel
    refit: Refit
    mask: tuple[bool, ...]
    chosen: dict[str, dict]  # state -> {engine, equation, complexity, loss, row}
    pruned: list[dict]
    tried: list[dict]

    def equations(self) -> dict[str, str]:
        return self.term_model.inlined(self.refit.params, self.mask)

    def final_model(self) -> MechanisticModel:
        """The selected model with the refit numbers inlined (no free parameters)."""
        tm = self.term_model
        subs = {
            sp.Symbol(n, real=True): sp.Float(float(v) * float(m))
            for n, v, m in zip(tm.model.parameters, self.refit.params, tm._param_mask(self.mask))
        }
        eqs = [sp.expand(eq.xreplace(subs)) for eq in tm.model.equations]
        return tm.model.with_equations(eqs, (), ())


def _in_model_symbols(expr: sp.Expr, model: MechanisticModel) -> sp.Expr:
    table = model.symbol_table()
    return sp.expand(expr.xreplace({s: table[s.name] for s in expr.free_symbols}))


def _polynomial_coefficients(expr: sp.Expr, symbols) -> dict[tuple[int, ...], float] | None:
    """Monomial exponents -> coefficient, or None when `expr` is not a polynomial."""
    if not expr.is_polynomial(*symbols):
        return None
    poly = sp.Poly(expr, *symbols)
    return {m: float(c) for m, c in zip(poly.monoms(), poly.coeffs())}


def _term_forms(expr: sp.Expr) -> list[sp.Expr]:
    """The additive terms of `expr` without their numeric coefficients (inner constants kept),
    as `build_term_model` splits them."""
    forms = []
    for term in sp.Add.make_args(sp.expand(expr)):
        if term != 0:
            forms.append(term.as_coeff_Mul()[1])
    return forms


@dataclasses.dataclass(frozen=True)
class CollocationScore:
    """How well a candidate's terms, with coefficients refit by least squares, match the
    smoothed data's derivative residual (no ODE solve): BIC over the interior points."""

    bic: float
    rss: float
    k: int


def collocation_score(
    expr: sp.Expr, model: MechanisticModel, X: np.ndarray, target: np.ndarray
) -> CollocationScore | None:
    """Score one candidate formula on smoothed states `X` (n, D) against `target` (n,); None
    when its terms cannot be evaluated there (non-finite values)."""
    from ._expr import evaluate

    values = dict(zip(model.state_symbols, [jnp.asarray(X[:, i]) for i in range(X.shape[1])]))
    values[model.time_symbol] = jnp.zeros(len(X))
    forms = _term_forms(expr)
    n = len(target)
    if forms:
        try:
            theta = np.stack(
                [np.broadcast_to(np.asarray(evaluate(f, values), float), (n,)) for f in forms],
                axis=1,
            )
        except (NotImplementedError, TypeError, ValueError):
            return None
        if not np.all(np.isfinite(theta)):
            return None
        coef = np.linalg.lstsq(theta, target, rcond=None)[0]
        resid = target - theta @ coef
    else:
        resid = target
    rss = float(np.sum(resid**2))
    k = len(forms) + sum(len(f.atoms(sp.Float)) for f in forms)
    bic = n * math.log(max(rss, 1e-300) / n) + k * math.log(n)
    return CollocationScore(bic, rss, k)


def _front_choices(
    table: pd.DataFrame, state: str, max_complexity: int, is_polynomial
) -> list[int]:
    """What the network's own candidates argue for, whatever the smoothed data say (with few or
    noisy points the collocation scores can mislead): on one state's combined Pareto front of
    the network's candidates, the polynomial with the highest PySR score (the steepest drop in
    loss per unit of complexity), and PySR's "best" choice where it is a polynomial."""
    from .symbolic import pareto_front, select_model

    sub = table[(table["state"] == state) & (table["complexity"] <= max_complexity)]
    if "samples" in sub:
        sub = sub[sub["samples"] != "data"]
    if sub.empty:
        return []
    front = pareto_front(sub.reset_index(drop=False)).set_index("index")
    poly = [int(r) for r in front.index if is_polynomial(int(r))]
    out = []
    if poly:
        out.append(max(poly, key=lambda r: float(front.loc[r, "score"])))
    best = int(select_model(front, "best")) if len(front) else None
    if best is not None and is_polynomial(best) and best not in out:
        out.append(best)
    return out


def _ranked_candidates(
    table: pd.DataFrame,
    state: str,
    scores: dict[int, CollocationScore | None],
    max_complexity: int,
) -> list[int]:
    """One state's candidates worth a refit through the ODE, best collocation BIC first; each
    formula text once (engines often agree). Candidates that cannot be evaluated go last."""
    sub = table[(table["state"] == state) & (table["complexity"] <= max_complexity)]
    if sub.empty:  # nothing simple enough: fall back on the simplest candidates there are
        sub = table[table["state"] == state].nsmallest(3, "complexity")

    def key(r: int) -> tuple[float, int]:
        score = scores.get(r)
        return (score.bic if score is not None else math.inf, int(table.loc[r, "complexity"]))

    rows, seen = [], set()
    for r in sorted((int(r) for r in sub.index), key=key):
        text = str(table.loc[r, "equation"])
        if text not in seen:
            seen.add(text)
            rows.append(r)
    return rows


def select_and_refit(
    model: MechanisticModel,
    mech_params: Sequence[float],
    table: pd.DataFrame,
    data: TrajectorySet,
    *,
    fit_initial_state: bool = True,
    max_complexity: int = 80,
    max_polynomial: int = 4,
    max_nonpolynomial: int = 1,
    smoothed: Smoothed | None = None,
) -> Selection:
    """Choose one formula per residual state, refit every constant, prune needless terms.

    `table` holds every engine's candidates with a `state` column. Candidates are compared by
    the BIC of their refit *through the ODE against the data*:

    - polynomial candidates (SINDy's whole sparsity path, and any other engine's formula that
      expands to a polynomial) share one model whose terms are the union of their monomials:
      each candidate is a mask over it, so all of them cost one compilation;
    - the best few non-polynomial candidates per state get a model of their own.

    Before any ODE solve, every candidate is scored by collocation: its terms' coefficients
    refit by least squares to the smoothed data's derivative residual, and the BIC of that fit
    (`collocation_score`). Only the best `max_polynomial` polynomial and `max_nonpolynomial`
    other candidates per state go on to refits through the ODE, best first, and a formula only
    where it scores better than every polynomial. States are improved one at a time
    (coordinate-wise). Last, discovered terms are removed one at a time, least significant
    first, while the BIC improves: a term stays only if dropping it worsens the fit by more than
    the noise explains.
    """
    states = [s for s in model.residual_states if (table["state"] == s).any()]
    symbols = model.state_symbols
    exprs = {int(r): _in_model_symbols(table.loc[r, "sympy_format"], model) for r in table.index}
    polys = {r: _polynomial_coefficients(e, symbols) for r, e in exprs.items()}
    smoothed = smoothed if smoothed is not None else smooth(data)
    X, dydt = smoothed.inner()
    mech = np.asarray(
        jax.vmap(lambda y: model.vector_field(0.0, y, jnp.asarray(mech_params, float)))(
            jnp.asarray(X)
        )
    )
    scores: dict[int, CollocationScore | None] = {}
    for r, e in exprs.items():
        j = model.states.index(str(table.loc[r, "state"]))
        scores[r] = collocation_score(e, model, X, dydt[:, j] - mech[:, j])
    order = {s: _ranked_candidates(table, s, scores, max_complexity) for s in states}
    tried: list[dict] = []

    # The polynomial candidates worth a refit: the best few by collocation, and the network's
    # own choice on its Pareto front.
    poly_rows = {}
    for s in states:
        rows = [r for r in order[s] if polys[r] is not None][:max_polynomial]
        for r in _front_choices(table, s, max_complexity, lambda r: polys[r] is not None):
            if r not in rows:
                rows.append(r)
        poly_rows[s] = rows

    # One model with every monomial those candidates use (coefficient 1 each).
    library: dict[str, set[tuple[int, ...]]] = {s: set() for s in states}
    for s in states:
        for r in poly_rows[s]:
            library[s].update(polys[r])

    def monomial(exps) -> sp.Expr:
        return sp.Mul(*[v**e for v, e in zip(symbols, exps)])

    lib_formulas = {s: sp.Add(*[monomial(m) for m in sorted(library[s])]) for s in states}
    lib_model = build_term_model(model, mech_params, lib_formulas)
    lib_fitter = Refitter(lib_model, data, fit_initial_state=fit_initial_state)
    theory_value = {
        (t.state, _exps(t, symbols)): float(
            _theory_coefficient(
                model,
                mech_params,
                t.state,
                t.expr.subs(sp.Symbol(t.parameter, real=True), 1),
                symbols,
            )
        )
        for t in lib_model.terms
        if t.origin == "theory"
    }

    def lib_fit(choice: dict[str, int]) -> tuple[Refit, list[bool]]:
        mask, start = [], np.asarray(lib_model.model.guesses, dtype=float).copy()
        for t in lib_model.terms:
            exps = _exps(t, symbols)
            coefs = polys[choice[t.state]] if t.state in choice else {}
            base = theory_value.get((t.state, exps), 0.0)
            on = t.origin == "theory" or (exps is not None and exps in coefs)
            mask.append(on)
            start[lib_model.model.parameters.index(t.parameter)] = base + coefs.get(exps, 0.0)
        return lib_fitter.fit(mask, start=start), mask

    def record(choice, fit, kind):
        tried.append(
            {
                "choice": {s: str(table.loc[r, "equation"]) for s, r in choice.items()},
                "engines": {s: str(table.loc[r, "engine"]) for s, r in choice.items()},
                "kind": kind,
                "bic": fit.bic if fit.ok else None,
                "sse": fit.sse,
            }
        )

    def beats_polynomials(r: int, s: str) -> bool:
        best_poly = min(
            (scores[p].bic for p in poly_rows[s] if scores[p] is not None), default=None
        )
        return best_poly is None or (scores[r] is not None and scores[r].bic < best_poly)

    other_rows = {
        s: [r for r in order[s] if polys[r] is None and beats_polynomials(r, s)][:max_nonpolynomial]
        for s in states
    }
    for s in states:  # every state needs a first candidate
        if not poly_rows[s] and not other_rows[s]:
            other_rows[s] = [r for r in order[s] if polys[r] is None][:1]
    current = {s: (poly_rows[s] or other_rows[s])[0] for s in states}
    best: tuple[TermModel, Refitter, Refit, list[bool]] | None = None

    def better(fit: Refit, margin: float = 0.0) -> bool:
        return fit.ok and (best is None or not best[2].ok or fit.bic < best[2].bic - margin)

    # Polynomial candidates: masks over one model, so sweep the states until nothing improves.
    if all(polys[current[s]] is not None for s in states):
        fit, mask = lib_fit(current)
        record(current, fit, "polynomial")
        best = (lib_model, lib_fitter, fit, mask)
        seen = {tuple(sorted(current.items()))}
        for _sweep in range(3):
            changed = False
            for s in states:
                for r in poly_rows[s]:
                    choice = {**current, s: r}
                    key = tuple(sorted(choice.items()))
                    if key in seen:
                        continue
                    seen.add(key)
                    fit, mask = lib_fit(choice)
                    record(choice, fit, "polynomial")
                    if better(fit):
                        best, current, changed = (lib_model, lib_fitter, fit, mask), choice, True
            if not changed:
                break
    # Other formulas need a model (and a compilation) each: only the leading few per state,
    # and they must beat the polynomial choice clearly (BIC lower by more than 2), since their
    # inner constants make them more flexible than their parameter count says.
    for s in states:
        for r in other_rows[s]:
            choice = {**current, s: r}
            tm = build_term_model(model, mech_params, {k: exprs[v] for k, v in choice.items()})
            fitter = Refitter(tm, data, fit_initial_state=fit_initial_state)
            mask = [True] * len(tm.terms)
            fit = fitter.fit(mask)
            record(choice, fit, "formula")
            if better(fit, margin=2.0):
                best, current = (tm, fitter, fit, mask), choice
    if best is None or not best[2].ok:
        # Every leading candidate blows up through the ODE: fall back on the simplest formula
        # of each state, then on the theory alone (every discovered term off), which is the
        # mechanistic fit and integrates.
        simplest = {
            s: min(order[s] or [current[s]], key=lambda r: int(table.loc[r, "complexity"]))
            for s in states
        }
        tm = build_term_model(model, mech_params, {k: exprs[v] for k, v in simplest.items()})
        fitter = Refitter(tm, data, fit_initial_state=fit_initial_state)
        for mask in ([True] * len(tm.terms), [t.origin == "theory" for t in tm.terms]):
            fit = fitter.fit(mask)
            record(simplest, fit, "fallback")
            if fit.ok:
                best, current = (tm, fitter, fit, mask), simplest
                break
    if best is None or not best[2].ok:
        raise NumericalError("no candidate model could be refit to the data", stage="selection")
    tm, refitter, fit, mask = best

    fit, mask, pruned = prune_terms(tm, refitter, fit, mask)
    chosen = {
        s: {
            "engine": str(table.loc[r, "engine"]),
            "equation": str(table.loc[r, "equation"]),
            "complexity": int(table.loc[r, "complexity"]),
            "loss": float(table.loc[r, "loss"]),
            "row": int(r),
        }
        for s, r in current.items()
    }
    return Selection(tm, fit, tuple(mask), chosen, pruned, tried)


def prune_terms(
    tm: TermModel,
    refitter: Refitter,
    fit: Refit,
    mask: Sequence[bool],
    *,
    forced: frozenset[int] = frozenset(),
) -> tuple[Refit, list[bool], list[dict]]:
    """Remove discovered terms one at a time, least significant first, while the BIC improves;
    terms whose index is in `forced` (a reviewer's choice) are never removed."""
    mask = list(mask)
    pruned: list[dict] = []
    rejected: set[int] = set()
    while True:
        # Try the least significant discovered term first (smallest |coefficient / stderr|).
        options = [
            (abs(fit.params[j]) / max(fit.stderr[j], 1e-300), i)
            for i, term in enumerate(tm.terms)
            if mask[i] and term.origin == "discovered" and i not in rejected | forced
            for j in [tm.model.parameters.index(term.parameter)]
        ]
        if not options:
            break
        _, i = min(options)
        trial = list(mask)
        trial[i] = False
        f = refitter.fit(trial, start=fit.params, y0=fit.y0)
        if not f.ok or f.bic >= fit.bic:
            rejected.add(i)  # this term is needed; try the next least significant one
            continue
        j = tm.model.parameters.index(tm.terms[i].parameter)
        pruned.append(
            {
                "state": tm.terms[i].state,
                "term": str(tm.terms[i].expr.subs(sp.Symbol(tm.terms[i].parameter, real=True), 1)),
                "coefficient": float(fit.params[j]),
                "bic_before": fit.bic,
                "bic_after": f.bic,
            }
        )
        mask[i] = False
        fit = f
        rejected.clear()  # significances change once a term is gone
    return fit, mask, pruned


def _exps(term: Term, symbols) -> tuple[int, ...] | None:
    rest = term.expr.subs(sp.Symbol(term.parameter, real=True), 1)
    if not rest.is_polynomial(*symbols):
        return None
    monoms = sp.Poly(rest, *symbols).monoms()
    return monoms[0] if len(monoms) == 1 else None


def _theory_coefficient(model, mech_params, state, expr, symbols) -> float:
    """Coefficient, in the declared model with fitted numbers, of the monomial `expr`."""
    eq = model.equations[model.states.index(state)]
    eq = sp.expand(eq.xreplace(dict(zip(model.parameter_symbols, map(sp.Float, mech_params)))))
    return float(sp.Poly(eq, *symbols).coeff_monomial(expr)) if eq.is_polynomial(*symbols) else 0.0


# -- 3. extrapolation ----------------------------------------------------------------------------
@eqx.filter_jit
def _simulate(field, y0s, ts):
    return jax.vmap(lambda y0, t: solve(field, y0, t, max_steps=16384)[:2])(y0s, ts)


def simulate_field(field, y0s: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integrate `field(t, y)` (an equinox module) from each y0 over its row of `ts`; the states
    are non-finite where a solve failed. Compiled once per field structure and shape."""
    ys, ok = _simulate(field, jnp.asarray(y0s), jnp.asarray(ts))
    return np.asarray(ys), np.asarray(ok)


class ModelField(eqx.Module):
    """A `MechanisticModel` with fixed parameter values, as a vector field module."""

    model: MechanisticModel = eqx.field(static=True)
    params: jax.Array

    def __call__(self, t, y):
        return self.model.vector_field(t, y, self.params)


def model_field(model: MechanisticModel, params) -> ModelField:
    return ModelField(model, jnp.asarray(params, dtype=jnp.float64).reshape(-1))


def rmse(pred: np.ndarray, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    err = mask[..., None] * np.where(np.isfinite(pred), pred - obs, np.inf)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.nansum(err**2, axis=(0, 1)) / max(mask.sum(), 1))
