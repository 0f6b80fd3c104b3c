"""A catalogue of hostile data and model files, each refused through the CLI.

Every case: exit code 2, a message on stderr that names the file and the problem, and nothing
written to the output folder. The cases go beyond the basic refusals in `test_data.py` and
`test_model_file.py` (see docs/hardening.md for the table of what each one prints).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import sciml
from pipelines.cli import main

DATA = "data/lotka_volterra/lotka_volterra.csv"
MODEL = "data/lotka_volterra/model.toml"
GOOD_CSV = "t,x,y\n0,1,2\n1,2,3\n2,3,4\n"

Content = str | bytes | Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "data": the file is the data (with the bundled model); "model": the reverse
    name: str  # file name (its suffix picks the reader)
    content: Content  # text, bytes, or a function writing the file at the given path
    fragments: tuple[str | tuple[str, ...], ...]  # all must appear; a tuple: any one of them


def model(eq_x: str = '"a*x"', *, params: str = "a = 1.0", extra: str = "", states=None) -> str:
    """A model file over states x, y with `eq_x` (TOML value) as x's right-hand side."""
    states = states or '["x", "y"]'
    return (
        f"[model]\nstates = {states}\n[model.parameters]\n{params}\n"
        f'[model.equations]\nx = {eq_x}\ny = "-y"\n{extra}'
    )


def parquet(**columns) -> Callable[[Path], None]:
    return lambda path: pd.DataFrame(columns).to_parquet(path)


def symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def folder(path: Path) -> None:
    path.mkdir()


def random_bytes(n: int) -> bytes:
    return np.random.default_rng(8).integers(0, 256, n, dtype=np.uint8).tobytes()


DATA_CASES = [
    Case("empty_csv", "data", "d.csv", "", ("file is empty",)),
    Case("blank_lines", "data", "d.csv", "\n\n\n", ("no columns",)),
    Case("header_only", "data", "d.csv", "t,x,y\n", ("no data rows", "only a header")),
    Case(
        "value_1e308",
        "data",
        "d.csv",
        "t,x,y\n0,1e308,2\n1,2,3\n2,3,4\n",
        ("column 'x'", "row 1", "1e+308", "not a finite number of usable size"),
    ),
    Case(
        "value_overflows_to_inf",
        "data",
        "d.csv",
        "t,x,y\n0,1,2\n1,2,1e400\n2,3,4\n",
        ("column 'y'", "row 2", "inf", "not a finite number"),
    ),
    Case(
        "time_minus_inf",
        "data",
        "d.csv",
        "t,x,y\n-inf,1,2\n1,2,3\n2,3,4\n",
        ("column 't'", "row 1", "-inf"),
    ),
    Case(
        "complex_number",
        "data",
        "d.csv",
        "t,x,y\n0,1+2j,2\n1,2,3\n2,3,4\n",
        ("column 'x'", "row 1", "non-numeric value '1+2j'"),
    ),
    Case("utf16_csv", "data", "d.csv", GOOD_CSV.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    Case(
        "latin1_csv",
        "data",
        "d.csv",
        "t,x,y,caf\xe9\n0,1,2,1\n1,2,3,1\n2,3,4,1\n".encode("latin-1"),
        ("not UTF-8", "byte 9"),
    ),
    Case("binary_csv", "data", "d.csv", random_bytes(3000), (("not UTF-8", "binary content"),)),
    Case("binary_parquet", "data", "d.parquet", random_bytes(3000), ("cannot be read as Parquet",)),
    Case("csv_named_parquet", "data", "d.parquet", GOOD_CSV, ("cannot be read as Parquet",)),
    Case("empty_parquet", "data", "d.parquet", b"", ("cannot be read as Parquet",)),
    Case(
        "parquet_string_state",
        "data",
        "d.parquet",
        parquet(t=[0.0, 1.0, 2.0], x=["1.0", "two", "3.0"], y=[1.0, 2.0, 3.0]),
        ("column 'x'", "row 2", "non-numeric value 'two'"),
    ),
    Case(
        "parquet_bool_state",
        "data",
        "d.parquet",
        parquet(t=[0.0, 1.0, 2.0], x=[1.0, 2.0, 3.0], y=[True, False, True]),
        ("column 'y'", "not numeric (dtype bool)"),
    ),
    Case(
        "parquet_datetime_time",
        "data",
        "d.parquet",
        parquet(
            t=pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]), x=[1.0] * 3, y=[2.0] * 3
        ),
        ("column 't'", "not numeric", "datetime"),
    ),
    Case(
        "parquet_null_trajectory_id",
        "data",
        "d.parquet",
        parquet(trajectory=["a", None, "a", "a"], t=[0.0, 1.0, 2.0, 3.0], x=[1.0] * 4, y=[2.0] * 4),
        ("column 'trajectory'", "row 2", "missing trajectory id"),
    ),
    Case(
        "empty_trajectory_id",
        "data",
        "d.csv",
        "trajectory,t,x,y\na,0,1,2\na,1,2,3\n,2,3,4\na,3,4,5\n",
        ("column 'trajectory'", "row 3", "missing trajectory id"),
    ),
    Case(
        "duplicate_column",
        "data",
        "d.csv",
        "t,x,y,x\n0,1,2,9\n1,2,3,9\n2,3,4,9\n",
        ("duplicate column name(s) ['x']",),
    ),
    Case(
        "row_with_surplus_fields",
        "data",
        "d.csv",
        "t,x,y\n0,1,2\n1,2,3,4,5\n2,3,4\n",
        ("cannot be read as CSV", "Expected 3 fields in line 3, saw 5"),
    ),
    Case(
        "semicolon_separated",
        "data",
        "d.csv",
        GOOD_CSV.replace(",", ";"),
        ("missing column(s) ['t', 'x', 'y']", "found ['t;x;y']"),
    ),
    Case(
        "negative_zero_duplicate_time",
        "data",
        "d.csv",
        "t,x,y\n-0,1,2\n0,2,3\n1,3,4\n",
        ("row 2", "duplicate time 0.0 after"),
    ),
    Case(
        "symlink_to_etc_passwd",
        "data",
        "d.csv",
        symlink_to("/etc/passwd"),
        (("cannot be read as CSV", "missing column(s)"),),
    ),
    Case("data_is_a_folder", "data", "d.csv", folder, ("is a folder",)),
    Case(
        "megabyte_cell",
        "data",
        "d.csv",
        "t,x,y\n0,1," + "9" * 1_000_000 + "\n1,2,3\n2,3,4\n",
        ("column 'y'", "row 1", "(1000000 characters)"),
    ),
]

