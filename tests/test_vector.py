"""Native Gymnasium vector envs: what ``gymnasium.make_vec`` returns, and that it *is* N single envs.

The central test is the one ALE uses for its vector env: N single envs seeded ``seed + i`` and the
vector env seeded ``seed``, driven by the same actions over several episodes (autoresets
included), must produce the same observations, rewards, terminations and infos. Partial resets
(``reset_mask``) leave episodes at different decision points; they must still match.

Backbones are fresh (``conftest.make_net``, randomised batch-norm); nothing is trained.
"""

from __future__ import annotations

import copy

import gymnasium
import numpy as np
import pytest
import torch
from conftest import every_registered_id, load_test_data, make_net, mode_of, registered_ids
from gymnasium.vector import AutoresetMode, VectorEnv

from dyncnn_gym.envs.vector import RoutingVectorEnv, batch_infos
from dyncnn_gym.walk import Walk, run_routes

IDS = registered_ids()
#: cheap backbone per mode (resnet14: its skip decisions include identity blocks and shape-changing ones)
ARCH = {"channel": "vgg", "skip": "resnet14", "route": "resnet14", "exit": "vgg"}
#: infos compared exactly (the rest, floats, with allclose)
EXACT = ("prediction", "label", "actions", "flops", "decision", "index", "correct", "action_mask")

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
DEVICES = ["cpu", CUDA]


def _net(env_id: str, data_name: str, device: str = "cpu", arch: str | None = None):
    net = make_net(arch or ARCH[mode_of(env_id)], data_name)
    return net if device == "cpu" else copy.deepcopy(net).to(device)


def _kwargs(env_id: str, data_name: str = "user12", device: str = "cpu", **kw) -> dict:
    """Env arguments on a test backbone. The compute weight is fixed (``flops_target=None``): a vector
    env holds one FLOPs target over all its episodes, so only then are its rewards those of N single
    envs (the shared target has its own test)."""
    return {
        "dataset": load_test_data(data_name),
        "backbone": _net(env_id, data_name, device),
        "device": device,
        "flops_target": None,
        **kw,
    }


def _singles(env_id: str, n: int, kwargs: dict) -> list:
    return [gymnasium.make(env_id, **kwargs) for _ in range(n)]


def _batch_dtype(value) -> np.dtype:
    """The dtype ``VectorEnv._add_info`` gives the batch array of a single env's info ``value``."""
    if type(value) in (int, float, bool) or isinstance(value, np.number):
        return np.dtype(type(value))
    return value.dtype if isinstance(value, np.ndarray) else np.dtype(object)


def _same_info(vinfo: dict, i: int, single: dict, where: str) -> None:
    """The ``i``-th entry of a dict-of-arrays info equals a single env's info dict (Gymnasium's
    ``_add_info`` layout: same keys marked, same batch dtypes and shapes, same values)."""
    marked = {k for k in vinfo if not k.startswith("_") and vinfo[f"_{k}"][i]}
    assert marked == set(single), f"{where}: keys {sorted(marked)} vs single env {sorted(single)}"
    for k, v in single.items():
        got = vinfo[k][i] if not isinstance(v, dict) else None
        if not isinstance(v, dict):
            assert vinfo[k].dtype == _batch_dtype(v), f"{where}[{k}]: dtype {vinfo[k].dtype} vs {_batch_dtype(v)}"
            assert vinfo[k].shape[1:] == np.shape(v), f"{where}[{k}]: shape {vinfo[k].shape}"
        if isinstance(v, dict):
            _same_info(vinfo[k], i, v, f"{where}[{k}]")
        elif k in EXACT:
            assert np.array_equal(np.asarray(got), np.asarray(v)), f"{where}[{k}]: {got!r} vs {v!r}"
        else:
            assert np.allclose(got, v, rtol=1e-5, atol=1e-6), f"{where}[{k}]: {got!r} vs {v!r}"


