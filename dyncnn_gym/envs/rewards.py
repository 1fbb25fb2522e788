"""Reward definitions shared by every routing env.

Each decision ``t`` pays a compute term; the last decision adds a classification term.

* ``"flops"`` (default): ``compute_weight * (F_t_full - F_t) / F_full`` at each step, where ``F_t``
  is the FLOPs decision ``t`` actually cost and ``F_t_full`` what it costs in the full network (the
  head's saving is paid on the last step). Summed over an episode it is exactly
  ``compute_weight * (1 - flops_ratio)``. Default ``compute_weight = 0.5``.
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

from dataclasses import dataclass

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
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        if ce_clip == 0:
            raise ValueError("ce_clip=0 would erase the classification term; use a positive value")
        return cls(kind, float(cw), float(loss_weight), float(ce_clip), loss)

    def step(
        self, t: int, actions: np.ndarray, cost: np.ndarray, full_cost: int, full_flops: int, A: int, T: int
    ) -> np.ndarray:
        """Compute term of decision ``t`` for each sample (float64 ``[B]``).

        ``cost``/``full_cost`` are FLOPs of this decision (plus the head on the last one) as taken
        and in the full network.
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
