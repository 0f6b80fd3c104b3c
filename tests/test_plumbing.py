"""Shared training plumbing: the checkpoint format, fingerprints and the progress bar."""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sciml._checkpoint import Checkpoint, CheckpointError, read_state, remove
from sciml._fingerprint import Fingerprint, file_digest, json_digest
from sciml._progress import Progress

ARRAYS = (jnp.arange(6.0).reshape(2, 3), {"w": jnp.ones(4, jnp.float32)}, None)
STATE = {"step": 7, "best": math.inf, "history": [1.5, math.nan], "name": "x"}


def like():
    return (jnp.zeros((2, 3)), {"w": jnp.zeros(4, jnp.float32)}, None)


def test_checkpoint_round_trip_keeps_state_and_arrays_exactly(tmp_path):
    ckpt = Checkpoint(tmp_path / "ckpt", "fp1")
    assert ckpt.load(like()) is None  # none yet
    ckpt.save(STATE, ARRAYS)
    state, arrays = ckpt.load(like())
    assert state["step"] == 7 and state["best"] == math.inf and math.isnan(state["history"][1])
    np.testing.assert_array_equal(arrays[0], ARRAYS[0])
    np.testing.assert_array_equal(arrays[1]["w"], ARRAYS[1]["w"])
    assert arrays[1]["w"].dtype == jnp.float32
    # The sidecar is for people: the state (JSON, infinity as null) and the manifest.
    side = json.loads((tmp_path / "ckpt.json").read_text())
    assert side["step"] == 7 and side["best"] is None and side["manifest"]["fingerprint"] == "fp1"
    assert read_state(tmp_path / "ckpt")["step"] == 7
    ckpt.remove()
    assert not list(tmp_path.iterdir())
    assert read_state(tmp_path / "ckpt") is None


def test_checkpoint_of_another_fingerprint_is_ignored(tmp_path):
    Checkpoint(tmp_path / "ckpt", "fp1").save(STATE, ARRAYS)
    assert Checkpoint(tmp_path / "ckpt", "fp2").load(like()) is None
    assert Checkpoint(tmp_path / "ckpt", "fp1").load(like()) is not None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-3], "truncated"),
        (lambda raw: raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:], "arrays do not match the SHA-256"),
        (lambda raw: raw.replace(b'"step": 7', b'"step": 8'), "state do not match the SHA-256"),
        (lambda raw: b"not a checkpoint at all", "is not a sciml checkpoint"),
        (lambda raw: raw[:20] + b"\xff" + raw[21:], "damaged manifest"),
    ],
)
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage, message):
    ckpt = Checkpoint(tmp_path / "ckpt", "fp1")
    ckpt.save(STATE, ARRAYS)
    ckpt.file.write_bytes(damage(ckpt.file.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.load(like())
    assert str(ckpt.file) in str(info.value) and "delete it" in str(info.value)


def test_arrays_that_do_not_fit_the_model_are_a_clear_error(tmp_path):
    ckpt = Checkpoint(tmp_path / "ckpt", "fp1")
    ckpt.save(STATE, ARRAYS)
    wrong = (jnp.zeros((3, 2)), {"w": jnp.zeros(5, jnp.float32)}, None)
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.load(wrong)


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(
    tmp_path, monkeypatch
):
    ckpt = Checkpoint(tmp_path / "ckpt", "fp1")
    ckpt.save(STATE, ARRAYS)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({**STATE, "step": 8}, ARRAYS)
    monkeypatch.undo()
    state, _ = ckpt.load(like())
    assert state["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.eqx", "ckpt.json"]
    remove(tmp_path / "ckpt")
    assert not list(tmp_path.iterdir())


def test_fingerprint_separates_parts_and_sees_dtype_and_shape(tmp_path):
    def fp(build):
        return build(Fingerprint()).hexdigest()

    assert fp(lambda f: f.text("ab").text("c")) != fp(lambda f: f.text("a").text("bc"))
    assert fp(lambda f: f.array(np.zeros(4))) != fp(lambda f: f.array(np.zeros((2, 2))))
    assert fp(lambda f: f.array(np.zeros(4))) != fp(lambda f: f.array(np.zeros(4, np.float32)))
    assert fp(lambda f: f.array([1, 2], np.float64)) == fp(lambda f: f.array(np.array([1.0, 2.0])))
    assert fp(lambda f: f.json({"a": 1, "b": 2})) == fp(lambda f: f.json({"b": 2, "a": 1}))
    assert len(Fingerprint().hexdigest(16)) == 16
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)  # more than one read block
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json_digest({"b": [1, 2], "a": None}) == json_digest({"a": None, "b": [1, 2]})
    assert json_digest({"a": 1}) != json_digest({"a": 2})


def test_progress_disabled_draws_nothing_but_counts(capsys):
    with Progress("x", total=10, completed=2, enabled=False) as bar:
        bar.update(advance=3)
        bar.update(note="loss 1")
        assert bar.completed == 5
        bar.stage_callback()("Adam", 8, 20, 0.5)
        assert bar.completed == 8
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_enabled_draws_on_stderr(capsys):
    with Progress("train", total=4, enabled=True) as bar:
        bar.update(4, note="loss 0.125")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train" in captured.err and "4/4" in captured.err and "loss 0.125" in captured.err


def test_one_walker_for_model_files_and_engine_output():
    import sympy as sp

    from sciml import ModelFileError, parse_expression
    from sciml._expr import MAX_DEPTH, ExpressionError
    from sciml.symbolic import FormulaParseError, parse_formula

    x = sp.Symbol("x")
    assert FormulaParseError is ExpressionError and issubclass(ExpressionError, ModelFileError)
    # The engines' spellings are accepted in their output only.
    assert parse_formula("square(x) + Abs(x)", {"x": x}) == x**2 + sp.Abs(x)
    with pytest.raises(ExpressionError, match=r"function 'square' is not allowed .*exp"):
        parse_expression("square(x)", {"x": x}, where="model.equations.x")
    # One depth limit, one message format (place, what, column, text).
    deep = "(" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1)
    for parse in (parse_formula, lambda t, s: parse_expression(t, s, where="formula")):
        assert parse("(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH, {"x": x}) == x
        with pytest.raises(ExpressionError, match=f"formula: .*nested too deeply.*max {MAX_DEPTH}"):
            parse(deep, {"x": x})
    with pytest.raises(ExpressionError, match=r"formula: Attribute is not allowed.* at column 5"):
        parse_formula("1 + x.real", {"x": x})
    with pytest.raises(ExpressionError, match=r"formula: unknown symbol 'y' \(known: x\)"):
        parse_formula("x * y", {"x": x})
