"""One-shot (BlockDrop) policies: an SB3 actor trained on ``DynBlockDrop`` (``MultiBinary(T)``) is
evaluated, dialed and exported through its ``DynSkip`` core, routes every image as the one-step env
does, and its exported model reads one observation per image."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net
from stable_baselines3 import PPO
from torch import nn

import dyncnn_gym
from dyncnn_gym import evaluate
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.policies import CostBiasedPolicy, OneShotHead, as_policy
from dyncnn_gym.routed import load
from dyncnn_gym.walk import Walk


def _kw(**kw) -> dict:
    return {"dataset": load_test_data("digits"), "backbone": make_net("resnet14", "digits"), **kw}


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        env = gymnasium.make("DynBlockDrop-v0", **_kw())
        return PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0).learn(64)


def _test_observations(env_id: str, kw: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The test images and the one-step env's observation of each (DynSkip's first)."""
    core = make_core(env_id, 1, split="test", **kw)
    walk = Walk(core.net, "skip", core.images)
    return core.images, core.observe(walk)


def test_evaluate_routes_every_test_image_as_the_one_step_env_and_sb3_predict_do(model):
    kw = _kw()
    res = evaluate(model, "DynBlockDrop-v0", per_image=True, **kw)
    _, obs = _test_observations("DynSkip-v0", kw)
    bits = model.predict(obs, deterministic=True)[0]
    assert np.array_equal(res["images"]["actions"], bits)
    env = gymnasium.make("DynBlockDrop-v0", split="test", **kw)
    for seed in range(12):  # the one-step env's outcome for the same action on the same image
        o, _ = env.reset(seed=seed)
        _, _, _, _, info = env.step(model.predict(o, deterministic=True)[0])
        i = info["index"]
        assert info["actions"].tolist() == res["images"]["actions"][i].tolist()
        assert info["flops"] == res["images"]["flops"][i] and info["prediction"] == res["images"]["prediction"][i]
    assert as_policy(model).one_shot and "one-shot" in as_policy(model).description


def test_a_v1_id_dials_the_keep_logits_to_its_flops_target_and_export_routes_alike(model):
    kw = _kw(obs="features")  # the v1 defaults but the model's observations
    res = evaluate(model, "DynBlockDrop-v1", per_image=True, **kw)
    assert res["dialed"] is not None and res["dialed"]["val_flops_ratio"] <= 0.68 + 1e-9
    routed = dyncnn_gym.export(model, "DynBlockDrop-v1", **kw)
    assert routed.env_id == "DynBlockDrop-v1" and routed.one_shot
    images, _ = _test_observations("DynSkip-v1", kw)
    calls = []
    observe = routed._observe
    routed._observe = lambda walk: calls.append(walk.t) or observe(walk)
    out = routed.route(images)
    assert calls == [0]  # one observation per image: the plan is made at the first decision
    assert np.array_equal(out.actions.numpy(), res["images"]["actions"])
    assert np.array_equal(out.flops.numpy(), res["images"]["flops"])
    assert np.array_equal(out.logits.argmax(1).numpy(), res["images"]["prediction"])
    one = routed.route(images[3:4])
    assert one.actions[0].tolist() == res["images"]["actions"][3].tolist()


def test_an_exported_one_shot_model_saves_and_loads_without_sb3(model, tmp_path):
    kw = _kw()
    routed = dyncnn_gym.export(model, "DynBlockDrop-v0", **kw)
    images, _ = _test_observations("DynSkip-v0", kw)
    path = routed.save(tmp_path / "bd.pt")
    again = load(path)
    assert isinstance(again.head, OneShotHead) and again.env_id == "DynBlockDrop-v0"
    a, b = routed.route(images), again.route(images)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.flops, b.flops) and torch.equal(a.logits, b.logits)


def test_a_budget_holds_a_one_shot_policy_and_a_cost_bias_turns_blocks_off(model):
    kw = _kw()
    core = make_core("DynSkip-v0", 1, **kw)
    keep_all = OneShotHead(nn.Linear(core.observation_space.shape[0], core.T))
    with torch.no_grad():
        keep_all.body.weight.zero_()
        keep_all.body.bias.fill_(5.0)
    free = evaluate(keep_all, "DynSkip-v0", per_image=True, **kw)
    assert free["flops_ratio"] == pytest.approx(1.0) and (free["images"]["actions"] == 1).all()
    capped = evaluate(keep_all, "DynSkip-v0", per_image=True, budget=0.6, **kw)
    full = core.full
    assert (capped["images"]["flops"] <= 0.6 * full + 1e-6).all() and capped["flops_ratio"] < 0.6
    routed = dyncnn_gym.export(keep_all, "DynSkip-v0", budget=0.6, **kw)
    images, _ = _test_observations("DynSkip-v0", kw)
    assert np.array_equal(routed.route(images).actions.numpy(), capped["images"]["actions"])
    _, obs = _test_observations("DynSkip-v0", kw)
    off = CostBiasedPolicy(model, bias=1e6)
    assert (off.predict(obs)[0] == 0).all() and off.predict(obs)[0].shape == (len(obs), core.T)
    assert evaluate(off, "DynBlockDrop-v0", **kw)["flops_ratio"] < 0.2


