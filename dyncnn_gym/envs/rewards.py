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
"""

from __future__ import annotations

import numbers
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
            if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)) or not np.isfinite(v) or v < 0:
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

    def final(self, ce: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """Classification term (float64 ``[B]``) from per-sample cross-entropy (nats) and correctness (bool)."""
        if self.loss == "error":
            return -self.loss_weight * (~np.asarray(correct, dtype=bool)).astype(np.float64)
        return -self.loss_weight * np.minimum(ce, self.ce_clip)
