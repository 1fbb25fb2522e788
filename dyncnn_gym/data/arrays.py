"""Validation, layout conversion, splitting and normalisation shared by every data source.

Every source first produces two :class:`RawSplit` objects (images in NCHW layout, uint8 0..255 or
float32 in the source's own scale, not yet normalised); :func:`build_splits` then normalises both
with the train split's per-channel mean and std and wraps them in a :class:`DataSplits`.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import DataSplits, Split, fingerprint_arrays

#: Smallest std used to normalise a channel (a constant channel is centred, not blown up).
STD_FLOOR = 1e-6


@dataclass(frozen=True)
class RawSplit:
    """One split before normalisation.

    Attributes:
        images: ``[N, C, H, W]``, uint8 (0..255, meaning ``value / 255``) or float32 (as given).
        labels: int64 ``[N]``.
        difficulty: float32 ``[N]`` in ``[0, 1]`` or NaN.
        difficulty_params: name -> float32 ``[N]``.
    """

    images: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray | None = None
    difficulty_params: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def with_difficulty(self) -> RawSplit:
        """Return self with ``difficulty`` filled with NaN when it is missing."""
        if self.difficulty is not None:
            return self
        nan = np.full(len(self), np.nan, dtype=np.float32)
        return RawSplit(self.images, self.labels, nan, dict(self.difficulty_params))

    def head(self, n: int | None) -> RawSplit:
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        d = None if self.difficulty is None else self.difficulty[:n]
        params = {k: v[:n] for k, v in self.difficulty_params.items()}
        return RawSplit(self.images[:n], self.labels[:n], d, params)


# --------------------------------------------------------------------------- conversion


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """ndarray from an ndarray, a torch tensor, or a nested sequence."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise TypeError(f"{what} of type {type(x).__name__} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object:
        raise TypeError(
            f"{what} of type {type(x).__name__} is not a numeric array (got dtype=object; "
            "ragged sequences or mixed types are not supported)"
        )
    return arr


#: largest pixel magnitude accepted from user images (uint8, [0, 1] floats and 16-bit values are far below)
MAX_PIXEL = 1e6


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 4-D image array of ``shape`` is read as channels-last ``[N, H, W, C]``: its last
    dimension is smaller than both dimensions 1 and 2 (e.g. ``[N, 32, 32, 3]``, ``[N, 28, 28, 1]``,
    ``[N, 32, 32, 2]``); every other 4-D array is ``[N, C, H, W]``."""
    return len(shape) == 4 and shape[3] < shape[1] and shape[3] < shape[2]


def as_images(x: Any, what: str = "images") -> np.ndarray:
    """Convert user images to ``[N, C, H, W]`` uint8 or float32, validating them.

    Accepted layouts: ``[N, H, W]`` (grayscale, C = 1); ``[N, H, W, C]`` (channels-last), recognised
    by :func:`channels_last` (the last dimension is smaller than both others) and transposed with a
    warning that says so; every other 4-D array is taken as ``[N, C, H, W]``. uint8 stays uint8 (it
    means 0..255 -> 0..1); bool, other integer and float dtypes become float32 values as given.

    Raises:
        TypeError: not numeric, or not 3-D/4-D.
        ValueError: empty; NaN/inf values; or values beyond +-:data:`MAX_PIXEL` (they would swamp the
            per-channel normalisation, turning every other pixel into 0).
    """
    arr = _to_numpy(x, what)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise TypeError(f"{what} has dtype={arr.dtype}; expected uint8, another integer or a float dtype")
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    elif arr.ndim == 4:
        if channels_last(arr.shape):
            warnings.warn(
                f"{what} of shape {tuple(arr.shape)} read as channels-last [N, H, W, C] with C={arr.shape[3]}"
                f" (its last dimension is the smallest) and transposed to [N, C, H, W] = {(arr.shape[0], arr.shape[3], *arr.shape[1:3])};"
                " pass [N, C, H, W] arrays to skip this guess",
                stacklevel=2,
            )
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise TypeError(
            f"{what} has shape={tuple(arr.shape)} ({arr.ndim}-D); expected [N, H, W], [N, H, W, C] or [N, C, H, W]"
        )
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape={tuple(arr.shape)}); need at least one non-empty image")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise ValueError(
                f"{what} contains {int((~finite).sum())} non-finite values (NaN/inf), first {arr[tuple(bad)].item()!r} "
                f"in image {int(bad[0])}; images must be finite"
            )
    if arr.dtype != np.bool_:
        big = np.abs(arr.astype(np.float64)) > MAX_PIXEL
        if big.any():
            bad = np.argwhere(big)[0]
            raise ValueError(
                f"{what} contains {int(big.sum())} values beyond +-{MAX_PIXEL:g}, first {arr[tuple(bad)].item()!r} in image"
                f" {int(bad[0])}; pixel values must be uint8 0..255 or numbers in their own scale (e.g. [0, 1] or 0..255),"
                " since one huge value swamps the normalisation and turns every other pixel into 0"
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_labels(y: Any, what: str = "labels") -> np.ndarray:
    """Convert labels to int64 ``[N]``: integer dtypes, bools, or floats with integral values.

    Raises:
        TypeError: not 1-D (a trailing size-1 dim is squeezed) or not numeric.
        ValueError: empty, non-integer or negative values.
    """
    arr = _to_numpy(y, what)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise TypeError(f"{what} has shape={tuple(arr.shape)}; expected a 1-D array of class indices")
    if arr.size == 0:
        raise ValueError(f"{what} is empty; need at least one label")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{what} must be integer class indices; got non-integer value {arr[i].item()!r} at index {i}")
        out = arr.astype(np.int64)
    else:
        raise TypeError(f"{what} has dtype={arr.dtype}; expected integer class indices")
    if (out < 0).any():
        i = int(np.argmax(out < 0))
        raise ValueError(f"{what} must be in [0, num_classes); got negative label {int(out[i])} at index {i}")
    return out


def check_labels_in_range(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
    """Raise ValueError naming the first label outside ``[0, num_classes)``."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{what} must be in [0, {num_classes}); got label {int(labels[i])} at index {i}")


