"""Every misuse fails loudly, naming the bad value and what would have been valid."""

from __future__ import annotations

import math
import re

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_env, make_net, user12_arrays

from dyncnn_gym.models import build
from dyncnn_gym.pretraining import load_checkpoint, pretrain
from dyncnn_gym.walk import Walk, run_routes

CHANNEL_ID, SKIP_ID = "DynChannel-v0", "DynSkip-v0"


def message(exc_info) -> str:
    return str(exc_info.value)


# ------------------------------------------------------------------------------ names


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset="cifar11")
    assert "'cifar11'" in message(exc) and "'shapes'" in message(exc) and "'digits'" in message(exc)


@pytest.mark.parametrize("env_id", [CHANNEL_ID, SKIP_ID])
def test_unknown_backbone_name(env_id):
    with pytest.raises(ValueError) as exc:
        gymnasium.make(env_id, dataset=load_test_data("user12"), backbone="vgg99")
    assert "'vgg99'" in message(exc) and "'vgg'" in message(exc) and "'resnet20'" in message(exc)


def test_backbone_without_the_envs_decisions():
    with pytest.raises(ValueError) as exc:
        gymnasium.make(SKIP_ID, dataset=load_test_data("user12"), backbone="vgg")
    msg = message(exc)
    assert "'vgg'" in msg and "'skip'" in msg and "'resnet20'" in msg and "'vgg16'" not in msg
    with pytest.raises(ValueError) as exc:
        gymnasium.make(SKIP_ID, dataset=load_test_data("user12"), backbone=make_net("vgg", "user12"))
    assert "'skip'" in message(exc) and "'channel'" in message(exc)


@pytest.mark.parametrize("backbone,error", [(123, TypeError), (torch.nn.Linear(2, 2), TypeError)])
def test_backbone_of_a_wrong_type(backbone, error):
    with pytest.raises(error) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone=backbone)
    assert "backbone" in message(exc) and "DynamicNet" in message(exc)


def test_unknown_arch():
    for call in (
        lambda: pretrain("alexnet", load_test_data("user12"), epochs=1, progress=False, allow_chance=True),
        lambda: build("alexnet", (3, 32, 32), 10),
    ):
        with pytest.raises(ValueError) as exc:
            call()
        assert "'alexnet'" in message(exc) and "'vgg'" in message(exc) and "'resnet8'" in message(exc)


@pytest.mark.parametrize(
    "kwargs,bad,choices",
    [
        ({"reward": "accuracy"}, "'accuracy'", ["'flops'", "'rnp'", "'skipnet'"]),
        ({"split": "val"}, "'val'", ["'train'", "'test'"]),
        ({"obs": "pixels"}, "'pixels'", ["'features'"]),
        ({"render_mode": "video"}, "'video'", ["'ansi'", "'rgb_array'"]),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode:UserWarning")  # gymnasium's own notice before ours
def test_unknown_option_names(kwargs, bad, choices):
    with pytest.raises(ValueError) as exc:
        make_env(CHANNEL_ID, "vgg", "user12", **kwargs)
    assert bad in message(exc)
    for c in choices:
        assert c in message(exc)


def test_unknown_split_of_a_data_set():
    with pytest.raises(ValueError) as exc:
        load_test_data("user12").split("validation")
    assert "'validation'" in message(exc) and "'train'" in message(exc)


# ------------------------------------------------------------------------------ weights and groups


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"compute_weight": -0.1}, "compute_weight"),
        ({"compute_weight": float("nan")}, "compute_weight"),
        ({"loss_weight": float("inf")}, "loss_weight"),
        ({"loss_weight": "1"}, "loss_weight"),
        ({"ce_clip": 0.0}, "ce_clip"),
        ({"ce_clip": -1.0}, "ce_clip"),
    ],
)
def test_bad_reward_weights(kwargs, name):
    with pytest.raises(ValueError) as exc:
        make_env(CHANNEL_ID, "vgg", "user12", **kwargs)
    assert name in message(exc)


def test_bad_loss_term():
    with pytest.raises(ValueError) as exc:
        make_env(CHANNEL_ID, "vgg", "user12", loss="hinge")
    assert "'hinge'" in message(exc) and "'ce'" in message(exc) and "'error'" in message(exc)


