"""Reward definitions shared by every routing env.

Each decision ``t`` pays a compute term; the last decision adds a classification term.

* ``"flops"`` (default): ``compute_weight * (F_t_full - F_t) / F_full`` at each step, where ``F_t``
  is the FLOPs decision ``t`` actually cost and ``F_t_full`` what it costs in the full network (the
  head's saving is paid on the last step). Summed over an episode it is exactly
  ``compute_weight * (1 - flops_ratio)``. Default ``compute_weight = 0.5``. With the env argument
  ``decision_costs`` (``"time"`` or a table) ``F_t`` are time-weighted FLOPs instead: each
  decision's time, scaled so that the full route's decisions cost their FLOPs
  (:mod:`dyncnn_gym.time_costs`); an episode's compute terms then sum to ``compute_weight * (1 -
  f)`` with ``f`` the route's time-weighted FLOPs over the full network's FLOPs.
* ``"rnp"`` (Runtime Neural Pruning): ``compute_weight * (A - 1 - a_t)`` — a fixed bonus per channel
  group (or block) not computed; the paper's ``-p`` per group used, shifted by a constant so that it
  reads as a saving. Default ``compute_weight = 0.1`` (``p`` of the paper's reproduction).
* ``"skipnet"`` (SkipNet): ``compute_weight * (A - 1 - a_t) / ((A - 1) * T)`` — the paper's
  ``(1 - g_t) * alpha / N`` per gate. Default ``compute_weight = 0.1`` (its CIFAR ``alpha``).

Final term of every form, chosen by ``loss``:

* ``"ce"`` (default; RNP, SkipNet): ``-loss_weight * min(CE, ce_clip)``, the cross-entropy (nats) of
  the true label under the network's prediction, clipped so one hopeless image cannot dominate a batch.
* ``"error"`` (BlockDrop's correctness reward): ``-loss_weight`` if the prediction is wrong, else 0.
  It pays exactly the accuracy the benchmark measures: an image the network gets wrong at every
  width costs the same whatever is computed, so the agent is not paid to spend FLOPs making a
  hopeless image less wrong (which ``"ce"`` does). ``ce_clip`` does not apply.

Early-exit episodes (``DynExit-v0``, :meth:`Reward.exit_step`) have one decision per exit and end
when the image exits; the same forms apply with stages in place of groups or blocks: ``"flops"``
charges ``compute_weight * cost / F_full`` for what each decision computes (the next stage and its
exit; nothing for exiting) and adds ``compute_weight * (1 - F_0 / F_full)`` on the episode's last
step (``F_0``: the FLOPs every image spends before its first decision), so an episode's compute
terms again sum to ``compute_weight * (1 - flops_ratio)``; ``"rnp"`` pays ``compute_weight`` per
stage not computed when the image exits, ``"skipnet"`` that divided by the number of decisions.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from numbers import Real

import numpy as np

REWARD_KINDS = ("flops", "rnp", "skipnet")
LOSS_KINDS = ("ce", "error")
DEFAULT_COMPUTE_WEIGHT = {"flops": 0.5, "rnp": 0.1, "skipnet": 0.1}


@dataclass(frozen=True)
class Reward:
    """A reward form with its weights (see the module docstring)."""

    kind: str = "flops"
    compute_weight: float = 0.5
    loss_weight: float = 1.0
    ce_clip: float = 5.0
    loss: str = "ce"

    @classmethod
    def make(
        cls,
        kind: str = "flops",
        compute_weight: float | None = None,
        loss_weight: float = 1.0,
        ce_clip: float = 5.0,
        loss: str = "ce",
    ) -> Reward:
        if kind not in REWARD_KINDS:
            raise ValueError(f"reward={kind!r} is not a reward form; choose one of {list(REWARD_KINDS)}")
        if loss not in LOSS_KINDS:
            raise ValueError(f"loss={loss!r} is not a classification term; choose one of {list(LOSS_KINDS)}")
        cw = DEFAULT_COMPUTE_WEIGHT[kind] if compute_weight is None else compute_weight
        for name, v in (("compute_weight", cw), ("loss_weight", loss_weight), ("ce_clip", ce_clip)):
            if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        if ce_clip == 0:
            raise ValueError("ce_clip=0 would erase the classification term; use a positive value")
        return cls(kind, float(cw), float(loss_weight), float(ce_clip), loss)

    def with_weight(self, compute_weight: float) -> Reward:
        """The same reward with another compute weight (checked as in :meth:`make`)."""
        return Reward.make(self.kind, compute_weight, self.loss_weight, self.ce_clip, self.loss)

    def step(
        self, t: int, actions: np.ndarray, cost: np.ndarray, full_cost: float, full_flops: int, A: int, T: int
    ) -> np.ndarray:
        """Compute term of decision ``t`` for each sample (float64 ``[B]``).

        ``cost``/``full_cost`` are FLOPs (or time-weighted FLOPs) of this decision (plus the head on
        the last one) as taken and in the full network.
        """
        if self.kind == "flops":
            return self.compute_weight * (full_cost - cost) / full_flops
        saved = (A - 1 - actions).astype(np.float64)
        if self.kind == "rnp":
            return self.compute_weight * saved
        return self.compute_weight * saved / ((A - 1) * T)

    def exit_step(
        self, t: int, actions: np.ndarray, cost: np.ndarray, last: np.ndarray, first_flops: int, full_flops: int, T: int
    ) -> np.ndarray:
        """Compute term of decision ``t`` of an early-exit episode for each sample (float64 ``[B]``).

        ``actions``: 0 exits, 1 continues; ``cost``: FLOPs the decision computed (the next stage and
        its exit; 0 for exiting); ``last``: bool, the episode ends with this step (an exit, or the
        last stage reached); ``first_flops``: FLOPs spent before the first decision; ``T``: decisions
        of a route through every stage. See the module docstring.
        """
        a = np.asarray(actions)
        if self.kind == "flops":
            r = -self.compute_weight * np.asarray(cost, dtype=np.float64) / full_flops
            return r + np.where(last, self.compute_weight * (1.0 - first_flops / full_flops), 0.0)
        saved = np.where(a == 0, T - t, 0).astype(np.float64)  # stages not computed
        if self.kind == "rnp":
            return self.compute_weight * saved
        return self.compute_weight * saved / T

    def final(self, ce: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """Classification term (float64 ``[B]``) from per-sample cross-entropy (nats) and correctness (bool)."""
        if self.loss == "error":
            return -self.loss_weight * (~np.asarray(correct, dtype=bool)).astype(np.float64)
        return -self.loss_weight * np.minimum(ce, self.ce_clip)


#: bounds of the compute weight a :class:`FlopsTarget` may set (its log is clipped to these)
TARGET_WEIGHT_RANGE = (1e-6, 1e3)
#: default change of ``log(compute_weight)`` per decision of a finished episode per unit of FLOPs-ratio error
DEFAULT_TARGET_RATE = 2e-4
#: the compute weight a :class:`FlopsTarget` starts from unless one is given
DEFAULT_TARGET_START = 0.01


class FlopsTarget:
    """Holds the mean FLOPs ratio of finished episodes at ``target`` by adapting the compute weight.

    The compute weight is the Lagrange multiplier of the constraint ``E[flops_ratio] = target``.
    After every finished episode of ``T`` decisions with FLOPs ratio ``f`` it moves by dual ascent in
    log space: ``log w <- log w + rate * T * (f - target)``, clipped to :data:`TARGET_WEIGHT_RANGE`.
    An episode that spends more than the target raises the price of FLOPs, one that spends less
    lowers it; the update does not depend on how episodes are batched (``update`` of ``n`` episodes
    at once equals ``n`` single updates), and counted per decision it moves as fast per agent step
    whatever the episode length.

    The weight that holds a given FLOPs ratio differs by orders of magnitude between data sets and
    backbones (it is the slope of the accuracy-FLOPs front at the target: on the embedded shapes
    data about 0.03 for the default VGG at 0.55, on digits nearer 0.003); a FLOPs ratio means the same
    everywhere. Two things matter for learning (measured with PPO on the embedded data, see
    docs/envs.md): a slow rate, so that the reward changes slowly against the policy (two time
    scales: the policy follows the weight, not the other way round), and a start *below* the right
    weight. A policy that starts with FLOPs too cheap collapses onto the cheapest route and stops
    exploring wider ones, so that lowering the weight no longer brings it back; one that starts
    expensive is pushed down smoothly. Hence a start below the right weight: the envs start from
    :func:`~dyncnn_gym.envs.core.starting_weight` (half the static front's slope at the target),
    a bare ``FlopsTarget`` from :data:`DEFAULT_TARGET_START`.

    Args:
        target: the FLOPs ratio to hold, in ``(0, 1]``.
        weight: the starting compute weight (> 0).
        rate: change of ``log w`` per decision per unit of FLOPs-ratio error (> 0).
    """

    def __init__(self, target: float, weight: float = DEFAULT_TARGET_START, rate: float = DEFAULT_TARGET_RATE) -> None:
        for name, v, lo in (("flops_target", target, 0.0), ("compute_weight", weight, 0.0), ("target_rate", rate, 0.0)):
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v <= lo:
                raise ValueError(f"{name}={v!r} must be a finite number > {lo:g}")
        if target > 1:
            raise ValueError(f"flops_target={target!r} must be a FLOPs ratio in (0, 1]")
        self.target, self.rate = float(target), float(rate)
        self._log_w = self._start = float(np.clip(math.log(weight), *np.log(TARGET_WEIGHT_RANGE)))
        self.episodes = 0

    @property
    def weight(self) -> float:
        """The compute weight now."""
        return math.exp(self._log_w)

    def set_weight(self, weight: float) -> None:
        """Restart the adaptation from ``weight`` (> 0), which :meth:`restart` returns to from now on."""
        if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"compute_weight={weight!r} must be a finite number > 0 while a flops_target is held")
        self._log_w = self._start = float(np.clip(math.log(weight), *np.log(TARGET_WEIGHT_RANGE)))

    def restart(self) -> None:
        """Back to the starting weight, as if no episode had finished (a seeded reset of the envs)."""
        self._log_w, self.episodes = self._start, 0

    def update(self, flops_ratios: np.ndarray, decisions: int = 1) -> float:
        """Account for finished episodes of ``decisions`` decisions each with these FLOPs ratios;
        returns the new compute weight."""
        f = np.asarray(flops_ratios, dtype=np.float64).reshape(-1)
        if f.size:
            step = self.rate * decisions * float((f - self.target).sum())
            self._log_w = float(np.clip(self._log_w + step, *np.log(TARGET_WEIGHT_RANGE)))
            self.episodes += int(f.size)
        return self.weight
