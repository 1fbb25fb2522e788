"""A leaderboard you can cite: a bench run records its policies, versions and hardware, aggregates
with rliable, and ``dyncnn-gym validate`` re-derives every figure from the saved files, failing
(exit code 2, one line per failed check) on any change.

One tiny suite (one DynChannel-v1 task on digits, one FLOPs target, two seeds, 64 training steps)
keeps every bench and validation here to seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dyncnn_gym.benchmark.bench import format_leaderboard, run_bench, summarize_results, summary_json
from dyncnn_gym.benchmark.suites import SUITES, Suite, Task, get_suite
from dyncnn_gym.benchmark.validate import validate
from dyncnn_gym.cli import main
from dyncnn_gym.fileio import write_json, write_text

AGENTS = ["ppo", "rnp", "static", "random", "cascade", "oracle", "test_validate:unsaved_agent"]
SUITE = "valid-test-v0"


def unsaved_agent(env_fn, task, seed, step_budget):
    """A plug-in agent whose policy (a plain callable) has no saved form."""
    return lambda obs: np.ones(len(obs), dtype=np.int64)


def tiny_target_suite() -> Suite:
    """tiny-v1's DynChannel task at one FLOPs target, scored over [0.3, 0.8], two seeds."""
    task = get_suite("tiny-v1").tasks[0]
    one = Task(task.name, task.env_id, task.env_kwargs, 64, flops_targets=(0.5,), flops_range=(0.3, 0.8))
    return Suite(SUITE, 0, (one,), {one.name: None}, seeds=(0, 1))


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The tiny suite registered by name, as validate looks suites up by name."""
    SUITES[SUITE] = tiny_target_suite()
    yield
    del SUITES[SUITE]


@pytest.fixture(scope="module")
def run(registered, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_bench(SUITE, AGENTS, out, progress=False, reps=200, command="test")
    return out, res


def without_unsaved(src, dst):
    """A copy of the run in ``dst`` without the agent whose policies have no saved form."""
    shutil.copytree(src, dst)
    res = json.loads((dst / "results.json").read_text())
    for e in res["tasks"].values():
        del e["agents"]["test_validate:unsaved_agent"]
    summarize_results(res)
    res = json.loads(json.dumps(res))
    write_json(dst / "results.json", res, indent=2)
    write_json(dst / "summary.json", summary_json(res), indent=2)
    write_text(dst / "leaderboard.md", format_leaderboard(res))
    return dst


def test_a_run_records_points_at_its_targets_policies_and_provenance(run):
    out, res = run
    task = tiny_target_suite().tasks[0]
    saved = json.loads((out / "results.json").read_text())
    assert saved == res and saved["format"] == 2 and saved["seeds"] == [0, 1]  # the suite's default seeds
    entry = saved["tasks"][task.name]
    assert entry["point_key"] == "flops_target" and entry["flops_range"] == [0.3, 0.8]
    ppo = entry["agents"]["ppo"]
    assert sorted((p["seed"], p["flops_target"]) for p in ppo["points"]) == [(0, 0.5), (1, 0.5)]
    for p in ppo["points"]:
        assert p["dialed"]["target"] == 0.5  # evaluated dialed to its target on held-out images
        assert p["policy"]["format"] == "sb3" and (out / p["policy"]["file"]).stat().st_size > 1000
    assert all(p["policy"]["format"] == "agent" for p in entry["agents"]["rnp"]["points"])
    assert all(p["policy"] is None for p in entry["agents"]["test_validate:unsaved_agent"]["points"])
    random = entry["agents"]["random"]["points"]  # random routes at the target, per seed
    assert sorted(p["seed"] for p in random) == [0, 1] and all(abs(p["flops_ratio"] - 0.5) < 0.05 for p in random)
    assert len(ppo["summary"]["per_seed"]) == 2
    prov = saved["provenance"]
    assert prov["command"] == "test" and prov["threads_per_job"] == 1 and prov["executor"]["kind"] == "serial"
    assert prov["versions"]["torch"] and prov["versions"]["stable_baselines3"] and prov["versions"]["gymnasium"]
    assert prov["versions"]["rliable"] and prov["versions"]["dyncnn_gym"]
    assert prov["host"]["cores"] >= 1 and prov["host"]["cpu"] and saved["seconds"] > 0
    assert ppo["provenance"] == prov and all(p["host"] == prov["host"] for p in ppo["points"])


def test_the_leaderboard_ranks_by_iqm_with_bootstrap_intervals(run):
    out, res = run
    agg = res["aggregate"]
    assert agg["static"]["iqm"] == 0.0 and agg["static"]["iqm_ci"] == [0.0, 0.0] and agg["static"]["p_improve"] == 0.5
    for a in agg.values():
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
    for name in (f"{SUITE}_iqm.png", f"{SUITE}_profiles.png"):
        assert (out / name).stat().st_size > 1000
    profiles = res["performance_profile"]
    assert len(profiles["taus"]) == len(profiles["profiles"]["ppo"]) and profiles["profiles"]["static"][0] == 1.0


def test_validate_passes_on_an_untouched_run_and_fails_what_it_cannot_check(run, tmp_path):
    out, _ = run
    report = validate(out, progress=False, agents=["test_validate:unsaved_agent"])
    failed = [line for line in report.lines if line.startswith(("MISMATCH", "FAILED"))]
    # the plain callable has no saved policy: each of its points fails, and nothing else does
    assert failed and all("unsaved_agent" in line and "no saved policy" in line for line in failed)
    assert report.failures == len(failed) == 2  # one target x two seeds
    clean = without_unsaved(out, tmp_path / "clean")
    assert main(["validate", str(clean), "--quiet"]) == 0


def test_validate_exits_2_naming_every_changed_figure_and_file(run, tmp_path, capsys):
    out, _ = run
    bad = without_unsaved(out, tmp_path / "bad")
    res = json.loads((bad / "results.json").read_text())
    entry = next(iter(res["tasks"].values()))
    ppo, rnp = entry["agents"]["ppo"]["points"], entry["agents"]["rnp"]
    ppo[0]["accuracy"] += 0.0005  # a reported figure changed by less than one image in the split
    rnp["summary"]["per_seed"][1] += 0.01  # a score
    shutil.copy(bad / ppo[0]["policy"]["file"], bad / ppo[1]["policy"]["file"])  # another run's policy in its place
    (bad / "results.json").write_text(json.dumps(res))
    (bad / "leaderboard.md").write_text((bad / "leaderboard.md").read_text().replace("+", "-", 1))
    assert main(["validate", str(bad), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "accuracy" in captured.out  # the changed figure
    assert "per-seed scores" in captured.out  # the changed score
    assert "sha256" in captured.out  # the swapped policy file
    assert "FAILED leaderboard.md" in captured.out  # the edited board
    assert "checks failed" in captured.err and "error:" in captured.err


def test_validate_refuses_what_is_not_a_bench_run(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"format": 1}))
    assert main(["validate", str(tmp_path)]) == 2
    assert "format" in capsys.readouterr().err


def test_a_rate_no_image_reached_is_null_in_json_and_matches_its_recomputed_nan():
    from dyncnn_gym.benchmark.validate import Report

    report = Report(tolerance=0.0)
    rates = [[0.8, 0.2], [float("nan"), float("nan")]]
    recorded = json.loads(json.dumps(rates).replace("NaN", "null"))  # what results.json holds
    assert report.check("action rates", recorded, rates)
    assert not report.check("action rates", [[0.8, 0.2], [None, None]], [[0.8, 0.2], [0.5, 0.5]])
    assert not report.check("action rates", [[0.8, 0.2], [0.5, 0.5]], [[0.8, 0.2], [None, None]])
