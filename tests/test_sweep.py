"""``dyncnn-gym sweep``: the learning figures (PPO frozen vs co-trained against static networks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dyncnn_gym.benchmark.sweep import format_summary, run_sweep


def test_sweep_compares_each_point_with_static_networks_of_the_same_cost(tmp_path):
    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0",),
        dataset="digits",
        weights={"DynChannel-v0": (0.5,)},
        timesteps=640,
        finetune_kwargs={"agent_rollouts": 1, "backbone_steps": 2, "batch_size": 32},
        progress=False,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    e = saved["envs"]["DynChannel-v0"]
    assert [p["variant"] for p in e["points"]] == ["frozen", "cotrained"]
    ux = [r["flops_ratio"] for r in e["uniform"]]
    uy = [r["accuracy"] for r in e["uniform"]]
    for p in e["points"]:
        assert 0.0 < p["flops_ratio"] <= 1.0 and p["flops_saved"] == pytest.approx(1.0 - p["flops_ratio"])
        assert p["gap_to_full_points"] == pytest.approx(100 * (e["full"]["accuracy"] - p["accuracy"]))
        assert p["vs_uniform_static_points"] == pytest.approx(100 * (p["accuracy"] - np.interp(p["flops_ratio"], ux, uy)))
        assert 0.0 <= p["random_matched"]["accuracy"] <= 1.0
        # the hand-made adaptive yardstick: a confidence cascade of the same FLOPs (None below its cheapest point)
        cx = [c["flops_ratio"] for c in e["cascade_front"]]
        if p["flops_ratio"] >= cx[0]:
            cy = [c["accuracy"] for c in e["cascade_front"]]
            assert p["vs_cascade_points"] == pytest.approx(100 * (p["accuracy"] - np.interp(p["flops_ratio"], cx, cy)))
        else:
            assert p["vs_cascade_points"] is None
    co = e["points"][1]
    assert co["finetune"]["loss"] > 0 and len(co["own_uniform"]) == len(e["uniform"])
    # co-training fine-tuned a private copy: the shared default backbone still gives the full accuracy
    from dyncnn_gym.benchmark.baselines import route_outcomes, uniform_routes
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.pretraining import DEFAULT_ARCH

    core = RoutingCore("channel", 1, split="test", dataset="digits", backbone=DEFAULT_ARCH["channel"])
    assert route_outcomes(core, uniform_routes(core)[-1:])[0].mean() == pytest.approx(e["full"]["accuracy"])
    assert res["envs"]["DynChannel-v0"]["uniform"] == e["uniform"]
    text = (tmp_path / "summary.md").read_text()
    assert text == format_summary(saved) and "vs uniform static" in text and "n/a" in text  # digits: no difficulty
    assert "| vs cascade |" in text and "Confidence cascade front" in text
    assert saved["finetune"] == {"agent_rollouts": 1, "backbone_steps": 2, "batch_size": 32}
    assert "co-trained with `BackboneFinetuneCallback(agent_rollouts=1, backbone_steps=2, batch_size=32)`" in text
    assert (tmp_path / "DynChannel_sweep.png").stat().st_size > 1000


def test_sweep_rejects_an_empty_run(tmp_path):
    with pytest.raises(ValueError, match="nothing to run"):
        run_sweep(tmp_path, cotrain=False, frozen=False, progress=False)


def test_sweep_rejects_fine_tuning_arguments_it_would_not_use_or_could_not_take(tmp_path):
    import argparse

    from dyncnn_gym.benchmark.sweep import add_arguments, run_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ValueError, match="finetune_kwargs=.'augment': True.*cotrain=False"):
        run_from_args(p.parse_args(["--out", str(tmp_path), "--no-cotrain", "--finetune-augment"]))
    with pytest.raises(ValueError, match="distill='yes'"):
        run_sweep(tmp_path, finetune_kwargs={"distill": "yes"}, progress=False)
    with pytest.raises(ValueError, match="augment=True .* 8x8"):  # before the static baselines, not after
        run_sweep(tmp_path, envs=("DynChannel-v0",), dataset="digits", finetune_kwargs={"augment": True}, progress=False)
    assert not (tmp_path / "results.json").exists()


def test_sweep_with_several_seeds_reports_each_and_their_mean(tmp_path):
    """... here on a backbone other than the default (``backbone="vgg"``, the plain one)."""
    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0",),
        dataset="digits",
        backbone="vgg",
        weights={"DynChannel-v0": (0.05,)},
        timesteps=640,
        cotrain=False,
        seed=(0, 1),
        progress=False,
    )
    assert res["seeds"] == [0, 1] and res["loss"] == "error"  # the recipe's classification term
    assert res["envs"]["DynChannel-v0"]["env_kwargs"]["loss"] == "error"
    assert res["envs"]["DynChannel-v0"]["env_kwargs"]["backbone"] == "vgg"
    from dyncnn_gym.benchmark.baselines import route_outcomes, uniform_routes
    from dyncnn_gym.envs.core import RoutingCore

    plain = RoutingCore("channel", 1, split="test", dataset="digits", backbone="vgg")
    assert route_outcomes(plain, uniform_routes(plain)[-1:])[0].mean() == pytest.approx(
        res["envs"]["DynChannel-v0"]["full"]["accuracy"]
    )
    pts = res["envs"]["DynChannel-v0"]["points"]
    assert [p["seed"] for p in pts] == [0, 1]
    text = format_summary(res)
    mean_acc = 100 * np.mean([p["accuracy"] for p in pts])
    assert "Mean ± std over seeds [0, 1]" in text and f"{mean_acc:.2f} ± " in text
    assert (tmp_path / "DynChannel_sweep.png").stat().st_size > 1000  # mean line and single-seed markers


def test_sweep_rejects_an_unknown_loss_term(tmp_path):
    with pytest.raises(ValueError, match="'hinge'.*'error'"):
        run_sweep(tmp_path, loss="hinge", progress=False)


def test_sweep_points_can_steer_to_a_flops_target_instead_of_a_fixed_weight(tmp_path):
    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0",),
        dataset="digits",
        targets={"DynChannel-v0": (0.6,)},
        timesteps=1280,
        cotrain=False,
        seed=(0, 1),
        progress=False,
    )
    pts = res["envs"]["DynChannel-v0"]["points"]
    assert [(p["flops_target"], p["seed"]) for p in pts] == [(0.6, 0), (0.6, 1)]  # no default weights run
    from dyncnn_gym.recipes import env_kwargs

    for p in pts:
        assert p["start_weight"] == env_kwargs("DynChannel-v0")["compute_weight"] and p["flops_target_measure"] == "train"
        assert p["compute_weight"] != p["start_weight"]  # the weight the controller ended at
        assert p["flops_target_history"][-1]["compute_weight"] == p["compute_weight"]
    text = format_summary(res)
    assert "| frozen | target 0.6 (w " in text and "| frozen | target 0.6 | " in text  # per point and mean rows


def test_sweep_rejects_a_bad_flops_target_before_training(tmp_path):
    with pytest.raises(ValueError, match="target=1.5 is not a FLOPs ratio"):
        run_sweep(tmp_path, envs=("DynChannel-v0",), dataset="digits", targets={"DynChannel-v0": (1.5,)}, progress=False)
    with pytest.raises(ValueError, match="measure='test'"):
        run_sweep(
            tmp_path,
            envs=("DynChannel-v0",),
            dataset="digits",
            targets={"DynChannel-v0": (0.5,)},
            target_measure="test",
            progress=False,
        )


def test_sweep_can_dial_every_trained_policy_to_flops_targets_after_training(tmp_path):
    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0",),
        dataset="digits",
        weights={"DynChannel-v0": (0.05,)},
        timesteps=640,
        cotrain=False,
        calibrate=(0.5, 0.8),
        seed=(0, 1),
        ensemble=2,
        progress=False,
    )
    e = res["envs"]["DynChannel-v0"]
    from dyncnn_gym.benchmark.baselines import interpolate, pareto

    # the two seeds routed as one policy: a point of its own, dialed like the others
    [ens] = e["ensembles"]
    assert ens["seeds"] == [0, 1] and ens["compute_weight"] == 0.05 and "held_out" not in ens  # digits: no "val"
    assert ens["gap_to_full_points"] == pytest.approx(100 * (e["full"]["accuracy"] - ens["accuracy"]))
    assert [c["target"] for c in ens["calibrated"]] == [0.5, 0.8]
    assert all(c["val_flops_ratio"] <= c["target"] for c in ens["calibrated"])
    table = format_summary(res)
    assert "Ensembles of 2 frozen seeds" in table
    within = int(ens["gap_to_full_points"] <= 1.0 + 1e-9)
    assert f"| 0.05 | trained | 1 | {100 * ens['flops_saved']:.2f} ± 0.00 % |" in table
    assert f"| {0.0 - ens['gap_to_full_points']:+.2f} ± 0.00 | {within} |" in table
    for kw, match in (
        ({"ensemble": 3}, r"ensemble=3 must be 0 \(off\) or a number of seeds in \[2, 2\]"),
        ({"ensemble": 2, "frozen": False}, "ensemble needs the frozen variant"),
    ):
        with pytest.raises(ValueError, match=match):
            run_sweep(tmp_path, envs=("DynChannel-v0",), dataset="digits", seed=(0, 1), progress=False, **kw)

    for p in e["points"]:
        assert [c["target"] for c in p["calibrated"]] == [0.5, 0.8]
        for c in p["calibrated"]:
            assert c["val_flops_ratio"] <= c["target"] and abs(c["flops_ratio"] - c["target"]) < 0.1  # held out, then test
            static_acc = interpolate(pareto(e["uniform"]), c["flops_ratio"])
            assert c["vs_uniform_static_points"] == pytest.approx(100 * (c["accuracy"] - static_acc))
            assert 0 < c["held_out_accuracy"] <= 1 and abs(c["held_out_flops_ratio"] - c["target"]) < 0.05
    text = format_summary(res)
    assert "Dialed to a FLOPs target after training" in text
    # one policy per target, chosen on held-out images: the seed with the higher held-out accuracy
    for t in (0.5, 0.8):
        cs = [(p["seed"], next(c for c in p["calibrated"] if c["target"] == t)) for p in e["points"]]
        seed, c = max(cs, key=lambda sc: sc[1]["held_out_accuracy"])
        assert f"| frozen | 0.05 | {t} | {seed} | {100 * c['held_out_accuracy']:.2f} |" in text
    with pytest.raises(ValueError, match="calibrate target 1.2 is not a FLOPs ratio"):
        run_sweep(tmp_path, envs=("DynChannel-v0",), dataset="digits", calibrate=(1.2,), progress=False)
    with pytest.raises(
        ValueError, match=r"DynChannel-v0: calibrate=0.001 must be a FLOPs ratio in \[0\.\d+, 1\] \(the cheapest route"
    ):
        run_sweep(tmp_path, envs=("DynChannel-v0",), dataset="digits", calibrate=(0.001,), progress=False)


def test_sweep_can_train_with_reward_shaping(tmp_path):
    res = run_sweep(
        tmp_path,
        envs=("DynSkip-v0",),
        dataset="digits",
        weights={"DynSkip-v0": (0.1,)},
        timesteps=640,
        cotrain=False,
        shaping="continuation",
        progress=False,
    )
    assert res["envs"]["DynSkip-v0"]["env_kwargs"]["shaping"] == "continuation"
    assert "reward shaping `continuation`" in format_summary(res)
    with pytest.raises(ValueError, match="shaping='dense'"):
        run_sweep(tmp_path, envs=("DynSkip-v0",), dataset="digits", shaping="dense", progress=False)


def test_static_networks_can_be_measured_on_the_held_out_split_too():
    from conftest import make_net, user12_arrays

    from dyncnn_gym.benchmark.baselines import route_outcomes, static_baselines, uniform_routes
    from dyncnn_gym.data import load_dataset
    from dyncnn_gym.envs.core import RoutingCore

    arrays = user12_arrays()
    data = load_dataset({**arrays, "val": user12_arrays(n_train=2, n_test=30, seed=1)["test"]})
    core = RoutingCore("channel", 1, split="test", dataset=data, backbone=make_net("vgg", "user12"))
    held = static_baselines(core, split="val")
    test = static_baselines(core)
    correct, _ = route_outcomes(core, uniform_routes(core), split="val")
    assert [r["accuracy"] for r in held["uniform"]] == pytest.approx(list(correct.mean(1)))
    assert held["full"]["n_images"] == 30 and test["full"]["n_images"] == 24
    assert [r["flops_ratio"] for r in held["uniform"]] == [r["flops_ratio"] for r in test["uniform"]]  # static: same cost


def test_the_summary_gives_a_second_opinion_on_the_held_out_images(tmp_path):
    """Where the data has a "val" split, every point is also compared with the full network and the
    static fronts on those images; here the test split stands in for them, so the held-out
    comparisons must equal the test-split ones exactly."""
    from dyncnn_gym.benchmark.sweep import _held_out_comparison

    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0",),
        dataset="digits",
        weights={"DynChannel-v0": (0.05,)},
        timesteps=640,
        cotrain=False,
        calibrate=(0.6,),
        seed=(0, 1),
        progress=False,
    )
    e = res["envs"]["DynChannel-v0"]
    assert "held_out" not in e and "Second opinion" not in format_summary(res)  # digits has no "val" split
    static = {"full": e["full"], "uniform": e["uniform"], "front": e["greedy_front"]}
    e["held_out"] = {
        "split": "val",
        "n_images": 359,
        "full": e["full"],
        "uniform": e["uniform"],
        "greedy_front": e["greedy_front"],
    }
    for p in e["points"]:
        p["held_out"] = _held_out_comparison(p["accuracy"], p["flops_ratio"], static)
        for k in ("gap_to_full_points", "vs_uniform_static_points", "vs_greedy_static_points"):
            assert p["held_out"][k] == pytest.approx(p[k])
        c = p["calibrated"][0]
        c["held_out"] = _held_out_comparison(c["accuracy"], c["flops_ratio"], static)
    text = format_summary(res)
    assert "Second opinion on all 359 held-out `val` images" in text
    gaps = [-p["gap_to_full_points"] for p in e["points"]]
    greedy = [p["vs_greedy_static_points"] for p in e["points"]]
    assert (
        f"| frozen | 0.05 | trained | {100 * np.mean([p['flops_saved'] for p in e['points']]):.2f} ± "
        f"{100 * np.std([p['flops_saved'] for p in e['points']], ddof=1):.2f} % |"
    ) in text
    row = next(line for line in text.splitlines() if line.startswith("| frozen | 0.05 | trained |"))
    assert f"| {np.mean(gaps):+.2f} ± {np.std(gaps, ddof=1):.2f} |" in row
    assert row.endswith(f"| {np.mean(greedy):+.2f} ± {np.std(greedy, ddof=1):.2f} |")
    assert "| frozen | 0.05 | dialed to 0.6 |" in text


def test_a_sweep_over_both_envs_gives_each_env_its_own_default_backbone(tmp_path):
    """Each env of one sweep runs on its own default backbone, not on the network the previous
    env's points were trained with."""
    from dyncnn_gym.benchmark.baselines import route_outcomes, uniform_routes
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.pretraining import DEFAULT_ARCH

    res = run_sweep(
        tmp_path,
        envs=("DynChannel-v0", "DynSkip-v0"),
        dataset="digits",
        weights={"DynChannel-v0": (0.05,), "DynSkip-v0": (0.1,)},
        timesteps=640,
        cotrain=False,
        progress=False,
    )
    for env_id, mode in (("DynChannel-v0", "channel"), ("DynSkip-v0", "skip")):
        e = res["envs"][env_id]
        assert e["env_kwargs"]["backbone"] == DEFAULT_ARCH[mode]
        core = RoutingCore(mode, 1, split="test", dataset="digits", backbone=DEFAULT_ARCH[mode])
        assert route_outcomes(core, uniform_routes(core)[-1:])[0].mean() == pytest.approx(e["full"]["accuracy"])
