"""The native SB3 VecEnv (``dyncnn_gym.sb3.make_vec_env``): SB3's conventions, equivalence with the
Gymnasium vector env, and SB3's algorithms (PPO, A2C, DQN, MaskablePPO) learning on it.

Tiny data (digits 1x8x8, user12 1x12x12) and fresh small backbones keep every test quick.
"""

from __future__ import annotations

import copy
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net, mode_of, registered_ids
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from dyncnn_gym.sb3 import RoutingVecEnv, make_vec_env

IDS = registered_ids()
ARCH = {"channel": "vgg", "skip": "resnet14", "route": "resnet14"}
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
DEVICES = ["cpu", CUDA]


#: a vector env steps its envs as one batch, single envs one image at a time: oneDNN picks the
#: convolution kernels by shape, and their float32 rounding, magnified by the observation's 1 / scale,
#: differs by up to about 2e-5 (an AMD EPYC, AVX2); a wrong observation is off by far more
OBS_ATOL = 1e-4


def _kwargs(env_id: str, data_name: str = "digits", device: str = "cpu", **kw) -> dict:
    net = make_net(ARCH[mode_of(env_id)], data_name)
    if device != "cpu":
        net = copy.deepcopy(net).to(device)
    return {"dataset": load_test_data(data_name), "backbone": net, "device": device, **kw}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# -- the VecEnv API --------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_native_vecenv_spaces_and_reset(env_id):
    vec = make_vec_env(env_id, n_envs=4, seed=0, **_kwargs(env_id))
    assert isinstance(vec, RoutingVecEnv) and isinstance(vec, VecEnv)
    single = gymnasium.make(env_id, **_kwargs(env_id))
    assert vec.num_envs == 4
    assert vec.observation_space == single.observation_space
    assert vec.action_space == single.action_space
    obs = vec.reset()
    assert obs.shape == (4, *single.observation_space.shape) and obs.dtype == np.float32
    assert len(vec.reset_infos) == 4 and all(info["decision"] == 0 for info in vec.reset_infos)
    with pytest.raises(ValueError, match="no native SB3 VecEnv"):
        make_vec_env("CartPole-v1", n_envs=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id", IDS)
def test_same_step_autoreset_terminal_observation_and_episode_stats(env_id, device):
    n, seed = 3, 9
    kwargs = _kwargs(env_id, "user12", device)
    vec = make_vec_env(env_id, n_envs=n, seed=seed, **kwargs)
    singles = [gymnasium.make(env_id, **kwargs) for _ in range(n)]
    obs = vec.reset()
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=seed + i)
        assert np.allclose(obs[i], o, atol=OBS_ATOL)
    T = vec.core.T
    rng = np.random.default_rng(0)
    for _episode in range(2):
        returns = np.zeros(n)
        for _t in range(T):
            actions = rng.integers(0, vec.action_space.n, n)
            obs, rew, dones, infos = vec.step(actions)
            assert rew.dtype == np.float32 and dones.dtype == bool and len(infos) == n
            for i, env in enumerate(singles):
                o, r, term, _, inf = env.step(int(actions[i]))
                returns[i] += r
                assert np.isclose(rew[i], r, rtol=1e-5, atol=1e-6) and bool(dones[i]) == term
                if not term:
                    assert np.allclose(obs[i], o, atol=OBS_ATOL)
                    assert "terminal_observation" not in infos[i]
                    continue
                assert np.allclose(infos[i]["terminal_observation"], o, atol=OBS_ATOL)
                assert infos[i]["TimeLimit.truncated"] is False
                ep = infos[i]["episode"]
                assert ep["l"] == T and np.isclose(ep["r"], returns[i], rtol=1e-5, atol=1e-6)
                assert isinstance(ep["t"], float)
                for k in ("prediction", "label", "flops"):
                    assert infos[i][k] == inf[k]
                assert np.array_equal(infos[i]["actions"], inf["actions"])
                o2, inf2 = env.reset()
                assert np.allclose(obs[i], o2, atol=OBS_ATOL)  # the new episode's first observation
                assert vec.reset_infos[i]["index"] == inf2["index"]
        assert dones.all()


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_vecenv_equals_the_gymnasium_vector_env(env_id):
    n, seed = 4, 31
    kwargs = _kwargs(env_id, "user12")
    vec = make_vec_env(env_id, n_envs=n, seed=seed, **kwargs)
    venv = gymnasium.make_vec(env_id, num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    obs_a = vec.reset()
    obs_b, _ = venv.reset(seed=seed)
    assert np.allclose(obs_a, obs_b, atol=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(3 * vec.core.T + 1):
        actions = rng.integers(0, vec.action_space.n, n)
        obs_a, rew_a, done_a, infos = vec.step(actions)
        obs_b, rew_b, term_b, trunc_b, info_b = venv.step(actions)
        assert np.allclose(obs_a, obs_b, atol=1e-6)
        assert np.allclose(rew_a, rew_b.astype(np.float32))
        assert np.array_equal(done_a, term_b) and not trunc_b.any()
        for i in np.flatnonzero(done_a):
            assert np.allclose(infos[i]["terminal_observation"], info_b["final_obs"][i], atol=1e-6)
            assert infos[i]["prediction"] == info_b["final_info"]["prediction"][i]


def test_action_masks_attributes_wrappers_and_seed():
    env_id = "DynChannel-v0"
    vec = make_vec_env(env_id, n_envs=3, **_kwargs(env_id, budget=0.5))
    vec.seed(5)
    first = vec.reset()
    masks = vec.env_method("action_masks")
    assert len(masks) == 3 and all(m.shape == (vec.action_space.n,) and m.dtype == bool for m in masks)
    assert np.array_equal(np.stack(masks), vec.action_masks())
    assert [m.shape for m in vec.env_method("action_masks", indices=[0, 2])] == [(vec.action_space.n,)] * 2
    # a budget masks some actions somewhere in an episode
    seen_masked = False
    for _ in range(vec.core.T):
        masks = np.stack(vec.env_method("action_masks"))
        seen_masked |= not masks.all()
        actions = np.array([int(np.flatnonzero(m)[-1]) for m in masks])  # spend greedily
        vec.step(actions)
    assert seen_masked
    with pytest.raises(AttributeError, match="not available"):
        vec.env_method("close_the_door")
    # attributes
    assert vec.get_attr("action_space") == [vec.action_space] * 3
    assert vec.get_attr("budget", indices=[1]) == [0.5]
    assert vec.get_attr("render_mode") == [None] * 3
    with pytest.raises(AttributeError, match="no attribute"):
        vec.get_attr("no_such_thing")
    vec.set_attr("budget", 0.6)
    assert vec.core.budget == 0.6
    with pytest.raises(ValueError, match="all of them"):
        vec.set_attr("budget", 0.7, indices=[0])
    assert vec.env_is_wrapped(Monitor) == [True] * 3
    assert vec.env_is_wrapped(gymnasium.wrappers.TimeLimit) == [False] * 3
    # seed() applies at the next reset, the same way each time
    assert vec.seed(5) == [5, 6, 7]
    again = vec.reset()
    assert np.allclose(first, again)
    vec.seed(6)
    assert not np.allclose(first, vec.reset())
    # new backbone weights reach the shared backbone (how BackboneFinetuneCallback broadcasts)
    net = vec.backbone
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.bias"] += 1.0
    vec.env_method("set_backbone_state", state)
    assert torch.allclose(net.fc.bias, state["fc.bias"]) and not net.training


def test_vecmonitor_and_evaluate_policy():
    env_id = "DynSkip-v0"
    vec = make_vec_env(env_id, n_envs=4, seed=0, **_kwargs(env_id))
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=32, n_epochs=1, seed=0, device="cpu")
    mean, std = evaluate_policy(model, vec, n_eval_episodes=6, warn=True)
    assert np.isfinite(mean) and np.isfinite(std)
    rewards, lengths = evaluate_policy(model, vec, n_eval_episodes=4, return_episode_rewards=True)
    assert len(rewards) == 4 and lengths == [vec.core.T] * 4
    monitored = VecMonitor(make_vec_env(env_id, n_envs=2, seed=0, **_kwargs(env_id)))
    monitored.reset()
    for _ in range(monitored.venv.core.T):
        *_, dones, infos = monitored.step(np.ones(2, dtype=np.int64))
    assert dones.all() and all(info["episode"]["l"] == monitored.venv.core.T for info in infos)


# -- SB3's algorithms on the native VecEnv ------------------------------------------------------------
@pytest.mark.parametrize(
    "algo,kw,steps",
    [
        (PPO, {"n_steps": 16, "batch_size": 64, "n_epochs": 2}, 256),
        (A2C, {"n_steps": 5}, 200),
        (DQN, {"learning_starts": 64, "buffer_size": 2000, "train_freq": 4, "batch_size": 32}, 256),
    ],
    ids=["PPO", "A2C", "DQN"],
)
@pytest.mark.parametrize("env_id", IDS)
def test_sb3_algorithms_learn_on_the_native_vecenv(env_id, algo, kw, steps):
    vec = make_vec_env(env_id, n_envs=8, seed=0, **_kwargs(env_id))
    model = algo("MlpPolicy", vec, seed=0, device="cpu", **kw)
    model.learn(steps)
    assert model.num_timesteps >= steps
    assert len(model.ep_info_buffer) > 0  # episode statistics reached SB3's logger
    action, _ = model.predict(vec.reset(), deterministic=True)
    assert action.shape == (8,)


@pytest.mark.parametrize("env_id", IDS)
def test_maskable_ppo_learns_within_a_budget(env_id):
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks

    budget = 0.5 if mode_of(env_id) == "channel" else 0.6
    vec = make_vec_env(env_id, n_envs=8, seed=0, **_kwargs(env_id, budget=budget))
    model = MaskablePPO("MlpPolicy", vec, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)  # would raise if a masked action were ever taken
    assert model.num_timesteps >= 256 and len(model.ep_info_buffer) > 0
    obs = vec.reset()
    for _ in range(vec.core.T):
        action, _ = model.predict(obs, action_masks=get_action_masks(vec), deterministic=True)
        obs, _, dones, infos = vec.step(action)
    assert dones.all()
    assert all(info["flops_ratio"] <= budget + 1e-9 for info in infos)


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_on_the_native_vecenv_on_a_device(device):
    env_id = "DynChannel-v0"
    vec = make_vec_env(env_id, n_envs=4, seed=0, **_kwargs(env_id, "user12", device))
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=32, n_epochs=1, seed=0, device=device)
    model.learn(64)
    assert model.num_timesteps >= 64
    assert vec.core.images.device.type == torch.device(device).type


