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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .suites import FLOPS_RANGE, STATIC_SELECTIONS, Suite, Task, check_pins, check_static_selection, get_suite

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
    with its threshold swept, random exits, the first correct exit). ``static_selection``: the
    suite's (:attr:`~dyncnn_gym.benchmark.suites.Suite.static_selection`), where the greedy static
    routes are chosen."""

    def __init__(self, core, static_selection: str = "train") -> None:
        self.core = core
        self.exits = getattr(core, "mode", "") == "exit"
        self.static_selection = check_static_selection(static_selection)

    def static(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(static, points)``: the static baselines (with their Pareto ``front``) and the static points."""
        if self.exits:
            from .exit_baselines import static_exits

            st = static_exits(self.core)
            static = {"exits": st["points"], "front": st["front"], "full": st["full"]}
            return static, [{k: r[k] for k in ("accuracy", "flops_ratio", "exit")} for r in st["points"]]
        from .baselines import static_baselines

        if self.static_selection == "held-out":  # each greedy row says which split chose it
            static = static_baselines(self.core)
        else:  # greedy routes chosen on train images, recorded as the suites up to cpu-v3 recorded them
            static = static_baselines(self.core, select_split="train")  # (`dyncnn-gym validate` reads those runs)
            static.pop("selected_on", None)
            for row in static.get("greedy", []):
                row.pop("selected_on", None)
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

            return [{**random_exits(core, _exit_rates(core.S, float(lv)), seed=seed), "level": float(lv)} for lv in levels]
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


def point_env_kwargs(env_fn: Any) -> dict[str, float]:
    """The env arguments of the operating point an ``env_fn`` stands for: ``{"flops_target": t}`` on a
    task of FLOPs targets, else ``{"compute_weight": w}``; for agents that build their own envs."""
    target = getattr(env_fn, "flops_target", None)
    if target is not None:
        return {"flops_target": float(target)}
    return {"compute_weight": float(env_fn.compute_weight)}


def make_env_fn(task: Task, value: float, seed: int):
    """The ``env_fn`` an agent gets for one operating point (see the module docstring)."""
    from ..sb3 import make_vec_env

    point = task.point_kwargs(value)
    if task.train_split != "train":
        point = {**point, "split": task.train_split}

    def env_fn(n_envs: int = 16):
        return make_vec_env(task.env_id, n_envs=int(n_envs), seed=seed, **point, **task.env_kwargs)

    env_fn.compute_weight = point.get("compute_weight")
    env_fn.flops_target = point.get("flops_target")
    env_fn.env_kwargs = {**task.env_kwargs, **point}
    return env_fn


def _random_rates(A: int, T: int, level: float) -> list[list[float]]:
    from math import comb

    p = [comb(A - 1, a) * level**a * (1 - level) ** (A - 1 - a) for a in range(A)]
    return [p] * T


def _exit_rates(S: int, level: float) -> np.ndarray:
    """Exit rates ``[S]`` of images that continue at every exit with probability ``level``."""
    reach = level ** np.arange(S)  # share of images reaching each exit
    return reach * np.append(np.full(S - 1, 1.0 - level), 1.0)


def expected_flops_ratio(core, rates: list[list[float]]) -> float:
    """Mean FLOPs ratio of routes drawn independently per decision with ``rates`` (``[T][A]``), exactly,
    from the backbone's cost table."""
    table = core.table
    p = np.asarray(rates, dtype=np.float64)
    A = core.A
    prev = np.zeros(A)
    prev[A - 1] = 1.0  # the stem is full
    total = float(table.stem)
    for t in range(core.T):
        total += float(prev @ table.steps[t].astype(np.float64) @ p[t])
        prev = p[t]
    total += float(prev @ table.head.astype(np.float64))
    return total / core.full


def random_at_target(core, target: float, seed: int) -> dict[str, Any]:
    """Random routes whose expected FLOPs ratio is ``target``: every decision draws its action from
    the binomial rates of one level (:func:`_random_rates`; on an early-exit core, every exit is
    continued with probability ``level``), the level found by bisection on the exact expected FLOPs
    ratio (:func:`expected_flops_ratio`; the exits' own FLOPs); evaluated on the whole test split
    with ``seed``."""
    from .baselines import random_policy_eval

    exits = getattr(core, "mode", "") == "exit"

    def expected(level: float) -> float:
        if exits:  # every exit continued with probability level
            return float(_exit_rates(core.S, level) @ core.exit_flops) / core.full
        return expected_flops_ratio(core, _random_rates(core.A, core.T, level))

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if expected(mid) < target:
            lo = mid
        else:
            hi = mid
    level = (lo + hi) / 2
    if exits:
        from .exit_baselines import random_exits

        res = random_exits(core, _exit_rates(core.S, level), seed=seed)
    else:
        res = random_policy_eval(core, _random_rates(core.A, core.T, level), seed=seed)
    return {**res, "level": level, "flops_target": float(target), "seed": int(seed)}


