"""What every dynamic backbone exposes: decision points, exact cost tables, and per-group compute.

A dynamic backbone is a CNN with *decision points*. Its forward pass is split into

* ``stem(x, mode)`` — always computed;
* ``decision(mode, t, h, prev_action, action)`` — decision point ``t`` computed for a batch in
  which every sample chose the same ``action`` (and had the same ``prev_action``). It computes
  only what that action asks for: pruned channel groups and skipped blocks are never touched;
* ``head(h, last_action)`` — pooling and the classifier.

Per-sample routing (grouping a mixed batch by action, gather/scatter) lives one floor up, in
:mod:`dyncnn_gym.walk`. Networks and cost tables live here; no training loops.

Modes:

* ``"channel"`` (RNP, width): every decision picks how many of ``groups`` equal channel groups to
  compute; action ``a`` computes groups ``0..a``.
* ``"skip"`` (SkipNet, depth): every decision executes (1) or skips (0) a residual block.
* ``"route"`` (width and depth at once, ResNets): every residual block is a decision with
  ``groups + 1`` actions: 0 skips the block, ``a >= 1`` runs it with ``a`` of ``groups`` channel groups.

Costs are **FLOPs as counted by** :class:`torch.utils.flop_counter.FlopCounterMode`: two per
multiply-accumulate of every convolution and linear layer actually run. Batch-norm (folded into
the convolutions at inference), ReLU, pooling, residual additions and the agent's own observation
and policy are not counted.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

MODES = ("channel", "skip", "route")

#: per network, what its structure determines (cost tables, decision counts, feature widths), made
#: on first use: a network's structure does not change once built
_STRUCTURE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def structure_cache(net: nn.Module) -> dict:
    """``net``'s entry of the structure cache (a dict to fill), made on first use."""
    entry = _STRUCTURE.get(net)
    if entry is None:
        entry = _STRUCTURE[net] = {}
    return entry


def first_parameter(net: nn.Module) -> torch.Tensor | None:
    """``net``'s first parameter (``None`` without parameters), as ``next(net.parameters())``. Where
    it lives is cached (``next(net.parameters())`` walks the module tree, some 6 us) and checked to
    still be registered there at every call, so a cast or a move of ``net`` (or of any module in it,
    or ``load_state_dict(..., assign=True)``) is seen at once."""
    per_net = structure_cache(net)
    hit = per_net.get("param0")  # (submodule or None for net itself: the cache must not hold net, name, parameter)
    if hit is not None and (net if hit[0] is None else hit[0])._parameters.get(hit[1]) is hit[2]:
        return hit[2]
    for module in net.modules():
        name = next((n for n, p in module._parameters.items() if p is not None), None)
        if name is not None:
            per_net["param0"] = (None if module is net else module, name, module._parameters[name])
            return module._parameters[name]
    return None


