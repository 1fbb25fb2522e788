"""``DynExit-v0``: early exit with width stages (a cascade on a slimmable backbone) and depth stages
(a ResNet with exit heads).

What is checked, as for the other envs: registration and docstring, both env checkers, exact FLOPs
(``FlopCounterMode``) on every route with exited images really leaving the batch, outputs equal to a
plain reference, the native vector env reproducing single envs under variable episode lengths (both
autoreset modes, partial resets), the SB3 VecEnv, the reward forms, budgets, ``evaluate`` and
``export`` agreeing image by image, and the baselines. Backbones are fresh (``conftest.make_net``).
"""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net
from gymnasium.vector import AutoresetMode
from torch.utils.flop_counter import FlopCounterMode

import dyncnn_gym
from dyncnn_gym.envs.exit_core import ExitCore
from dyncnn_gym.envs.exits import DynExitEnv, DynExitVectorEnv
from dyncnn_gym.exit_walk import ExitWalk, run_exits, run_fixed_exits
from dyncnn_gym.fileio import UnsafeFileError
from dyncnn_gym.models import build
from dyncnn_gym.models.exits import DepthStages, ExitResNet, WidthStages
from dyncnn_gym.sb3 import make_vec_env
from dyncnn_gym.walk import run_routes

ENV = "DynExit-v0"
#: (stages, backbone arch, extra env kwargs): width stages on a VGG (layer-1 reuse), on a ResNet in
#: channel mode (no reuse), three width stages, and depth stages on a ResNet with exits
CONFIGS = {
    "width-vgg": ("width", "vgg", {}),
    "width-vgg-3": ("width", "vgg", {"widths": (0, 2, 3)}),
    "width-resnet": ("width", "resnet8", {"widths": (1, 3)}),
    "depth": ("depth", "resnet8-exits", {}),
}
EXACT = ("prediction", "label", "actions", "flops", "decision", "index", "correct", "action_mask", "exit")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def kwargs(config: str = "width-vgg", data_name: str = "user12", **kw) -> dict:
    stages, arch, extra = CONFIGS[config]
    return {"dataset": load_test_data(data_name), "backbone": make_net(arch, data_name), "stages": stages, **extra, **kw}


def stages_of(config: str, data_name: str = "user12"):
    stages, arch, extra = CONFIGS[config]
    net = make_net(arch, data_name)
    return WidthStages(net, extra.get("widths", (0, 3))) if stages == "width" else DepthStages(net)


def rollout(env, rng, seed=None):
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, info)]
    while True:
        obs, r, term, trunc, info = env.step(int(rng.integers(0, 2)))
        assert not trunc
        out.append((obs, r, term, info))
        if term:
            return out


# -- registration and conformance --------------------------------------------------------------------
def test_registered_with_a_vector_entry_point_and_documented():
    spec = gymnasium.registry[ENV]
    assert spec.entry_point == "dyncnn_gym.envs.exits:DynExitEnv"
    assert spec.vector_entry_point == "dyncnn_gym.envs.exits:DynExitVectorEnv"
    assert spec.max_episode_steps is None
    assert ENV in dyncnn_gym.EXIT_IDS
    for section in ("Description", "Action Space", "Observation Space", "Rewards", "Starting State", "Episode End"):
        assert f"## {section}" in DynExitEnv.__doc__
    assert "## Arguments" in DynExitEnv.__doc__ and "## Version History" in DynExitEnv.__doc__
    assert "Native vector env of ``DynExit-v1`` and ``DynExit-v0``" in DynExitVectorEnv.__doc__


