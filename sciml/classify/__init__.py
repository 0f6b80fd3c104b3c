"""Neural-ODE image classifier (and its discretised counterpart, a ResNet baseline).

    x --stem--> y(0) --> dy/dt = f_theta(t, y) on [0, t1] (adaptive diffrax solve) --> pool,
    affine --> softmax

Public API: `run_classify` (the stage: data in, model, metrics and figures out), the models
(`ODEClassifier`, `ResNetClassifier`, `make_classifier`), training pieces (`fit`,
`train_step`, `evaluate`, `make_optimizer`) and data helpers (`load_npz`, `load_digits`).
"""

from ._config import ClassifierConfig
from ._data import ImageSet, Standardiser, load_digits, load_npz, stratified_split, validate
from ._models import (
    AbstractClassifier,
    AbstractField,
    AbstractStem,
    Conv3x3,
    ConvField,
    ConvStem,
    Head,
    IdentityStem,
    LinearStem,
    MLPField,
    ODEBlock,
    ODEClassifier,
    ResNetClassifier,
    count_params,
    make_classifier,
)
from ._run import (
    DATASETS,
    DIGITS_CONFIG,
    TrainedClassifier,
    default_config,
    load_classifier,
    run_classify,
)
from ._synthetic import make_image_set
from ._train import (
    Checkpoint,
    Evaluation,
    FitResult,
    evaluate,
    fit,
    make_optimizer,
    random_shift,
    train_step,
)

__all__ = [
    "DATASETS",
    "DIGITS_CONFIG",
    "AbstractClassifier",
    "AbstractField",
    "AbstractStem",
    "Checkpoint",
    "ClassifierConfig",
    "Conv3x3",
    "ConvField",
    "ConvStem",
    "Evaluation",
    "FitResult",
    "Head",
    "IdentityStem",
    "ImageSet",
    "LinearStem",
    "MLPField",
    "ODEBlock",
    "ODEClassifier",
    "ResNetClassifier",
    "Standardiser",
    "TrainedClassifier",
    "count_params",
    "default_config",
    "evaluate",
    "fit",
    "load_classifier",
    "load_digits",
    "load_npz",
    "make_classifier",
    "make_image_set",
    "make_optimizer",
    "random_shift",
    "run_classify",
    "stratified_split",
    "train_step",
    "validate",
]