def _point(res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = (
        "accuracy",
        "flops_ratio",
        "action_rates",
        "mean_action",
        "exit_rates",
        "by_difficulty",
        "difficulty_flops_spearman",
        "dialed",
    )
    return {**extra, **{k: res[k] for k in keep if k in res}}


def _seed_summary(
    points: list[dict[str, Any]], static_front: list[dict[str, Any]], seeds: list[int], flops_range: tuple[float, float]
) -> dict[str, Any]:
    """Score each seed's points separately (points without a ``seed`` count for every seed: a
    deterministic baseline); the summary holds their mean (``score``), standard deviation
    (``score_std``, 0 for one seed) and the per-seed scores."""
    per = [front_area([p for p in points if p.get("seed", sd) == sd], static_front, flops_range) for sd in seeds]
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
    """The task entries of an earlier ``results.json`` in ``out`` for the same suite version, static
    front selection, results format, pin of every task it holds, and FLOPs ranges (for ``merge``);
    raises ``ValueError`` naming what differs. (Pins of tasks the earlier run did not hold may
    differ: a task pinned since then is merged in by a later run.)"""
    f = out / "results.json"
    if not f.exists():
        return {}
    old = json.loads(f.read_text())
    if old.get("format") != results["format"]:
        raise ValueError(
            f"merge: {f} is in results format {old.get('format')!r}, this bench writes format {results['format']};"
            " use another --out or drop --merge"
        )
    old["suite"].setdefault("static_selection", "train")  # runs written before suites recorded it
    for key in ("name", "version", "static_selection"):
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
    for name, entry in old.get("tasks", {}).items():
        want = results["flops_ranges"].get(name)
        if want is not None and list(entry.get("flops_range", [])) != list(want):
            raise ValueError(f"merge: {f} scored task {name!r} over {entry.get('flops_range')}, this run over {want}")
    return old.get("tasks", {})


@dataclass(frozen=True)
class Job:
    """One learned agent trained and evaluated at one operating point of one task with one seed."""

    agent: str
    task: Task
    value: float
    seed: int
    keep_images: bool = False


def _describe(job: Job) -> str:
    return f"{job.agent} on {job.task.name}, {job.task.point_key}={job.value}, seed {job.seed}"


_TEST_CORES: dict[tuple[str, str], Any] = {}


def _test_core(env_id: str, env_kwargs: dict[str, Any]):
    """A one-slot test-split core (memoised per process): building it fits the env's probes and
    observation scales, which are memoised per backbone, before a job seeds its generators."""
    from ..envs.routing import make_core

    key = (env_id, repr(sorted(env_kwargs.items())))
    if key not in _TEST_CORES:
        _TEST_CORES[key] = make_core(env_id, 1, split="test", **env_kwargs)
    return _TEST_CORES[key]


def _jsonable_results(x: Any) -> Any:
    """``x`` as it reads back from ``results.json`` (NumPy values and tuples as JSON has them; NaN as None)."""
    from .demo import _jsonable

    return json.loads(json.dumps(_jsonable(x)))


def bench_job(job: Job) -> dict[str, Any]:
    """Train ``job.agent`` on one operating point and evaluate it (the unit ``run_jobs`` runs, serially
    or as a Ray task). Deterministic given the job (:func:`~dyncnn_gym.benchmark.runner.job_context`).

    Returns ``{"point", "policy", "images", "host"}`` (``policy``: the saved policy's bytes, or
    ``None`` when it has no saved form) or ``{"unsupported": reason}``.
    """
    from .protocol import evaluate
    from .provenance import host
    from .runner import job_context
    from .saved import policy_bytes

    fn = resolve_agent(job.agent)
    task = job.task
    core = _test_core(task.env_id, task.env_kwargs)
    with job_context(job.seed):
        t0 = time.perf_counter()
        try:
            policy = fn(make_env_fn(task, job.value, job.seed), task, job.seed, task.step_budget)
        except NotImplementedError as err:  # e.g. a block-dropping agent on a channel task
            return {"unsupported": str(err) or "the agent raised NotImplementedError for this task"}
        t1 = time.perf_counter()
        eval_kwargs = {**task.env_kwargs, **({"flops_target": job.value} if task.flops_targets else {})}
        res = evaluate(policy, task.env_id, per_image=True, **eval_kwargs)
        img = res["images"]
        rnd = TaskBaselines(core).matched(res, seed=job.seed)
        blob = policy_bytes(fn, policy)
        point = _point(
            res,
            **{task.point_key: job.value},
            seed=job.seed,
            routes=route_analysis(img["actions"], img["label"]),
            random_matched=rnd,
            train_seconds=round(t1 - t0, 1),
            eval_seconds=round(time.perf_counter() - t1, 1),
        )
    return {"point": point, "policy": blob, "images": img if job.keep_images else None, "host": host()}


def _worker_spec(spec: str) -> str:
    """An agent spec a worker in another directory resolves the same: a file path made absolute."""
    module, sep, attr = spec.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).resolve()}:{attr}"
    return spec


