"""Caching of the discovery stages with Prefect's own machinery.

A stage's cache key is Prefect's `CompoundCachePolicy` of three parts:

- `StageInputs`: what the stage computes from. The data and model files by content (the SHA-256
  the ingest task took), the run's settings (minus those that cannot change this stage's
  result), the engine of a symbolic task, and the upstream stages' results by path (their
  folders are named by their own keys, so a re-trained UDE gives its dense samples a new key).
  The results folder and the timings are left out.
- `LibrarySource`: the source files of the library (`sciml/**/*.py`) and the versions of the
  numerical packages it runs on. Editing any of it trains again.
- Prefect's `TASK_SOURCE`: the task function's own source.

Records are Prefect's result records (JSON) in `RESULTS/.prefect/<key>`. Transactions are
`SERIALIZABLE` with a lock per key in `RESULTS/.locks/` (`LockManager`, a file-system lock
manager that also takes over a lock whose holder process on this host is gone), so that two
runs sharing a results folder never compute one key twice: the second waits for the first and
reads its record.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic_core
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.transactions import IsolationLevel, get_transaction

RECORDS = ".prefect"  # Prefect's result records (JSON), one file per cache key
LOCKS = ".locks"  # one lock file per key while a run computes it

# Settings that do not change a stage's result: left out of its key.
NOT_IN_KEY = frozenset({"engines"})
# The ensemble's size changes only the stages that use it (the ensemble and the selection).
NOT_IN_STAGE_KEY = {
    "mechanistic-fit": frozenset({"ude", "ensemble"}),
    "ude-training": frozenset({"ensemble"}),
    "dense-sampling": frozenset({"ensemble"}),
    "symbolic-regression": frozenset({"ensemble"}),
}
# Parameters that are not inputs of the computation.
NOT_INPUTS = frozenset({"results", "timings"})
# Packages whose versions change numerical results.
NUMERICS = (
    "jax",
    "jaxlib",
    "diffrax",
    "equinox",
    "optax",
    "optimistix",
    "numpy",
    "scipy",
    "pysindy",
    "pyoperon",
    "pysr",
    "sympy",
)
LIBRARY: Path | None = None  # the library's source folder; None: where `sciml` is installed


def _digest(obj: Any) -> str:
    from sciml.io import json_digest

    return json_digest(obj)


def stage_payload(stage: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stage task's parameters its result depends on (see the module's doc)."""
    payload: dict[str, Any] = {"stage": stage}
    for name, value in parameters.items():
        if name in NOT_INPUTS:
            continue
        if name == "inputs":
            value = {"data": value["data_sha256"], "model": value["model_sha256"]}
        elif name == "config":
            skip = NOT_IN_KEY | NOT_IN_STAGE_KEY.get(stage, frozenset())
            value = {k: v for k, v in value.items() if k not in skip}
        elif name == "engines":  # the selection: which engines gave which candidates
            value = [(e["engine"], e["candidates"]) for e in value]
        payload[name] = value
    return payload


@dataclass
class StageInputs(CachePolicy):
    """Key part: the stage's inputs (files by content, settings, upstream results)."""

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        return _digest(stage_payload(task_ctx.task.name, inputs))


def source_digest(root: str | Path, packages: Iterable[str] = ()) -> str:
    """SHA-256 over every `*.py` file under `root` (relative path and content) and the
    installed versions of `packages`."""
    from sciml.io import Fingerprint

    root = Path(root)
    h = Fingerprint()
    for path in sorted(root.rglob("*.py")):
        h.text(str(path.relative_to(root))).bytes(path.read_bytes())
    for name in packages:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.text(f"{name}=={version}")
    return h.hexdigest()


@dataclass
class LibrarySource(CachePolicy):
    """Key part: the library's source files and the versions of its numerical packages."""

    root: Path | None = None  # default: `LIBRARY`, or the installed `sciml` package
    packages: tuple[str, ...] = NUMERICS

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        return source_digest(self.root or LIBRARY or _installed("sciml"), self.packages)


def _installed(package: str) -> Path:
    """The folder of an installed package, without importing it."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(package)
    return Path(spec.origin).parent


class LockManager(FileSystemLockManager):
    """Prefect's file-system lock manager, safe between processes and after a kill.

    A lock file is created whole (written aside, then hard-linked into place, which fails if
    one exists), so no reader sees a half-written one; it records the holder's host and process
    id, and a lock whose process on this host is gone (a killed run) is taken over.
    """

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        if use_cache and (info := self._locks.get(key)) is not None:
            return info
        path = self._lock_path_for_key(key)
        try:
            info = pydantic_core.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:  # written by something else, or damaged: held, by nobody we know
            info = {"holder": "", "expiration": None}
        info.update(path=path, expiration=None)  # held until released (or its process dies)
        if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
            path.unlink(missing_ok=True)  # its run was killed
            self._locks.pop(key, None)
            return None
        self._locks[key] = info
        return info

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        self._ensure_lock_files_directory_exists()
        path = self._lock_path_for_key(key)
        body = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid()}
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(pydantic_core.to_json(body))
        try:
            while True:
                if self.is_locked(key) and not self.is_lock_holder(key, holder):
                    if not self.wait_for_lock(key, acquire_timeout):
                        return False
                try:
                    os.link(tmp, path)  # atomic: fails when another holder got there first
                except FileExistsError:
                    if self.is_lock_holder(key, holder):
                        return True  # already ours
                    continue
                self._locks[key] = {**body, "expiration": None, "path": path}
                return True
        finally:
            tmp.unlink(missing_ok=True)

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)


def _pid_alive(pid: Any) -> bool:
    from sciml.io import pid_alive

    return not isinstance(pid, int) or pid_alive(pid)


def stage_policy(results: str | Path, library: CachePolicy | None = None) -> CachePolicy:
    """The cache policy of a discovery stage whose records live in the results folder."""
    library = library if library is not None else LibrarySource()
    policy = StageInputs() + library + TASK_SOURCE
    return policy.configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=LockManager(Path(results).resolve() / LOCKS),
    )


def stage_dir(results: str | Path, stage: str) -> Path:
    """`RESULTS/<stage>-<key>`: where a stage task writes its files, named by the running
    transaction's key (the cache key); outside a task run (`.fn()` in tests), a fresh name."""
    txn = get_transaction()
    key = txn.key if txn is not None and txn.key else f"uncached-{uuid.uuid4().hex}"
    return Path(results) / f"{stage}-{key[:32]}"
