"""The model file (docs/model-file.md): states, parameters, known equations, residual states.

A `MechanisticModel` holds the equations as SymPy expressions (for printing, inlining fitted
numbers and adding discovered terms) and evaluates them with JAX.
"""

from __future__ import annotations

import dataclasses
import keyword
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import sympy as sp

from ._errors import ModelFileError
from ._expr import RESERVED, evaluate, parse_expression
from ._precision import ensure_float64

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_MODEL_BYTES = 1_000_000


@dataclasses.dataclass(frozen=True, eq=False)
class MechanisticModel:
    """States, parameters and one right-hand side per state.

    **Fields:**
    - `states`: state names, in the order of the data columns.
    - `parameters`: parameter names.
    - `guesses`: initial guesses (or known values), one per parameter.
    - `fixed`: which parameters are known and not fitted.
    - `bounds`: `(min, max)` per parameter (`-inf`/`inf` where not declared); empty: none.
    - `equations`: one SymPy right-hand side per state, over states, parameters and `t`.
    - `residual_states`: states whose equation gets a neural residual term.
    - `time_column`, `trajectory_column`: data column names.
    - `measured`: the states the data measure directly (a column each); None: every state.
    - `observations`: `(name, expression)` pairs, each a data column that measures a function
      of the states and parameters (`[observed.equations]`), e.g. `("cases", rho*sigma*E)`.
    - `initial`: `(state, value, min, max, fixed)` of unmeasured states' initial values
      (`[initial]`): the fits' first guess and its bounds, or a known value (`fixed`).
    """

    states: tuple[str, ...]
    parameters: tuple[str, ...]
    guesses: tuple[float, ...]
    fixed: tuple[bool, ...]
    equations: tuple[sp.Expr, ...]
    residual_states: tuple[str, ...] = ()
    time_column: str = "t"
    trajectory_column: str = "trajectory"
    source: str = "<memory>"
    bounds: tuple[tuple[float, float], ...] = ()
    measured: tuple[str, ...] | None = None
    observations: tuple[tuple[str, sp.Expr], ...] = ()
    initial: tuple[tuple[str, float, float, float, bool], ...] = ()

    def __post_init__(self):
        ensure_float64()  # every ODE fit starts from a model (sciml/_precision.py)
        n = len(self.parameters)
        if not (len(self.guesses) == len(self.fixed) == n):
            raise ValueError("parameters, guesses and fixed must have the same length")
        if len(self.equations) != len(self.states):
            raise ValueError("one equation per state")
        if self.bounds and len(self.bounds) != n:
            raise ValueError("bounds: one (min, max) per parameter, or none")
        for (lo, hi), g, name in zip(self.bounds, self.guesses, self.parameters):
            if not lo <= g <= hi or lo >= hi:
                raise ValueError(f"parameter {name}: need min < max and min <= value <= max")
        if self.measured is not None and not set(self.measured) <= set(self.states):
            raise ValueError("measured: every entry must be a state")
        for state, value, lo, hi, _ in self.initial:
            if state not in self.states or not lo <= value <= hi or lo >= hi:
                raise ValueError(f"initial {state}: a state, with min < max, value in [min, max]")

    # -- what the data measure ------------------------------------------------------------
    @property
    def measured_states(self) -> tuple[str, ...]:
        """The states with a data column, in the model's order."""
        if self.measured is None:
            return self.states
        return tuple(s for s in self.states if s in self.measured)

    @property
    def observables(self) -> tuple[str, ...]:
        """The names (data columns) of the observation equations."""
        return tuple(name for name, _ in self.observations)

    @property
    def partial(self) -> bool:
        """Whether some state is not measured directly or an observation equation is declared."""
        return self.measured_states != self.states or bool(self.observations)

    def initial_guess(self, state: str) -> tuple[float, float, float, bool] | None:
        """`(value, min, max, fixed)` declared for `state`'s initial value in `[initial]`, or
        None."""
        for name, *spec in self.initial:
            if name == state:
                return tuple(spec)
        return None

    def observe(self, t, y, p):
        """The observation equations' values: `y` (D,), `p` (P,) -> (K,) (K = 0: empty)."""
        if not self.observations:
            return jnp.zeros((0,), dtype=y.dtype)
        values = {self.time_symbol: t}
        values.update(zip(self.state_symbols, [y[i] for i in range(len(self.states))]))
        values.update(zip(self.parameter_symbols, [p[i] for i in range(len(self.parameters))]))
        out = [jnp.broadcast_to(evaluate(eq, values), jnp.shape(t)) for _, eq in self.observations]
        return jnp.stack(out).astype(y.dtype)

    def channels(self, t, y, p):
        """What the data hold for a state `y` (D,): the states, then the observation equations'
        values, (D + K,); which of them a data set measures is its observed mask."""
        return jnp.concatenate([y, self.observe(t, y, p)])

    @property
    def parameter_bounds(self) -> tuple[tuple[float, float], ...]:
        """`(min, max)` of every parameter, `(-inf, inf)` where none is declared."""
        return self.bounds or ((-np.inf, np.inf),) * len(self.parameters)

    # -- symbols --------------------------------------------------------------------------
    @property
    def state_symbols(self) -> tuple[sp.Symbol, ...]:
        return tuple(sp.Symbol(s, real=True) for s in self.states)

    @property
    def parameter_symbols(self) -> tuple[sp.Symbol, ...]:
        return tuple(sp.Symbol(p, real=True) for p in self.parameters)

    @property
    def time_symbol(self) -> sp.Symbol:
        return sp.Symbol("t", real=True)

    def symbol_table(self) -> dict[str, sp.Symbol]:
        table = {s.name: s for s in self.state_symbols + self.parameter_symbols}
        table["t"] = self.time_symbol
        return table

    @property
    def residual_index(self) -> tuple[int, ...]:
        return tuple(self.states.index(s) for s in self.residual_states)

    @property
    def free_index(self) -> tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.fixed) if not f)

    # -- evaluation -----------------------------------------------------------------------
    def vector_field(self, t, y, p):
        """dy/dt of the declared equations: `y` (D,), `p` (P,) -> (D,)."""
        values = {self.time_symbol: t}
        values.update(zip(self.state_symbols, [y[i] for i in range(len(self.states))]))
        values.update(zip(self.parameter_symbols, [p[i] for i in range(len(self.parameters))]))
        out = [jnp.broadcast_to(evaluate(eq, values), jnp.shape(t)) for eq in self.equations]
        return jnp.stack(out).astype(y.dtype)

    # -- printing -------------------------------------------------------------------------
    def inlined(self, values: Sequence[float], digits: int = 6) -> dict[str, str]:
        """Equations with parameter values substituted, as SymPy-parsable strings."""
        subs = {
            s: sp.Float(float(v), digits)
            for s, v in zip(self.parameter_symbols, values, strict=True)
        }
        return {
            name: str(sp.expand(eq.xreplace(subs)))
            for name, eq in zip(self.states, self.equations, strict=True)
        }

    def with_equations(
        self,
        equations: Sequence[sp.Expr],
        parameters: Sequence[str],
        guesses: Sequence[float],
        fixed: Sequence[bool] | None = None,
        *,
        values: Sequence[float] | None = None,
    ) -> MechanisticModel:
        """A copy with other equations and parameters (used when discovered terms are added).

        A parameter keeps its declared bounds where its name is one of this model's. The
        observation equations keep their parameters where `parameters` has them; the others
        are inlined at `values` (this model's parameter values; default its guesses)."""
        fixed = tuple(fixed) if fixed is not None else (False,) * len(parameters)
        values = self.guesses if values is None else tuple(float(v) for v in values)
        inline = {
            sym: sp.Float(float(v))
            for sym, v in zip(self.parameter_symbols, values, strict=True)
            if sym.name not in parameters
        }
        observations = tuple((n, e.xreplace(inline)) for n, e in self.observations)
        declared = dict(zip(self.parameters, self.parameter_bounds, strict=True))
        bounds = tuple(declared.get(p, (-np.inf, np.inf)) for p in parameters)
        guesses = tuple(float(np.clip(float(g), *b)) for g, b in zip(guesses, bounds, strict=True))
        return dataclasses.replace(
            self,
            equations=tuple(equations),
            parameters=tuple(parameters),
            guesses=guesses,
            fixed=fixed,
            bounds=bounds if any(np.isfinite(b).any() for b in bounds) else (),
            observations=observations,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "states": list(self.states),
            "parameters": dict(zip(self.parameters, self.guesses, strict=True)),
            "fixed": [p for p, f in zip(self.parameters, self.fixed, strict=True) if f],
            "bounds": {
                p: [None if np.isinf(v) else v for v in b]
                for p, b in zip(self.parameters, self.parameter_bounds, strict=True)
                if np.isfinite(b).any()
            },
            "equations": {s: str(e) for s, e in zip(self.states, self.equations, strict=True)},
            "residual": list(self.residual_states),
            **(
                {
                    "measured": list(self.measured_states),
                    "observed": {n: str(e) for n, e in self.observations},
                    "initial": {
                        s: {
                            "value": v,
                            "min": None if np.isinf(lo) else lo,
                            "max": None if np.isinf(hi) else hi,
                            "fixed": fixed,
                        }
                        for s, v, lo, hi, fixed in self.initial
                    },
                }
                if self.partial or self.initial
                else {}
            ),
        }


