"""Tests for dyncnn_gym.data (fast: small sizes; torchvision formats written by the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dyncnn_gym.data as data
from dyncnn_gym.data import DATASET_NAMES, DataSplits, Split, load_dataset, make_shapes
from dyncnn_gym.data import shapes as shapes_mod
from dyncnn_gym.data.arrays import stratified_split_indices
from dyncnn_gym.data.torchvision_files import DatasetFilesNotFoundError, read_idx

try:  # tests/ may or may not be a package
    from .data_fixtures import _idx_bytes, write_cifar10, write_cifar100, write_mnist, write_svhn
except ImportError:
    from data_fixtures import _idx_bytes, write_cifar10, write_cifar100, write_mnist, write_svhn

N_TR, N_TE = 200, 100


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory."""
    monkeypatch.setenv("DYNCNN_GYM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes_800():
    return make_shapes(800, seed=3)


def _check_splits(ds: DataSplits, c: int, h: int, w: int, k: int) -> None:
    assert isinstance(ds, DataSplits)
    assert ds.num_classes == k
    assert ds.image_shape == (c, h, w)
    assert ds.mean.shape == (c,) and ds.std.shape == (c,)
    assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32
    assert len(ds.fingerprint) == 16
    for sp in (ds.train, ds.test):
        assert isinstance(sp, Split)
        assert sp.images.dtype == np.float32 and sp.images.ndim == 4
        assert sp.images.flags.c_contiguous
        assert sp.labels.dtype == np.int64 and sp.labels.shape == (len(sp),)
        assert sp.difficulty.dtype == np.float32 and sp.difficulty.shape == (len(sp),)
        assert np.isfinite(sp.images).all()
        assert sp.labels.min() >= 0 and sp.labels.max() < k


# --------------------------------------------------------------------------- import / names


def test_import_is_light(tmp_path):
    """Importing dyncnn_gym.data imports no heavy library (beyond what dyncnn_gym itself does) and
    generates nothing."""
    code = (
        "import sys; import dyncnn_gym; before = set(sys.modules); import dyncnn_gym.data; "
        "heavy = ('torch', 'sklearn', 'scipy', 'torchvision'); "
        "print([m for m in heavy if m in sys.modules and m not in before])"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DYNCNN_GYM_CACHE": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo, env=env)
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "c" / "data").exists() or not any((tmp_path / "c" / "data").iterdir())


def test_public_names():
    assert DATASET_NAMES == ("shapes", "digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist")
    for name in ("load_dataset", "DATASET_NAMES", "DataSplits", "Split", "make_shapes"):
        assert hasattr(data, name)


# --------------------------------------------------------------------------- shapes


def test_shapes_load_dataset_shapes_and_dtypes():
    ds = load_dataset("shapes", n_train=N_TR, n_test=N_TE)
    _check_splits(ds, 3, 32, 32, 10)
    assert ds.name == "shapes"
    assert len(ds.train) == N_TR and len(ds.test) == N_TE
    # normalised with train statistics: train channels have mean ~0, std ~1
    assert np.allclose(ds.train.images.mean(axis=(0, 2, 3)), 0, atol=1e-3)
    assert np.allclose(ds.train.images.std(axis=(0, 2, 3)), 1, atol=1e-3)
    assert ((ds.mean > 0) & (ds.mean < 1)).all() and (ds.std > 0.05).all()
    assert set(ds.train.difficulty_params) == set(shapes_mod.PARAM_NAMES)


def test_shapes_deterministic_and_seed_dependent():
    a = make_shapes(60, seed=5)
    b = make_shapes(60, seed=5)
    c = make_shapes(60, seed=6)
    t = make_shapes(60, seed=5, stream=shapes_mod.TEST_STREAM)
    assert a.images.tobytes() == b.images.tobytes()
    assert np.array_equal(a.labels, b.labels)
    for k in shapes_mod.PARAM_NAMES:
        assert np.array_equal(a.params[k], b.params[k])
    assert a.images.tobytes() != c.images.tobytes()
    assert a.images.tobytes() != t.images.tobytes()  # test split uses another stream
    d1 = load_dataset("shapes", n_train=50, n_test=20, seed=1)
    d2 = load_dataset("shapes", n_train=50, n_test=20, seed=1)
    d3 = load_dataset("shapes", n_train=50, n_test=20, seed=2)
    assert d1.fingerprint == d2.fingerprint != d3.fingerprint
    assert np.array_equal(d1.train.images, d2.train.images)


def test_shapes_raw_ranges(shapes_800):
    a = shapes_800
    assert a.images.shape == (800, 3, 32, 32) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64 and a.labels.min() == 0 and a.labels.max() == 9
    assert np.bincount(a.labels, minlength=10).tolist() == [80] * 10  # exactly balanced
    assert a.difficulty.dtype == np.float32
    assert (a.difficulty >= 0).all() and (a.difficulty <= 1).all()
    # broad: from easy to hard, most in between
    q = np.quantile(a.difficulty, [0.02, 0.5, 0.98])
    assert q[0] < 0.1 and 0.1 < q[1] < 0.35 and q[2] > 0.45
    p = a.params
    assert set(p) == set(shapes_mod.PARAM_NAMES)
    for k, v in p.items():
        assert v.dtype == np.float32 and v.shape == (800,) and np.isfinite(v).all(), k
    S = shapes_mod
    assert (p["scale"] >= S.SCALE_HARD - 1e-4).all() and (p["scale"] <= S.SCALE_EASY + 1e-4).all()
    assert (p["contrast"] >= S.CONTRAST_HARD - 1e-4).all() and (p["contrast"] <= S.CONTRAST_EASY + 1e-4).all()
    assert (p["noise"] >= 0).all() and (p["noise"] <= S.NOISE_MAX + 1e-6).all()
    assert set(np.unique(p["clutter"])) <= set(range(S.CLUTTER_MAX + 1))
    assert (p["occlusion"] >= 0).all() and (p["occlusion"] <= S.OCCLUSION_MAX + 0.05).all()
    assert (np.abs(p["rotation"]) <= S.ROTATION_MAX + 1e-4).all()
    assert (p["offset"] >= 0).all() and (p["offset"] <= S.max_offset(p["scale"]) + 1e-4).all()
    # each parameter varies over a good part of its range; noise, clutter and occlusion are
    # exactly 0 in a share of images (clean ones) and present in most others
    for k in S.PARAM_NAMES:
        assert np.ptp(p[k]) > 0, k
    for k in ("noise", "clutter", "occlusion"):
        assert (p[k] == 0).mean() > 0.1, k
        assert (p[k] > 0).mean() > 0.4, k
    # recomputing the documented formula from the stored params gives the stored difficulty
    np.testing.assert_allclose(shapes_mod.shapes_difficulty(p), a.difficulty, atol=1e-6)


def test_shapes_no_blank_images(shapes_800):
    x = shapes_800.images.reshape(800, -1).astype(np.float64) / 255
    assert x.std(axis=1).min() > 0.02
    # the object itself is visible: object/background colour distance is at least 0.12
    assert shapes_800.params["contrast"].min() >= 0.12 - 1e-4


def test_shapes_colour_not_informative(shapes_800):
    """Mean image colour must not predict the class (chance is 10 %)."""
    a = shapes_800
    feats = a.images.reshape(800, 3, -1).mean(axis=2) / 255
    tr, te = slice(0, 600), slice(600, 800)
    centroids = np.stack([feats[tr][a.labels[tr] == c].mean(0) for c in range(10)])
    pred = np.argmin(((feats[te][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.labels[te]).mean() < 0.25


def test_shapes_difficulty_is_informative():
    """A cheap classifier is clearly more accurate on the easiest third than on the hardest third."""
    tr = make_shapes(1000, seed=11)
    te = make_shapes(450, seed=11, stream=1)

    def feats(a):  # edge magnitude (colour invariant) -> |FFT| (translation invariant), low frequencies
        g = a.images.astype(np.float32) / 255
        gx = np.diff(g, axis=3)[:, :, :-1, :]
        gy = np.diff(g, axis=2)[:, :, :, :-1]
        m = np.sqrt(gx**2 + gy**2).sum(axis=1)
        m = m / (m.std(axis=(1, 2), keepdims=True) + 1e-3)
        return np.log1p(np.abs(np.fft.rfft2(m))[:, :12, :10].reshape(len(a), -1))

    ftr, fte = feats(tr), feats(te)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    centroids = np.stack([ftr[tr.labels == c].mean(0) for c in range(10)])  # nearest centroid
    pred = np.argmin(((fte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    ok = pred == te.labels
    lo, hi = np.quantile(te.difficulty, [1 / 3, 2 / 3])
    easy, hard = ok[te.difficulty <= lo].mean(), ok[te.difficulty >= hi].mean()
    assert easy > 0.35, (easy, hard)  # far above chance (0.1) even for nearest centroid
    assert easy > hard + 0.2, (easy, hard)


def test_shapes_cache_hit(monkeypatch, tmp_path):
    calls = []
    real = shapes_mod.make_shapes

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes_mod, "make_shapes", counting)
    d1 = load_dataset("shapes", n_train=40, n_test=20)
    assert len(calls) == 2  # train and test generated
    path = shapes_mod.shapes_cache_path(40, 0, shapes_mod.TRAIN_STREAM)
    assert path.exists() and str(path).startswith(str(tmp_path / "cache"))
    assert f"v{shapes_mod.GENERATOR_VERSION}" in path.name
    d2 = load_dataset("shapes", n_train=40, n_test=20)
    assert len(calls) == 2  # both served from the cache
    assert d1.fingerprint == d2.fingerprint
    assert np.array_equal(d1.train.images, d2.train.images)
    for k in shapes_mod.PARAM_NAMES:
        assert np.array_equal(d1.train.difficulty_params[k], d2.train.difficulty_params[k])
    # a corrupt cache file is moved aside (with a warning) and regenerated
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="moved it to"):
        d3 = load_dataset("shapes", n_train=40, n_test=20)
    assert len(calls) == 3 and d3.fingerprint == d1.fingerprint


def test_shapes_generation_time():
    """Default size (10000 + 2000) must be generated in well under ~15 s on one core; here we time
    a 1/6 sample and extrapolate generously (the machine running tests may be shared)."""
    t0 = time.perf_counter()
    make_shapes(2000, seed=0)
    dt = time.perf_counter() - t0
    assert dt * 6 < 30, f"2000 images took {dt:.2f}s"


# --------------------------------------------------------------------------- digits


def test_digits():
    ds = load_dataset("digits", seed=0)
    _check_splits(ds, 1, 8, 8, 10)
    assert ds.name == "digits"
    assert len(ds.train) + len(ds.test) == 1797
    assert abs(len(ds.test) - 0.2 * 1797) < 10
    assert np.isnan(ds.train.difficulty).all() and ds.train.difficulty_params == {}
    assert np.bincount(ds.test.labels, minlength=10).min() >= 30  # stratified
    assert load_dataset("digits", seed=0).fingerprint == ds.fingerprint
    assert load_dataset("digits", seed=1).fingerprint != ds.fingerprint
    small = load_dataset("digits", n_train=50, n_test=20, test_fraction=0.3)
    assert len(small.train) == 50 and len(small.test) == 20


# --------------------------------------------------------------------------- torchvision files


def _raw(ds: DataSplits, split: str) -> np.ndarray:
    sp = ds.split(split)
    return sp.images * ds.std[None, :, None, None] + ds.mean[None, :, None, None]


def test_cifar10_reader(tmp_path):
    ref = write_cifar10(tmp_path / "tv")
    ds = load_dataset("cifar10", root=tmp_path / "tv")
    _check_splits(ds, 3, 32, 32, 10)
    assert len(ds.train) == 20 and len(ds.test) == 5
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])
    np.testing.assert_array_equal(ds.test.labels, ref["test_y"])
    np.testing.assert_allclose(_raw(ds, "train"), ref["train_x"] / 255.0, atol=1e-5)
    np.testing.assert_allclose(_raw(ds, "test"), ref["test_x"] / 255.0, atol=1e-5)
    part = load_dataset("cifar10", root=tmp_path / "tv", n_train=7, n_test=2)
    np.testing.assert_array_equal(part.train.labels, ref["train_y"][:7])
    assert len(part.test) == 2


def test_cifar10_reader_str_keys(tmp_path):
    ref = write_cifar10(tmp_path, bytes_keys=False)
    ds = load_dataset("CIFAR10", root=tmp_path)
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])


def test_cifar100_reader(tmp_path):
    ref = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=str(tmp_path))
    _check_splits(ds, 3, 32, 32, 100)
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])
    np.testing.assert_array_equal(ds.test.labels, ref["test_y"])
    np.testing.assert_allclose(_raw(ds, "test"), ref["test_x"] / 255.0, atol=1e-5)


