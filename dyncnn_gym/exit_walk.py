"""The walk of early-exit stages: a batch that shrinks as images exit.

:class:`ExitWalk` is the early-exit counterpart of :class:`~dyncnn_gym.walk.Walk`: a batch of
images stands at the exit of stage ``t`` of a :class:`~dyncnn_gym.models.exits.Stages` cascade,
with that exit's logits computed. Every image in it took the same path so far (every earlier
stage ran and continued), so a stage is one dense batched computation; the per-image decision is
only *who goes on*. :meth:`ExitWalk.step` takes one action per image (0 = exit now, 1 = continue):
the images that exit **leave the batch** (their rows are dropped, nothing is computed for them
any more) and the rest run stage ``t + 1`` and its exit. At the last exit there is no decision.

FLOPs are accounted exactly per image from the cascade's
:class:`~dyncnn_gym.models.exits.ExitCostTable`: the stem, every stage run and every exit head
evaluated. Shapes: ``B`` images, ``S`` stages (exits), ``T = S - 1`` decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .models.base import param_dtype
from .models.exits import Carry, Stages, take


class Exited(NamedTuple):
    """The images that left a walk at one step.

    Attributes:
        rows: int64 ``[E]`` their rows in the walk *before* the step.
        logits: ``[E, K]`` the exit's class scores (their prediction).
        flops: int64 ``[E]`` FLOPs each spent.
        exit: the exit they left at.
    """

    rows: np.ndarray
    logits: torch.Tensor
    flops: np.ndarray
    exit: int


class ExitWalk:
    """A batch of ``B`` images at the exit of stage ``t`` (see the module docstring).

    Attributes:
        t: the stage whose exit the images stand at (``T = S - 1``: the last, no decision left).
        logits: ``[B, K]`` that exit's class scores.
        pooled: ``[B, C_t]`` the globally average-pooled feature map the exit reads.
        flops: int64 ``[B]`` (CPU) FLOPs spent so far by each image (stem, stages, exit heads).
        actions: int64 ``[B, T]`` (CPU) actions taken so far (1 for every decision before ``t``,
            ``-1`` after).
    """

    def __init__(self, stages: Stages, images: torch.Tensor | None) -> None:
        self.stages = stages
        self.costs = stages.costs
        self.S = stages.num_exits
        self.T = self.S - 1
        self.t = 0
        self.carry: Carry = ()
        if images is None:  # used by select / cat
            return
        dtype = param_dtype(stages.net)
        if images.is_floating_point() and images.dtype != dtype:
            images = images.to(dtype)
        B = images.shape[0]
        carry, self.logits, self.pooled = stages.advance(0, stages.begin(images))
        self.carry = carry
        self.flops = np.full(B, self.costs.stem + self.costs.stages[0] + self.costs.heads[0], dtype=np.int64)
        self.actions = np.full((B, self.T), -1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.flops.shape[0])

    @property
    def done(self) -> bool:
        """True at the last exit (every image there is finished)."""
        return self.t >= self.T

    def step(self, actions: torch.Tensor | np.ndarray | Sequence[int]) -> Exited:
        """Decision ``t`` for every image: 0 exits now, 1 runs the next stage and its exit.

        Returns the images that exited (at exit ``t``). Those that continue stay in the walk, in
        their order, now at exit ``t + 1`` (if that is the last exit, they are finished too: read
        :attr:`logits` and :attr:`flops`).
        """
        if self.done:
            raise RuntimeError("the walk is at its last exit: no decision is left")
        a = _as_exit_actions(actions, len(self))
        self.actions[:, self.t] = a
        out = np.flatnonzero(a == 0)
        stay = np.flatnonzero(a == 1)
        dev = self.logits.device
        exited = Exited(out, self.logits[torch.from_numpy(out).to(dev)], self.flops[out].copy(), self.t)
        if out.shape[0]:
            self._keep(stay)
        k = self.t + 1
        if len(self):
            self.carry, self.logits, self.pooled = self.stages.advance(k, self.carry)
            self.flops += self.costs.stages[k] + self.costs.heads[k]
        self.t = k
        return exited

    def _keep(self, rows: np.ndarray) -> None:
        """Drop every row but ``rows`` (in place): the batch shrinks."""
        idx = torch.from_numpy(rows).to(self.logits.device)
        self.carry = take(self.carry, idx)
        self.logits = self.logits.index_select(0, idx)
        self.pooled = self.pooled.index_select(0, idx)
        self.flops = self.flops[rows]
        self.actions = self.actions[rows]

    def select(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> ExitWalk:
        """A walk of the images ``rows`` (int64 indices), at the same exit; this walk is unchanged."""
        rows_np = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        rows_np = rows_np.astype(np.int64, copy=False).reshape(-1)
        w = ExitWalk(self.stages, None)
        w.t = self.t
        idx = torch.from_numpy(rows_np).to(self.logits.device)
        w.carry = take(self.carry, idx)
        w.logits, w.pooled = self.logits.index_select(0, idx), self.pooled.index_select(0, idx)
        w.flops, w.actions = self.flops[rows_np].copy(), self.actions[rows_np].copy()
        return w

    @staticmethod
    def cat(walks: Sequence[ExitWalk]) -> ExitWalk:
        """Concatenate walks that stand at the same exit."""
        if len({w.t for w in walks}) != 1:
            raise ValueError(f"walks at different exits {[w.t for w in walks]} cannot be merged")
        if len(walks) == 1:
            return walks[0]
        w = ExitWalk(walks[0].stages, None)
        w.t = walks[0].t
        w.carry = tuple(torch.cat(parts) for parts in zip(*(x.carry for x in walks)))
        w.logits = torch.cat([x.logits for x in walks])
        w.pooled = torch.cat([x.pooled for x in walks])
        w.flops = np.concatenate([x.flops for x in walks])
        w.actions = np.concatenate([x.actions for x in walks])
        return w


class RoutedExits(NamedTuple):
    """What one routed early-exit pass gives.

    Attributes:
        logits: class scores ``[B, K]`` (the prediction of the exit each image left at).
        exits: int64 ``[B]`` (CPU): the exit each image left at.
        actions: int64 ``[B, T]`` (CPU): 1 for every stage continued, 0 at the exit taken, -1 after.
        flops: int64 ``[B]`` (CPU): FLOPs each image cost (stem, stages, exit heads evaluated).
        flops_ratio: float64 ``[B]`` (CPU): ``flops`` / FLOPs of the full network.
    """

    logits: torch.Tensor
    exits: torch.Tensor
    actions: torch.Tensor
    flops: torch.Tensor
    flops_ratio: torch.Tensor


def _as_exit_actions(actions, B: int) -> np.ndarray:
    """``actions`` as int64 ``[B]`` of 0 (exit) / 1 (continue), or a clear error."""
    if isinstance(actions, torch.Tensor):
        if actions.dtype.is_floating_point or actions.dtype == torch.bool or actions.dtype.is_complex:
            raise TypeError(f"actions must be integers in {{0, 1}}; got dtype {actions.dtype}")
        a = actions.detach().cpu().numpy()
    else:
        a = np.asarray(actions)
        if a.dtype.kind not in "iu":
            raise TypeError(f"actions must be integers in {{0, 1}}; got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False).reshape(-1)
    if a.shape[0] != B:
        raise ValueError(f"expected {B} actions (one per image), got {a.shape[0]}")
    bad = (a < 0) | (a > 1)
    if bad.any():
        raise ValueError(f"actions {a[bad].tolist()} are outside Discrete(2) (0 exits now, 1 continues)")
    return a


def run_exits(stages: Stages, images: torch.Tensor, choose) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Route ``images`` through ``stages``, asking ``choose(walk)`` (actions ``[len(walk)]``) at every exit.

    Returns ``(logits [B, K], flops int64 [B], exit int64 [B], actions int64 [B, T])`` in image order;
    ``actions`` holds ``-1`` after an image's exit.
    """
    walk = ExitWalk(stages, images)
    B = len(walk)
    order = np.arange(B)
    logits = walk.logits.new_zeros((B, walk.logits.shape[1]))
    flops = np.zeros(B, dtype=np.int64)
    exit_at = np.zeros(B, dtype=np.int64)
    actions = np.full((B, walk.T), -1, dtype=np.int64)
    while not walk.done and len(walk):
        acts_before = walk.actions
        gone = walk.step(choose(walk))
        rows = order[gone.rows]
        logits[torch.from_numpy(rows).to(logits.device)] = gone.logits
        flops[rows], exit_at[rows] = gone.flops, gone.exit
        actions[rows] = acts_before[gone.rows]
        order = np.delete(order, gone.rows)
    if len(walk):
        logits[torch.from_numpy(order).to(logits.device)] = walk.logits
        flops[order], exit_at[order], actions[order] = walk.flops, walk.t, walk.actions
    return logits, flops, exit_at, actions


