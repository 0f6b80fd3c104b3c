"""Errors that the command line maps to exit codes.

`InputError` (and its subclasses) means the user gave something we refuse: the CLI prints the
message, which names the file, column, row or key, and exits with code 2. Anything else is a bug
or a numerical failure and exits with code 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a data file, a model file, a setting. CLI exit code 2."""


class DataError(InputError):
    """A trajectory or tabular data file is missing, unreadable or invalid."""


class ModelFileError(InputError):
    """A model file is missing, unreadable, or declares something we refuse."""


class OutputDirError(InputError):
    """The output folder cannot be used (e.g. another run is writing into it)."""


class NumericalError(RuntimeError):
    """An ODE solve diverged or hit its step limit, or a loss became NaN.

    Carries the stage and, where known, the trajectory so that the message says where.
    """

    def __init__(self, message: str, *, stage: str, trajectory: str | None = None):
        where = f"[{stage}]" + (f" trajectory {trajectory!r}" if trajectory is not None else "")
        super().__init__(f"{where}: {message}")
        self.stage = stage
        self.trajectory = trajectory
