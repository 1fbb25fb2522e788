"""The in-memory form every data source is converted to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split of a classification data set, normalised and ready for a backbone.

    Attributes:
        images: float32 array ``[N, C, H, W]``, normalised per channel with the train split's
            mean and std (see :attr:`DataSplits.mean`).
        labels: int64 array ``[N]`` with values in ``[0, num_classes)``.
        difficulty: float32 array ``[N]`` in ``[0, 1]`` (a scalar summary of how hard the image was
            made), ``NaN`` where the source has no notion of difficulty.
        difficulty_params: name -> float32 array ``[N]``: the per-image generation parameters behind
            ``difficulty`` (empty for real data).
    """

    images: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray
    difficulty_params: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DataSplits:
    """A named data set with a train and a test split.

    Attributes:
        name: a short name (``"shapes"``, ``"digits"``, ``"cifar10"``, ``"user"``, ...).
        train, test: the two :class:`Split` objects.
        num_classes: number of classes.
        mean, std: float32 arrays ``[C]`` used to normalise both splits (``raw = x * std + mean``,
            raw pixels in ``[0, 1]``).
        fingerprint: 16 hex characters identifying the exact contents (images and labels of both
            splits); checkpoints record it so a backbone is never silently used on other data.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str
    #: the optional held-out ``"val"`` split: a :class:`Split`, a zero-argument callable that builds
    #: it on first use, or ``None``. Not part of ``fingerprint`` (backbones never train on it).
    val: object = field(default=None, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(int(s) for s in self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def has_val(self) -> bool:
        """Whether this data set has a held-out ``"val"`` split."""
        return self.val is not None

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (``"train"``, ``"test"``, or ``"val"`` where there is one)."""
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        if name == "val":
            if self.val is None:
                raise ValueError(
                    f"data {self.name!r} has no 'val' split (the generated 'shapes' data and user dicts with a"
                    " 'val' key have one); choose one of ['train', 'test']"
                )
            if callable(self.val):
                object.__setattr__(self, "val", self.val())
            return self.val  # type: ignore[return-value]
        raise ValueError(f"split={name!r} is not a valid split; choose one of ['train', 'val', 'test']")


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """16-hex-digit SHA-256 of the arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
