"""Data sets for dyncnn_gym: one entry point, :func:`load_dataset`, returning a :class:`DataSplits`.

Importing this package is light: nothing is generated, read or imported from sklearn/scipy/torch
until :func:`load_dataset` (or :func:`make_shapes`) is called.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from .base import DataSplits, Split, fingerprint_arrays
from .shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from .shapes import GENERATOR_VERSION, ShapesArrays, load_shapes, make_shapes, shapes_difficulty

__all__ = [
    "DATASET_NAMES",
    "DataSplits",
    "GENERATOR_VERSION",
    "SHAPES_CLASS_NAMES",
    "ShapesArrays",
    "Split",
    "fingerprint_arrays",
    "load_dataset",
    "load_shapes",
    "make_shapes",
    "shapes_difficulty",
]

#: Names :func:`load_dataset` accepts (case-insensitive; ``-``/``_`` ignored, e.g. ``"fashion-mnist"``).
DATASET_NAMES: tuple[str, ...] = ("shapes", "digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist")
_TORCHVISION_NAMES = ("cifar10", "cifar100", "svhn", "mnist", "fashionmnist")


def _check_n(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or _is_np_int(value)) or int(value) < 1:
        raise ValueError(f"{name}={value!r} is not valid; expected None or an integer >= 1")
    return int(value)


def _is_np_int(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.integer)


def _take(raw: Any, n: int | None, name: str, split: str) -> Any:
    """First ``n`` examples of a RawSplit; ValueError if fewer are available."""
    if n is not None and n > len(raw):
        raise ValueError(f"{name}={n} exceeds the {len(raw)} examples available in the {split} split")
    return raw.head(n)


def load_dataset(
    spec: Any = "shapes",
    *,
    root: str | Path | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    val_fraction: float | str = "auto",
) -> DataSplits:
    """Load a data set as float32 NCHW splits normalised by the train split's per-channel mean/std.

    Args:
        spec: one of

            * a name in :data:`DATASET_NAMES`:

              - ``"shapes"`` (default): the embedded procedurally generated set (3x32x32, 10 classes,
                per-image difficulty; see :mod:`dyncnn_gym.data.shapes`). ``n_train`` (default
                10000) and ``n_test`` (default 2000) images are generated from ``seed`` (train and
                test from independent streams) and cached under ``cache_dir("data")``; a held-out
                ``"val"`` split of 10000 more images (a third stream) is generated on first use.
              - ``"digits"``: scikit-learn's 8x8 digits (1x8x8, 10 classes), split like a pair.
              - ``"cifar10"``, ``"cifar100"``, ``"svhn"``, ``"mnist"``, ``"fashionmnist"``: read from
                torchvision's on-disk files under ``root`` (default ``cache_dir("torchvision")``),
                official train/test splits; fetched with torchvision only if ``download=True``.
            * a :class:`DataSplits`: returned as is (other arguments ignored).
            * an ``(images, labels)`` pair: split deterministically into train/test, stratified by
              class: ``perm = np.random.default_rng(seed).permutation(N)``; of each class's ``n_c``
              examples, the first ``min(round(test_fraction * n_c), n_c - 1)`` in ``perm`` order go to
              test, the rest to train (both keep ``perm`` order).
            * a dict ``{"train": (images, labels), "test": (images, labels)}``: used as given; an
              optional ``"val"`` pair becomes the held-out ``"val"`` split (images neither the
              backbone nor the test split use, for training routers; see ``split="val"``).
            * a map-style ``torch.utils.data.Dataset`` of ``(image, label)`` items: split like a pair.

            User images may be ``[N, H, W]`` (grayscale), ``[N, H, W, C]`` (channels-last; recognised
            when the last dim is smaller than both dims 1 and 2, and transposed with a warning) or
            ``[N, C, H, W]`` (every other 4-D array); uint8 (divided by 255) or float (used as given,
            finite and within +-1e6); any size. Labels are integer class indices;
            ``num_classes = max label + 1`` (over both splits) and must be >= 2. The name is
            ``"user"``.
        root: directory holding torchvision files (torchvision names only).
        download: fetch missing torchvision files with torchvision (needs ``pip install torchvision``).
        test_fraction: share of each class sent to test when a split is made (digits, pair, Dataset);
            must be in (0, 1) (validated always).
        seed: generation seed for ``"shapes"``; split seed for digits, pairs and Datasets; unused
            for torchvision data sets and dicts (their splits are fixed).
        n_train, n_test: for ``"shapes"`` the number of images generated; otherwise keep only the
            first ``n`` examples of each split (deterministic; ValueError if fewer exist).
        val_fraction: for data that bring no held-out ``"val"`` split (every source but
            ``"shapes"`` and a dict with ``"val"``): the share of each class of the train split held
            out as ``"val"`` (stratified and seeded with ``seed`` as a pair's test split; after
            ``n_train``), images the backbone does not train on, where the ``-v1`` envs
            (``split="auto"``) train routers. ``"auto"`` (default): 0.1 when the train split has at
            least 5 000 images, else 0 (small data sets keep every image for the backbone; digits'
            1 438 train images have no held-out split). ``0``: none.

    Returns:
        :class:`DataSplits` with float32 ``[N, C, H, W]`` images normalised as
        ``(x - mean) / std`` (``x`` in ``[0, 1]`` for uint8/generated sources, std floored at 1e-6),
        int64 labels, ``difficulty`` (NaN except for shapes) and ``fingerprint``:
        :func:`fingerprint_arrays` over the RAW (pre-normalisation) train images, train labels, test
        images and test labels in NCHW layout (uint8 for uint8 sources, else float32), i.e. the
        same on every platform.

    Raises:
        ValueError: unknown name, invalid values (NaN/inf images or values beyond +-1e6, empty data, mismatched lengths,
            negative/non-integer labels, fewer than 2 classes, dict without "train"/"test",
            ``test_fraction`` outside (0, 1), bad ``n_train``/``n_test``/``seed``), or missing
            torchvision files (a :class:`~dyncnn_gym.data.torchvision_files.DatasetFilesNotFoundError`,
            which is also a FileNotFoundError).
        TypeError: a ``spec`` of an unsupported type or arrays of an unsupported dtype/rank.
    """
    from . import arrays  # deferred: keeps `import dyncnn_gym.data` cheap

    if isinstance(spec, DataSplits):
        return spec
    test_fraction = arrays.check_test_fraction(test_fraction)
    val_fraction = arrays.check_val_fraction(val_fraction)
    n_train = _check_n(n_train, "n_train")
    n_test = _check_n(n_test, "n_test")
    if isinstance(seed, bool) or not (isinstance(seed, int) or _is_np_int(seed)) or int(seed) < 0:
        raise ValueError(f"seed={seed!r} is not valid; expected an integer >= 0")
    seed = int(seed)

    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "").replace("_", "")
        if key not in DATASET_NAMES:
            raise ValueError(f"unknown data set name {spec!r}; valid names: {list(DATASET_NAMES)}")
        return _load_named(
            key,
            root=root,
            download=download,
            test_fraction=test_fraction,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            val_fraction=val_fraction,
        )

    val = None
    if isinstance(spec, dict):
        train, test, k, val = arrays.from_dict(spec)
    elif isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise TypeError(f"spec is a {type(spec).__name__} of length {len(spec)}; an (images, labels) pair has length 2")
        train, test, k = arrays.from_pair(spec[0], spec[1], test_fraction=test_fraction, seed=seed)
    elif _is_torch_dataset(spec):
        train, test, k = arrays.from_torch_dataset(spec, test_fraction=test_fraction, seed=seed)
    else:
        raise TypeError(
            f"spec of type {type(spec).__name__} is not supported; expected a name in {list(DATASET_NAMES)}, "
            "a DataSplits, an (images, labels) pair, a dict {'train': (X, y), 'test': (X, y)} "
            "or a torch.utils.data.Dataset of (image, label)"
        )
    train = _take(train, n_train, "n_train", "train")
    test = _take(test, n_test, "n_test", "test")
    if val is not None:
        if val_fraction not in ("auto", 0.0):
            raise ValueError(f"val_fraction={val_fraction!r}: the data give a 'val' split already; pass 'auto' or 0")
    else:
        train, val = arrays.hold_out(train, val_fraction, seed)
    return arrays.build_splits("user", train, test, k, val=val)


def _shapes_val(seed: int) -> Any:
    """The held-out ``"val"`` split of ``"shapes"`` (a third stream of the generator), raw."""
    from . import arrays, shapes

    va = load_shapes(shapes.DEFAULT_N_VAL, seed, stream=shapes.VAL_STREAM)
    return arrays.RawSplit(va.images, va.labels, va.difficulty, dict(va.params))


def _is_torch_dataset(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a Dataset instance implies torch is already imported
    return torch is not None and isinstance(obj, torch.utils.data.Dataset)


def _load_named(
    name: str,
    *,
    root: str | Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    n_train: int | None,
    n_test: int | None,
    val_fraction: float | str,
) -> DataSplits:
    from . import arrays

    if name == "shapes":
        if val_fraction not in ("auto", 0.0):
            raise ValueError(f"val_fraction={val_fraction!r}: 'shapes' generates its own 'val' split; pass 'auto'")
        from . import shapes

        tr = load_shapes(n_train or shapes.DEFAULT_N_TRAIN, seed, stream=shapes.TRAIN_STREAM)
        te = load_shapes(n_test or shapes.DEFAULT_N_TEST, seed, stream=shapes.TEST_STREAM)
        train = arrays.RawSplit(tr.images, tr.labels, tr.difficulty, dict(tr.params))
        test = arrays.RawSplit(te.images, te.labels, te.difficulty, dict(te.params))
        return arrays.build_splits("shapes", train, test, shapes.NUM_CLASSES, val=functools.partial(_shapes_val, seed))

    if name == "digits":
        from .digits import NUM_CLASSES, load_digits_raw

        train, test = load_digits_raw(test_fraction, seed)
        k = NUM_CLASSES
    else:
        from ..cache import cache_dir
        from .torchvision_files import NUM_CLASSES as TV_CLASSES
        from .torchvision_files import read_torchvision

        base = Path(root).expanduser() if root is not None else cache_dir("torchvision", create=False)
        train, test = read_torchvision(name, base, download=bool(download))
        k = TV_CLASSES[name]
    train = _take(train, n_train, "n_train", "train")
    test = _take(test, n_test, "n_test", "test")
    train, val = arrays.hold_out(train, val_fraction, seed)
    return arrays.build_splits(name, train, test, k, val=val)
