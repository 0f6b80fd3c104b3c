"""sciml: from trajectory data to trustworthy equations.

Universal differential equations (mechanistic model + neural residual) in JAX, diffrax,
equinox and optax; symbolic distillation of the residual; continuous normalising flows; and
neural-ODE classifiers. Pure library: no Prefect here (see `pipelines/`).

From a notebook (docs/api.md):

    import sciml
    found = sciml.discover(df, "model.toml", quick=True)   # or a TOML string, a dict, None
    found.equations, found.to_latex(), found.table(), found.report("report.html")
    sciml.cnf(table, steps=500)                             # a continuous normalising flow
    sciml.classify("digits", epochs=5)                      # a neural-ODE classifier

`sciml.discover`, `sciml.cnf` and `sciml.classify` are the subpackages of those stages, made
callable: `sciml.discover(...)` runs `sciml.api.discover`, and `sciml.discover.run_discovery`
and the stage functions stay where they were. Importing sciml leaves JAX's precision alone; the
library switches to float64 where it needs it (`sciml/_precision.py`).
"""

import sys as _sys
import types as _types

from . import api, classify, cnf, discover
from ._data import Trajectory, TrajectorySet, from_arrays, load_trajectories
from ._errors import (
    DataError,
    InputError,
    ModelFileError,
    NumericalError,
    OutputDirError,
)
from ._expr import parse_expression
from ._mechanistic import MechanisticFit, fit_mechanistic, simulate
from ._model import MechanisticModel, load_model, model_from_dict
from ._precision import ensure_float64
from ._ude import UDEConfig, load_ude
from .api import Classification, DensityFit, Discovery

__version__ = "0.1.0"


def _callable_module(module: _types.ModuleType, function) -> None:
    """Make `module` callable as `function` (a module's class may be a ModuleType subclass)."""

    class CallableModule(_types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    CallableModule.__name__ = f"Callable{module.__name__.rsplit('.', 1)[-1].title()}Module"
    module.__class__ = CallableModule


_callable_module(_sys.modules[__name__ + ".discover"], api.discover)
_callable_module(_sys.modules[__name__ + ".cnf"], api.cnf)
_callable_module(_sys.modules[__name__ + ".classify"], api.classify)

__all__ = [
    "Classification",
    "DataError",
    "DensityFit",
    "Discovery",
    "InputError",
    "MechanisticFit",
    "MechanisticModel",
    "ModelFileError",
    "NumericalError",
    "OutputDirError",
    "Trajectory",
    "TrajectorySet",
    "UDEConfig",
    "api",
    "classify",
    "cnf",
    "discover",
    "ensure_float64",
    "fit_mechanistic",
    "from_arrays",
    "load_model",
    "load_trajectories",
    "load_ude",
    "model_from_dict",
    "parse_expression",
    "simulate",
]