def _check_step(out, singles, actions, pending, where):
    """Mirror one vector step (NEXT_STEP autoreset) on the single envs and compare."""
    obs, rew, term, trunc, info = out
    assert not trunc.any()
    for i, env in enumerate(singles):
        if pending[i]:  # the vector env restarts a finished episode on this step; the action is ignored
            o, inf = env.reset()
            r, te = 0.0, False
        else:
            o, r, te, _tr, inf = env.step(int(actions[i]))
        assert np.allclose(obs[i], o, atol=1e-5), f"{where} env {i}: observation differs"
        assert np.isclose(rew[i], r, rtol=1e-5, atol=1e-6), f"{where} env {i}: reward {rew[i]} vs {r}"
        assert bool(term[i]) == te, f"{where} env {i}: terminated {term[i]} vs {te}"
        _same_info(info, i, inf, f"{where} env {i}")
    return term.copy()


# -- what make_vec returns ----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_returns_the_native_vector_env(env_id):
    n = 3
    venv = gymnasium.make_vec(env_id, num_envs=n, **_kwargs(env_id))
    assert isinstance(venv, RoutingVectorEnv) and isinstance(venv, VectorEnv)
    assert not isinstance(venv, (gymnasium.vector.SyncVectorEnv, gymnasium.vector.AsyncVectorEnv))
    assert venv.unwrapped.mode == mode_of(env_id)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.num_envs == n
    single = gymnasium.make(env_id, **_kwargs(env_id))
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (n, *single.observation_space.shape)
    assert venv.observation_space.dtype == np.float32
    assert isinstance(venv.action_space, gymnasium.spaces.MultiDiscrete)
    assert list(venv.action_space.nvec) == [single.action_space.n] * n
    obs, info = venv.reset(seed=0)
    assert obs.shape == (n, *single.observation_space.shape) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    assert set(info) >= {"decision", "_decision", "flops", "_flops", "action_mask", "_action_mask"}
    assert info["action_mask"].shape == (n, single.action_space.n) and info["action_mask"].dtype == bool
    obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
    assert obs.shape == (n, *single.observation_space.shape) and obs.dtype == np.float32
    assert rew.shape == (n,) and rew.dtype == np.float64
    assert term.shape == trunc.shape == (n,) and term.dtype == trunc.dtype == bool
    assert venv.observation_space.contains(obs)
    venv.close()


@pytest.mark.parametrize("env_id", every_registered_id())
def test_every_id_vectorises_natively(env_id):
    """``make_vec`` builds the id's own vector env (its ``vector_entry_point``), one-step ids included:
    never a Sync/Async wrapper of single envs; its spaces batch the single env's."""
    n = 3
    venv = gymnasium.make_vec(env_id, num_envs=n, **_kwargs(env_id))
    module, _, name = gymnasium.registry[env_id].vector_entry_point.partition(":")
    assert type(venv.unwrapped).__module__ == module and type(venv.unwrapped).__name__ == name
    assert not isinstance(venv, (gymnasium.vector.SyncVectorEnv, gymnasium.vector.AsyncVectorEnv))
    single = gymnasium.make(env_id, **_kwargs(env_id))
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (n, *single.observation_space.shape) and venv.observation_space.contains(obs)
    obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert venv.observation_space.contains(obs) and rew.shape == term.shape == trunc.shape == (n,)
    venv.close()


# -- equivalence with N single envs (ALE-style) ------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_reproduces_single_envs_over_episodes(env_id, device):
    n, seed = 5, 123
    kwargs = _kwargs(env_id, "shapes", device)  # shapes: per-image difficulty, nested infos
    venv = gymnasium.make_vec(env_id, num_envs=n, **kwargs)
    singles = _singles(env_id, n, kwargs)
    T = venv.unwrapped.core.T
    obs, info = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        assert np.allclose(obs[i], o, atol=1e-5)
        _same_info(info, i, inf, f"reset env {i}")
    rng = np.random.default_rng(0)
    pending = np.zeros(n, dtype=bool)
    episodes = 0
    for k in range(3 * (T + 1)):
        actions = rng.integers(0, venv.single_action_space.n, n)
        pending = _check_step(venv.step(actions), singles, actions, pending, f"step {k}")
        episodes += int(pending.sum())
    assert episodes >= 2 * n  # several episodes, autoresets included


