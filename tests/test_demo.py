"""The demo (``dyncnn-gym demo``): its outputs are what a third party reproduces with its own loop."""

from __future__ import annotations

import json
import re

import pytest

from dyncnn_gym.benchmark.calibrate import CostBiasedPolicy
from dyncnn_gym.benchmark.protocol import load_model
from dyncnn_gym.envs.routing import make_core


def test_demo_writes_results_that_a_third_party_can_reproduce(digit_backbones, tmp_path):
    import gymnasium as gym

    from dyncnn_gym.benchmark.demo import run_demo

    res = run_demo(tmp_path, dataset="digits", timesteps=512, backbones=digit_backbones, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["full"]) == {"DynChannel-v1", "DynSkip-v1", "DynExit-v1"}
    assert saved["data"]["n_val"] == 0 and saved["data"]["n_train"] == 1438  # digits: too few images to hold any out
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
    assert exit_entry["env_kwargs"]["backbone"] == digit_backbones["channel"]  # the width cascade on the channel backbone
    assert sum(exit_entry["exit_rates"]) == pytest.approx(1.0)
    from dyncnn_gym.benchmark.demo import format_table

    table = format_table(saved)
    for env_id, entry in zip(saved["full"], saved["learned"]):  # a confidence cascade beside every router
        assert saved["baselines"][env_id]["cascade"] and "cascade_accuracy_at_same_flops" in entry
        assert f"| {env_id} | confidence cascade" in table
    assert re.search(r"\| DynChannel-v1 \| confidence cascade \d+->\d+, threshold", table)  # its action pair
    # the exported early-exit router, timed against the full network and the static network of its accuracy
    clock = saved["wall_clock"]["DynExit-v1"]
    assert clock["accuracy"] == exit_entry["accuracy"] and (clock["batch"], clock["threads"]) == (256, 1)
    assert clock["routed_vs_full"] > 0 and clock["routed_vs_static_same_accuracy"] > 0
    assert set(clock["static_routes"]) == {"accuracy", "flops"}
    assert set(saved["wall_clock"]) == {"DynExit-v1"}
    for entry in saved["learned"]:
        model = load_model(str(tmp_path / entry["model_path"]))
        assert type(model).__name__ == entry["algorithm"]
        policy = model
        if entry["env_id"].endswith("-v1"):
            # the -v1 envs hold a FLOPs target: evaluation dialed the policy to it with a recorded cost bias
            assert entry["dialed"]["target"] == gym.spec(entry["env_id"]).kwargs["flops_target"]
            policy = CostBiasedPolicy(model, entry["dialed"]["bias"])
        else:
            assert entry["dialed"] is None
        # the third party's own loop: single env, test split, deterministic actions
        env = gym.make(entry["env_id"], split="test", **entry["env_kwargs"])
        n = len(make_core(entry["env_id"], 1, split="test", **entry["env_kwargs"]).labels)
        correct, ratio = 0, 0.0
        obs, _ = env.reset(seed=0)
        for _ in range(n):
            done = False
            while not done:
                action, _ = policy.predict(obs[None], deterministic=True)
                action = int(action[0])
                obs, _, done, _, info = env.step(action)
            correct += info["correct"]
            ratio += info["flops_ratio"]
            obs, _ = env.reset()
        assert correct / n == pytest.approx(entry["accuracy"])
        assert ratio / n == pytest.approx(entry["flops_ratio"])
    assert res["learned"][0]["env_kwargs"] == saved["learned"][0]["env_kwargs"]