# ------------------------------------------------------------------------------ the PPO recipe


def test_recipe_env_arguments_are_the_recipe_updated_by_overrides():
    from dyncnn_gym.recipes import env_kwargs, recipe

    for env_id in ("DynChannel-v0", "DynSkip-v0"):
        base = env_kwargs(env_id)
        assert base == recipe(env_id)["env"] and base["loss"] == "error" and base["obs"] == "probe"
        assert env_kwargs(env_id, compute_weight=0.3, dataset="digits") == {**base, "compute_weight": 0.3, "dataset": "digits"}
    assert env_kwargs("dyncnn_gym:DynChannel-v0") == env_kwargs("DynChannel-v0")
    with pytest.raises(ValueError, match="'DynBlockDrop-v0'.*'DynChannel-v0'"):
        recipe("DynBlockDrop-v0")
    recipe("DynChannel-v0")["env"]["loss"] = "ce"  # a copy: the recipe itself is unchanged
    assert env_kwargs("DynChannel-v0")["loss"] == "error"


def test_the_co_training_recipe_fine_tunes_a_private_copy_of_the_backbone():
    from dyncnn_gym.callbacks import BackboneFinetuneCallback
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.pretraining import DEFAULT_ARCH
    from dyncnn_gym.recipes import cotrain_recipe, train_cotrained

    r = cotrain_recipe("DynChannel-v0")
    assert BackboneFinetuneCallback(**r["finetune"]).augment  # the recipe's arguments are the callback's
    shared = RoutingCore("channel", 1, dataset="digits", backbone=DEFAULT_ARCH["channel"]).net
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    model, kwargs = train_cotrained(
        "DynChannel-v0",
        dataset="digits",
        finetune_kwargs={"augment": False, "lr": 1e-2},
        total_timesteps=640,
        n_envs=8,
        progress=False,
        compute_weight=0.002,
    )
    tuned = kwargs["backbone"]
    assert model.get_env().core.net is tuned and tuned is not shared
    assert model.get_env().core.reward.compute_weight == 0.002 and kwargs["obs"] == "probe"
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())  # fine-tuned ...
    assert all(torch.equal(v, before[k]) for k, v in shared.state_dict().items())  # ... and the shared default is not