def test_svhn_reader(tmp_path):
    ref = write_svhn(tmp_path)
    ds = load_dataset("svhn", root=tmp_path)
    _check_splits(ds, 3, 32, 32, 10)
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])
    assert ds.train.labels[0] == 0  # label 10 mapped to digit 0
    np.testing.assert_allclose(_raw(ds, "train"), ref["train_x"] / 255.0, atol=1e-5)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_readers(tmp_path, name, folder, gz):
    ref = write_mnist(tmp_path, folder, gz=gz)
    ds = load_dataset(name, root=tmp_path)
    _check_splits(ds, 1, 28, 28, 10)
    assert ds.name == name
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])
    np.testing.assert_array_equal(ds.test.labels, ref["test_y"])
    np.testing.assert_allclose(_raw(ds, "train"), ref["train_x"] / 255.0, atol=1e-5)


def test_read_idx_rejects_garbage(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist", "fashionmnist"])
def test_torchvision_missing_files(tmp_path, name):
    with pytest.raises(ValueError) as ei:
        load_dataset(name, root=tmp_path / "empty")
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, DatasetFilesNotFoundError)
    assert name in msg and "download=True" in msg and "torchvision" in msg
    expected = {
        "cifar10": "data_batch_1",
        "cifar100": "cifar-100-python",
        "svhn": "train_32x32.mat",
        "mnist": "train-images-idx3-ubyte",
        "fashionmnist": "FashionMNIST",
    }[name]
    assert expected in msg


