"""Shared fixtures: a private cache directory, tiny data sets and small backbones.

Nothing big is ever trained here. ``DYNCNN_GYM_CACHE`` is pointed at a temporary directory when
this file is imported, i.e. before any test module imports ``dyncnn_gym`` (the cache directory is
read from the environment on every call, so generated data and checkpoints land there and the
user's own cache is never touched). Subprocesses started by tests inherit it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_CACHE = tempfile.mkdtemp(prefix="dyncnn_gym_test_cache_")
os.environ["DYNCNN_GYM_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The suite runs many tiny forward passes on a small, shared machine: one intra-op thread per
# process is several times faster there than competing threads (and suits pytest-xdist workers).
torch.set_num_threads(int(os.environ.get("DYNCNN_GYM_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parent.parent

#: backbones exercised for each mode (the cheap ones; vgg8/11/16 and deep ResNets in test_models)
BACKBONES = {
    "channel": ("vgg", "resnet8", "resnet14"),
    "skip": ("resnet8", "resnet14", "resnet8-lite"),
    "route": ("resnet8", "resnet14-lite"),
}
#: the data sets every env is checked on
DATASETS = ("shapes", "digits", "user12")
GROUPS = (2, 4, 8)


def user12_arrays(n_train: int = 48, n_test: int = 24, seed: int = 0) -> dict:
    """A user dict ``{"train": (X, y), "test": (X, y)}``: grayscale 12x12 float32, 3 classes.

    The classes are stripe patterns (rows, columns, a grid) under Gaussian noise, so a tiny CNN can
    learn them and a wrong route can lose them.
    """
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (np.arange(n) % 3).astype(np.int64)
        x = rng.normal(0.0, 0.5, (n, 12, 12)).astype(np.float32)
        x[y == 0, ::2, :] += 1.0
        x[y == 1, :, ::2] += 1.0
        x[y == 2, ::3, ::3] += 2.0
        return x, y

    return {"train": make(n_train), "test": make(n_test)}


_DATA_CACHE: dict[str, object] = {}


def load_test_data(name: str):
    """Small :class:`~dyncnn_gym.data.base.DataSplits` by name, loaded once per process.

    ``"shapes"``: 64 train / 24 test embedded images (3x32x32, 10 classes, with difficulty);
    ``"digits"``: scikit-learn's digits (1x8x8, 10 classes), 300 train / 40 test;
    ``"user12"``: :func:`user12_arrays` through the user-dict path (1x12x12, 3 classes).
    """
    if name not in _DATA_CACHE:
        from dyncnn_gym.data import load_dataset

        if name == "shapes":
            d = load_dataset("shapes", n_train=64, n_test=24)
        elif name == "digits":
            d = load_dataset("digits", n_train=300, n_test=40)
        elif name == "user12":
            d = load_dataset(user12_arrays())
        else:
            raise KeyError(name)
        _DATA_CACHE[name] = d
    return _DATA_CACHE[name]


def randomize_bn(net, seed: int = 0):
    """Give every batch-norm layer non-trivial running statistics and affine parameters.

    Fresh batch-norm layers are the identity (mean 0, var 1, weight 1 or 0, bias 0), which would
    hide mistakes in folding and in which statistics a route uses; this makes them all different.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return net


_NETS: dict[tuple, object] = {}


def make_net(arch: str, data_name: str, groups: int = 4, seed: int = 0, cached: bool = True):
    """A freshly initialised backbone for a test data set (eval mode, randomised batch-norm).

    Cached nets are kept alive for the whole session and shared: do not change their weights or
    leave them in train mode.
    """
    import torch

    from dyncnn_gym.models import build

    key = (arch, data_name, groups, seed)
    if cached and key in _NETS:
        return _NETS[key]
    d = load_test_data(data_name)
    torch.manual_seed(seed)
    net = randomize_bn(build(arch, d.image_shape, d.num_classes, groups), seed).eval()
    if cached:
        _NETS[key] = net
    return net


