"""The registered envs: API conformance, episode semantics, rewards, budgets, determinism, pickling.

Backbones here are freshly initialised (``conftest.make_net``) so that nothing is trained; the
walk, the cost tables and the env logic do not care whether the weights are any good.
"""

from __future__ import annotations

import inspect
import json
import pickle
import warnings

import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    env_matrix,
    every_registered_id,
    load_test_data,
    make_env,
    make_net,
    mode_of,
    registered_ids,
    run_subprocess,
    user12_arrays,
)

import dyncnn_gym
from dyncnn_gym.walk import run_routes

IDS = registered_ids()
#: the registration and conformance checks also cover the one-step ids
ALL_IDS = every_registered_id()
CHANNEL_ID, SKIP_ID = "DynChannel-v0", "DynSkip-v0"
#: one cheap configuration per registered id, for the semantic tests
CHEAP = {env_id: ("vgg" if mode_of(env_id) == "channel" else "resnet8") for env_id in ALL_IDS}


def rollout(env, seed=None, rng=None, actions=None, first_reset=True):
    """One episode; returns (observations, rewards, terminated flags, truncated flags, infos).

    Actions come from ``actions`` (a list), else uniformly among the allowed ones (``action_mask``)
    drawn with ``rng``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    obs, info = env.reset(seed=seed)
    observations, rewards, terms, truncs, infos = [obs], [], [], [], [info]
    t = 0
    while True:
        if actions is not None:
            a = int(actions[t])
        else:
            a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        terms.append(term)
        truncs.append(trunc)
        infos.append(info)
        t += 1
        if term or trunc:
            return observations, rewards, terms, truncs, infos


def assert_same(a, b, path="info"):
    """Deep equality of infos/observations (numpy arrays compared exactly)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{k}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, f"{path}: {a!r} != {b!r}"
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), f"{path}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------- registration


def test_every_id_registered_with_vector_entry_points():
    assert {CHANNEL_ID, SKIP_ID} <= set(IDS)
    assert set(ALL_IDS) == set(IDS) | set(dyncnn_gym.ONE_SHOT_IDS) | set(dyncnn_gym.EXIT_IDS) and "DynBlockDrop-v0" in ALL_IDS
    for env_id in ALL_IDS:
        spec = gymnasium.registry[env_id]
        assert spec.entry_point.startswith("dyncnn_gym.envs")
        assert isinstance(spec.vector_entry_point, str) and spec.vector_entry_point.startswith("dyncnn_gym")
        assert spec.max_episode_steps is None  # episodes end by termination, never by a time limit
    assert mode_of(CHANNEL_ID) == "channel" and mode_of(SKIP_ID) == "skip"


def test_registering_twice_is_harmless():
    import importlib

    before = {k: gymnasium.registry[k] for k in ALL_IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dyncnn_gym._register()
        importlib.reload(dyncnn_gym)
    assert {k: gymnasium.registry[k].entry_point for k in ALL_IDS} == {k: v.entry_point for k, v in before.items()}


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_env_docstring_has_gymnasium_sections(env_id):
    from gymnasium.envs.registration import load_env_creator

    doc = load_env_creator(gymnasium.registry[env_id].entry_point).__doc__ or ""
    for section in (
        "## Description",
        "## Action Space",
        "## Observation Space",
        "## Rewards",
        "## Starting State",
        "## Episode End",
        "## Arguments",
        "## Version History",
    ):
        assert section in doc, f"{env_id} docstring lacks {section!r}"


# --------------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("env_id,arch,data_name,groups", env_matrix())
def test_check_env_and_spaces(env_id, arch, data_name, groups):
    """Gymnasium's and SB3's env checkers pass (warnings are errors), spaces are as documented,
    and a random episode has exactly T steps, terminated on the last, never truncated."""
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    net = make_net(arch, data_name, groups)
    mode = mode_of(env_id)
    table = net.cost_table(mode)
    cheapest = (table.stem + table.min_to_go()[0, table.num_actions - 1]) / table.full
    target = gymnasium.spec(env_id).kwargs.get("flops_target")
    # a FLOPs target below the backbone's cheapest route is refused (its own test); hold none there
    env = make_env(env_id, arch, data_name, groups, **({"flops_target": None} if target and target < cheapest else {}))
    T = net.num_decisions(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the render modes are checked once per id (test_check_env_with_render_modes)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)

    A = {"channel": groups, "route": groups + 1}.get(mode, 2)
    assert env.action_space == gymnasium.spaces.Discrete(A)
    space = env.observation_space
    assert isinstance(space, gymnasium.spaces.Box) and space.dtype == np.float32
    probe = 3 if env.unwrapped.core.obs_mode == "probe" else 0
    assert space.shape == (max(net.feature_widths(mode)) + T + probe + 1,)
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all()
    assert env.unwrapped.num_decisions == T

    observations, rewards, terms, truncs, infos = rollout(env, seed=1)
    assert len(rewards) == T
    assert terms == [False] * (T - 1) + [True]
    assert truncs == [False] * T
    assert all(space.contains(o) for o in observations)
    assert all(isinstance(r, float) and np.isfinite(r) for r in rewards)
    assert infos[-1]["flops"] == net.cost_table(mode).path_flops(infos[-1]["actions"])


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env_with_render_modes(env_id):
    """Gymnasium's checker, render checks included (it rebuilds the env once per render mode), and
    SB3's checker, on every registered id."""
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make_env(env_id, CHEAP[env_id], "user12")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)


