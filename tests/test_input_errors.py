"""Inputs that look valid: every one is accepted as documented (docs/files.md) or refused with a
clear error; the command line answers every user error with one line and exit code 2.

Property-based tests (hypothesis) cover env arguments, actions and data arrays; example counts and
deadlines are bounded so the file runs in seconds.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_test_data, make_env, make_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyncnn_gym.cli import main
from dyncnn_gym.data import load_dataset
from dyncnn_gym.data.arrays import MAX_PIXEL, channels_last
from dyncnn_gym.device import check_device
from dyncnn_gym.envs.core import nearest_allowed
from dyncnn_gym.pretraining import ChanceLevelError, pretrain
from dyncnn_gym.sb3 import make_vec_env

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHANNEL_ID, SKIP_ID = "DynChannel-v0", "DynSkip-v0"
ARCH = {CHANNEL_ID: "vgg", SKIP_ID: "resnet8"}


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)


def _cheapest(env) -> float:
    core = env.unwrapped.core
    return float((core._min_to_go[0, core.A - 1] + core.table.stem) / core.full)


# ---------------------------------------------------------------------------------------- env arguments

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-5, 5),
    st.sampled_from([np.float32(0.5), np.float64(2.0), np.int64(1), np.int32(0), np.float16(0.25)]),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@FAST
@given(
    name=st.sampled_from(["compute_weight", "loss_weight", "ce_clip"]),
    value=NUMBERS,
    env_id=st.sampled_from([CHANNEL_ID, SKIP_ID]),
)
def test_reward_weights_are_accepted_exactly_when_finite_non_negative_reals(name, value, env_id):
    valid = (
        value is not None
        and not isinstance(value, (bool, str, np.bool_))
        and math.isfinite(float(value))
        and float(value) >= 0
        and not (name == "ce_clip" and float(value) == 0)
    )
    if name == "compute_weight" and value is None:
        valid = True  # None: the reward form's default
    if valid:
        env = make_env(env_id, ARCH[env_id], "user12", **{name: value})
        env.reset(seed=0)
        if name == "compute_weight":
            assert env.unwrapped.compute_weight == (0.5 if value is None else float(value))
    else:
        with pytest.raises(ValueError) as exc:
            make_env(env_id, ARCH[env_id], "user12", **{name: value})
        assert name in str(exc.value)


def test_numpy_scalars_are_numbers():
    env = make_env(CHANNEL_ID, "vgg", "user12", compute_weight=np.float32(0.5), loss_weight=np.float64(1.0))
    env.unwrapped.set_compute_weight(np.int64(1))
    assert env.unwrapped.compute_weight == 1.0
    drop = gymnasium.make(
        "DynBlockDrop-v0", dataset=load_test_data("user12"), backbone=make_net("resnet8", "user12"), penalty=np.float32(0.5)
    )
    drop.reset(seed=0)
    from dyncnn_gym.callbacks import FlopsTargetCallback

    assert FlopsTargetCallback(np.float32(0.5), gain=np.float64(2.0)).target == 0.5
    for bad in (np.bool_(True), True, np.float32("nan")):
        with pytest.raises(ValueError, match="compute_weight"):
            env.unwrapped.set_compute_weight(bad)


@FAST
@given(
    budget=st.one_of(st.floats(-1, 2), st.sampled_from([None, "half", True, np.float32(0.9), float("nan")])),
    obs=st.sampled_from(["features", "probe", "pixels"]),
    split=st.sampled_from(["train", "test", "valid"]),
)
def test_env_arguments_build_or_fail_with_the_name_of_the_bad_one(budget, obs, split):
    probe = make_env(SKIP_ID, "resnet8", "user12")
    lo = _cheapest(probe)
    budget_ok = budget is None or (
        not isinstance(budget, (bool, str)) and math.isfinite(float(budget)) and lo <= float(budget) <= 1.0
    )
    bad = [n for n, ok in (("budget", budget_ok), ("obs", obs != "pixels"), ("split", split != "valid")) if not ok]
    if not bad:
        make_env(SKIP_ID, "resnet8", "user12", budget=budget, obs=obs, split=split).reset(seed=0)
        return
    with pytest.raises(ValueError) as exc:
        make_env(SKIP_ID, "resnet8", "user12", budget=budget, obs=obs, split=split)
    assert any(f"{n}=" in str(exc.value) for n in bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: gymnasium.make("DynChannel-v1", **kw),
        lambda **kw: gymnasium.make_vec("DynSkip-v1", num_envs=2, **kw),
        lambda **kw: gymnasium.make("DynExit-v1", **kw),
        lambda **kw: gymnasium.make("DynBlockDrop-v1", **kw),
        lambda **kw: make_vec_env("DynRoute-v1", n_envs=2, **kw),
        lambda **kw: make_vec_env("DynBlockDrop-v1", n_envs=2, **kw),
    ],
)
def test_a_misspelt_env_argument_is_named_with_the_valid_ones(make):
    with pytest.raises(TypeError) as exc:
        make(flop_target=0.5)
    message = str(exc.value)
    assert "unknown argument flop_target=0.5; the valid arguments are [" in message
    assert "'flops_target'" in message and "'dataset'" in message and "'num_slots'" not in message


# ---------------------------------------------------------------------------------------- actions and budgets


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env_id=st.sampled_from([CHANNEL_ID, SKIP_ID]),
    where=st.floats(0.0, 1.0),
    actions=st.lists(st.integers(0, 3), min_size=14, max_size=14),
)
def test_a_budget_env_takes_any_action_and_stays_within_the_budget(env_id, where, actions):
    probe = make_env(env_id, ARCH[env_id], "user12")
    lo = _cheapest(probe)
    budget = lo + where * (1 - lo)
    env = make_env(env_id, ARCH[env_id], "user12", budget=budget)
    A = int(env.action_space.n)
    _, info = env.reset(seed=0)
    for a in actions:
        a = a % A
        mask = info["action_mask"]
        _, _, term, trunc, info = env.step(a)
        assert info["action_forbidden"] == (not mask[a])
        taken = info["action_taken"]
        assert mask[taken]
        if not mask[a]:  # the nearest allowed: the largest allowed below, else the smallest allowed
            below = np.flatnonzero(mask[: a + 1])
            assert taken == (below[-1] if len(below) else np.flatnonzero(mask)[0])
        else:
            assert taken == a
        if term:
            break
    assert term and not trunc
    assert info["flops_ratio"] <= budget + 1e-9
    assert info["actions"][-1] == taken


def test_nearest_allowed():
    masks = np.array([[True, True, False, False], [False, False, True, True], [True, False, True, False]])
    np.testing.assert_array_equal(nearest_allowed(masks, np.array([3, 0, 3])), [1, 2, 2])
    np.testing.assert_array_equal(nearest_allowed(masks, np.array([1, 3, 0])), [1, 3, 0])


@pytest.mark.parametrize("env_id", [CHANNEL_ID, SKIP_ID])
def test_budget_envs_pass_both_checkers_with_warnings_as_errors(env_id):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    probe = make_env(env_id, ARCH[env_id], "user12")
    for budget in (_cheapest(probe), 0.6):
        env = make_env(env_id, ARCH[env_id], "user12", budget=budget)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env.unwrapped, skip_render_check=True)
            sb3_check_env(env.unwrapped, warn=True)


def test_vector_budget_envs_report_what_they_took():
    probe = make_env(CHANNEL_ID, "vgg", "user12")
    venv = gymnasium.make_vec(
        CHANNEL_ID, num_envs=3, dataset=load_test_data("user12"), backbone=make_net("vgg", "user12"), budget=_cheapest(probe)
    )
    venv.reset(seed=0)
    _, _, _, _, info = venv.step(np.array([3, 0, 2]))
    np.testing.assert_array_equal(info["action_taken"], [0, 0, 0])
    np.testing.assert_array_equal(info["action_forbidden"], [True, False, True])


def test_evaluate_holds_a_policy_to_the_budget_unless_told_otherwise():
    import dyncnn_gym

    probe = make_env(CHANNEL_ID, "vgg", "user12")
    kw = {"dataset": load_test_data("user12"), "backbone": make_net("vgg", "user12"), "budget": _cheapest(probe)}

    def greedy(obs):
        return np.full(len(obs), 3)

    with pytest.raises(ValueError, match="breaks the compute budget"):
        dyncnn_gym.evaluate(greedy, CHANNEL_ID, **kw)
    res = dyncnn_gym.evaluate(greedy, CHANNEL_ID, budget_strict=False, **kw)
    assert res["flops_ratio"] == pytest.approx(_cheapest(probe))


@FAST
@given(action=st.one_of(st.integers(-3, 6), st.floats(-2, 6), st.text(max_size=2), st.lists(st.integers(0, 3), max_size=3)))
def test_any_action_steps_or_fails_clearly(action):
    env = make_env(CHANNEL_ID, "vgg", "user12", groups=4)
    env.reset(seed=0)
    a = np.asarray(action).reshape(-1)
    valid = a.size == 1 and a.dtype.kind in "iuf" and float(a[0]) == int(a[0]) and 0 <= a[0] <= 3
    if valid:
        env.step(action)
    else:
        with pytest.raises((ValueError, TypeError)) as exc:
            env.step(action)
        assert "Discrete(4)" in str(exc.value)


def test_render_modes():
    env = make_env(CHANNEL_ID, "vgg", "user12", render_mode="human")
    env.reset(seed=0)
    env.step(0)
    assert env.render() is None
    with pytest.raises(ValueError) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_env(CHANNEL_ID, "vgg", "user12", render_mode="window")
    assert all(m in str(exc.value) for m in ("'ansi'", "'rgb_array'", "'human'"))


def test_max_episode_steps_below_the_episode_length():
    venv_kw = {"dataset": load_test_data("user12"), "backbone": make_net("vgg", "user12")}
    with pytest.raises(ValueError, match="max_episode_steps=2"):
        gymnasium.make_vec(CHANNEL_ID, num_envs=2, max_episode_steps=2, **venv_kw)
    env = gymnasium.make(CHANNEL_ID, max_episode_steps=2, **venv_kw)  # a TimeLimit outside the env: documented
    env.reset(seed=0)
    env.step(0)
    *_, term, trunc, info = env.step(0)
    assert trunc and not term and "prediction" not in info


# ---------------------------------------------------------------------------------------- data arrays


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    ndim=st.sampled_from([3, 4]),
    dtype=st.sampled_from(["uint8", "float32", "float64", "int64", "bool"]),
    poison=st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30, -2e6, 1e6]),
)
def test_user_arrays_load_as_documented_or_fail_clearly(shape, ndim, dtype, poison):
    rng = np.random.default_rng(0)
    n = 12
    full = (n, *shape) if ndim == 4 else (n, *shape[1:])
    x = (rng.random(full) * 200).astype(dtype)
    y = np.arange(n) % 3
    if poison is not None and dtype in ("float32", "float64"):
        x.flat[5] = poison
    elif poison is not None and dtype == "int64" and abs(poison) < 2**62:
        x.flat[5] = int(poison)
    bad_value = x.dtype.kind in "fi" and (not np.isfinite(x).all() or (np.abs(x.astype(np.float64)) > MAX_PIXEL).any())
    if bad_value:
        with pytest.raises(ValueError) as exc:
            load_dataset({"train": (x, y), "test": (x, y)})
        assert "non-finite" in str(exc.value) or "beyond" in str(exc.value)
        return
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = load_dataset({"train": (x, y), "test": (x, y)})
    if ndim == 3:
        expect = (1, *shape[1:])
    elif channels_last(full):
        expect = (shape[2], shape[0], shape[1])
        assert any("channels-last" in str(w.message) for w in rec)
    else:
        expect = shape
    assert ds.image_shape == expect
    assert np.isfinite(ds.train.images).all()


def test_channels_last_is_recognised_by_the_smallest_last_dimension():
    assert channels_last((5, 32, 32, 3)) and channels_last((5, 28, 28, 1)) and channels_last((5, 32, 32, 2))
    assert not channels_last((5, 3, 32, 32)) and not channels_last((5, 16, 8, 8)) and not channels_last((5, 4, 4, 4))
    x = np.random.default_rng(0).random((20, 10, 10, 2)).astype(np.float32)
    with pytest.warns(UserWarning, match="channels-last"):
        ds = load_dataset((x, np.arange(20) % 2))
    assert ds.image_shape == (2, 10, 10)


def test_huge_pixels_are_refused_not_normalised_to_zero():
    x = np.random.default_rng(0).random((20, 8, 8))
    x[3, 2, 2] = 1e30
    with pytest.raises(ValueError, match="1e\\+30") as exc:
        load_dataset((x, np.arange(20) % 2))
    assert "image 3" in str(exc.value)


def test_a_test_class_missing_from_train_warns():
    rng = np.random.default_rng(0)
    train = (rng.random((12, 8, 8)), np.arange(12) % 2)
    test = (rng.random((6, 8, 8)), np.array([0, 1, 2, 2, 0, 1]))
    with pytest.warns(UserWarning, match=r"test class\(es\) \[2\] never occur in the train split"):
        load_dataset({"train": train, "test": test})


# ---------------------------------------------------------------------------------------- pretraining arguments


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 1e10}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"groups": 1}, "groups"),
        ({"seed": -1}, "seed"),
        ({"device": "gpu"}, "device"),
        ({"device": "meta"}, "device"),
    ],
)
def test_pretrain_refuses_bad_arguments_before_training(monkeypatch, kwargs, name):
    _no_training(monkeypatch)
    with pytest.raises(ValueError) as exc:
        pretrain("vgg", load_test_data("user12"), cache=False, progress=False, **kwargs)
    assert f"{name}=" in str(exc.value)


def test_devices_are_checked():
    assert check_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "meta", "tpu:0"):
        with pytest.raises(ValueError, match=repr(bad)):
            check_device(bad)
    with pytest.raises(TypeError):
        check_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            check_device("cuda")


def _one_class_test_split():
    rng = np.random.default_rng(1)
    x = rng.random((30, 8, 8)).astype(np.float32)
    y = np.arange(30) % 3
    return {"train": (x, y), "test": (x[y == 0], y[y == 0])}


def test_a_backbone_at_chance_level_is_refused_unless_allowed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    data = load_dataset(_one_class_test_split())  # always answering class 0 is right on every test image
    with pytest.raises(ChanceLevelError) as exc:
        pretrain("vgg", data, epochs=1, batch_size=16, progress=False)
    msg = str(exc.value)
    assert "1.0000" in msg and "allow_chance=True" in msg and "not cached" in msg
    rescued = msg.split("saved at '")[1].split("'")[0]
    assert rescued.startswith(str(tmp_path / "tmp"))
    out = tmp_path / "kept.pt"
    net = pretrain("vgg", data, epochs=1, batch_size=16, progress=False, allow_chance=True, out=out)
    assert out.is_file() and net.arch == "vgg"
    from dyncnn_gym.cache import cache_dir

    assert not list(cache_dir("checkpoints", create=False).glob(f"vgg-g4-user-{data.fingerprint}-*.pt"))


def test_timesteps_must_be_positive():
    from dyncnn_gym.recipes import train_ppo

    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="total_timesteps="):
            train_ppo(CHANNEL_ID, total_timesteps=bad, dataset=load_test_data("user12"), backbone=make_net("vgg", "user12"))


# ---------------------------------------------------------------------------------------- the command line


def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture
def blocked(tmp_path):
    """A path whose parent is a regular file: nothing can be created there."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "out"


