"""Dialing a trained policy to a FLOPs budget after training: a cost bias chosen on held-out images."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import DQN, PPO

from dyncnn_gym.benchmark.calibrate import CostBiasedPolicy, calibrate, flops_ratio, held_out_images
from dyncnn_gym.benchmark.protocol import evaluate
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.sb3 import make_vec_env
from dyncnn_gym.walk import Walk


@pytest.fixture(scope="module")
def trained():
    vec = make_vec_env("DynChannel-v0", n_envs=16, seed=0, dataset="digits", compute_weight=0.05, obs="probe")
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=128, n_epochs=2, seed=0).learn(2048)
    test = RoutingCore("channel", 200, split="test", dataset="digits", obs="probe")
    return model, vec.core, test


def test_a_zero_bias_routes_exactly_as_the_model_and_a_larger_bias_never_costs_more(trained):
    model, core, test = trained
    plain = evaluate(model, "DynChannel-v0", core=test, per_image=True)
    same = evaluate(CostBiasedPolicy(model, 0.0), "DynChannel-v0", core=test, per_image=True)
    assert np.array_equal(plain["images"]["actions"], same["images"]["actions"])
    images = held_out_images(core, 300)
    costs = [flops_ratio(core, CostBiasedPolicy(model, b), images) for b in (-50, -2, 0, 2, 50)]
    assert costs[0] == pytest.approx(1.0) and costs[-1] == pytest.approx(core.min_flops_ratio)  # all / fewest groups
    assert costs[0] >= costs[2] >= costs[-1] and costs[1] >= costs[3]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_calibration_meets_the_target_on_held_out_images_and_lands_near_it_on_test(trained, target):
    model, core, test = trained
    biased = calibrate(model, target, n_images=400)  # the model's own training env
    assert biased.val_flops_ratio <= target
    assert biased.val_flops_ratio > target - 0.05  # the smallest bias that fits, not any bias that fits
    assert abs(evaluate(biased, "DynChannel-v0", core=test)["flops_ratio"] - target) < 0.08  # an unseen split


def test_dqn_q_values_can_be_biased_too():
    vec = make_vec_env("DynSkip-v0", n_envs=8, seed=0, dataset="digits")
    model = DQN("MlpPolicy", vec, learning_starts=0, buffer_size=1000, seed=0).learn(200)
    core = vec.core
    images = held_out_images(core, 100)
    assert flops_ratio(core, CostBiasedPolicy(model, 1e6), images) == pytest.approx(core.min_flops_ratio)
    assert flops_ratio(core, CostBiasedPolicy(model, -1e6), images) == pytest.approx(1.0)


def test_bad_input_names_the_value(trained, tmp_path):
    model, core, _ = trained
    with pytest.raises(ValueError, match=r"target=0.01 must be a FLOPs ratio in \[0\.\d+, 1\] \(the cheapest route"):
        calibrate(model, 0.01, core)
    with pytest.raises(ValueError, match="n_images=0"):
        calibrate(model, 0.5, core, n_images=0)
    with pytest.raises(TypeError, match="str is not supported"):
        CostBiasedPolicy("ppo")
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="no training env .*pass core="):
        calibrate(PPO.load(tmp_path / "m"), 0.5)


def test_held_out_accuracy_is_what_evaluate_measures_on_those_images(trained):
    import torch

    from dyncnn_gym.benchmark.calibrate import held_out_accuracy

    model, core, _ = trained
    acc, flops = held_out_accuracy(core, model, batch_size=300)  # digits has no "val" split: all train images
    train = core.data.split("train")
    same = RoutingCore("channel", 200, split="test", dataset=core.data, backbone=core.net, obs="probe")
    same.images, same.labels, same.difficulty = torch.as_tensor(train.images), train.labels, train.difficulty
    res = evaluate(model, "DynChannel-v0", core=same)
    assert acc == pytest.approx(res["accuracy"]) and flops == pytest.approx(res["flops_ratio"])


def test_several_seeds_route_as_one_ensemble_of_their_mean_log_probabilities(trained):
    import torch

    model, core, test = trained
    other = PPO("MlpPolicy", model.get_env(), n_steps=8, batch_size=128, n_epochs=2, seed=1).learn(1024)
    obs = core.observe(Walk(core.net, core.mode, held_out_images(core, 64)))
    pair = CostBiasedPolicy([model, other], 0.3)
    expected = (CostBiasedPolicy(model).scores(obs) + CostBiasedPolicy(other).scores(obs)) / 2
    assert torch.allclose(pair.scores(obs), expected)
    assert np.array_equal(pair.predict(obs)[0], (expected - 0.3 * pair.cost).argmax(1).numpy())
    # one member is the model itself; two copies of it route exactly as it does
    solo = evaluate(model, "DynChannel-v0", core=test, per_image=True)["images"]["actions"]
    twice = evaluate(CostBiasedPolicy([model, model]), "DynChannel-v0", core=test, per_image=True)["images"]["actions"]
    assert np.array_equal(solo, twice)
    # an ensemble is dialed like one model, on its first member's training env
    dialed = calibrate([model, other], 0.5, n_images=300)
    assert dialed.models == [model, other] and 0.45 < dialed.val_flops_ratio <= 0.5


def test_an_ensemble_refuses_members_that_score_differently():
    ppo = PPO("MlpPolicy", make_vec_env("DynSkip-v0", n_envs=2, seed=0, dataset="digits"), n_steps=8, batch_size=16)
    dqn = DQN("MlpPolicy", make_vec_env("DynSkip-v0", n_envs=2, seed=0, dataset="digits"), learning_starts=0, buffer_size=100)
    with pytest.raises(ValueError, match=r"must score alike; got \['Q-values', 'log-probabilities'\]"):
        CostBiasedPolicy([ppo, dqn])
    with pytest.raises(ValueError, match=r"model=\[\] holds no model"):
        CostBiasedPolicy([])
