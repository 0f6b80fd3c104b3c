"""Model files: parsed as mathematics with a whitelist, compiled to JAX, never evaluated."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

import sciml
from pipelines.cli import main

GOOD = """
[model]
states = ["x", "y"]
[model.parameters]
a = 1.5
b = { value = 0.5, fixed = true }
[model.equations]
x = "a*x - b*x*y + sin(t)"
y = "-y^2 + exp(-x)/sqrt(1 + abs(y))"
[residual]
states = ["y"]
"""


def write(tmp_path, text, name="m.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_model_compiles_to_jax(tmp_path):
    model = sciml.load_model(write(tmp_path, GOOD))
    assert model.states == ("x", "y")
    assert model.parameters == ("a", "b") and model.fixed == (False, True)
    assert model.residual_states == ("y",)
    y = jnp.asarray([0.7, 1.3])
    t = jnp.asarray(0.4)
    got = np.asarray(model.vector_field(t, y, jnp.asarray([1.5, 0.5])))
    x, yy = 0.7, 1.3
    expected = [1.5 * x - 0.5 * x * yy + np.sin(0.4), -(yy**2) + np.exp(-x) / np.sqrt(1 + yy)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_inlined_equations_are_sympy_parsable(tmp_path):
    import sympy as sp

    model = sciml.load_model(write(tmp_path, GOOD))
    eqs = model.inlined([1.25, 0.5])
    x, y, t = sp.symbols("x y t")
    difference = sp.sympify(eqs["x"]) - (1.25 * x - 0.5 * x * y + sp.sin(t))
    assert sp.simplify(difference) == 0


def model_text(x_eq, extra=""):
    return f"""
[model]
states = ["x", "y"]
[model.parameters]
a = 1.0
[model.equations]
x = "{x_eq}"
y = "-y"
{extra}
"""


BAD = {
    "syntax": (model_text("a*x +* y"), ["model.equations.x", "syntax error"]),
    "unknown_symbol": (model_text("a*x + k*y"), ["model.equations.x", "unknown symbol 'k'"]),
    "python_call": (
        model_text("__import__('os').system('touch /tmp/sciml_pwned')"),
        ["model.equations.x", "not allowed"],
    ),
    "attribute": (model_text("x.real"), ["model.equations.x", "Attribute is not allowed"]),
    "lambda": (model_text("(lambda: 1)()"), ["model.equations.x"]),
    "string_literal": (model_text("'x'"), ["model.equations.x", "only numbers"]),
    "bad_function": (model_text("eval(x)"), ["model.equations.x", "'eval' is not allowed"]),
    "toml_syntax": ("[model\nstates = [", ["TOML syntax error"]),
    "state_without_equation": (
        '[model]\nstates = ["x", "y"]\n[model.equations]\nx = "x"\n',
        ["state(s) ['y'] have no equation"],
    ),
    "residual_unknown_state": (
        model_text("a*x", '[residual]\nstates = ["z"]'),
        ["residual.states", "'z' is not a state"],
    ),
    "missing_model": ('[residual]\nstates = ["x"]\n', ["missing [model] section"]),
    "huge_power": (model_text("9**9**9"), ["overflows"]),
    "reserved_state": (
        '[model]\nstates = ["exp"]\n[model.equations]\nexp = "1"\n',
        ["'exp' is reserved"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_exit_2(case, tmp_path, capsys):
    text, fragments = BAD[case]
    path = write(tmp_path, text)
    out = tmp_path / "out"
    code = main(
        [
            "discover",
            "data/lotka_volterra/lotka_volterra.csv",
            "--model",
            str(path),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (out / "discovered.json").exists()


def test_python_in_model_file_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    text = model_text(f"__import__('os').system('touch {marker}')")
    with pytest.raises(sciml.ModelFileError):
        sciml.load_model(write(tmp_path, text))
    assert not marker.exists()
    assert not os.path.exists("/tmp/sciml_pwned")


def test_caret_is_power_and_constants_fold():
    import sympy as sp

    x = sp.Symbol("x", real=True)
    assert sciml.parse_expression("x^2", {"x": x}, where="e") == x**2
    assert sciml.parse_expression("2^3*x", {"x": x}, where="e") == 8 * x
    with pytest.raises(sciml.ModelFileError, match="division by zero"):
        sciml.parse_expression("x + 1/0", {"x": x}, where="e")


def test_missing_model_file_exit_2(tmp_path, capsys):
    code = main(
        [
            "discover",
            "data/lotka_volterra/lotka_volterra.csv",
            "--model",
            str(tmp_path / "nope.toml"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "nope.toml: no such file" in capsys.readouterr().err


def test_caret_binds_like_power():
    import sympy as sp

    x, y = sp.symbols("x y", real=True)
    table = {"x": x, "y": y}
    assert sciml.parse_expression("x^2 + 1", table, where="e") == x**2 + 1
    assert sciml.parse_expression("-y^2", table, where="e") == -(y**2)
