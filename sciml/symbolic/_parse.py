"""Safe parsing of formulas printed by symbolic engines: text -> SymPy, never `eval`.

Engines print formulas in their own dialects: PySR writes `square(x0)`, `x0 ^ 2.0` or
`(x0 * x1) * -0.9001`, Operon writes `((-0.82) * X1)`, PySINDy names library terms `x^2 y`. The
text is parsed by Python's own parser (which runs no code) and the syntax tree is walked with a
whitelist of numbers, known names, arithmetic and the functions in `FUNCTIONS`.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping

import sympy as sp

from .._expr import CONSTANTS
from .._expr import FUNCTIONS as MODEL_FUNCTIONS

MAX_CHARS = 20_000
MAX_DEPTH = 200

# Function names as the engines print them (PySR's `sympy_mappings` for the ones that are plain
# mathematics), with their arity. Functions outside the exchange vocabulary (tan, cosh, ...) parse
# here but are refused later by `check_vocabulary`, so the caller decides what to do with them.
FUNCTIONS: dict[str, tuple[Callable[..., sp.Expr], int]] = {
    **{name: f for name, f in MODEL_FUNCTIONS.items() if name not in ("min", "max")},
    "Abs": (sp.Abs, 1),
    "sign": (sp.sign, 1),
    "square": (lambda a: a**2, 1),
    "cube": (lambda a: a**3, 1),
    "neg": (lambda a: -a, 1),
    "inv": (lambda a: 1 / a, 1),
    "sqrt_abs": (lambda a: sp.sqrt(sp.Abs(a)), 1),
    "log_abs": (lambda a: sp.log(sp.Abs(a)), 1),
    "log1p": (lambda a: sp.log(a + 1), 1),
    "plus": (lambda a, b: a + b, 2),
    "add": (lambda a, b: a + b, 2),
    "sub": (lambda a, b: a - b, 2),
    "mult": (lambda a, b: a * b, 2),
    "mul": (lambda a, b: a * b, 2),
    "div": (lambda a, b: a / b, 2),
    "pow": (lambda a, b: a**b, 2),
}

_BINOPS: dict[type, Callable[[sp.Expr, sp.Expr], sp.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


class FormulaParseError(ValueError):
    """An engine printed a formula that is not plain mathematics in the known names."""


def parse_formula(text: str, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """Parse an engine's formula `text` into SymPy over `symbols` (printed name -> Symbol)."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaParseError(f"empty or non-text formula: {text!r}")
    if len(text) > MAX_CHARS:
        raise FormulaParseError(f"formula of {len(text)} characters (max {MAX_CHARS})")
    try:
        # Julia (PySR) and PySINDy print powers as `^`; Python's `^` binds looser than `*`.
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, RecursionError, ValueError, MemoryError) as err:
        raise FormulaParseError(f"cannot parse {text!r}: {err}") from None

    def walk(node: ast.AST, depth: int) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise FormulaParseError(f"formula nested too deeply: {text!r}")
        if isinstance(node, ast.Expression):
            return walk(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise FormulaParseError(f"literal {v!r} is not a number in {text!r}")
            if not math.isfinite(float(v)):
                raise FormulaParseError(f"number {v!r} is not finite in {text!r}")
            return sp.Integer(v) if isinstance(v, int) else sp.Float(v)
        if isinstance(node, ast.Name):
            if node.id in symbols:
                return symbols[node.id]
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise FormulaParseError(f"unknown name {node.id!r} in {text!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = walk(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = walk(node.left, depth + 1), walk(node.right, depth + 1)
            if isinstance(node.op, ast.Pow) and b.is_number and abs(float(b)) > 64:
                raise FormulaParseError(f"exponent {b} too large in {text!r}")
            return _BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in FUNCTIONS or name in symbols:
                raise FormulaParseError(f"unknown function {name!r} in {text!r}")
            func, arity = FUNCTIONS[name]
            if node.keywords or len(node.args) != arity:
                raise FormulaParseError(f"{name} takes {arity} argument(s) in {text!r}")
            return func(*(walk(arg, depth + 1) for arg in node.args))
        raise FormulaParseError(f"{type(node).__name__} is not allowed in a formula: {text!r}")

    return walk(tree, 0)


_IMPLICIT_PRODUCT = re.compile(r"(?<=[\w).])\s+(?=[\w(])")


def parse_library_name(name: str, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """Parse a PySINDy library term name (`x^2 y`, `sin(1 x)`) into SymPy.

    PySINDy separates factors by spaces and writes powers with `^`; both become SymPy products
    and powers. Custom libraries should name their terms with `function_names` that follow
    the same conventions.
    """
    return parse_formula(_IMPLICIT_PRODUCT.sub("*", name.strip()), symbols)
