"""``dyncnn-gym perf``'s routed-model table: its parts, on tiny networks (the benchmark itself is not run
in tests: speed goals are measured by the command, never by timed tests).

The plain ``nn.Module`` references compute the package's full network; a static route runs as the slim
network it defines; the random router executes about half of the blocks, per image; static times are
interpolated between the two front points around a value; the table has one row per measurement.
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net

import dyncnn_gym
from dyncnn_gym.benchmark.perf import add_arguments
from dyncnn_gym.benchmark.plain import plain_copy
from dyncnn_gym.benchmark.routed_table import RandomGates, RandomPlans, _bracket, format_routed, spaced_route
from dyncnn_gym.walk import run_routes

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet14", "skip"), ("resnet8-lite", "skip")])
def test_plain_torch_references_compute_the_full_network(arch, mode, device):
    net = make_net(arch, "user12").to(device)
    x = torch.as_tensor(load_test_data("user12").test.images[:7]).to(device)
    plain = plain_copy(net)
    assert not any(type(m).__module__.startswith("dyncnn_gym.models") for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net.full_forward(x, mode), rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="has no plain version"):
        plain_copy(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet14", "skip")])
def test_a_static_route_runs_as_its_slim_network(arch, mode):
    net = make_net(arch, "user12")
    x = torch.as_tensor(load_test_data("user12").test.images[:6])
    T, A = net.num_decisions(mode), net.num_actions(mode)
    route = list(np.random.default_rng(0).integers(0, A, T))
    with torch.no_grad():
        expected, _ = run_routes(net, mode, x, torch.as_tensor([route] * 6))
        one, _ = run_routes(net, mode, x[:1], torch.as_tensor([route]))
        with mock.patch("dyncnn_gym.walk.Walk.__init__", side_effect=AssertionError("a static network needs no walk")):
            assert torch.equal(net.static_forward(x, mode, route), expected)
            assert torch.equal(net.static_forward(x[:1], mode, route), one)


@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet14", "skip")])
def test_one_image_replays_its_route_on_the_lean_path_a_routed_model_takes(arch, mode):
    net = make_net(arch, "user12")
    x = torch.as_tensor(load_test_data("user12").test.images[:6])
    T, A = net.num_decisions(mode), net.num_actions(mode)
    routes = torch.as_tensor(np.random.default_rng(1).integers(0, A, (6, T)))
    with torch.no_grad():
        logits, flops = run_routes(net, mode, x, routes)
        with mock.patch("dyncnn_gym.walk.Walk.step", side_effect=AssertionError("one image needs no arrays per decision")):
            for i in range(6):
                one, cost = run_routes(net, mode, x[i : i + 1], routes[i : i + 1])
                torch.testing.assert_close(one, logits[i : i + 1], rtol=1e-4, atol=1e-4)
                assert cost.tolist() == flops[i : i + 1].tolist()
            bad = routes[:1].clone()
            bad[0, -1] = A
            with pytest.raises(ValueError, match=rf"action {A} is outside Discrete\({A}\) \(valid: 0..{A - 1}\)"):
                run_routes(net, mode, x[:1], bad)


def test_the_random_router_executes_about_half_of_the_blocks_per_image():
    torch.manual_seed(0)
    gates = RandomGates(40)
    scores = gates(torch.rand(2000, 40) * 2 - 1)
    executes = scores.argmax(1).float()
    assert scores.shape == (2000, 2) and 0.4 < float(executes.mean()) < 0.6
    # plain layers: a routed model runs it on the host at batch 1, as it runs a trained head
    from dyncnn_gym.host_head import HostHead
    from dyncnn_gym.policies import ModuleHead

    assert HostHead.of(ModuleHead(gates)) is not None
    table = make_net("resnet14", "user12").cost_table("skip")
    for target in (0.25, 0.5, 0.75):
        route = spaced_route(table, target)
        assert abs(table.path_flops(route) / table.full - target) < 0.2 and set(route) <= {0, 1}


def test_the_random_one_shot_router_plans_about_half_of_the_blocks_per_image_from_one_look():
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.policies import OneShotHead

    core = RoutingCore("skip", 1, dataset=load_test_data("user12"), backbone=make_net("resnet14", "user12"), split="test")
    rn = dyncnn_gym.export(OneShotHead(RandomPlans(core.observation_space.shape[0], core.T)), core=core)
    x = core.images[:64]
    calls = []
    observe = rn._observation
    rn._observation = lambda *a: calls.append(a[0]) or observe(*a)
    out = rn.route(x)
    assert calls == [0]  # one observation per image: the plan is made at the first decision
    keeps = out.actions.float()
    assert 0.3 < float(keeps.mean()) < 0.7 and len({tuple(r) for r in out.actions.tolist()}) >= 6  # of 2**5 routes
    logits, flops = run_routes(rn.backbone, "skip", x, out.actions)
    torch.testing.assert_close(out.logits, logits)
    assert torch.equal(out.flops, flops)


def test_static_times_interpolate_between_the_front_points_around_a_value():
    front = [
        {"accuracy": 0.5, "flops_ratio": 0.2},
        {"accuracy": 0.9, "flops_ratio": 1.0},
        {"accuracy": 0.8, "flops_ratio": 0.5},
    ]
    lo, hi, w = _bracket(front, "accuracy", 0.85)
    assert (lo["accuracy"], hi["accuracy"]) == (0.8, 0.9) and w == pytest.approx(0.5)
    assert _bracket(front, "accuracy", 0.95)[0]["accuracy"] == 0.9  # above the front: the full network
    assert _bracket(front, "flops_ratio", 0.1)[2] == 0.0


def test_the_table_and_the_command_line():
    row = {
        "env_id": "DynSkip-v0 resnet110",
        "backbone": "resnet110",
        "batch": 64,
        "threads": 1,
        "flops_ratio": 0.5,
        "routed_vs_full": 1.5,
        "goal_routed_vs_full": 1.6,
        "raw_vs_full": 1.7,
        "router_overhead": 0.1,
        "routes_vs_static_same_flops": 0.9,
        "routed_vs_static_same_accuracy": None,
        "full_vs_plain": 1.2,
    }
    lines = format_routed({"setups": {row["env_id"]: {"router": "RandomGates"}}, "rows": [row]})
    assert lines[-1].startswith(
        "| DynSkip-v0 (resnet110) | random | 64 | 1 | 0.500 | 1.50 (1.60) | n/a | 1.70 | +10 % | 0.90 | n/a | 1.20 |"
    )  # a row written before the static network of the routes' FLOPs was timed against the full one
    row["static_same_flops_vs_full"] = 1.8
    lines = format_routed({"setups": {row["env_id"]: {"router": "RandomGates"}}, "rows": [row]})
    assert "| 1.50 (1.60) | 1.80 | 1.70 |" in lines[-1]
    assert lines[0].count("|") == lines[1].count("|") == lines[-1].count("|")
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--routed-only", "--routers", "demo_out", "--router-steps", "5000", "--table-out", "t.md"]
    )
    assert (args.routed_only, args.routers, args.router_steps, args.table_out) == (True, "demo_out", 5000, "t.md")


def test_a_routers_folder_without_a_setups_router_names_the_demo_command_that_writes_it(tmp_path):
    from dyncnn_gym.benchmark.routed_table import load_router

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "DynChannel-v1-PPO.zip").write_bytes(b"")  # what the demo writes by default
    with pytest.raises(FileNotFoundError, match=r"no DynChannel-v0-PPO.zip under .*dyncnn-gym demo --env DynChannel-v0"):
        load_router(tmp_path, "DynChannel-v0")


def test_the_routed_table_measures_the_demos_v1_routers_by_default_and_refuses_unknown_setups():
    from dyncnn_gym.benchmark.demo import DEMO_IDS
    from dyncnn_gym.benchmark.perf import run_perf
    from dyncnn_gym.benchmark.routed_table import DEFAULT_ROUTED_SETUPS, ROUTED_SETUPS

    assert set(DEMO_IDS) <= set(DEFAULT_ROUTED_SETUPS) <= set(ROUTED_SETUPS)
    assert {"DynExit-v1 depth", "DynSkip-v0 resnet110", "DynBlockDrop-v0 resnet110", "DynExit-v0 resnet110"} <= set(
        DEFAULT_ROUTED_SETUPS
    )
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--setup", "DynChannel-v0", "--setup", "DynExit-v1 depth"])
    assert args.setup == ["DynChannel-v0", "DynExit-v1 depth"]
    with pytest.raises(ValueError, match=r"setups=\['DynExit-v0'\]: choose one or more of \['DynChannel-v1'"):
        run_perf(routed_only=True, setups=["DynExit-v0"], progress=False, verbose=False)


def test_an_early_exit_setup_times_the_routed_model_its_routes_and_the_truncated_networks():
    """``exit_timed_setup`` on an untrained ResNet with exits and the random router: the replay
    without the router gives the routed logits; each static network is the truncated network of one
    exit; one row of ``time_setup`` per batch and thread count (its figures are not checked here:
    speed is measured by the command, not by tests)."""
    from dyncnn_gym.benchmark.routed_table import exit_timed_setup, time_setup
    from dyncnn_gym.envs.exit_core import ExitCore

    data = load_test_data("user12")
    net = make_net("resnet8-exits", "user12")
    core = ExitCore(1, dataset=data, backbone=net, stages="depth", split="test")
    gates = RandomGates(core.observation_space.shape[0])
    st = exit_timed_setup(gates, core, "DynExit-v0", trained=False)
    x = torch.as_tensor(data.test.images[:12])
    with torch.no_grad():
        exits, ratio = st.route(x)
        logits, flops = st.replay(x, exits)
        routed = dyncnn_gym.export(gates, core=core).route(x)
        assert torch.equal(logits, routed.logits) and torch.equal(exits, routed.exits)
        np.testing.assert_allclose(flops / core.full, ratio.numpy())
        assert [p["key"] for p in st.front] == [(k,) for k in range(net.num_exits)]
        for k in range(net.num_exits):
            torch.testing.assert_close(st.static(x, (k,)), net.exit_forward(x, k))
    assert len(set(exits.tolist())) > 1, "the random router should exit images at different exits"
    rows = time_setup(st, "DynExit-v0 tiny", torch.device("cpu"), repeats=1, threads=[1], batches=[1, 6], singles=2)
    assert [(r["batch"], r["threads"]) for r in rows] == [(1, 1), (6, 1)]
    assert all(r["routed_vs_static_same_accuracy"] is None and set(r["static_routes"]) == {"flops"} for r in rows)
    assert all(r["ranges"]["routed_vs_static_same_accuracy"] is None for r in rows)
    rows = time_setup(st, "DynExit-v0 tiny", torch.device("cpu"), repeats=3, threads=[1], batches=[6], singles=2)
    lo, hi = rows[0]["ranges"]["routed_vs_full"]
    assert 0 < lo <= rows[0]["routed_vs_full"] <= hi, "the median of the repeats lies within their range"


def test_the_deep_blockdrop_example_trains_evaluates_and_times_a_one_look_router():
    """``examples/deep_blockdrop.py`` on a tiny skip backbone: the router it reports is the model it
    trained, evaluated as ``evaluate`` does; the static front is measured on the test split; the
    table has a row per batch with finite ratios."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("deep_blockdrop", REPO_ROOT / "examples" / "deep_blockdrop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = load_test_data("digits")
    net = make_net("resnet14", "digits")
    out = example.run(net, data, steps=256, select_on=100, repeats=1, threads=[1], progress=False)
    res = dyncnn_gym.evaluate(out["model"], "DynBlockDrop-v1", dataset=data, backbone=net)
    assert out["evaluation"]["accuracy"] == res["accuracy"] and out["evaluation"]["flops_ratio"] == res["flops_ratio"]
    front = out["static_front"]
    assert front and [q["flops_ratio"] for q in front] == sorted(q["flops_ratio"] for q in front)
    assert all(0 <= q["accuracy"] <= 1 and len(q["actions"]) == len(front[0]["actions"]) for q in front)
    rows = out["table"]["rows"]
    assert sorted(r["batch"] for r in rows) == [1, 64, 256]
    assert all(r["static_same_flops_vs_full"] > 0 for r in rows)
    lines = format_routed(out["table"])
    assert len(lines) == 2 + 3 and all("DynBlockDrop-v1" in line for line in lines[2:])
