"""FlopsTargetCallback: the compute weight steered to a target FLOPs ratio while an agent trains."""

from __future__ import annotations

import functools

import gymnasium
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.sb3 import FlopsTargetCallback, make_vec_env


def test_the_core_and_every_env_face_change_the_compute_weight_from_the_next_step():
    core = RoutingCore("channel", 2, dataset="digits", compute_weight=0.5)
    core.set_compute_weight(0.125)
    assert core.compute_weight == 0.125 and core.reward.loss == "ce"  # the rest of the reward is kept
    vec = make_vec_env("DynChannel-v0", n_envs=3, seed=0, dataset="digits", compute_weight=0.5)
    vec.env_method("set_compute_weight", 0.25)
    assert vec.core.compute_weight == 0.25 and vec.get_attr("compute_weight") == [0.25] * 3
    with pytest.raises(ValueError, match="all of them"):
        vec.env_method("set_compute_weight", 0.3, indices=[1])
    env = gymnasium.make("DynSkip-v0", dataset="digits", compute_weight=0.5)
    env.unwrapped.set_compute_weight(2.0)
    env.reset(seed=0)
    _, r, *_ = env.step(0)  # skipping the first block pays its FLOPs share at the new weight
    assert r > 0 and np.isclose(
        r / 2.0,
        env.unwrapped.core.reward.step(
            0,
            np.array([0]),
            np.array([0]),
            int(env.unwrapped.core._full_step[0]),
            env.unwrapped.core.full,
            env.unwrapped.core.A,
            env.unwrapped.core.T,
        )[0]
        / 2.0,
    )


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_a_bad_compute_weight_is_refused_and_names_the_value(bad):
    core = RoutingCore("channel", 1, dataset="digits", compute_weight=0.5)
    with pytest.raises(ValueError, match=f"compute_weight={bad!r}"):
        core.set_compute_weight(bad)
    assert core.compute_weight == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 0.0}, "target=0.0"),
        ({"target": 1.5}, "target=1.5"),
        ({"target": 0.5, "measure": "test"}, "measure='test'"),
        ({"target": 0.5, "gain": 0}, "gain=0"),
        ({"target": 0.5, "weight": -1.0}, "weight=-1.0"),
        ({"target": 0.5, "eval_images": 0}, "eval_images=0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlopsTargetCallback(**kwargs)


def test_a_target_below_the_cheapest_route_is_refused_at_training_start():
    vec = make_vec_env("DynChannel-v0", n_envs=4, seed=0, dataset="digits")
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=32, n_epochs=1, seed=0)
    lo = vec.core.min_flops_ratio
    with pytest.raises(ValueError, match=rf"target=0.01 must be a FLOPs ratio in \[{lo:.4f}, 1\] \(the cheapest route"):
        model.learn(64, callback=FlopsTargetCallback(0.01))


def _run(vec, target, measure, rollouts=4):
    T = vec.get_attr("num_decisions", indices=[0])[0] if not hasattr(vec, "core") else vec.core.T
    model = PPO("MlpPolicy", vec, n_steps=2 * T, batch_size=2 * T * vec.num_envs, n_epochs=1, seed=0)
    cb = FlopsTargetCallback(target, measure=measure, eval_images=64)
    model.learn(2 * T * vec.num_envs * rollouts, callback=cb)
    return cb


@pytest.mark.parametrize("measure", ["eval", "train"])
def test_the_weight_rises_while_the_policy_costs_more_than_the_target_and_falls_while_less(measure):
    vec = make_vec_env("DynChannel-v0", n_envs=16, seed=0, dataset="digits", compute_weight=0.1)
    lo = vec.core.min_flops_ratio
    cb = _run(vec, lo, measure)  # every route costs at least the target: the weight can only rise
    assert len(cb.history) == 4
    ws = [0.1] + [h["compute_weight"] for h in cb.history]
    assert all(b >= a for a, b in zip(ws, ws[1:])) and ws[-1] > 0.1
    for h, w_before in zip(cb.history, ws):
        assert np.isclose(h["compute_weight"], w_before * np.exp(3.0 * (h["flops_ratio"] - lo)))
    assert vec.core.compute_weight == cb.weight  # the env pays the steered weight
    vec = make_vec_env("DynChannel-v0", n_envs=16, seed=0, dataset="digits", compute_weight=0.1)
    cb = _run(vec, 1.0, measure)  # no route costs more than the full network: the weight can only fall
    ws = [0.1] + [h["compute_weight"] for h in cb.history]
    assert all(b <= a for a, b in zip(ws, ws[1:]))


def test_eval_measurement_is_the_deterministic_routing_of_held_out_images():
    vec = make_vec_env("DynSkip-v0", n_envs=8, seed=0, dataset="shapes", backbone="resnet20-lite")
    model = PPO("MlpPolicy", vec, n_steps=4, batch_size=32, n_epochs=1, seed=0)
    cb = FlopsTargetCallback(0.8, measure="eval", eval_images=32, seed=3)
    model.learn(32, callback=cb)
    assert cb.history  # one rollout measured
    from dyncnn_gym.benchmark.protocol import evaluate

    val = vec.core.data.split("val")
    idx = np.random.default_rng(3).permutation(len(val))[:32]
    core = RoutingCore("skip", 32, dataset=vec.core.data, backbone=vec.core.net, split="test", obs=vec.core.obs_mode)
    # routed in order, like the test split, over the images the callback measures
    core.images, core.labels, core.difficulty = torch.as_tensor(val.images[idx]), val.labels[idx], val.difficulty[idx]
    res = evaluate(model, "DynSkip-v0", core=core)
    assert np.isclose(cb.measured_flops_ratio(), res["flops_ratio"])


def test_single_envs_behind_a_dummy_vec_env_are_steered_through_env_method():
    make = functools.partial(gymnasium.make, "DynChannel-v0", dataset="digits", compute_weight=0.1)
    venv = DummyVecEnv([make, make])
    cb = _run(venv, 1.0, "eval", rollouts=2)
    assert venv.get_attr("compute_weight") == [cb.weight, cb.weight] and cb.weight < 0.1