@pytest.mark.parametrize("env_id", IDS)
def test_channel_mode_on_a_resnet_matches_too(env_id):
    if mode_of(env_id) != "channel":
        pytest.skip("channel decisions only")
    n, seed = 4, 5
    kwargs = {"dataset": load_test_data("digits"), "backbone": make_net("resnet8", "digits"), "flops_target": None}
    venv = gymnasium.make_vec(env_id, num_envs=n, **kwargs)
    singles = _singles(env_id, n, kwargs)
    venv.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(1)
    pending = np.zeros(n, dtype=bool)
    for k in range(2 * (venv.unwrapped.core.T + 1)):
        actions = rng.integers(0, venv.single_action_space.n, n)
        pending = _check_step(venv.step(actions), singles, actions, pending, f"step {k}")


@pytest.mark.parametrize("env_id", IDS)
def test_reset_with_a_list_of_seeds(env_id):
    seeds = [7, 3, 7, 1000]
    kwargs = _kwargs(env_id)
    venv = gymnasium.make_vec(env_id, num_envs=len(seeds), **kwargs)
    obs, info = venv.reset(seed=seeds)
    for i, s in enumerate(seeds):
        o, inf = gymnasium.make(env_id, **kwargs).reset(seed=s)
        assert np.allclose(obs[i], o, atol=1e-5)
        assert info["index"][i] == inf["index"]
    assert np.array_equal(obs[0], obs[2])  # same seed, same image
    with pytest.raises(ValueError, match="list of 4"):
        venv.reset(seed=[1, 2])


@pytest.mark.parametrize("env_id", IDS)
def test_partial_resets_leave_episodes_at_different_decisions_and_still_match(env_id):
    n, seed = 4, 11
    kwargs = _kwargs(env_id)
    venv = gymnasium.make_vec(env_id, num_envs=n, **kwargs)
    singles = _singles(env_id, n, kwargs)
    T = venv.unwrapped.core.T
    assert T >= 3
    venv.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(2)
    pending = np.zeros(n, dtype=bool)
    for k in range(2):
        actions = rng.integers(0, venv.single_action_space.n, n)
        pending = _check_step(venv.step(actions), singles, actions, pending, f"step {k}")
    mask = np.array([True, False, True, False])
    obs, info = venv.reset(options={"reset_mask": mask})
    assert list(info["_decision"]) == list(mask)
    for i in np.flatnonzero(mask):
        o, inf = singles[i].reset()
        assert np.allclose(obs[i], o, atol=1e-5)
        _same_info(info, i, inf, f"partial reset env {i}")
    assert sorted(c.walk.t for c in venv.unwrapped.core.cohorts) == [0, 2]  # two cohorts now
    pending = np.zeros(n, dtype=bool)
    for k in range(2 * T + 2):
        actions = rng.integers(0, venv.single_action_space.n, n)
        pending = _check_step(venv.step(actions), singles, actions, pending, f"after partial reset, step {k}")
    # a seeded partial reset seeds only the masked envs, with seed + i
    obs, _ = venv.reset(seed=50, options={"reset_mask": ~mask})
    for i in np.flatnonzero(~mask):
        o, _ = gymnasium.make(env_id, **kwargs).reset(seed=50 + int(i))
        assert np.allclose(obs[i], o, atol=1e-5)


def test_reset_options_are_checked():
    venv = gymnasium.make_vec("DynChannel-v0", num_envs=2, **_kwargs("DynChannel-v0"))
    with pytest.raises(ValueError, match="first reset must reset every env"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask must be a bool array of shape"):
        venv.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match="reset_mask must be a bool array of shape"):
        venv.reset(options={"reset_mask": np.array([True, False, True])})
    with pytest.raises(ValueError, match="unknown reset options"):
        venv.reset(options={"mask": np.array([True, True])})
    obs, info = venv.reset(options={"reset_mask": np.array([False, False])})  # resets nothing
    assert obs.shape == (2, venv.single_observation_space.shape[0]) and info == {}


