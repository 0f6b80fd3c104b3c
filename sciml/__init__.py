"""sciml: from trajectory data to trustworthy equations.

Universal differential equations (mechanistic model + neural residual) in JAX, diffrax,
equinox and optax; symbolic distillation of the residual; continuous normalising flows; and
neural-ODE classifiers. Pure library: no Prefect here (see `pipelines/`).
"""

import jax

jax.config.update("jax_enable_x64", True)  # ODE fitting wants float64; set once, at import

from ._data import Trajectory, TrajectorySet, from_arrays, load_trajectories  # noqa: E402
from ._errors import (  # noqa: E402
    DataError,
    InputError,
    ModelFileError,
    NumericalError,
    OutputDirError,
)
from ._expr import parse_expression  # noqa: E402
from ._mechanistic import MechanisticFit, fit_mechanistic, simulate  # noqa: E402
from ._model import MechanisticModel, load_model, model_from_dict  # noqa: E402
from ._ude import load_ude  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "InputError",
    "MechanisticFit",
    "MechanisticModel",
    "ModelFileError",
    "NumericalError",
    "OutputDirError",
    "Trajectory",
    "TrajectorySet",
    "fit_mechanistic",
    "from_arrays",
    "load_model",
    "load_trajectories",
    "load_ude",
    "model_from_dict",
    "parse_expression",
    "simulate",
]
