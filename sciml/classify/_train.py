"""Training and evaluation: cross-entropy, mini-batches, per-epoch checkpoints, resumption.

Determinism: the initial model comes from the seed, and epoch `e` shuffles with a generator
seeded by `(seed, e)`, so a run resumed from its checkpoint after epoch `e` continues exactly
as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checkpoint import Checkpoint
from .._errors import NumericalError
from .._progress import Progress
from ._models import AbstractClassifier
from ._types import Batch, BatchLogits, Labels, Mask

EVAL_BATCH = 256


# ---------------------------------------------------------------------------------------------
# Pure pieces (jitted)


def _forward(model: AbstractClassifier, x: Batch) -> tuple[BatchLogits, jax.Array, jax.Array]:
    return jax.vmap(model)(x)


def _loss(
    model: AbstractClassifier, x: Batch, y: Labels
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    logits, steps, _ = _forward(model, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    correct = (jnp.argmax(logits, axis=-1) == y).mean()
    return loss, (correct, steps.mean())


@eqx.filter_jit
def train_step(
    model: AbstractClassifier,
    opt_state: optax.OptState,
    x: Batch,
    y: Labels,
    optim: optax.GradientTransformation,
) -> tuple[AbstractClassifier, optax.OptState, jax.Array, jax.Array, jax.Array]:
    """One optimiser update on a mini-batch; returns (model, opt_state, loss, accuracy, steps)."""
    (loss, (acc, steps)), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(model, x, y)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optim.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss, acc, steps


@eqx.filter_jit
def predict_batch(
    model: AbstractClassifier, x: Batch, mask: Mask
) -> tuple[BatchLogits, jax.Array, jax.Array]:
    """Logits, solver steps and success flags for a (padded) batch; padding counts as ok."""
    logits, steps, ok = _forward(model, x)
    return logits, jnp.where(mask, steps, 0), ok | ~mask


#: The learning rate is never halved below `learning_rate / MIN_LR_DIVISOR`.
MIN_LR_DIVISOR = 64


@functools.lru_cache(maxsize=32)
def make_optimizer(
    learning_rate: float, weight_decay: float, warmup_steps: int, total_steps: int | None = None
) -> optax.GradientTransformation:
    """AdamW at `learning_rate` after a linear warm-up over `warmup_steps`, gradient clipping;
    with `total_steps`, the rate then follows a cosine down to 1% at `total_steps`.

    The rate is a hyperparameter in the optimiser state (`optax.inject_hyperparams`), which
    `fit` halves on a validation plateau; the cosine spans the most epochs a run may take
    (`total_steps`), so nothing is chosen per data set. Cached, so that runs with the same
    settings share one object and hence one compiled `train_step` (the transformation is a
    static argument of the jitted step).
    """
    warmup = max(1, warmup_steps)
    if total_steps is None:
        ramp = optax.linear_schedule(0.1, 1.0, warmup)
    else:
        ramp = optax.warmup_cosine_decay_schedule(
            0.1, 1.0, warmup, max(total_steps, warmup + 1), end_value=0.01
        )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(
            learning_rate=learning_rate, weight_decay=weight_decay
        ),
        optax.scale_by_schedule(ramp),
    )


def _get_lr(opt_state: optax.OptState) -> float | None:
    try:
        return float(optax.tree_utils.tree_get(opt_state, "learning_rate"))
    except (KeyError, ValueError, TypeError):
        return None


def _set_lr(opt_state: optax.OptState, value: float) -> optax.OptState:
    old = optax.tree_utils.tree_get(opt_state, "learning_rate")
    return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(value, old.dtype))


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predictions on a data set, with the solver statistics of the forward passes."""

    predictions: np.ndarray
    probabilities: np.ndarray
    accuracy: float
    loss: float
    mean_steps: float
    max_steps: int
    failed_solves: int


