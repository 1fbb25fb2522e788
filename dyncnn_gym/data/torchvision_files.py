"""Readers for torchvision's on-disk data set formats, without importing torchvision.

=================  ===========================================================================
name               files under ``root``
=================  ===========================================================================
``cifar10``        ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``, ``test_batch``
                   (pickled dicts: ``data`` uint8 ``[N, 3072]``, ``labels``)
``cifar100``       ``cifar-100-python/train``, ``test`` (``data``, ``fine_labels``)
``svhn``           ``train_32x32.mat``, ``test_32x32.mat`` (``X`` uint8 ``[32, 32, 3, N]``, ``y``
                   ``[N, 1]`` with 10 meaning digit 0, mapped to 0 as torchvision does)
``mnist``          ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``)
``fashionmnist``   same names under ``FashionMNIST/raw/``
=================  ===========================================================================

Only with ``download=True`` is torchvision imported (lazily) to fetch missing files with its own
data set classes; the files are then read by the readers here.

The CIFAR files are pickles. They are read by a restricted unpickler that rebuilds only what those
files hold (dicts, lists, strings, bytes and numpy arrays, through numpy's own reconstruction
functions); a file that asks for any other Python global is refused with
:class:`~dyncnn_gym.fileio.UnsafeFileError`, which names the file and the global, before anything
of it runs.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..fileio import CorruptFileError, UnsafeFileError
from .arrays import RawSplit, check_labels_in_range


class DatasetFilesNotFoundError(FileNotFoundError, ValueError):
    """Files of a torchvision data set are missing under ``root`` (also a ValueError)."""


NUM_CLASSES: dict[str, int] = {
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
    "mnist": 10,
    "fashionmnist": 10,
}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_DIRS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}


def expected_files(name: str, root: Path) -> list[Path]:
    """The files :func:`read_torchvision` needs for data set ``name`` under ``root``."""
    root = Path(root)
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        return [d / f"data_batch_{i}" for i in range(1, 6)] + [d / "test_batch"]
    if name == "cifar100":
        d = root / "cifar-100-python"
        return [d / "train", d / "test"]
    if name == "svhn":
        return [root / "train_32x32.mat", root / "test_32x32.mat"]
    if name in _MNIST_DIRS:
        d = root / _MNIST_DIRS[name] / "raw"
        return [d / f for pair in _MNIST_FILES.values() for f in pair]
    raise ValueError(f"{name!r} is not a torchvision data set; valid: {sorted(NUM_CLASSES)}")


def _present(path: Path) -> Path | None:
    """``path`` or its ``.gz`` sibling (MNIST) if either exists."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    return None


def missing_files(name: str, root: Path) -> list[Path]:
    """Expected files that are absent (an MNIST file counts as present if its ``.gz`` exists)."""
    allow_gz = name in _MNIST_DIRS
    out = []
    for p in expected_files(name, root):
        found = _present(p) if allow_gz else (p if p.is_file() else None)
        if found is None:
            out.append(p)
    return out


# --------------------------------------------------------------------------- readers


#: the only globals a CIFAR python batch needs: numpy's array reconstruction (numpy 1 and 2 module
#: names, pickle protocols 2 and 5) and the bytes codec of protocol-2 pickles written by Python 3
CIFAR_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`CIFAR_PICKLE_GLOBALS`."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise UnsafeFileError(
                f"{str(self.path)!r} needs the Python global '{module}.{name}', which a CIFAR batch does not hold and"
                " dyncnn_gym does not allow (it could run code); the file was not loaded"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR python batch as a dict with str keys (see :class:`_CifarUnpickler`)."""
    with open(path, "rb") as f:
        try:
            d = _CifarUnpickler(f, path).load()
        except UnsafeFileError:
            raise
        except Exception as e:  # truncated or not a pickle: unpickling raises many kinds
            raise CorruptFileError(f"{str(path)!r} is not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise CorruptFileError(f"{str(path)!r} is not a CIFAR batch: it holds a {type(d).__name__}, not a dict")
    # torchvision's files decode to str keys with latin1; files written with bytes keys stay bytes
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or label_key not in d:
        raise ValueError(f"{path} is not a CIFAR batch: expected keys 'data' and {label_key!r}, got {sorted(d)}")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: 'data' has shape {data.shape} and {label_key!r} {labels.shape}; expected [N, 3072] and [N]")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path) -> tuple[RawSplit, RawSplit]:
    """CIFAR-10 from ``root/cifar-10-batches-py`` as uint8 ``[N, 3, 32, 32]`` splits."""
    files = expected_files("cifar10", root)
    parts = [_cifar_batch(p, "labels") for p in files[:5]]
    train = RawSplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = RawSplit(*_cifar_batch(files[5], "labels"))
    return train, test


def read_cifar100(root: Path) -> tuple[RawSplit, RawSplit]:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` as uint8 ``[N, 3, 32, 32]`` splits."""
    files = expected_files("cifar100", root)
    return RawSplit(*_cifar_batch(files[0], "fine_labels")), RawSplit(*_cifar_batch(files[1], "fine_labels"))


