"""A leaderboard you can cite: a bench run on FLOPs targets records its policies, versions and
hardware, aggregates with rliable, and ``dyncnn-gym validate`` re-derives every figure from the
saved files, failing (exit code 1) on any change."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dyncnn_gym.benchmark.bench import run_bench
from dyncnn_gym.benchmark.suites import get_suite
from dyncnn_gym.benchmark.validate import validate
from dyncnn_gym.cli import main

AGENTS = ["ppo", "rnp", "static", "random", "cascade", "oracle", "test_validate:unsaved_agent"]


def unsaved_agent(env_fn, task, seed, step_budget):
    """A plug-in agent whose policy (a plain callable) has no saved form."""
    return lambda obs: np.ones(len(obs), dtype=np.int64)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny bench of tiny-v1 (FLOPs targets), two seeds."""
    out = tmp_path_factory.mktemp("bench")
    res = run_bench("tiny-v1", AGENTS, out, seed=[0, 1], progress=False, timesteps=64, reps=200, command="test")
    return out, res


def test_a_target_suite_run_records_points_at_its_targets_policies_and_provenance(run):
    out, res = run
    suite = get_suite("tiny-v1")
    saved = json.loads((out / "results.json").read_text())
    assert saved == res and saved["format"] == 2 and saved["seeds"] == [0, 1]
    for task in suite.tasks:
        entry = saved["tasks"][task.name]
        assert entry["point_key"] == "flops_target" and entry["flops_range"] == list(task.score_range)
        ppo = entry["agents"]["ppo"]
        assert sorted((p["seed"], p["flops_target"]) for p in ppo["points"]) == sorted(
            (sd, t) for sd in (0, 1) for t in task.flops_targets
        )
        for p in ppo["points"]:
            assert p["dialed"]["target"] == p["flops_target"]  # evaluated dialed to its target on held-out images
            assert p["policy"]["format"] == "sb3" and (out / p["policy"]["file"]).stat().st_size > 1000
        assert all(p["policy"]["format"] == "agent" for p in entry["agents"]["rnp"]["points"])
        assert all(p["policy"] is None for p in entry["agents"]["test_validate:unsaved_agent"]["points"])
        random = entry["agents"]["random"]["points"]  # random routes at each target, per seed
        assert sorted((p["seed"], p["flops_target"]) for p in random) == sorted((sd, t) for sd in (0, 1) for t in task.flops_targets)
        for p in random:
            assert abs(p["flops_ratio"] - p["flops_target"]) < 0.05
        assert len(entry["agents"]["ppo"]["summary"]["per_seed"]) == 2
    prov = saved["provenance"]
    assert prov["command"] == "test" and prov["threads_per_job"] == 1 and prov["executor"]["kind"] == "serial"
    assert prov["versions"]["torch"] and prov["versions"]["stable_baselines3"] and prov["versions"]["gymnasium"]
    assert prov["host"]["cores"] >= 1 and prov["host"]["cpu"] and saved["seconds"] > 0
    assert all(e["agents"]["ppo"]["provenance"] == prov for e in saved["tasks"].values())


def test_the_leaderboard_ranks_by_iqm_with_bootstrap_intervals(run):
    out, res = run
    agg = res["aggregate"]
    assert agg["static"]["iqm"] == 0.0 and agg["static"]["iqm_ci"] == [0.0, 0.0] and agg["static"]["p_improve"] == 0.5
    for name, a in agg.items():
        assert a["iqm_ci"][0] <= a["iqm"] <= a["iqm_ci"][1] and 0.0 <= a["p_improve"] <= 1.0
        assert a["runs"] == 2
    iqms = [r["iqm"] for r in res["leaderboard"]]
    assert iqms == sorted(iqms, reverse=True)
    board = (out / "leaderboard.md").read_text()
    assert "IQM [95 % CI]" in board and "P(> static)" in board and "Command: `test`" in board
    assert "random routes at the same per-decision action rates" in board
    summary = json.loads((out / "summary.json").read_text())
    assert [r["agent"] for r in summary["leaderboard"]] == [r["agent"] for r in res["leaderboard"]]
    assert summary["versions"] == res["provenance"]["versions"]
    for name in ("tiny-v1_iqm.png", "tiny-v1_profiles.png"):
        assert (out / name).stat().st_size > 1000
    profiles = res["performance_profile"]
    assert len(profiles["taus"]) == len(profiles["profiles"]["ppo"]) and profiles["profiles"]["static"][0] == 1.0


def test_validate_passes_on_an_untouched_run_and_names_what_it_cannot_check(run, tmp_path):
    out, _ = run
    report = validate(out, progress=False, agents=["test_validate:unsaved_agent"])
    failed = [line for line in report.lines if not line.startswith(("ok", f"{report.checked} checks"))]
    # the plain callable has no saved policy: each of its points fails, and nothing else does
    assert failed and all("unsaved_agent" in line and "no saved policy" in line for line in failed)
    assert report.failures == len(failed) == 2 * 2 * 2  # 2 tasks x 2 targets x 2 seeds
    # without that agent the run validates completely, figure by figure
    clean = tmp_path / "clean"
    shutil.copytree(out, clean)
    res = json.loads((clean / "results.json").read_text())
    for e in res["tasks"].values():
        del e["agents"]["test_validate:unsaved_agent"]
    from dyncnn_gym.benchmark.bench import format_leaderboard, summarize_results, summary_json
    from dyncnn_gym.fileio import write_json, write_text

    summarize_results(res)
    res = json.loads(json.dumps(res))
    write_json(clean / "results.json", res, indent=2)
    write_json(clean / "summary.json", summary_json(res), indent=2)
    write_text(clean / "leaderboard.md", format_leaderboard(res))
    assert main(["validate", str(clean), "--quiet"]) == 0


@pytest.mark.parametrize("tamper", ["accuracy", "policy", "score", "board"])
def test_validate_fails_with_exit_code_1_on_any_changed_figure_or_file(run, tmp_path, tamper, capsys):
    out, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    res = json.loads((bad / "results.json").read_text())
    task = next(iter(res["tasks"]))
    point = res["tasks"][task]["agents"]["ppo"]["points"][0]
    if tamper == "accuracy":
        point["accuracy"] += 0.0005  # one image in 2000
    elif tamper == "score":
        res["tasks"][task]["agents"]["rnp"]["summary"]["per_seed"][1] += 0.01
    elif tamper == "policy":  # another run's policy file in its place
        other = res["tasks"][task]["agents"]["ppo"]["points"][1]["policy"]["file"]
        shutil.copy(bad / other, bad / point["policy"]["file"])
    else:
        (bad / "leaderboard.md").write_text((bad / "leaderboard.md").read_text().replace("+", "-", 1))
    (bad / "results.json").write_text(json.dumps(res))
    assert main(["validate", str(bad), "--agent", "test_validate:unsaved_agent"]) == 1
    text = capsys.readouterr().out
    expected = {"accuracy": "MISMATCH", "score": "per-seed scores", "policy": "sha256", "board": "leaderboard.md"}[tamper]
    assert expected in text and "checks failed" in text


def test_validate_refuses_what_is_not_a_bench_run(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"format": 1}))
    assert main(["validate", str(tmp_path)]) == 2
    assert "format" in capsys.readouterr().err
