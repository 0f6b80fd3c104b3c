"""Neural-ODE classifier stage: models, data validation, training, resumption, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import sciml  # noqa: F401  (switches on float64, as in every real run)
from sciml import DataError
from sciml.classify import (
    ClassifierConfig,
    Conv3x3,
    ODEClassifier,
    ResNetClassifier,
    count_params,
    load_classifier,
    load_npz,
    make_classifier,
    make_image_set,
    random_shift,
    run_classify,
)
from sciml.classify._train import fit, make_optimizer

# One small config for every training run in this file, so that `train_step` compiles once.
SMALL = ClassifierConfig(
    grid=8, width=8, hidden=8, pool=2, shift=1, epochs=8, batch_size=30, learning_rate=1e-2
)


def colour_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3x32x32 images of three classes: a red square, green horizontal bars, blue vertical bars.

    Each on a noisy grey background at a random place, so no single pixel gives the class away.
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        for _ in range(n_per_class):
            img = 0.4 + 0.25 * rng.standard_normal((3, 32, 32))
            r, c = rng.integers(0, 16, size=2)
            patch = img[:, r : r + 16, c : c + 16]
            if label == 0:
                patch[0] += 1.0
            elif label == 1:
                patch[1, ::4] += 1.5
            else:
                patch[2, :, ::4] += 1.5
            images.append(img)
            labels.append(label)
    order = rng.permutation(len(labels))
    return np.asarray(images, np.float32)[order], np.asarray(labels)[order]


@pytest.fixture(scope="module")
def colour_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("colour")
    x, y = colour_images(40, seed=1)
    xt, yt = colour_images(20, seed=2)
    np.savez(root / "train.npz", images=x, labels=y)
    np.savez(root / "test.npz", images=xt, labels=yt)
    return root / "train.npz", root / "test.npz"


@pytest.fixture(scope="module")
def colour_run(
    colour_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """One uninterrupted run on the colour images (shared by several tests)."""
    out = tmp_path_factory.mktemp("colour-run")
    train, test = colour_files
    metrics = run_classify(data=train, test=test, out=out, seed=3, config=SMALL, progress=False)
    return out, metrics


# ---------------------------------------------------------------------------------------------
# Models


def test_conv3x3_matches_a_standard_convolution() -> None:
    conv = Conv3x3(3, 5, key=jr.key(0))
    x = jr.normal(jr.key(1), (3, 7, 6), jnp.float32)
    ref = jax.lax.conv_general_dilated(x[None], conv.weight, (1, 1), "SAME")[0]
    np.testing.assert_allclose(conv(x), ref + conv.bias[:, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (5, 17, 23), (20,)])
def test_ode_classifier_shapes_steps_and_float32(shape: tuple[int, ...]) -> None:
    config = ClassifierConfig(width=8, hidden=8, augment=2)
    model = make_classifier(config, shape, 4, key=jr.key(0))
    assert isinstance(model, ODEClassifier)
    x = jr.normal(jr.key(1), (2, *shape))  # float64 in: the model casts
    logits, steps, ok = jax.vmap(model)(x)
    assert logits.shape == (2, 4) and logits.dtype == jnp.float32
    assert bool(ok.all()) and int(steps.min()) >= 1
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}


def test_solve_first_tries_the_whole_interval() -> None:
    """A flow that barely moves is solved in one step (the first step spans [0, t1]); a
    strong field is still refined by the adaptive controller (rejected steps counted)."""
    config = ClassifierConfig(width=8, hidden=8)
    model = make_classifier(config, (3, 16, 16), 4, key=jr.key(0))
    y0 = jr.normal(jr.key(1), (2, 8, 4, 4), jnp.float32)
    still = eqx.tree_at(lambda m: m.block.field.conv2.weight, model, replace_fn=lambda w: 0 * w)
    _, steps, ok = jax.vmap(still.block)(y0)
    assert bool(ok.all()) and steps.tolist() == [1, 1]
    strong = eqx.tree_at(lambda m: m.block.field.conv2.weight, model, replace_fn=lambda w: 300 * w)
    _, steps, ok = jax.vmap(strong.block)(y0)
    assert bool(ok.all()) and int(steps.min()) >= 3


def test_resnet_baseline_has_about_the_same_parameter_count() -> None:
    ode = make_classifier(ClassifierConfig(width=16, hidden=16), (1, 8, 8), 10, key=jr.key(0))
    res = make_classifier(
        ClassifierConfig(model="resnet", width=16, hidden=16), (1, 8, 8), 10, key=jr.key(0)
    )
    assert isinstance(res, ResNetClassifier)
    n_ode, n_res = count_params(ode), count_params(res)
    assert n_ode > n_res  # the ODE field also sees time
    assert (n_ode - n_res) / n_ode < 0.1


def test_learning_rate_warms_up_then_follows_a_cosine_to_one_percent() -> None:
    """Adam's update for a constant gradient is the learning rate itself, so the update sizes
    trace the schedule: a ramp over the warm-up, then a monotone cosine down to 1%."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.1)}

    def sizes(optim) -> np.ndarray:
        state, out = optim.init(params), []
        for _ in range(40):
            updates, state = optim.update(grads, state, params)
            out.append(float(jnp.abs(updates["w"]).max()))
        return np.asarray(out)

    cosine = sizes(make_optimizer(1e-2, 0.0, 5, 40))
    peak = int(np.argmax(cosine))
    assert 4 <= peak <= 6 and cosine[peak] == pytest.approx(1e-2, rel=0.05)
    assert cosine[0] < 0.2 * cosine[peak]
    assert np.all(np.diff(cosine[peak:]) <= 1e-9)
    assert cosine[-1] < 0.03 * cosine[peak]
    flat = sizes(make_optimizer(1e-2, 0.0, 5))
    np.testing.assert_allclose(flat[6:], 1e-2, rtol=0.01)


