"""CIFAR-style ResNets (depth 6n + 2) whose blocks can be skipped (SkipNet) or narrowed (RNP)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import CostTable, DynamicNet, check_groups, conv_flops, linear_flops
from .layers import (
    KernelCache,
    SwitchableBatchNorm2d,
    bn_slots,
    conv_fast,
    conv_slots,
    fold_conv_bn,
    inference_layout,
    input_layout,
    sliced_bn,
    with_channels_last,
)

RESNET_DEPTHS = (8, 14, 20, 26, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with a parameter-free shortcut.

    ``bn2`` keeps statistics per inner width (channel mode narrows ``conv1``'s output).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = SwitchableBatchNorm2d(c_out, groups)

    @property
    def changes_shape(self) -> bool:
        return self.stride != 1 or self.c_in != self.c_out

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or (shape-changing blocks) stride-2 subsampling and zero channels appended."""
        if not self.changes_shape:
            return x
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))


class ResNet(DynamicNet):
    """CIFAR ResNet (He et al. 2016, option-A shortcuts): a 3x3 stem conv, three stages of ``n``
    basic blocks (``depth = 6n + 2``) with ``widths`` channels and strides 1, 2, 2, global average
    pooling and a linear head.

    **Skip mode** (SkipNet): the first block always runs (it belongs to the stem); every later block
    is a decision point — action 1 executes it, action 0 replaces it by its shortcut. For the two
    blocks that change shape (the first block of stages 2 and 3), skipping applies the shortcut
    alone: stride-2 subsampling and zero channels appended, which has no FLOPs, so the skipped
    block costs nothing. Skipped blocks are never computed.

    **Channel mode** (RNP inside blocks): every block is a decision point; action ``a`` computes
    only the first ``(a + 1) * width / groups`` channels of the block's first convolution, and the
    second convolution reads only those (its output, the residual stream, keeps full width).

    **Route mode** (both at once): every block is a decision point with ``groups + 1`` actions;
    action 0 skips the block (its shortcut alone, as in skip mode), action ``a >= 1`` runs it at
    the width of channel action ``a - 1``. The routes of the other two modes are route-mode routes:
    channel action ``a`` is route action ``a + 1``, and skip mode is route mode with the first
    block at full width and actions 0 / ``groups`` elsewhere.

    Args:
        in_shape: ``(C, H, W)`` of the input images.
        num_classes: classes of the linear head.
        groups: channel groups inside each block (must divide every width).
        depth: one of 8, 14, 20, 26, 32, 44, 56, 110 (any ``6n + 2``).
        widths: channels of the three stages.
        stem_stride: 1 for the CIFAR ResNet; 2 for the ``-lite`` variants (``resnet20-lite``, ...),
            whose stem convolution has stride 2 so every stage runs at half the resolution (about 4x
            fewer FLOPs: a CPU-sized backbone for 32x32 images).
    """

    modes = ("skip", "channel", "route")
    #: the decision kinds a backbone name without ``@mode`` is trained for (route decisions combine
    #: both; ``"ARCH@route"`` trains them)
    default_training_modes: tuple[str, ...] = ("skip", "channel")

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        groups: int = 4,
        depth: int = 20,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_stride: int = 1,
        arch: str | None = None,
    ) -> None:
        super().__init__(in_shape, num_classes, groups)
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth!r} is not a CIFAR ResNet depth 6n+2 >= 8, e.g. {list(RESNET_DEPTHS)}")
        self.depth = depth
        self.arch = arch or f"resnet{depth}"
        self.widths = tuple(int(w) for w in widths)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={stem_stride!r} must be 1 (CIFAR ResNet) or 2 (the '-lite' variants)")
        self.stem_stride = stem_stride
        check_groups(groups, self.widths, "stage")
        n = (depth - 2) // 6
        c, h, w = self.in_shape
        self.conv1 = nn.Conv2d(c, self.widths[0], 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        h, w = (h + stem_stride - 1) // stem_stride, (w + stem_stride - 1) // stem_stride
        self.stem_hw = (h, w)
        self.blocks = nn.ModuleList()
        self.block_out_hw: list[tuple[int, int]] = []
        c_in = self.widths[0]
        for stage, width in enumerate(self.widths):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                self.blocks.append(BasicBlock(c_in, width, stride, groups))
                h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
                self.block_out_hw.append((h, w))
                c_in = width
        self.fc = nn.Linear(self.widths[-1], num_classes)
        self._kernels = KernelCache()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def config(self) -> dict:
        return {"depth": self.depth, "widths": list(self.widths), "stem_stride": self.stem_stride}

    def _first_block(self, mode: str) -> int:
        self.check_mode(mode)
        return 1 if mode == "skip" else 0

    def feature_widths(self, mode: str) -> list[int]:
        first = self._first_block(mode)
        return [self.blocks[b].c_in for b in range(first, len(self.blocks))]

    def _block_flops(self, b: int, inner: int) -> int:
        blk = self.blocks[b]
        ho, wo = self.block_out_hw[b]
        return conv_flops(blk.c_in, inner, 3, ho, wo) + conv_flops(inner, blk.c_out, 3, ho, wo)

    def cost_table(self, mode: str) -> CostTable:
        first = self._first_block(mode)
        A = self.num_actions(mode)
        stem = conv_flops(self.in_shape[0], self.widths[0], 3, *self.stem_hw)
        if mode == "skip":
            stem += self._block_flops(0, self.blocks[0].c_out)
        T = len(self.blocks) - first
        steps = np.zeros((T, A, A), dtype=np.int64)
        for t in range(T):
            b = first + t
            for a in range(A):
                if mode == "route":
                    steps[t, :, a] = self._block_flops(b, self.channels(self.blocks[b].c_out, a - 1)) if a else 0
                    continue
                inner = self.blocks[b].c_out if mode == "skip" else self.channels(self.blocks[b].c_out, a)
                steps[t, :, a] = self._block_flops(b, inner) if (mode == "channel" or a == 1) else 0
        head = np.full(A, linear_flops(self.widths[-1], self.num_classes), dtype=np.int64)
        return CostTable(stem=stem, steps=steps, head=head)

    # -- compute -----------------------------------------------------------------------------
    def stem(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        first = self._first_block(mode)
        if self._fast():
            conv, bn = self.conv1, self.bn1
            kernel = self._kernels.get(
                ("stem",),
                lambda: with_channels_last(fold_conv_bn(conv, bn, x.shape[1], self.widths[0])),
                lambda: conv_slots(conv) + bn_slots(bn),
            )
            h = inference_layout(conv_fast(input_layout(x), kernel, self.stem_stride)).relu_()
        else:
            h = F.relu(self.bn1(self.conv1(x)))
        if first == 1:
            h = self.run_block(0, h, self.groups - 1)
        return h

    def run_block(self, b: int, x: torch.Tensor, width_action: int) -> torch.Tensor:
        """Block ``b`` on every sample of ``x`` with inner width ``width_action``."""
        blk = self.blocks[b]
        inner = self.channels(blk.c_out, width_action)
        sc = blk.shortcut(x)
        if self._fast():
            k1, k2 = self._kernels.get(
                (b, inner), lambda: self._fold_block(b, width_action), lambda: self._block_slots(b, width_action)
            )
            y = conv_fast(x, k1, blk.stride).relu_()
            y = conv_fast(y, k2)
            return y.add_(sc).relu_()
        y = F.conv2d(x, blk.conv1.weight[:inner], None, stride=blk.stride, padding=1)
        y = F.relu(sliced_bn(blk.bn1, y))
        y = F.conv2d(y, blk.conv2.weight[:, :inner], None, padding=1)
        y = blk.bn2(y, width_action)
        return F.relu(y + sc)

    def _fold_block(self, b: int, width_action: int):
        blk = self.blocks[b]
        inner = self.channels(blk.c_out, width_action)
        return (
            with_channels_last(fold_conv_bn(blk.conv1, blk.bn1, blk.c_in, inner)),
            with_channels_last(fold_conv_bn(blk.conv2, blk.bn2.bns[width_action], inner, blk.c_out)),
        )

    def _block_slots(self, b: int, width_action: int) -> list:
        blk = self.blocks[b]
        return conv_slots(blk.conv1) + bn_slots(blk.bn1) + conv_slots(blk.conv2) + bn_slots(blk.bn2.bns[width_action])

    def decision(self, mode: str, t: int, h: torch.Tensor, prev_action: int, action: int) -> torch.Tensor:
        b = self._first_block(mode) + t
        if mode == "skip":
            return self.run_block(b, h, self.groups - 1) if action == 1 else self.blocks[b].shortcut(h)
        if mode == "route":
            return self.run_block(b, h, action - 1) if action else self.blocks[b].shortcut(h)
        return self.run_block(b, h, action)

    def decision_uses_prev(self, mode: str) -> bool:
        self.check_mode(mode)
        return False  # a block's work depends on its own action only; the head on none

    def skip_output(self, t: int, h: torch.Tensor) -> torch.Tensor:
        """What decision point ``t`` (skip mode) leaves for samples that skip it."""
        return self.blocks[1 + t].shortcut(h)

    def head(self, h: torch.Tensor, mode: str, last_action: int) -> torch.Tensor:
        return self.fc(h.mean(dim=(2, 3)))