def infer_num_classes(*label_arrays: np.ndarray) -> int:
    """``max label + 1`` over all arrays; raises ValueError when that is below 2."""
    k = int(max(int(a.max()) for a in label_arrays)) + 1
    if k < 2:
        raise ValueError(f"labels describe num_classes={k} (max label + 1); a classification data set needs >= 2 classes")
    return k


def make_raw(images: Any, labels: Any, what: str) -> RawSplit:
    """Validate and pair images and labels of one split."""
    x = as_images(images, f"{what} images")
    y = as_labels(labels, f"{what} labels")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what} images and labels have mismatched lengths: {x.shape[0]} images vs {y.shape[0]} labels")
    return RawSplit(x, y)


# --------------------------------------------------------------------------- splitting


def check_test_fraction(test_fraction: Any) -> float:
    """Return ``test_fraction`` as float; ValueError unless it is a real number in (0, 1)."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise ValueError(f"test_fraction={test_fraction!r} must be a number in the open interval (0, 1)")
    f = float(test_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must be in the open interval (0, 1)")
    return f


#: ``val_fraction="auto"`` carves a held-out ``"val"`` split only out of a train split of at least this
#: many images: below it, every image is worth more to the backbone (on the 1 438 train images of
#: digits a 20 % hold-out cost the backbone 0.84 points of test accuracy)
AUTO_VAL_MIN_TRAIN = 5000
#: the share of the train split ``val_fraction="auto"`` holds out
AUTO_VAL_FRACTION = 0.1


def check_val_fraction(val_fraction: Any) -> float | str:
    """``val_fraction`` as ``"auto"`` or a float in [0, 1); ValueError naming the value otherwise."""
    if isinstance(val_fraction, str) and val_fraction == "auto":
        return val_fraction
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be 'auto' or a number in [0, 1) (0: no held-out split)")
    return float(val_fraction)


def hold_out(train: RawSplit, val_fraction: float | str, seed: int) -> tuple[RawSplit, RawSplit | None]:
    """Carve a held-out ``"val"`` split out of ``train`` (stratified and seeded as
    :func:`stratified_split_indices`): ``val_fraction`` of each class, or with ``"auto"``
    :data:`AUTO_VAL_FRACTION` when ``train`` holds at least :data:`AUTO_VAL_MIN_TRAIN` images and
    nothing otherwise. Returns (the train split left, val or ``None``)."""
    if val_fraction == "auto":
        val_fraction = AUTO_VAL_FRACTION if len(train) >= AUTO_VAL_MIN_TRAIN else 0.0
    if val_fraction == 0.0:
        return train, None
    try:
        return split_raw(train, float(val_fraction), seed)
    except ValueError:
        raise ValueError(
            f"val_fraction={val_fraction!r} holds out no image of the {len(train)} train images; pass a larger"
            " val_fraction, or 0 for no held-out split"
        ) from None


def stratified_split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``range(len(labels))`` into (train, test) indices.

    ``perm = np.random.default_rng(seed).permutation(N)``; for each class ``c`` with ``n_c`` examples,
    the first ``k_c = min(round(test_fraction * n_c), n_c - 1)`` of its examples in ``perm`` order go to
    test (so every class keeps at least one training example), the rest to train. Both index
    arrays keep ``perm`` order (classes interleaved, shuffled).

    Raises:
        ValueError: if either split would be empty.
    """
    n = labels.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    lab = labels[perm]
    is_test = np.zeros(n, dtype=bool)
    for c in np.unique(lab):
        pos = np.nonzero(lab == c)[0]
        k = min(int(round(test_fraction * pos.size)), pos.size - 1)
        is_test[pos[:k]] = True
    train, test = perm[~is_test], perm[is_test]
    if test.size == 0 or train.size == 0:
        raise ValueError(
            f"splitting {n} examples with test_fraction={test_fraction} gives an empty "
            f"{'test' if test.size == 0 else 'train'} split; provide more data or a larger test_fraction"
        )
    return train, test