def evaluate(
    model: AbstractClassifier, x: np.ndarray, y: np.ndarray, *, batch_size: int = EVAL_BATCH
) -> Evaluation:
    """Classify `x` (already standardised) in fixed-size padded batches and score against `y`."""
    n = len(x)
    batch_size = min(batch_size, n)  # fixed per data set: one compilation
    logits, steps, ok = [], [], []
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        m = len(xb)
        pad = np.zeros((batch_size - m, *x.shape[1:]), np.float32)
        mask = np.arange(batch_size) < m
        lb, sb, okb = predict_batch(model, jnp.asarray(np.concatenate([xb, pad])), mask)
        logits.append(np.asarray(lb)[:m])
        steps.append(np.asarray(sb)[:m])
        ok.append(np.asarray(okb)[:m])
    logit = np.concatenate(logits).astype(np.float64)
    step = np.concatenate(steps)
    good = np.concatenate(ok)
    logit = logit - logit.max(axis=1, keepdims=True)
    logp = logit - np.log(np.exp(logit).sum(axis=1, keepdims=True))
    pred = logp.argmax(axis=1)
    return Evaluation(
        predictions=pred,
        probabilities=np.exp(logp),
        accuracy=float((pred == y).mean()),
        loss=float(-logp[np.arange(n), y].mean()),
        mean_steps=float(step.mean()),
        max_steps=int(step.max()),
        failed_solves=int((~good).sum()),
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints


#: The training checkpoint in the output folder: `checkpoint.eqx` (+ `.json` for people), in
#: the library's one format (`sciml._checkpoint`): the state after the last epoch, the model,
#: the optimiser state and the best model so far, checked on load to belong together and to
#: this run's config digest.
CHECKPOINT = "checkpoint"


def checkpoint_in(directory: str | Path, digest: str) -> Checkpoint:
    """The training checkpoint of a run with config digest `digest` in `directory`."""
    return Checkpoint(Path(directory) / CHECKPOINT, digest)


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The kept model (best validation epoch) and how training went.

    `stopped`: `"converged"` (validation stopped improving), `"epoch limit"` or
    `"time limit"`.
    """

    model: AbstractClassifier
    history: dict[str, list[float]]
    train_seconds: float
    resumed_from_epoch: int
    best_epoch: int
    stopped: str


EpochCallback = Callable[[int, dict[str, float]], None]

#: Per-epoch records. `lr` is the base rate after the plateau halvings; an update uses it
#: times the warm-up (and, with `total_steps`, cosine) factor of `make_optimizer`.
HISTORY_KEYS = (
    "loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "lr",
    "mean_steps",
    "seconds",
)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by `(seed, epoch)`."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def random_shift(images: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by up to `shift` pixels in each direction, filling with zeros.

    Training-time augmentation for images (N, C, H, W); flat features are returned unchanged.
    Zero is the mean of standardised data, so the fill adds no artificial edge.
    """
    if shift <= 0 or images.ndim != 4:
        return images
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(images.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _better(acc: float, loss: float, best: dict[str, Any]) -> bool:
    """Higher validation accuracy, or the same accuracy at a clearly lower loss."""
    if best["val_accuracy"] is None:
        return True
    return acc > best["val_accuracy"] or (
        acc == best["val_accuracy"] and loss < best["val_loss"] - 1e-3
    )


def fit(
    model: AbstractClassifier,
    optim: optax.GradientTransformation,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    shift: int = 0,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    patience: int = 8,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    checkpoint: Checkpoint | None = None,
    callback: EpochCallback | None = None,
    progress: bool | None = None,
    time_limit: float | None = None,
) -> FitResult:
    """Train with mini-batches until the validation accuracy stops improving.

    After every epoch the validation set (`x_val`, `y_val`) is scored: the best epoch's model
    is kept, the learning rate (a `learning_rate` hyperparameter of `optim`, if it has one) is
    halved after `patience // 2` epochs without improvement, and training stops after
    `patience` such epochs or `epochs` epochs. Epochs without improvement count only after
    the first `patience` epochs (a burn-in: a classifier often sits near chance for a few
    epochs before it starts to learn). Without a validation set: exactly `epochs`
    epochs, the last model kept. The held-out accuracy (`x_test`) is recorded for the curves
    only, never used to choose anything. A checkpoint is written after each epoch and
    `callback(epoch, record)` is called; a matching checkpoint is resumed from. `shift` > 0
    augments images with random translations (see `random_shift`). The last partial batch
    of each epoch is dropped. `time_limit`: no new epoch starts after this many seconds of
    training (`stopped` is then `"time limit"`; for benchmarks on a budget).
    """
    n = len(x)
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    validate = x_val is not None and y_val is not None and len(x_val) > 0
    best_model = model
    track: dict[str, Any] = {
        "val_accuracy": None,
        "val_loss": None,
        "best_epoch": 0,
        "bad": 0,
        "since_change": 0,
    }
    start_epoch, seconds = 0, 0.0
    loaded = None if checkpoint is None else checkpoint.load((model, opt_state, model))
    if loaded is not None:
        state, (model, opt_state, best_model) = loaded
        start_epoch, seconds = int(state["epoch"]), float(state["train_seconds"])
        history = {k: list(v) for k, v in state["history"].items()}
        track = dict(state["track"])
    lr0 = _get_lr(opt_state)
    lr_floor = None if lr0 is None else lr0 / MIN_LR_DIVISOR
    plateau = max(1, patience // 2)

    total, done = epochs * per_epoch, start_epoch * per_epoch
    with Progress("classify", total=total, completed=done, enabled=progress) as bar:
        epoch = start_epoch
        timed_out = False
        while epoch < epochs and not (validate and track["bad"] >= patience):
            if time_limit is not None and seconds >= time_limit:
                timed_out = True
                break
            t0 = time.perf_counter()
            order = epoch_order(n, seed, epoch)
            rng = np.random.default_rng([seed, epoch, 1])
            losses, accs, steps = [], [], []
            for b in range(per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb = random_shift(x[idx], shift, rng)
                model, opt_state, loss, acc, st = train_step(
                    model, opt_state, jnp.asarray(xb), jnp.asarray(y[idx]), optim
                )
                losses.append(loss)
                accs.append(acc)
                steps.append(st)
                bar.update(advance=1, note=f"epoch {epoch + 1}/{epochs} loss {float(loss):.3f}")
            record = {
                "loss": float(np.mean(jax.device_get(losses))),
                "train_accuracy": float(np.mean(jax.device_get(accs))),
                "mean_steps": float(np.mean(jax.device_get(steps))),
                "lr": _get_lr(opt_state),
            }
            if not np.isfinite(record["loss"]):
                raise NumericalError(
                    f"training loss became {record['loss']} in epoch {epoch + 1}; try a smaller "
                    "learning rate or tighter solver tolerances",
                    stage="classify",
                )
            epoch += 1
            if validate:
                ev = evaluate(model, x_val, y_val)
                record["val_accuracy"], record["val_loss"] = ev.accuracy, ev.loss
                improved = _better(ev.accuracy, ev.loss, track)
                if improved:
                    best_model = model
                    track.update(val_accuracy=ev.accuracy, val_loss=ev.loss, best_epoch=epoch)
                    track["bad"] = track["since_change"] = 0
                elif epoch > patience:  # a burn-in: early plateaus (near chance) are common
                    track["bad"] += 1
                    track["since_change"] += 1
                lr = record["lr"]
                if track["since_change"] >= plateau and lr is not None and lr > lr_floor * 1.001:
                    opt_state = _set_lr(opt_state, max(lr / 2, lr_floor))
                    track["since_change"] = 0
            else:
                record["val_accuracy"] = record["val_loss"] = float("nan")
                best_model, track["best_epoch"] = model, epoch
            seconds += time.perf_counter() - t0
            record["seconds"] = seconds
            if x_test is not None and y_test is not None:
                record["test_accuracy"] = evaluate(model, x_test, y_test).accuracy
            else:
                record["test_accuracy"] = float("nan")
            for k in HISTORY_KEYS:
                history[k].append(record[k])
            if checkpoint is not None:
                state = {
                    "epoch": epoch,
                    "train_seconds": seconds,
                    "history": history,
                    "track": track,
                }
                checkpoint.save(state, (model, opt_state, best_model))
            if callback is not None:
                callback(epoch, record)
    stopped = "converged" if validate and track["bad"] >= patience else "epoch limit"
    if timed_out:
        stopped = "time limit"
    return FitResult(best_model, history, seconds, start_epoch, int(track["best_epoch"]), stopped)
