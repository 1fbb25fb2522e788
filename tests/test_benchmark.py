"""The evaluation protocol, the baselines and the demo, on tiny configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dyncnn_gym.benchmark.baselines import interpolate, oracle, pareto, random_policy_eval, static_baselines
from dyncnn_gym.benchmark.protocol import evaluate, load_model
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import pretrain


@pytest.fixture(scope="module")
def digit_backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("bb")
    paths = {}
    for mode, arch in (("channel", "vgg"), ("skip", "resnet8")):
        paths[mode] = str(d / f"{arch}.pt")
        pretrain(arch, "digits", epochs=2, progress=False, cache=False, out=paths[mode])
    return paths


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


def test_demo_writes_results_that_a_third_party_can_reproduce(digit_backbones, tmp_path):
    import gymnasium as gym

    from dyncnn_gym.benchmark.demo import run_demo

    res = run_demo(tmp_path, dataset="digits", timesteps=512, backbones=digit_backbones, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["full"]) == {"DynChannel-v0", "DynSkip-v0", "DynExit-v0"}
    assert len(saved["learned"]) == 3
    for png in (
        "DynChannel_front.png",
        "DynSkip_front.png",
        "DynChannel_usage.png",
        "DynSkip_images.png",
        "DynExit_front.png",
    ):
        assert (tmp_path / png).stat().st_size > 1000
    exit_entry = saved["learned"][2]
    assert exit_entry["env_kwargs"]["backbone"] == digit_backbones["channel"] and exit_entry["train_split"] == "train"
    assert sum(exit_entry["exit_rates"]) == pytest.approx(1.0) and saved["baselines"]["DynExit-v0"]["cascade"]
    for entry in saved["learned"][:2]:
        model = load_model(str(tmp_path / entry["model_path"]))
        assert type(model).__name__ == entry["algorithm"]
        # the third party's own loop: single env, test split, deterministic actions
        env = gym.make(entry["env_id"], split="test", **entry["env_kwargs"])
        n = len(
            RoutingCore("channel" if "Channel" in entry["env_id"] else "skip", 1, split="test", **entry["env_kwargs"]).labels
        )
        correct, ratio = 0, 0.0
        obs, _ = env.reset(seed=0)
        for _ in range(n):
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, _, done, _, info = env.step(action)
            correct += info["correct"]
            ratio += info["flops_ratio"]
            obs, _ = env.reset()
        assert correct / n == pytest.approx(entry["accuracy"])
        assert ratio / n == pytest.approx(entry["flops_ratio"])
    assert res["learned"][0]["env_kwargs"] == saved["learned"][0]["env_kwargs"]


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
