"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; ships offline)."""

from __future__ import annotations

import numpy as np

from .arrays import RawSplit, split_raw

NUM_CLASSES = 10


def load_digits_raw(test_fraction: float, seed: int) -> tuple[RawSplit, RawSplit]:
    """``sklearn.datasets.load_digits()`` as float32 ``[N, 1, 8, 8]`` in ``[0, 1]`` (pixel values 0..16
    divided by 16), split with :func:`~dyncnn_gym.data.arrays.stratified_split_indices`
    (stratified by class, seeded permutation, ``test_fraction`` of each class to test)."""
    from sklearn.datasets import load_digits  # local: sklearn import is not free

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return split_raw(RawSplit(np.ascontiguousarray(images), labels), test_fraction, seed)
