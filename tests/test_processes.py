"""Envs in other processes: pickling, spawn / forkserver workers, a light import, and
``BackboneFinetuneCallback`` reaching envs in subprocesses.

Vector envs of two worker processes, started with ``spawn`` (each worker re-imports torch: seconds)
or ``forkserver`` (workers fork from a server that preloaded the package: milliseconds), must give
what the same envs give in-process. The env factories are ``functools.partial`` of
``gymnasium.make`` with tiny in-memory data and backbones (or names), so a worker unpickles them
without importing this test module (whose ``conftest`` import would point the child at another cache).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import time

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net, run_subprocess
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from dyncnn_gym.callbacks import BackboneFinetuneCallback, local_core

ENVS = {"DynChannel-v0": "vgg", "DynSkip-v0": "resnet8"}  # env id -> a cheap backbone for it
START_METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
N_WORKERS = 2
#: what the forkserver imports once, before it forks workers (as users should set it: workers then
#: start in milliseconds instead of re-importing torch); no effect if this process's server runs already
FORKSERVER_PRELOAD = ["dyncnn_gym.envs", "stable_baselines3"]
if "forkserver" in START_METHODS:
    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
EPISODES = 2


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch):
    """Workers inherit one intra-op thread (the parent runs with one): same kernels, same floats."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def env_fn(env_id: str, seed_net: int = 0) -> functools.partial:
    """A picklable factory of ``env_id`` on the tiny ``shapes`` data (with difficulty infos)."""
    return functools.partial(
        gymnasium.make, env_id, dataset=load_test_data("shapes"), backbone=make_net(ENVS[env_id], "shapes", 4, seed_net)
    )


def fixed_actions(env_id: str, steps: int) -> np.ndarray:
    """int64 ``[steps, N_WORKERS]`` actions drawn independently of the envs."""
    n_actions = 4 if env_id == "DynChannel-v0" else 2
    return np.random.default_rng(1).integers(0, n_actions, size=(steps, N_WORKERS))


FINAL_KEYS = ("prediction", "label", "correct", "index", "flops", "actions")


def sb3_trace(venv, actions: np.ndarray) -> dict:
    """Observations, rewards, dones and final infos of ``venv`` under ``actions`` (SB3 API)."""
    venv.seed(7)
    obs = [venv.reset()]
    rews, dones, finals = [], [], []
    for a in actions:
        o, r, d, infos = venv.step(a)
        obs.append(o)
        rews.append(r)
        dones.append(d)
        finals += [(i, {k: np.asarray(info[k]).tolist() for k in FINAL_KEYS}) for i, info in enumerate(infos) if d[i]]
    venv.close()
    return {"obs": np.stack(obs), "rew": np.stack(rews), "done": np.stack(dones), "finals": finals}


def gym_trace(venv, actions: np.ndarray) -> dict:
    """The same for a Gymnasium vector env (next-step autoreset; infos as dict of arrays)."""
    o, _ = venv.reset(seed=7)
    obs, rews, dones, finals = [o], [], [], []
    for a in actions:
        o, r, term, trunc, info = venv.step(a)
        assert not trunc.any()
        obs.append(o)
        rews.append(r)
        dones.append(term)
        for i in np.flatnonzero(term):
            assert info["_correct"][i]
            finals.append((int(i), {k: np.asarray(info[k][i]).tolist() for k in FINAL_KEYS}))
        if "difficulty_params" in info:  # nested dicts survive the pipe too
            assert set(info["difficulty_params"]) and all(
                isinstance(v, np.ndarray) for v in info["difficulty_params"].values()
            )
    venv.close()
    return {"obs": np.stack(obs), "rew": np.stack(rews), "done": np.stack(dones), "finals": finals}


