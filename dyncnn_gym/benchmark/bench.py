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
* the returned ``policy`` is anything :func:`~dyncnn_gym.benchmark.protocol.evaluate` accepts (an
  SB3 model, a torch module, or a callable ``obs_batch -> actions``).

The bench then evaluates the policy deterministically on the **whole test split**. The registered
``ppo``, ``a2c`` and ``dqn`` agents follow the same contract (SB3 on the native VecEnv,
``gamma=1``), and so do the reference agents ``rnp``, ``skipnet`` and ``blockdrop`` (``bench_agent``
of :mod:`dyncnn_gym.agents`, installed with the package from the repository's ``agents/`` folder;
backbone frozen, as suites pin it). A user's own agent in a file is ``"path/to/file.py:function"``
(a relative path is taken from the current directory). An agent that
raises ``NotImplementedError`` for a task is listed as not supporting it. ``static`` (every uniform and greedy / exhaustive static route), ``random`` (random
routes at one action distribution per sweep point), ``cascade`` (the confidence cascades of
:func:`~dyncnn_gym.benchmark.baselines.cascade_front`: escalate where the probe is unsure, a
hand-made adaptive router) and ``oracle`` (label-aware; an **upper bound**, not a policy) are
computed directly from the baselines.

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
range, in accuracy **points** (positive = better than static; static scores 0). The range leaves
out the extremes, where every method collapses to the full network or to chance.

**Partial coverage.** A sweep rarely spans the whole range. Beyond an algorithm's cheapest (or
dearest) point its front continues along the best *mixture* of that end point with one static
route at lower (or higher) FLOPs: routing each image with the algorithm's policy with probability
``p`` and with the static route otherwise attains exactly the chord between the two points, with
no further training, so the extension is attainable and uses only points that were measured.
Inside the range its points cover, an algorithm is judged by its own front alone (a policy below
static is penalised there). Where not even a mixture reaches (below the cheapest static route) the
difference counts as 0. ``results.json`` reports the covered FLOPs and ``mixed`` (which side was
extended); the leaderboard marks such scores with ``*``. (Rejected alternatives: counting uncovered
FLOPs as equal to static gives a one-point sweep such as the label-aware oracle a score of 0;
extending flat credits accuracy at FLOPs never run.)

**Matched random.** Every learned point also gets ``random_matched``: routes drawn independently
per image from that point's own per-decision action rates, evaluated on the same test split. Its
gap to the policy is what the policy gains from choosing *per image* rather than only *how often*.

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
#: registered trainable agents (name -> "module:function"); the reference agents are the installed
#: :mod:`dyncnn_gym.agents` (the repository's ``agents/`` folder)
AGENTS: dict[str, str] = {
    "ppo": "dyncnn_gym.benchmark.bench:ppo_agent",
    "a2c": "dyncnn_gym.benchmark.bench:a2c_agent",
    "dqn": "dyncnn_gym.benchmark.bench:dqn_agent",
    "rnp": "dyncnn_gym.agents.rnp_dqn:bench_agent",
    "skipnet": "dyncnn_gym.agents.skipnet_hrl:bench_agent",
    "blockdrop": "dyncnn_gym.agents.blockdrop_pg:bench_agent",
    "dagger": "dyncnn_gym.agents.dagger_teacher:bench_agent",
}
#: baselines computed by the bench itself
BASELINES = ("static", "random", "cascade", "oracle")

AgentFn = Callable[..., Any]