@pytest.mark.parametrize("env_id", IDS)
def test_same_step_autoreset_gives_final_obs_and_final_info(env_id):
    n, seed = 3, 21
    kwargs = _kwargs(env_id, "shapes")
    venv = gymnasium.make_vec(env_id, num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    singles = _singles(env_id, n, kwargs)
    T = venv.unwrapped.core.T
    venv.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(3)
    for episode in range(2):
        for t in range(T):
            actions = rng.integers(0, venv.single_action_space.n, n)
            obs, rew, term, trunc, info = venv.step(actions)
            for i, env in enumerate(singles):
                o, r, te, _, inf = env.step(int(actions[i]))
                assert np.isclose(rew[i], r, rtol=1e-5, atol=1e-6) and bool(term[i]) == te
                if t < T - 1:
                    assert np.allclose(obs[i], o, atol=1e-5)
                    _same_info(info, i, inf, f"episode {episode} step {t}")
                    continue
                # last step: the episode restarted at once
                assert info["_final_obs"][i] and info["_final_info"][i]
                assert np.allclose(info["final_obs"][i], o, atol=1e-5)
                assert info["final_obs"].dtype == object and info["final_info"]["_prediction"][i]
                _same_info(info["final_info"], i, inf, f"final_info env {i}")
                o2, inf2 = env.reset()
                assert np.allclose(obs[i], o2, atol=1e-5)
                assert info["decision"][i] == inf2["decision"] == 0 and info["index"][i] == inf2["index"]
    with pytest.raises(ValueError, match="autoreset_mode"):
        gymnasium.make_vec(env_id, num_envs=2, autoreset_mode="Disabled", **kwargs)


def test_same_step_mode_by_its_string_name():
    venv = gymnasium.make_vec("DynSkip-v0", num_envs=2, autoreset_mode="SameStep", **_kwargs("DynSkip-v0"))
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP


# -- max_episode_steps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_max_episode_steps_accepted_when_it_changes_nothing_and_rejected_otherwise(env_id):
    kwargs = _kwargs(env_id)
    T = gymnasium.make_vec(env_id, num_envs=2, **kwargs).unwrapped.core.T
    for ok in (None, T, T + 10):
        venv = gymnasium.make_vec(env_id, num_envs=2, max_episode_steps=ok, **kwargs)
        venv.reset(seed=0)
        for _ in range(T):
            *_, term, trunc, _ = venv.step(np.zeros(2, dtype=np.int64))
        assert term.all() and not trunc.any()
    with pytest.raises(ValueError, match=rf"max_episode_steps={T - 1}.*exactly {T} steps"):
        gymnasium.make_vec(env_id, num_envs=2, max_episode_steps=T - 1, **kwargs)
    with pytest.raises(ValueError, match="max_episode_steps"):
        gymnasium.make_vec(env_id, num_envs=2, max_episode_steps=2.5, **kwargs)


def test_max_episode_steps_from_a_registered_spec():
    from gymnasium.envs.registration import register

    env_id = "DynChannelShort-v0"
    if env_id not in gymnasium.registry:
        register(
            id=env_id,
            entry_point="dyncnn_gym.envs.routing:DynChannelEnv",
            vector_entry_point="dyncnn_gym.envs.vector:DynChannelVectorEnv",
            max_episode_steps=2,
        )
    try:
        with pytest.raises(ValueError, match="max_episode_steps=2"):
            gymnasium.make_vec(env_id, num_envs=2, **_kwargs("DynChannel-v0"))
    finally:
        del gymnasium.registry[env_id]


# -- the dict-of-arrays infos ------------------------------------------------------------------------------
def test_batch_infos_equals_gymnasiums_add_info():
    """``batch_infos`` is a faster ``VectorEnv._add_info`` loop: same arrays, dtypes and masks."""
    n = 5
    rng = np.random.default_rng(0)

    def info(i: int, final: bool) -> dict:
        d = {
            "decision": int(i % 3),
            "flops": int(rng.integers(1 << 40)),
            "action_mask": rng.random(4) < 0.5,
            "difficulty": float(rng.random()),
            "ratio": np.float32(rng.random()),
            "name": f"x{i}",
        }
        if final:
            d["actions"] = rng.integers(0, 4, 6)
            d["correct"] = bool(i % 2)
            d["difficulty_params"] = {"noise": float(rng.random()), "scale": float(rng.random())}
            d["final_obs"] = rng.random(7).astype(np.float32)
        return d

    calls = [([0, 3], [info(0, True), info(3, True)]), ([1, 2, 4], [info(1, False), info(2, True), info(4, False)])]
    ref_env = VectorEnv.__new__(VectorEnv)
    ref_env.num_envs = n
    ref: dict = {}
    got: dict = {}
    for slots, infos in calls:
        for s, d in zip(slots, infos):
            ref = ref_env._add_info(ref, d, s)
        got = batch_infos(got, infos, np.array(slots), n)

    def same(a: dict, b: dict) -> None:
        assert set(a) == set(b)
        for k in a:
            if isinstance(a[k], dict):
                same(a[k], b[k])
            elif a[k].dtype == object:
                assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a[k], b[k])), k
            else:
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k

    same(ref, got)
    assert batch_infos({}, [], np.array([], dtype=np.int64), n) == {}


