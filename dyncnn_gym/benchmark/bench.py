"""``dyncnn-gym bench``: rank routing algorithms on a suite (:mod:`dyncnn_gym.benchmark.suites`).

Plug-in contract
----------------
An agent is ``"module:function"`` (imported) or a registered short name (see :data:`AGENTS` and
:data:`BASELINES`). The function is called once per task and compute weight as::

    policy = function(env_fn, task, seed, step_budget)

* ``env_fn(n_envs)`` returns the task's native SB3 ``VecEnv``
  (:func:`dyncnn_gym.sb3.make_vec_env`, train split) with ``n_envs`` slots and the compute weight
  of this point of the sweep (also readable as ``env_fn.compute_weight``);
* ``task`` is the :class:`~dyncnn_gym.benchmark.suites.Task` (env id, env kwargs, budget);
* ``seed`` seeds everything the agent draws;
* ``step_budget`` is the number of env steps (decisions) the agent may train for;
* the returned ``policy`` is anything :func:`~dyncnn_gym.benchmark.evaluate.evaluate` accepts (an
  SB3 model, a torch module, or a callable ``obs_batch -> actions``).

The bench then evaluates the policy deterministically on the **whole test split**. The registered
``ppo``, ``a2c`` and ``dqn`` agents follow the same contract (SB3 on the native VecEnv,
``gamma=1``). ``static`` (every uniform and greedy / exhaustive static route), ``random`` (random
routes at one action distribution per sweep point) and ``oracle`` (label-aware; an **upper bound**,
not a policy) are computed directly from the baselines.

The scalar summary
------------------
Per algorithm and task, the points ``(flops_ratio, accuracy)`` of the compute-weight sweep give a
**front**: the Pareto-optimal points (higher accuracy, lower FLOPs), joined by **straight lines**.
Linear interpolation is used because any point on a segment is attainable: routing each image
with one of the two end policies at random attains, in expectation, exactly the convex
combination of their accuracy and FLOPs (a step function would under-credit sparse sweeps, a
convex hull would credit points no measured policy is near). The static front is built the same
way from all static routes, so both sides are treated alike.

``score = 100 / (hi - lo) * integral_lo^hi [front(x) - static_front(x)] dx`` with the fixed range
``[lo, hi] = [0.2, 0.8]`` of FLOPs ratios: the mean accuracy gain over the static front across that
range, in accuracy **points** (positive = better than static; static scores 0). Where an
algorithm's front does not reach (FLOPs below its cheapest or above its most expensive point), it
is taken to equal the static front there: no credit and no penalty for FLOPs it never ran at
(extending it flat would credit a cheap-looking accuracy it never reached). ``results.json``
reports this under ``extended`` and the leaderboard marks the score with ``*``: such a score
averages over less than the whole range. The range leaves out the extremes, where every method collapses to the full
network or to chance.

Route analysis
--------------
Per evaluated policy: the number of distinct routes (action sequences) on the test split, the
share of the most frequent ones (top 1 / top 5), and the mutual information between route id and
label in bits (plug-in estimate; ``0`` = routes ignore the class, ``log2(classes)`` = the route
determines the class), also normalised by the label entropy.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .suites import Suite, Task, check_pins, get_suite

FLOPS_RANGE = (0.2, 0.8)
#: registered trainable agents (name -> "module:function")
AGENTS: dict[str, str] = {
    "ppo": "dyncnn_gym.benchmark.bench:ppo_agent",
    "a2c": "dyncnn_gym.benchmark.bench:a2c_agent",
    "dqn": "dyncnn_gym.benchmark.bench:dqn_agent",
}
#: baselines computed by the bench itself
BASELINES = ("static", "random", "oracle")

AgentFn = Callable[..., Any]


# -- agents -------------------------------------------------------------------------------------
def resolve_agent(spec: str) -> AgentFn | str:
    """A registered name, a baseline name (returned as is), or ``"module:function"`` (imported)."""
    if spec in BASELINES:
        return spec
    target = AGENTS.get(spec, spec)
    if ":" not in target:
        raise ValueError(
            f"agent={spec!r} is not a registered agent; choose one of {sorted(AGENTS) + list(BASELINES)}"
            " or give 'module:function'"
        )
    module, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"agent={spec!r}: cannot import {attr!r} from module {module!r} ({err})") from err
    if not callable(fn):
        raise ValueError(f"agent={spec!r}: {target!r} is not callable")
    return fn


def _sb3_n_envs(step_budget: int, n_steps: int, n_envs: int = 64) -> int:
    return int(np.clip(step_budget // n_steps, 4, n_envs))


def ppo_agent(env_fn, task: Task, seed: int, step_budget: int):
    """SB3 PPO with the recipe of :mod:`dyncnn_gym.recipes` (fewer envs for tiny budgets)."""
    import torch
    from stable_baselines3 import PPO

    from ..recipes import recipe

    r = recipe(task.env_id)
    kw = dict(r["ppo"])
    n_envs = _sb3_n_envs(step_budget, kw["n_steps"], r["n_envs"])
    kw["batch_size"] = min(kw["batch_size"], kw["n_steps"] * n_envs)
    torch.manual_seed(seed)
    model = PPO("MlpPolicy", env_fn(n_envs), seed=seed, verbose=0, device="cpu", **kw)
    return model.learn(step_budget)


def a2c_agent(env_fn, task: Task, seed: int, step_budget: int):
    """SB3 A2C, undiscounted (``gamma=1``), 16 envs x 8 steps per update."""
    import torch
    from stable_baselines3 import A2C

    torch.manual_seed(seed)
    model = A2C("MlpPolicy", env_fn(_sb3_n_envs(step_budget, 8, 16)), n_steps=8, gamma=1.0, gae_lambda=0.95,
                learning_rate=7e-4, ent_coef=0.01, policy_kwargs={"net_arch": [64, 64]}, seed=seed, verbose=0, device="cpu")
    return model.learn(step_budget)


def dqn_agent(env_fn, task: Task, seed: int, step_budget: int):
    """SB3 DQN, undiscounted (``gamma=1``), 16 envs, epsilon decayed over 30% of the budget."""
    import torch
    from stable_baselines3 import DQN

    torch.manual_seed(seed)
    model = DQN("MlpPolicy", env_fn(16), gamma=1.0, learning_rate=5e-4, buffer_size=max(1000, min(100_000, step_budget)),
                learning_starts=min(1000, step_budget // 10), batch_size=128, train_freq=1, gradient_steps=2,
                target_update_interval=max(100, step_budget // 100), exploration_fraction=0.3,
                exploration_final_eps=0.02, policy_kwargs={"net_arch": [64, 64]}, seed=seed, verbose=0, device="cpu")
    return model.learn(step_budget)


# -- fronts and the scalar ----------------------------------------------------------------------
def _xy(front: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    from .baselines import pareto

    f = pareto(front)
    return np.array([p["flops_ratio"] for p in f], dtype=float), np.array([p["accuracy"] for p in f], dtype=float)


def front_area(points: list[dict[str, Any]], static_front: list[dict[str, Any]], flops_range: tuple[float, float] = FLOPS_RANGE) -> dict[str, Any]:
    """The scalar summary (see the module docstring) of ``points`` against ``static_front``.

    Both are reduced to their Pareto fronts and joined linearly; outside the FLOPs range that
    ``points`` covers the difference is 0 (the static front is extended flat at its ends). Returns ``score`` (accuracy points), ``extended`` (``below`` / ``above``: whether the
    front had to be extended to reach ``lo`` / ``hi``) and the same for the static front.
    """
    lo, hi = flops_range
    xa, ya = _xy(points)
    xs, ys = _xy(static_front)
    a, b = max(lo, float(xa[0])), min(hi, float(xa[-1]))  # outside [a, b] the difference is 0
    grid = np.unique(np.concatenate([[a, b], xa, xs]))
    grid = grid[(grid >= a) & (grid <= b)]
    diff = np.interp(grid, xa, ya) - np.interp(grid, xs, ys)
    area = float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(grid))) if len(grid) > 1 else 0.0
    return {
        "score": 100.0 * area / (hi - lo),
        "flops_range": [lo, hi],
        "extended": {"below": bool(xa[0] > lo), "above": bool(xa[-1] < hi)},
        "static_extended": {"below": bool(xs[0] > lo), "above": bool(xs[-1] < hi)},
    }


# -- route analysis -----------------------------------------------------------------------------
def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def route_mutual_information(actions: np.ndarray, labels: np.ndarray) -> float:
    """Mutual information (bits) between route id (the row of ``actions`` ``[N, T]``) and label."""
    actions = np.asarray(actions).reshape(len(labels), -1)
    _, rid = np.unique(actions, axis=0, return_inverse=True)
    _, lid = np.unique(np.asarray(labels), return_inverse=True)
    rid, lid = rid.reshape(-1), lid.reshape(-1)
    joint = np.zeros((rid.max() + 1, lid.max() + 1))
    np.add.at(joint, (rid, lid), 1)
    mi = _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint.ravel())
    return max(0.0, mi)


def route_analysis(actions: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Distinct routes, shares of the top routes, and route/label mutual information."""
    actions = np.asarray(actions).reshape(len(labels), -1)
    keys, counts = np.unique(actions, axis=0, return_counts=True)
    shares = np.sort(counts)[::-1] / len(labels)
    mi = route_mutual_information(actions, labels)
    h_y = _entropy(np.unique(labels, return_counts=True)[1])
    return {
        "distinct": int(len(keys)),
        "top1_share": float(shares[0]),
        "top5_share": float(shares[:5].sum()),
        "mutual_information_bits": mi,
        "normalized_mi": mi / h_y if h_y > 0 else 0.0,
        "label_entropy_bits": h_y,
    }


