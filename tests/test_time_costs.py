"""Decision costs in time: the reward prices each decision by the costs given, FLOPs stay exact."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_env, make_net

from dyncnn_gym.time_costs import decision_times
from dyncnn_gym.walk import cost_tensors

FIXED = {"flops_target": None, "compute_weight": 0.3, "loss": "error"}


def rollout(env, actions, seed=0):
    env.reset(seed=seed)
    rewards, infos = [], []
    for a in actions:
        _, r, term, _, info = env.step(a)
        rewards.append(r)
        infos.append(info)
    assert term
    return np.array(rewards), infos


@pytest.mark.parametrize(("env_id", "arch"), [("DynChannel-v1", "vgg"), ("DynSkip-v1", "resnet8")])
def test_costs_proportional_to_the_flops_pay_exactly_the_flops_reward(env_id, arch):
    plain = make_env(env_id, arch, **FIXED)
    core = plain.unwrapped.core
    steps = cost_tensors(core.net, core.mode)[0].steps
    actions = np.random.default_rng(1).integers(0, core.A, core.T)
    want, _ = rollout(plain, actions)
    for costs in (steps, 1e-3 * steps):
        got, _ = rollout(make_env(env_id, arch, decision_costs=costs, **FIXED), actions)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_each_decision_is_paid_its_share_of_the_costs_and_flops_stay_exact():
    plain = make_env("DynSkip-v1", "resnet8", **FIXED)
    core = plain.unwrapped.core
    table = cost_tensors(core.net, core.mode)[0]
    T = core.T
    costs = np.zeros((T, 2, 2))
    costs[:, :, 1] = 1.0
    costs[0, :, 1] = 3.0  # the first block costs three times any other; skipping costs nothing
    env = make_env("DynSkip-v1", "resnet8", decision_costs=costs, **FIXED)
    decisions = float(table.steps[np.arange(T), 1, 1].sum())  # the full route's decisions, FLOPs
    price = 0.3 * decisions / (T + 2) / table.full  # compute term of skipping a block of cost 1
    actions = np.zeros(T, dtype=np.int64)
    got, infos = rollout(env, actions)
    want, plain_infos = rollout(plain, actions)
    np.testing.assert_allclose(got[:-1], price * np.array([3.0] + [1.0] * (T - 2)), rtol=1e-12)
    # the last step adds the same classification term in both envs
    last_flops_term = 0.3 * (table.steps[T - 1, 1, 1] - table.steps[T - 1, 1, 0]) / table.full
    np.testing.assert_allclose(got[-1] - want[-1], price - last_flops_term, rtol=1e-9, atol=1e-12)
    assert infos[-1]["flops"] == plain_infos[-1]["flops"] == table.path_flops(actions)
    assert infos[-1]["correct"] == plain_infos[-1]["correct"]


def test_the_teacher_prices_routes_as_the_env_pays_them():
    costs = np.random.default_rng(0).uniform(0.5, 2.0, (5, 4, 4))
    env = make_env("DynChannel-v1", "vgg", decision_costs=costs, **FIXED)
    env.reset(seed=3)
    told = env.unwrapped.teacher()
    a, cont = 1, 2
    paid = 0.0
    for action in [a] + [cont] * (env.unwrapped.core.T - 1):
        _, r, *_ = env.step(action)
        paid += r
    assert told["returns"][a, cont] == pytest.approx(paid, rel=1e-12, abs=1e-12)
    env.reset(seed=3)
    told = env.unwrapped.teacher(lambda obs: np.full(len(obs), cont))  # a policy that always takes cont
    np.testing.assert_allclose(told["q_policy"], told["returns"][:, cont], rtol=1e-12)


@pytest.mark.parametrize(("arch", "mode"), [("vgg", "channel"), ("resnet8", "skip")])
def test_decision_times_are_measured_per_decision_and_action(arch, mode):
    net = make_net(arch, "user12")
    x = torch.as_tensor(load_test_data("user12").test.images[:8])
    times = decision_times(net, mode, x, repeats=1)
    table = cost_tensors(net, mode)[0]
    assert times.shape == table.steps.shape
    assert np.isfinite(times).all() and (times >= 0).all()
    top = table.num_actions - 1
    assert (times[:, top, top] > 0).all()
    if mode == "skip":  # a block's work does not depend on the previous action
        np.testing.assert_array_equal(times[:, 0], times[:, 1])
    np.testing.assert_array_equal(times[0], np.broadcast_to(times[0, top], times[0].shape))


def test_time_measured_at_build_weighs_the_full_route_as_its_flops():
    env = make_env("DynSkip-v1", "resnet8", decision_costs="time")
    core = env.unwrapped.core
    steps = cost_tensors(core.net, core.mode)[0].steps
    full = np.arange(core.T), 1, 1
    assert core.cost_steps[full].sum() == pytest.approx(float(steps[full].sum()), rel=1e-12)
    assert core.time_weighted and (core.cost_steps[full] > 0).all()


@pytest.mark.parametrize(
    ("costs", "match"),
    [
        ("seconds", r"decision_costs='seconds' is not a cost; choose 'flops', 'time' or an array of shape \[\d+, 2, 2\]"),
        (np.ones((7, 3, 2)), r"decision_costs has shape \[7, 3, 2\]; this env needs \[\d+, 2, 2\]"),
        ("neg", r"decision_costs\[1, 0, 1\] = -1.0 must be a finite number >= 0"),
        ("nan", r"decision_costs\[0, 1, 0\] = nan must be a finite number >= 0"),
        ("zero", r"gives the full route .* no cost"),
        ([["a"]], r"must be 'flops', 'time' or an array of shape"),
    ],
)
def test_bad_decision_costs_are_named(costs, match):
    T = cost_tensors(make_net("resnet8", "user12"), "skip")[0].num_decisions
    if isinstance(costs, str) and costs in ("neg", "nan", "zero"):
        arr = np.ones((T, 2, 2))
        if costs == "neg":
            arr[1, 0, 1] = -1.0
        elif costs == "nan":
            arr[0, 1, 0] = np.nan
        else:
            arr[:, :, 1] = 0.0
        costs = arr
    with pytest.raises(ValueError, match=match):
        make_env("DynSkip-v1", "resnet8", decision_costs=costs)


def test_reward_forms_that_count_groups_refuse_costs():
    with pytest.raises(ValueError, match="decision_costs='time' prices the reward='flops' form; reward='rnp' pays per"):
        make_env("DynChannel-v1", "vgg", reward="rnp", decision_costs="time")


def test_a_one_look_route_is_paid_what_dynskip_pays_its_decisions_at_the_same_costs():
    T = cost_tensors(make_net("resnet8", "user12"), "skip")[0].num_decisions
    costs = np.random.default_rng(2).uniform(0.5, 2.0, (T, 2, 2))
    route = np.array([1, 0] * (T // 2) + [1] * (T % 2))
    one_look = make_env("DynBlockDrop-v1", "resnet8", decision_costs=costs, **FIXED)
    one_look.reset(seed=5)
    _, paid, *_ = one_look.step(route)
    per_block, _ = rollout(make_env("DynSkip-v1", "resnet8", decision_costs=costs, **FIXED), route, seed=5)
    assert paid == pytest.approx(per_block.sum(), rel=1e-12, abs=1e-12)
    flops_paid = make_env("DynBlockDrop-v1", "resnet8", **FIXED)
    flops_paid.reset(seed=5)
    assert flops_paid.step(route)[1] != pytest.approx(paid, rel=1e-9)  # the costs changed the price
    with pytest.raises(ValueError, match="reward='blockdrop' pays 1 - u\\*\\*2"):
        make_env("DynBlockDrop-v0", "resnet8", decision_costs="time")


def test_early_exit_envs_refuse_decision_costs():
    with pytest.raises(TypeError, match="unknown argument decision_costs"):
        make_env("DynExit-v1", "vgg", decision_costs="time")


def test_envs_on_one_backbone_share_one_measurement(monkeypatch):
    import dyncnn_gym.time_costs as tc

    calls = []
    real = tc.decision_times
    monkeypatch.setattr(tc, "decision_times", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = make_net("resnet8", "user12", cached=False)
    make = lambda split: gymnasium.make(  # noqa: E731
        "DynSkip-v1", dataset=load_test_data("user12"), backbone=net, groups=4, split=split, decision_costs="time"
    )
    train, test = make("train").unwrapped.core, make("test").unwrapped.core
    assert len(calls) == 1
    np.testing.assert_array_equal(train.cost_steps, test.cost_steps)
    train.cost_steps[0, 1, 1] = -1.0  # each env holds its own copy
    assert test.cost_steps[0, 1, 1] > 0