# -- the walk under partial resets and mixed actions ----------------------------------------------------
@pytest.mark.parametrize(
    "mode,arch", [("channel", "vgg"), ("skip", "resnet14"), ("channel", "resnet8"), ("route", "resnet14")]
)
def test_walk_select_and_cat_keep_every_sample_exact(mode, arch):
    """Splitting a walk, stepping the parts apart and merging them gives the one-batch result."""
    d = load_test_data("user12")
    net = make_net(arch, "user12")
    x = torch.as_tensor(d.train.images[:9])
    T, A = net.num_decisions(mode), net.num_actions(mode)
    acts = torch.as_tensor(np.random.default_rng(4).integers(0, A, (9, T)))
    with torch.no_grad():
        ref_logits, ref_flops = run_routes(net, mode, x, acts)
        w = Walk(net, mode, x)
        w.step(acts[:, 0])
        rows_a, rows_b = torch.tensor([0, 2, 4, 6, 8]), torch.tensor([7, 5, 3, 1])
        a, b = w.select(rows_a), w.select(rows_b)
        for t in range(1, T):
            a.step(acts[rows_a, t])
            b.step(acts[rows_b, t])
        merged = Walk.cat([a, b])
        order = torch.cat([rows_a, rows_b])
        logits = merged.logits()
    assert torch.allclose(logits, ref_logits[order], atol=1e-5)
    assert torch.equal(merged.flops, ref_flops[order])
    assert torch.equal(merged.actions, acts[order])


def test_walk_h_is_the_feature_map_in_sample_order():
    net = make_net("vgg", "user12")
    d = load_test_data("user12")
    x = torch.as_tensor(d.train.images[:6])
    acts = np.array([[0, 3], [3, 0], [1, 1], [0, 0], [2, 3], [3, 3]])
    with torch.no_grad():
        w = Walk(net, "channel", x)
        w.step(acts[:, 0])
        w.step(acts[:, 1])
        h = w.h
        for i in range(6):
            one = Walk(net, "channel", x[i : i + 1])
            one.step(acts[i : i + 1, 0])
            one.step(acts[i : i + 1, 1])
            c = one.h.shape[1]
            assert torch.allclose(h[i, :c], one.h[0], atol=1e-5)
            assert (h[i, c:] == 0).all()  # channels not computed are zero