# -- the bench ----------------------------------------------------------------------------------
def _make_env_fn(task: Task, weight: float, seed: int):
    from ..sb3 import make_vec_env

    def env_fn(n_envs: int = 16):
        return make_vec_env(task.env_id, n_envs=int(n_envs), seed=seed, compute_weight=weight, **task.env_kwargs)

    env_fn.compute_weight = weight
    return env_fn


def _random_rates(A: int, T: int, level: float) -> list[list[float]]:
    from math import comb

    p = [comb(A - 1, a) * level**a * (1 - level) ** (A - 1 - a) for a in range(A)]
    return [p] * T


def _point(res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = ("accuracy", "flops_ratio", "action_rates", "mean_action", "by_difficulty", "difficulty_flops_spearman")
    return {**extra, **{k: res[k] for k in keep if k in res}}


def run_bench(
    suite: str | Suite,
    agents: list[str],
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    timesteps: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``agents`` on every task and compute weight of ``suite``; write the reports.

    Args:
        suite: a suite name or :class:`Suite`.
        agents: agent specs (see the module docstring); ``static`` is always computed as the reference.
        out_dir: where ``results.json``, ``leaderboard.md`` and the PNG plots go.
        seed: passed to every agent and env.
        progress: print a line per step of the bench.
        timesteps: override every task's step budget.

    Returns:
        The results written to ``results.json``.
    """
    from ..envs.core import RoutingCore, _shared_data
    from . import plots
    from .baselines import oracle, random_policy_eval, static_baselines
    from .demo import _jsonable
    from .protocol import evaluate, mode_of

    suite = get_suite(suite)
    if timesteps is not None:
        suite = suite.with_budget(timesteps)
    resolved = {spec: resolve_agent(spec) for spec in agents}  # fail fast on unknown agents
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    start = time.perf_counter()
    pins = check_pins(suite)
    results: dict[str, Any] = {
        "suite": {"name": suite.name, "version": suite.version, "backbone_sha256": suite.backbone_sha256, "checked": pins},
        "seed": seed,
        "flops_range": list(FLOPS_RANGE),
        "agents": list(agents),
        "tasks": {},
    }
    for task in suite.tasks:
        mode = mode_of(task.env_id)
        core = RoutingCore(mode, 1, split="test", **task.env_kwargs)
        log(f"[bench] {suite.name} / {task.name}: static baselines")
        static = static_baselines(core)
        pool = static.get("exhaustive") or (static["uniform"] + static.get("greedy", []))
        static_points = [{"accuracy": r["accuracy"], "flops_ratio": r["flops_ratio"], "actions": r["actions"]} for r in pool]
        entry: dict[str, Any] = {
            "env_id": task.env_id,
            "env_kwargs": task.env_kwargs,
            "step_budget": task.step_budget,
            "compute_weights": list(task.compute_weights),
            "static": static,
            "agents": {},
        }
        images: dict[str, Any] = {}
        for spec, fn in resolved.items():
            t0 = time.perf_counter()
            a: dict[str, Any] = {"kind": "learned"}
            if fn == "static":
                a.update(kind="baseline", points=static_points)
            elif fn == "oracle":
                orc = oracle(core, np.array([r["actions"] for r in pool], dtype=np.int64))
                a.update(kind="upper_bound", upper_bound=True, note=orc["note"],
                         points=[{"accuracy": orc["accuracy"], "flops_ratio": orc["flops_ratio"]}])
            elif fn == "random":
                levels = np.linspace(0.25, 0.75, len(task.compute_weights))
                a.update(kind="baseline", points=[
                    {**random_policy_eval(core, _random_rates(core.A, core.T, lv), seed=seed), "level": float(lv)} for lv in levels
                ])
            else:
                pts = []
                for w in task.compute_weights:
                    log(f"[bench] {task.name}: agent {spec}, compute_weight={w}, {task.step_budget} steps")
                    policy = fn(_make_env_fn(task, w, seed), task, seed, task.step_budget)
                    res = evaluate(policy, task.env_id, per_image=True, **task.env_kwargs)
                    img = res["images"]
                    pts.append(_point(res, compute_weight=w, routes=route_analysis(img["actions"], img["label"])))
                    images.setdefault(spec, []).append(img)
                a["points"] = pts
                a["algorithm"] = spec
            a["summary"] = front_area(a["points"], static["front"])
            a["seconds"] = round(time.perf_counter() - t0, 1)
            entry["agents"][spec] = a
        if "static" not in entry["agents"]:
            entry["agents"]["static"] = {"kind": "baseline", "points": static_points, "summary": front_area(static_points, static["front"])}
        results["tasks"][task.name] = entry
        _task_plots(out, task, core, entry, images, plots, _shared_data(task.env_kwargs.get("dataset", "shapes")))
    results["leaderboard"] = leaderboard_rows(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    (out / "leaderboard.md").write_text(format_leaderboard(results))
    log(format_leaderboard(results))
    log(f"[bench] wrote {out / 'results.json'}, {out / 'leaderboard.md'} and plots ({results['seconds']} s)")
    return results


def _task_plots(out: Path, task: Task, core, entry: dict[str, Any], images: dict[str, Any], plots, data) -> None:
    learned = []
    extra = {}
    for spec, a in entry["agents"].items():
        if a["kind"] == "upper_bound":
            extra[f"{spec} (knows label)"] = a["points"][0]
        elif spec != "static":
            learned += [{**p, "algorithm": spec} for p in a["points"]]
    plots.plot_fronts(out / f"{task.name}_fronts.png", f"{task.name}: fronts vs static", entry["static"], learned, extra)
    mid = len(task.compute_weights) // 2
    labels = [f"{a + 1} groups" for a in range(core.A)] if core.mode == "channel" else ["skip", "execute"]
    diff = {}
    for spec, imgs in images.items():
        p = entry["agents"][spec]["points"][mid]
        name = f"{task.name}_{spec.replace(':', '.').replace('/', '.')}"
        plots.plot_usage(out / f"{name}_usage.png", f"{spec}, weight {p['compute_weight']}", p["action_rates"], labels)
        if "by_difficulty" in p:
            diff[spec] = p["by_difficulty"]
        raw = data.test.images * data.std[None, :, None, None] + data.mean[None, :, None, None]
        plots.plot_image_grid(out / f"{name}_images.png", f"{spec}: test images by compute", raw,
                              imgs[mid]["flops"] / core.full, imgs[mid]["correct"])
    if diff:
        plots.plot_difficulty(out / f"{task.name}_difficulty.png", f"{task.name}: FLOPs vs difficulty", diff)


def leaderboard_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per agent: per-task scores, their mean, and the rank (by mean score, descending)."""
    names: list[str] = []
    for entry in results["tasks"].values():
        names += [n for n in entry["agents"] if n not in names]
    rows = []
    for n in names:
        per = {t: e["agents"][n]["summary"] for t, e in results["tasks"].items() if n in e["agents"]}
        kind = next(e["agents"][n]["kind"] for e in results["tasks"].values() if n in e["agents"])
        rows.append({
            "agent": n,
            "kind": kind,
            "score": float(np.mean([s["score"] for s in per.values()])),
            "per_task": {t: s["score"] for t, s in per.items()},
            "extended": {t: s["extended"] for t, s in per.items()},
        })
    rows.sort(key=lambda r: -r["score"])
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def format_leaderboard(results: dict[str, Any]) -> str:
    """The Markdown leaderboard (ranked by the mean score over the suite's tasks)."""
    tasks = list(results["tasks"])
    lo, hi = results["flops_range"]
    lines = [
        f"Suite `{results['suite']['name']}` v{results['suite']['version']}, seed {results['seed']}. Score: mean accuracy gain"
        f" (points) over the static front for FLOPs ratios in [{lo}, {hi}]; `*` = the front does not cover the whole range (counted as equal to static where it does not reach).",
        "",
        "| rank | agent | score | " + " | ".join(tasks) + " |",
        "|---:|---|---:|" + "---:|" * len(tasks),
    ]
    for r in results["leaderboard"]:
        mark = {"baseline": " (baseline)", "upper_bound": " (upper bound, knows the label)"}.get(r["kind"], "")
        cells = []
        for t in tasks:
            if t not in r["per_task"]:
                cells.append("")
                continue
            ext = r["extended"][t]
            cells.append(f"{r['per_task'][t]:+.2f}{'*' if ext['below'] or ext['above'] else ''}")
        name = f"**{r['agent']}**" if r["kind"] == "learned" else r["agent"]
        lines.append(f"| {r['rank']} | {name}{mark} | {r['score']:+.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p) -> None:
    from .suites import SUITES

    p.add_argument("--suite", default=None, help=f"suite name: {', '.join(SUITES)}")
    p.add_argument("--agent", action="append", default=None, metavar="SPEC",
                   help=f"agent: {', '.join(list(AGENTS) + list(BASELINES))} or module:function (repeatable)")
    p.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timesteps", type=int, default=None, help="override every task's step budget")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_from_args(args) -> int:
    from .suites import list_suites

    if args.list:
        print(list_suites())
        return 0
    if not args.suite or not args.agent:
        raise ValueError("--suite and at least one --agent are required (see --list for the suites)")
    run_bench(args.suite, args.agent, args.out, seed=args.seed, progress=not args.quiet, timesteps=args.timesteps)
    return 0
