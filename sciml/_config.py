"""One config pattern for every stage: frozen dataclasses validated at construction.

A stage's settings are a frozen dataclass that inherits `Config`:

    @dataclasses.dataclass(frozen=True)
    class UDEConfig(Config):
        width: int = 32
        ...
        def problems(self) -> list[str]:
            return ["width must be at least 1"] if self.width < 1 else []

Construction runs `problems()` and raises `InputError` naming the class and every problem, so an
invalid config never exists. `to_dict()` gives plain JSON-ready values; `from_dict()` is its
inverse (lists back to tuples, nested configs rebuilt, unknown keys refused by name);
`digest(*extra)` is a short stable hash for cache keys and checkpoints; `replace(**changes)`
validates again. Pydantic models in `pipelines/` only describe these for Prefect's forms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Self

from ._errors import InputError


class Config:
    """Base of the library's settings records (see the module docstring)."""

    def problems(self) -> list[str]:
        """Every way the settings are invalid, as short phrases naming the field."""
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError(f"{type(self).__name__}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """The config that `to_dict` wrote (e.g. a run's `config.json`); unknown keys refused."""
        if not isinstance(d, Mapping):
            raise InputError(f"{cls.__name__}: expected a table of settings, got {d!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InputError(
                f"{cls.__name__}: unknown setting(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(fields)}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            default = _default(fields[name])
            if isinstance(default, Config) and isinstance(value, Mapping):
                value = type(default).from_dict(value)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def digest(self, *extra: object) -> str:
        """A short stable hash of the settings and `extra` (seed, data fingerprint, ...)."""
        text = json.dumps([self.to_dict(), *extra], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None