def split_raw(raw: RawSplit, test_fraction: float, seed: int) -> tuple[RawSplit, RawSplit]:
    """Stratified, seeded train/test split of one :class:`RawSplit` (see :func:`stratified_split_indices`)."""
    tr, te = stratified_split_indices(raw.labels, test_fraction, seed)

    def take(idx: np.ndarray) -> RawSplit:
        d = None if raw.difficulty is None else raw.difficulty[idx]
        return RawSplit(raw.images[idx], raw.labels[idx], d, {k: v[idx] for k, v in raw.difficulty_params.items()})

    return take(tr), take(te)


# --------------------------------------------------------------------------- normalisation


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """float32 copy of raw images; uint8 is divided by 255."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * np.float32(1.0 / 255.0)
    return images.astype(np.float32, copy=True)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 ``[C]``, std floored at :data:`STD_FLOOR`) of float images."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    var = np.zeros_like(mean)
    for c in range(images.shape[1]):  # per channel keeps the temporary small; float64 accumulation
        var[c] = np.mean(np.square(images[:, c] - np.float32(mean[c])), dtype=np.float64)
    std = np.maximum(np.sqrt(var), STD_FLOOR)
    return mean.astype(np.float32), std.astype(np.float32)


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = to_unit_float(images)
    x -= mean[None, :, None, None]
    x /= std[None, :, None, None]
    return x


def _finish(raw: RawSplit, mean: np.ndarray, std: np.ndarray) -> Split:
    return Split(
        images=_normalise(raw.images, mean, std),
        labels=np.ascontiguousarray(raw.labels, dtype=np.int64),
        difficulty=np.ascontiguousarray(raw.difficulty, dtype=np.float32),
        difficulty_params={k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.difficulty_params.items()},
    )


class DeferredSplit:
    """A split normalised on first use: ``DeferredSplit(raw_or_factory, mean, std)()`` returns the
    :class:`Split` (picklable, unlike a closure, so data sets travel to worker processes)."""

    def __init__(self, source: Any, mean: np.ndarray, std: np.ndarray) -> None:
        self.source, self.mean, self.std = source, mean, std

    def __call__(self) -> Split:
        raw = self.source() if callable(self.source) else self.source
        return _finish(raw.with_difficulty(), self.mean, self.std)


def build_splits(name: str, train: RawSplit, test: RawSplit, num_classes: int, val: Any = None) -> DataSplits:
    """Normalise both splits with the train split's per-channel mean/std and wrap them.

    ``fingerprint`` is :func:`fingerprint_arrays` over the RAW arrays (train images, train labels,
    test images, test labels) exactly as held in the :class:`RawSplit` objects (uint8 or float32,
    NCHW), so it does not depend on floating-point details of the normalisation. ``val`` (a
    :class:`RawSplit` or a zero-argument callable returning one, built on first use) becomes the
    held-out ``"val"`` split, normalised like the others and left out of the fingerprint.
    """
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"train images have shape [C, H, W]={list(train.images.shape[1:])} but test images have "
            f"{list(test.images.shape[1:])}; both splits must have the same image shape"
        )
    if train.images.dtype != test.images.dtype:  # mixed uint8/float: compare like with like
        train = RawSplit(to_unit_float(train.images), train.labels, train.difficulty, train.difficulty_params)
        test = RawSplit(to_unit_float(test.images), test.labels, test.difficulty, test.difficulty_params)
    check_labels_in_range(train.labels, num_classes, "train labels")
    check_labels_in_range(test.labels, num_classes, "test labels")
    unseen = sorted(set(np.unique(test.labels).tolist()) - set(np.unique(train.labels).tolist()))
    if unseen:
        warnings.warn(
            f"data {name!r}: test class(es) {unseen} never occur in the train split, so no backbone can learn them and"
            " every such test image counts as an error",
            stacklevel=2,
        )
    train, test = train.with_difficulty(), test.with_difficulty()
    fingerprint = fingerprint_arrays(train.images, train.labels, test.images, test.labels)
    mean, std = channel_stats(to_unit_float(train.images))

    def finish(raw: RawSplit) -> Split:
        return _finish(raw, mean, std)

    return DataSplits(
        name=name,
        train=finish(train),
        test=finish(test),
        num_classes=int(num_classes),
        mean=mean,
        std=std,
        fingerprint=fingerprint,
        val=None if val is None else DeferredSplit(val, mean, std),
    )


# --------------------------------------------------------------------------- user specs


def from_pair(images: Any, labels: Any, *, test_fraction: float, seed: int) -> tuple[RawSplit, RawSplit, int]:
    """An ``(images, labels)`` pair -> stratified seeded (train, test) and ``num_classes``."""
    raw = make_raw(images, labels, "spec")
    k = infer_num_classes(raw.labels)
    train, test = split_raw(raw, test_fraction, seed)
    return train, test, k


def from_dict(spec: dict) -> tuple[RawSplit, RawSplit, int, RawSplit | None]:
    """``{"train": (X, y), "test": (X, y)[, "val": (X, y)]}`` -> (train, test, num_classes, val or None)."""
    missing = [k for k in ("train", "test") if k not in spec]
    if missing:
        raise ValueError(
            f"dict spec is missing key(s) {missing} (got keys {sorted(map(repr, spec))}); "
            "expected {'train': (images, labels), 'test': (images, labels)} and optionally 'val'"
        )
    unknown = sorted(set(spec) - {"train", "test", "val"}, key=repr)
    if unknown:
        raise ValueError(f"dict spec has unknown key(s) {unknown}; valid keys: ['train', 'test', 'val']")
    out = []
    keys = [k for k in ("train", "test", "val") if k in spec]
    for key in keys:
        pair = spec[key]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"spec[{key!r}] is a {type(pair).__name__}; expected an (images, labels) pair")
        out.append(make_raw(pair[0], pair[1], key))
    k = infer_num_classes(*(r.labels for r in out))
    return out[0], out[1], k, (out[2] if len(out) == 3 else None)


def from_torch_dataset(ds: Any, *, test_fraction: float, seed: int) -> tuple[RawSplit, RawSplit, int]:
    """A map-style ``torch.utils.data.Dataset`` of ``(image, label)`` items, split like a pair.

    Each image may be a tensor, an ndarray or anything ``np.asarray`` accepts (e.g. a PIL image),
    in ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` layout (detected like :func:`as_images`).
    """
    try:
        n = len(ds)
    except TypeError as exc:
        raise TypeError(
            f"torch Dataset {type(ds).__name__} has no len(); only map-style datasets with __len__ are supported"
        ) from exc
    if n == 0:
        raise ValueError(f"torch Dataset {type(ds).__name__} is empty (len 0)")
    images, labels = [], []
    first_shape = None
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"torch Dataset item {i} is a {type(item).__name__}; expected an (image, label) pair")
        img = _to_numpy(item[0], f"dataset item {i} image")
        if first_shape is None:
            first_shape = img.shape
        elif img.shape != first_shape:
            raise ValueError(
                f"dataset item {i} image has shape {tuple(img.shape)} but item 0 has {tuple(first_shape)}; "
                "all images must have the same shape"
            )
        images.append(img)
        lab = _to_numpy(item[1], f"dataset item {i} label")
        if lab.size != 1:
            raise TypeError(f"dataset item {i} label has shape {tuple(lab.shape)}; expected a scalar class index")
        labels.append(lab.reshape(()))
    x = np.stack(images)
    y = np.stack(labels)
    return from_pair(x, y, test_fraction=test_fraction, seed=seed)