def assert_same_trace(got: dict, want: dict, steps: int) -> None:
    assert want["done"].sum() == EPISODES * N_WORKERS  # every worker finished EPISODES episodes
    np.testing.assert_array_equal(got["done"], want["done"])
    np.testing.assert_allclose(got["obs"], want["obs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["rew"], want["rew"], rtol=1e-5, atol=1e-6)
    assert got["finals"] == want["finals"]
    assert got["obs"].shape[0] == steps + 1


# --------------------------------------------------------------------------- worker processes

# (library, start method, env id, env arguments): each env under both libraries and both start
# methods, each library under both start methods, in four cases. "objects": tiny in-memory data and
# backbone pickled into the worker; "names": dataset="digits" and the default backbone, resolved in
# the worker from the shipped checkpoints. Spawned workers re-import torch (seconds each);
# forkserver workers fork from a server that preloaded it (see FORKSERVER_PRELOAD).
CASES = [
    ("sb3", "spawn", "DynChannel-v0", "objects"),
    ("sb3", "forkserver", "DynSkip-v0", "objects"),
    ("gymnasium", "spawn", "DynSkip-v0", "names"),
    ("gymnasium", "forkserver", "DynChannel-v0", "objects"),
]


@pytest.mark.parametrize(("library", "start_method", "env_id", "source"), [c for c in CASES if c[1] in START_METHODS])
def test_subprocess_workers_match_in_process(library, start_method, env_id, source, cache_root):
    """``SubprocVecEnv(start_method=...)`` / ``AsyncVectorEnv(context=...)`` of pickled env factories
    give exactly the observations, rewards, dones and final infos of ``DummyVecEnv`` /
    ``SyncVectorEnv`` on the same seeds and actions (the envs are deterministic given their seeds);
    workers given names load the shipped backbone offline (no checkpoint lands in the cache)."""
    ckpts = cache_root / "checkpoints"
    before = set(ckpts.glob("*.pt")) if ckpts.exists() else set()
    fn = (
        env_fn(env_id)
        if source == "objects"
        else functools.partial(gymnasium.make, f"dyncnn_gym:{env_id}", dataset="digits", compute_weight=0.25)
    )
    T = fn().unwrapped.num_decisions
    if library == "sb3":
        steps = EPISODES * T  # same-step autoreset
        actions = fixed_actions(env_id, steps)
        want = sb3_trace(DummyVecEnv([fn] * N_WORKERS), actions)
        venv = SubprocVecEnv([fn] * N_WORKERS, start_method=start_method)
        assert len({p.pid for p in venv.processes} - {os.getpid()}) == N_WORKERS
        got = sb3_trace(venv, actions)
    else:
        steps = EPISODES * (T + 1)  # next-step autoreset: one reset step after every episode
        actions = fixed_actions(env_id, steps)
        want = gym_trace(gymnasium.vector.SyncVectorEnv([fn] * N_WORKERS), actions)
        venv = gymnasium.vector.AsyncVectorEnv([fn] * N_WORKERS, context=start_method)
        assert venv.single_observation_space == fn().observation_space
        got = gym_trace(venv, actions)
    assert_same_trace(got, want, steps)
    after = set(ckpts.glob("*.pt")) if ckpts.exists() else set()
    assert after == before, f"a worker pretrained a backbone instead of loading the shipped one: {sorted(after - before)}"


def test_env_pickles_small_and_rebuilds_from_shared_objects():
    """A pickled env carries its constructor arguments, not its data or backbone: built by name it
    is a few kB, and unpickled in the same process it reuses the loaded data and network."""
    env = gymnasium.make("DynChannel-v0", dataset="digits").unwrapped
    blob = pickle.dumps(env)
    assert len(blob) < 4096, f"pickled env is {len(blob)} bytes"
    t0 = time.perf_counter()
    clone = pickle.loads(blob)
    elapsed = time.perf_counter() - t0
    assert clone.core.net is env.core.net and clone.core.data is env.core.data
    assert elapsed < 2.0, f"rebuilding a pickled env took {elapsed:.2f} s"
    obs, _ = clone.reset(seed=3)
    np.testing.assert_array_equal(obs, env.reset(seed=3)[0])


def test_import_is_light_and_does_no_work(tmp_path):
    """``import dyncnn_gym`` (and making an RLlib-style creator) loads no torch / sklearn / SB3 / ray,
    writes nothing to the cache, and is quick."""
    cache = tmp_path / "cache"
    code = f"""
import json, os, sys, time
os.environ["DYNCNN_GYM_CACHE"] = {str(cache)!r}
t0 = time.perf_counter()
import dyncnn_gym
seconds = time.perf_counter() - t0
import gymnasium
spec = gymnasium.spec("DynSkip-v0")
from dyncnn_gym.rllib import EnvCreator
creator = EnvCreator("dyncnn_gym:DynChannel-v0")
heavy = ("torch", "sklearn", "scipy", "stable_baselines3", "sb3_contrib", "ray", "matplotlib", "dyncnn_gym.models", "dyncnn_gym.data.shapes")
print(json.dumps({{"seconds": seconds, "heavy": [m for m in heavy if m in sys.modules], "entry": spec.entry_point}}))
"""
    out = json.loads(run_subprocess(code).strip().splitlines()[-1])
    assert out["heavy"] == [], f"import pulled in {out['heavy']}"
    assert out["entry"] == "dyncnn_gym.envs.routing:DynSkipEnv"
    assert out["seconds"] < 5.0, f"import dyncnn_gym took {out['seconds']:.2f} s"
    assert not cache.exists() or not any(cache.rglob("*")), "import wrote to the cache"


# --------------------------------------------------------------------------- fine-tuning callback


@pytest.mark.parametrize("start_method", START_METHODS[-1:])
def test_finetune_callback_broadcasts_to_subprocess_envs(start_method):
    """With a ``SubprocVecEnv`` the callback builds a local core mirroring env 0, fine-tunes it, and
    after every round every worker's backbone equals the callback's."""
    env_id = "DynChannel-v0"
    fn = env_fn(env_id, seed_net=5)
    initial = {k: v.clone() for k, v in fn.keywords["backbone"].state_dict().items()}
    venv = SubprocVecEnv([fn] * N_WORKERS, start_method=start_method)
    try:
        T = venv.get_attr("num_decisions", indices=[0])[0]
        model = PPO("MlpPolicy", venv, n_steps=2 * T, batch_size=2 * T * N_WORKERS, n_epochs=1, seed=0)
        cb = BackboneFinetuneCallback(schedule="joint", backbone_steps=2, lr=1e-2, batch_size=16)
        model.learn(2 * T * N_WORKERS * 2, callback=cb)  # two rollouts -> two fine-tuning rounds
        assert len(cb.history) == 2
        assert cb.core is not None and cb.core.mode == "channel" and cb.core.n == 1
        local = cb.core.net.state_dict()
        assert any(not torch.equal(local[k], initial[k]) for k in local if k.endswith("weight")), "fine-tuning changed nothing"
        for i, state in enumerate(venv.env_method("get_backbone_state")):
            assert state.keys() == local.keys()
            differ = [k for k in local if not torch.equal(state[k].cpu(), local[k].cpu())]
            assert not differ, f"worker {i} backbone differs from the callback's in {differ[:3]}"
    finally:
        venv.close()


def test_local_core_names_a_non_routing_env():
    venv = DummyVecEnv([lambda: gymnasium.make("CartPole-v1")])
    with pytest.raises(ValueError, match="cannot find the routing env in the training env DummyVecEnv"):
        local_core(venv)


@pytest.mark.parametrize("start_method", START_METHODS[-1:])
def test_flops_target_callback_steers_subprocess_envs(start_method):
    """The steered weight reaches every worker (``env_method("set_compute_weight")``), and the
    ``"eval"`` measurement routes with a local mirror of env 0."""
    from dyncnn_gym.sb3 import FlopsTargetCallback

    venv = SubprocVecEnv([env_fn("DynSkip-v0")] * N_WORKERS, start_method=start_method)
    try:
        T = venv.get_attr("num_decisions", indices=[0])[0]
        model = PPO("MlpPolicy", venv, n_steps=2 * T, batch_size=2 * T * N_WORKERS, n_epochs=1, seed=0)
        cb = FlopsTargetCallback(1.0, measure="eval", weight=0.5, eval_images=16)
        model.learn(2 * T * N_WORKERS * 2, callback=cb)
        assert len(cb.history) == 2 and cb.weight <= 0.5
        assert venv.get_attr("compute_weight") == [cb.weight] * N_WORKERS
    finally:
        venv.close()
