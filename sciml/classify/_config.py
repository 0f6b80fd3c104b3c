"""Hyperparameters of a classifier run: one frozen record, saved beside the model."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .._config import Config

_SOLVER_NAMES = ("tsit5", "dopri5", "bosh3", "heun")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(Config):
    """Everything that decides a trained classifier, apart from the data and the seed.

    Model: `model` is "ode" (the neural ODE) or "resnet" (its discretised counterpart with
    `depth` residual blocks). `stem` adds a small convolutional (images) or affine (flat
    features) stem of `width` channels, whose stride-2 convolutions shrink images until their
    side is at most `grid`; `augment` zero channels are appended before the flow
    (augmented neural ODE); `hidden` is the width inside the vector field; `pool` the side of the
    adaptive average-pooling grid before the affine map.

    Solver: `solver` (adaptive, e.g. "tsit5") on `[0, t1]` with relative/absolute tolerances
    `rtol`/`atol` and at most `max_steps` steps; the first step tries the whole interval. The
    state is normalised by the stem (order 1, about half of it exactly 0 after the ReLU), so
    `atol` equals `rtol`: a smaller `atol` only tightens the zeros' tolerance (with 1e-4 and
    the default first step, shapes on a 4x4 grid took 3-5 steps per image, against 1-3).

    Training: AdamW at `learning_rate` (a one-epoch linear warm-up, then a cosine over
    `epochs` epochs down to 1%) with `weight_decay`, mini-batches of `batch_size`, images
    translated at random by up to `shift` pixels (augmentation; 0: none). A stratified
    `validation_fraction` of the training data is held back and scored after every epoch:
    the learning rate is halved when its accuracy has not improved for `patience // 2`
    epochs, training stops when it has not improved for `patience` epochs or after `epochs`
    epochs (the most), and the best epoch's model is kept.
    `validation_fraction` 0: no validation, exactly `epochs` epochs, the last model kept.
    `test_fraction` is the stratified held-out share when no test set is given.
    """

    model: Literal["ode", "resnet"] = "ode"
    stem: bool = True
    width: int = 32
    hidden: int = 32
    augment: int = 0
    pool: int = 2
    grid: int = 8
    depth: int = 1
    solver: str = "tsit5"
    t1: float = 1.0
    rtol: float = 1e-3
    atol: float = 1e-3
    max_steps: int = 256
    epochs: int = 60
    patience: int = 8
    validation_fraction: float = 0.1
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    shift: int = 0
    test_fraction: float = 0.2

    def problems(self) -> list[str]:
        problems = []
        if self.model not in ("ode", "resnet"):
            problems.append(f"model must be 'ode' or 'resnet', not {self.model!r}")
        if self.solver not in _SOLVER_NAMES:
            problems.append(f"solver must be one of {', '.join(_SOLVER_NAMES)}")
        for name in (
            "width",
            "hidden",
            "pool",
            "grid",
            "depth",
            "max_steps",
            "epochs",
            "patience",
            "batch_size",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1")
        if self.augment < 0 or self.shift < 0:
            problems.append("augment and shift must be non-negative")
        for name in ("t1", "rtol", "atol", "learning_rate"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"{name} must be positive")
        if not 0 <= self.validation_fraction < 1:
            problems.append("validation_fraction must lie in [0, 1)")
        if not 0 < self.test_fraction < 1:
            problems.append("test_fraction must lie strictly between 0 and 1")
        return problems