def test_the_demo_command_takes_a_data_set_and_names_a_bad_one(tmp_path, capsys):
    from dyncnn_gym.cli import main

    assert main(["demo", "--data", "nosuch", "--out", str(tmp_path / "a")]) == 2
    assert "unknown data set name 'nosuch'; valid names: ['shapes', 'digits'" in capsys.readouterr().err
    assert main(["demo", "--data", "cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert f"'cifar10' data not found under root='{tmp_path}'" in capsys.readouterr().err
    assert main(["demo", "--data", "digits", "--val-fraction", "half", "--out", str(tmp_path / "c")]) == 2
    assert "--val-fraction 'half' must be 'auto' or a number in [0, 1)" in capsys.readouterr().err
    assert main(["demo", "--data", "digits", "--val-fraction", "1.5", "--out", str(tmp_path / "d")]) == 2
    assert "val_fraction=1.5 must be 'auto' or a number in [0, 1)" in capsys.readouterr().err


def test_an_exit_backbone_makes_the_demo_run_depth_stages_on_it(tmp_path, capsys):
    from dyncnn_gym.benchmark.demo import run_demo
    from dyncnn_gym.cli import main

    exits = "resnet20-lite-exits+distill"  # ships for digits
    run_demo(tmp_path, envs=("DynExit-v1",), dataset="digits", timesteps=512, backbones={"exit": exits}, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    (entry,) = saved["learned"]
    assert entry["env_kwargs"]["backbone"] == exits and entry["env_kwargs"]["stages"] == "depth"
    assert len(saved["static"]["DynExit-v1"]["exits"]) == make_core("DynExit-v1", 1, **entry["env_kwargs"]).S
    assert saved["wall_clock"]["DynExit-v1"]["accuracy"] == entry["accuracy"]
    assert main(["demo", "--backbone", "exit", "--out", str(tmp_path / "a")]) == 2
    assert "--backbone 'exit' must be MODE=NAME" in capsys.readouterr().err
    assert main(["demo", "--backbone", "depth=resnet56-exits", "--out", str(tmp_path / "b")]) == 2
    assert "backbones has modes ['depth']; choose from ['channel', 'skip', 'exit']" in capsys.readouterr().err


def test_the_demo_trains_times_and_saves_a_one_look_router_on_dynblockdrop(digit_backbones, tmp_path, capsys):
    from dyncnn_gym.benchmark.demo import run_demo
    from dyncnn_gym.benchmark.protocol import evaluate
    from dyncnn_gym.cli import build_parser

    assert build_parser().parse_args(["demo", "--env", "DynBlockDrop-v1"]).env == ["DynBlockDrop-v1"]
    skip = digit_backbones["skip"]
    run_demo(tmp_path, envs=("DynBlockDrop-v1",), dataset="digits", timesteps=512, backbones={"skip": skip}, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    (entry,) = saved["learned"]
    assert entry["env_id"] == "DynBlockDrop-v1" and entry["env_kwargs"]["backbone"] == skip
    assert (
        entry["dialed"]["target"] == 0.68
        and len(entry["action_rates"]) == make_core("DynSkip-v1", 1, dataset="digits", backbone=skip).T
    )
    assert saved["static"]["DynBlockDrop-v1"]["front"] and (tmp_path / "DynBlockDrop_front.png").stat().st_size > 1000
    # the exported one-look router, timed against the full network and the static network of its accuracy
    clock = saved["wall_clock"]["DynBlockDrop-v1"]
    assert (
        clock["accuracy"] == entry["accuracy"] and clock["routed_vs_full"] > 0 and clock["routed_vs_static_same_accuracy"] > 0
    )
    assert "DynBlockDrop-v1, PPO exported as one model" in capsys.readouterr().out
    # the saved model reproduces the table's figures
    again = evaluate(load_model(str(tmp_path / entry["model_path"])), "DynBlockDrop-v1", **entry["env_kwargs"])
    assert (again["accuracy"], again["flops_ratio"]) == (entry["accuracy"], entry["flops_ratio"])


def test_the_demo_trains_routers_priced_in_time_where_decisions_have_a_time(digit_backbones, tmp_path, capsys):
    from dyncnn_gym.benchmark.demo import run_demo
    from dyncnn_gym.cli import main

    run_demo(
        tmp_path,
        envs=("DynSkip-v1",),
        dataset="digits",
        timesteps=512,
        backbones=digit_backbones,
        progress=False,
        decision_costs="time",
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    (entry,) = saved["learned"]
    assert entry["env_kwargs"]["decision_costs"] == "time"
    backbones = " ".join(f"--backbone {m}={n}" for m, n in digit_backbones.items())
    want = f"dyncnn-gym demo --out {tmp_path} --env DynSkip-v1 --timesteps 512 --data digits {backbones} --decision-costs time"
    assert saved["command"] == want  # the command that reruns it
    assert make_core("DynSkip-v1", 1, **entry["env_kwargs"]).time_weighted
    assert main(["demo", "--decision-costs", "time", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "prices the decisions of DynChannel, DynSkip and DynBlockDrop; ['DynExit-v1'] price FLOPs only" in err
    with pytest.raises(SystemExit, match="2"):
        main(["demo", "--decision-costs", "seconds", "--out", str(tmp_path / "b")])
    assert "invalid choice: 'seconds' (choose from 'flops', 'time')" in capsys.readouterr().err