def _baseline_entry(
    name: str, task: Task, base: TaskBaselines, static_points: list[dict[str, Any]], seeds: list[int], log: Callable[..., Any]
) -> dict[str, Any]:
    """The points of a baseline computed here: ``static`` (every static route, or exit), ``oracle``,
    ``cascade`` (its front), ``random`` (on a task of FLOPs targets: random routes at each target,
    drawn with each seed; on a task of compute weights: one route distribution per weight, seed
    ``seeds[0]``)."""
    log(f"[bench] {task.name}: baseline {name}")
    if name == "static":
        return {"kind": "baseline", "points": static_points}
    if name == "oracle":
        orc = base.oracle(static_points)
        return {
            "kind": "upper_bound",
            "upper_bound": True,
            "note": orc["note"],
            "points": [{"accuracy": orc["accuracy"], "flops_ratio": orc["flops_ratio"]}],
        }
    if name == "cascade":
        return {"kind": "baseline", "points": base.cascade()}
    if task.flops_targets:
        return {"kind": "baseline", "points": [random_at_target(base.core, t, sd) for sd in seeds for t in task.flops_targets]}
    return {"kind": "baseline", "points": base.random(np.linspace(0.25, 0.75, len(task.compute_weights)), seeds[0])}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+@=" else "_" for c in name)


