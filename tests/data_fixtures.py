"""Write tiny data sets in torchvision's on-disk formats (used by tests/test_data.py)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 5, *, bytes_keys: bool = True) -> dict:
    """CIFAR-10 python batches; returns the arrays written (NCHW uint8) for comparison."""
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(10)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({key("data"): x, key("labels"): y, key("batch_label"): key(f"batch {i}")}, f)
        train_x.append(x)
        train_y += y
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(d / "test_batch", "wb") as f:
        pickle.dump({key("data"): tx, key("labels"): ty}, f)
    return {
        "train_x": np.concatenate(train_x).reshape(-1, 3, 32, 32),
        "train_y": np.array(train_y),
        "test_x": tx.reshape(-1, 3, 32, 32),
        "test_y": np.array(ty),
    }


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4) -> dict:
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(100)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        fine[0] = 99
        coarse = [v // 5 for v in fine]
        with open(d / split, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"x"] * n}, f)
        out[f"{split}_x"] = x.reshape(-1, 3, 32, 32)
        out[f"{split}_y"] = np.array(fine)
    return out


def write_svhn(root: Path, n_train: int = 7, n_test: int = 3) -> dict:
    from scipy.io import savemat

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(7)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 = digit 0
        y[0, 0] = 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[f"{split}_x"] = x.transpose(3, 2, 0, 1)
        out[f"{split}_y"] = np.where(y[:, 0] == 10, 0, y[:, 0]).astype(np.int64)
    return out


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 6, n_test: int = 4, *, gz: bool = False) -> dict:
    d = Path(root) / folder / "raw"
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(28)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for name, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = _idx_bytes(arr)
            if gz:
                with gzip.open(d / (name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                (d / name).write_bytes(data)
        out[f"{split}_x"] = x[:, None]
        out[f"{split}_y"] = y.astype(np.int64)
    return out
