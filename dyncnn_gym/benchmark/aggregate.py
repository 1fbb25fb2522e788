"""Aggregate per-(task, seed) scores across runs with rliable (Agarwal et al., NeurIPS 2021).

An agent's scores form a matrix ``[runs, tasks]`` (one row per seed, one column per task of the
suite it supports; a score is in accuracy points over the static front, see
:func:`dyncnn_gym.benchmark.bench.front_area`). Per agent:

* ``iqm``: the interquartile mean of all its scores (the mean of the middle 50 % of the runs x tasks
  values), with a 95 % **stratified bootstrap** confidence interval (runs resampled with
  replacement within each task, ``reps`` replications, percentile interval);
* ``mean``: the mean score with its interval, the same way;
* ``p_improve``: the probability of improvement over the static front, ``P(X > Y)`` averaged over
  tasks, ``X`` a run of the agent and ``Y`` one of the static front (whose score is 0 on every
  run: so this is the share of the agent's runs above static, ties counted half), with its
  stratified-bootstrap interval;
* the **performance profile** (run-score distribution): the share of the agent's scores above
  ``tau`` for a grid of ``tau``, plotted by :func:`plot_profiles`.

Every bootstrap is seeded (``seed``, the same for each agent), so re-running the aggregation on
the same scores gives the same intervals (``dyncnn-gym validate`` checks them).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: bootstrap replications of the confidence intervals (rliable's stratified bootstrap draws them one
#: at a time: about 1.3 s per thousand for an agent's three intervals on a 2-core machine)
REPS = 5_000
#: the seed of every bootstrap
SEED = 0


def _rliable():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from rliable import library, metrics
    except ImportError as err:  # pragma: no cover - rliable is a dependency
        raise ImportError("the benchmark's aggregation needs rliable: pip install rliable") from err
    return library, metrics


def _interval(scores: Any, func: Any, reps: int, seed: int) -> tuple[float, list[float]]:
    """rliable's point estimate and 95 % stratified-bootstrap interval of ``func`` over ``scores``, seeded.

    rliable's ``StratifiedBootstrap`` draws its resamples from NumPy's global generator, not from
    the ``random_state`` it is given (rliable 1.2), so the global generator is seeded here as well,
    and restored afterwards."""
    library, _ = _rliable()
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arch's notice that RandomState is deprecated
            point, interval = library.get_interval_estimates(
                {"x": scores}, func, reps=reps, random_state=np.random.RandomState(seed)
            )
    finally:
        np.random.set_state(saved)
    return float(np.asarray(point["x"]).reshape(-1)[0]), [float(v) for v in np.asarray(interval["x"]).reshape(-1)[:2]]


def aggregate_scores(
    scores: dict[str, np.ndarray], reference: np.ndarray | dict[str, np.ndarray], reps: int = REPS, seed: int = SEED
) -> dict[str, dict[str, Any]]:
    """IQM, mean and probability of improvement (each with its 95 % CI) per agent.

    Args:
        scores: agent -> ``[runs, tasks]`` scores (the tasks it supports, in suite order).
        reference: the static front's scores, ``[runs, tasks]`` per agent (the same tasks as that
            agent's; a dict) or one array for every agent.
        reps: bootstrap replications.
        seed: seed of every bootstrap.
    """
    _, metrics = _rliable()
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps={reps!r} must be a positive number of bootstrap replications")
    out: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.ndim != 2 or s.size == 0:
            raise ValueError(f"scores of {name!r} have shape {s.shape}; expected [runs, tasks]")
        ref = np.asarray(reference[name] if isinstance(reference, dict) else reference, dtype=np.float64)
        iqm, iqm_ci = _interval(s, lambda x: np.array([metrics.aggregate_iqm(x)]), reps, seed)
        mean, mean_ci = _interval(s, lambda x: np.array([metrics.aggregate_mean(x)]), reps, seed)
        p, p_ci = _interval([s, ref], lambda x, y: np.array([metrics.probability_of_improvement(x, y)]), reps, seed)
        out[name] = {
            "runs": int(s.shape[0]),
            "tasks": int(s.shape[1]),
            "iqm": iqm,
            "iqm_ci": iqm_ci,
            "mean": mean,
            "mean_ci": mean_ci,
            "p_improve": p,
            "p_improve_ci": p_ci,
        }
    return out


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray) -> dict[str, list[float]]:
    """Per agent, the share of its run x task scores above each ``tau`` (rliable's score distribution)."""
    library, _ = _rliable()
    return {
        name: [float(v) for v in library.score_distributions(np.asarray(s, dtype=np.float64), np.asarray(taus))]
        for name, s in scores.items()
    }


def tau_grid(scores: dict[str, np.ndarray], n: int = 101) -> np.ndarray:
    """An even grid of score thresholds spanning every agent's scores (and 0)."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores.values()] + [np.zeros(1)])
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * max(hi - lo, 1e-6)
    return np.linspace(lo - pad, hi + pad, n)


def plot_profiles(path: str | Path, title: str, taus: list[float], profiles: dict[str, list[float]]) -> Path:
    """The performance profiles as one figure (share of runs with score > tau against tau)."""
    from . import plots

    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, ys in profiles.items():
        ax.plot(taus, ys, lw=1.6, label=name, ls="--" if name in ("static", "random", "cascade", "oracle") else "-")
    ax.axvline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("score tau (accuracy points over the static front)")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_intervals(path: str | Path, title: str, agg: dict[str, dict[str, Any]], order: list[str]) -> Path:
    """IQM and probability of improvement over static, each with its 95 % CI, one row per agent."""
    from . import plots

    plt = plots._plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 0.45 * len(order) + 1.4), sharey=True)
    ys = np.arange(len(order))[::-1]
    for ax, key, label in ((axes[0], "iqm", "IQM score (points)"), (axes[1], "p_improve", "P(score > static)")):
        for y, name in zip(ys, order):
            a = agg[name]
            lo, hi = a[f"{key}_ci"]
            ax.plot([lo, hi], [y, y], color="C0", lw=5, alpha=0.45, solid_capstyle="butt")
            ax.plot([a[key]], [y], "k|", ms=12)
        ax.axvline(0.0 if key == "iqm" else 0.5, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels(order)
    fig.suptitle(title, fontsize=10)
    return plots.save(fig, path)