def run_bench(
    suite: str | Suite,
    agents: list[str],
    out_dir: str | Path,
    seed: int | list[int] | None = None,
    progress: bool = True,
    timesteps: int | None = None,
    merge: bool = False,
    ray: str | None = None,
    workers: int | None = None,
    command: str | None = None,
    reps: int | None = None,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``agents`` on every task and operating point of ``suite``; write the reports.

    Args:
        suite: a suite name or :class:`Suite`.
        agents: agent specs (see the module docstring); ``static`` is always computed as the reference.
        out_dir: where ``results.json``, ``summary.json``, ``leaderboard.md``, the saved policies
            (``policies/``) and the PNG plots go.
        seed: a seed or a list of seeds (default: the suite's, five on the CPU suites); every learned
            agent runs every operating point once per seed.
        progress: print a line per step of the bench.
        timesteps: override every task's step budget (a positive integer).
        merge: keep the other agents of an earlier ``results.json`` in ``out_dir`` (same suite
            version, pins and FLOPs ranges, checked) and add or replace only ``agents``; the
            baselines of every task this run holds (those in ``agents`` and those the earlier run
            held) are recomputed.
        ray: ``None`` (jobs run here, one after the other), ``"local"`` (a local Ray) or a Ray
            cluster address: each (agent, task, operating point, seed) job is a Ray task; the results
            equal the serial run's.
        workers: CPUs of a local Ray (default: all).
        command: the command line recorded with the results (default: this process's).
        reps: bootstrap replications of the confidence intervals (default
            :data:`~dyncnn_gym.benchmark.aggregate.REPS`).
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
    from .aggregate import REPS
    from .demo import _jsonable
    from .provenance import command_line, run_record
    from .runner import describe_executor, run_jobs
    from .saved import write_policy

    suite = get_suite(suite)
    if seed is None:
        seeds = list(suite.seeds)
    else:
        seeds = [int(x) for x in (seed if isinstance(seed, (list, tuple)) else [seed])]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seed={seed!r}: give one seed or a list of distinct seeds, integers >= 0")
    if tasks is not None:
        names = [t.name for t in suite.tasks]
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in suite {suite.name!r}; its tasks are {names}")
    if timesteps is not None:
        suite = suite.with_budget(check_timesteps(timesteps))
    if not agents:
        raise ValueError("agents=[]: name at least one agent")
    resolved = {spec: resolve_agent(spec) for spec in agents}  # fail fast on unknown agents
    from .runner import check_executor

    check_executor(ray, workers)  # before any training: bad --workers, or Ray missing
    if reps is not None and (isinstance(reps, bool) or not isinstance(reps, int) or reps < 1):
        raise ValueError(f"reps={reps!r} must be a positive number of bootstrap replications")
    out = check_writable_dir(out_dir, "out")  # before any training: a run is not lost to an unwritable --out
    log = print if progress else (lambda *a, **k: None)
    start = time.perf_counter()
    started = time.time()
    executor = describe_executor(ray, workers)
    record = run_record(command or command_line(), executor, threads=1, started=started)
    pins = check_pins(suite)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "suite": {
            "name": suite.name,
            "version": suite.version,
            "backbone_sha256": suite.backbone_sha256,
            "checked": pins,
            "static_selection": suite.static_selection,
        },
        "seed": seeds[0],
        "seeds": seeds,
        "flops_ranges": {t.name: list(t.score_range) for t in suite.tasks},
        "agents": list(agents),
        "reps": int(reps or REPS),
        "provenance": record,
        "tasks": {},
    }
    previous = _load_previous(out, _jsonable(results)) if merge else {}

    cores, statics, bases, static_points = {}, {}, {}, {}
    for task in suite.tasks:
        if tasks is not None and task.name not in tasks:
            continue
        cores[task.name] = core = make_core(task.env_id, 1, split="test", **task.env_kwargs)
        bases[task.name] = base = TaskBaselines(core, suite.static_selection)
        log(f"[bench] {suite.name} / {task.name}: static baselines")
        statics[task.name], static_points[task.name] = base.static()

    learned = [spec for spec, fn in resolved.items() if fn not in BASELINES]
    jobs = [
        Job(_worker_spec(spec), task, float(v), sd, keep_images=(sd == seeds[0] and i == len(task.points) // 2))
        for spec in learned
        for task in suite.tasks
        if task.name in cores
        for sd in seeds
        for i, v in enumerate(task.points)
    ]
    log(f"[bench] {len(jobs)} jobs ({len(learned)} learned agents), {executor['kind']}")
    outputs = run_jobs(bench_job, jobs, ray_address=ray, workers=workers, log=log, describe=_describe)
    by_job = {(j.agent, j.task.name, j.value, j.seed): o for j, o in zip(jobs, outputs)}

    for task in suite.tasks:
        if task.name not in cores:
            if task.name in previous:  # merged: an earlier run's task is kept as it was
                results["tasks"][task.name] = previous[task.name]
            continue
        core, static, base = cores[task.name], statics[task.name], bases[task.name]
        front = static["front"]
        entry: dict[str, Any] = {
            "env_id": task.env_id,
            "env_kwargs": task.env_kwargs,
            "step_budget": task.step_budget,
            "point_key": task.point_key,
            "points": list(task.points),
            "compute_weights": list(task.compute_weights),
            "flops_targets": list(task.flops_targets),
            "flops_range": list(task.score_range),
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
                    "summary": _seed_summary(old["points"], front, old.get("seeds", seeds[:1]), task.score_range),
                    "merged": True,
                }
        images: dict[str, Any] = {}
        # a merged task rerun recomputes the baselines the earlier run held too: none is lost
        kept = [b for b in BASELINES if b in previous.get(task.name, {}).get("agents", {}) and b not in resolved]
        for spec, fn in [*resolved.items(), *((b, b) for b in kept)]:
            if fn in BASELINES:
                t0 = time.perf_counter()
                a = _baseline_entry(fn, task, base, static_points[task.name], seeds, log)
                a["seconds"] = round(time.perf_counter() - t0, 1)
                a["seeds"] = list(seeds)
            else:
                outs = [by_job[(_worker_spec(spec), task.name, float(v), sd)] for sd in seeds for v in task.points]
                if any("unsupported" in o for o in outs):
                    entry.setdefault("unsupported", {})[spec] = next(o["unsupported"] for o in outs if "unsupported" in o)
                    log(f"[bench] {task.name}: agent {spec} does not support this task ({entry['unsupported'][spec]})")
                    continue
                points = []
                for o in outs:
                    p = dict(o["point"])
                    rel = f"policies/{_safe(task.name)}/{_safe(spec)}/{task.point_key}={p[task.point_key]}-seed{p['seed']}"
                    p["policy"] = write_policy(out, rel, o["policy"]) if o["policy"] is not None else None
                    p["host"] = o["host"]
                    points.append(p)
                    if o["images"] is not None:
                        images[spec] = (p, o["images"])
                a = {
                    "kind": "teacher" if getattr(fn, "uses_teacher", False) else "learned",
                    "algorithm": spec,
                    "points": points,
                    "seeds": list(seeds),
                    "seconds": round(sum(p["train_seconds"] + p["eval_seconds"] for p in points), 1),
                }
            a["summary"] = _seed_summary(a["points"], front, a["seeds"], task.score_range)
            a["provenance"] = record
            entry["agents"][spec] = a
        if "static" not in entry["agents"]:
            a = _baseline_entry("static", task, base, static_points[task.name], seeds, log)
            a.update(seeds=list(seeds), summary=_seed_summary(a["points"], front, seeds, task.score_range), provenance=record)
            entry["agents"]["static"] = a
        results["tasks"][task.name] = entry
        _task_plots(out, task, core, entry, images, plots, _shared_data(task.env_kwargs.get("dataset", "shapes")))
    results["seconds"] = round(time.perf_counter() - start, 1)
    record["wall_seconds"] = results["seconds"]
    results = _jsonable_results(results)
    summarize_results(results)
    results = _jsonable_results(results)
    write_json(out / "results.json", results, indent=2)
    write_json(out / "summary.json", summary_json(results), indent=2)
    write_text(out / "leaderboard.md", format_leaderboard(results))
    write_result_plots(out, results)
    log(format_leaderboard(results))
    log(f"[bench] wrote {out / 'results.json'}, summary.json, leaderboard.md, policies/ and plots ({results['seconds']} s)")
    return results


#: the version of the results.json layout (2: per-(task, seed) scores, rliable aggregates, saved policies, provenance)
RESULTS_FORMAT = 2


def score_matrix(results: dict[str, Any], name: str) -> tuple[np.ndarray, list[str]]:
    """The agent's per-(seed, task) scores ``[runs, tasks]`` over the tasks it ran, and those tasks.

    A baseline that does not depend on the seed (static, cascade, oracle) has one score per task,
    repeated for every seed of the run."""
    tasks = [t for t, e in results["tasks"].items() if name in e["agents"]]
    cols = [np.asarray(results["tasks"][t]["agents"][name]["summary"]["per_seed"], dtype=np.float64) for t in tasks]
    runs = max(len(c) for c in cols)
    cols = [np.resize(c, runs) if len(c) != runs else c for c in cols]
    return np.stack(cols, axis=1), tasks


def summarize_results(results: dict[str, Any]) -> None:
    """Add ``aggregate`` (rliable: IQM, mean and probability of improvement over static, with 95 %
    stratified-bootstrap CIs), ``performance_profile`` and ``leaderboard`` (rows ranked by IQM) to ``results``."""
    from .aggregate import aggregate_scores, performance_profiles, tau_grid

    names: list[str] = []
    for entry in results["tasks"].values():
        names += [n for n in entry["agents"] if n not in names]
    scores, tasks_of, refs = {}, {}, {}
    for n in names:
        scores[n], tasks_of[n] = score_matrix(results, n)
        refs[n] = np.zeros_like(scores[n])  # the static front's score is 0 on every run and task
    agg = aggregate_scores(scores, refs, reps=int(results["reps"]))
    taus = tau_grid(scores)
    results["aggregate"] = agg
    results["performance_profile"] = {"taus": [float(t) for t in taus], "profiles": performance_profiles(scores, taus)}
    rows = []
    for n in names:
        per = {t: results["tasks"][t]["agents"][n]["summary"] for t in tasks_of[n]}
        kind = next(e["agents"][n]["kind"] for e in results["tasks"].values() if n in e["agents"])
        rows.append(
            {
                "agent": n,
                "kind": kind,
                **{k: agg[n][k] for k in ("iqm", "iqm_ci", "mean", "mean_ci", "p_improve", "p_improve_ci")},
                "score": agg[n]["mean"],
                "tasks_run": len(per),
                "per_task": {t: s["score"] for t, s in per.items()},
                "per_task_std": {t: s.get("score_std", 0.0) for t, s in per.items()},
                "seeds": max(len(s.get("per_seed", [0])) for s in per.values()),
                "vs_random_matched": _vs_random(results, n),
                "vs_random_per_task": {t: _vs_random_task(results["tasks"][t]["agents"][n]) for t in per},
                "mixed": {t: s["mixed"] for t, s in per.items()},
            }
        )
    rows.sort(key=lambda r: (-r["iqm"], -r["mean"], r["agent"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    results["leaderboard"] = rows


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


def _vs_random_task(agent: dict[str, Any]) -> dict[str, Any] | None:
    """An agent's gain (points) over random routes at its points' own action rates on one task: the
    mean over its points, the standard deviation of the per-seed means, and how many points are above."""
    pts = [p for p in agent["points"] if "random_matched" in p]
    if not pts:
        return None
    gaps = np.array([100 * (p["accuracy"] - p["random_matched"]["accuracy"]) for p in pts])
    seeds = sorted({p.get("seed", 0) for p in pts})
    per_seed = [float(np.mean([g for g, p in zip(gaps, pts) if p.get("seed", 0) == sd])) for sd in seeds]
    return {
        "mean": float(gaps.mean()),
        "std_over_seeds": float(np.std(per_seed)),
        "per_seed": per_seed,
        "above": int((gaps > 0).sum()),
        "points": int(len(gaps)),
    }


def summary_json(results: dict[str, Any]) -> dict[str, Any]:
    """The small summary of a run: suite, seeds, provenance, and per agent the aggregates and per-task scores."""
    prov = results["provenance"]
    return {
        "suite": {k: results["suite"][k] for k in ("name", "version", "backbone_sha256")},
        "seeds": results["seeds"],
        "flops_ranges": results["flops_ranges"],
        "command": prov["command"],
        "wall_seconds": results["seconds"],
        "versions": prov["versions"],
        "host": prov["host"],
        "threads_per_job": prov["threads_per_job"],
        "executor": prov["executor"],
        "reps": results["reps"],
        "leaderboard": [
            {
                k: r[k]
                for k in (
                    "rank",
                    "agent",
                    "kind",
                    "iqm",
                    "iqm_ci",
                    "mean",
                    "mean_ci",
                    "p_improve",
                    "p_improve_ci",
                    "per_task",
                    "per_task_std",
                    "vs_random_per_task",
                    "seeds",
                    "tasks_run",
                )
            }
            for r in results["leaderboard"]
        ],
    }


def _task_plots(out: Path, task: Task, core, entry: dict[str, Any], images: dict[str, Any], plots, data) -> None:
    learned, extra = [], {}
    for i, (spec, a) in enumerate(entry["agents"].items()):
        if a["kind"] == "upper_bound":
            extra[f"{spec} (knows label)"] = a["points"][0]
            continue
        if spec == "static":
            continue
        color = f"C{i % 10}"
        seeds = sorted({p["seed"] for p in a["points"] if "seed" in p})
        if a["kind"] in ("learned", "teacher") and len(seeds) > 1:  # every seed's point, and the mean per operating point
            key = entry.get("point_key", "compute_weight")
            learned += [{**p, "algorithm": f"{spec} (seeds)", "scatter": True, "color": color} for p in a["points"]]
            for v in entry.get("points", []):
                ps = [p for p in a["points"] if p.get(key) == v]
                if ps:
                    learned.append(
                        {
                            "algorithm": spec,
                            "flops_ratio": float(np.mean([p["flops_ratio"] for p in ps])),
                            "accuracy": float(np.mean([p["accuracy"] for p in ps])),
                            "color": color,
                        }
                    )
        elif spec == "random" and task.flops_targets:
            for v in task.flops_targets:
                ps = [p for p in a["points"] if p.get("flops_target") == v]
                learned.append(
                    {
                        "algorithm": spec,
                        "flops_ratio": float(np.mean([p["flops_ratio"] for p in ps])),
                        "accuracy": float(np.mean([p["accuracy"] for p in ps])),
                        "baseline": True,
                        "color": color,
                    }
                )
        else:
            learned += [{**p, "algorithm": spec, "color": color, "baseline": a["kind"] == "baseline"} for p in a["points"]]
    lo, hi = task.score_range
    plots.plot_fronts(
        out / f"{task.name}_fronts.png",
        f"{task.name}\nfronts vs static (scored on [{lo}, {hi}])",  # two lines: long task names
        entry["static"],
        learned,
        extra,
    )
    labels = action_labels(core)
    diff = {}
    for spec, (p, imgs) in images.items():
        name = f"{task.name}_{spec.replace(':', '.').replace('/', '.')}"
        key = entry.get("point_key", "compute_weight")
        plots.plot_usage(out / f"{name}_usage.png", f"{spec}, {key.replace('_', ' ')} {p[key]}", p["action_rates"], labels)
        if "by_difficulty" in p:
            diff[spec] = p["by_difficulty"]
        raw = data.test.images * data.std[None, :, None, None] + data.mean[None, :, None, None]
        plots.plot_image_grid(
            out / f"{name}_images.png", f"{spec}: test images by compute", raw, imgs["flops"] / core.full, imgs["correct"]
        )
    if diff:
        plots.plot_difficulty(out / f"{task.name}_difficulty.png", f"{task.name}: FLOPs vs difficulty", diff)


def write_result_plots(out: Path, results: dict[str, Any]) -> None:
    """``<suite>_iqm.png`` (IQM and probability of improvement with CIs) and ``<suite>_profiles.png``
    (performance profiles) of a run's aggregates."""
    from .aggregate import plot_intervals, plot_profiles

    name = results["suite"]["name"]
    order = [r["agent"] for r in results["leaderboard"]]
    seeds = results["seeds"]
    plot_intervals(
        out / f"{name}_iqm.png",
        f"{name}: IQM over {len(seeds)} seeds x tasks, 95 % stratified-bootstrap CIs",
        results["aggregate"],
        order,
    )
    pp = results["performance_profile"]
    plot_profiles(out / f"{name}_profiles.png", f"{name}: performance profiles (run scores)", pp["taus"], pp["profiles"])


def _ci(v: float, ci: list[float], fmt: str = "+.2f") -> str:
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def format_leaderboard(results: dict[str, Any]) -> str:
    """The Markdown leaderboard: agents ranked by the IQM of their per-(task, seed) scores, with 95 %
    confidence intervals, the probability of improvement over static, per-task means, the gain
    over random routes at matched action rates, and how the run was made."""
    tasks = list(results["tasks"])
    seeds = results.get("seeds", [results.get("seed", 0)])
    ranges = "; ".join(f"`{t}` [{lo}, {hi}]" for t, (lo, hi) in results["flops_ranges"].items())
    suite = results["suite"]
    lines = [
        f"Suite `{suite['name']}` v{suite['version']}, seeds {seeds}. Score of a run (one task, one seed): the mean accuracy"
        f" gain (points) of the agent's accuracy-FLOPs front over the static front across the task's FLOPs range ({ranges});"
        " `*` = the agent's points do not cover the whole range; beyond them its front is the best random per-image mixture"
        " of its end point with a static route (see `dyncnn_gym.benchmark.bench`)."
        + (
            " The static front: uniform routes and per-decision static routes chosen greedily on"
            f" {STATIC_SELECTIONS[suite['static_selection']]}."
            if "static_selection" in suite
            else ""  # runs written before suites recorded it: their leaderboard as written
        ),
        "",
        f"IQM: interquartile mean over runs x tasks; [..] = 95 % stratified-bootstrap confidence interval (rliable,"
        f" {results.get('reps', 0)} replications); P(> static): probability of improvement over the static front."
        " Per task: mean ± standard deviation over seeds. Baselines that do not depend on the seed (static, cascade,"
        " oracle) have one score per task.",
        "",
    ]
    header = [
        "| rank | agent | IQM [95 % CI] | P(> static) [95 % CI] | " + " | ".join(f"`{t}`" for t in tasks) + " | seeds |",
        "|---:|---|---:|---:|" + "---:|" * len(tasks) + "---:|",
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
    learned = [r for r in results["leaderboard"] if r["kind"] in ("learned", "teacher")]
    if learned:
        lines += [
            "",
            "Per-image routing against random routes at the same per-decision action rates: the mean accuracy gain"
            " (points) of an agent's points over random routes drawn with each point's own action rates, ± the standard"
            " deviation of the per-seed means; (k/n) = points above random.",
            "",
            "| agent | " + " | ".join(f"`{t}`" for t in tasks) + " |",
            "|---|" + "---:|" * len(tasks),
        ]
        for r in learned:
            cells = []
            for t in tasks:
                v = r["vs_random_per_task"].get(t)
                cells.append(
                    "n/a" if v is None else f"{v['mean']:+.2f} ± {v['std_over_seeds']:.2f} ({v['above']}/{v['points']})"
                )
            lines.append(f"| **{r['agent']}** | " + " | ".join(cells) + " |")
    prov = results["provenance"]
    v, h, ex = prov["versions"], prov["host"], prov["executor"]
    runner = "serial" if ex["kind"] == "serial" else f"Ray ({ex.get('address')}, {ex.get('workers') or 'all'} CPUs)"
    lines += [
        "",
        f"Command: `{prov['command']}`; wall time {results['seconds']:.0f} s; jobs {runner}, {prov['threads_per_job']} torch"
        f" thread each. dyncnn_gym {v.get('dyncnn_gym')}, torch {v.get('torch')}, stable_baselines3"
        f" {v.get('stable_baselines3')}, gymnasium {v.get('gymnasium')}, rliable {v.get('rliable')}, Python {v.get('python')};"
        f" {h['cpu']}, {h['cores']} cores. Pins: "
        + ", ".join(f"`{t}` {(s or 'unpinned')[:12]}" for t, s in suite["backbone_sha256"].items())
        + ". `dyncnn-gym validate` re-checks every figure from the saved policies.",
    ]
    return "\n".join(lines) + "\n"


def _leaderboard_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """The leaderboard's table rows for ``rows`` (ranked in their order)."""
    lines: list[str] = []
    for rank, r in enumerate(rows, 1):
        mark = {"baseline": " (baseline)", "upper_bound": " (upper bound, knows the label)"}.get(r["kind"], "")
        cells = []
        for t in tasks:
            if t not in r["per_task"]:
                cells.append("n/a")
                continue
            ext = r["mixed"][t]
            std = r["per_task_std"][t]
            spread = f" ± {std:.2f}" if r["kind"] in ("learned", "teacher") or (r["agent"] == "random" and std) else ""
            cells.append(f"{r['per_task'][t]:+.2f}{spread}{'*' if ext['below'] or ext['above'] else ''}")
        name = f"**{r['agent']}**" if r["kind"] in ("learned", "teacher") else r["agent"]
        part = f" ({r['tasks_run']} of {len(tasks)} tasks)" if r.get("tasks_run", len(tasks)) < len(tasks) else ""
        lines.append(
            f"| {rank} | {name}{mark}{part} | {_ci(r['iqm'], r['iqm_ci'])} | {_ci(r['p_improve'], r['p_improve_ci'], '.2f')} | "
            + " | ".join(cells)
            + f" | {r['seeds'] if r['kind'] in ('learned', 'teacher') else ''} |"
        )
    return lines


def add_arguments(p) -> None:
    from .runner import add_executor_arguments
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
        default=None,
        metavar="SEED",
        help="one or more seeds; each learned agent runs every operating point once per seed (default: the suite's,"
        " 0 1 2 3 4 on the CPU and GPU suites, 0 on the tiny ones)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other agents of an earlier results.json in --out (same suite version and pins); the"
        " baselines of the tasks this run holds are computed again",
    )
    p.add_argument("--timesteps", type=int, default=None, help="override every task's step budget (default: the suite's)")
    p.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this task of the suite (repeatable; with --merge the other tasks of an earlier run are kept)",
    )
    add_executor_arguments(p, "(agent, task, operating point, seed) job")
    from .aggregate import REPS

    p.add_argument(
        "--reps",
        type=int,
        default=REPS,
        help="bootstrap replications of the 95 %% confidence intervals (default: %(default)s)",
    )
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_from_args(args, argv: list[str] | None = None) -> int:
    from .provenance import command_line
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
        ray=args.ray,
        workers=args.workers,
        reps=args.reps,
        command=command_line(argv if argv is not None else getattr(args, "argv", None)),
        tasks=args.task,
    )
    return 0