def test_weights_changed_in_place_are_seen_by_the_cached_kernels():
    """The folded-kernel cache notices optimiser steps, ``load_state_dict`` and reassigned tensors."""
    from dyncnn_gym.models import build

    torch.manual_seed(0)
    net = build("vgg", (1, 8, 8), 10).eval()
    x = torch.randn(3, 1, 8, 8)
    full = torch.full((3, net.num_decisions("channel")), 3)
    with torch.no_grad():
        before = run_routes(net, "channel", x, full)[0]
        net.convs[2].weight.mul_(2.0)  # in place: the version counter moves
        after = run_routes(net, "channel", x, full)[0]
        assert not torch.allclose(before, after)
        net.eval()
    with torch.enable_grad():
        ref = net.full_forward(x)  # unfolded path
    assert torch.allclose(after, ref.detach(), atol=1e-5)
    other = build("vgg", (1, 8, 8), 10).eval()
    with torch.no_grad():
        net.load_state_dict(other.state_dict(), assign=True)  # new tensor objects
        assert torch.allclose(run_routes(net, "channel", x, full)[0], run_routes(other, "channel", x, full)[0], atol=1e-6)
        net.bns[1].bns[3].running_var = torch.full_like(net.bns[1].bns[3].running_var, 4.0)  # a reassigned buffer
        changed = run_routes(net, "channel", x, full)[0]
    with torch.enable_grad():
        assert torch.allclose(changed, net.full_forward(x).detach(), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mode,arch", [("channel", "vgg"), ("skip", "resnet14"), ("channel", "resnet8"), ("route", "resnet14")]
)
def test_mixed_batches_compute_only_what_each_sample_chose(mode, arch, device, exact_execution):
    """Per-sample random routes: FLOPs counted by ``FlopCounterMode`` equal the cost tables, and every
    sample's logits equal its own batch-1 pass (a pruned group or skipped block is never computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _net("DynChannel-v0", "user12", device, arch=arch)
    d = load_test_data("user12")
    x = torch.as_tensor(d.train.images[:24]).to(device)
    T, A = net.num_decisions(mode), net.num_actions(mode)
    acts = torch.as_tensor(np.random.default_rng(5).integers(0, A, (24, T)))
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            logits, flops = run_routes(net, mode, x, acts)
        one_by_one = torch.cat([run_routes(net, mode, x[i : i + 1], acts[i : i + 1])[0] for i in range(24)])
    table = net.cost_table(mode)
    assert flops.tolist() == [table.path_flops(r) for r in acts.tolist()]
    assert counter.get_total_flops() == int(flops.sum())
    assert torch.allclose(logits, one_by_one, atol=1e-5)
    assert logits.device.type == torch.device(device).type


# -- the `dyncnn-gym perf` benchmark's route choices (the benchmark itself is not run in tests) --------
@pytest.mark.parametrize("mode,arch", [("channel", "vgg"), ("skip", "resnet14")])
def test_perf_routes_hit_their_flops_targets(mode, arch):
    from dyncnn_gym.benchmark.perf import add_arguments, random_routes_for, static_routes_for
    from dyncnn_gym.benchmark.timing import paired_ratio

    table = make_net(arch, "user12").cost_table(mode)
    for target in (0.25, 0.5, 0.75):
        routes = random_routes_for(table, target, 256, seed=1)
        ratios = np.array([table.path_flops(r) for r in routes]) / table.full
        assert abs(ratios.mean() - target) < 0.03
        assert len({tuple(r) for r in routes.tolist()}) > 10  # per-sample routes, not one static route
        ((ratio, route),) = static_routes_for(table, [target])
        assert np.isclose(table.path_flops(route) / table.full, ratio) and abs(ratio - target) < 0.15
    assert paired_ratio({"a": [2.0, 4.0, 9.0], "b": [1.0, 1.0, 1.0]}, "a", "b") == 4.0
    import argparse

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--out", "x.json", "--device", "cuda", "--quick"])
    assert (args.out, args.device, args.quick, args.repeats, args.threads) == ("x.json", "cuda", True, 9, None)
