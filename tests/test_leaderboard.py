"""The benchmark leaderboard: suites and their pins, the scalar score, route analysis, plug-in agents
(registered names, module:function, path.py:function), and tiny end-to-end runs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from dyncnn_gym.benchmark.bench import front_area, resolve_agent, route_analysis, route_mutual_information, run_bench
from dyncnn_gym.benchmark.suites import SUITES, check_pins, get_suite


def constant_agent(env_fn, task, seed, step_budget):
    """A plug-in agent: checks the env it is handed, trains nothing, always takes the largest action."""
    vec = env_fn(2)
    assert vec.num_envs == 2 and env_fn.compute_weight in task.compute_weights
    n_actions = int(vec.action_space.n)
    return lambda obs: np.full(len(obs), n_actions - 1)


def test_suites_resolve_and_unknown_names_are_named():
    assert {"cpu-v0", "cpu-v1", "cpu-v2", "cpu-v3", "paper-v0", "tiny-v0"} <= set(SUITES)
    cpu = get_suite("cpu-v0")
    assert cpu.version == 0 and len(cpu.tasks) == 2
    for t in cpu.tasks:
        assert t.step_budget == 150_000 and t.compute_weights == (0.25, 0.5, 1.0)
        assert t.env_kwargs["dataset"] == "shapes" and t.env_kwargs["obs"] == "probe"
        assert len(cpu.backbone_sha256[t.name]) == 64
    assert {t.env_kwargs["backbone"] for t in get_suite("paper-v0").tasks} == {"vgg16", "resnet110"}
    from dyncnn_gym.envs.routing import mode_of
    from dyncnn_gym.pretraining import DEFAULT_ARCH
    from dyncnn_gym.recipes import env_kwargs

    for t in get_suite("cpu-v1").tasks:  # the protocol of the learning figures (docs/results.md): the recipe's env settings
        recipe_env = env_kwargs(t.env_id)
        assert all(t.env_kwargs[k] == recipe_env[k] for k in ("reward", "loss", "obs"))
        assert t.env_kwargs["backbone"] == DEFAULT_ARCH[mode_of(t.env_id)] and t.step_budget == 150_000
    from dyncnn_gym.envs.routing import registered_kwargs

    for t in get_suite("cpu-v3").tasks:  # the -v1 protocol: registered defaults, one target of each task is the registered one
        assert t.env_id.endswith("-v1") and t.train_split == "train" and t.compute_weights == ()
        assert not {"reward", "loss", "obs", "split"} & set(t.env_kwargs), "the -v1 ids' registered defaults apply"
        assert registered_kwargs(t.env_id)["flops_target"] in t.flops_targets
        assert t.score_range == (min(t.flops_targets), max(t.flops_targets))
    v3, v4 = get_suite("cpu-v3"), get_suite("cpu-v4")  # cpu-v3's tasks against a static front chosen off train images too
    assert (v4.tasks, v4.backbone_sha256, v4.seeds) == (v3.tasks, v3.backbone_sha256, v3.seeds)
    assert v4.static_selection == "held-out"
    assert all(SUITES[n].static_selection == "train" for n in SUITES if n != "cpu-v4"), "published protocols stay"
    with pytest.raises(ValueError, match=r"static_selection='test'.*'train', 'held-out'"):
        dataclasses.replace(v4, static_selection="test")
    with pytest.raises(ValueError, match=r"nope.*cpu-v0.*tiny-v0"):
        get_suite("nope")
    with pytest.raises(ValueError, match=r"sac.*ppo"):
        resolve_agent("sac")
    with pytest.raises(ValueError, match="no_such_module"):
        resolve_agent("no_such_module:f")
    assert resolve_agent(f"{__name__}:constant_agent") is constant_agent


def test_pins_match_the_shipped_checkpoints_and_a_mismatch_raises():
    for name in ("cpu-v0", "cpu-v1", "cpu-v2", "cpu-v3", "cpu-v4"):
        found = check_pins(name)
        assert found == get_suite(name).backbone_sha256 and all(found.values())
    cpu = get_suite("cpu-v0")
    name = cpu.tasks[0].name
    bad = dataclasses.replace(cpu, backbone_sha256={**cpu.backbone_sha256, name: "0" * 64})
    with pytest.raises(ValueError, match=rf"{name}.*{cpu.backbone_sha256[name]}.*{'0' * 64}"):
        check_pins(bad)


def test_scalar_summary_on_hand_made_fronts():
    static = [
        {"flops_ratio": 0.1, "accuracy": 0.3},
        {"flops_ratio": 0.5, "accuracy": 0.7},
        {"flops_ratio": 1.0, "accuracy": 0.9},
    ]
    same = front_area(static, static)
    assert same["score"] == pytest.approx(0.0)
    assert same["mixed"] == {"below": False, "above": False}
    better = [{**p, "accuracy": p["accuracy"] + 0.02} for p in static]
    assert front_area(better, static)["score"] == pytest.approx(2.0)
    worse = [{**p, "accuracy": p["accuracy"] - 0.05} for p in static]
    assert front_area(worse, static)["score"] == pytest.approx(-5.0)
    # a single point on the (concave) static front: mixing it with static routes gives the static front
    one = front_area([{"flops_ratio": 0.5, "accuracy": 0.7}], static)
    assert one["score"] == pytest.approx(0.0, abs=1e-9) and one["mixed"] == {"below": True, "above": True}
    # a single point below static is penalised: its mixtures with static routes stay below
    assert front_area([{"flops_ratio": 0.5, "accuracy": 0.6}], static)["score"] < -1.0


def test_partial_coverage_is_extended_by_mixing_with_static_routes():
    static = [
        {"flops_ratio": 0.1, "accuracy": 0.3},
        {"flops_ratio": 0.5, "accuracy": 0.7},
        {"flops_ratio": 1.0, "accuracy": 0.9},
    ]
    # an oracle-like single cheap point (0.2, 0.95): beyond it, the best chord goes to the full network
    x = np.linspace(0.2, 0.8, 60001)
    chord = 0.95 + (0.9 - 0.95) * (x - 0.2) / (1.0 - 0.2)
    stat = np.interp(x, [0.1, 0.5, 1.0], [0.3, 0.7, 0.9])
    expected = 100 * float(np.mean(chord - stat))
    cheap = front_area([{"flops_ratio": 0.2, "accuracy": 0.95}], static)
    assert cheap["score"] == pytest.approx(expected, abs=0.01)
    assert cheap["covered"] == [0.2, 0.2] and cheap["mixed"] == {"below": False, "above": True}
    # a front 3 points above static on [0.4, 0.6] only: credited there, less than a whole-range +3
    part = front_area([{"flops_ratio": x, "accuracy": y + 0.03} for x, y in ((0.4, 0.6), (0.5, 0.7), (0.6, 0.74))], static)
    assert part["mixed"] == {"below": True, "above": True} and part["covered"] == [0.4, 0.6]
    assert 3.0 * 0.2 / 0.6 < part["score"] < 3.0


def test_route_mutual_information_on_hand_made_routes():
    labels = np.repeat(np.arange(4), 5)
    routes = np.stack([labels % 2, labels // 2], axis=1)  # a distinct route per class
    assert route_mutual_information(routes, labels) == pytest.approx(math.log2(4))
    assert route_mutual_information(np.zeros((20, 3)), labels) == pytest.approx(0.0)
    r = route_analysis(routes, labels)
    assert r["distinct"] == 4 and r["top1_share"] == pytest.approx(0.25) and r["normalized_mi"] == pytest.approx(1.0)


def test_run_bench_end_to_end_on_tiny(tmp_path):
    agents = ["static", "random", "cascade", "oracle", f"{__name__}:constant_agent", "ppo"]
    suite = get_suite("tiny-v0")
    res = run_bench("tiny-v0", agents, tmp_path, progress=False, timesteps=512, reps=200)
    saved = json.loads((tmp_path / "results.json").read_text())
    board = (tmp_path / "leaderboard.md").read_text()
    task = suite.tasks[0].name
    assert set(saved["tasks"][task]["agents"]) == set(agents)
    assert saved["tasks"][task]["agents"]["static"]["summary"]["score"] == pytest.approx(0.0)
    const = saved["tasks"][task]["agents"][f"{__name__}:constant_agent"]
    assert len(const["points"]) == len(suite.tasks[0].compute_weights)
    assert const["points"][0]["flops_ratio"] == pytest.approx(1.0)
    assert const["points"][0]["routes"]["distinct"] == 1
    assert const["points"][0]["routes"]["mutual_information_bits"] == pytest.approx(0.0)
    assert [r["rank"] for r in res["leaderboard"]] == list(range(1, len(agents) + 1))
    # every learned point carries random routes at its own action rates, and the board reports the gap
    rnd = const["points"][0]["random_matched"]
    assert 0.0 <= rnd["accuracy"] <= 1.0 and rnd["flops_ratio"] == pytest.approx(1.0)  # always-largest rates
    assert "random routes at the same per-decision action rates" in board
    for a in agents:
        assert a in board
    assert "static (baseline)" in board and "cascade (baseline)" in board and "oracle (upper bound" in board
    cascade = saved["tasks"][task]["agents"]["cascade"]
    assert cascade["kind"] == "baseline" and all(p["cheap"] < p["rich"] for p in cascade["points"])
    assert saved["tasks"][task]["agents"]["oracle"]["upper_bound"] is True
    assert set(saved["tasks"]) == {t.name for t in suite.tasks}
    assert (tmp_path / f"{task}_fronts.png").stat().st_size > 1000
    assert (tmp_path / f"{task}_ppo_usage.png").stat().st_size > 1000


def test_cli_bench_list_and_errors(capsys):
    from dyncnn_gym.cli import main

    assert main(["bench", "--list"]) == 0
    assert "cpu-v0" in capsys.readouterr().out
    assert main(["bench", "--suite", "nope", "--agent", "static", "--out", "x"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_bench_merges_agents_and_reports_seeds(tmp_path):
    run_bench("tiny-v0", ["static", f"{__name__}:constant_agent"], tmp_path, progress=False, timesteps=64, reps=200)
    res = run_bench(
        "tiny-v0",
        ["random", f"{__name__}:other_agent"],
        tmp_path,
        progress=False,
        timesteps=64,
        seed=[0, 1],
        merge=True,
        reps=200,
    )
    task = get_suite("tiny-v0").tasks[0].name
    agents = res["tasks"][task]["agents"]
    assert {f"{__name__}:constant_agent", f"{__name__}:other_agent", "random", "static"} <= set(agents)
    assert agents[f"{__name__}:constant_agent"]["merged"] is True
    other = agents[f"{__name__}:other_agent"]
    assert sorted({p["seed"] for p in other["points"]}) == [0, 1]
    assert len(other["summary"]["per_seed"]) == 2
    row = next(r for r in res["leaderboard"] if r["agent"] == f"{__name__}:other_agent")
    assert row["seeds"] == 2
    with pytest.raises(ValueError, match="distinct seeds"):
        run_bench("tiny-v0", ["static"], tmp_path, progress=False, seed=[1, 1])


def test_a_suite_scores_against_the_static_front_its_selection_names(tmp_path):
    """A suite with ``static_selection="held-out"`` records the static front that
    ``static_baselines`` chooses by default (each greedy row saying which split chose it) and says so in
    its leaderboard; a suite of train-only selection records the older format; runs of the two never merge,
    and runs written before suites recorded their selection keep their leaderboard (``validate`` reads them)."""
    from dyncnn_gym.benchmark.baselines import static_baselines
    from dyncnn_gym.benchmark.bench import TaskBaselines
    from dyncnn_gym.envs.routing import make_core

    tiny = get_suite("tiny-v0")
    held = dataclasses.replace(tiny, name="tiny-held-out", tasks=tiny.tasks[:1], static_selection="held-out")
    res = run_bench(held, ["static"], tmp_path, progress=False, timesteps=64, reps=200)
    task = tiny.tasks[0]
    static = res["tasks"][task.name]["static"]
    core = make_core(task.env_id, 1, split="test", **task.env_kwargs)
    want, _ = TaskBaselines(core, "held-out").static()
    assert want["selected_on"] == static_baselines(core)["selected_on"] == ["train"]  # digits hold no "val" split
    assert static["selected_on"] == ["train"] and {r["selected_on"] for r in static["greedy"]} == {"train"}
    assert [r["actions"] for r in static["front"]] == [r["actions"] for r in want["front"]]
    assert res["suite"]["static_selection"] == "held-out"
    with pytest.raises(ValueError, match=r"static_selection='val' is not one of \['train', 'held-out'\]"):
        TaskBaselines(core, "val")
    board = (tmp_path / "leaderboard.md").read_text()
    assert "chosen greedily on held-out images" in board
    from dyncnn_gym.benchmark.bench import format_leaderboard

    older = json.loads((tmp_path / "results.json").read_text())
    assert format_leaderboard(older) == board
    del older["suite"]["static_selection"]  # a run written before suites recorded it: its leaderboard as it was written
    assert format_leaderboard(older) == board.replace(
        " The static front: uniform routes and per-decision static routes chosen greedily on held-out images"
        " (where the data has them) and on train images, the better of both.",
        "",
    )
    train_only = dataclasses.replace(held, static_selection="train")
    with pytest.raises(ValueError, match="static_selection='held-out'.*'train'"):
        run_bench(train_only, ["random"], tmp_path, progress=False, timesteps=64, merge=True, reps=200)
    res = run_bench(train_only, ["static"], tmp_path / "train", progress=False, timesteps=64, reps=200)
    assert "selected_on" not in res["tasks"][task.name]["static"]
    assert "chosen greedily on train images" in (tmp_path / "train" / "leaderboard.md").read_text()


def test_a_merged_rerun_of_one_task_keeps_that_tasks_baselines(tmp_path):
    first, second = (t.name for t in get_suite("tiny-v0").tasks)
    run_bench(
        "tiny-v0",
        ["static", "random", "cascade", f"{__name__}:constant_agent"],
        tmp_path,
        progress=False,
        timesteps=64,
        reps=200,
    )
    res = run_bench(
        "tiny-v0", [f"{__name__}:other_agent"], tmp_path, progress=False, timesteps=64, merge=True, reps=200, tasks=[first]
    )
    for name in (first, second):
        assert {"static", "random", "cascade", f"{__name__}:constant_agent"} <= set(res["tasks"][name]["agents"]), name
    assert f"{__name__}:other_agent" in res["tasks"][first]["agents"]
    assert f"{__name__}:other_agent" not in res["tasks"][second]["agents"]


def other_agent(env_fn, task, seed, step_budget):
    """A plug-in agent taking the smallest action everywhere."""
    return lambda obs: np.zeros(len(obs), dtype=np.int64)


def skip_only_agent(env_fn, task, seed, step_budget):
    """A plug-in agent for block-skipping tasks only."""
    if task.env_id != "DynSkip-v0":
        raise NotImplementedError("skip tasks only")
    return lambda obs: np.ones(len(obs), dtype=np.int64)


def test_reference_agents_are_the_installed_dyncnn_gym_agents_and_unsupported_tasks_are_marked(tmp_path):
    from dyncnn_gym.agents import blockdrop_pg, rnp_dqn, skipnet_hrl

    for name, module in (("rnp", rnp_dqn), ("skipnet", skipnet_hrl), ("blockdrop", blockdrop_pg)):
        assert resolve_agent(name) is module.bench_agent
    res = run_bench("tiny-v0", ["static", f"{__name__}:skip_only_agent"], tmp_path, progress=False, timesteps=64, reps=200)
    channel, skip = (t.name for t in get_suite("tiny-v0").tasks)
    assert f"{__name__}:skip_only_agent" in res["tasks"][channel]["unsupported"]
    assert f"{__name__}:skip_only_agent" in res["tasks"][skip]["agents"]
    board = (tmp_path / "leaderboard.md").read_text()
    assert "(1 of 2 tasks)" in board and "n/a" in board


def test_bench_runs_early_exit_tasks_with_their_own_baselines(tmp_path):
    """A suite with a DynExit-v0 task (depth stages, a tiny backbone trained here): the exit
    baselines replace the per-decision ones, random exits are matched to each point's exit rates,
    and the teacher-using agent is ranked apart."""
    from dyncnn_gym.benchmark.suites import Suite, Task
    from dyncnn_gym.pretraining import pretrain

    exits = tmp_path / "exits.pt"
    pretrain("resnet8-exits+distill", "digits", epochs=1, progress=False, cache=False, out=exits)
    env = {"dataset": "digits", "reward": "flops", "loss": "error", "stages": "depth", "backbone": str(exits)}
    other = Task("other", "DynExit-v0", env, 64, (0.02,))
    suite = Suite("test-exits", 0, (Task("exit-depth", "DynExit-v0", env, 128, (0.02, 0.2)), other), {}, seeds=(0,))
    agents = ["static", "random", "cascade", "oracle", f"{__name__}:other_agent", "dagger"]
    res = run_bench(suite, agents, tmp_path / "out", progress=False, tasks=["exit-depth"])
    ex = res["tasks"]["exit-depth"]
    assert [p["exit"] for p in ex["static"]["exits"]] == [0, 1, 2]
    assert ex["agents"]["cascade"]["kind"] == "baseline" and "threshold" in ex["agents"]["cascade"]["points"][0]
    first_exit = ex["agents"][f"{__name__}:other_agent"]["points"][0]  # always exits at once
    assert first_exit["exit_rates"] == pytest.approx([1.0, 0.0, 0.0])
    assert first_exit["random_matched"]["exit_rates"] == pytest.approx([1.0, 0.0, 0.0])
    assert first_exit["accuracy"] == pytest.approx(ex["static"]["exits"][0]["accuracy"])
    assert ex["agents"]["dagger"]["kind"] == "teacher" and len(ex["agents"]["dagger"]["points"]) == 2
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    main, taught = board.split("learn from the env's teacher")
    assert "dagger" in taught and "dagger" not in main and "static (baseline)" in main
    assert set(res["tasks"]) == {"exit-depth"}  # --task: the other task was not run
    with pytest.raises(ValueError, match=r"tasks \['nope'\] are not in suite"):
        run_bench(suite, ["static"], tmp_path / "x", progress=False, tasks=["nope"])


def test_an_agent_in_a_file_resolves_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_agent.py").write_text("def train(env_fn, task, seed, step_budget):\n    return 'trained'\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_agent("my_agent.py:train")(None, None, 0, 0) == "trained"
    assert resolve_agent(f"{tmp_path / 'my_agent.py'}:train") is not None
    with pytest.raises(ValueError, match=r"no file '.*no/such/file\.py'.*registered agent: \['a2c'"):
        resolve_agent("no/such/file.py:f")
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        resolve_agent("my_agent.py:nope")


# -- FLOPs-target suites, jobs and the aggregation ---------------------------------------------------
def test_a_task_takes_compute_weights_or_flops_targets_and_cpu_suites_default_to_five_seeds():
    from dyncnn_gym.benchmark.suites import Task

    assert get_suite("cpu-v1").seeds == (0, 1, 2, 3, 4) and get_suite("tiny-v0").seeds == (0,)
    for t in get_suite("tiny-v1").tasks:
        assert t.env_id.endswith("-v1") and t.point_key == "flops_target" and not t.compute_weights
        assert t.score_range == (min(t.flops_targets), max(t.flops_targets))
    # the weight suites keep their compute weights and the fixed range
    assert get_suite("cpu-v1").tasks[0].compute_weights == (0.005, 0.02, 0.05, 0.1, 0.2)
    assert get_suite("cpu-v1").tasks[0].score_range == (0.2, 0.8)
    with pytest.raises(ValueError, match="compute_weights or as flops_targets"):
        Task("t", "DynSkip-v1", {}, 10, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="compute_weights or as flops_targets"):
        Task("t", "DynSkip-v1", {}, 10)
    with pytest.raises(ValueError, match=r"flops_targets=\(1.5,\)"):
        Task("t", "DynSkip-v1", {}, 10, flops_targets=(1.5,))
    with pytest.raises(ValueError, match="'flops_target'"):
        Task("t", "DynSkip-v1", {"flops_target": 0.5}, 10, flops_targets=(0.5,))


def test_random_routes_at_a_target_spend_the_target_in_expectation():
    from conftest import load_test_data

    from dyncnn_gym.benchmark.bench import _random_rates, expected_flops_ratio, random_at_target
    from dyncnn_gym.envs.routing import make_core

    for env_id in ("DynChannel-v1", "DynSkip-v1"):
        core = make_core(env_id, 1, dataset=load_test_data("digits"), backbone="resnet8", split="test")
        rng = np.random.default_rng(0)
        rates = _random_rates(core.A, core.T, 0.3)
        routes = np.stack([rng.choice(core.A, size=3000, p=p) for p in rates], axis=1)
        measured = np.mean([core.table.path_flops(r) for r in routes]) / core.full
        assert expected_flops_ratio(core, rates) == pytest.approx(measured, abs=0.01)
        point = random_at_target(core, 0.6, seed=3)
        assert point["flops_target"] == 0.6 and point["seed"] == 3
        assert expected_flops_ratio(core, _random_rates(core.A, core.T, point["level"])) == pytest.approx(0.6, abs=1e-6)


def test_a_job_gives_the_same_result_whatever_ran_before_it_in_the_process():
    """What a Ray worker needs: a job depends on its own seed only (probes and scales are fitted
    before the job seeds the generators, one torch thread)."""
    import torch

    from dyncnn_gym.benchmark.bench import Job, bench_job

    tiny = get_suite("tiny-v1").with_budget(64)
    channel, skip = tiny.tasks
    first = bench_job(Job("rnp", skip, 0.5, 1))
    torch.manual_seed(123)
    np.random.seed(7)
    bench_job(Job("ppo", channel, 0.4, 0))  # another job in between, another global state
    again = bench_job(Job("rnp", skip, 0.5, 1))
    assert first["point"] == {
        **again["point"],
        "train_seconds": first["point"]["train_seconds"],
        "eval_seconds": first["point"]["eval_seconds"],
    }
    assert first["policy"]["bytes"] == again["policy"]["bytes"]
    assert torch.get_num_threads() >= 1


def test_rliable_aggregates_are_seeded_and_match_the_plain_statistics():
    from rliable import metrics

    from dyncnn_gym.benchmark.aggregate import aggregate_scores, performance_profiles

    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(1.0, 1.0, (5, 2)), "b": -np.abs(rng.normal(1.0, 1.0, (5, 2)))}
    agg = aggregate_scores(scores, np.zeros((5, 2)), reps=300)
    assert agg == aggregate_scores(scores, np.zeros((5, 2)), reps=300)  # seeded bootstrap
    assert agg["a"]["iqm"] == pytest.approx(metrics.aggregate_iqm(scores["a"]))
    assert agg["a"]["mean"] == pytest.approx(scores["a"].mean())
    assert agg["b"]["p_improve"] == 0.0 and agg["b"]["p_improve_ci"] == [0.0, 0.0]
    assert agg["a"]["p_improve"] == pytest.approx((scores["a"] > 0).mean())
    prof = performance_profiles(scores, np.array([-10.0, 0.0, 10.0]))
    assert prof["a"][0] == 1.0 and prof["a"][2] == 0.0 and prof["b"][1] == 0.0
    with pytest.raises(ValueError, match="reps=0"):
        aggregate_scores(scores, np.zeros((5, 2)), reps=0)


def test_bench_refuses_bad_executor_and_aggregation_arguments_before_training(tmp_path):
    import importlib.util

    with pytest.raises(ValueError, match=r"workers=2 sets the CPUs of a local Ray"):
        run_bench("tiny-v0", ["ppo"], tmp_path, progress=False, workers=2)
    with pytest.raises(ValueError, match=r"workers=0 must be a positive number"):
        run_bench("tiny-v0", ["ppo"], tmp_path, progress=False, ray="local", workers=0)
    with pytest.raises(ValueError, match=r"reps=0 must be a positive number"):
        run_bench("tiny-v0", ["ppo"], tmp_path, progress=False, reps=0)
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(ImportError, match=r"--ray needs Ray"):
            run_bench("tiny-v0", ["ppo"], tmp_path, progress=False, ray="local")
    assert not (tmp_path / "results.json").exists()
