"""The core: a batch of images walking through a dynamic CNN one decision at a time.

Every face of the package (single env, vector envs, evaluation, export, co-training) is a thin
layer on :class:`Walk`. At decision point ``t`` each sample's action decides what is computed *for
that sample*: samples are grouped by (previous action, action), each group runs on contiguous
weight slices, and the results are scattered back. A skipped block or pruned channel group is never
computed (no 0/1 mask multiply), and the FLOPs of what ran are accounted exactly per sample from
the backbone's :class:`~dyncnn_gym.models.CostTable`.

Shapes: ``B`` samples, ``T`` decision points, ``A`` actions per decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import CostTable, DynamicNet

_COST_CACHE: dict[tuple[int, str], tuple[CostTable, torch.Tensor, torch.Tensor]] = {}


def cost_tensors(net: DynamicNet, mode: str) -> tuple[CostTable, torch.Tensor, torch.Tensor]:
    """The cost table of ``net`` in ``mode``, plus its ``steps`` and ``head`` as CPU int64 tensors."""
    key = (id(net), mode)
    hit = _COST_CACHE.get(key)
    if hit is None or hit[0] is None:
        table = net.cost_table(mode)
        hit = (table, torch.as_tensor(table.steps), torch.as_tensor(table.head))
        _COST_CACHE[key] = hit
    return hit


class Walk:
    """A batch of ``B`` images part-way through ``net`` in ``mode``.

    Attributes:
        t: index of the next decision point (``T`` when all decisions are made).
        h: feature map entering decision ``t``, ``[B, C, H, W]`` on the net's device; in channel
            mode on a plain CNN it may hold fewer than the layer's full channels (the rest are 0).
        prev: int64 ``[B]`` (CPU), the previous action of each sample (``A - 1`` before the first).
        flops: int64 ``[B]`` (CPU), FLOPs spent so far on each sample.
        actions: int64 ``[B, T]`` (CPU), actions taken so far (``-1`` where not yet taken).
    """

    def __init__(self, net: DynamicNet, mode: str, images: torch.Tensor | None) -> None:
        net.check_mode(mode)
        self.net, self.mode = net, mode
        self.table, self._steps, self._head = cost_tensors(net, mode)
        self.T, self.A = self.table.num_decisions, self.table.num_actions
        self.widths = net.feature_widths(mode)
        self.t = 0
        self._logits: torch.Tensor | None = None
        if images is None:  # used by select / cat
            return
        B = images.shape[0]
        self.h = net.stem(images, mode)
        self.prev = torch.full((B,), self.A - 1, dtype=torch.int64)
        self.flops = torch.full((B,), self.table.stem, dtype=torch.int64)
        self.actions = torch.full((B, self.T), -1, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.prev.shape[0])

    @property
    def done(self) -> bool:
        return self.t >= self.T

    # -- observing ---------------------------------------------------------------------------
    def pooled(self) -> torch.Tensor:
        """Globally average-pooled feature map entering decision ``t``: ``[B, widths[t]]``."""
        if self.done:
            raise RuntimeError("the walk is finished: every decision has been made")
        f = self.h.mean(dim=(2, 3))
        missing = self.widths[self.t] - f.shape[1]
        return F.pad(f, (0, missing)) if missing > 0 else f

    # -- acting ------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Take decision ``t`` for every sample; returns the FLOPs it cost each sample, int64 ``[B]``."""
        if self.done:
            raise RuntimeError("the walk is finished: every decision has been made")
        a = _as_actions(actions, len(self), self.A)
        t, net, mode = self.t, self.net, self.mode
        keys = self.prev * self.A + a
        first = int(keys[0])
        if bool((keys == first).all()):
            self.h = net.decision(mode, t, self.h, first // self.A, first % self.A)
        else:
            self.h = self._grouped(t, keys)
        cost = self._steps[t][self.prev, a]
        self.flops += cost
        self.actions[:, t] = a
        self.prev = a
        self.t += 1
        return cost

    def _grouped(self, t: int, keys: torch.Tensor) -> torch.Tensor:
        """Decision ``t`` on a batch with mixed (previous action, action) pairs."""
        net, mode, h = self.net, self.mode, self.h
        dev = h.device
        uniq = torch.unique(keys).tolist()
        parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for k in uniq:
            idx = (keys == k).nonzero().flatten().to(dev)
            p, a = divmod(int(k), self.A)
            if mode == "skip" and a == 0 and _is_identity_skip(net, t):
                parts.append((idx, None))  # rows left as they are: nothing to compute
                continue
            parts.append((idx, net.decision(mode, t, h.index_select(0, idx), p, a)))
        computed = [y for _, y in parts if y is not None]
        ref = computed[0]
        C = max(y.shape[1] for y in computed)
        if any(y is None for _, y in parts):
            C = max(C, h.shape[1])
        shape = (h.shape[0], C, *ref.shape[2:])
        if torch.is_grad_enabled():
            ys, order = [], []
            for idx, y in parts:
                y = h.index_select(0, idx) if y is None else y
                ys.append(F.pad(y, (0, 0, 0, 0, 0, C - y.shape[1])) if y.shape[1] < C else y)
                order.append(idx)
            return torch.zeros(shape, dtype=ref.dtype, device=dev).index_copy(0, torch.cat(order), torch.cat(ys))
        if any(y is None for _, y in parts) and tuple(h.shape) == shape:
            out = h  # identity rows stay in place; overwrite only the computed ones
        else:
            out = torch.zeros(shape, dtype=ref.dtype, device=dev)
        for idx, y in parts:
            if y is not None:
                (out if y.shape[1] == C else out[:, : y.shape[1]]).index_copy_(0, idx, y)
        return out

    def logits(self) -> torch.Tensor:
        """Class scores ``[B, num_classes]`` after the last decision; adds the head's FLOPs once."""
        if not self.done:
            raise RuntimeError(f"decision {self.t} of {self.T} is still to be made")
        if self._logits is None:
            a = self.prev
            first = int(a[0])
            if bool((a == first).all()):
                self._logits = self.net.head(self.h, self.mode, first)
            else:
                out = None
                for v in torch.unique(a).tolist():
                    idx = (a == v).nonzero().flatten().to(self.h.device)
                    y = self.net.head(self.h.index_select(0, idx), self.mode, int(v))
                    if out is None:
                        out = y.new_zeros((len(self), y.shape[1]))
                    out = out.index_copy(0, idx, y) if torch.is_grad_enabled() else out.index_copy_(0, idx, y)
                self._logits = out
            self.flops += self._head[a]
        return self._logits

    # -- regrouping (vector envs with partial resets) ----------------------------------------
    def select(self, rows: torch.Tensor) -> "Walk":
        """A walk of the samples ``rows`` (int64 indices), at the same decision point."""
        w = Walk(self.net, self.mode, None)
        rows_cpu = rows.cpu()
        w.t = self.t
        w.h = self.h.index_select(0, rows_cpu.to(self.h.device))
        w.prev, w.flops, w.actions = self.prev[rows_cpu], self.flops[rows_cpu], self.actions[rows_cpu]
        w._logits = None if self._logits is None else self._logits.index_select(0, rows_cpu.to(self.h.device))
        return w

    @staticmethod
    def cat(walks: Sequence["Walk"]) -> "Walk":
        """Concatenate walks that stand at the same decision point."""
        if len({w.t for w in walks}) != 1:
            raise ValueError(f"walks at different decision points {[w.t for w in walks]} cannot be merged")
        if len(walks) == 1:
            return walks[0]
        w = Walk(walks[0].net, walks[0].mode, None)
        w.t = walks[0].t
        C = max(x.h.shape[1] for x in walks)
        w.h = torch.cat([F.pad(x.h, (0, 0, 0, 0, 0, C - x.h.shape[1])) for x in walks])
        w.prev = torch.cat([x.prev for x in walks])
        w.flops = torch.cat([x.flops for x in walks])
        w.actions = torch.cat([x.actions for x in walks])
        w._logits = None
        if all(x._logits is not None for x in walks):
            w._logits = torch.cat([x._logits for x in walks])
        return w


def _is_identity_skip(net: DynamicNet, t: int) -> bool:
    blocks = getattr(net, "blocks", None)
    return blocks is not None and not blocks[1 + t].changes_shape


def _as_actions(actions, B: int, A: int) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions)
    if a.dtype.is_floating_point or a.dtype == torch.bool or a.dtype.is_complex:
        raise TypeError(f"actions must be integers in [0, {A}); got dtype {a.dtype}")
    a = a.to(device="cpu", dtype=torch.int64).reshape(-1)
    if a.shape[0] != B:
        raise ValueError(f"expected {B} actions (one per sample), got {a.shape[0]}")
    if B and (int(a.min()) < 0 or int(a.max()) >= A):
        bad = a[(a < 0) | (a >= A)].tolist()
        raise ValueError(f"actions {bad} are outside Discrete({A}) (valid: 0..{A - 1})")
    return a


def run_routes(
    net: DynamicNet, mode: str, images: torch.Tensor, actions: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``images`` with fixed per-sample ``actions`` ``[B, T]`` (the raw batched dynamic pass).

    Returns ``(logits [B, classes], flops int64 [B])``.
    """
    acts = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions)
    walk = Walk(net, mode, images)
    if acts.dim() != 2 or acts.shape[1] != walk.T:
        raise ValueError(f"actions must have shape [B, {walk.T}], got {tuple(acts.shape)}")
    for t in range(walk.T):
        walk.step(acts[:, t])
    return walk.logits(), walk.flops


def run_policy(
    net: DynamicNet,
    mode: str,
    images: torch.Tensor,
    choose: Callable[[Walk], torch.Tensor | np.ndarray],
) -> Walk:
    """Walk ``images`` through ``net`` asking ``choose(walk)`` for the actions at every decision.

    Returns the finished walk (call ``.logits()``; ``.flops`` and ``.actions`` hold the accounting).
    """
    walk = Walk(net, mode, images)
    while not walk.done:
        walk.step(choose(walk))
    walk.logits()
    return walk