def _check_name(name: Any, where: str, kind: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelFileError(f"{where}: {kind} name {name!r} is not a valid identifier")
    if name in RESERVED:
        raise ModelFileError(
            f"{where}: {kind} name {name!r} is reserved (a function name, or time `t`)"
        )
    if keyword.iskeyword(name):
        raise ModelFileError(
            f"{where}: {kind} name {name!r} is a Python keyword, which an equation cannot"
            f" use; rename it (e.g. {name + '_'!r})"
        )
    return name


def _finite_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFileError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or abs(value) > 1e100:
        raise ModelFileError(f"{where}: {value!r} is not a usable finite number")
    return value


def model_from_dict(doc: Mapping[str, Any], source: str = "<memory>") -> MechanisticModel:
    """Build and validate a model from a parsed TOML document."""
    if not isinstance(doc, Mapping):
        raise ModelFileError(f"{source}: expected a TOML document (a table), got {type(doc)}")
    allowed_top = {"model", "residual", "data", "observed", "initial"}
    unknown = sorted(set(doc) - allowed_top, key=str)
    if unknown:
        raise ModelFileError(
            f"{source}: unknown section(s) {unknown}; allowed: model, residual, data, observed,"
            " initial"
        )
    model = doc.get("model")
    if not isinstance(model, Mapping):
        raise ModelFileError(f"{source}: missing [model] section")
    unknown = sorted(set(model) - {"states", "parameters", "equations"}, key=str)
    if unknown:
        raise ModelFileError(f"{source}: [model] has unknown key(s) {unknown}")

    states = model.get("states")
    if not isinstance(states, list) or not states:
        raise ModelFileError(f"{source}: model.states must be a non-empty list of names")
    states = [_check_name(s, f"{source}: model.states", "state") for s in states]
    if len(set(states)) != len(states):
        raise ModelFileError(f"{source}: model.states has duplicates: {states}")

    raw_params = model.get("parameters", {})
    if not isinstance(raw_params, Mapping):
        raise ModelFileError(f"{source}: [model.parameters] must be a table of name = number")
    names, guesses, fixed, bounds = [], [], [], []
    for name, spec in raw_params.items():
        where = f"{source}: model.parameters.{name}"
        _check_name(name, where, "parameter")
        if name in states:
            raise ModelFileError(f"{where}: parameter has the same name as a state")
        value, lo, hi, is_fixed = _bounded_value(spec, where, "a parameter table")
        names.append(name)
        guesses.append(value)
        fixed.append(is_fixed)
        bounds.append((lo, hi))

    table = {s: sp.Symbol(s, real=True) for s in [*states, *names]}
    table["t"] = sp.Symbol("t", real=True)
    raw_eqs = model.get("equations")
    if not isinstance(raw_eqs, Mapping):
        raise ModelFileError(f"{source}: missing [model.equations] table (one per state)")
    extra = sorted(set(raw_eqs) - set(states), key=str)
    if extra:
        raise ModelFileError(
            f"{source}: model.equations has equation(s) for unknown state(s) {extra}"
        )
    missing = [s for s in states if s not in raw_eqs]
    if missing:
        raise ModelFileError(
            f"{source}: model.equations: state(s) {missing} have no equation"
            ' (write "0" when nothing is known)'
        )
    equations = [
        parse_expression(raw_eqs[s], table, where=f"{source}: model.equations.{s}") for s in states
    ]

    residual = doc.get("residual", {})
    if not isinstance(residual, Mapping):
        raise ModelFileError(f"{source}: [residual] must be a table")
    unknown = sorted(set(residual) - {"states"}, key=str)
    if unknown:
        raise ModelFileError(f"{source}: [residual] has unknown key(s) {unknown}")
    res_states = residual.get("states", [])
    if not isinstance(res_states, list):
        raise ModelFileError(f"{source}: residual.states must be a list of state names")
    for s in res_states:
        if not isinstance(s, str) or s not in states:
            raise ModelFileError(
                f"{source}: residual.states: {s!r} is not a state (states: {states})"
            )
    if len(set(res_states)) != len(res_states):
        raise ModelFileError(f"{source}: residual.states has duplicates")

    data = doc.get("data", {})
    if not isinstance(data, Mapping):
        raise ModelFileError(f"{source}: [data] must be a table")
    unknown = sorted(set(data) - {"time", "trajectory"}, key=str)
    if unknown:
        raise ModelFileError(f"{source}: [data] has unknown key(s) {unknown}")
    for key in ("time", "trajectory"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise ModelFileError(f"{source}: data.{key} must be a column name")
    time_col = data.get("time", "t")
    traj_col = data.get("trajectory", "trajectory")
    for key, col in (("time", time_col), ("trajectory", traj_col)):
        if col in states:
            raise ModelFileError(
                f"{source}: data.{key}: column {col!r} is also a state; the {key} column and"
                " the state columns must differ"
            )
    if time_col == traj_col:
        raise ModelFileError(
            f"{source}: data.time and data.trajectory name the same column {time_col!r}"
        )

    measured, observations = _observed_section(
        doc.get("observed"), states, names, table, (time_col, traj_col), source
    )
    initial = _initial_section(doc.get("initial"), states, measured, source)

    return MechanisticModel(
        measured=measured,
        observations=observations,
        initial=initial,
        states=tuple(states),
        parameters=tuple(names),
        guesses=tuple(guesses),
        fixed=tuple(fixed),
        bounds=tuple(bounds) if np.isfinite(bounds).any() else (),
        equations=tuple(equations),
        residual_states=tuple(s for s in states if s in res_states),
        time_column=time_col,
        trajectory_column=traj_col,
        source=source,
    )


def _observed_section(raw, states, parameters, table, columns, source):
    """`[observed]`: `states` (measured directly) and `equations` (name = expression of the
    states and parameters). Returns `(measured, observations)`; `(None, ())` without it."""
    if raw is None:
        return None, ()
    where = f"{source}: observed"
    if not isinstance(raw, Mapping):
        raise ModelFileError(f"{where}: must be a table with `states` and/or `equations`")
    unknown = sorted(set(raw) - {"states", "equations"}, key=str)
    if unknown:
        raise ModelFileError(
            f"{where}: unknown key(s) {unknown}; [observed] takes `states` (the states measured"
            " directly) and `equations` (name = expression)"
        )
    measured = raw.get("states", [])
    if not isinstance(measured, list):
        raise ModelFileError(f"{where}.states: must be a list of state names")
    for s in measured:
        if not isinstance(s, str) or s not in states:
            raise ModelFileError(f"{where}.states: {s!r} is not a state (states: {states})")
    if len(set(measured)) != len(measured):
        raise ModelFileError(f"{where}.states: has duplicates")
    eqs = raw.get("equations", {})
    if not isinstance(eqs, Mapping):
        raise ModelFileError(f'{where}.equations: must be a table of name = "expression"')
    observations = []
    for name, text in eqs.items():
        key = f"{where}.equations.{name}"
        _check_name(name, key, "observation")
        if name in states or name in parameters or name in columns:
            raise ModelFileError(
                f"{key}: the name is already a state, a parameter or the time or trajectory"
                " column; an observation needs a column name of its own"
            )
        expr = parse_expression(text, table, where=key)
        if not expr.free_symbols & {table[s] for s in states}:
            raise ModelFileError(f"{key}: {text!r} does not depend on any state")
        observations.append((name, expr))
    if not measured and not observations:
        raise ModelFileError(
            f"{where}: measures nothing; list the measured states in `states` or give `equations`"
        )
    return tuple(s for s in states if s in measured), tuple(observations)


def _initial_section(raw, states, measured, source):
    """`[initial]`: per unmeasured state, a guess (number) or `{ value, min, max }` for its
    initial value, or a known one (`{ value, fixed = true }`). Returns
    `((state, value, min, max, fixed), ...)`."""
    if raw is None:
        return ()
    where = f"{source}: initial"
    if not isinstance(raw, Mapping):
        raise ModelFileError(f"{where}: must be a table of state = value or {{ value, min, max }}")
    out = []
    for state, spec in raw.items():
        key = f"{where}.{state}"
        if state not in states:
            raise ModelFileError(f"{key}: {state!r} is not a state (states: {states})")
        if measured is None or state in measured:
            raise ModelFileError(
                f"{key}: {state!r} is measured (its initial value comes from the data); only"
                " states missing from [observed] states take an [initial] value"
            )
        value, lo, hi, fixed = _bounded_value(spec, key, "an initial value")
        out.append((state, value, lo, hi, fixed))
    return tuple(sorted(out, key=lambda row: states.index(row[0])))


def _bounded_value(spec: Any, where: str, what: str) -> tuple[float, float, float, bool]:
    """A number, or a table `{ value, min, max, fixed }` (all but `value` optional): returns
    `(value, min, max, fixed)`, infinite bounds where none are given."""
    if not isinstance(spec, Mapping):
        return _finite_number(spec, where), -np.inf, np.inf, False
    unknown = sorted(set(spec) - {"value", "fixed", "min", "max"}, key=str)
    if unknown or "value" not in spec:
        raise ModelFileError(
            f"{where}: {what} takes `value` and optional `fixed`, `min`, `max` (got keys"
            f" {sorted(spec, key=str)})"
        )
    fixed = spec.get("fixed", False)
    if not isinstance(fixed, bool):
        raise ModelFileError(f"{where}.fixed: expected true or false")
    value = _finite_number(spec["value"], f"{where}.value")
    lo = _finite_number(spec["min"], f"{where}.min") if "min" in spec else -np.inf
    hi = _finite_number(spec["max"], f"{where}.max") if "max" in spec else np.inf
    if not lo < hi:
        raise ModelFileError(f"{where}: min ({lo:g}) must be below max ({hi:g})")
    if not lo <= value <= hi:
        raise ModelFileError(f"{where}.value: {value:g} is outside [min, max] = [{lo:g}, {hi:g}]")
    return value, lo, hi, fixed


def load_model(path: str | os.PathLike[str]) -> MechanisticModel:
    """Read and validate a TOML model file. Raises `ModelFileError` naming the file and key."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, expected a TOML model file")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"{path}: model file larger than {MAX_MODEL_BYTES} bytes")
    raw = path.read_bytes()
    if not raw.strip():
        raise ModelFileError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{path}: not UTF-8 text (byte {err.start})") from None
    return model_from_toml(text, source=str(path))


def model_from_toml(text: str, source: str = "<TOML string>") -> MechanisticModel:
    """A model from the text of a model file (docs/model-file.md); `source` names it in errors."""
    if len(text.encode()) > MAX_MODEL_BYTES:
        raise ModelFileError(f"{source}: model larger than {MAX_MODEL_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ModelFileError(f"{source}: TOML syntax error: {err}") from None
    except RecursionError:
        raise ModelFileError(f"{source}: TOML nested too deeply") from None
    return model_from_dict(doc, source=source)


def no_theory_model(
    states: Sequence[str], *, time: str = "t", trajectory: str = "trajectory"
) -> MechanisticModel:
    """The model of "no theory at all": every equation 0, a neural residual on every state."""
    doc: dict[str, Any] = {
        "model": {"states": list(states), "equations": {s: "0" for s in states}},
        "residual": {"states": list(states)},
        "data": {"time": time, "trajectory": trajectory},
    }
    return model_from_dict(doc, source="<no theory>")