def test_the_co_training_recipe_refuses_what_it_cannot_do_before_training():
    from dyncnn_gym.recipes import cotrain_recipe, train_cotrained

    with pytest.raises(ValueError, match="'DynSkip-v0' has no co-training recipe.*'DynChannel-v0'"):
        cotrain_recipe("DynSkip-v0")
    with pytest.raises(ValueError, match="'DynBlockDrop-v0' has no recipe"):
        cotrain_recipe("DynBlockDrop-v0")
    with pytest.raises(ValueError, match="augment=True .* 8x8"):  # the recipe shifts images; digits' cannot be
        train_cotrained("DynChannel-v0", dataset="digits")
    with pytest.raises(ValueError, match="lr='fast'"):
        train_cotrained("DynChannel-v0", dataset="digits", finetune_kwargs={"lr": "fast"})


def test_train_ppo_builds_the_recipe_env_and_the_example_evaluates_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from dyncnn_gym.recipes import train_ppo

    model = train_ppo("DynChannel-v0", total_timesteps=256, n_envs=8, progress=False, dataset="digits", compute_weight=0.1)
    core = model.get_env().core
    assert core.reward.loss == "error" and core.reward.compute_weight == 0.1 and core.obs_mode == "probe"
    script = Path(__file__).resolve().parents[1] / "examples" / "ppo_dynchannel.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dataset", "digits", "--timesteps", "640", "--out", str(tmp_path / "m.zip")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy" in out.stdout and (tmp_path / "m.zip").exists()
