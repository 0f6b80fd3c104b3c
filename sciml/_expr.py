"""Safe mathematics: text -> SymPy expression -> JAX function. Never `eval`, never `sympify`.

One walker for the expressions of model files and the formulas the symbolic engines print.

Text is parsed by Python's own parser into a syntax tree (parsing runs no code), and the tree
is walked with a whitelist: numbers, the allowed names, `+ - * / ** ^`, unary minus and calls
of whitelisted functions. Anything else (attributes, subscripts, strings, lambdas, comparisons,
keyword arguments, ...) is refused with the column where it starts. Purely numeric
sub-expressions are folded in floating point with overflow checks, so `9**9**9` cannot hang.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import sympy as sp

from ._errors import ModelFileError

MAX_CHARS = 10_000
MAX_NODES = 2_000
MAX_DEPTH = 64


class ExpressionError(ModelFileError):
    """Text that is not an expression the walker accepts, from a model file or printed by a
    symbolic engine. The message starts with the place (`where`), names what was refused and,
    where it has one, the column, and quotes the text."""


@dataclasses.dataclass(frozen=True)
class Function:
    """A whitelisted function: its SymPy form, its arity and its float form (for folding
    calls on constants: `exp(1000)` overflows float64, `sqrt(-1)` is not real; both are
    refused rather than kept symbolic). `engines_only`: a spelling of the symbolic engines
    (PySR's `square`, SymPy's `Abs`, ...), accepted in their output, not in model files."""

    sympy: Callable[..., sp.Expr]
    arity: int
    numeric: Callable[..., float]
    engines_only: bool = False


def _engine(sympy: Callable[..., sp.Expr], arity: int, numeric: Callable[..., float]) -> Function:
    return Function(sympy, arity, numeric, engines_only=True)


def _sign(v: float) -> float:
    return float((v > 0) - (v < 0))


#: The one function table. Functions outside the exchange vocabulary of the symbolic engines
#: (tan, cosh, ...) parse but are refused later by `symbolic.check_vocabulary`.
FUNCTIONS: dict[str, Function] = {
    "exp": Function(sp.exp, 1, math.exp),
    "log": Function(sp.log, 1, math.log),
    "sin": Function(sp.sin, 1, math.sin),
    "cos": Function(sp.cos, 1, math.cos),
    "tan": Function(sp.tan, 1, math.tan),
    "tanh": Function(sp.tanh, 1, math.tanh),
    "sinh": Function(sp.sinh, 1, math.sinh),
    "cosh": Function(sp.cosh, 1, math.cosh),
    "sqrt": Function(sp.sqrt, 1, math.sqrt),
    "abs": Function(sp.Abs, 1, abs),
    "sign": Function(sp.sign, 1, _sign),
    "min": Function(sp.Min, 2, min),
    "max": Function(sp.Max, 2, max),
    # As the engines print them (PySR's `sympy_mappings` for the ones that are plain maths).
    "Abs": _engine(sp.Abs, 1, abs),
    "square": _engine(lambda a: a**2, 1, lambda v: v * v),
    "cube": _engine(lambda a: a**3, 1, lambda v: v * v * v),
    "neg": _engine(lambda a: -a, 1, lambda v: -v),
    "inv": _engine(lambda a: 1 / a, 1, lambda v: 1 / v),
    "sqrt_abs": _engine(lambda a: sp.sqrt(sp.Abs(a)), 1, lambda v: math.sqrt(abs(v))),
    "log_abs": _engine(lambda a: sp.log(sp.Abs(a)), 1, lambda v: math.log(abs(v))),
    "log1p": _engine(lambda a: sp.log(a + 1), 1, math.log1p),
    "plus": _engine(lambda a, b: a + b, 2, lambda u, v: u + v),
    "add": _engine(lambda a, b: a + b, 2, lambda u, v: u + v),
    "sub": _engine(lambda a, b: a - b, 2, lambda u, v: u - v),
    "mult": _engine(lambda a, b: a * b, 2, lambda u, v: u * v),
    "mul": _engine(lambda a, b: a * b, 2, lambda u, v: u * v),
    "div": _engine(lambda a, b: a / b, 2, lambda u, v: u / v),
    "pow": _engine(lambda a, b: a**b, 2, math.pow),
}
#: The functions a model file may call.
MODEL_FUNCTIONS = frozenset(name for name, f in FUNCTIONS.items() if not f.engines_only)
_MODEL_TABLE = {name: f for name, f in FUNCTIONS.items() if not f.engines_only}
CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}
# Names a model cannot give to a state or parameter. Constants are not among them: a declared
# name shadows a constant of the same name (an SEIR model's state E is not Euler's number).
RESERVED = MODEL_FUNCTIONS | {"t"}

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def _number(value: float) -> sp.Expr:
    """A finite float as a SymPy number (an exact integer where it is one)."""
    return sp.Integer(int(value)) if value.is_integer() and abs(value) < 2**53 else sp.Float(value)


def _fold(op: type, a: sp.Expr, b: sp.Expr, where: str) -> sp.Expr:
    """Numeric op on two numbers, in float, refusing overflow and division by zero."""
    x, y = float(a), float(b)
    try:
        if op is ast.Pow:
            value = math.pow(x, y)
        else:
            value = {ast.Add: x + y, ast.Sub: x - y, ast.Mult: x * y}.get(op)
            if op is ast.Div:
                value = x / y
    except ZeroDivisionError:
        raise ExpressionError(f"{where}: division by zero") from None
    except (OverflowError, ValueError):
        raise ExpressionError(f"{where}: constant arithmetic overflows or is undefined") from None
    if not math.isfinite(value):
        raise ExpressionError(f"{where}: constant arithmetic overflows")
    return _number(value)


def _check_constants(expr: sp.Expr, where: str) -> None:
    """Every number left in `expr` must be a real, finite float64 (SymPy merges coefficients:
    `1e308*x*1e308` is `1e616*x`, which JAX would evaluate as inf)."""
    for atom in expr.atoms():
        if atom.is_Symbol:
            continue
        try:
            value = complex(atom)
        except (TypeError, ValueError, OverflowError):
            value = complex(math.nan)
        if value.imag != 0 or not math.isfinite(value.real):
            raise ExpressionError(
                f"{where}: constant {atom} is not a finite real number in double precision"
            )


def _bracket_depth(text: str) -> int:
    """The deepest bracket nesting in `text` (checked before Python's parser recurses into it;
    `sin(x) + sin(y) + ...` has many brackets but depth 1)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def parse_expression(text: str, symbols: Mapping[str, sp.Symbol], *, where: str) -> sp.Expr:
    """Parse `text` (a model file's expression) into a SymPy expression over `symbols`
    (name -> Symbol), calling only `MODEL_FUNCTIONS`.

    `where` names the place in the model file for error messages, e.g. `model.equations.x`.
    Raises `ExpressionError` (a `ModelFileError`).
    """
    return walk_expression(text, symbols, where=where, engines=False)