def _svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # local: scipy.io import is not free

    m = loadmat(path)
    if "X" not in m or "y" not in m:
        raise ValueError(f"{path} is not an SVHN .mat file: expected variables 'X' and 'y'")
    x = np.asarray(m["X"])
    y = np.asarray(m["y"]).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise ValueError(f"{path}: X has shape {x.shape} and y {y.shape}; expected [32, 32, 3, N] and [N, 1]")
    y[y == 10] = 0  # SVHN stores digit 0 as 10; torchvision maps it to 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), y


def read_svhn(root: Path) -> tuple[RawSplit, RawSplit]:
    """SVHN (cropped digits) from ``root/{train,test}_32x32.mat`` as uint8 ``[N, 3, 32, 32]`` splits."""
    files = expected_files("svhn", root)
    return RawSplit(*_svhn_mat(files[0])), RawSplit(*_svhn_mat(files[1]))


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` is decompressed) into an ndarray."""
    path = Path(path)
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says shape {dims}, file has {len(data) - offset} data bytes")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def read_mnist_like(name: str, root: Path) -> tuple[RawSplit, RawSplit]:
    """MNIST / FashionMNIST from ``root/<MNIST|FashionMNIST>/raw`` as uint8 ``[N, 1, 28, 28]`` splits."""
    d = Path(root) / _MNIST_DIRS[name] / "raw"
    out = []
    for split in ("train", "test"):
        img_name, lab_name = _MNIST_FILES[split]
        img_path, lab_path = _present(d / img_name), _present(d / lab_name)
        assert img_path is not None and lab_path is not None  # checked by the caller
        images = read_idx(img_path)
        labels = read_idx(lab_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{img_path} / {lab_path}: images {images.shape} and labels {labels.shape}; expected [N, H, W] and [N]"
            )
        out.append(RawSplit(np.ascontiguousarray(images[:, None], dtype=np.uint8), labels))
    return out[0], out[1]


# --------------------------------------------------------------------------- download


def download_with_torchvision(name: str, root: Path) -> None:
    """Fetch data set ``name`` into ``root`` with torchvision's own classes (``download=True``)."""
    try:
        import torchvision.datasets as tvd  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise ImportError(
            f"download=True for {name!r} needs torchvision, which is not importable here ({exc}); "
            "install it with `pip install torchvision` (matching your torch version), or place the files "
            f"under root={str(root)!r} yourself"
        ) from exc
    root_s = str(root)
    if name == "cifar10":
        for train in (True, False):
            tvd.CIFAR10(root_s, train=train, download=True)
    elif name == "cifar100":
        for train in (True, False):
            tvd.CIFAR100(root_s, train=train, download=True)
    elif name == "svhn":
        for split in ("train", "test"):
            tvd.SVHN(root_s, split=split, download=True)
    elif name == "mnist":
        for train in (True, False):
            tvd.MNIST(root_s, train=train, download=True)
    elif name == "fashionmnist":
        for train in (True, False):
            tvd.FashionMNIST(root_s, train=train, download=True)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"{name!r} is not a torchvision data set; valid: {sorted(NUM_CLASSES)}")


def read_torchvision(name: str, root: Path, *, download: bool = False) -> tuple[RawSplit, RawSplit]:
    """Read torchvision data set ``name`` from ``root`` (fetching it first only if ``download``).

    Raises:
        DatasetFilesNotFoundError: files missing and ``download`` is False; the message lists them.
        ImportError: ``download=True`` without torchvision.
    """
    if name not in NUM_CLASSES:
        raise ValueError(f"{name!r} is not a torchvision data set; valid: {sorted(NUM_CLASSES)}")
    root = Path(root).expanduser()
    missing = missing_files(name, root)
    if missing and download:
        root.mkdir(parents=True, exist_ok=True)
        download_with_torchvision(name, root)
        missing = missing_files(name, root)
    if missing:
        expected = [str(p.relative_to(root)) for p in expected_files(name, root)]
        raise DatasetFilesNotFoundError(
            f"{name!r} data not found under root={str(root)!r}: missing {[str(p) for p in missing]}. "
            f"Expected torchvision's on-disk files {expected}"
            + (" (each may also be .gz)" if name in _MNIST_DIRS else "")
            + ". Pass download=True to fetch them (this needs torchvision: `pip install torchvision`), "
            "or point root= at a directory that holds them."
        )
    if name == "cifar10":
        train, test = read_cifar10(root)
    elif name == "cifar100":
        train, test = read_cifar100(root)
    elif name == "svhn":
        train, test = read_svhn(root)
    else:
        train, test = read_mnist_like(name, root)
    k = NUM_CLASSES[name]
    check_labels_in_range(train.labels, k, f"{name} train labels")
    check_labels_in_range(test.labels, k, f"{name} test labels")
    return train, test