@pytest.mark.parametrize("config,data_name", [("width-vgg", "shapes"), ("width-resnet", "digits"), ("depth", "user12")])
def test_both_env_checkers_pass_with_warnings_as_errors(config, data_name):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gymnasium.make(ENV, **kwargs(config, data_name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    core = env.unwrapped.core
    assert env.action_space == gymnasium.spaces.Discrete(2)
    assert env.observation_space.shape == (max(core.stages.feature_widths) + core.T + 4,)
    rng = np.random.default_rng(0)
    lengths = set()
    for episode in range(12):
        steps = rollout(env, rng, seed=episode)
        lengths.add(len(steps) - 1)
        assert all(env.observation_space.contains(o) for o, *_ in steps)
        info = steps[-1][3]
        assert info["flops"] == core.exit_flops[info["exit"]]
        assert list(info["actions"][: info["exit"]]) == [1] * info["exit"]
    assert lengths == set(range(1, core.T + 1))  # episodes of every length


def test_render_modes():
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(ENV, **kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


# -- the walk: exact FLOPs, real exits ------------------------------------------------------------------
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_flops_equal_the_flop_counter_and_exited_images_leave_the_batch(config):
    """Random exit decisions: FlopCounterMode counts exactly the FLOPs the walk reports (so an image
    that exited is not computed any further), and the batch shrinks by the images that exit."""
    st = stages_of(config)
    x = torch.as_tensor(load_test_data("user12").test.images[:16])
    rng = np.random.default_rng(1)
    sizes = []

    def choose(walk):
        sizes.append(len(walk))
        return rng.integers(0, 2, len(walk))

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        logits, flops, exit_at, actions = run_exits(st, x, choose)
    assert fc.get_total_flops() == int(flops.sum())
    assert flops.tolist() == [st.costs.exit_flops(int(k)) for k in exit_at]
    assert sizes[0] == 16 and sizes == sorted(sizes, reverse=True)
    assert [int((exit_at >= k).sum()) for k in range(1, st.num_exits - 1)] == sizes[1:]  # who is left, is asked
    for i, k in enumerate(exit_at):
        assert list(actions[i]) == [1] * k + ([0] if k < st.num_exits - 1 else []) + [-1] * (st.num_exits - 2 - k)
    # every exit's logits equal the reference computation of that exit
    for k in range(st.num_exits):
        rows = np.flatnonzero(exit_at == k)
        if len(rows):
            assert torch.allclose(logits[rows], reference_exit(st, x[rows], k), atol=1e-4)


@pytest.mark.parametrize("config", ["width-vgg-3", "depth"])
def test_fixed_exits_replay_a_routed_pass_without_its_router(config):
    """``run_fixed_exits`` (the routes of a routed model, no router: what ``dyncnn-gym perf`` times
    against it) gives the routed pass's logits and FLOPs, as a batch and one image at a time, and
    FlopCounterMode counts what it reports."""
    kw = kwargs(config, "user12")
    net = dyncnn_gym.export(Jumpy(), ENV, **kw)
    x = torch.as_tensor(kw["dataset"].test.images[:40])
    out = net.route(x)
    assert len(set(out.exits.tolist())) == net.S, "the test policy should use every exit"
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        logits, flops = run_fixed_exits(net.stages, x, out.exits)
    assert torch.equal(logits, out.logits) and flops.tolist() == out.flops.tolist()
    assert fc.get_total_flops() == int(flops.sum())
    with torch.no_grad():
        ones = [run_fixed_exits(net.stages, x[i : i + 1], out.exits[i : i + 1]) for i in range(len(x))]
    assert [int(f[0]) for _, f in ones] == out.flops.tolist()
    assert torch.allclose(torch.cat([lg for lg, _ in ones]), out.logits, atol=1e-5)
    with pytest.raises(ValueError, match=rf"exits must be {len(x)} integers in 0\.\.{net.S - 1} .*values \[{net.S}\]"):
        run_fixed_exits(net.stages, x, np.full(len(x), net.S))


def test_an_exit_network_is_the_truncated_resnet_without_earlier_heads():
    """``ExitResNet.exit_forward(x, k)``: exit ``k``'s logits, computed by the stem, the blocks up to
    it and its head alone; FLOPs ``exit_network_flops(k)`` (what FlopCounterMode counts): the
    stages' cost of exit ``k`` less the earlier heads."""
    st = stages_of("depth")
    net = st.net
    x = torch.as_tensor(load_test_data("user12").test.images[:9])
    for k in range(net.num_exits):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            logits = net.exit_forward(x, k)
        assert torch.allclose(logits, reference_exit(st, x, k), atol=1e-4)
        assert fc.get_total_flops() == 9 * net.exit_network_flops(k)
        assert net.exit_network_flops(k) == st.costs.exit_flops(k) - int(st.costs.heads[:k].sum())
    assert net.exit_network_flops(net.num_exits - 1) == net.plain_flops()
    with pytest.raises(ValueError, match=r"k=5 is not an exit of .*choose one of 0\.\.2"):
        net.exit_forward(x, 5)


def reference_exit(st, x, k):
    """Logits of exit ``k``, computed plainly: a full pass at the stage's width (width stages), or
    the exit network's every-exit forward pass (depth stages)."""
    with torch.no_grad():
        if isinstance(st, WidthStages):
            T = st.net.num_decisions("channel")
            return run_routes(st.net, "channel", x, torch.full((x.shape[0], T), st.widths[k]))[0]
    with torch.enable_grad():  # the unfolded path of every exit, in eval mode
        return st.net.all_exits(x)[k].detach()


def test_width_stages_reuse_the_stem_and_the_first_layer():
    st = stages_of("width-vgg-3")
    net, costs = st.net, st.costs
    table = net.cost_table("channel")
    T = net.num_decisions("channel")
    static = [table.path_flops([w] * T) for w in st.widths]
    # the first pass costs a static pass; a later one saves the stem and the layer-1 channels already computed
    assert costs.exit_flops(0) == static[0]
    for k in (1, 2):
        saved = table.stem + int(table.steps[0, 3, st.widths[k - 1]])
        assert costs.stages[k] + costs.heads[k] == static[k] - saved
    # ... and a ResNet's width stages reuse the stem only
    rs = stages_of("width-resnet")
    rt = rs.net.cost_table("channel")
    assert rs.costs.stages[1] + rs.costs.heads[1] == rt.path_flops([3] * rt.num_decisions) - rt.stem


def test_the_exit_walk_select_and_cat_keep_every_image_exact():
    st = stages_of("depth")
    x = torch.as_tensor(load_test_data("user12").test.images[:8])
    with torch.no_grad():
        w = ExitWalk(st, x)
        a, b = w.select([0, 2, 4, 6]), w.select([7, 5, 3, 1])
        merged = ExitWalk.cat([a, b])
        order = [0, 2, 4, 6, 7, 5, 3, 1]
        assert torch.allclose(merged.logits, w.logits[order]) and np.array_equal(merged.flops, w.flops[order])
        gone = merged.step(np.array([0, 1, 0, 1, 1, 0, 1, 1]))
        assert gone.rows.tolist() == [0, 2, 5] and len(merged) == 5 and merged.t == 1
    kept = [order[r] for r in (1, 3, 4, 6, 7)]
    with torch.no_grad():
        ref = ExitWalk(st, x[kept])
        ref.step(np.ones(5, dtype=np.int64))
    assert torch.allclose(merged.logits, ref.logits, atol=1e-5)
    with pytest.raises(ValueError, match="outside Discrete"):
        merged.step(np.array([0, 1, 2, 1, 1]))
    with pytest.raises(ValueError, match="different exits"):
        ExitWalk.cat([merged, w])


# -- single env semantics -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["width-vgg", "depth"])
def test_final_info_and_rewards(config):
    """Rewards: the compute terms of an episode sum to cw * (1 - flops_ratio) and the last step adds
    -loss_weight for a wrong prediction (``loss="error"``, the default)."""
    cw = 0.3
    env = gymnasium.make(ENV, **kwargs(config, "shapes", split="test", compute_weight=cw))
    core = env.unwrapped.core
    data = load_test_data("shapes")
    rng = np.random.default_rng(2)
    for episode in range(8):
        steps = rollout(env, rng, seed=0 if episode == 0 else None)
        info = steps[-1][3]
        ret = sum(r for _, r, *_ in steps)
        assert ret == pytest.approx(cw * (1 - info["flops_ratio"]) - (0.0 if info["correct"] else 1.0), abs=1e-9)
        i = info["index"]
        assert info["label"] == int(data.test.labels[i]) and info["correct"] == (info["prediction"] == info["label"])
        with torch.no_grad():
            ref = reference_exit(core.stages, torch.as_tensor(data.test.images[i : i + 1]), info["exit"])
        assert info["prediction"] == int(ref.argmax(1)[0])
        assert "difficulty" in info and "difficulty_params" in info
        assert [s[3]["decision"] for s in steps[:-1]] == list(range(len(steps) - 1))
        # every step's cost (its FLOPs over the full network's): an episode's sum to its FLOPs ratio
        assert sum(s[3]["cost"] for s in steps[1:]) == pytest.approx(info["flops_ratio"], abs=1e-12)


def test_the_default_compute_weight_prices_flops_in_accuracy():
    """``reward="flops"`` with the 0/1 error: 0.02 of accuracy per unit of FLOPs ratio by default."""
    env = gymnasium.make(ENV, **kwargs("depth"))
    assert env.unwrapped.compute_weight == 0.02 and env.unwrapped.core.reward.loss == "error"
    assert gymnasium.make(ENV, **kwargs("depth", compute_weight=0.5)).unwrapped.compute_weight == 0.5


@pytest.mark.parametrize("form,default", [("rnp", 0.1), ("skipnet", 0.1)])
def test_rnp_and_skipnet_forms_pay_per_stage_not_computed(form, default):
    env = gymnasium.make(ENV, **kwargs("depth", reward=form, loss="ce"))
    T = env.unwrapped.core.T
    assert env.unwrapped.compute_weight == default
    env.reset(seed=0)
    _, r, term, _, info = env.step(0)  # exit at once: T stages not computed
    per = default * T / (1 if form == "rnp" else T)
    assert term and r == pytest.approx(per - min(info["cross_entropy"], 5.0))


def test_budget_masks_the_stages_it_cannot_afford():
    base = gymnasium.make(ENV, **kwargs("depth"))
    flops = base.unwrapped.core.exit_flops
    full = base.unwrapped.core.full
    env = gymnasium.make(ENV, **kwargs("depth", budget=float(flops[1]) / full))
    obs, info = env.reset(seed=0)
    assert info["action_mask"].tolist() == [True, True]
    _, _, term, _, info = env.step(1)
    assert not term and info["action_mask"].tolist() == [True, False]
    # a masked continue exits instead, and the info says so
    _, _, term, _, info = env.step(1)
    assert term and info["exit"] == 1 and info["action_taken"] == 0 and info["action_forbidden"]
    assert info["flops"] <= flops[1]
    strict = gymnasium.make(ENV, **kwargs("depth", budget=float(flops[1]) / full, budget_strict=True))
    strict.reset(seed=0)
    strict.step(1)
    with pytest.raises(ValueError, match="breaks the compute budget"):
        strict.step(1)
    with pytest.raises(ValueError, match="budget=0.01 must be a FLOPs ratio"):
        gymnasium.make(ENV, **kwargs("depth", budget=0.01))


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="stages='middle' is not a kind of stages"):
        gymnasium.make(ENV, **{**kwargs(), "stages": "middle"})
    with pytest.raises(ValueError, match="strictly increasing"):
        gymnasium.make(ENV, **kwargs(widths=(2, 1)))
    with pytest.raises(ValueError, match="obs='probe' is not an observation mode"):
        gymnasium.make(ENV, **kwargs(obs="probe"))
    with pytest.raises(ValueError, match="applies to stages='width' only"):
        gymnasium.make(ENV, **kwargs("depth", widths=(0, 3)))
    with pytest.raises(ValueError, match="mode='exit' is not supported by backbone 'resnet8'"):
        gymnasium.make(ENV, **{**kwargs("depth"), "backbone": make_net("resnet8", "user12")})
    with pytest.raises(TypeError, match="ExitResNet"):
        DepthStages(make_net("resnet8", "user12"))
    for exits_backbone in ("resnet56-exits+distill", kwargs("depth")["backbone"]):  # a name or a network
        with pytest.raises(ValueError, match="is a ResNet with early exits, .*pass stages='depth'"):
            gymnasium.make(ENV, **{**kwargs(), "backbone": exits_backbone})
    env = gymnasium.make(ENV, **kwargs())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(2)


# -- vector envs: variable episode lengths ----------------------------------------------------------------
def _same_info(vinfo, i, single, where):
    marked = {k for k in vinfo if not k.startswith("_") and k not in ("final_obs", "final_info") and vinfo[f"_{k}"][i]}
    assert marked == set(single), f"{where}: keys {sorted(marked)} vs {sorted(single)}"
    for k, v in single.items():
        if isinstance(v, dict):
            _same_info(vinfo[k], i, v, f"{where}[{k}]")
        elif k in EXACT:
            assert np.array_equal(np.asarray(vinfo[k][i]), np.asarray(v)), f"{where}[{k}]: {vinfo[k][i]!r} vs {v!r}"
        else:
            assert np.allclose(vinfo[k][i], v, rtol=1e-5, atol=1e-6), f"{where}[{k}]"


@pytest.mark.parametrize("config", ["width-vgg-3", "depth"])
def test_vector_env_reproduces_single_envs_with_variable_episode_lengths(config):
    n, seed = 5, 7
    kw = kwargs(config, "shapes")
    venv = gymnasium.make_vec(ENV, num_envs=n, **kw)
    assert isinstance(venv.unwrapped, DynExitVectorEnv)
    singles = [gymnasium.make(ENV, **kw) for _ in range(n)]
    obs, info = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        assert np.allclose(obs[i], o, atol=1e-5)
        _same_info(info, i, inf, f"reset {i}")
    rng = np.random.default_rng(3)
    pending = np.zeros(n, dtype=bool)
    ends = 0
    for k in range(12):
        actions = rng.integers(0, 2, n)
        obs, rew, term, trunc, info = venv.step(actions)
        for i, env in enumerate(singles):
            if pending[i]:
                o, inf = env.reset()
                r, te = 0.0, False
            else:
                o, r, te, _, inf = env.step(int(actions[i]))
            assert np.allclose(obs[i], o, atol=1e-5), f"step {k} env {i}"
            assert np.isclose(rew[i], r, atol=1e-9) and bool(term[i]) == te
            _same_info(info, i, inf, f"step {k} env {i}")
        ends += int(term.sum())
        pending = term.copy()
        assert len({c.walk.t for c in venv.unwrapped.core.cohorts}) == len(venv.unwrapped.core.cohorts)
    assert ends >= 2 * n


def test_same_step_autoreset_and_partial_resets():
    n, seed = 4, 11
    kw = kwargs("depth", "shapes")
    venv = gymnasium.make_vec(ENV, num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **kw)
    singles = [gymnasium.make(ENV, **kw) for _ in range(n)]
    venv.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(4)
    for k in range(10):
        actions = rng.integers(0, 2, n)
        obs, rew, term, trunc, info = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, _, inf = env.step(int(actions[i]))
            assert np.isclose(rew[i], r, atol=1e-9) and bool(term[i]) == te
            if te:
                assert np.allclose(info["final_obs"][i], o, atol=1e-5)
                _same_info(info["final_info"], i, inf, f"final {k} {i}")
                o, inf = env.reset()
            assert np.allclose(obs[i], o, atol=1e-5)
            _same_info(info, i, inf, f"step {k} env {i}")
        if k == 4:  # a partial reset mid-way
            mask = np.array([True, False, False, True])
            obs, info = venv.reset(options={"reset_mask": mask})
            for i in np.flatnonzero(mask):
                o, inf = singles[i].reset()
                assert np.allclose(obs[i], o, atol=1e-5)
    with pytest.raises(ValueError, match="at most 2 steps"):
        gymnasium.make_vec(ENV, num_envs=2, max_episode_steps=1, **kw)


def test_sb3_vecenv_equals_the_gymnasium_vector_env_and_counts_episode_lengths():
    n, seed = 4, 5
    kw = kwargs("depth", "user12")
    vec = make_vec_env(ENV, n_envs=n, seed=seed, **kw)
    venv = gymnasium.make_vec(ENV, num_envs=n, autoreset_mode="SameStep", **kw)
    assert np.allclose(vec.reset(), venv.reset(seed=seed)[0], atol=1e-6)
    rng = np.random.default_rng(6)
    lengths = np.zeros(n, dtype=int)
    for _ in range(12):
        actions = rng.integers(0, 2, n)
        obs_a, rew_a, done_a, infos = vec.step(actions)
        obs_b, rew_b, term_b, _, info_b = venv.step(actions)
        lengths += 1
        assert np.allclose(obs_a, obs_b, atol=1e-6) and np.allclose(rew_a, rew_b.astype(np.float32))
        assert np.array_equal(done_a, term_b)
        for i in np.flatnonzero(done_a):
            assert infos[i]["episode"]["l"] == lengths[i] and infos[i]["exit"] == info_b["final_info"]["exit"][i]
            lengths[i] = 0


def test_sb3_algorithms_learn_on_it():
    from sb3_contrib import QRDQN, MaskablePPO, RecurrentPPO
    from stable_baselines3 import A2C, DQN, PPO

    kw = kwargs("width-vgg", "digits")
    algos = (
        (PPO, "MlpPolicy", {"n_steps": 16, "batch_size": 32}),
        (A2C, "MlpPolicy", {"n_steps": 4}),
        (DQN, "MlpPolicy", {"learning_starts": 10}),
        (QRDQN, "MlpPolicy", {"learning_starts": 10}),
        (MaskablePPO, "MlpPolicy", {"n_steps": 16, "batch_size": 32}),
        (RecurrentPPO, "MlpLstmPolicy", {"n_steps": 16, "batch_size": 32}),
    )
    for algo, policy, extra in algos:
        model = algo(policy, make_vec_env(ENV, n_envs=4, seed=0, **kw), device="cpu", seed=0, **extra).learn(64)
        res = dyncnn_gym.evaluate(model, ENV, **kw)
        assert 0.0 <= res["accuracy"] <= 1.0 and sum(res["exit_rates"]) == pytest.approx(1.0)


# -- evaluate, export, baselines ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["width-vgg-3", "depth"])
def test_evaluate_and_export_agree_image_by_image(config, tmp_path):
    kw = kwargs(config, "user12")
    policy = Jumpy()
    res = dyncnn_gym.evaluate(policy, ENV, per_image=True, **kw)
    im = res["images"]
    assert len(set(im["exit"].tolist())) == len(res["exit_rates"]), "the test policy should use every exit"
    assert res["exit_rates"] == pytest.approx(np.bincount(im["exit"], minlength=len(res["exit_rates"])) / len(im["exit"]))
    net = dyncnn_gym.export(policy, ENV, **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    out = net.route(x)
    np.testing.assert_array_equal(out.logits.argmax(1).numpy(), im["prediction"])
    np.testing.assert_array_equal(out.exits.numpy(), im["exit"])
    np.testing.assert_array_equal(out.actions.numpy(), im["actions"])
    np.testing.assert_array_equal(out.flops.numpy(), im["flops"])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    assert fc.get_total_flops() == int(im["flops"].sum())  # exited images are not computed any further
    path = net.save(tmp_path / "exit.pt")
    with pytest.raises(UnsafeFileError, match="Jumpy"):  # a custom policy class is rebuilt only if the caller allows it
        dyncnn_gym.load_routed(path)
    again = dyncnn_gym.load_routed(path, safe_globals=[Jumpy])
    assert torch.equal(again.route(x).exits, out.exits) and torch.allclose(again(x), out.logits)
    assert_one_at_a_time_routes_as_the_batch(net, x, out)


def assert_one_at_a_time_routes_as_the_batch(net, x: torch.Tensor, out) -> None:
    """A batch of one takes the lean path (scalar bookkeeping): the same exits, actions and FLOPs as
    the batch, image by image, and the same scores up to the convolutions' float rounding."""
    ones = [net.route(x[i : i + 1]) for i in range(len(x))]
    for field in ("exits", "actions", "flops", "flops_ratio"):
        assert torch.equal(torch.cat([getattr(o, field) for o in ones]), getattr(out, field)), field
    assert torch.allclose(torch.cat([o.logits for o in ones]), out.logits, atol=1e-5)


def test_an_exported_router_follows_its_backbone_cast_or_replaced_after_export():
    """Routing one image or a batch reads the backbone's parameter dtype at every call: a backbone cast
    after export (or given new parameters) routes as before, in its new dtype."""
    kw = kwargs("depth", "user12")
    net = dyncnn_gym.export(Jumpy(), ENV, **kw)
    x = torch.as_tensor(kw["dataset"].test.images[:6])
    ref = net.route(x)
    net.backbone.double()
    for out in (net.route(x), *(net.route(x[i : i + 1]) for i in range(len(x)))):
        assert out.logits.dtype == torch.float64
    assert torch.equal(torch.cat([net.route(x[i : i + 1]).exits for i in range(len(x))]), ref.exits)
    net.backbone.load_state_dict({k: v.float() for k, v in net.backbone.state_dict().items()}, assign=True)
    one = net.route(x[:1])
    assert one.logits.dtype == torch.float32 and net.device == torch.device("cpu")
    assert torch.equal(one.exits, ref.exits[:1])


class Jumpy(torch.nn.Module):
    """Continue where the hundredths digit of the sum of the observed features is odd: a
    deterministic policy whose choice changes from image to image, so that every exit is taken
    even on an untrained backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs[:, :-4].sum(1) * 100).floor().long() % 2


def test_export_of_sb3_models_and_from_an_env():
    from stable_baselines3 import PPO

    from dyncnn_gym.routed import export as export_routed

    kw = kwargs("depth", "digits")
    vec = make_vec_env(ENV, n_envs=4, seed=0, **kw)
    model = PPO("MlpPolicy", vec, n_steps=16, batch_size=32, device="cpu", seed=0).learn(64)
    res = dyncnn_gym.evaluate(model, ENV, per_image=True, **kw)
    for net in (dyncnn_gym.export(model, ENV, **kw), dyncnn_gym.export(model, core=vec)):
        out = net.route(torch.as_tensor(kw["dataset"].test.images))
        np.testing.assert_array_equal(out.exits.numpy(), res["images"]["exit"])
    x = torch.as_tensor(kw["dataset"].test.images[:200])
    exit_flops, full = vec.core.exit_flops, vec.core.full
    budgeted = dyncnn_gym.export(model, ENV, **{**kw, "budget": float(exit_flops[-2]) / full})
    out = budgeted.route(x)
    assert int(out.flops.max()) <= exit_flops[-2] < int(net.route(x).flops.max())  # the budget's mask binds
    assert_one_at_a_time_routes_as_the_batch(budgeted, x, out)
    with pytest.raises(ValueError, match="observes shape"):
        dyncnn_gym.export(model, ENV, **kwargs("width-vgg", "digits"))
    with pytest.raises(ValueError, match="early-exit env: export it with dyncnn_gym.export"):
        export_routed(model, ENV, **kw)  # the per-decision exporter refuses it by name
    with pytest.raises(ValueError, match="dial=True needs an env with a flops_target"):
        dyncnn_gym.export(model, ENV, dial=True, **kw)


def test_export_of_a_recurrent_policy_carries_each_images_state_as_evaluate_does():
    from sb3_contrib import RecurrentPPO

    kw = kwargs("width-vgg-3", "user12")
    vec = make_vec_env(ENV, n_envs=4, seed=0, **kw)
    model = RecurrentPPO("MlpLstmPolicy", vec, n_steps=16, batch_size=32, device="cpu", seed=0).learn(64)
    with torch.no_grad():  # large weights: small differences between images' observations decide
        torch.manual_seed(0)
        model.policy.lstm_actor.weight_ih_l0.normal_(0.0, 100.0)
        model.policy.action_net.weight.normal_(0.0, 20.0)
        model.policy.action_net.bias.zero_()
    res = dyncnn_gym.evaluate(model, ENV, per_image=True, **kw)
    exits = res["images"]["exit"]
    assert (exits == 0).any() and (exits > 0).any(), "some images should leave at the first exit, others decide again"
    net = dyncnn_gym.export(model, ENV, **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    out = net.route(x)
    np.testing.assert_array_equal(out.exits.numpy(), res["images"]["exit"])
    np.testing.assert_array_equal(out.actions.numpy(), res["images"]["actions"])
    assert_one_at_a_time_routes_as_the_batch(net, x[:64], net.route(x[:64]))


# -- the FLOPs target (DynExit-v1) ----------------------------------------------------------------------------
def test_the_v1_id_holds_a_flops_target_from_half_the_static_exits_slope():
    from dyncnn_gym.envs.core import hull_slope
    from dyncnn_gym.envs.exit_core import exit_curve

    assert gymnasium.spec("DynExit-v1").kwargs["flops_target"] == dyncnn_gym.V1_DEFAULTS["DynExit-v1"]["flops_target"]
    kw = kwargs("depth", "digits", flops_target=0.6)  # the test backbone's first exit costs more than the default
    core = gymnasium.make("DynExit-v1", **kw).unwrapped.core
    assert core.target.target == 0.6 and core.split_name == "train"
    curve = exit_curve(core.stages, core.data, "train")
    assert curve.shape == (core.S, 2) and np.allclose(curve[:, 0], core.exit_flops / core.full)
    assert core.compute_weight == pytest.approx(np.clip(0.5 * hull_slope(curve, core.target.target), 1e-3, 1.0))
    assert gymnasium.make("DynExit-v1", compute_weight=0.3, **kw).unwrapped.compute_weight == 0.3  # a given start wins
    assert gymnasium.make("DynExit-v0", **kwargs("depth", "digits")).unwrapped.core.target is None
    lo = core.min_flops_ratio
    with pytest.raises(ValueError, match=f"flops_target=0.01 must be a FLOPs ratio >= {lo:.4f}"):
        gymnasium.make("DynExit-v1", **{**kw, "flops_target": 0.01})


@pytest.mark.parametrize("action,direction", [(1, 1), (0, -1)])
def test_the_weight_moves_after_every_finished_episode_by_its_decisions_and_flops(action, direction):
    """Always continuing costs more than the target (the weight rises), always exiting less (it falls);
    each episode moves ``log w`` by ``rate * decisions * (flops_ratio - target)``."""
    core = ExitCore(3, **kwargs("depth", "digits", split="train", flops_target=0.55, compute_weight=0.1, target_rate=0.01))
    core.seed_slots([0, 1, 2])
    w = 0.1
    for _ in range(2):
        core.reset_slots(np.arange(3))
        decisions = 0
        while core.active.any():
            _, _, term, infos = core.step(np.full(3, action))
            decisions += 1
        f = np.array([infos[s]["flops_ratio"] for s in range(3)])
        w *= np.exp(0.01 * decisions * (f - 0.55).sum())
        assert core.compute_weight == pytest.approx(w)
    assert np.sign(np.log(w / 0.1)) == direction


def test_evaluate_and_export_dial_a_v1_policy_to_its_target_on_held_out_images():
    from stable_baselines3 import PPO

    kw = kwargs("depth", "digits", flops_target=0.7)
    vec = make_vec_env("DynExit-v1", n_envs=4, seed=0, **kw)
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=32, device="cpu", seed=0).learn(32)
    target = vec.core.target.target
    res = dyncnn_gym.evaluate(model, "DynExit-v1", per_image=True, **kw)
    dialed = res["dialed"]
    assert dialed["target"] == target and dialed["val_flops_ratio"] <= target + 1e-9
    core = make_core_for_test(kw)
    _, routed = core.route(dyncnn_gym.benchmark.calibrate.CostBiasedPolicy(model, dialed["bias"]), core.held_out_images(2000))
    assert float(routed.flops_ratio.mean()) == pytest.approx(dialed["val_flops_ratio"])
    net = dyncnn_gym.export(model, "DynExit-v1", **kw)  # export routes as the evaluation measured
    out = net.route(torch.as_tensor(kw["dataset"].test.images))
    np.testing.assert_array_equal(out.exits.numpy(), res["images"]["exit"])
    assert dyncnn_gym.evaluate(model, "DynExit-v1", dial=False, **kw)["dialed"] is None


def test_random_exits_at_a_flops_target_cost_the_target_in_expectation():
    from dyncnn_gym.benchmark.bench import _exit_rates, random_at_target

    core = make_core_for_test(kwargs("width-vgg-3", "digits"))
    first, full = core.exit_flops[0] / core.full, core.exit_flops[-1] / core.full
    for target in (first + 0.25 * (full - first), first + 0.5 * (full - first)):
        r = random_at_target(core, target, seed=0)
        assert float(_exit_rates(core.S, r["level"]) @ core.exit_flops) / core.full == pytest.approx(target, abs=1e-9)
        assert r["flops_ratio"] == pytest.approx(target, abs=0.05)  # drawn on 359 test images
        assert sum(r["exit_rates"]) == pytest.approx(1.0) and r["flops_target"] == target


def make_core_for_test(kw: dict) -> ExitCore:
    return ExitCore(1, **{**kw, "split": "test"})


def test_baselines():
    from dyncnn_gym.benchmark.exit_baselines import (
        continue_rates,
        exit_oracle,
        exit_outcomes,
        random_exits,
        static_exits,
        threshold_cascade,
    )

    core = ExitCore(1, split="test", **kwargs("depth", "shapes"))
    o = exit_outcomes(core)
    static = static_exits(core)
    assert [p["flops_ratio"] for p in static["points"]] == pytest.approx(list(core.exit_flops / core.full))
    assert [p["accuracy"] for p in static["points"]] == pytest.approx(list(o.correct.mean(1)))
    casc = threshold_cascade(core, thresholds=(0.0, 0.5, 1.0))
    assert casc["points"][0]["flops_ratio"] == pytest.approx(static["points"][0]["flops_ratio"])  # everyone exits at once
    assert casc["points"][-1]["accuracy"] == pytest.approx(static["full"]["accuracy"])  # nobody is ever sure
    assert continue_rates([0.5, 0.25, 0.25]) == pytest.approx([0.5, 0.5])
    rnd = random_exits(core, [0.5, 0.25, 0.25], seed=0)
    assert rnd["exit_rates"] == pytest.approx([0.5, 0.25, 0.25], abs=0.25)
    orc = exit_oracle(core)
    assert orc["accuracy"] == pytest.approx(o.correct.any(0).mean()) and orc["upper_bound"]
    with pytest.raises(ValueError, match="threshold=1.5"):
        threshold_cascade(core, thresholds=(1.5,))


# -- the teacher ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["width-vgg-3", "depth"])
def test_teacher_outcomes_are_the_envs_own_returns(config):
    """For every action and continuation the teacher reports, replaying it in a fresh env gives
    that return, FLOPs and correctness; asking the teacher changes nothing in the episode."""
    kw = kwargs(config, "shapes", compute_weight=0.2)
    env = gymnasium.make(ENV, **kw)
    env.reset(seed=3)
    first = env.unwrapped.teacher()
    t = int(first["decision"])
    S = first["correct"].shape[0]
    for j in range(t, S):
        replay = gymnasium.make(ENV, **kw)
        replay.reset(seed=3)
        ret, term = 0.0, False
        while not term:
            _, r, term, _, info = replay.step(1 if info_exit_before(replay, j) else 0)
            ret += r
        assert info["exit"] == j and info["flops"] == first["flops"][j] and info["correct"] == first["correct"][j]
        assert ret == pytest.approx(first["returns"][j], abs=1e-9)
    assert first["q"][0] == first["returns"][t] and first["q"][1] == first["returns"][t + 1 :].max()
    assert first["best_action"] == int(first["q"][1] > first["q"][0])
    # a policy's continuation: one that always exits leaves at the next exit; one that never does, at the last
    leave = env.unwrapped.teacher(policy=lambda obs: np.zeros(len(obs), dtype=np.int64))
    stay = env.unwrapped.teacher(policy=lambda obs: np.ones(len(obs), dtype=np.int64))
    assert leave["q_policy"].tolist() == [first["returns"][t], first["returns"][t + 1]]
    assert stay["q_policy"][1] == first["returns"][S - 1] and stay["flops_policy"][1] == first["flops"][S - 1]
    # the episode goes on as if the teacher had not been asked
    _, r, *_ = env.step(0)
    assert r == pytest.approx(first["returns"][t], abs=1e-9)
    venv = gymnasium.make_vec(ENV, num_envs=3, **kw)
    venv.reset(seed=3)
    batched = venv.unwrapped.teacher()
    assert batched["returns"].shape == (3, S) and batched["active"].all()
    np.testing.assert_allclose(batched["returns"][0], first["returns"])


def info_exit_before(env, j):
    """Continue while the image stands before exit ``j``."""
    return env.unwrapped.core.cohorts[0].walk.t < j


def test_teacher_of_the_per_decision_envs_replays_exactly():
    kw = {"dataset": load_test_data("shapes"), "backbone": make_net("vgg", "shapes"), "compute_weight": 0.3, "loss": "error"}
    env = gymnasium.make("DynChannel-v0", **kw)
    env.reset(seed=1)
    env.step(2)
    tt = env.unwrapped.teacher()
    A = env.action_space.n
    assert tt["returns"].shape == (A, A) and tt["decision"] == 1
    for a in range(A):
        for c in range(A):
            replay = gymnasium.make("DynChannel-v0", **kw)
            replay.reset(seed=1)
            replay.step(2)
            ret, (_, r, term, _, info) = 0.0, replay.step(a)
            ret += r
            while not term:
                _, r, term, _, info = replay.step(c)
                ret += r
            assert ret == pytest.approx(tt["returns"][a, c], abs=1e-9)
            assert info["flops"] == tt["flops"][a, c] and info["correct"] == tt["correct"][a, c]
    assert np.array_equal(tt["q"], tt["returns"].max(1)) and tt["best_action"] == int(np.argmax(tt["q"]))
    for c in range(A):  # a policy that takes action c everywhere continues like the uniform continuation c
        follow = env.unwrapped.teacher(policy=lambda obs, c=c: np.full(len(obs), c))
        np.testing.assert_allclose(follow["q_policy"], tt["returns"][:, c], atol=1e-12)
        np.testing.assert_array_equal(follow["flops_policy"], tt["flops"][:, c])
    vec = make_vec_env("DynChannel-v0", n_envs=2, seed=1, **kw)
    vec.reset()
    per_env = vec.env_method("teacher")
    assert len(per_env) == 2 and per_env[0]["returns"].shape == (A, A)
    np.testing.assert_array_equal(vec.teacher()["returns"][1], per_env[1]["returns"])


# -- pretraining of exit backbones ------------------------------------------------------------------------------
def test_exit_resnets_build_train_and_report_every_exit(tmp_path):
    from dyncnn_gym.pretraining import load_checkpoint, pretrain

    net = build("resnet14-lite-exits", (1, 12, 12), 3)
    assert isinstance(net, ExitResNet) and net.exits == (0, 1, 2, 3) and net.num_exits == 5
    assert build("resnet14-exits", (1, 8, 8), 3, exits=(2,)).num_exits == 2
    with pytest.raises(ValueError, match="strictly increasing block indices"):
        build("resnet8-exits", (1, 8, 8), 3, exits=(2,))
    with pytest.raises(ValueError, match="has exits, not per-decision routes"):
        net.cost_table("skip")
    data = load_test_data("user12")
    trained = pretrain(
        "resnet8-exits+distill", data, epochs=2, batch_size=16, progress=False, out=tmp_path / "e.pt", allow_chance=True
    )
    rows = trained.meta["static"]["exit"]
    assert [r["exit"] for r in rows] == [0, 1, 2]
    assert rows[-1]["flops_ratio"] > 1 > rows[0]["flops_ratio"] > 0  # the heads cost extra
    again = load_checkpoint(tmp_path / "e.pt", data)
    assert isinstance(again, ExitResNet) and again.exits == trained.exits and again.modes == ("exit",)
    with pytest.raises(ValueError, match="sandwich"):
        pretrain("resnet8-exits+sandwich", data, epochs=1, progress=False, cache=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_keeps_the_flops(dtype):
    kw = kwargs("depth", "digits")
    low = dyncnn_gym.evaluate(lambda obs: np.ones(len(obs), dtype=np.int64), ENV, dtype=dtype, per_image=True, **kw)
    ref = dyncnn_gym.evaluate(lambda obs: np.ones(len(obs), dtype=np.int64), ENV, per_image=True, **kw)
    np.testing.assert_array_equal(low["images"]["flops"], ref["images"]["flops"])
    assert (low["images"]["prediction"] == ref["images"]["prediction"]).mean() > 0.9
