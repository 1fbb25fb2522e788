"""Early-exit stages: a sequence of stages, each ending in a classifier (an *exit*).

Two kinds, one interface (:class:`Stages`):

* :class:`WidthStages` — a cascade on a slimmable channel backbone (``"vgg+sandwich+distill"``):
  stage ``k`` is a whole pass of the network at width ``widths[k]`` ending in the network's own
  head at that width. What is the same in every pass is computed once: the stem (always at full
  width) and, on a plain VGG, the channels of the first decision layer that earlier passes already
  computed (that layer reads the full stem and normalises with the statistics of a full input in
  every pass, so its leading channels are identical; a wider pass computes only the new ones).
* :class:`DepthStages` over an :class:`ExitResNet` — BranchyNet / MSDNet-style exit heads after
  chosen residual blocks; stage ``k`` runs the blocks up to exit ``k`` and that exit's head.

A stage is computed for a whole batch at once (every image in it took the same path so far);
which images go on is decided one floor up (:mod:`dyncnn_gym.exit_walk`). Costs are FLOPs as
:class:`torch.utils.flop_counter.FlopCounterMode` counts them (see :mod:`dyncnn_gym.models.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import DynamicNet, conv_flops, linear_flops
from .layers import KernelCache, bn_slots, conv_fast, conv_slots, fold_conv_bn, max_pool2x2, with_channels_last
from .resnet import ResNet
from .vgg import ChannelVGG

#: what a stage hands to the next: tensors whose first dimension is the batch
Carry = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ExitCostTable:
    """Exact FLOPs of a cascade of ``S`` stages.

    Attributes:
        stem: FLOPs computed once before stage 0 (per image).
        stages: int64 ``[S]``; ``stages[k]`` = FLOPs of stage ``k`` after stages ``0..k-1`` ran.
        heads: int64 ``[S]``; ``heads[k]`` = FLOPs of exit ``k``'s classifier.
        full: FLOPs of the plain full network (no intermediate exits): the reference of every
            ``flops_ratio``. A route through every stage may cost more than it (intermediate heads,
            and for width stages the narrower passes).
    """

    stem: int
    stages: np.ndarray
    heads: np.ndarray
    full: int

    @property
    def num_exits(self) -> int:
        return int(self.stages.shape[0])

    def exit_flops(self, k: int) -> int:
        """FLOPs of an image that leaves at exit ``k`` (every exit up to ``k`` evaluated)."""
        return int(self.stem + self.stages[: k + 1].sum() + self.heads[: k + 1].sum())

    def all_exit_flops(self) -> np.ndarray:
        """int64 ``[S]``: :meth:`exit_flops` of every exit."""
        return self.stem + np.cumsum(self.stages + self.heads)


class Stages:
    """A cascade of stages with exits over a backbone ``net`` (whose weights it uses, not copies).

    Subclasses define :meth:`begin`, :meth:`advance`, :attr:`costs` and :attr:`feature_widths`.
    """

    kind: str = ""
    net: DynamicNet

    @property
    def num_exits(self) -> int:
        return self.costs.num_exits

    @property
    def costs(self) -> ExitCostTable:
        raise NotImplementedError

    @property
    def feature_widths(self) -> list[int]:
        """Channels of the pooled features each exit reads (the observation's features)."""
        raise NotImplementedError

    def begin(self, x: torch.Tensor) -> Carry:
        """The stem on images ``x [B, C, H, W]``."""
        raise NotImplementedError

    def advance(self, k: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        """Stage ``k`` and its exit on every sample of ``carry``: ``(carry for stage k + 1, logits
        [B, K], pooled features [B, feature_widths[k]])``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the stages are (saved with exported models)."""
        raise NotImplementedError


def take(carry: Carry, rows: torch.Tensor) -> Carry:
    """The samples ``rows`` (int64 indices on the carry's device) of ``carry``."""
    return tuple(_rows(t, rows) for t in carry)


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


# -- width stages ------------------------------------------------------------------------------------
class WidthStages(Stages):
    """A confidence cascade on a channel backbone: stage ``k`` is a full pass at width ``widths[k]``.

    Args:
        net: a backbone with ``"channel"`` decisions (any ``DynChannel-v0`` backbone).
        widths: strictly increasing channel actions, one per stage (``0`` = 1/groups of every
            layer, ``groups - 1`` = full width), e.g. ``(0, 3)``: the narrowest network, then the
            full one.

    Reuse: the stem runs once; on a :class:`~dyncnn_gym.models.vgg.ChannelVGG`, stage ``k`` computes
    only the channels ``c(widths[k-1])..c(widths[k])`` of the first decision layer and appends them
    to those earlier stages computed. Everything after it depends on the pass's width (its input
    and its batch-norm statistics change) and is computed again.
    """

    kind = "width"

    def __init__(self, net: DynamicNet, widths: tuple[int, ...]) -> None:
        net.check_mode("channel")
        A = net.num_actions("channel")
        widths = tuple(widths)
        if (
            len(widths) < 2
            or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in widths)
            or any(not 0 <= w < A for w in widths)
            or any(b <= a for a, b in zip(widths[:-1], widths[1:]))
        ):
            raise ValueError(
                f"widths={widths!r} must be at least two strictly increasing channel actions in 0..{A - 1}"
                f" (0 = 1/{A} of every layer, {A - 1} = full width), e.g. (0, {A - 1})"
            )
        self.net, self.widths = net, tuple(int(w) for w in widths)
        self.A = A
        self.T = net.num_decisions("channel")
        self.reuse = isinstance(net, ChannelVGG)
        self._kernels = KernelCache()
        self._costs = self._cost_table()

    def describe(self) -> dict:
        return {"kind": self.kind, "widths": list(self.widths)}

    @property
    def costs(self) -> ExitCostTable:
        return self._costs

    @property
    def feature_widths(self) -> list[int]:
        net = self.net
        if isinstance(net, ChannelVGG):  # the head reads the channels the pass computed
            return [net.channels(net.widths[-1], w) for w in self.widths]
        return [int(net.widths[-1]) for _ in self.widths]  # a ResNet's residual stream keeps its full width

    def _cost_table(self) -> ExitCostTable:
        table = self.net.cost_table("channel")
        a_max = self.A - 1
        stages, heads = [], []
        done = -1  # width action whose first-layer channels are computed already (-1: none)
        for w in self.widths:
            first = int(table.steps[0, a_max, w])
            if self.reuse and done >= 0:
                first -= int(table.steps[0, a_max, done])  # conv FLOPs are linear in the output channels
            rest = sum(int(table.steps[t, w, w]) for t in range(1, self.T))
            stages.append(first + rest)
            heads.append(int(table.head[w]))
            done = w
        return ExitCostTable(
            int(table.stem), np.array(stages, dtype=np.int64), np.array(heads, dtype=np.int64), int(table.full)
        )

    def begin(self, x: torch.Tensor) -> Carry:
        h = self.net.stem(x, "channel")
        if not self.reuse:
            return (h,)
        return (h, h.new_zeros((h.shape[0], 0, *self.net.spatial[1])))

    def advance(self, k: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        net, w, a_max = self.net, self.widths[k], self.A - 1
        if self.reuse:
            stem, first = carry
            c0, c1 = first.shape[1], net.channels(net.widths[1], w)
            first = torch.cat([first, self._first_layer(stem, c0, c1)], 1) if c0 else self._first_layer(stem, 0, c1)
            h, start, nxt = first, 1, (stem, first)
        else:
            h, start, nxt = carry[0], 0, carry
        for t in range(start, self.T):
            h = net.decision("channel", t, h, a_max if t == 0 else w, w)
        logits = net.head(h, "channel", w)
        if k == len(self.widths) - 1:
            nxt = ()
        return nxt, logits, h.mean(dim=(2, 3))

    def _first_layer(self, stem: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """Output channels ``c0..c1`` of the VGG's layer 1 (decision 0) on the full stem."""
        net = self.net
        conv, bn = net.convs[1], net.bns[1].bns[self.A - 1]  # statistics of a full-width input
        pools = 1 in net.pool_after
        if net._fast():

            def make():
                w, b = fold_conv_bn(conv, bn, conv.weight.shape[1], c1)
                return with_channels_last((w[c0:].contiguous(), b[c0:].contiguous()))

            kernel = self._kernels.get((c0, c1), make, lambda: conv_slots(conv) + bn_slots(bn))
            y = conv_fast(stem, kernel)
            return max_pool2x2(y).relu_() if pools else y.relu_()
        y = F.conv2d(stem, conv.weight[c0:c1], None, padding=1)
        y = F.batch_norm(
            y, bn.running_mean[c0:c1], bn.running_var[c0:c1], bn.weight[c0:c1], bn.bias[c0:c1], False, 0.0, bn.eps
        )
        y = F.relu(y)
        return F.max_pool2d(y, 2) if pools else y


# -- depth stages: a ResNet with exit heads ------------------------------------------------------------
class ExitHead(nn.Module):
    """An intermediate classifier (MSDNet-style): 3x3 convolutions with batch-norm and ReLU, each of
    stride 2 with twice the channels while the map is at least 8x8 (at most ``convs`` of them; a
    single stride-1 convolution on a smaller map), then global average pooling and a linear layer."""

    def __init__(self, c_in: int, hw: tuple[int, int], num_classes: int, convs: int = 2) -> None:
        super().__init__()
        if not isinstance(convs, int) or isinstance(convs, bool) or convs < 1:
            raise ValueError(f"head_convs={convs!r} must be a positive integer")
        self.c_in = c_in
        self.layers: list[tuple[int, int, int, tuple[int, int]]] = []  # (c_in, c_out, stride, output size)
        c, h, w = c_in, hw[0], hw[1]
        for i in range(convs):
            stride = 2 if min(h, w) >= 8 else 1
            if stride == 1 and i > 0:
                break
            h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
            self.layers.append((c, c * stride, stride, (h, w)))
            c = c * stride
        self.c_out = c
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1, bias=False) for a, b, s, _ in self.layers)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _, _ in self.layers)
        self.fc = nn.Linear(self.c_out, num_classes)
        self._kernels = KernelCache()

    def flops(self) -> int:
        convs = sum(conv_flops(a, b, 3, *hw) for a, b, _, hw in self.layers)
        return convs + linear_flops(self.c_out, self.fc.out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        fast = not self.training and not torch.is_grad_enabled()
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            a, b, stride, _ = self.layers[i]
            if fast:
                kernel = self._kernels.get(
                    i,
                    lambda conv=conv, bn=bn, a=a, b=b: with_channels_last(fold_conv_bn(conv, bn, a, b)),
                    lambda conv=conv, bn=bn: conv_slots(conv) + bn_slots(bn),
                )
                h = conv_fast(h, kernel, stride).relu_()
            else:
                h = F.relu(bn(conv(h)))
        return self.fc(h.mean(dim=(2, 3)))


def default_exit_blocks(depth: int) -> tuple[int, ...]:
    """Blocks followed by an intermediate exit in an :class:`ExitResNet` of ``depth`` by default:
    the middle and the last block of the first two stages (``n = (depth - 2) / 6`` blocks each),
    e.g. blocks 1, 2, 4, 5 of a ResNet-20 (after 24, 36, 56 and 68 % of its FLOPs; leaving there,
    exit heads included, costs 30, 48, 71 and 85 %); the last block of the third stage is followed
    by the network's own head, the final exit. Exits in the third stage would save little, and the
    first block alone (12 %) reads too little of the image to classify it."""
    n = (depth - 2) // 6
    return tuple(sorted({s * n + (n - 1) // 2 for s in range(2)} | {s * n + n - 1 for s in range(2)}))


class ExitResNet(ResNet):
    """A CIFAR ResNet (:class:`~dyncnn_gym.models.resnet.ResNet`) with an :class:`ExitHead` after
    each block of ``exits``; the network's own head (pooling + linear) after the last block is the
    final exit. Its only mode is ``"exit"`` (``DynExit-v0`` with ``stages="depth"``).

    Args (beyond :class:`~dyncnn_gym.models.resnet.ResNet`'s):
        exits: indices of the blocks followed by an intermediate exit (strictly increasing, each
            before the last block); ``None`` = :func:`default_exit_blocks`.
        head_convs: at most this many stride-2 convolutions in each exit head (:class:`ExitHead`).
    """

    modes = ("exit",)
    default_training_modes = ("exit",)

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        groups: int = 4,
        depth: int = 20,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_stride: int = 1,
        exits: tuple[int, ...] | None = None,
        head_convs: int = 2,
        arch: str | None = None,
    ) -> None:
        super().__init__(in_shape, num_classes, groups, depth, widths, stem_stride, arch)
        exits = default_exit_blocks(depth) if exits is None else tuple(int(b) for b in exits)
        last = len(self.blocks) - 1
        if not exits or any(not 0 <= b < last for b in exits) or any(b <= a for a, b in zip(exits[:-1], exits[1:])):
            raise ValueError(
                f"exits={exits!r} must be strictly increasing block indices in 0..{last - 1} (the last block,"
                f" {last}, is followed by the final head)"
            )
        self.exits, self.head_convs = exits, head_convs
        self.exit_heads = nn.ModuleList(
            ExitHead(self.blocks[b].c_out, self.block_out_hw[b], num_classes, head_convs) for b in exits
        )
        for m in self.exit_heads.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def config(self) -> dict:
        return {**super().config(), "exits": list(self.exits), "head_convs": self.head_convs}

    @property
    def num_exits(self) -> int:
        return len(self.exits) + 1

    def stage_blocks(self, k: int) -> range:
        """The blocks of stage ``k``."""
        ends = [*self.exits, len(self.blocks) - 1]
        return range(0 if k == 0 else ends[k - 1] + 1, ends[k] + 1)

    def plain_flops(self) -> int:
        """FLOPs of the plain network (every block, the final head, no intermediate exit)."""
        stem = conv_flops(self.in_shape[0], self.widths[0], 3, *self.stem_hw)
        blocks = sum(self._block_flops(b, self.blocks[b].c_out) for b in range(len(self.blocks)))
        return stem + blocks + linear_flops(self.widths[-1], self.num_classes)

    def stem_only(self, x: torch.Tensor) -> torch.Tensor:
        """The stem convolution (no block)."""
        return ResNet.stem(self, x, "channel")  # channel mode: the first block is not part of the stem

    def check_mode(self, mode: str) -> None:
        if mode != "exit":
            raise ValueError(f"mode={mode!r} is not supported by backbone {self.arch!r}; it supports ['exit']")

    def _first_block(self, mode: str) -> int:
        return 0

    def cost_table(self, mode: str):
        raise ValueError(
            f"backbone {self.arch!r} has exits, not per-decision routes: its costs are those of"
            " dyncnn_gym.models.exits.DepthStages (DynExit-v0 with stages='depth')"
        )

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, ``S`` tensors ``[B, K]`` (training: every block and head runs)."""
        h = self.stem_only(x)
        out = []
        for k in range(self.num_exits):
            for b in self.stage_blocks(k):
                h = self.run_block(b, h, self.groups - 1)
            out.append(self.exit_heads[k](h) if k < len(self.exits) else self.fc(h.mean(dim=(2, 3))))
        return out

    def exit_forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits ``[B, K]`` of exit ``k`` computed as a static network: the stem, the blocks up to
        exit ``k`` and its head, no earlier exit head (the truncated network every image leaves at
        ``k``; FLOPs :meth:`exit_network_flops`)."""
        if not 0 <= k < self.num_exits:
            raise ValueError(f"k={k!r} is not an exit of {self.arch!r}; choose one of 0..{self.num_exits - 1}")
        h = self.stem_only(x)
        for b in range(self.stage_blocks(k)[-1] + 1):
            h = self.run_block(b, h, self.groups - 1)
        return self.exit_heads[k](h) if k < len(self.exits) else self.fc(h.mean(dim=(2, 3)))

    def exit_network_flops(self, k: int) -> int:
        """FLOPs of :meth:`exit_forward` at exit ``k`` (the stem, the blocks up to it, its head only)."""
        stem = conv_flops(self.in_shape[0], self.widths[0], 3, *self.stem_hw)
        blocks = sum(self._block_flops(b, self.blocks[b].c_out) for b in range(self.stage_blocks(k)[-1] + 1))
        head = self.exit_heads[k].flops() if k < len(self.exits) else linear_flops(self.widths[-1], self.num_classes)
        return stem + blocks + head

    def full_forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        return self.all_exits(x)[-1] if self.training or torch.is_grad_enabled() else self._plain(x)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_only(x)
        for b in range(len(self.blocks)):
            h = self.run_block(b, h, self.groups - 1)
        return self.fc(h.mean(dim=(2, 3)))


class DepthStages(Stages):
    """The stages of an :class:`ExitResNet`: stage ``k`` runs the blocks up to exit ``k`` and its head."""

    kind = "depth"

    def __init__(self, net: ExitResNet) -> None:
        if not isinstance(net, ExitResNet):
            raise TypeError(
                f"depth stages need a ResNet with exit heads (an ExitResNet, arch 'resnetD-exits' or"
                f" 'resnetD-lite-exits'); got {type(net).__name__} {getattr(net, 'arch', '?')!r}"
            )
        self.net = net
        stem = conv_flops(net.in_shape[0], net.widths[0], 3, *net.stem_hw)
        stages = [sum(net._block_flops(b, net.blocks[b].c_out) for b in net.stage_blocks(k)) for k in range(net.num_exits)]
        heads = [h.flops() for h in net.exit_heads] + [linear_flops(net.widths[-1], net.num_classes)]
        self._costs = ExitCostTable(stem, np.array(stages, dtype=np.int64), np.array(heads, dtype=np.int64), net.plain_flops())

    def describe(self) -> dict:
        return {"kind": self.kind, "exits": list(self.net.exits)}

    @property
    def costs(self) -> ExitCostTable:
        return self._costs

    @property
    def feature_widths(self) -> list[int]:
        net = self.net
        return [net.blocks[list(net.stage_blocks(k))[-1]].c_out for k in range(net.num_exits)]

    def begin(self, x: torch.Tensor) -> Carry:
        return (self.net.stem_only(x),)

    def advance(self, k: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        net = self.net
        h = carry[0]
        for b in net.stage_blocks(k):
            h = net.run_block(b, h, net.groups - 1)
        pooled = h.mean(dim=(2, 3))
        logits = net.exit_heads[k](h) if k < len(net.exits) else net.fc(pooled)
        return ((h,) if k < net.num_exits - 1 else ()), logits, pooled


#: ``stages=`` kinds of ``DynExit-v0``
STAGE_KINDS = ("width", "depth")


def make_stages(net: DynamicNet, kind: str, widths: tuple[int, ...] | None = None) -> Stages:
    """The :class:`Stages` of ``kind`` (``"width"`` with ``widths``, or ``"depth"``) over ``net``."""
    if kind == "width":
        A = net.num_actions("channel")
        return WidthStages(net, (0, A - 1) if widths is None else widths)
    if kind == "depth":
        if widths is not None:
            raise ValueError(f"widths={widths!r} applies to width stages only; depth stages are set by the backbone's exits")
        return DepthStages(net)  # type: ignore[arg-type]
    raise ValueError(f"stages={kind!r} is not a kind of stages; choose one of {list(STAGE_KINDS)}")
