"""The evaluation protocol and the baselines (static routes, fronts, oracle, random routes, the
confidence cascade), on tiny digits backbones (the ``digit_backbones`` fixture of conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dyncnn_gym.benchmark.baselines import interpolate, oracle, pareto, random_policy_eval, static_baselines
from dyncnn_gym.benchmark.protocol import evaluate
from dyncnn_gym.envs.core import RoutingCore


def test_evaluate_covers_the_whole_test_split_and_matches_static_routes(digit_backbones):
    kw = {"dataset": "digits", "backbone": digit_backbones["channel"]}
    core = RoutingCore("channel", 1, split="test", **kw)
    static = static_baselines(core)
    for a, row in enumerate(static["uniform"]):
        res = evaluate(lambda obs, a=a: np.full(len(obs), a), "DynChannel-v0", batch_size=97, **kw)
        assert res["n_images"] == len(core.labels)
        assert res["accuracy"] == pytest.approx(row["accuracy"])
        assert res["flops_ratio"] == pytest.approx(row["flops_ratio"])
        assert res["action_rates"][0][a] == 1.0
        assert res["routes"]["distinct"] == 1
    assert static["full"]["flops_ratio"] == pytest.approx(1.0)


def test_front_interpolation_and_pareto():
    pts = [{"accuracy": 0.5, "flops_ratio": 0.2}, {"accuracy": 0.4, "flops_ratio": 0.5}, {"accuracy": 0.9, "flops_ratio": 1.0}]
    front = pareto(pts)
    assert [p["flops_ratio"] for p in front] == [0.2, 1.0]
    assert interpolate(front, 0.6) == pytest.approx(0.5 + 0.4 * 0.5)
    assert np.isnan(interpolate(front, 0.1))


def test_oracle_is_an_upper_bound_and_random_matches_rates(digit_backbones):
    core = RoutingCore("skip", 1, split="test", dataset="digits", backbone=digit_backbones["skip"])
    static = static_baselines(core)
    orc = oracle(core)
    assert orc["upper_bound"] is True
    assert orc["accuracy"] >= max(r["accuracy"] for r in static["exhaustive"])
    rnd = random_policy_eval(core, [[0.0, 1.0]] * core.T)
    assert rnd["flops_ratio"] == pytest.approx(1.0)
    assert rnd["accuracy"] == pytest.approx(static["full"]["accuracy"])


@pytest.mark.parametrize("env_id, mode", [("DynChannel-v0", "channel"), ("DynSkip-v0", "skip")])
def test_a_confidence_cascade_is_the_threshold_policy_on_the_probe_observation(digit_backbones, env_id, mode):
    from dyncnn_gym.benchmark.baselines import cascade_outcomes

    kw = {"dataset": "digits", "backbone": digit_backbones[mode], "obs": "probe"}
    core = RoutingCore(mode, 1, split="test", **kw)
    top = core.feat_dim + core.T  # the probe's top probability in the observation
    cheap, rich = 0, core.A - 1
    for threshold in (0.5, 0.9):
        correct, flops = cascade_outcomes(core, cheap, rich, threshold)
        res = evaluate(lambda obs, threshold=threshold: np.where(obs[:, top] < threshold, rich, cheap), env_id, core=core)
        assert res["accuracy"] == pytest.approx(correct.mean())
        assert res["flops_ratio"] == pytest.approx(flops.mean() / core.full)
    # a threshold no probe stays below routes every image the cheap way: the static cheap route
    static = static_baselines(core)
    correct, flops = cascade_outcomes(core, cheap, rich, 0.0)
    assert correct.mean() == pytest.approx(static["uniform"][cheap]["accuracy"])
    assert (flops == flops[0]).all() and flops[0] / core.full == pytest.approx(static["uniform"][cheap]["flops_ratio"])


def test_the_cascade_front_is_selected_off_the_test_split_and_measured_on_it(digit_backbones):
    from dyncnn_gym.benchmark.baselines import cascade_front, cascade_outcomes

    core = RoutingCore("channel", 1, split="test", dataset="digits", backbone=digit_backbones["channel"])
    res = cascade_front(core, thresholds=(0.5, 0.9), select_on=100)
    assert res["selected_on"] == "train"  # digits has no "val" split
    assert res["front"] == pareto(res["points"]) and len(res["points"]) >= 1
    p = res["points"][0]
    assert p["cheap"] < p["rich"] and p["n_images"] == len(core.labels)
    correct, flops = cascade_outcomes(core, p["cheap"], p["rich"], p["threshold"])
    assert p["accuracy"] == pytest.approx(correct.mean()) and p["flops_ratio"] == pytest.approx(flops.mean() / core.full)
    with pytest.raises(ValueError, match=r"cheap=0 and rich=9 must be actions in \[0, 3\]"):
        cascade_outcomes(core, 0, 9, 0.5)
    with pytest.raises(ValueError, match=r"cheap=1.5 and rich=3 must be actions in \[0, 3\]"):
        cascade_outcomes(core, 1.5, 3, 0.5)
    for bad in (1.5, float("nan"), "high", True):
        with pytest.raises(ValueError, match=f"threshold={bad!r} must be a probability"):
            cascade_outcomes(core, 0, 3, bad)


@pytest.mark.parametrize("mode", ["channel", "skip"])
def test_static_routes_share_their_prefixes_and_score_bit_for_bit_as_each_route_walked_alone(digit_backbones, mode):
    """``route_outcomes`` walks the routes as a prefix tree: each distinct prefix is computed once per
    batch of images, and every route's outcome is exactly that of walking it alone (duplicates and
    the one-step-cheaper candidates of ``lowered_outcomes`` included); the greedy front is built from it."""
    from dyncnn_gym.benchmark import baselines
    from dyncnn_gym.walk import run_routes

    core = RoutingCore(mode, 1, split="test", dataset="digits", backbone=digit_backbones[mode])
    T, A = core.T, core.A
    route = np.array([(t * 2 + 1) % A for t in range(T)], dtype=np.int64)
    route[0] = A - 1
    rng = np.random.default_rng(0)
    ts = np.flatnonzero(route > 0)
    lowered = np.repeat(route[None], len(ts), axis=0)
    lowered[np.arange(len(ts)), ts] -= 1
    routes = np.concatenate([baselines.uniform_routes(core), lowered, rng.integers(0, A, (6, T)), lowered[:1]])

    calls = []
    net = core.net
    decision = net.decision
    net.decision = lambda *a, **k: calls.append(1) or decision(*a, **k)
    try:
        baselines._OUTCOMES.pop(net, None)
        correct, flops = baselines.route_outcomes(core, routes, batch=97)
        shared = len(calls)
        want = np.stack(
            [
                run_routes(net, mode, core.images, np.broadcast_to(r, (len(core.labels), T)))[0].argmax(1).numpy()
                == core.labels
                for r in routes
            ]
        )
        alone = len(calls) - shared
    finally:
        del net.decision
    np.testing.assert_array_equal(correct, want)
    np.testing.assert_array_equal(flops, [core.table.path_flops(r) for r in routes])
    batches = -(-len(core.labels) // 97)
    prefixes = len({tuple(r[: k + 1]) for r in routes for k in range(T)})
    if mode == "channel":  # every decision is a call (skip mode: a skipped identity block is none)
        assert shared == batches * prefixes
    assert shared <= batches * prefixes and shared / batches < 0.8 * alone  # alone: every route walked once, one batch

    baselines._OUTCOMES.pop(net, None)
    got, correct_l, flops_l = baselines.lowered_outcomes(core, route, batch=97)
    np.testing.assert_array_equal(got, lowered)
    np.testing.assert_array_equal(correct_l, want[A : A + len(ts)])
    assert len({c.tobytes() for c in correct_l}) > 1, "the candidates should differ on some image"
    greedy = baselines.greedy_routes(core, select_on=200)
    steps = np.diff(greedy, axis=0)
    assert (steps.sum(1) == -1).all() and (steps <= 0).all() and (greedy[-1] == 0).all()


def test_greedy_static_routes_are_chosen_off_the_test_split_on_held_out_images_too():
    """Where the data hold out a ``"val"`` split, the static front holds the greedy routes chosen there
    and those chosen on train images (each row says which); never routes chosen on the split they are
    evaluated on (the test split, or the held-out one for a second opinion)."""
    from conftest import make_net

    from dyncnn_gym.benchmark import baselines
    from dyncnn_gym.data import load_dataset

    data = load_dataset("digits", val_fraction=0.25)
    core = RoutingCore("channel", 1, split="test", dataset=data, backbone=make_net("vgg", "digits"))
    static = static_baselines(core, select_on=200)
    assert static["selected_on"] == ["val", "train"]
    for s in ("val", "train"):
        family = [r["actions"] for r in static["greedy"] if r["selected_on"] == s]
        np.testing.assert_array_equal(family, baselines.greedy_routes(core, select_on=200, split=s))
    val, train = (baselines.greedy_routes(core, select_on=200, split=s) for s in ("val", "train"))
    assert len(val) != len(train) or (val != train).any(), "the two families should differ on this backbone"
    assert static["front"] == pareto(static["uniform"] + static["greedy"])
    only = static_baselines(core, select_on=200, select_split="train")
    assert only["selected_on"] == ["train"] and {r["selected_on"] for r in only["greedy"]} == {"train"}
    from dyncnn_gym.benchmark.bench import TaskBaselines

    bench, _ = TaskBaselines(core).static()  # the published suites' protocol, recorded in their format
    assert "selected_on" not in bench and not any("selected_on" in r for r in bench["greedy"] + bench["front"])
    np.testing.assert_array_equal([r["actions"] for r in bench["greedy"]], baselines.greedy_routes(core, split="train"))
    assert static_baselines(
        RoutingCore("channel", 1, split="test", dataset="digits", backbone=make_net("vgg", "digits")), select_on=200
    )["selected_on"] == ["train"]  # no held-out split: train images only
    with pytest.raises(ValueError, match="not on the test split"):
        baselines.greedy_routes(core, split="test")
    second = static_baselines(core, select_on=200, split="val")  # scored on the held-out images: chosen off them
    assert second["selected_on"] == ["train"] and {r["selected_on"] for r in second["greedy"]} == {"train"}
    assert {r["n_images"] for r in second["greedy"]} == {len(data.val)}
    assert static_baselines(core, select_on=200, split="val", select_split="val")["selected_on"] == ["val"]  # asked for
    no_val = RoutingCore("channel", 1, split="test", dataset="digits", backbone=make_net("vgg", "digits"))
    with pytest.raises(
        ValueError, match=r"off split='train', and the data has no 'val' split.*select_split='train'.*greedy=False"
    ):
        static_baselines(no_val, select_on=200, split="train")