def walk_expression(
    text: str, symbols: Mapping[str, sp.Symbol], *, where: str, engines: bool
) -> sp.Expr:
    """The one expression walker: `text` -> SymPy over `symbols`, or `ExpressionError`.

    `engines`: accept the engines' spellings of functions (`FUNCTIONS` entries marked
    `engines_only`) as well as the model files' ones.
    """
    functions = FUNCTIONS if engines else _MODEL_TABLE
    if not isinstance(text, str):
        raise ExpressionError(f"{where}: expected a string expression, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"{where}: expression is {len(text)} characters (max {MAX_CHARS})")
    if not text.strip():
        raise ExpressionError(f'{where}: empty expression (write "0" when nothing is known)')
    if _bracket_depth(text) > MAX_DEPTH:
        raise ExpressionError(f"{where}: expression nested too deeply (max {MAX_DEPTH} levels)")
    shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
    # "^" is power in mathematics; Python's parser would give it lower precedence than "+"
    # (x^2 + 1 would read as x^(2 + 1)), so it is spelled "**" before parsing.
    source = text.strip().replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        col = f" at column {err.offset}" if err.offset else ""
        raise ExpressionError(f"{where}: syntax error{col}: {err.msg} in {shown!r}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(
            f"{where}: expression too long or nested too deeply to parse"
            f" (max {MAX_NODES} syntax nodes, {MAX_DEPTH} levels)"
        ) from None
    except ValueError as err:  # e.g. an integer literal of more than 4300 digits
        raise ExpressionError(f"{where}: expression cannot be parsed ({err})") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ExpressionError(f"{where}: expression too large ({n_nodes} nodes, max {MAX_NODES})")

    def fail(node: ast.AST, what: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        at = f" at column {col + 1}" if col is not None else ""
        return ExpressionError(f"{where}: {what}{at} in {shown!r}")

    def binop(node: ast.BinOp, a: sp.Expr, b: sp.Expr) -> sp.Expr:
        if a.is_number and b.is_number:
            return _fold(type(node.op), a, b, where)
        if isinstance(node.op, ast.Div) and b.is_number and b.is_zero:
            raise fail(node, "division by zero")
        if isinstance(node.op, ast.Pow) and b.is_number and abs(float(b)) > 64:
            raise fail(node, f"exponent {b} too large (max 64)")
        return _BINOPS[type(node.op)](a, b)

    def call(node: ast.Call, depth: int) -> sp.Expr:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in functions or name in symbols:
            allowed = ", ".join(sorted(functions))
            raise fail(node, f"function {name!r} is not allowed (allowed: {allowed})")
        if node.keywords:
            raise fail(node, "keyword arguments are not allowed")
        function = functions[name]
        if len(node.args) != function.arity:
            raise fail(node, f"{name}() takes {function.arity} argument(s), got {len(node.args)}")
        args = [walk(a, depth + 1) for a in node.args]
        if all(a.is_number for a in args):
            try:
                folded = function.numeric(*(float(a) for a in args))
            except (ValueError, OverflowError, TypeError, ZeroDivisionError):
                folded = math.nan
            if not math.isfinite(folded):
                raise fail(node, f"{name}() of these constants is not a finite real")
            return _number(float(folded))
        value = function.sympy(*args)
        if value.is_number and not value.is_finite:
            raise fail(node, f"{name}() of these constants is not finite")
        return value

    def walk(node: ast.AST, depth: int) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise fail(node, f"expression nested too deeply (max {MAX_DEPTH} levels)")
        if isinstance(node, ast.Expression):
            return walk(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise fail(node, f"only numbers are allowed as literals, not {v!r}")
            try:
                finite = math.isfinite(float(v))
            except OverflowError:  # an integer literal beyond float64
                finite = False
            if not finite:
                shown = v if isinstance(v, float) else f"{str(v)[:20]}... ({len(str(v))} digits)"
                raise fail(node, f"number {shown} is not finite in double precision")
            return sp.Integer(v) if isinstance(v, int) else sp.Float(v)
        if isinstance(node, ast.Name):
            if node.id in symbols:
                return symbols[node.id]
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            if node.id in functions:
                raise fail(node, f"function {node.id!r} used without arguments")
            known = ", ".join(sorted(symbols)) or "none"
            raise fail(node, f"unknown symbol {node.id!r} (known: {known})")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = walk(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            # A chain `a + b - c * d ...` is a left-deep tree in Python's syntax; walk its left
            # spine iteratively so that a long sum counts as one level, not one per term.
            spine = [node]
            while isinstance(spine[-1].left, ast.BinOp) and type(spine[-1].left.op) in _BINOPS:
                spine.append(spine[-1].left)
            value = walk(spine[-1].left, depth + 1)
            for link in reversed(spine):
                value = binop(link, value, walk(link.right, depth + 1))
            return value
        if isinstance(node, ast.Call):
            return call(node, depth)
        kind = type(node).__name__
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            kind = f"operator {type(node.op).__name__}"
        raise fail(node, f"{kind} is not allowed (only numbers, names, + - * / ** ^ and functions)")

    try:
        expr = walk(tree, 0)
    except RecursionError:
        raise ExpressionError(f"{where}: expression nested too deeply") from None
    if expr.is_number and not expr.is_finite:
        raise ExpressionError(f"{where}: expression is not finite")
    _check_constants(expr, where)
    return expr


# --- SymPy -> JAX ---------------------------------------------------------------------------

_JAX_FUNCS: dict[type, Callable] = {
    sp.exp: jnp.exp,
    sp.log: jnp.log,
    sp.sin: jnp.sin,
    sp.cos: jnp.cos,
    sp.tan: jnp.tan,
    sp.tanh: jnp.tanh,
    sp.sinh: jnp.sinh,
    sp.cosh: jnp.cosh,
    sp.Abs: jnp.abs,
    sp.sign: jnp.sign,
}


def evaluate(expr: sp.Expr, values: Mapping[sp.Symbol, jnp.ndarray]) -> jnp.ndarray:
    """Evaluate a SymPy expression with JAX operations (traced once under `jit`)."""
    if expr.is_Symbol:
        return values[expr]
    if expr.is_Number or expr.is_NumberSymbol:
        return jnp.asarray(float(expr))
    args = [evaluate(a, values) for a in expr.args]
    if isinstance(expr, sp.Add):
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out
    if isinstance(expr, sp.Mul):
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if isinstance(expr, sp.Pow):
        base, exponent = expr.args
        if exponent.is_Integer:
            return args[0] ** int(exponent)
        if exponent == sp.Rational(1, 2):
            return jnp.sqrt(args[0])
        return jnp.power(args[0], args[1])
    if isinstance(expr, sp.Min):
        return jnp.minimum(*args) if len(args) == 2 else jnp.min(jnp.stack(args), axis=0)
    if isinstance(expr, sp.Max):
        return jnp.maximum(*args) if len(args) == 2 else jnp.max(jnp.stack(args), axis=0)
    for cls, fn in _JAX_FUNCS.items():
        if isinstance(expr, cls):
            return fn(*args)
    raise NotImplementedError(f"no JAX translation for {type(expr).__name__}: {expr}")