@pytest.mark.parametrize("groups", [1, 0, 2.5, "4", True])
def test_bad_groups(groups):
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone="vgg", groups=groups)
    assert "groups" in message(exc) and repr(groups) in message(exc)


def test_groups_not_dividing_the_arch_widths():
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone="vgg", groups=3)
    assert "groups=3" in message(exc) and "32" in message(exc) and "choose one of [2, 4, 8, 16]" in message(exc)
    with pytest.raises(
        ValueError, match=r"groups=5 does not divide the stage widths \[16, 32, 64\].*choose one of \[2, 4, 8, 16\]"
    ):
        make_net("resnet14", "user12", groups=5)


def test_backbone_groups_differ_from_env_groups():
    net = make_net("vgg", "user12", groups=4)
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone=net, groups=2)
    assert "groups=4" in message(exc) and "groups=2" in message(exc)


def test_backbone_built_for_other_data():
    net = make_net("vgg", "digits")
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone=net)
    assert "(1, 8, 8)" in message(exc) and "(1, 12, 12)" in message(exc)
    net = build("vgg", (1, 12, 12), 10).eval()  # right shape, 10 classes instead of 3
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone=net)
    assert "10 classes" in message(exc) and "3" in message(exc)


def test_trained_backbone_used_on_other_data_of_the_same_shape():
    data = load_test_data("user12")
    net = pretrain("vgg", data, epochs=1, progress=False, allow_chance=True, cache=False)
    other = user12_arrays(seed=5)
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=other, backbone=net)
    assert data.fingerprint in message(exc) and "fingerprint" in message(exc)


def test_checkpoint_mismatch(tmp_path):
    data = load_test_data("user12")
    path = tmp_path / "resnet8.pt"
    pretrain("resnet8", data, epochs=1, progress=False, allow_chance=True, cache=False, out=path)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, load_test_data("shapes"))
    assert "'user'" in message(exc) and "'shapes'" in message(exc)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, data, groups=2)
    assert "groups=4" in message(exc) and "groups=2" in message(exc)


# ------------------------------------------------------------------------------ budgets and devices


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5, 1e-6, float("nan"), "half", True])
def test_budget_out_of_range(budget):
    with pytest.raises(ValueError) as exc:
        make_env(SKIP_ID, "resnet8", "user12", budget=budget)
    assert f"budget={budget!r}" in message(exc) and re.search(r"in \[0\.\d{4}, 1\]", message(exc))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu():
    with pytest.raises(ValueError) as exc:
        make_env(CHANNEL_ID, "vgg", "user12", device="cuda")
    assert "'cuda'" in message(exc) and "cpu" in message(exc)


# ------------------------------------------------------------------------------ actions


@pytest.fixture
def channel_env():
    env = make_env(CHANNEL_ID, "vgg", "user12", groups=4)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("action", [4, -1, 100, np.int64(7)])
def test_action_out_of_range(channel_env, action):
    with pytest.raises(ValueError) as exc:
        channel_env.step(action)
    assert str(int(action)) in message(exc) and "Discrete(4)" in message(exc)


def test_skip_action_out_of_range():
    env = make_env(SKIP_ID, "resnet8", "user12")
    env.reset(seed=0)
    with pytest.raises(ValueError) as exc:
        env.step(2)
    assert "2" in message(exc) and "Discrete(2)" in message(exc)


@pytest.mark.parametrize("action", [1.5, "1", None, float("nan"), True, {"a": 1}])
def test_action_of_a_wrong_type(channel_env, action):
    with pytest.raises((TypeError, ValueError)) as exc:
        channel_env.step(action)
    assert repr(action) in message(exc) and "Discrete(4)" in message(exc)


@pytest.mark.parametrize("action", [[0, 1], np.zeros((2, 2), dtype=np.int64), []])
def test_action_of_a_wrong_shape(channel_env, action):
    with pytest.raises(ValueError) as exc:
        channel_env.step(action)
    assert repr(action) in message(exc) and "Discrete(4)" in message(exc)