MODEL_CASES = [
    Case("empty_model", "model", "m.toml", "", ("file is empty",)),
    Case("binary_model", "model", "m.toml", random_bytes(2000), ("not UTF-8",)),
    Case("utf16_model", "model", "m.toml", model().encode("utf-16"), ("not UTF-8", "byte 0")),
    Case(
        "latin1_model",
        "model",
        "m.toml",
        (model() + "# caf\xe9\n").encode("latin-1"),
        ("not UTF-8",),
    ),
    Case("model_is_a_folder", "model", "m.toml", folder, ("is a folder",)),
    # round 2: bounds and names
    Case(
        "bound_excludes_value",
        "model",
        "m.toml",
        model(params="a = { value = 1.0, min = 2.0 }"),
        ("model.parameters.a.value", "outside [min, max] = [2, inf]"),
    ),
    Case(
        "bounds_reversed",
        "model",
        "m.toml",
        model(params="a = { value = 1.0, min = 3.0, max = -3.0 }"),
        ("model.parameters.a", "min (3) must be below max (-3)"),
    ),
    Case(
        "keyword_state_name",
        "model",
        "m.toml",
        model(states='["x", "y", "lambda"]', extra='lambda = "0"\n'),
        ("state name 'lambda' is a Python keyword", "'lambda_'"),
    ),
    Case(
        "larger_than_1MB",
        "model",
        "m.toml",
        model('"' + "+".join(["x"] * 1_000_000) + '"'),
        ("larger than 1000000 bytes",),
    ),
    Case(
        "duplicate_toml_key",
        "model",
        "m.toml",
        model(extra='y = "y"\n'),
        ("TOML syntax error", "Cannot overwrite a value", "line 8"),
    ),
    Case(
        "toml_nested_10000_arrays",
        "model",
        "m.toml",
        "a = " + "[" * 10_000 + "]" * 10_000 + "\n",
        ("TOML nested too deeply",),
    ),
    Case(
        "parens_500_deep",
        "model",
        "m.toml",
        model('"' + "(" * 500 + "x" + ")" * 500 + '"'),
        ("model.equations.x", "nested too deeply"),
    ),
    Case(
        "unary_minus_200_deep",
        "model",
        "m.toml",
        model('"' + "-" * 200 + 'x"'),
        ("model.equations.x", "nested too deeply"),
    ),
    Case(
        "expression_100k_chars",
        "model",
        "m.toml",
        model('"' + "x+" * 50_000 + 'x"'),
        ("model.equations.x", "100001 characters (max 10000)"),
    ),
    Case(
        "expression_4000_nodes",
        "model",
        "m.toml",
        model('"' + "x+" * 999 + 'x"'),
        ("model.equations.x", "expression too large (3999 nodes, max 2000)"),
    ),
    Case(
        "sum_of_3000_terms",
        "model",
        "m.toml",
        model('"' + "x+" * 2_999 + 'x"'),
        ("model.equations.x", "too long or nested too deeply to parse"),
    ),
    Case(
        "long_expression_with_one_bad_piece",
        "model",
        "m.toml",
        model('"' + "x+" * 300 + 'x.real"'),
        ("Attribute is not allowed", "at column 601", "... (606 characters)"),
    ),
    Case(
        "power_of_a_million",
        "model",
        "m.toml",
        model('"(x + y)**1000000"'),
        ("model.equations.x", "exponent 1000000 too large"),
    ),
    Case(
        "constant_overflow",
        "model",
        "m.toml",
        model('"1e308*10*x"'),
        ("model.equations.x", "constant arithmetic overflows"),
    ),
    Case(
        "product_overflows_after_merging",
        "model",
        "m.toml",
        model('"1e308*x*1e308"'),
        ("model.equations.x", "not a finite real number in double precision"),
    ),
    Case(
        "integer_literal_400_digits",
        "model",
        "m.toml",
        model('"x*' + "9" * 400 + '"'),
        ("model.equations.x", "400 digits", "not finite in double precision"),
    ),
    Case(
        "exp_overflows",
        "model",
        "m.toml",
        model('"exp(1000)*x"'),
        ("model.equations.x", "exp() of these constants is not a finite real"),
    ),
    Case(
        "sqrt_of_negative",
        "model",
        "m.toml",
        model('"sqrt(-1)*x"'),
        ("model.equations.x", "sqrt() of these constants is not a finite real"),
    ),
    Case(
        "division_by_literal_zero",
        "model",
        "m.toml",
        model('"x/0"'),
        ("model.equations.x", "division by zero"),
    ),
    Case(
        "state_named_t",
        "model",
        "m.toml",
        '[model]\nstates = ["t"]\n[model.equations]\nt = "1"\n',
        ("model.states", "'t' is reserved"),
    ),
    Case(
        "state_named_sin",
        "model",
        "m.toml",
        '[model]\nstates = ["x", "sin"]\n[model.equations]\nx = "1"\nsin = "x"\n',
        ("model.states", "'sin' is reserved"),
    ),
    Case(
        "parameter_named_exp",
        "model",
        "m.toml",
        model(params="exp = 1.0"),
        ("model.parameters.exp", "'exp' is reserved"),
    ),
    Case(
        "parameter_same_as_state",
        "model",
        "m.toml",
        model(params="x = 1.0"),
        ("model.parameters.x", "same name as a state"),
    ),
    Case(
        "parameter_string",
        "model",
        "m.toml",
        model(params='a = "1.0"'),
        ("model.parameters.a", "expected a number, got '1.0'"),
    ),
    Case(
        "parameter_boolean",
        "model",
        "m.toml",
        model(params="a = true"),
        ("model.parameters.a", "expected a number, got True"),
    ),
    Case(
        "parameter_date",
        "model",
        "m.toml",
        model(params="a = 1979-05-27"),
        ("model.parameters.a", "expected a number", "datetime.date"),
    ),
    Case(
        "parameter_nan",
        "model",
        "m.toml",
        model(params="a = nan"),
        ("model.parameters.a", "nan is not a usable finite number"),
    ),
    Case(
        "parameter_inf",
        "model",
        "m.toml",
        model(params="a = -inf"),
        ("model.parameters.a", "-inf is not a usable finite number"),
    ),
    Case(
        "parameter_1e308",
        "model",
        "m.toml",
        model(params="a = 1e308"),
        ("model.parameters.a", "not a usable finite number"),
    ),
    Case(
        "parameter_table_typo",
        "model",
        "m.toml",
        model(params="a = { value = 1.0, fixd = true }"),
        ("model.parameters.a", "got keys ['fixd', 'value']"),
    ),
    Case(
        "residual_state_twice",
        "model",
        "m.toml",
        model(extra='[residual]\nstates = ["x", "x"]\n'),
        ("residual.states has duplicates",),
    ),
    Case(
        "residual_as_string",
        "model",
        "m.toml",
        model(extra='[residual]\nstates = "x"\n'),
        ("residual.states must be a list",),
    ),
    Case(
        "unknown_section",
        "model",
        "m.toml",
        model(extra="[solver]\nrtol = 1e-6\n"),
        ("unknown section(s) ['solver']",),
    ),
    Case(
        "unknown_model_key",
        "model",
        "m.toml",
        model().replace("[model]\n", "[model]\nstate = 1\n"),
        ("[model] has unknown key(s) ['state']",),
    ),
    Case(
        "equation_is_a_number",
        "model",
        "m.toml",
        model("1.5"),
        ("model.equations.x", "expected a string expression, got float"),
    ),
    Case(
        "equation_is_a_list",
        "model",
        "m.toml",
        model('["a*x"]'),
        ("model.equations.x", "expected a string expression, got list"),
    ),
    Case(
        "empty_equation",
        "model",
        "m.toml",
        model('""'),
        ("model.equations.x", "empty expression"),
    ),
    Case(
        "null_byte_in_equation",
        "model",
        "m.toml",
        model('"x\\u0000"'),
        ("model.equations.x", "syntax error", "null bytes"),
    ),
    Case(
        "read_etc_passwd",
        "model",
        "m.toml",
        model("\"open('/etc/passwd').read()\""),
        ("model.equations.x", "open('/etc/passwd').read", "is not allowed"),
    ),
    Case(
        "builtins",
        "model",
        "m.toml",
        model("\"__builtins__['open']\""),
        ("model.equations.x", "Subscript is not allowed"),
    ),
    Case(
        "parameter_named_dunder_import",
        "model",
        "m.toml",
        model("\"__import__('os').system('id')\"", params="__import__ = 1.0"),
        ("model.equations.x", "\"__import__('os').system\" is not allowed"),
    ),
    Case(
        "lambda",
        "model",
        "m.toml",
        model('"(lambda: x)()"'),
        ("model.equations.x", "'lambda: x' is not allowed"),
    ),
    Case(
        "list_comprehension",
        "model",
        "m.toml",
        model('"[x for x in [1]]"'),
        ("model.equations.x", "ListComp is not allowed"),
    ),
    Case(
        "generator_in_call",
        "model",
        "m.toml",
        model('"exp(x for x in [1])"'),
        ("model.equations.x", "GeneratorExp is not allowed"),
    ),
    Case(
        "f_string",
        "model",
        "m.toml",
        model("\"f'{x}'\""),
        ("model.equations.x", "JoinedStr is not allowed"),
    ),
    Case(
        "walrus",
        "model",
        "m.toml",
        model('"(a := 2)*x"'),
        ("model.equations.x", "NamedExpr is not allowed"),
    ),
    Case(
        "dunder_attribute",
        "model",
        "m.toml",
        model('"x.__class__.__mro__"'),
        ("model.equations.x", "Attribute is not allowed"),
    ),
    Case(
        "subscript",
        "model",
        "m.toml",
        model('"x[0]"'),
        ("model.equations.x", "Subscript is not allowed"),
    ),
    Case(
        "starred_argument",
        "model",
        "m.toml",
        model('"max(*[x], y)"'),
        ("model.equations.x", "Starred is not allowed"),
    ),
    Case(
        "keyword_argument",
        "model",
        "m.toml",
        model('"max(x, y=1)"'),
        ("model.equations.x", "keyword arguments are not allowed"),
    ),
    Case(
        "comparison",
        "model",
        "m.toml",
        model('"x < y"'),
        ("model.equations.x", "Compare is not allowed"),
    ),
    Case(
        "boolean_literal",
        "model",
        "m.toml",
        model('"True*x"'),
        ("model.equations.x", "only numbers are allowed as literals, not True"),
    ),
    Case(
        "floor_division",
        "model",
        "m.toml",
        model('"x // 2"'),
        ("model.equations.x", "operator FloorDiv is not allowed"),
    ),
    Case(
        "function_without_call",
        "model",
        "m.toml",
        model('"exp*x"'),
        ("model.equations.x", "'exp' used without arguments"),
    ),
    Case(
        "wrong_arity",
        "model",
        "m.toml",
        model('"sin(x, y)"'),
        ("model.equations.x", "sin() takes 1 argument(s), got 2"),
    ),
    Case(
        "time_column_is_a_state",
        "model",
        "m.toml",
        model(extra='[data]\ntime = "x"\n'),
        ("data.time", "'x' is also a state"),
    ),
    Case(
        "time_and_trajectory_same_column",
        "model",
        "m.toml",
        model(extra='[data]\ntime = "k"\ntrajectory = "k"\n'),
        ("data.time and data.trajectory name the same column 'k'",),
    ),
    Case(
        "state_not_an_identifier",
        "model",
        "m.toml",
        model(states='["x", "y-1"]'),
        ("model.states", "'y-1' is not a valid identifier"),
    ),
    Case(
        "model_not_a_table",
        "model",
        "m.toml",
        "model = 1\n",
        ("missing [model] section",),
    ),
]