def test_torchvision_default_root_is_cache(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        load_dataset("mnist")
    assert str(tmp_path / "cache" / "torchvision") in str(ei.value)


def test_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset("cifar10", root=tmp_path, download=True)


def test_n_too_large(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="n_train=100"):
        load_dataset("mnist", root=tmp_path, n_train=100)


# --------------------------------------------------------------------------- user data


def _blobs(n: int = 60, k: int = 3, shape=(5, 7), seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.random((n, *shape)).astype(np.float32) + y.reshape((-1,) + (1,) * len(shape))
    return x, y


def test_user_pair_grayscale_odd_size_three_classes():
    x, y = _blobs(60, 3, (5, 7))
    ds = load_dataset((x, y), test_fraction=0.25, seed=4)
    _check_splits(ds, 1, 5, 7, 3)
    assert ds.name == "user"
    assert len(ds.train) == 45 and len(ds.test) == 15
    assert np.bincount(ds.test.labels).tolist() == [5, 5, 5]  # stratified
    assert np.isnan(ds.test.difficulty).all()
    # deterministic in seed
    assert load_dataset((x, y), test_fraction=0.25, seed=4).fingerprint == ds.fingerprint
    assert load_dataset((x, y), test_fraction=0.25, seed=5).fingerprint != ds.fingerprint
    # train/test partition the data
    tr, te = stratified_split_indices(y, 0.25, 4)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(60))
    np.testing.assert_allclose(_raw(ds, "test")[:, 0], x[te], atol=1e-5)


def test_user_channels_last_uint8():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 9, 11, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    ds = load_dataset((x, y))
    _check_splits(ds, 3, 9, 11, 4)
    tr, te = stratified_split_indices(y, 0.2, 0)
    expect = x[tr].transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(_raw(ds, "train"), expect, atol=1e-5)
    assert (ds.mean > 0.3).all() and (ds.mean < 0.7).all()  # uint8 scaled to [0, 1]


def test_user_channels_first_and_four_channels():
    rng = np.random.default_rng(2)
    x = rng.random((30, 4, 6, 6)).astype(np.float64)  # NCHW, C=4 (last dim 6 is not a channel count)
    ds = load_dataset((x, np.arange(30) % 2))
    _check_splits(ds, 4, 6, 6, 2)
    xl = rng.random((30, 6, 6, 4))  # NHWC with C=4
    assert load_dataset((xl, np.arange(30) % 2)).image_shape == (4, 6, 6)


def test_user_dict_and_label_forms():
    xtr, ytr = _blobs(30, 3, (4, 4), seed=1)
    xte, yte = _blobs(9, 3, (4, 4), seed=2)
    ds = load_dataset({"train": (xtr, ytr.astype(np.float64)), "test": [xte, list(yte)]})
    _check_splits(ds, 1, 4, 4, 3)
    np.testing.assert_array_equal(ds.train.labels, ytr)  # dict splits kept as given, in order
    np.testing.assert_array_equal(ds.test.labels, yte)
    np.testing.assert_allclose(_raw(ds, "test")[:, 0], xte, atol=1e-5)
    # num_classes counts both splits
    ds2 = load_dataset({"train": (xtr, ytr), "test": (xte[:2], np.array([0, 4]))})
    assert ds2.num_classes == 5


def test_user_torch_dataset():
    torch = pytest.importorskip("torch")

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return torch.full((3, 5, 5), float(i % 3)) + torch.rand(3, 5, 5), torch.tensor(i % 3)

    ds = load_dataset(DS(), test_fraction=0.25)
    _check_splits(ds, 3, 5, 5, 3)
    assert len(ds.train) == 18 and len(ds.test) == 6

    tensors = torch.utils.data.TensorDataset(torch.rand(20, 6, 6), torch.arange(20) % 2)  # [H, W] items
    assert load_dataset(tensors).image_shape == (1, 6, 6)
    x = torch.rand(12, 5, 5, 3)
    assert load_dataset((x, torch.arange(12) % 2)).image_shape == (3, 5, 5)  # tensors in a pair


def test_constant_channel_std_floor():
    x = np.zeros((20, 2, 5, 5), dtype=np.float32)
    x[:, 1] = np.random.default_rng(0).random((20, 5, 5))
    ds = load_dataset((x, np.arange(20) % 2))
    assert ds.std[0] == pytest.approx(1e-6)
    assert np.isfinite(ds.train.images).all() and (ds.train.images[:, 0] == 0).all()


def test_datasplits_passthrough():
    ds = load_dataset("digits", n_train=30, n_test=10)
    assert load_dataset(ds) is ds


# --------------------------------------------------------------------------- errors


def _err(exc, spec, *match, **kwargs):
    with pytest.raises(exc) as ei:
        load_dataset(spec, **kwargs)
    msg = str(ei.value)
    for m in match:
        assert m in msg, (m, msg)
    return msg


def test_error_unknown_name():
    msg = _err(ValueError, "imagenet", "'imagenet'")
    for name in DATASET_NAMES:
        assert name in msg


def test_error_bad_spec_type():
    _err(TypeError, 42, "int", "DataSplits", "pair")
    _err(TypeError, (np.zeros((4, 3, 3)),), "length 1")
    _err(TypeError, {"train": np.zeros(3), "test": (np.zeros((2, 2, 2)), [0, 1])}, "spec['train']", "ndarray")


def test_error_bad_arrays():
    x, y = _blobs(20, 2, (3, 3))
    bad = x.copy()
    bad[3, 1, 1] = np.nan
    _err(ValueError, (bad, y), "nan", "image 3")
    bad[3, 1, 1] = np.inf
    _err(ValueError, (bad, y), "inf")
    _err(ValueError, (np.zeros((0, 3, 3)), np.zeros(0, dtype=int)), "empty")
    _err(ValueError, (x, y[:-1]), "mismatched", "20 images", "19 labels")
    _err(TypeError, (np.zeros((20, 9)), y), "shape=(20, 9)")
    _err(TypeError, (np.array(["a"] * 20), y), "dtype")


def test_error_bad_labels():
    x, y = _blobs(20, 2, (3, 3))
    neg = y.copy()
    neg[5] = -1
    _err(ValueError, (x, neg), "negative label -1", "index 5")
    frac = y.astype(np.float64)
    frac[2] = 0.5
    _err(ValueError, (x, frac), "non-integer value 0.5", "index 2")
    _err(ValueError, (x, np.zeros(20, dtype=int)), "num_classes=1", ">= 2")
    _err(TypeError, (x, np.array(["a"] * 20)), "dtype")


def test_error_label_out_of_range_from_files(tmp_path):
    ref = write_mnist(tmp_path)
    d = tmp_path / "MNIST" / "raw"
    lab = ref["test_y"].astype(np.uint8).copy()
    lab[1] = 12
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(lab))
    _err(ValueError, "mnist", "label 12", "[0, 10)", root=tmp_path)