def test_random_shift_is_a_translation() -> None:
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5) + 1
    shifted = random_shift(x, 1, np.random.default_rng(0))
    assert shifted.shape == x.shape
    for a, b in zip(x, shifted):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if np.array_equal(
                np.pad(a, ((0, 0), (1, 1), (1, 1)))[:, 1 + dy : 6 + dy, 1 + dx : 6 + dx], b
            )
        ]
        assert matches
    again = random_shift(x, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(shifted, again)


@pytest.mark.parametrize("kind", ["shapes", "textures", "bars"])
def test_generated_image_sets_are_balanced_and_not_given_away_by_colour(kind: str) -> None:
    data = make_image_set(kind, 400, size=16, seed=0)
    assert data.images.shape == (400, 3, 16, 16) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    np.testing.assert_array_equal(np.bincount(data.labels), [100] * 4)
    again = make_image_set(kind, 400, size=16, seed=0)
    np.testing.assert_array_equal(data.images, again.images)
    assert not np.array_equal(make_image_set(kind, 400, size=16, seed=1).images, data.images)
    # The mean colour of an image says nothing about its class: per-class means of the
    # per-image mean colour lie within a few standard errors of each other.
    colour = data.images.mean(axis=(2, 3))
    means = np.stack([colour[data.labels == k].mean(0) for k in range(4)])
    se = colour.std(0) / np.sqrt(100)
    assert (np.ptp(means, axis=0) < 5 * se).all(), (means, se)


def test_training_stops_when_validation_stops_improving_and_keeps_the_best() -> None:
    """Random labels: validation accuracy cannot keep improving, so training stops long
    before the epoch limit, after halving the learning rate, and keeps the best epoch."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 6)).astype(np.float32), rng.integers(0, 2, 200)
    xv, yv = rng.standard_normal((60, 6)).astype(np.float32), rng.integers(0, 2, 60)
    config = ClassifierConfig(width=8, hidden=8)
    model = make_classifier(config, (6,), 2, key=jr.key(0))
    optim = make_optimizer(1e-2, 0.0, 5)
    result = fit(
        model,
        optim,
        x,
        y,
        epochs=200,
        batch_size=40,
        seed=0,
        x_val=xv,
        y_val=yv,
        patience=4,
        progress=False,
    )
    history = result.history
    assert result.stopped == "converged" and len(history["loss"]) < 200
    best = result.best_epoch
    assert history["val_accuracy"][best - 1] == max(history["val_accuracy"])
    assert len(history["loss"]) - best >= 4
    assert min(history["lr"]) < history["lr"][0] / 1.5
    from sciml.classify import evaluate

    assert evaluate(result.model, xv, yv).accuracy == history["val_accuracy"][best - 1]


# ---------------------------------------------------------------------------------------------
# Bad input


def _bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the message must contain)."""
    x = np.zeros((6, 8, 8), np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    cases: dict[str, tuple[Path, str]] = {}

    def npz(name: str, fragment: str, **arrays: np.ndarray) -> None:
        path = root / f"{name}.npz"
        np.savez(path, **arrays)
        cases[name] = (path, fragment)

    npz("no_labels", "'labels' missing", images=x)
    npz("no_images", "'images' missing", labels=y)
    npz("mismatch", "shape mismatch", images=x, labels=y[:5])
    npz("one_class", "single class", images=x, labels=np.zeros(6, int))
    npz("strings", "'images' must be numeric", images=np.array(["a"] * 6), labels=y)
    nan = x.copy()
    nan[3, 2, 2] = np.nan
    npz("nan", "first at index 3", images=nan, labels=y)
    npz("float_labels", "must hold integers", images=x, labels=y + 0.5)
    npz("bad_shape", "'images' must have shape", images=np.zeros(6), labels=y)
    garbage = root / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    cases["unreadable"] = (garbage, "cannot read as NPZ")
    cases["missing"] = (root / "nowhere.npz", "file not found")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "no_labels",
        "no_images",
        "mismatch",
        "one_class",
        "strings",
        "nan",
        "float_labels",
        "bad_shape",
        "unreadable",
        "missing",
    ],
)
def test_bad_input_is_a_data_error_naming_file_and_problem(tmp_path: Path, case: str) -> None:
    path, fragment = _bad_files(tmp_path)[case]
    with pytest.raises(DataError) as info:
        run_classify(data=path, out=tmp_path / "out", progress=False)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_test_file_with_other_shape_or_unseen_class_is_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((8, 1, 8, 8))
    y = np.array([0, 1] * 4)
    np.savez(tmp_path / "train.npz", images=x, labels=y)
    np.savez(tmp_path / "small.npz", images=x[:, :, :4, :4], labels=y)
    np.savez(tmp_path / "unseen.npz", images=x, labels=y + 1)
    with pytest.raises(DataError, match="shape mismatch"):
        run_classify(data=tmp_path / "train.npz", test=tmp_path / "small.npz", out=tmp_path)
    with pytest.raises(DataError, match="not in the training data: 2"):
        run_classify(data=tmp_path / "train.npz", test=tmp_path / "unseen.npz", out=tmp_path)