CASES = DATA_CASES + MODEL_CASES


def write(path: Path, content: Content) -> None:
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def test_catalogue_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_exit_2(case: Case, tmp_path, capsys):
    path = tmp_path / case.name
    write(path, case.content)
    data, model_file = (path, MODEL) if case.kind == "data" else (DATA, path)
    out = tmp_path / "out"
    code = main(["discover", str(data), "--model", str(model_file), "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert err.startswith("sciml discover: error: "), err
    assert str(path) in err or str(path.resolve()) in err, err  # it names the file
    for fragment in case.fragments:
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(f in err for f in options), (fragment, err)
    assert len(err) < 2_000, "messages stay short even for huge inputs"
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_hostile_data_library_raises_data_error(case: Case, tmp_path):
    path = tmp_path / case.name
    write(path, case.content)
    with pytest.raises(sciml.DataError):
        sciml.load_trajectories(path, ["x", "y"])


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_hostile_model_library_raises_model_file_error(case: Case, tmp_path):
    path = tmp_path / case.name
    write(path, case.content)
    with pytest.raises(sciml.ModelFileError):
        sciml.load_model(path)


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    """The neighbours of hostile files that are fine: Excel's BOM and Windows line ends."""
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_CSV.replace("\n", "\r\n").encode())
    data = sciml.load_trajectories(path, ["x", "y"])
    np.testing.assert_array_equal(data.trajectories[0].t, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(data.trajectories[0].y[:, 1], [2.0, 3.0, 4.0])


def test_trailing_unnamed_columns_are_not_duplicates(tmp_path):
    """Trailing commas (unnamed columns) are ignored rather than refused as duplicate names."""
    path = tmp_path / "d.csv"
    path.write_text("t,x,y,,\n0,1,2,,\n1,2,3,,\n2,3,4,,\n")
    data = sciml.load_trajectories(path, ["x", "y"])
    assert data.n_points == 3


def test_data_loader_refuses_overlapping_column_roles(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(GOOD_CSV)
    with pytest.raises(sciml.DataError, match="must all differ"):
        sciml.load_trajectories(path, ["x", "y"], time="x")
    with pytest.raises(sciml.DataError, match="must all differ"):
        sciml.load_trajectories(path, ["x", "y"], trajectory="t")


def test_long_sums_are_not_mistaken_for_deep_nesting(tmp_path):
    """A polynomial of 100 terms is flat, not 100 levels deep (the depth limit is for nesting)."""
    terms = " + ".join(f"{k + 1}*x^{k % 4}*y" for k in range(100))
    path = tmp_path / "m.toml"
    path.write_text(model(f'"{terms}"'))
    m = sciml.load_model(path)
    x, y = m.state_symbols
    assert sp.expand(m.equations[0] - sum((k + 1) * x ** (k % 4) * y for k in range(100))) == 0