def test_error_dict_keys():
    x, y = _blobs(10, 2, (3, 3))
    msg = _err(ValueError, {"train": (x, y), "val": (x, y)}, "'test'", "missing")
    assert "'val'" in msg


def test_error_test_fraction_and_counts():
    x, y = _blobs(20, 2, (3, 3))
    for bad in (0, 1, 1.5, -0.1, "0.2"):
        _err(ValueError, (x, y), f"test_fraction={bad!r}", "(0, 1)", test_fraction=bad)
    _err(ValueError, "shapes", "test_fraction=0.0", test_fraction=0.0)
    _err(ValueError, "shapes", "n_train=0", n_train=0)
    _err(ValueError, "shapes", "n_test=-3", n_test=-3)
    _err(ValueError, "shapes", "seed=-1", seed=-1)
    _err(ValueError, (x[:3], y[:3]), "empty test split", test_fraction=0.1)
    _err(ValueError, (x, y), "n_train=100", "16", n_train=100)


def test_error_mismatched_dict_shapes():
    a, ya = _blobs(10, 2, (3, 3))
    b, yb = _blobs(10, 2, (4, 4))
    _err(ValueError, {"train": (a, ya), "test": (b, yb)}, "[1, 3, 3]", "[1, 4, 4]")


def test_held_out_val_split_for_routers():

    X = np.random.default_rng(0).random((30, 1, 6, 6)).astype(np.float32)
    y = np.arange(30) % 3
    d = load_dataset({"train": (X[:12], y[:12]), "test": (X[12:18], y[12:18]), "val": (X[18:], y[18:])})
    no_val = load_dataset({"train": (X[:12], y[:12]), "test": (X[12:18], y[12:18])})
    assert d.has_val and not no_val.has_val and d.fingerprint == no_val.fingerprint  # val is not fingerprinted
    val = d.split("val")
    assert len(val) == 12 and val.images.dtype == np.float32
    assert np.allclose(val.images, (X[18:] - d.mean[None, :, None, None]) / d.std[None, :, None, None], atol=1e-5)
    with pytest.raises(ValueError, match=r"no 'val' split.*\['train', 'test'\]"):
        no_val.split("val")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['valid'\].*\['train', 'test', 'val'\]"):
        load_dataset({"train": (X[:12], y[:12]), "test": (X[12:18], y[12:18]), "valid": (X[18:], y[18:])})


