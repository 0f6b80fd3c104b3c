"""Image (or flat-feature) classification data: loading, validation, split, standardisation.

An NPZ file holds `images` with shape (N, C, H, W), (N, H, W) (one channel) or (N, D) (flat
features), and integer `labels` with shape (N,). Every refusal is a `DataError` whose message
names the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np

from .._errors import DataError
from .._fingerprint import Fingerprint


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Validated samples: `images` float32 (N, C, H, W) or (N, D); `labels` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def fingerprint(self) -> str:
        return Fingerprint().array(self.images).array(self.labels).hexdigest(16)

    def subset(self, index: np.ndarray, source: str | None = None) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], source or self.source)


def validate(images: object, labels: object, source: str) -> ImageSet:
    """Check arrays from `source` (a file name or a data-set name); return an `ImageSet`."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype == object or not (
        np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_
    ):
        raise DataError(f"{source}: key 'images' must be numeric, not dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.complexfloating):
        raise DataError(f"{source}: key 'images' must be real, not complex")
    if images.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: key 'images' must have shape (N, C, H, W), (N, H, W) or (N, D); "
            f"got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{source}: key 'labels' must be one-dimensional; got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{source}: shape mismatch: 'images' has {len(images)} samples "
            f"but 'labels' has {len(labels)}"
        )
    if len(labels) == 0:
        raise DataError(f"{source}: no samples in 'images' and 'labels'")
    if images.ndim == 3:
        images = images[:, None]
    images = images.astype(np.float32)
    bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: key 'images' holds NaN or infinite values in {int(bad.sum())} "
            f"sample(s), first at index {first}"
        )
    labels = _integer_labels(labels, source)
    return ImageSet(images, labels, source)


def _integer_labels(labels: np.ndarray, source: str) -> np.ndarray:
    if labels.dtype == np.bool_:
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        finite = np.isfinite(labels)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{source}: key 'labels' holds NaN or infinity (index {first})")
        if np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        first = int(np.flatnonzero(labels != np.round(labels))[0])
        raise DataError(
            f"{source}: key 'labels' must hold integers; index {first} is {labels[first]!r}"
        )
    raise DataError(f"{source}: key 'labels' must hold integers, not dtype {labels.dtype}")


def load_npz(path: str | os.PathLike[str]) -> ImageSet:
    """Read and validate an NPZ file with `images` and `labels` (no pickles are loaded)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an NPZ archive (a single .npy array?)")
            keys = list(npz.keys())
            for key in ("images", "labels"):
                if key not in keys:
                    found = ", ".join(keys) if keys else "none"
                    raise DataError(f"{path}: key '{key}' missing (keys found: {found})")
            images, labels = _read_key(npz, "images", path), _read_key(npz, "labels", path)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read as NPZ ({type(err).__name__}: {err})") from err
    return validate(images, labels, str(path))


def _read_key(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as err:  # object arrays need pickles, which we refuse
        raise DataError(f"{path}: key '{key}' is not a numeric array ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: key '{key}' is unreadable ({err})") from err


def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download)."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return validate(bunch.images[:, None], bunch.target, "digits")


def stratified_split(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split into train and held-out sets with the class proportions of `data`."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(data.labels, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts.argmin()]
        raise DataError(
            f"{data.source}: class {rare} of key 'labels' has a single sample; a stratified "
            "held-out split needs at least two per class (or pass a test file)"
        )
    n_test = max(len(classes), round(test_fraction * len(data)))
    if len(data) - n_test < len(classes):
        raise DataError(f"{data.source}: too few samples ({len(data)}) to hold out a test set")
    train_idx, test_idx = train_test_split(
        np.arange(len(data)), test_size=n_test, stratify=data.labels, random_state=seed
    )
    return (
        data.subset(np.sort(train_idx), f"{data.source} (train split)"),
        data.subset(np.sort(test_idx), f"{data.source} (held-out split)"),
    )


def encode_labels(train: ImageSet, test: ImageSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels to 0..K-1 by the classes of the training set; returns (classes, y_tr, y_te)."""
    classes = np.unique(train.labels)
    if len(classes) < 2:
        raise DataError(
            f"{train.source}: key 'labels' holds a single class ({classes[0]}); "
            "classification needs at least two"
        )
    if train.sample_shape != test.sample_shape:
        raise DataError(
            f"{test.source}: shape mismatch: 'images' samples have shape {test.sample_shape}, "
            f"the training samples {train.sample_shape}"
        )
    unseen = np.setdiff1d(np.unique(test.labels), classes)
    if len(unseen):
        raise DataError(
            f"{test.source}: key 'labels' holds classes not in the training data: "
            f"{', '.join(map(str, unseen[:10]))}"
        )
    return classes, np.searchsorted(classes, train.labels), np.searchsorted(classes, test.labels)


@dataclasses.dataclass(frozen=True)
class Standardiser:
    """Per-channel (images) or per-feature (flat) centring and scaling, fitted on training data."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, images: np.ndarray) -> Standardiser:
        axes = (0, 2, 3) if images.ndim == 4 else (0,)
        mean = images.mean(axis=axes, dtype=np.float64)
        std = images.std(axis=axes, dtype=np.float64)
        std = np.where(std > 1e-8, std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        shape = (1, -1, 1, 1) if images.ndim == 4 else (1, -1)
        out = (images - self.mean.reshape(shape)) / self.std.reshape(shape)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Standardiser:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))