def test_one_shot_policies_refuse_what_they_cannot_route(model):
    kw = _kw()
    with pytest.raises(ValueError, match="one-shot BlockDrop policy.*skip decisions"):
        evaluate(model, "DynChannel-v0", dataset=load_test_data("digits"), backbone=make_net("vgg", "digits"))
    with pytest.raises(ValueError, match="one-shot BlockDrop policy.*skip decisions"):
        dyncnn_gym.export(model, "DynChannel-v0", dataset=load_test_data("digits"), backbone=make_net("vgg", "digits"))
    core = make_core("DynSkip-v0", 1, **kw)
    D, T = core.observation_space.shape[0], core.T
    for wrong in (T - 1, T + 1):  # keep logits for another backbone's blocks
        with pytest.raises(ValueError, match=f"this backbone has {T} skip decisions"):
            evaluate(OneShotHead(nn.Linear(D, wrong)), "DynSkip-v0", **kw)
        with pytest.raises(ValueError, match=f"this backbone has {T} skip decisions"):
            dyncnn_gym.export(OneShotHead(nn.Linear(D, wrong)), "DynSkip-v0", **kw)
    with pytest.raises(ValueError, match="reward='bogus' is not a DynBlockDrop reward"):
        evaluate(model, "DynBlockDrop-v0", reward="bogus", **kw)
    assert evaluate(model, "DynBlockDrop-v0", reward="blockdrop", penalty=2.0, usage="flops", **kw)["n_images"] == 40


def test_a_sampled_one_shot_route_is_drawn_once_per_image_as_the_one_step_env_draws_it(model):
    kw = _kw()
    core = make_core("DynSkip-v0", 8, split="test", **kw)
    images = core.images[:8]
    obs = core.observe(Walk(core.net, "skip", images))
    torch.manual_seed(5)
    drawn = model.predict(obs, deterministic=False)[0]
    torch.manual_seed(5)
    _, walk = core.route(model, images, deterministic=False)
    assert np.array_equal(walk.actions.numpy(), drawn)  # the same draws as SB3's predict on the first observation
    assert np.array_equal(walk.flops.numpy(), [core.table.path_flops(a) for a in drawn])


def test_the_native_sb3_vecenv_of_dynblockdrop_equals_its_gymnasium_vector_env():
    from gymnasium.vector import AutoresetMode

    from dyncnn_gym.sb3 import OneShotVecEnv, make_vec_env

    n, seed, kw = 4, 31, _kw(penalty=2.0)
    vec = make_vec_env("DynBlockDrop-v0", n_envs=n, seed=seed, **kw)
    assert isinstance(vec, OneShotVecEnv)
    venv = gymnasium.make_vec("DynBlockDrop-v0", num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **kw)
    obs_a = vec.reset()
    obs_b, _ = venv.reset(seed=seed)
    assert np.allclose(obs_a, obs_b, atol=1e-6) and "action_mask" not in vec.reset_infos[0]
    rng = np.random.default_rng(1)
    for _ in range(3):
        actions = rng.integers(0, 2, (n, vec.action_space.n))
        obs_a, rew_a, done_a, infos = vec.step(actions)
        obs_b, rew_b, term_b, _, info_b = venv.step(actions)
        assert np.allclose(obs_a, obs_b, atol=1e-6) and np.allclose(rew_a, rew_b.astype(np.float32))
        assert done_a.all() and term_b.all()
        for i in range(n):
            assert np.allclose(infos[i]["terminal_observation"], info_b["final_obs"][i], atol=1e-6)
            assert infos[i]["flops"] == info_b["final_info"]["flops"][i]
            assert infos[i]["episode"]["l"] == 1 and infos[i]["episode"]["r"] == pytest.approx(rew_a[i])
    assert set(vec.env_method("teacher", indices=[1])[0]) >= {"best_action", "return_full"}
    with pytest.raises(AttributeError, match="no action masks"):
        vec.env_method("action_masks")
    with pytest.raises(ValueError, match="not a one-step env"):
        OneShotVecEnv("DynSkip-v0", 2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = PPO("MlpPolicy", vec, n_steps=16, batch_size=64, n_epochs=1, seed=0).learn(64)
    assert evaluate(model, "DynBlockDrop-v0", **kw)["n_images"] == 40