# --------------------------------------------------------------------------------- episodes


@pytest.mark.parametrize("env_id", IDS)
def test_final_info_is_complete_and_consistent(env_id):
    data = load_test_data("shapes")
    env = make_env(env_id, CHEAP[env_id], "shapes", split="test")
    net = env.unwrapped.backbone
    mode = mode_of(env_id)
    table = net.cost_table(mode)
    rng = np.random.default_rng(3)
    for episode in range(4):
        *_, infos = rollout(env, seed=0 if episode == 0 else None, rng=rng)
        info = infos[-1]
        for key in (
            "prediction",
            "label",
            "correct",
            "flops",
            "flops_ratio",
            "actions",
            "cross_entropy",
            "index",
            "difficulty",
            "difficulty_params",
            "action_mask",
        ):
            assert key in info, f"final info lacks {key!r}"
        i = info["index"]
        acts = np.asarray(info["actions"])
        assert acts.shape == (table.num_decisions,)
        assert [inf["decision"] for inf in infos[:-1]] == list(range(table.num_decisions))
        assert info["label"] == int(data.test.labels[i])
        assert info["correct"] == (info["prediction"] == info["label"])
        assert info["flops"] == table.path_flops(acts)
        assert info["flops_ratio"] == pytest.approx(info["flops"] / table.full)
        assert 0 < info["flops_ratio"] <= 1
        # the prediction and loss are those of the network on this image along these actions
        with torch.no_grad():
            logits, flops = run_routes(net, mode, torch.as_tensor(data.test.images[i : i + 1]), acts[None])
        assert int(flops[0]) == info["flops"]
        assert info["prediction"] == int(logits.argmax(1)[0])
        ce = float(F.cross_entropy(logits, torch.tensor([info["label"]])))
        assert info["cross_entropy"] == pytest.approx(ce, rel=1e-5, abs=1e-6)
        # shapes data report each image's difficulty and its generation parameters
        assert info["difficulty"] == pytest.approx(float(data.test.difficulty[i]))
        assert set(info["difficulty_params"]) == set(data.test.difficulty_params)
        for k, v in info["difficulty_params"].items():
            assert v == pytest.approx(float(data.test.difficulty_params[k][i]))
        # the flops so far grow along the episode and end at the final count
        so_far = [inf["flops"] for inf in infos]
        assert so_far == sorted(so_far) and so_far[-1] == info["flops"]


@pytest.mark.parametrize("env_id", IDS)
def test_observation_layout(env_id):
    """Features in [-1, 1], then a one-hot of the decision point, then the FLOPs ratio so far."""
    env = make_env(env_id, CHEAP[env_id], "user12")
    net = env.unwrapped.backbone
    mode = mode_of(env_id)
    T, widths = net.num_decisions(mode), net.feature_widths(mode)
    F_ = max(widths)
    full = net.cost_table(mode).full
    observations, _, _, _, infos = rollout(env, seed=5, rng=np.random.default_rng(5))
    for t, (obs, info) in enumerate(zip(observations[:-1], infos[:-1])):
        onehot = obs[F_ : F_ + T]
        np.testing.assert_array_equal(onehot, np.eye(T, dtype=np.float32)[t])
        assert obs[-1] == pytest.approx(info["flops"] / full, rel=1e-6)
        assert np.all(obs[widths[t] : F_] == 0), "features beyond this decision point's width must be 0"
        assert np.any(obs[: widths[t]] != 0)
    last = observations[-1]
    assert last[-1] == pytest.approx(infos[-1]["flops_ratio"], rel=1e-6)