def test_cli_user_errors_are_one_line_with_exit_code_2(capsys, tmp_path, blocked, monkeypatch):
    _no_training(monkeypatch)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    import zipfile

    nodata = tmp_path / "nodata.zip"
    with zipfile.ZipFile(nodata, "w") as z:
        z.writestr("other", b"x")
    cases = [
        ("pretrain", "vgg", "--data", "digits", "--device", "cuda" if not torch.cuda.is_available() else "cuda:99"),
        ("pretrain", "vgg", "--data", "digits", "--device", "gpu"),
        ("pretrain", "vgg", "--data", "digits", "--device", "meta"),
        ("pretrain", "vgg", "--data", "digits", "--batch-size", "0"),
        ("pretrain", "vgg", "--data", "digits", "--epochs", "0"),
        ("pretrain", "vgg", "--data", "digits", "--lr", "1e10"),
        ("pretrain", "vgg", "--data", "digits", "--no-cache", "--out", ""),
        ("pretrain", "vgg", "--data", "digits", "--no-cache", "--out", str(tmp_path)),
        ("pretrain", "vgg", "--data", "digits", "--no-cache", "--out", str(blocked / "n.pt")),
        ("evaluate", str(junk)),
        ("evaluate", str(nodata)),
        ("evaluate", str(tmp_path)),
        ("evaluate", str(tmp_path / "missing.zip")),
        ("evaluate", str(junk), "--env-kwargs", "[1, 2]"),
        ("demo", "--out", str(blocked)),
        ("demo", "--timesteps", "0", "--out", str(tmp_path / "d")),
        ("bench", "--suite", "cpu-v0", "--agent", "static", "--out", str(blocked)),
        ("bench", "--suite", "cpu-v0", "--agent", "static", "--timesteps", "0", "--out", str(tmp_path / "b")),
        ("sweep", "--out", str(blocked)),
        ("sweep", "--timesteps", "0", "--out", str(tmp_path / "s")),
        ("perf", "--out", str(tmp_path)),
        ("perf", "--device", "gpu"),
    ]
    for argv in cases:
        rc, err = _cli(capsys, *argv)
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dyncnn-gym {argv[0]}: error: "), (argv, err)
        assert "Traceback" not in err
    assert not blocked.exists()


def test_cli_debug_shows_the_traceback(capsys, monkeypatch):
    with pytest.raises(ValueError, match="batch_size=0"):
        main(["--debug", "pretrain", "vgg", "--data", "digits", "--batch-size", "0"])
    monkeypatch.setenv("DYNCNN_GYM_DEBUG", "1")
    with pytest.raises(ValueError, match="batch_size=0"):
        main(["pretrain", "vgg", "--data", "digits", "--batch-size", "0"])


def test_cli_info_and_a_real_process_exit_code(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cache dir" in out and "resnet56-exits+distill" in out
    proc = subprocess.run(
        [sys.executable, "-m", "dyncnn_gym.cli", "pretrain", "vgg", "--device", "gpu"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "dyncnn-gym pretrain: error: device='gpu' is not a torch device; choose one of ['cpu', 'cuda', 'mps', 'xpu']"
        " (optionally with an index, e.g. 'cuda:0')"
    )
