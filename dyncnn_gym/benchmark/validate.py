"""``dyncnn-gym validate RESULTS_DIR``: re-derive every figure of a bench run and compare.

What is checked, in order (each check is one line of the report):

1. **pins**: the suite is known, its version and pins are those the run recorded, and the
   backbone checkpoints found here have the pinned sha256 (:func:`~dyncnn_gym.benchmark.suites.check_pins`);
2. **baselines**: the static routes, random routes (per seed), the confidence cascade and the
   oracle, recomputed on the test split;
3. **policies**: every saved policy is read back (its sha256 checked; SB3 zips through the safe
   loader, reference agents' files weights-only) and evaluated again exactly as the bench did
   (:func:`~dyncnn_gym.benchmark.protocol.evaluate`, one torch thread, dial included): accuracy,
   FLOPs ratio, action rates, the dial's bias, and the matched random routes;
4. **scores**: every per-(task, seed) score, recomputed from the checked points;
5. **aggregates**: the IQM, mean and probability of improvement with their bootstrap intervals,
   the performance profiles and the ranks, recomputed with the run's seeded bootstrap;
6. **files**: ``leaderboard.md`` and ``summary.json`` regenerated from the checked results, equal
   to the files in ``RESULTS_DIR``.

The command exits with code 0 when every check passes and 2 (the command line's error code) when any
fails, after one line per failed check. Re-evaluation is deterministic, so the default tolerance is 0: every figure must match exactly.
``tolerance`` (accuracy points; FLOPs ratios and rates are compared at ``tolerance / 100``) allows
for another machine's floating-point differences. A learned point without a saved policy, or
saved in the format of an agent not trusted here, cannot be re-evaluated and fails the check:
files in an agent's own format are read only by the registered reference agents' ``load_policy``
or by that of an agent named with ``agents`` (``--agent SPEC`` on the command line); nothing named
in the results file is imported.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bench import AGENTS, RESULTS_FORMAT


@dataclass(frozen=True)
class PointCheck:
    """One saved learned point to evaluate again (a job of :func:`check_point`)."""

    out_dir: str
    task: str
    env_id: str
    env_kwargs: dict
    point_key: str
    agent: str
    trusted: str | None
    point: dict


class Report:
    """The checks made and their outcome."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = float(tolerance)
        self.lines: list[str] = []
        self.failures = 0
        self.checked = 0

    def close(self, a: Any, b: Any, scale: float = 1.0) -> bool:
        """Whether recorded ``a`` and recomputed ``b`` agree (numbers within the tolerance, recursively)."""
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(self.close(a[k], b[k], scale) for k in a)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(self.close(x, y, scale) for x, y in zip(a, b))
        if a is None and isinstance(b, float) and np.isnan(b):  # JSON stores NaN (a rate of no image) as null
            return True
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
            return a == b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if not (np.isfinite(a) and np.isfinite(b)):
                return (np.isnan(a) and np.isnan(b)) or a == b
            return abs(float(a) - float(b)) <= self.tolerance / scale
        return a == b

    def check(self, what: str, recorded: Any, recomputed: Any, scale: float = 100.0) -> bool:
        """Compare and log one figure (``scale``: figure units per accuracy point... e.g. 100 for fractions)."""
        self.checked += 1
        ok = self.close(recorded, recomputed, scale)
        if not ok:
            self.failures += 1
            self.lines.append(f"MISMATCH {what}: recorded {_short(recorded)}, recomputed {_short(recomputed)}")
        return ok

    def fail(self, what: str, why: str) -> None:
        self.checked += 1
        self.failures += 1
        self.lines.append(f"FAILED {what}: {why}")

    def ok(self, what: str) -> None:
        self.lines.append(f"ok {what}")


