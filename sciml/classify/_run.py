"""The classifier stage: data in, trained model, metrics and figures out (one folder)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.random as jr
import numpy as np

from .._errors import InputError, OutputDirError
from .._io import atomic_path, write_json
from ._config import ClassifierConfig
from ._data import (
    ImageSet,
    Standardiser,
    encode_labels,
    load_digits,
    load_npz,
    stratified_split,
)
from ._models import AbstractClassifier, count_params, make_classifier
from ._plots import confusion_matrix, plot_confusion, plot_training
from ._synthetic import KINDS, make_image_set
from ._train import EpochCallback, checkpoint_in, evaluate, fit, make_optimizer

#: Bundled data sets: scikit-learn's digits and generated colour image sets (`_synthetic`).
DATASETS = ("digits", *KINDS)
#: Size of a generated bundled set (before the held-out split), side and seed.
GENERATED_SIZE, GENERATED_SIDE, GENERATED_SEED = 3000, 32, 0


def default_config(sample_shape: tuple[int, ...], dataset: str | None = None) -> ClassifierConfig:
    """Settings from the shape of the samples alone (never from the data set's name).

    Images: a stem of 32 channels that halves the side down to at most 2, random shifts of up
    to 1/16 of the side (at least 1 pixel). The 2x2 state grid keeps each evaluation of the
    ODE's field cheap (its cost grows with the grid's area; the ODE solve evaluates it 6 times
    a step, the ResNet once): on 32x32 shapes under load an ODE epoch took about 2.5x the
    ResNet's with a 4x4 grid and about 1.3x with 2x2, and the extra stride-2 layer of the
    shared stem did not cost the ResNet accuracy (99.3% against 98.2%). Flat features: an
    affine stem of 64.
    """
    del dataset  # kept for callers; the settings follow from the shape only
    if len(sample_shape) == 3:
        side = max(sample_shape[1:])
        return ClassifierConfig(grid=2, width=32, hidden=32, pool=2, shift=max(1, side // 16))
    return ClassifierConfig(width=64, hidden=64)


#: The settings `default_config` gives the bundled digits (8x8, one channel).
DIGITS_CONFIG = default_config((1, 8, 8))


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """A fitted model with what is needed to apply it to raw images."""

    model: AbstractClassifier
    config: ClassifierConfig
    classes: np.ndarray
    standardiser: Standardiser
    sample_shape: tuple[int, ...]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the logits) for raw images of the training shape."""
        x = np.asarray(images, np.float32)
        if x.ndim == len(self.sample_shape):  # (N, H, W) for one-channel images
            x = x[:, None]
        if tuple(x.shape[1:]) != self.sample_shape:
            raise InputError(f"images of shape {x.shape[1:]}; the model wants {self.sample_shape}")
        x = self.standardiser(x)
        dummy = np.zeros(len(x), np.int64)
        return evaluate(self.model, x, dummy).probabilities

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Labels (as in the training data) for raw images."""
        return self.classes[self.predict_proba(images).argmax(axis=1)]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """`model.eqx` (equinox leaves) and `model.json` (everything needed to rebuild it)."""
        directory = Path(directory)
        with atomic_path(directory / "model.eqx") as tmp:
            eqx.tree_serialise_leaves(tmp, self.model)
        from .. import __version__

        write_json(
            directory / "model.json",
            {
                "config": self.config.to_dict(),
                "sample_shape": list(self.sample_shape),
                "classes": self.classes.tolist(),
                "standardiser": self.standardiser.to_dict(),
                "weights": "model.eqx",
                "sciml_version": __version__,
            },
        )


def load_classifier(directory: str | os.PathLike[str]) -> TrainedClassifier:
    """Rebuild a classifier saved by `run_classify` (or `TrainedClassifier.save`)."""
    directory = Path(directory)
    meta_path = directory / "model.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{meta_path}: cannot read the model description ({err})") from err
    config = ClassifierConfig.from_dict(meta["config"])
    shape = tuple(int(s) for s in meta["sample_shape"])
    classes = np.asarray(meta["classes"])
    template = make_classifier(config, shape, len(classes), key=jr.key(0))
    model = eqx.tree_deserialise_leaves(directory / meta["weights"], template)
    standardiser = Standardiser.from_dict(meta["standardiser"])
    return TrainedClassifier(model, config, classes, standardiser, shape)


def _load(
    dataset: str | None, data: str | os.PathLike[str] | None, test: str | os.PathLike[str] | None
) -> tuple[ImageSet, ImageSet | None]:
    if (dataset is None) == (data is None):
        raise InputError("classify: give exactly one of a bundled dataset or a data file")
    if dataset is not None:
        if dataset not in DATASETS:
            known = ", ".join(DATASETS)
            raise InputError(f"classify: unknown dataset {dataset!r} (known: {known})")
        if dataset == "digits":
            train = load_digits()
        else:
            train = make_image_set(
                dataset, GENERATED_SIZE, size=GENERATED_SIDE, seed=GENERATED_SEED
            )
    else:
        assert data is not None
        train = load_npz(data)
    return train, (load_npz(test) if test is not None else None)


def run_classify(
    *,
    dataset: str | None = None,
    data: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
    seed: int = 0,
    epochs: int | None = None,
    config: ClassifierConfig | None = None,
    callback: EpochCallback | None = None,
    progress: bool | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train a neural-ODE image classifier and write its results into `out`.

    Data: `dataset` (`"digits"`, scikit-learn's bundled 8x8 digits, or a generated colour set:
    `"shapes"`, `"textures"`, `"bars"`; see `make_image_set`) or `data`, an NPZ file with
    `images` (N, C, H, W), (N, H, W) or (N, D) and integer `labels` (N,). `test` is an NPZ of
    the same form; without it a stratified share (`config.test_fraction`) is held out.

    Writes `metrics.json`, `model.eqx` + `model.json`, `confusion.png` and `training.png`,
    each atomically. While training, the checkpoint `checkpoint.eqx` (+ `.json` for people)
    is rewritten after every epoch; a later call with the same data, config and seed resumes
    from it and ends with the same result as an uninterrupted run. It is removed at the end.

    Training runs until a stratified validation share of the training data
    (`config.validation_fraction`) stops improving (see `fit`), for at most `config.epochs`
    epochs; the best epoch's model is kept. `config` overrides the shape-dependent defaults
    (`default_config`), `epochs` overrides `config.epochs` (the most);
    `callback(epoch, record)` is called after each epoch's checkpoint;
    `progress`: a progress bar on stderr (default: when stderr is a terminal); `time_limit`:
    no epoch starts after this many seconds of training (the best epoch so far is kept). Bad
    input raises `DataError`.
    Returns the metrics.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a folder")
    train_set, test_set = _load(dataset, data, test)
    if config is None:
        config = default_config(train_set.sample_shape, dataset)
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"classify: epochs must be at least 1, not {epochs}")
        config = config.replace(epochs=int(epochs))
    if test_set is None:
        train_set, test_set = stratified_split(train_set, config.test_fraction, seed)
    fit_set, val_set = train_set, None
    if config.validation_fraction > 0:
        fit_set, val_set = stratified_split(train_set, config.validation_fraction, seed + 1)
    classes, y_train, y_test = encode_labels(fit_set, test_set)
    standardiser = Standardiser.fit(fit_set.images)
    x_train, x_test = standardiser(fit_set.images), standardiser(test_set.images)
    x_val = y_val = None
    if val_set is not None:
        _, _, y_val = encode_labels(fit_set, val_set)
        x_val = standardiser(val_set.images)
    out.mkdir(parents=True, exist_ok=True)

    shape = train_set.sample_shape
    model = make_classifier(config, shape, len(classes), key=jr.key(seed))
    per_epoch = len(x_train) // min(config.batch_size, len(x_train))
    optim = make_optimizer(
        config.learning_rate, config.weight_decay, per_epoch, per_epoch * config.epochs
    )
    digest = config.digest(seed, train_set.fingerprint(), test_set.fingerprint())
    checkpoint = checkpoint_in(out, digest)
    result = fit(
        model,
        optim,
        x_train,
        y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=seed,
        shift=config.shift,
        x_val=x_val,
        y_val=y_val,
        patience=config.patience,
        x_test=x_test,
        y_test=y_test,
        checkpoint=checkpoint,
        callback=callback,
        progress=progress,
        time_limit=time_limit,
    )
    model = result.model

    ev_test = evaluate(model, x_test, y_test)
    ev_train = evaluate(model, x_train, y_train)
    cm = confusion_matrix(y_test, ev_test.predictions, len(classes))
    trained = TrainedClassifier(model, config, classes, standardiser, shape)
    trained.save(out)
    kind = "neural ODE" if config.model == "ode" else f"ResNet ({config.depth} blocks)"
    plot_confusion(
        cm,
        classes.tolist(),
        out / "confusion.png",
        title=f"{kind}: test accuracy {ev_test.accuracy:.2%}",
    )
    plot_training(result.history, out / "training.png")
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": dataset if dataset is not None else str(data),
        "test_data": str(test) if test is not None else "stratified split",
        "test_accuracy": ev_test.accuracy,
        "test_loss": ev_test.loss,
        "train_accuracy": ev_train.accuracy,
        "params": count_params(model),
        "train_seconds": result.train_seconds,
        "mean_solver_steps": ev_test.mean_steps,
        "max_solver_steps": ev_test.max_steps,
        "failed_solves": ev_test.failed_solves + ev_train.failed_solves,
        "train_mean_solver_steps": result.history["mean_steps"][-1],
        "epochs": len(result.history["loss"]),
        "max_epochs": config.epochs,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "val_accuracy": result.history["val_accuracy"][result.best_epoch - 1]
        if val_set is not None and result.best_epoch > 0
        else None,
        "n_validation": 0 if val_set is None else len(val_set),
        "resumed_from_epoch": result.resumed_from_epoch,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "sample_shape": list(shape),
        "classes": classes.tolist(),
        "confusion_matrix": cm.tolist(),
        "seed": seed,
        "config": config.to_dict(),
        "history": result.history,
    }
    write_json(out / "metrics.json", metrics)
    checkpoint.remove()
    return metrics