def run_fixed_exits(stages: Stages, images: torch.Tensor, exits: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The raw early-exit pass with fixed per-image exits (no router): image ``i`` leaves at exit
    ``exits[i]`` (int ``[B]``, ``0 .. S - 1``), exactly as a router that chose those exits would make it.

    Returns ``(logits [B, K], flops int64 [B])`` in image order.
    """
    e = exits.detach().cpu().numpy() if isinstance(exits, torch.Tensor) else np.asarray(exits)
    S = stages.num_exits
    if e.ndim != 1 or e.shape[0] != images.shape[0] or e.dtype.kind not in "iu" or ((e < 0) | (e >= S)).any():
        shown = np.unique(e).tolist()[:8] if e.size else []
        raise ValueError(
            f"exits must be {images.shape[0]} integers in 0..{S - 1} (one exit per image); got shape {e.shape},"
            f" dtype {e.dtype}, values {shown}"
        )
    if e.shape[0] == 1:  # one image: the stages up to its exit, scalar bookkeeping (as a routed model's)
        p = next(stages.net.parameters(), None)
        x = images if p is None or images.dtype == p.dtype else images.to(p.dtype)
        costs, k = stages.costs, int(e[0])
        carry, logits, _ = stages.advance(0, stages.begin(x))
        for t in range(1, k + 1):
            carry, logits, _ = stages.advance(t, carry)
        return logits, np.array([costs.stem + costs.stages[: k + 1].sum() + costs.heads[: k + 1].sum()], dtype=np.int64)
    rows = [np.arange(e.shape[0])]  # the images still in the walk, in its order

    def choose(walk: ExitWalk) -> np.ndarray:
        a = (e[rows[0]] > walk.t).astype(np.int64)
        rows[0] = rows[0][a == 1]
        return a

    logits, flops, _, _ = run_exits(stages, images, choose)
    return logits, flops
