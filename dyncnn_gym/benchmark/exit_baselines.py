"""Baselines of ``DynExit-v0`` on the test split: static exits, the confidence-threshold cascade,
random exits at matched rates, and the label-aware oracle.

Every image's prediction at every exit is computed once (one pass through every stage, with the
same :class:`~dyncnn_gym.exit_walk.ExitWalk` the env uses) and memoised per backbone weights; each
baseline is then a choice of one exit per image, whose FLOPs are the exact FLOPs of leaving there
(:meth:`~dyncnn_gym.models.exits.ExitCostTable.exit_flops`: the stem, every stage and every exit
head up to it).
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np
import torch

from ..envs.exit_core import ExitCore
from ..envs.probes import confidence
from ..exit_walk import ExitWalk
from .baselines import _split_arrays, _weights_version, pareto

#: top-probability thresholds the confidence-threshold cascade is swept over
EXIT_THRESHOLDS: tuple[float, ...] = (
    0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0
)  # fmt: skip


class ExitOutcomes(NamedTuple):
    """Every image at every exit.

    Attributes:
        correct: bool ``[S, N]``: exit ``k``'s prediction of image ``i`` is right.
        top: float64 ``[S, N]``: exit ``k``'s top softmax probability (its confidence).
        flops: int64 ``[S]``: FLOPs of an image that leaves at exit ``k``.
        full: FLOPs of the full network (the reference of every FLOPs ratio).
    """

    correct: np.ndarray
    top: np.ndarray
    flops: np.ndarray
    full: int

    def at(self, exit_of: np.ndarray) -> dict[str, float]:
        """Accuracy and FLOPs ratio when image ``i`` leaves at exit ``exit_of[i]``."""
        n = self.correct.shape[1]
        return {
            "accuracy": float(self.correct[exit_of, np.arange(n)].mean()),
            "flops_ratio": float(self.flops[exit_of].mean() / self.full),
        }


_MEMO: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


@torch.no_grad()
def exit_outcomes(core: ExitCore, split: str = "test", limit: int | None = None, batch: int = 500) -> ExitOutcomes:
    """Every image of ``split`` (the first ``limit``) at every exit of ``core``'s stages."""
    memo = _MEMO.setdefault(core.net, {})
    key = (core.data.fingerprint, repr(core.stages.describe()), split, limit, _weights_version(core.net))
    if key not in memo:
        X, y = _split_arrays(core, split, limit)
        S, n = core.S, len(y)
        correct, top = np.zeros((S, n), dtype=bool), np.zeros((S, n))
        for i in range(0, n, batch):
            walk = ExitWalk(core.stages, X[i : i + batch])
            while True:
                correct[walk.t, i : i + batch] = walk.logits.argmax(1).cpu().numpy() == y[i : i + batch]
                top[walk.t, i : i + batch] = confidence(walk.logits)[:, 0].double().cpu().numpy()
                if walk.done:
                    break
                walk.step(np.ones(len(walk), dtype=np.int64))
        memo[key] = ExitOutcomes(correct, top, core.exit_flops.copy(), core.full)
    return memo[key]


def static_exits(core: ExitCore, split: str = "test") -> dict[str, Any]:
    """Every image leaves at exit ``k``, for each ``k``: ``points`` (``exit``, ``accuracy``,
    ``flops_ratio``, ``n_images``), their Pareto ``front``, and ``full`` (the last exit)."""
    o = exit_outcomes(core, split)
    n = o.correct.shape[1]
    pts = [{"exit": k, **o.at(np.full(n, k)), "n_images": n} for k in range(core.S)]
    return {"points": pts, "front": pareto(pts), "full": pts[-1]}


def threshold_exits(o: ExitOutcomes, threshold: float) -> np.ndarray:
    """int64 ``[N]``: the first exit whose top probability is at least ``threshold`` (the last exit
    when none is)."""
    S = o.top.shape[0]
    sure = o.top >= threshold
    sure[S - 1] = True
    return np.argmax(sure, axis=0)


def threshold_cascade(core: ExitCore, thresholds: tuple[float, ...] = EXIT_THRESHOLDS, split: str = "test") -> dict[str, Any]:
    """The confidence-threshold cascade (BranchyNet's rule, with the top probability): an image
    leaves at the first exit whose top probability is at least ``tau``; ``tau`` swept over
    ``thresholds``. Returns ``points`` (``threshold``, ``accuracy``, ``flops_ratio``,
    ``exit_rates``) and their Pareto ``front``."""
    o = exit_outcomes(core, split)
    pts = []
    for tau in thresholds:
        if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"threshold={tau!r} must be a probability in [0, 1]")
        k = threshold_exits(o, float(tau))
        pts.append({"threshold": float(tau), **o.at(k), "exit_rates": (np.bincount(k, minlength=core.S) / len(k)).tolist()})
    return {"points": pts, "front": pareto(pts)}


def continue_rates(exit_rates: list[float] | np.ndarray) -> np.ndarray:
    """Per decision ``t``, the probability of continuing among the images that reach exit ``t``,
    from the share of images leaving at each exit (``[S]`` -> ``[S - 1]``)."""
    e = np.asarray(exit_rates, dtype=np.float64)
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(e)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(reach[:-1] > 1e-12, 1.0 - e[:-1] / reach[:-1], 0.0)
    return np.clip(p, 0.0, 1.0)


def random_exits(core: ExitCore, exit_rates: list[float] | np.ndarray, seed: int = 0, split: str = "test") -> dict[str, float]:
    """Random exits at matched rates: at every exit each image continues independently with the
    probability a policy continued there (from its ``exit_rates``), over the whole split."""
    o = exit_outcomes(core, split)
    p = continue_rates(exit_rates)
    rng = np.random.default_rng(seed)
    n = o.correct.shape[1]
    k = np.zeros(n, dtype=np.int64)
    going = np.ones(n, dtype=bool)
    for t, pt in enumerate(p):
        go = going & (rng.random(n) < pt)
        k[go] = t + 1
        going = go
    return {**o.at(k), "exit_rates": (np.bincount(k, minlength=core.S) / n).tolist()}


def exit_oracle(core: ExitCore, split: str = "test") -> dict[str, Any]:
    """Label-aware upper bound (for analysis only): each image leaves at the first exit that
    classifies it correctly, or at the last exit when none does."""
    o = exit_outcomes(core, split)
    ok = o.correct.copy()
    ok[-1] = True
    k = np.argmax(ok, axis=0)
    return {
        **o.at(k),
        "exit_rates": (np.bincount(k, minlength=core.S) / len(k)).tolist(),
        "upper_bound": True,
        "note": "knows the label: an upper bound for analysis, not a policy",
    }