def _short(x: Any) -> str:
    text = json.dumps(x, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def check_point(job: PointCheck) -> dict[str, Any]:
    """Evaluate one saved policy again as the bench did; returns the recomputed figures (or an ``error``)."""
    from .bench import TaskBaselines, _test_core, resolve_agent
    from .protocol import evaluate
    from .runner import job_context
    from .saved import load_policy

    p = job.point
    rec = p.get("policy")
    if not rec:
        return {"error": "no saved policy (the agent returned a policy with no saved form)"}
    if rec.get("format") == "agent" and job.trusted is None:
        return {"error": f"the policy is in agent {job.agent!r}'s own format; name it with --agent to trust its load_policy"}
    try:
        fn = resolve_agent(job.trusted) if job.trusted else None
        policy = load_policy(Path(job.out_dir), rec, fn)
    except (OSError, ValueError, TypeError) as err:
        return {"error": f"cannot load {rec.get('file')!r}: {err}"}
    key = job.point_key
    core = _test_core(job.env_id, job.env_kwargs)
    with job_context(int(p.get("seed", 0))):
        kwargs = {**job.env_kwargs, **({"flops_target": p[key]} if key == "flops_target" else {})}
        res = evaluate(policy, job.env_id, per_image=False, **kwargs)
        rnd = TaskBaselines(core).matched(res, seed=int(p.get("seed", 0)))
    return {
        "accuracy": res["accuracy"],
        "flops_ratio": res["flops_ratio"],
        "action_rates": res["action_rates"],
        "dialed": res.get("dialed"),
        "random_matched": rnd,
    }


def _trusted(spec: str, extra: list[str]) -> str | None:
    """The spec whose ``load_policy`` may read agent-format files of ``spec``: the registered reference
    agents, or one named on the command line."""
    if spec in extra:
        return spec
    if spec in AGENTS and AGENTS[spec].startswith("dyncnn_gym.agents."):
        return spec
    return None


def validate(
    results_dir: str | Path,
    *,
    agents: list[str] | tuple[str, ...] = (),
    tolerance: float = 0.0,
    ray: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Report:
    """Re-derive and compare every figure of the bench run in ``results_dir`` (see the module docstring).

    Returns the :class:`Report`; ``report.failures == 0`` when everything matches.
    """
    from ..envs.routing import make_core
    from .bench import (
        TaskBaselines,
        _baseline_entry,
        _jsonable_results,
        _seed_summary,
        format_leaderboard,
        summarize_results,
        summary_json,
    )
    from .runner import run_jobs
    from .suites import SUITES, check_pins

    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance!r} must be a number of accuracy points >= 0")
    from .runner import check_executor

    check_executor(ray, workers)
    out = Path(results_dir)
    f = out / "results.json"
    if not f.is_file():
        raise FileNotFoundError(f"no results.json in {str(out)!r}; give the --out folder of a dyncnn-gym bench run")
    try:
        results = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(f)!r} is not JSON ({err})") from None
    if results.get("format") != RESULTS_FORMAT:
        raise ValueError(
            f"{str(f)!r} is in results format {results.get('format')!r}; validate reads format {RESULTS_FORMAT}"
            " (re-run the bench with this version)"
        )
    log = print if progress else (lambda *a, **k: None)
    report = Report(tolerance)
    start = time.perf_counter()

    # 1. pins
    suite = results["suite"]
    known = SUITES.get(suite["name"])
    if known is None:
        report.fail("suite", f"{suite['name']!r} is not a suite of this version; choose one of {sorted(SUITES)}")
        return report
    if (known.version, known.backbone_sha256) != (suite["version"], suite["backbone_sha256"]):
        report.fail("suite", f"{suite['name']!r} here is v{known.version} with other pins than the run's v{suite['version']}")
        return report
    try:
        report.check("pins: the backbone checkpoints found here", suite["checked"], check_pins(known), 1.0)
    except ValueError as err:
        report.fail("pins", str(err))
        return report
    report.ok(f"suite {suite['name']} v{suite['version']}: pins")

    seeds = results["seeds"]
    tasks = {t.name: t for t in known.tasks}
    jobs: list[PointCheck] = []
    where: list[tuple[str, str, int]] = []
    for tname, entry in results["tasks"].items():
        task = tasks.get(tname)
        if task is None:
            report.fail(f"task {tname}", f"not a task of {suite['name']}")
            continue
        # 2. baselines
        log(f"[validate] {tname}: baselines")
        core = make_core(task.env_id, 1, split="test", **task.env_kwargs)
        base = TaskBaselines(core, known.static_selection)
        static, static_points = base.static()
        report.check(f"{tname}: static routes", entry["static"], _jsonable_results(static))
        for name, a in entry["agents"].items():
            if a["kind"] in ("learned", "teacher"):
                for i, p in enumerate(a["points"]):
                    jobs.append(
                        PointCheck(
                            str(out),
                            tname,
                            entry["env_id"],
                            entry["env_kwargs"],
                            entry["point_key"],
                            name,
                            _trusted(name, list(agents)),
                            p,
                        )
                    )
                    where.append((tname, name, i))
                continue
            fresh = _baseline_entry(name, task, base, static_points, list(a.get("seeds", seeds)), lambda *x, **k: None)
            report.check(f"{tname}: baseline {name}", a["points"], _jsonable_results(fresh["points"]))

    # 3. policies
    log(f"[validate] {len(jobs)} saved policies to evaluate again")
    outputs = run_jobs(
        check_point,
        jobs,
        ray_address=ray,
        workers=workers,
        log=log,
        describe=lambda j: f"{j.agent} on {j.task}, seed {j.point.get('seed')}",
    )
    for (tname, name, i), o in zip(where, outputs):
        p = results["tasks"][tname]["agents"][name]["points"][i]
        what = f"{tname}: {name}, {results['tasks'][tname]['point_key']}={p.get(results['tasks'][tname]['point_key'])}, seed {p.get('seed')}"
        if "error" in o:
            report.fail(what, o["error"])
            continue
        good = all(
            [
                report.check(f"{what}: accuracy", p["accuracy"], o["accuracy"]),
                report.check(f"{what}: FLOPs ratio", p["flops_ratio"], o["flops_ratio"]),
                report.check(f"{what}: action rates", p["action_rates"], o["action_rates"]),
                report.check(f"{what}: dial", p.get("dialed"), _jsonable_results(o["dialed"]), 1.0),
                report.check(f"{what}: matched random routes", p["random_matched"], o["random_matched"]),
            ]
        )
        if good:
            report.ok(what)

    # 4. scores
    for tname, entry in results["tasks"].items():
        task = tasks.get(tname)
        if task is None:
            continue
        front = entry["static"]["front"]
        for name, a in entry["agents"].items():
            fresh = _jsonable_results(_seed_summary(a["points"], front, a["seeds"], task.score_range))
            report.check(f"{tname}: {name}: per-seed scores and summary", a["summary"], fresh)

    # 5. aggregates and 6. files
    again = json.loads(json.dumps(results))
    summarize_results(again)
    again = _jsonable_results(again)
    report.check("aggregates (IQM, mean, P(> static), 95 % CIs)", results["aggregate"], again["aggregate"])
    report.check("performance profiles", results["performance_profile"], again["performance_profile"])
    report.check("leaderboard rows and ranks", results["leaderboard"], again["leaderboard"])
    board = (out / "leaderboard.md").read_text() if (out / "leaderboard.md").is_file() else None
    if board != format_leaderboard(again):
        report.fail("leaderboard.md", "the file differs from the leaderboard the checked results give" if board else "missing")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    report.check("summary.json", summary, json.loads(json.dumps(summary_json(again))), 1.0)
    report.lines.append(
        f"{report.checked} checks, {report.failures} failed ({time.perf_counter() - start:.0f} s; tolerance {tolerance} points)"
    )
    return report


def add_arguments(p) -> None:
    from .runner import add_executor_arguments

    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the --out folder of a dyncnn-gym bench run")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="SPEC",
        help="trust this agent's load_policy to read its saved policies (repeatable; the registered reference agents"
        " are trusted; SB3 zips need nothing)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="allowed difference in accuracy points (FLOPs ratios and rates: tolerance / 100); 0 = exact",
    )
    add_executor_arguments(p, "saved policy's evaluation")
    p.add_argument("--quiet", action="store_true", help="only the summary line and the failures")


def run_from_args(args) -> int:
    report = validate(
        args.results_dir,
        agents=args.agent,
        tolerance=args.tolerance,
        ray=args.ray,
        workers=args.workers,
        progress=not args.quiet,
    )
    for line in report.lines:
        if not (args.quiet and line.startswith("ok ")):
            print(line)
    if report.failures:
        first = next(line for line in report.lines if line.startswith(("MISMATCH", "FAILED")))
        print(
            f"dyncnn-gym validate: error: {report.failures} of {report.checked} checks failed in {args.results_dir};"
            f" the first: {first}",
            file=sys.stderr,
        )
        return 2
    print(f"dyncnn-gym validate: all {report.checked} checks passed")
    return 0
