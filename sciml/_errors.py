"""Errors that the command line maps to exit codes.

`InputError` (and its subclasses) means the user gave something we refuse: the CLI prints the
message, which names the file, column, row or key, and exits with code 2. `NumericalError` means
the data and model were valid but the numerics failed (an ODE that cannot be integrated, a loss
that became NaN): the CLI prints its one-line message, which names the stage, the trajectory and
what to try, and exits with code 3; the traceback goes to `run.log` only. Anything else is a bug
and exits with code 1.
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
    """An ODE solve diverged or hit its step limit, or a loss became NaN. CLI exit code 3.

    Carries the stage, where known the trajectory, and what to try (`hint`), so that the
    message says where it happened and what the user can change.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        trajectory: str | None = None,
        hint: str | None = None,
    ):
        where = f"[{stage}]" + (f" trajectory {trajectory!r}" if trajectory is not None else "")
        super().__init__(f"{where}: {message}" + (f"; try {hint}" if hint else ""))
        self.stage = stage
        self.trajectory = trajectory
        self.hint = hint

    def __reduce__(self):  # survives pickling (Prefect results, Dask workers)
        return _rebuild_numerical_error, (str(self), self.stage, self.trajectory, self.hint)


def _rebuild_numerical_error(text, stage, trajectory, hint):
    err = NumericalError.__new__(NumericalError)
    RuntimeError.__init__(err, text)
    err.stage, err.trajectory, err.hint = stage, trajectory, hint
    return err