def test_a_rejected_action_leaves_the_episode_intact(channel_env):
    with pytest.raises(ValueError):
        channel_env.step(9)
    _, _, term, _, info = channel_env.step(1)
    assert not term and info["decision"] == 1


def test_a_budget_violation_advances_no_episode():
    """With a strict budget, a rejected action must leave every env of a vector env where it was, also
    when a partial reset has split the envs into cohorts at different decision points."""
    data, net = load_test_data("user12"), make_net("vgg", "user12")
    probe = gymnasium.make(CHANNEL_ID, dataset=data, backbone=net).unwrapped.core
    cheapest = float((probe._min_to_go[0, probe.A - 1] + probe.table.stem) / probe.full)
    venv = gymnasium.make_vec(CHANNEL_ID, num_envs=2, dataset=data, backbone=net, budget=cheapest, budget_strict=True)
    venv.reset(seed=0)
    venv.step(np.array([np.flatnonzero(m)[0] for m in venv.action_masks()]))
    venv.reset(options={"reset_mask": np.array([False, True])})  # env 0 at decision 1, env 1 at 0
    masks = venv.action_masks()
    before = {int(s): c.walk.t for c in venv.core.cohorts for s in c.slots}
    with pytest.raises(ValueError, match="budget"):
        venv.step(np.array([np.flatnonzero(masks[0])[0], np.flatnonzero(~masks[1])[0]]))
    after = {int(s): c.walk.t for c in venv.core.cohorts for s in c.slots}
    assert after == before


def test_walk_rejects_bad_actions():
    net = make_net("resnet8", "user12")
    x = torch.as_tensor(load_test_data("user12").test.images[:3])
    walk = Walk(net, "skip", x)
    with pytest.raises(ValueError, match=r"outside Discrete\(2\)"):
        walk.step([0, 1, 2])
    with pytest.raises(TypeError, match="integers"):
        walk.step(torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="expected 3 actions"):
        walk.step([0, 1])
    with pytest.raises(RuntimeError, match="still to be made"):
        walk.logits()
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        run_routes(net, "skip", x, torch.zeros(3, 5, dtype=torch.long))
    while not walk.done:
        walk.step([1, 1, 1])
    with pytest.raises(RuntimeError, match="finished"):
        walk.step([1, 1, 1])


# ------------------------------------------------------------------------------ data (from the loader)


def _pair(n=30, h=12):
    rng = np.random.default_rng(0)
    return rng.random((n, h, h)).astype(np.float32), np.arange(n) % 3


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda x, y: (np.where(np.arange(len(x))[:, None, None] == 4, np.nan, x), y), ["non-finite", "nan"]),
        (lambda x, y: (np.where(np.arange(len(x))[:, None, None] == 2, np.inf, x), y), ["non-finite", "inf"]),
        (lambda x, y: (x[:0], y[:0]), ["empty"]),
        (lambda x, y: (x, y - 1), ["negative label -1"]),
        (lambda x, y: (x, np.zeros_like(y)), ["num_classes=1", ">= 2"]),
        (lambda x, y: (x, y[:10]), ["30 images", "10 labels"]),
        (lambda x, y: (x, y + 0.5), ["integer"]),
    ],
)
def test_bad_user_data(make, words):
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset=make(*_pair()), backbone="vgg")
    for w in words:
        assert w in message(exc)


def test_bad_user_dict():
    x, y = _pair()
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset={"train": (x, y)}, backbone="vgg")
    assert "'test'" in message(exc)
    with pytest.raises(TypeError):
        gymnasium.make(CHANNEL_ID, dataset=42, backbone="vgg")


def test_labels_beyond_the_backbones_classes():
    """A 3-class backbone cannot route data whose labels go up to 4."""
    x, y = _pair()
    net = make_net("vgg", "user12")
    with pytest.raises(ValueError) as exc:
        gymnasium.make(CHANNEL_ID, dataset={"train": (x, y), "test": (x[:5], np.array([0, 1, 2, 3, 4]))}, backbone=net)
    assert "classes" in message(exc)


def test_nan_never_reaches_an_observation():
    env = make_env(CHANNEL_ID, "vgg", "user12")
    obs, _ = env.reset(seed=0)
    assert all(math.isfinite(v) for v in obs)