# -- agents -------------------------------------------------------------------------------------
def _import_file(path: Path, spec: str):
    import hashlib
    import importlib.util
    import sys

    name = f"dyncnn_gym_agent_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise ValueError(f"agent={spec!r}: {path} is not an importable Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    try:
        loader.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def resolve_agent(spec: str) -> AgentFn | str:
    """A registered name, a baseline name (returned as is), ``"module:function"`` (imported) or
    ``"path/to/file.py:function"`` (loaded from the file; a relative path is taken from the current
    directory)."""
    if spec in BASELINES:
        return spec
    target = AGENTS.get(spec, spec)
    if ":" not in target:
        raise ValueError(
            f"agent={spec!r} is not a registered agent; choose one of {sorted(AGENTS) + list(BASELINES)}"
            " or give 'module:function' or 'path/to/file.py:function'"
        )
    module, _, attr = target.rpartition(":")
    try:
        if module.endswith(".py"):
            path = Path(module)
            if not path.is_file():
                raise ValueError(
                    f"agent={spec!r}: no file {str(path.resolve())!r}; give the path of a Python file, absolute or"
                    f" relative to the current directory, or a registered agent: {sorted(AGENTS)}"
                )
            fn = getattr(_import_file(path, spec), attr)
        else:
            fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"agent={spec!r}: cannot import {attr!r} from {module!r} ({err})") from err
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
    model = A2C(
        "MlpPolicy",
        env_fn(_sb3_n_envs(step_budget, 8, 16)),
        n_steps=8,
        gamma=1.0,
        gae_lambda=0.95,
        learning_rate=7e-4,
        ent_coef=0.01,
        policy_kwargs={"net_arch": [64, 64]},
        seed=seed,
        verbose=0,
        device="cpu",
    )
    return model.learn(step_budget)