def every_registered_id() -> list[str]:
    """Every env id dyncnn_gym registers, the one-step ids (``DynBlockDrop-*``) and the early-exit
    ``DynExit-v0`` included, found by entry point as Minigrid/HighwayEnv test theirs."""
    import gymnasium

    import dyncnn_gym  # noqa: F401  (registers the ids)

    return sorted(
        env_id
        for env_id, spec in gymnasium.registry.items()
        if isinstance(spec.entry_point, str) and spec.entry_point.startswith("dyncnn_gym")
    )


def registered_ids() -> list[str]:
    """Every per-decision routing env id (one step per decision point): :func:`every_registered_id`
    without the one-step ids and the early-exit ``DynExit-v0`` (episodes of variable length), which
    the tests of fixed-length episode semantics do not fit (they have their own tests)."""
    import dyncnn_gym

    return [env_id for env_id in every_registered_id() if env_id not in dyncnn_gym.ONE_SHOT_IDS + dyncnn_gym.EXIT_IDS]


def mode_of(env_id: str) -> str:
    """The routing mode (``"channel"``/``"skip"``) of a registered id, read from its env class (the
    one-step BlockDrop ids decide residual blocks: ``"skip"``)."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    import dyncnn_gym

    if env_id in dyncnn_gym.ONE_SHOT_IDS:
        return "skip"
    return load_env_creator(gymnasium.registry[env_id].entry_point).mode


def env_matrix() -> list[tuple[str, str, str, int]]:
    """(env id, backbone, data set, groups) combinations to check.

    For the newest version of each env, every backbone meets every data set, and ``groups`` is laid
    out as a Latin square over (backbone, data set), so every (backbone, groups) and (data set,
    groups) pair occurs too. Older versions run the same code with other defaults: one combination each.
    """
    import dyncnn_gym

    out = []
    for env_id in registered_ids():
        combos = [
            (arch, data_name, GROUPS[(i + j) % len(GROUPS)])
            for j, arch in enumerate(BACKBONES[mode_of(env_id)])
            for i, data_name in enumerate(DATASETS)
        ]
        out += [(env_id, *c) for c in (combos if env_id in dyncnn_gym.LATEST_IDS else combos[:1])]
    return out


def make_env(env_id: str, arch: str = "vgg", data_name: str = "user12", groups: int = 4, **kwargs):
    """``gymnasium.make(env_id, ...)`` on a test data set with a :func:`make_net` backbone."""
    import gymnasium

    return gymnasium.make(
        env_id, dataset=load_test_data(data_name), backbone=make_net(arch, data_name, groups), groups=groups, **kwargs
    )


def run_subprocess(code: str, timeout: float = 240) -> str:
    """Run ``python -c code`` in a fresh interpreter from the repository root; return its stdout."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def exact_execution(monkeypatch):
    """The walk with group merging and dense skips off: every (previous action, action) group runs
    on its own and only the rows that run a block compute it, so the FLOPs a mixed batch executes
    equal the FLOPs its routes count (see ``walk.MERGE_FLOPS`` and ``walk.DENSE_SKIP_SHARE``)."""
    import dyncnn_gym.walk

    monkeypatch.setattr(dyncnn_gym.walk, "MERGE_FLOPS", 0)
    monkeypatch.setattr(dyncnn_gym.walk, "DENSE_SKIP_SHARE", 0)


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """The temporary cache directory every test (and subprocess) uses."""
    return Path(_CACHE)


@pytest.fixture(scope="session")
def user12():
    return load_test_data("user12")


@pytest.fixture(scope="session")
def shapes_tiny():
    return load_test_data("shapes")


@pytest.fixture(scope="session")
def digits_small():
    return load_test_data("digits")


@pytest.fixture(scope="session")
def digit_backbones(tmp_path_factory) -> dict[str, str]:
    """Checkpoint paths of two tiny backbones trained for 2 epochs on digits: ``vgg`` (channel) and
    ``resnet8`` (skip)."""
    from dyncnn_gym.pretraining import pretrain

    d = tmp_path_factory.mktemp("bb")
    paths = {}
    for mode, arch in (("channel", "vgg"), ("skip", "resnet8")):
        paths[mode] = str(d / f"{arch}.pt")
        pretrain(arch, "digits", epochs=2, progress=False, allow_chance=True, cache=False, out=paths[mode])
    return paths