def param_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s first parameter (float32 without parameters; :func:`first_parameter`)."""
    p = first_parameter(net)
    return torch.float32 if p is None else p.dtype


@dataclass(frozen=True)
class CostTable:
    """Exact FLOPs of one backbone in one mode.

    Attributes:
        stem: FLOPs of the stem (per image).
        steps: int64 ``[T, A, A]``; ``steps[t, p, a]`` is the FLOPs of decision point ``t`` when the
            previous decision was ``p`` and this one is ``a`` (for ``t = 0`` the previous action is
            taken to be ``A - 1``, the stem being full). Where the cost does not depend on ``p`` the
            table repeats along that axis.
        head: int64 ``[A]``; FLOPs of the head given the last action.
    """

    stem: int
    steps: np.ndarray
    head: np.ndarray

    @property
    def num_decisions(self) -> int:
        return int(self.steps.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.steps.shape[2])

    @property
    def full(self) -> int:
        """FLOPs of the full network (every decision at its largest action)."""
        return int(self.path_flops([self.num_actions - 1] * self.num_decisions))

    def path_flops(self, actions) -> int:
        """FLOPs of one image that took ``actions`` (length ``T``)."""
        a_max = self.num_actions - 1
        total, prev = self.stem, a_max
        for t, a in enumerate(actions):
            total += int(self.steps[t, prev, int(a)])
            prev = int(a)
        return int(total + self.head[prev])

    def min_to_go(self) -> np.ndarray:
        """int64 ``[T + 1, A]``: least FLOPs still to spend from decision ``t`` given previous action.

        ``min_to_go()[t, p]`` = min over the remaining actions of decisions ``t..T-1`` plus the head.
        Used to mask actions that would break a compute budget.
        """
        T, A = self.num_decisions, self.num_actions
        m = np.zeros((T + 1, A), dtype=np.int64)
        m[T] = self.head
        for t in range(T - 1, -1, -1):
            m[t] = (self.steps[t] + m[t + 1][None, :]).min(axis=1)
        return m


def check_groups(groups: int, widths: Sequence[int], what: str) -> None:
    """Raise a ``ValueError`` naming the valid choices unless ``groups`` divides every width."""
    bad = sorted({int(w) for w in widths if int(w) % groups})
    if bad:
        g = int(np.gcd.reduce([int(w) for w in widths]))
        valid = [d for d in range(2, g + 1) if g % d == 0]
        choice = f"choose one of {valid}" if valid else "no number of groups >= 2 divides them all"
        raise ValueError(f"groups={groups} does not divide the {what} widths {bad} (widths {tuple(widths)}); {choice}")


def conv_flops(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> int:
    """FLOPs of a dense ``k x k`` convolution producing a ``c_out x h_out x w_out`` map."""
    return 2 * c_in * c_out * k * k * h_out * w_out


def linear_flops(f_in: int, f_out: int) -> int:
    """FLOPs of a linear layer (per sample)."""
    return 2 * f_in * f_out


class DynamicNet(nn.Module):
    """Base class of dynamic backbones. Subclasses fill in the abstract methods below."""

    modes: ClassVar[tuple[str, ...]] = ()
    arch: str = "?"

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, groups: int) -> None:
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups={groups!r} must be a positive integer (e.g. 2, 4 or 8)")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} must be at least 2")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_classes = int(num_classes)
        self.groups = groups

    # -- description -------------------------------------------------------------------------
    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not supported by backbone {self.arch!r}; it supports {list(self.modes)}")

    def num_actions(self, mode: str) -> int:
        self.check_mode(mode)
        return {"channel": self.groups, "route": self.groups + 1}.get(mode, 2)

    def num_decisions(self, mode: str) -> int:
        """Decision points in ``mode``, read off the cost table once per network and mode (building
        the table takes 0.1-1 ms, longer than a batch-1 forward's convolutions on small networks)."""
        cache = structure_cache(self)
        T = cache.get(("decisions", mode))
        if T is None:
            T = cache[("decisions", mode)] = self.cost_table(mode).num_decisions
        return T

    def feature_widths(self, mode: str) -> list[int]:
        """Channels of the (full) feature map entering each decision point."""
        raise NotImplementedError

    def cost_table(self, mode: str) -> CostTable:
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor keyword arguments that rebuild this network (saved in checkpoints)."""
        raise NotImplementedError

    # -- compute -----------------------------------------------------------------------------
    def stem(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        raise NotImplementedError

    def decision(self, mode: str, t: int, h: torch.Tensor, prev_action: int, action: int) -> torch.Tensor:
        """Decision point ``t`` for a batch whose samples all chose ``action`` after ``prev_action``.

        ``h`` holds at least the channels the previous action kept (channel mode). Returns the
        feature map leaving the decision point; in channel mode on a plain CNN it has only the
        computed channels (``(action + 1) * width / groups``), the rest being implicitly zero.
        """
        raise NotImplementedError

    def output_channels(self, mode: str, t: int, action: int) -> int | None:
        """Channels of the feature map leaving decision ``t`` after ``action`` (``None``: all of them).

        Where actions narrow the output (a plain CNN in channel mode: the next decision reads only
        these channels), the walk may compute a cheaper action's rows at a costlier action's width
        and keep this many channels."""
        return None

    def head(self, h: torch.Tensor, mode: str, last_action: int) -> torch.Tensor:
        raise NotImplementedError

    def decision_uses_prev(self, mode: str) -> bool:
        """Whether ``decision`` (and ``head``) depend on the previous action in ``mode``.

        When they do not, the walk need not keep samples apart by their previous action.
        """
        return True

    def input_channels(self, mode: str, t: int, prev_action: int) -> int | None:
        """Leading channels of ``h`` that decision ``t`` reads after ``prev_action`` (``None``: all).

        The walk gathers only these when it regroups a mixed batch.
        """
        return None

    # -- helpers -------------------------------------------------------------------------------
    def channels(self, width: int, action: int) -> int:
        """Channels computed out of ``width`` when ``action`` (0-based) groups are kept."""
        return (action + 1) * (width // self.groups)

    def _fast(self) -> bool:
        """True when the folded, cached inference kernels may be used (eval mode, no autograd)."""
        return (not self.training) and not torch.is_grad_enabled()

    def full_forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Plain forward pass of the full network (every decision at its largest action)."""
        mode = mode or self.modes[0]
        a_max = self.num_actions(mode) - 1
        return self.static_forward(x, mode, [a_max] * self.num_decisions(mode))

    def static_forward(self, x: torch.Tensor, mode: str, route: Sequence[int]) -> torch.Tensor:
        """Logits ``[B, classes]`` of the slim network one static route defines (every sample takes
        action ``route[t]`` at decision ``t``): the stem, one call per decision, the head; no walk
        and no per-sample bookkeeping (a shipped static network; its FLOPs are
        ``cost_table(mode).path_flops(route)``)."""
        h = self.stem(x, mode)
        prev = self.num_actions(mode) - 1
        for t, a in enumerate(route):
            h = self.decision(mode, t, h, prev, int(a))
            prev = int(a)
        return self.head(h, mode, prev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the full network
        return self.full_forward(x)