def dqn_agent(env_fn, task: Task, seed: int, step_budget: int):
    """SB3 DQN, undiscounted (``gamma=1``), 16 envs, epsilon decayed over 30% of the budget."""
    import torch
    from stable_baselines3 import DQN

    torch.manual_seed(seed)
    model = DQN(
        "MlpPolicy",
        env_fn(16),
        gamma=1.0,
        learning_rate=5e-4,
        buffer_size=max(1000, min(100_000, step_budget)),
        learning_starts=min(1000, step_budget // 10),
        batch_size=128,
        train_freq=1,
        gradient_steps=2,
        target_update_interval=max(100, step_budget // 100),
        exploration_fraction=0.3,
        exploration_final_eps=0.02,
        policy_kwargs={"net_arch": [64, 64]},
        seed=seed,
        verbose=0,
        device="cpu",
    )
    return model.learn(step_budget)


# -- fronts and the scalar ----------------------------------------------------------------------
def _xy(front: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    from .baselines import pareto

    f = pareto(front)
    return np.array([p["flops_ratio"] for p in f], dtype=float), np.array([p["accuracy"] for p in f], dtype=float)


def _mixed_extension(x: np.ndarray, end: tuple[float, float], xs: np.ndarray, ys: np.ndarray, right: bool) -> np.ndarray:
    """Best accuracy at FLOPs ``x`` attainable by routing each image at random with the algorithm's
    end point ``end`` or one static route beyond it (on the side of ``x``): the highest chord from
    ``end`` to a static point at or past ``x``. NaN where no static point lies past ``x``."""
    ex, ey = end
    out = np.full(len(x), np.nan)
    for i, xi in enumerate(x):
        beyond = xs >= xi if right else xs <= xi
        best = -np.inf
        for sx, sy in zip(xs[beyond], ys[beyond]):
            best = max(best, ey if sx == ex else ey + (sy - ey) * (xi - ex) / (sx - ex))
        if np.isfinite(best):
            out[i] = best
    return out


def algorithm_front(points: list[dict[str, Any]], static_front: list[dict[str, Any]], grid: np.ndarray) -> np.ndarray:
    """An algorithm's front evaluated on ``grid`` (FLOPs ratios): its own Pareto points joined
    linearly inside the range they cover; beyond its cheapest / dearest point, the best random
    per-image mixture of that end point with a static route (see the module docstring)."""
    xa, ya = _xy(points)
    xs, ys = _xy(static_front)
    out = np.interp(grid, xa, ya)
    lo_side, hi_side = grid < xa[0], grid > xa[-1]
    if lo_side.any():
        out[lo_side] = _mixed_extension(grid[lo_side], (xa[0], ya[0]), xs, ys, right=False)
    if hi_side.any():
        out[hi_side] = _mixed_extension(grid[hi_side], (xa[-1], ya[-1]), xs, ys, right=True)
    return out


def front_area(
    points: list[dict[str, Any]], static_front: list[dict[str, Any]], flops_range: tuple[float, float] = FLOPS_RANGE
) -> dict[str, Any]:
    """The scalar summary (see the module docstring) of ``points`` against ``static_front``.

    Both are reduced to their Pareto fronts and joined linearly; beyond the FLOPs an algorithm's
    points cover, its front continues along random per-image mixtures of its end point with a
    static route (:func:`algorithm_front`). Where neither it nor such a mixture reaches (below the
    cheapest static route) the difference counts as 0. Returns ``score`` (accuracy points),
    ``mixed`` (``below`` / ``above``: whether the front was extended by mixing to reach ``lo`` /
    ``hi``) and ``static_extended`` (whether the static front itself had to be extended flat).
    """
    lo, hi = flops_range
    xa, _ = _xy(points)
    xs, ys = _xy(static_front)
    spent = [float(p["flops_ratio"]) for p in points]  # coverage counts every measured point, dominated or not
    grid = np.unique(np.concatenate([np.linspace(lo, hi, 241), xa, xs]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    diff = algorithm_front(points, static_front, grid) - np.interp(grid, xs, ys)
    diff = np.where(np.isfinite(diff), diff, 0.0)
    area = float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(grid))) if len(grid) > 1 else 0.0
    return {
        "score": 100.0 * area / (hi - lo),
        "flops_range": [lo, hi],
        "covered": [min(spent), max(spent)],
        "mixed": {"below": bool(min(spent) > lo), "above": bool(max(spent) < hi)},
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
class TaskBaselines:
    """The bench's baselines on one task's test-split core: static routes, the label-aware oracle,
    the confidence cascade and random routes, per-decision (:mod:`~dyncnn_gym.benchmark.baselines`)
    or, on ``DynExit-v0``, their early-exit counterparts
    (:mod:`~dyncnn_gym.benchmark.exit_baselines`: static exits, the confidence-threshold cascade
    with its threshold swept, random exits, the first correct exit)."""

    def __init__(self, core) -> None:
        self.core = core
        self.exits = getattr(core, "mode", "") == "exit"

    def static(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(static, points)``: the static baselines (with their Pareto ``front``) and the static points."""
        if self.exits:
            from .exit_baselines import static_exits

            st = static_exits(self.core)
            static = {"exits": st["points"], "front": st["front"], "full": st["full"]}
            return static, [{k: r[k] for k in ("accuracy", "flops_ratio", "exit")} for r in st["points"]]
        from .baselines import static_baselines

        static = static_baselines(self.core)
        pool = static.get("exhaustive") or (static["uniform"] + static.get("greedy", []))
        return static, [{"accuracy": r["accuracy"], "flops_ratio": r["flops_ratio"], "actions": r["actions"]} for r in pool]

    def oracle(self, static_points: list[dict[str, Any]]) -> dict[str, Any]:
        if self.exits:
            from .exit_baselines import exit_oracle

            return exit_oracle(self.core)
        from .baselines import oracle

        return oracle(self.core, np.array([r["actions"] for r in static_points], dtype=np.int64))

    def cascade(self) -> list[dict[str, Any]]:
        if self.exits:
            from .exit_baselines import threshold_cascade

            return [
                {k: c[k] for k in ("accuracy", "flops_ratio", "threshold")} for c in threshold_cascade(self.core)["points"]
            ]
        from .baselines import cascade_front

        keep = ("accuracy", "flops_ratio", "cheap", "rich", "threshold")
        return [{k: c[k] for k in keep} for c in cascade_front(self.core)["points"]]

    def random(self, levels: np.ndarray, seed: int) -> list[dict[str, Any]]:
        """Random routes at one action distribution per level (exits: continue with probability ``level``)."""
        core = self.core
        if self.exits:
            from .exit_baselines import random_exits

            out = []
            for lv in levels:
                reach = float(lv) ** np.arange(core.S)  # share of images reaching each exit
                exit_rates = reach * np.append(np.full(core.S - 1, 1.0 - float(lv)), 1.0)
                out.append({**random_exits(core, exit_rates, seed=seed), "level": float(lv)})
            return out
        from .baselines import random_policy_eval

        return [
            {**random_policy_eval(core, _random_rates(core.A, core.T, lv), seed=seed), "level": float(lv)} for lv in levels
        ]

    def matched(self, res: dict[str, Any], seed: int) -> dict[str, Any]:
        """Random routes (exits) at the per-decision action rates (exit rates) of an evaluation ``res``."""
        if self.exits:
            from .exit_baselines import random_exits

            return random_exits(self.core, res["exit_rates"], seed=seed)
        from .baselines import random_policy_eval

        return random_policy_eval(self.core, res["action_rates"], seed=seed)


def action_labels(core) -> list[str]:
    """Names of the actions of ``core``'s env (for plots)."""
    if core.mode == "channel":
        return [f"{a + 1} groups" for a in range(core.A)]
    if core.mode == "route":
        return ["skip"] + [f"{a}/{core.A - 1} width" for a in range(1, core.A)]
    if core.mode == "exit":
        return ["exit", "continue"]
    return ["skip", "execute"]


def _make_env_fn(task: Task, weight: float, seed: int):
    from ..sb3 import make_vec_env

    def env_fn(n_envs: int = 16):
        split = {} if task.train_split == "train" else {"split": task.train_split}
        return make_vec_env(task.env_id, n_envs=int(n_envs), seed=seed, compute_weight=weight, **split, **task.env_kwargs)

    env_fn.compute_weight = weight
    return env_fn


def _random_rates(A: int, T: int, level: float) -> list[list[float]]:
    from math import comb

    p = [comb(A - 1, a) * level**a * (1 - level) ** (A - 1 - a) for a in range(A)]
    return [p] * T


def _point(res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = (
        "accuracy",
        "flops_ratio",
        "action_rates",
        "mean_action",
        "exit_rates",
        "by_difficulty",
        "difficulty_flops_spearman",
    )
    return {**extra, **{k: res[k] for k in keep if k in res}}


def _seed_summary(points: list[dict[str, Any]], static_front: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Score each seed's sweep separately; the summary holds their mean (``score``), standard
    deviation (``score_std``, 0 for one seed) and the per-seed scores."""
    per = [front_area([p for p in points if p.get("seed", seeds[0]) == sd], static_front) for sd in seeds]
    out = dict(per[0])
    scores = [q["score"] for q in per]
    out.update(
        score=float(np.mean(scores)),
        score_std=float(np.std(scores)),
        per_seed=scores,
        seeds=list(seeds),
        mixed={k: any(q["mixed"][k] for q in per) for k in ("below", "above")},
    )
    return out


def _load_previous(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The task entries of an earlier ``results.json`` in ``out`` for the same suite version, the
    same pin of every task it holds, and the same FLOPs range (for ``merge``); raises
    ``ValueError`` naming what differs. (Pins of tasks the earlier run did not hold may differ:
    a task pinned since then is merged in by a later run.)"""
    f = out / "results.json"
    if not f.exists():
        return {}
    old = json.loads(f.read_text())
    for key in ("name", "version"):
        if old["suite"].get(key) != results["suite"][key]:
            raise ValueError(
                f"merge: {f} was written for suite {key}={old['suite'].get(key)!r}, this run has {results['suite'][key]!r};"
                " use another --out or drop --merge"
            )
    old_pins, pins = old["suite"].get("backbone_sha256", {}), results["suite"]["backbone_sha256"]
    for task in old.get("tasks", {}):
        if old_pins.get(task) != pins.get(task):
            raise ValueError(
                f"merge: {f} was written with task {task!r} pinned to {old_pins.get(task)!r}, this run pins it to"
                f" {pins.get(task)!r}; use another --out or drop --merge"
            )
    if list(old.get("flops_range", [])) != list(results["flops_range"]):
        raise ValueError(f"merge: {f} used flops_range={old.get('flops_range')}, this run {results['flops_range']}")
    return old.get("tasks", {})


def run_bench(
    suite: str | Suite,
    agents: list[str],
    out_dir: str | Path,
    seed: int | list[int] = 0,
    progress: bool = True,
    timesteps: int | None = None,
    merge: bool = False,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``agents`` on every task and compute weight of ``suite``; write the reports.

    Args:
        suite: a suite name or :class:`Suite`.
        agents: agent specs (see the module docstring); ``static`` is always computed as the reference.
        out_dir: where ``results.json``, ``leaderboard.md`` and the PNG plots go.
        seed: a seed or a list of seeds; every learned agent runs its whole sweep once per seed
            (scores: mean and standard deviation over seeds).
        progress: print a line per step of the bench.
        timesteps: override every task's step budget (a positive integer).
        merge: keep the other agents of an earlier ``results.json`` in ``out_dir`` (same suite
            version, pins and FLOPs range, checked) and add or replace only ``agents``; the
            baselines are recomputed.
        tasks: run only these tasks of the suite (names; ``None``: all). With ``merge``, the
            other tasks of an earlier ``results.json`` are kept.

    Returns:
        The results written to ``results.json``.
    """
    from ..envs.core import _shared_data
    from ..envs.routing import make_core
    from ..fileio import check_writable_dir, write_json, write_text
    from ..recipes import check_timesteps
    from . import plots
    from .demo import _jsonable
    from .protocol import evaluate

    seeds = [int(x) for x in (seed if isinstance(seed, (list, tuple)) else [seed])]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seed={seed!r}: give one seed or a list of distinct seeds, integers >= 0")
    suite = get_suite(suite)
    if tasks is not None:
        names = [t.name for t in suite.tasks]
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in suite {suite.name!r}; its tasks are {names}")
    if timesteps is not None:
        suite = suite.with_budget(check_timesteps(timesteps))
    resolved = {spec: resolve_agent(spec) for spec in agents}  # fail fast on unknown agents
    out = check_writable_dir(out_dir, "out")  # before any training: a run is not lost to an unwritable --out
    log = print if progress else (lambda *a, **k: None)
    start = time.perf_counter()
    pins = check_pins(suite)
    results: dict[str, Any] = {
        "suite": {"name": suite.name, "version": suite.version, "backbone_sha256": suite.backbone_sha256, "checked": pins},
        "seed": seeds[0],
        "seeds": seeds,
        "flops_range": list(FLOPS_RANGE),
        "agents": list(agents),
        "tasks": {},
    }
    previous = _load_previous(out, _jsonable(results)) if merge else {}
    for task in suite.tasks:
        if tasks is not None and task.name not in tasks:
            if task.name in previous:  # merged: an earlier run's task is kept as it was
                results["tasks"][task.name] = previous[task.name]
            continue
        core = make_core(task.env_id, 1, split="test", **task.env_kwargs)
        base = TaskBaselines(core)
        log(f"[bench] {suite.name} / {task.name}: static baselines")
        static, static_points = base.static()
        entry: dict[str, Any] = {
            "env_id": task.env_id,
            "env_kwargs": task.env_kwargs,
            "step_budget": task.step_budget,
            "compute_weights": list(task.compute_weights),
            "static": static,
            "agents": {},
        }
        for name, old in previous.get(task.name, {}).get("agents", {}).items():
            if name not in resolved and old.get("kind") in ("learned", "teacher"):
                for p in old["points"]:  # results from before matched random existed
                    if "random_matched" not in p and "action_rates" in p:
                        p["random_matched"] = base.matched(p, seed=int(p.get("seed", 0)))
                entry["agents"][name] = {
                    **old,
                    "summary": _seed_summary(old["points"], static["front"], old.get("seeds", [results["seed"]])),
                    "merged": True,
                }
        images: dict[str, Any] = {}
        for spec, fn in resolved.items():
            t0 = time.perf_counter()
            a: dict[str, Any] = {"kind": "teacher" if getattr(fn, "uses_teacher", False) else "learned"}
            if fn == "static":
                a.update(kind="baseline", points=static_points)
            elif fn == "oracle":
                orc = base.oracle(static_points)
                a.update(
                    kind="upper_bound",
                    upper_bound=True,
                    note=orc["note"],
                    points=[{"accuracy": orc["accuracy"], "flops_ratio": orc["flops_ratio"]}],
                )
            elif fn == "cascade":
                a.update(kind="baseline", points=base.cascade())
            elif fn == "random":
                a.update(kind="baseline", points=base.random(np.linspace(0.25, 0.75, len(task.compute_weights)), seeds[0]))
            else:
                pts = []
                for sd in seeds:
                    for w in task.compute_weights:
                        log(f"[bench] {task.name}: agent {spec}, seed {sd}, compute_weight={w}, {task.step_budget} steps")
                        try:
                            policy = fn(_make_env_fn(task, w, sd), task, sd, task.step_budget)
                        except NotImplementedError as err:  # e.g. a block-dropping agent on a channel task
                            log(f"[bench] {task.name}: agent {spec} does not support this task ({err})")
                            pts = None
                            break
                        res = evaluate(policy, task.env_id, per_image=True, **task.env_kwargs)
                        img = res["images"]
                        rnd = base.matched(res, seed=sd)
                        pts.append(
                            _point(
                                res,
                                compute_weight=w,
                                seed=sd,
                                routes=route_analysis(img["actions"], img["label"]),
                                random_matched=rnd,
                            )
                        )
                        if sd == seeds[0]:
                            images.setdefault(spec, []).append(img)
                    if pts is None:
                        break
                if pts is None:
                    entry.setdefault("unsupported", {})[spec] = "the agent raised NotImplementedError for this task"
                    continue
                a.update(points=pts, algorithm=spec, seeds=seeds)
            a["summary"] = _seed_summary(a["points"], static["front"], a.get("seeds", seeds[:1]))
            a["seconds"] = round(time.perf_counter() - t0, 1)
            entry["agents"][spec] = a
        if "static" not in entry["agents"]:
            entry["agents"]["static"] = {
                "kind": "baseline",
                "points": static_points,
                "summary": front_area(static_points, static["front"]),
            }
        results["tasks"][task.name] = entry
        _task_plots(out, task, core, entry, images, plots, _shared_data(task.env_kwargs.get("dataset", "shapes")))
    results["leaderboard"] = leaderboard_rows(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", _jsonable(results), indent=2)
    write_text(out / "leaderboard.md", format_leaderboard(results))
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
    labels = action_labels(core)
    diff = {}
    for spec, imgs in images.items():
        p = entry["agents"][spec]["points"][mid]
        name = f"{task.name}_{spec.replace(':', '.').replace('/', '.')}"
        plots.plot_usage(out / f"{name}_usage.png", f"{spec}, weight {p['compute_weight']}", p["action_rates"], labels)
        if "by_difficulty" in p:
            diff[spec] = p["by_difficulty"]
        raw = data.test.images * data.std[None, :, None, None] + data.mean[None, :, None, None]
        plots.plot_image_grid(
            out / f"{name}_images.png",
            f"{spec}: test images by compute",
            raw,
            imgs[mid]["flops"] / core.full,
            imgs[mid]["correct"],
        )
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
        rows.append(
            {
                "agent": n,
                "kind": kind,
                "score": float(np.mean([s["score"] for s in per.values()])),
                "tasks_run": len(per),
                "per_task": {t: s["score"] for t, s in per.items()},
                "per_task_std": {t: s.get("score_std", 0.0) for t, s in per.items()},
                "seeds": max(len(s.get("per_seed", [0])) for s in per.values()),
                "vs_random_matched": _vs_random(results, n),
                "mixed": {t: s["mixed"] for t, s in per.items()},
            }
        )
    rows.sort(key=lambda r: -r["score"])
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _vs_random(results: dict[str, Any], name: str) -> float | None:
    """Mean accuracy gain (points) of an agent's points over their matched random routes."""
    gaps = [
        100 * (p["accuracy"] - p["random_matched"]["accuracy"])
        for e in results["tasks"].values()
        if name in e["agents"]
        for p in e["agents"][name]["points"]
        if "random_matched" in p
    ]
    return float(np.mean(gaps)) if gaps else None


def format_leaderboard(results: dict[str, Any]) -> str:
    """The Markdown leaderboard (ranked by the mean score over the suite's tasks)."""
    tasks = list(results["tasks"])
    lo, hi = results["flops_range"]
    lines = [
        f"Suite `{results['suite']['name']}` v{results['suite']['version']}, seeds {results.get('seeds', [results['seed']])}. Score: mean accuracy gain"
        f" (points) over the static front for FLOPs ratios in [{lo}, {hi}]; `*` = the agent's points do not cover the whole range; beyond them its front is the best random per-image mixture of its end point with a static route (see `dyncnn_gym.benchmark.bench`).",
        "",
        "`vs random` = mean accuracy gain (points) of the agent's points over random routes with the same per-decision action rates.",
        "",
    ]
    header = [
        "| rank | agent | score | " + " | ".join(tasks) + " | vs random | seeds |",
        "|---:|---|---:|" + "---:|" * len(tasks) + "---:|---:|",
    ]
    rows = [r for r in results["leaderboard"] if r["kind"] != "teacher"]
    taught = [r for r in results["leaderboard"] if r["kind"] == "teacher"]
    lines += header + _leaderboard_lines(rows, tasks)
    if taught:
        lines += [
            "",
            "Agents that learn from the env's teacher (`teacher()`: the outcome of every action, which knows the"
            " label; supervision that pure-RL agents do not get), ranked apart:",
            "",
            *header,
            *_leaderboard_lines(taught, tasks),
        ]
    return "\n".join(lines) + "\n"


def _leaderboard_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    lines = []
    for rank, r in enumerate(rows, 1):
        mark = {"baseline": " (baseline)", "upper_bound": " (upper bound, knows the label)"}.get(r["kind"], "")
        cells = []
        for t in tasks:
            if t not in r["per_task"]:
                cells.append("n/a")
                continue
            ext = r["mixed"][t]
            std = r["per_task_std"][t]
            cells.append(
                f"{r['per_task'][t]:+.2f}{f' ± {std:.2f}' if r['seeds'] > 1 else ''}{'*' if ext['below'] or ext['above'] else ''}"
            )
        name = f"**{r['agent']}**" if r["kind"] in ("learned", "teacher") else r["agent"]
        vr = "" if r["vs_random_matched"] is None else f"{r['vs_random_matched']:+.2f}"
        seeds = r["seeds"] if r["kind"] in ("learned", "teacher") else ""
        part = f" ({r['tasks_run']} of {len(tasks)} tasks)" if r.get("tasks_run", len(tasks)) < len(tasks) else ""
        lines.append(f"| {rank} | {name}{mark}{part} | {r['score']:+.2f} | " + " | ".join(cells) + f" | {vr} | {seeds} |")
    return lines


def add_arguments(p) -> None:
    from .suites import SUITES

    p.add_argument("--suite", default=None, help=f"suite name (required unless --list): {', '.join(SUITES)}")
    p.add_argument(
        "--agent",
        action="append",
        default=None,
        metavar="SPEC",
        help=f"agent (repeatable): {', '.join(list(AGENTS) + list(BASELINES))}, module:function or"
        " path/to/file.py:function (a function(env_fn, task, seed, step_budget) -> policy)",
    )
    p.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="one or more seeds; each learned agent runs its sweep once per seed (default: 0)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other agents of an earlier results.json in --out (same suite version and pins)",
    )
    p.add_argument("--timesteps", type=int, default=None, help="override every task's step budget (default: the suite's)")
    p.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this task of the suite (repeatable; with --merge the other tasks of an earlier run are kept)",
    )
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_from_args(args) -> int:
    from .suites import list_suites

    if args.list:
        print(list_suites())
        return 0
    if not args.suite or not args.agent:
        raise ValueError("--suite and at least one --agent are required (see --list for the suites)")
    run_bench(
        args.suite,
        args.agent,
        args.out,
        seed=args.seed,
        progress=not args.quiet,
        timesteps=args.timesteps,
        merge=args.merge,
        tasks=args.task,
    )
    return 0
