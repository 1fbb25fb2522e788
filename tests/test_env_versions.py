"""The registered versions: ``-v1`` ids carry the settings that work as defaults, ``-v0`` ids keep
their first behaviour, and every face that builds episodes from an id applies the same defaults."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from conftest import load_test_data, make_net

import dyncnn_gym
from dyncnn_gym.envs.rewards import FlopsTarget
from dyncnn_gym.envs.routing import make_core, registered_kwargs
from dyncnn_gym.sb3 import make_vec_env

V0 = ("DynChannel-v0", "DynSkip-v0", "DynBlockDrop-v0", "DynRoute-v0")
ARCH = {"DynChannel": "vgg", "DynSkip": "resnet8", "DynBlockDrop": "resnet8", "DynRoute": "resnet8", "DynExit": "vgg"}


def _kw(env_id: str, **kw) -> dict:
    return {"dataset": load_test_data("user12"), "backbone": make_net(ARCH[env_id.split("-v")[0]], "user12"), **kw}


@pytest.mark.parametrize("env_id", V0)
def test_v0_ids_are_registered_without_defaults(env_id):
    assert gymnasium.spec(env_id).kwargs == {}


def test_the_first_early_exit_id_draws_from_the_held_out_split_at_a_fixed_weight():
    assert gymnasium.spec("DynExit-v0").kwargs == {"split": "auto"}
    assert set(dyncnn_gym.LATEST_IDS) == set(dyncnn_gym.V1_DEFAULTS)


@pytest.mark.parametrize("env_id", sorted(dyncnn_gym.V1_DEFAULTS))
def test_v1_ids_default_to_the_error_term_probe_observations_and_a_flops_target(env_id):
    assert env_id.endswith("-v1")
    env = gymnasium.make(env_id, **_kw(env_id))
    core = env.unwrapped.core
    # the early-exit env always observes its exit's confidence: it has no "probe" mode
    assert core.reward.loss == "error" and core.obs_mode == ("features" if env_id == "DynExit-v1" else "probe")
    assert core.target is not None and core.target.target == dyncnn_gym.V1_DEFAULTS[env_id]["flops_target"]


@pytest.mark.parametrize("env_id", ["DynChannel-v1", "DynSkip-v1"])
def test_every_face_built_from_an_id_gets_its_registered_defaults(env_id):
    kw = _kw(env_id)
    single = gymnasium.make(env_id, **kw).unwrapped.core
    native = gymnasium.make_vec(env_id, num_envs=2, **kw).unwrapped.core
    sb3 = make_vec_env(env_id, n_envs=2, **kw).core
    core = make_core(env_id, 1, **kw)
    for c in (single, native, sb3, core):
        assert c.obs_mode == "probe" and c.reward.loss == "error" and c.target.target == single.target.target
    assert registered_kwargs(env_id)["flops_target"] == single.target.target
    # arguments override the registered defaults, None included
    assert make_core(env_id, 1, flops_target=None, **kw).target is None


@pytest.mark.parametrize("env_id", ["DynChannel-v1", "DynExit-v1"])
def test_a_seeded_reset_restarts_the_compute_weight_so_that_what_follows_repeats(env_id):
    kw = _kw(env_id, flops_target=0.6, target_rate=0.05)
    env = gymnasium.make(env_id, **kw)
    start = env.unwrapped.compute_weight

    def episodes(seed):
        out = [env.reset(seed=seed)[0]]
        for _ in range(3):
            done = False
            while not done:
                obs, r, done, _, _ = env.step(1)
                out += [obs, r]
            out.append(env.reset()[0])
        return out

    first = episodes(5)
    assert env.unwrapped.compute_weight != start  # the weight moved after every episode
    again = episodes(5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    env.reset(seed=5)
    assert env.unwrapped.compute_weight == start
    env.unwrapped.set_compute_weight(0.3)  # a weight set by hand is where a seeded reset restarts from
    env.reset(seed=5)
    assert env.unwrapped.compute_weight == 0.3


def test_the_route_env_starts_from_the_slope_of_uniform_widths_and_random_skips():
    from dyncnn_gym.envs.core import hull_slope, static_curve

    core = make_core("DynRoute-v1", 1, **_kw("DynRoute-v1", flops_target=0.6))
    A = core.A
    curve = static_curve(core.net, "route", core.data, core.split_name)
    assert curve.shape == (A - 1 + 5, 2)  # every uniform width, and random skips at 5 rates
    assert curve[A - 2, 0] == pytest.approx(1.0) and curve[A - 1, 0] == pytest.approx(1.0)  # full width; skip rate 0
    assert curve[-1, 0] == pytest.approx(core.min_flops_ratio)  # every block skipped
    assert core.compute_weight == pytest.approx(np.clip(0.5 * hull_slope(curve, 0.6), 1e-3, 1.0))


def test_flops_target_moves_the_log_weight_by_the_rate_times_the_error_of_every_episode():
    t = FlopsTarget(0.5, 0.1, rate=0.2)
    w = t.update(np.array([0.9, 0.7]))  # 2 episodes, errors +0.4 and +0.2
    assert w == pytest.approx(0.1 * np.exp(0.2 * 0.6))
    one_by_one = FlopsTarget(0.5, 0.1, rate=0.2)
    for f in (0.9, 0.7):
        one_by_one.update(np.array([f]))
    assert one_by_one.weight == pytest.approx(w)  # batching does not matter
    assert t.update(np.array([0.1])) < w  # cheaper than the target: FLOPs get cheaper
    assert t.episodes == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target": 0.0}, "flops_target=0.0"),
        ({"target": 1.5}, "flops_target=1.5"),
        ({"target": float("nan")}, "flops_target=nan"),
        ({"weight": 0.0}, "compute_weight=0.0"),
        ({"rate": -1.0}, "target_rate=-1.0"),
        ({"target": True}, "flops_target=True"),
    ],
)
def test_flops_target_refuses_bad_values_by_name(kwargs, match):
    args = {"target": 0.5, "weight": 0.1, "rate": 0.01, **kwargs}
    with pytest.raises(ValueError, match=match):
        FlopsTarget(args["target"], args["weight"], args["rate"])


def test_a_target_below_the_cheapest_route_is_refused_with_the_valid_range():
    with pytest.raises(ValueError, match=r"flops_target=0.01 must be a FLOPs ratio in \[0\.\d+, 1\]"):
        gymnasium.make("DynChannel-v1", **_kw("DynChannel-v1", flops_target=0.01))


def test_the_env_holds_its_target_by_raising_the_weight_while_episodes_cost_more():
    """Every episode at full width costs more than the target: the weight rises after each one,
    by exactly the rate times the decisions times the error, and the next episode is paid at the new weight."""
    env = gymnasium.make("DynChannel-v1", **_kw("DynChannel-v1", flops_target=0.5, target_rate=0.1, compute_weight=0.2))
    core = env.unwrapped.core
    A, T = env.action_space.n, core.T
    w = 0.2
    for k in range(3):
        env.reset(seed=0 if k == 0 else None)  # a seeded reset would restart the weight
        for _ in range(T):
            _, _, term, _, info = env.step(A - 1)
        assert term and info["flops_ratio"] == 1.0
        w *= np.exp(0.1 * T * (1.0 - 0.5))  # the rate is per decision
        assert env.unwrapped.compute_weight == pytest.approx(w)
    env.unwrapped.set_compute_weight(0.3)  # a controller outside may still set it: the adaptation restarts there
    assert env.unwrapped.compute_weight == pytest.approx(0.3)


def test_a_vector_env_holds_one_target_over_all_its_episodes():
    kw = _kw("DynChannel-v1", flops_target=0.5, target_rate=0.05, compute_weight=0.2)
    venv = gymnasium.make_vec("DynChannel-v1", num_envs=3, **kw)
    core = venv.unwrapped.core
    venv.reset(seed=0)
    ratios = []
    for _ in range(core.T * 2 + 1):
        _, _, term, _, info = venv.step(np.full(3, core.A - 1))
        if term.any():
            ratios += list(np.asarray(info["flops_ratio"])[term])
    expected = FlopsTarget(0.5, 0.2, 0.05)
    expected.update(np.array(ratios), core.T)
    assert len(ratios) == 6 and core.compute_weight == pytest.approx(expected.weight)


@pytest.mark.parametrize("env_id", ["DynChannel-v1", "DynSkip-v0"])
def test_step_costs_sum_to_the_episode_flops_ratio(env_id):
    env = gymnasium.make(env_id, **_kw(env_id))
    rng = np.random.default_rng(0)
    for k in range(3):
        env.reset(seed=k)
        costs, term = [], False
        while not term:
            _, _, term, _, info = env.step(int(rng.integers(env.action_space.n)))
            costs.append(info["cost"])
        assert all(c >= 0 for c in costs)
        assert sum(costs) == pytest.approx(info["flops_ratio"], rel=1e-12)


def test_numpy_scalars_are_valid_weights_and_targets():
    env = gymnasium.make("DynChannel-v1", **_kw("DynChannel-v1", compute_weight=np.float32(0.5), flops_target=np.float64(0.6)))
    env.unwrapped.set_compute_weight(np.int64(1))
    assert env.unwrapped.compute_weight == 1.0


def test_evaluate_dials_a_policy_to_the_flops_target_of_an_env_that_holds_one():
    from stable_baselines3 import PPO

    from dyncnn_gym.benchmark.calibrate import calibrate
    from dyncnn_gym.benchmark.protocol import evaluate

    kw = _kw("DynChannel-v1", flops_target=0.6)
    model = PPO("MlpPolicy", make_vec_env("DynChannel-v1", n_envs=4, seed=0, **kw), n_steps=16, batch_size=32, seed=0)
    model.learn(64)
    res = evaluate(model, "DynChannel-v1", **kw)
    assert res["dialed"]["target"] == 0.6 and res["dialed"]["val_flops_ratio"] <= 0.6
    core = make_core("DynChannel-v1", 8, split="test", **kw)
    by_hand = evaluate(calibrate(model, 0.6, core=core), "DynChannel-v1", core=core, dial=False)
    assert (res["accuracy"], res["flops_ratio"]) == (by_hand["accuracy"], by_hand["flops_ratio"])
    assert evaluate(model, "DynChannel-v1", dial=False, **kw)["dialed"] is None
    v0_kw = {k: v for k, v in kw.items() if k != "flops_target"}
    assert evaluate(model, "DynChannel-v0", obs="probe", **v0_kw)["dialed"] is None  # no target: nothing to dial
    with pytest.raises(ValueError, match="dial=True needs an env with a flops_target"):
        evaluate(model, "DynChannel-v1", dial=True, **{**kw, "flops_target": None})


def test_export_dials_as_evaluate_does_so_the_exported_model_routes_as_measured():
    import torch
    from stable_baselines3 import PPO

    from dyncnn_gym.benchmark.protocol import evaluate
    from dyncnn_gym.routed import export

    kw = _kw("DynChannel-v1", flops_target=0.6)
    model = PPO("MlpPolicy", make_vec_env("DynChannel-v1", n_envs=4, seed=1, **kw), n_steps=16, batch_size=32, seed=1)
    model.learn(64)
    res = evaluate(model, "DynChannel-v1", per_image=True, **kw)
    routed = export(model, "DynChannel-v1", **kw)
    images = torch.as_tensor(load_test_data("user12").test.images)
    out = routed.route(images)
    assert np.array_equal(out.actions.numpy(), res["images"]["actions"])
    assert np.array_equal(out.flops.numpy(), res["images"]["flops"])


def test_split_auto_draws_from_the_held_out_split_where_the_data_has_one():
    from dyncnn_gym.data import load_dataset

    arrays = load_test_data("user12")
    assert not arrays.has_val
    assert gymnasium.make("DynChannel-v1", **_kw("DynChannel-v1")).unwrapped.core.split_name == "train"
    with_val = load_dataset(
        {
            "train": (arrays.train.images, arrays.train.labels),
            "val": (arrays.test.images, arrays.test.labels),
            "test": (arrays.test.images, arrays.test.labels),
        }
    )
    env = gymnasium.make("DynChannel-v1", **_kw("DynChannel-v1", dataset=with_val))
    assert with_val.has_val and env.unwrapped.core.split_name == "val"
    assert gymnasium.make("DynChannel-v0", **_kw("DynChannel-v0", dataset=with_val)).unwrapped.core.split_name == "train"


def test_hull_slope_is_the_slope_of_the_upper_concave_hull():
    from dyncnn_gym.envs.core import hull_slope

    points = np.array([[0.2, 0.80], [0.5, 0.86], [0.4, 0.70], [1.0, 0.91]])  # (0.4, 0.70) lies under the hull
    assert hull_slope(points, 0.3) == pytest.approx(0.06 / 0.3)
    assert hull_slope(points, 0.7) == pytest.approx(0.05 / 0.5)
    assert hull_slope(points, 0.1) == 0.0


def test_the_adaptation_starts_at_half_the_static_fronts_slope_unless_a_weight_is_given():
    from dyncnn_gym.envs.core import START_WEIGHT_RANGE, hull_slope, static_curve

    kw = _kw("DynChannel-v1")
    core = gymnasium.make("DynChannel-v1", **kw).unwrapped.core
    curve = static_curve(core.net, "channel", core.data, core.split_name)
    assert curve.shape == (core.A, 2) and curve[-1, 0] == pytest.approx(1.0)
    expected = float(np.clip(0.5 * hull_slope(curve, 0.55), *START_WEIGHT_RANGE))
    assert core.compute_weight == pytest.approx(expected)
    assert gymnasium.make("DynChannel-v1", **kw, compute_weight=0.3).unwrapped.compute_weight == pytest.approx(0.3)