def test_data_without_a_val_split_hold_one_out_of_a_large_train_split():
    """``val_fraction="auto"``: 10 % of each class of a train split of at least 5 000 images is held
    out as ``"val"`` (images the backbone never trains on); smaller train splits keep every image."""
    rng = np.random.default_rng(0)
    n = 6500
    X = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    X[:, 0, 0, :2] = np.stack([np.arange(n) // 256, np.arange(n) % 256], 1)  # every image unique
    y = np.arange(n) % 5
    d = load_dataset((X, y))
    assert d.has_val and len(d.test) == 1300 and len(d.train) + len(d.split("val")) == 5200
    assert np.bincount(d.split("val").labels).tolist() == [104] * 5  # 10 % of every class
    ids = {s: set(map(tuple, np.round(_raw(d, s)[:, 0, 0, :2] * 255).astype(int).tolist())) for s in ("train", "val", "test")}
    assert len(ids["val"]) == 520 and not ids["val"] & ids["train"] and not ids["val"] & ids["test"]
    assert load_dataset((X, y)).fingerprint == d.fingerprint  # deterministic
    assert load_dataset((X, y), val_fraction=0).fingerprint != d.fingerprint  # the backbone trains on fewer images
    assert not load_dataset((X, y), val_fraction=0).has_val
    assert len(load_dataset((X, y), val_fraction=0.25).split("val")) == 1300
    small = load_dataset((X[:300], y[:300]))
    assert not small.has_val and len(small.train) == 240
    assert len(load_dataset((X[:300], y[:300]), val_fraction=0.5).split("val")) == 120
    with pytest.raises(ValueError, match="val_fraction=0.01 holds out no image of the 240 train images"):
        load_dataset((X[:300], y[:300]), val_fraction=0.01)


def test_digits_keep_every_train_image_and_the_shipped_checkpoints_fingerprint():
    from importlib.resources import files

    d = load_dataset("digits")
    assert not d.has_val and len(d.train) == 1438
    shipped = {
        p.name.split("-digits-")[1].split("-")[0]
        for p in files("dyncnn_gym").joinpath("checkpoints").iterdir()
        if "-digits-" in p.name
    }
    assert shipped == {d.fingerprint[: len(next(iter(shipped)))]}


@pytest.mark.parametrize("bad", ["half", 1.0, -0.1, True, None])
def test_a_bad_val_fraction_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=rf"val_fraction={bad!r} must be 'auto' or a number in \[0, 1\)"):
        load_dataset("digits", val_fraction=bad)


def test_val_fraction_is_refused_where_the_data_give_a_val_split():
    X = np.zeros((30, 1, 4, 4), dtype=np.float32)
    y = np.arange(30) % 3
    with pytest.raises(ValueError, match="val_fraction=0.2: the data give a 'val' split already"):
        load_dataset({"train": (X[:12], y[:12]), "test": (X[12:18], y[12:18]), "val": (X[18:], y[18:])}, val_fraction=0.2)
    with pytest.raises(ValueError, match="val_fraction=0.1: 'shapes' generates its own 'val' split"):
        load_dataset("shapes", val_fraction=0.1)


def test_envs_draw_training_episodes_from_the_val_split():
    import dataclasses

    import gymnasium
    from conftest import load_test_data, make_net

    digits = load_test_data("digits")
    val = dataclasses.replace(digits.test, images=digits.test.images[::-1].copy(), labels=digits.test.labels[::-1].copy())
    d = dataclasses.replace(digits, val=val)
    env = gymnasium.make("DynChannel-v0", dataset=d, backbone=make_net("vgg", "digits"), split="val")
    core = env.unwrapped.core
    assert np.array_equal(core.images.numpy(), val.images) and np.array_equal(core.labels, val.labels)
    env.reset(seed=0)
    seen = set()
    for _ in range(6):
        env.reset()
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        seen.add(info["index"])
        assert info["label"] == val.labels[info["index"]]
    assert len(seen) > 1  # drawn at random, not swept in order
    with pytest.raises(ValueError, match=r"split='dev'.*\['train', 'val', 'test', 'auto'\]"):
        gymnasium.make("DynChannel-v0", dataset=d, backbone=make_net("vgg", "digits"), split="dev")