def test_pruned_channels_read_as_zero():
    """DynChannel on a plain CNN: after action a, the next observation has exactly the computed
    channels (a + 1 groups) possibly non-zero and the pruned ones zero."""
    env = make_env(CHANNEL_ID, "vgg", "user12", groups=4)
    net = env.unwrapped.backbone
    obs, _ = env.reset(seed=0)
    for t in range(net.num_decisions("channel") - 1):
        a = t % 4
        obs, *_ = env.step(a)
        kept = net.channels(net.widths[t + 1], a)
        assert np.all(obs[kept : net.widths[t + 1]] == 0)


def test_split_test_sweeps_in_order_and_covers_exactly():
    data = load_test_data("user12")
    env = make_env(SKIP_ID, "resnet8", "user12", split="test")
    n = len(data.test)
    seen = []
    for episode in range(n + 3):
        *_, infos = rollout(env, seed=0 if episode == 0 else None)
        seen.append(infos[-1]["index"])
        assert infos[0]["index"] == infos[-1]["index"]
    assert seen[:n] == list(range(n)), "one pass over the test split visits every image once, in order"
    assert seen[n:] == [0, 1, 2], "then it starts over"
    # a seeded reset restarts the sweep at image 0
    _, info = env.reset(seed=123)
    assert info["index"] == 0


def test_split_train_draws_with_np_random():
    data = load_test_data("user12")
    env = make_env(CHANNEL_ID, "vgg", "user12", split="train")

    def indices(seed):
        out = []
        for k in range(12):
            _, info = env.reset(seed=seed if k == 0 else None)
            out.append(info["index"])
        return out

    a, b, c = indices(7), indices(7), indices(8)
    assert a == b
    assert a != c
    assert all(0 <= i < len(data.train) for i in a + c)
    assert len(set(a)) > 1


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_determinism_across_instances(env_id):
    """Two envs built alike and seeded alike give identical observations, rewards and infos."""
    runs = []
    for _ in range(2):
        env = make_env(env_id, CHEAP[env_id], "shapes")
        rng = np.random.default_rng(11)
        episodes = [rollout(env, seed=42 if k == 0 else None, rng=rng) for k in range(3)]
        runs.append(episodes)
    for ep_a, ep_b in zip(*runs):
        for part_a, part_b in zip(ep_a, ep_b):
            assert_same(list(part_a), list(part_b), "episode")
    # a different seed gives other images
    env = make_env(env_id, CHEAP[env_id], "shapes")
    other = [rollout(env, seed=43 if k == 0 else None)[4][-1]["index"] for k in range(3)]
    assert other != [ep[4][-1]["index"] for ep in runs[0]]


def test_step_before_reset_and_after_end_raise():
    env = make_env(CHANNEL_ID, "vgg", "user12").unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    rollout(env, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="options"):
        env.reset(seed=0, options={"foo": 1})


def test_observation_scales_belong_to_their_network():
    """The per-channel observation scales are computed for the very network an env routes, never
    reused from a dead network that happened to live at the same address."""
    from dyncnn_gym.envs.core import feature_scale
    from dyncnn_gym.models import build

    data = load_test_data("user12")
    reused, addresses = 0, set()
    for i in range(60):
        arch = ("vgg", "resnet8")[i % 2]
        net = build(arch, data.image_shape, data.num_classes, groups=2).eval()
        reused += id(net) in addresses
        addresses.add(id(net))
        scales = feature_scale(net, "channel", data)
        widths = net.feature_widths("channel")
        assert [s.shape[0] for s in scales] == widths, f"{arch} at a reused address got another network's scales"
        del net, scales
    if not reused:
        pytest.skip("no memory address was reused in this run; nothing was exercised")


def test_backbone_is_shared_not_copied():
    net = make_net("resnet8", "user12", 4)
    a = gymnasium.make(SKIP_ID, dataset=load_test_data("user12"), backbone=net)
    b = gymnasium.make(CHANNEL_ID, dataset=load_test_data("user12"), backbone=net)
    assert a.unwrapped.backbone is net and b.unwrapped.backbone is net


@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
def test_render(mode):
    env = make_env(CHANNEL_ID, "vgg", "shapes", render_mode=mode)
    rollout(env, seed=0)
    out = env.render()
    if mode == "ansi":
        assert isinstance(out, str) and "pred" in out and "label" in out
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[0] >= 32


# --------------------------------------------------------------------------------- rewards


