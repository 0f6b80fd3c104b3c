"""Content fingerprints (SHA-256): the one place that hashes files, arrays and settings.

Used for cache keys, for the input digests a run records (`config.json`'s `data_sha256`) and for
checkpoints, whose fingerprint says which settings and data they belong to.

    fp = Fingerprint().json(config.to_dict()).array(x).text(f"seed={seed}")
    fp.hexdigest(16)

An array contributes its dtype and shape as well as its bytes, so `zeros(4)` and `zeros((2, 2))`
differ; `file_digest(path)` is the plain SHA-256 of a file's bytes (what `sha256sum` prints).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

_BLOCK = 1 << 20


class Fingerprint:
    """An incremental SHA-256 over text, JSON values, arrays and files (each part delimited,
    so that `text("ab").text("c")` and `text("a").text("bc")` differ)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def _part(self, tag: bytes, payload: bytes) -> Fingerprint:
        self._h.update(tag + len(payload).to_bytes(8, "little") + payload)
        return self

    def text(self, value: str) -> Fingerprint:
        return self._part(b"t", value.encode())

    def bytes(self, value: bytes) -> Fingerprint:
        return self._part(b"b", bytes(value))

    def json(self, value: Any) -> Fingerprint:
        """A JSON-able value, keys sorted (anything else by its `str`)."""
        return self._part(b"j", canonical_json(value).encode())

    def array(self, value: Any, dtype: Any = None) -> Fingerprint:
        """An array's dtype, shape and bytes (`dtype`: convert first, e.g. `np.float64`)."""
        a = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self._part(b"a", f"{a.dtype.str}{a.shape}".encode())
        return self._part(b"d", a.tobytes())

    def file(self, path: str | os.PathLike[str]) -> Fingerprint:
        """A file's SHA-256 (its content, not its name)."""
        return self._part(b"f", file_digest(path).encode())

    def hexdigest(self, length: int | None = None) -> str:
        """The hex digest, or its first `length` characters."""
        return self._h.hexdigest()[:length]


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys (non-JSON values by their `str`): stable across runs."""
    return json.dumps(value, sort_keys=True, default=str)


def json_digest(value: Any, length: int | None = None) -> str:
    """SHA-256 of `canonical_json(value)` (hex, optionally its first `length` characters)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def bytes_digest(data: bytes) -> str:
    """SHA-256 of `data`, hex."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex (read in blocks: any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