def test_npz_loads_grey_images_as_one_channel(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", images=np.ones((4, 5, 6), np.uint8), labels=[1, 2, 1, 2])
    data = load_npz(tmp_path / "g.npz")
    assert data.images.shape == (4, 1, 5, 6) and data.images.dtype == np.float32


def test_cli_bad_input_exits_2(prefect_harness, tmp_path: Path) -> None:
    """Through the command line (and its Prefect flow): exit code 2, no results written.

    (The message itself is checked above; pytest's capsys and Prefect's log handlers clash.)
    """
    from pipelines.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 8, 8)))
    assert main(["classify", "--data", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_colour_images_are_learnt_and_results_written(colour_run: tuple[Path, dict]) -> None:
    out, metrics = colour_run
    assert metrics["test_accuracy"] >= 0.8  # chance is 1/3
    assert metrics["n_train"] + metrics["n_validation"] == 120 and metrics["n_test"] == 60
    assert metrics["n_validation"] == 12 and 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert metrics["stopped"] in ("converged", "epoch limit")
    history = metrics["history"]
    assert len(history["val_accuracy"]) == metrics["epochs"] == len(history["lr"])
    assert metrics["val_accuracy"] == max(history["val_accuracy"])
    assert metrics["mean_solver_steps"] >= 1 and metrics["failed_solves"] == 0
    assert metrics["params"] > 0 and metrics["train_seconds"] > 0
    assert np.sum(metrics["confusion_matrix"]) == 60
    for name in ("metrics.json", "model.eqx", "model.json", "confusion.png", "training.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "checkpoint.eqx").exists() and not (out / "checkpoint.json").exists()
    assert not list(out.glob(".*.tmp"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test_accuracy"] == metrics["test_accuracy"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_saved_model_reloads_and_predicts(
    colour_run: tuple[Path, dict], colour_files: tuple[Path, Path]
) -> None:
    out, metrics = colour_run
    trained = load_classifier(out)
    test = load_npz(colour_files[1])
    accuracy = float((trained.predict(test.images) == test.labels).mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-12)


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(
    colour_run: tuple[Path, dict], colour_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Interrupt after epoch 2 of 8, run again: same weights and metrics as without a break.

    Tolerance: the resumed run replays the same float32 computation, so weights must agree to
    1e-6 (absolute) and every per-epoch loss to a relative 1e-6; accuracies exactly.
    """
    ref_out, ref = colour_run
    train, test = colour_files

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Interrupt

    kwargs = dict(data=train, test=test, out=tmp_path, seed=3, config=SMALL, progress=False)
    with pytest.raises(Interrupt):
        run_classify(**kwargs, callback=stop_after_two)
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    assert state["epoch"] == 2 and (tmp_path / "checkpoint.eqx").exists()
    assert not (tmp_path / "metrics.json").exists()

    resumed = run_classify(**kwargs)
    assert resumed["resumed_from_epoch"] == 2
    assert not (tmp_path / "checkpoint.eqx").exists()
    assert resumed["test_accuracy"] == ref["test_accuracy"]
    assert resumed["confusion_matrix"] == ref["confusion_matrix"]
    np.testing.assert_allclose(resumed["history"]["loss"], ref["history"]["loss"], rtol=1e-6)
    a = load_classifier(tmp_path).model
    b = load_classifier(ref_out).model
    for x, y in zip(
        jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array)),
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_checkpoint_of_another_config_is_ignored(tmp_path: Path) -> None:
    from sciml._checkpoint import CheckpointError
    from sciml.classify import Checkpoint

    model = make_classifier(SMALL, (1, 8, 8), 3, key=jr.key(0))
    path = tmp_path / "checkpoint"
    Checkpoint(path, "aaaa").save({"epoch": 1}, (model, None, model))
    assert Checkpoint(path, "bbbb").load((model, None, model)) is None
    loaded = Checkpoint(path, "aaaa").load((model, None, model))
    assert loaded is not None and loaded[0]["epoch"] == 1
    (tmp_path / "checkpoint.eqx").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="checkpoint.eqx"):
        Checkpoint(path, "aaaa").load((model, None, model))