def _step_costs(table, actions):
    """FLOPs of each decision as taken and as in the full network (head added to the last)."""
    A = table.num_actions
    prev, taken, full = A - 1, [], []
    for t, a in enumerate(actions):
        taken.append(int(table.steps[t, prev, a]))
        full.append(int(table.steps[t, A - 1, A - 1]))
        prev = int(a)
    taken[-1] += int(table.head[prev])
    full[-1] += int(table.head[A - 1])
    return np.array(taken), np.array(full)


@pytest.mark.parametrize("env_id", IDS)
def test_reward_flops_form(env_id):
    # pick ce_clip between the episodes' losses, so the clip is seen both active and inactive
    probe = make_env(env_id, CHEAP[env_id], "shapes", ce_clip=1e9, loss="ce", flops_target=None)
    ces = [rollout(probe, seed=k, rng=np.random.default_rng(k))[4][-1]["cross_entropy"] for k in range(8)]
    cw, lw, clip = 0.7, 2.0, float(np.median(ces))
    env = make_env(
        env_id,
        CHEAP[env_id],
        "shapes",
        reward="flops",
        compute_weight=cw,
        loss_weight=lw,
        ce_clip=clip,
        loss="ce",
        flops_target=None,
    )
    table = env.unwrapped.backbone.cost_table(mode_of(env_id))
    clipped = unclipped = 0
    for k in range(8):
        _, rewards, _, _, infos = rollout(env, seed=k, rng=np.random.default_rng(k))
        info = infos[-1]
        taken, full = _step_costs(table, info["actions"])
        bonuses = cw * (full - taken) / table.full
        final = -lw * min(info["cross_entropy"], clip)
        np.testing.assert_allclose(rewards[:-1], bonuses[:-1], rtol=1e-9, atol=1e-12)
        assert rewards[-1] == pytest.approx(bonuses[-1] + final, rel=1e-9, abs=1e-12)
        # the bonuses of an episode sum to compute_weight * (1 - flops_ratio)
        assert sum(rewards) - final == pytest.approx(cw * (1 - info["flops_ratio"]), rel=1e-9, abs=1e-12)
        if info["cross_entropy"] > clip:
            clipped += 1
        else:
            unclipped += 1
    assert clipped and unclipped, "the test should see the clip both active and inactive"


@pytest.mark.parametrize("env_id", IDS)
def test_reward_error_loss_pays_accuracy_not_cross_entropy(env_id):
    cw, lw = 0.7, 2.0
    env = make_env(
        env_id, CHEAP[env_id], "shapes", reward="flops", compute_weight=cw, loss_weight=lw, loss="error", flops_target=None
    )
    seen = set()
    for k in range(80):  # the test backbones are untrained: keep going until both outcomes were seen
        if len(seen) == 2 and k >= 8:
            break
        _, rewards, _, _, infos = rollout(env, seed=k, rng=np.random.default_rng(k))
        info = infos[-1]
        final = sum(rewards) - cw * (1 - info["flops_ratio"])
        assert final == pytest.approx(0.0 if info["correct"] else -lw, abs=1e-9)
        seen.add(bool(info["correct"]))
    assert seen == {True, False}, "the test should see right and wrong predictions"


