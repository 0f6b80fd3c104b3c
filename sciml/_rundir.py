"""An output folder that one run owns at a time."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ._errors import OutputDirError

LOCK = ".sciml.lock"
TEMPORARY = ".*.tmp"  # `sciml._io.atomic_path`'s temporary files

# Locks this process holds: dropped by `release_all` when the process must exit at once
# (`pipelines._signals.hard_stop`), where no `finally` block runs.
_held: set[Path] = set()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_directory(path: str | os.PathLike[str], *, clear: tuple[str, ...] = ()) -> Iterator[Path]:
    """Create `path` if needed and hold it for this process.

    A second run into a folder in use is refused (`OutputDirError`); a lock left by a killed
    run (its process gone) is taken over. Files named in `clear` are removed on entry, so that a
    failed re-run never leaves the previous run's results looking like its own, and so are
    temporary files that a killed writer left (`.NAME.*.tmp`, see `sciml._io.atomic_path`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except OSError as err:
            if err.errno != errno.EEXIST:
                raise OutputDirError(f"{path}: cannot write here ({err.strerror})") from None
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid_alive(pid):
                raise OutputDirError(
                    f"{path}: another run (process {pid}) is writing into this folder"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise OutputDirError(f"{path}: cannot take the folder's lock")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    _held.add(lock)
    try:
        for name in clear:
            (path / name).unlink(missing_ok=True)
        for tmp in path.glob(TEMPORARY):  # left by a writer that was killed (SIGKILL)
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
        yield path
    finally:
        _held.discard(lock)
        lock.unlink(missing_ok=True)


def release_all() -> None:
    """Drop the locks this process holds (on an immediate exit: the `finally` blocks do not run)."""
    for lock in list(_held):
        try:
            mine = lock.read_text().strip() == str(os.getpid())
        except OSError:
            mine = False
        if mine:
            lock.unlink(missing_ok=True)
        _held.discard(lock)
