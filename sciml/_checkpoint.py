"""Resumable training state: one checkpoint format for the UDE, the CNF and the classifier.

A checkpoint `NAME` is the file `NAME.eqx`, replaced atomically (written beside, then renamed),
which holds a manifest, the training state (JSON) and the arrays (equinox leaves):

    b"SCIMLCKP" | manifest length (8 bytes, little-endian) | manifest (JSON) | state | arrays

The manifest names the format, the fingerprint of the settings and data the run belongs to,
and the length and SHA-256 of the state and of the arrays. One rename publishes all of them,
so whenever the process is killed, the file on disk is the previous checkpoint or the new one,
never arrays of one step with the progress of another. On load every hash is checked.
`NAME.json` repeats the state (and, under `manifest`, the manifest) for people and tools; it
is never loaded.

`load` returns None when there is no checkpoint or when it belongs to other settings or data
(the run starts afresh and its first save replaces it); a file that is not a checkpoint, is
damaged, or does not fit the current model raises `CheckpointError`, which names the file and
says to delete it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx

from ._errors import InputError
from ._fingerprint import bytes_digest
from ._io import _default, atomic_path, write_json

MAGIC = b"SCIMLCKP"
FORMAT = 1


class CheckpointError(InputError):
    """A checkpoint file that cannot be resumed from (damaged, truncated, not a checkpoint, or
    of arrays that do not fit the model). The message names the file."""


def _state_bytes(state: dict[str, Any]) -> bytes:
    # Python's JSON keeps inf and NaN (as `Infinity`, `NaN`), so the state round-trips exactly.
    return json.dumps(state, default=_default, allow_nan=True).encode()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The checkpoint `path` (`.eqx` added) of the run whose settings and data hash to
    `fingerprint` (see `sciml._fingerprint`)."""

    path: Path
    fingerprint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ValueError("a checkpoint needs a non-empty fingerprint")

    @property
    def file(self) -> Path:
        return self.path.with_name(self.path.name + ".eqx")

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def exists(self) -> bool:
        return self.file.exists()

    def save(self, state: dict[str, Any], arrays: Any) -> None:
        """Replace the checkpoint by `state` (JSON-able, non-finite floats allowed) and
        `arrays` (a pytree of arrays, e.g. model, optimiser state)."""
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, arrays)
        blob, text = buf.getvalue(), _state_bytes(state)
        manifest = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "state": {"bytes": len(text), "sha256": bytes_digest(text)},
            "arrays": {"bytes": len(blob), "sha256": bytes_digest(blob)},
        }
        head = json.dumps(manifest).encode()
        with atomic_path(self.file) as tmp:
            with open(tmp, "wb") as f:
                f.write(MAGIC + len(head).to_bytes(8, "little") + head + text + blob)
        write_json(self.sidecar, {**state, "manifest": manifest})

    def load(self, like: Any) -> tuple[dict[str, Any], Any] | None:
        """`(state, arrays)` of the checkpoint, `arrays` shaped as `like`; None when there is
        none or it belongs to another fingerprint. Raises `CheckpointError` when it is
        damaged or does not fit `like`."""
        try:
            raw = self.file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._error(f"cannot be read ({err.strerror or err})") from None
        manifest, text, blob = self._split(raw)
        if manifest.get("fingerprint") != self.fingerprint:
            return None  # another run's settings or data
        for name, part in (("state", text), ("arrays", blob)):
            if bytes_digest(part) != manifest[name]["sha256"]:
                raise self._error(f"its {name} do not match the SHA-256 in its manifest")
        try:
            state = json.loads(text)
            arrays = eqx.tree_deserialise_leaves(io.BytesIO(blob), like)
        except (ValueError, RuntimeError, TypeError, KeyError) as err:
            raise self._error(f"its arrays do not fit this model ({err})") from None
        return state, arrays

    def remove(self) -> None:
        remove(self.path)

    def _split(self, raw: bytes) -> tuple[dict[str, Any], bytes, bytes]:
        if not raw.startswith(MAGIC):
            raise self._error("is not a sciml checkpoint (or of an older format)")
        start = len(MAGIC) + 8
        size = int.from_bytes(raw[len(MAGIC) : start], "little")
        try:
            manifest = json.loads(raw[start : start + size])
            n_state, n_arrays = manifest["state"]["bytes"], manifest["arrays"]["bytes"]
            version = manifest["format"]
        except (ValueError, KeyError, TypeError):
            raise self._error("has a damaged manifest") from None
        if version != FORMAT:
            raise self._error(f"has format {version!r}; this version reads format {FORMAT}")
        body = raw[start + size :]
        if len(body) != n_state + n_arrays:
            raise self._error(
                f"is truncated or padded ({len(body)} bytes after the manifest, "
                f"{n_state + n_arrays} expected)"
            )
        return manifest, body[:n_state], body[n_state:]

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.file}: checkpoint {what}; delete it (and {self.sidecar.name}) to start "
            "training afresh"
        )


def remove(path: str | os.PathLike[str]) -> None:
    """Remove checkpoint `path` (`.eqx` and `.json`), if there is one."""
    path = Path(path)
    for suffix in (".eqx", ".json"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training state in checkpoint `path` (`.eqx` added), for people and tests; None
    when there is none. Not verified against a fingerprint."""
    ckpt = Checkpoint(Path(path), "-")
    try:
        raw = ckpt.file.read_bytes()
    except FileNotFoundError:
        return None
    _, text, _ = ckpt._split(raw)
    return json.loads(text)