def test_reward_flops_default_weights():
    env = make_env(CHANNEL_ID, "vgg", "user12")
    for k in range(3):
        _, rewards, _, _, infos = rollout(env, seed=k, rng=np.random.default_rng(k))
        info = infos[-1]
        final = -1.0 * min(info["cross_entropy"], 5.0)
        assert sum(rewards) - final == pytest.approx(0.5 * (1 - info["flops_ratio"]), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("form,default_cw", [("rnp", 0.1), ("skipnet", 0.1)])
@pytest.mark.parametrize("env_id", IDS)
def test_reward_rnp_and_skipnet_forms(env_id, form, default_cw):
    for cw in (None, 0.3):
        env = make_env(
            env_id,
            CHEAP[env_id],
            "user12",
            reward=form,
            compute_weight=cw,
            loss_weight=1.5,
            ce_clip=0.5,
            loss="ce",
            flops_target=None,
        )
        w = default_cw if cw is None else cw
        A, T = env.action_space.n, env.unwrapped.num_decisions
        for k in range(3):
            _, rewards, _, _, infos = rollout(env, seed=k, rng=np.random.default_rng(k))
            info = infos[-1]
            saved = A - 1 - np.asarray(info["actions"], dtype=np.float64)
            bonus = w * saved if form == "rnp" else w * saved / ((A - 1) * T)
            bonus[-1] += -1.5 * min(info["cross_entropy"], 0.5)
            np.testing.assert_allclose(rewards, bonus, rtol=1e-9, atol=1e-12)


def test_full_route_flops_bonus_is_zero():
    env = make_env(SKIP_ID, "resnet8", "user12", reward="flops", loss_weight=0.0)
    T = env.unwrapped.num_decisions
    _, rewards, _, _, infos = rollout(env, seed=0, actions=[1] * T)
    assert infos[-1]["flops_ratio"] == 1.0
    assert rewards == [0.0] * T


# --------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("env_id", IDS)
def test_no_budget_masks_nothing(env_id):
    env = make_env(env_id, CHEAP[env_id], "user12")
    *_, infos = rollout(env, seed=0)
    for info in infos:
        assert info["action_mask"].dtype == bool and info["action_mask"].all()


def _cheapest_ratio(env):
    core = env.unwrapped.core
    return (core._min_to_go[0, core.A - 1] + core.table.stem) / core.full


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("where", [0.0, 0.3, 0.7])
def test_budget_masks_keep_every_episode_within_budget(env_id, where):
    probe = make_env(env_id, CHEAP[env_id], "user12")
    lo = _cheapest_ratio(probe)
    budget = lo + where * (1 - lo)
    env = make_env(env_id, CHEAP[env_id], "user12", budget=budget)
    rng = np.random.default_rng(1)
    masked_somewhere = False
    for k in range(10):
        obs, info = env.reset(seed=k)
        while True:
            mask = info["action_mask"]
            np.testing.assert_array_equal(mask, env.unwrapped.action_masks())
            assert mask.any(), "a budget must always leave a valid action"
            masked_somewhere |= not mask.all()
            obs, _, term, _, info = env.step(int(rng.choice(np.flatnonzero(mask))))
            if term:
                break
        assert info["flops_ratio"] <= budget + 1e-9
        if where == 0.0:
            assert info["flops_ratio"] == pytest.approx(lo)
    assert masked_somewhere


@pytest.mark.parametrize("env_id", IDS)
def test_stepping_a_masked_action_raises_when_strict(env_id):
    probe = make_env(env_id, CHEAP[env_id], "user12")
    env = make_env(env_id, CHEAP[env_id], "user12", budget=_cheapest_ratio(probe), budget_strict=True)
    _, info = env.reset(seed=0)
    mask = info["action_mask"]
    assert not mask.all()
    bad = int(np.flatnonzero(~mask)[0])
    with pytest.raises(ValueError, match="budget") as exc:
        env.step(bad)
    assert str(bad) in str(exc.value)
    # the rejected action changed nothing: the episode goes on from the same decision
    _, _, _, _, info2 = env.step(int(np.flatnonzero(mask)[0]))
    assert info2["decision"] == 1


# --------------------------------------------------------------------------------- pickling


def _trace(env, seed=3, episodes=2):
    out = []
    rng = np.random.default_rng(seed)
    for k in range(episodes):
        obs, rew, _, _, infos = rollout(env, seed=seed if k == 0 else None, rng=rng)
        out.append(
            {
                "obs": [o.tolist() for o in obs],
                "rew": rew,
                "actions": infos[-1]["actions"].tolist(),
                "index": infos[-1]["index"],
                "flops": infos[-1]["flops"],
                "ce": infos[-1]["cross_entropy"],
            }
        )
    return out


@pytest.mark.parametrize("env_id", IDS)
def test_pickle_roundtrip_in_process(env_id):
    env = make_env(env_id, CHEAP[env_id], "shapes").unwrapped
    env.reset(seed=0)
    env.step(0)  # mid-episode: the copy is rebuilt from the constructor arguments
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is type(env)
    assert clone.observation_space == env.observation_space and clone.action_space == env.action_space
    assert _trace(clone) == _trace(env)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_every_id_pickles_to_an_env_that_steps_alike(env_id):
    env = make_env(env_id, CHEAP[env_id], "user12").unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is type(env) and clone.action_space == env.action_space
    env.action_space.seed(5)
    actions = [env.action_space.sample() for _ in range(6)]
    traces = []
    for e in (env, clone):
        obs, _ = e.reset(seed=3)
        trace = [obs]
        for a in actions:
            obs, r, term, trunc, info = e.step(a)
            trace += [obs, r, info["flops"], info.get("prediction")]
            if term or trunc:
                obs, _ = e.reset()
                trace.append(obs)
        traces.append(trace)
    assert_same(traces[0], traces[1], env_id)


def test_pickle_roundtrip_spawn_style(tmp_path):
    """A pickled env is rebuilt and stepped in a fresh interpreter (as SubprocVecEnv(spawn) does)."""
    env = gymnasium.make(CHANNEL_ID, dataset=user12_arrays(), backbone=make_net("resnet8", "user12", 2), groups=2)
    path = tmp_path / "env.pkl"
    path.write_bytes(pickle.dumps(env.unwrapped))
    code = "\n".join(
        [
            "import json, pickle",
            "import numpy as np",
            inspect.getsource(rollout),
            inspect.getsource(_trace),
            f"env = pickle.loads(open({str(path)!r}, 'rb').read())",
            "print(json.dumps(_trace(env)))",
        ]
    )
    child = json.loads(run_subprocess(code).strip().splitlines()[-1])
    assert child == json.loads(json.dumps(_trace(env.unwrapped)))


# --------------------------------------------------------------------------------- fresh interpreters


def test_make_without_importing_dyncnn_gym(tmp_path):
    """``gymnasium.make("dyncnn_gym:DynChannel-v0", ...)`` imports the package itself."""
    from dyncnn_gym.pretraining import pretrain

    arrays = user12_arrays()
    ckpt = tmp_path / "vgg-user12.pt"
    pretrain("vgg", arrays, epochs=1, progress=False, allow_chance=True, cache=False, out=ckpt)
    npz = tmp_path / "data.npz"
    np.savez(npz, xtr=arrays["train"][0], ytr=arrays["train"][1], xte=arrays["test"][0], yte=arrays["test"][1])
    code = f"""
import json, sys
import gymnasium as gym, numpy as np
assert "dyncnn_gym" not in sys.modules
d = np.load({str(npz)!r})
env = gym.make("dyncnn_gym:DynChannel-v0", dataset={{"train": (d["xtr"], d["ytr"]), "test": (d["xte"], d["yte"])}},
               backbone={str(ckpt)!r}, split="test")
obs, info = env.reset(seed=0)
steps = 0
while True:
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    steps += 1
    if term or trunc:
        break
print(json.dumps({{"steps": steps, "term": term, "index": info["index"], "keys": sorted(info)}}))
"""
    out = json.loads(run_subprocess(code).strip().splitlines()[-1])
    assert out["term"] is True and out["index"] == 0
    assert out["steps"] == 5  # vgg: 6 conv layers, the stem plus 5 decision points
    assert {"prediction", "label", "correct", "flops_ratio"} <= set(out["keys"])


def test_import_is_light():
    """``import dyncnn_gym`` registers the ids without importing torch, the data or the models."""
    code = """
import json, sys
import dyncnn_gym, gymnasium
print(json.dumps({"mods": sorted(sys.modules), "ids": sorted(k for k in gymnasium.registry if k.startswith("Dyn"))}))
"""
    out = json.loads(run_subprocess(code).strip().splitlines()[-1])
    mods = set(out["mods"])
    heavy = {
        "torch",
        "dyncnn_gym.pretraining",
        "dyncnn_gym.walk",
        "dyncnn_gym.models",
        "dyncnn_gym.envs",
        "dyncnn_gym.data.shapes",
        "dyncnn_gym.data.arrays",
        "sklearn",
        "scipy",
        "stable_baselines3",
        "matplotlib",
    }
    assert not (heavy & mods), f"import dyncnn_gym pulled in {sorted(heavy & mods)}"
    assert set(dyncnn_gym.ENV_IDS) | set(dyncnn_gym.ONE_SHOT_IDS) <= set(out["ids"])


def test_fitted_observation_constants_do_not_depend_on_the_callers_thread_count():
    """Feature scales and probes are fitted once per process with a fixed thread count: a Ray worker
    (1 thread) and a shell (torch's default) observe the same values, so their evaluations agree."""
    code = """
import hashlib, torch
torch.set_num_threads({threads})
from dyncnn_gym.envs.routing import make_core
core = make_core("DynChannel-v0", 1, obs="probe")
h = hashlib.sha256()
for w, b in core.probes:
    h.update(w.numpy().tobytes()); h.update(b.numpy().tobytes())
for s in core.scale:
    h.update(s.numpy().tobytes())
print(h.hexdigest(), torch.get_num_threads())
"""
    one, two = (run_subprocess(code.format(threads=n)).split() for n in (1, 2))
    assert (one[1], two[1]) == ("1", "2")  # the caller's count is restored after the fit
    assert one[0] == two[0]
