"""VGG-style plain CNN whose conv layers compute a chosen number of channel groups (RNP)."""

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
    max_pool2x2,
    with_channels_last,
)

#: name -> (widths, indices of the layers followed by 2x2 max-pooling)
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "vgg": ((16, 32, 64, 64, 128, 128), (0, 1, 3)),
    "vgg8": ((64, 64, 128, 128, 256, 256, 512, 512), (1, 3, 5, 7)),
    "vgg11": ((64, 128, 256, 256, 512, 512, 512, 512), (0, 1, 3, 5, 7)),
    "vgg16": ((64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512), (1, 3, 6, 9, 12)),
}


class ChannelVGG(DynamicNet):
    """Plain CNN of 3x3 conv + BN + ReLU layers (+ 2x2 max-pool), global average pool, linear head.

    Layer 0 is the stem and always runs at full width. Each later layer ``l`` is decision point
    ``t = l - 1``: action ``a`` computes only the first ``(a + 1) * widths[l] / groups`` output
    channels, and the next layer reads only those. Batch-norm statistics are kept per input width
    (:class:`SwitchableBatchNorm2d`). The head reads only the channels the last decision kept.

    Args:
        in_shape: ``(C, H, W)`` of the input images.
        num_classes: classes of the linear head.
        groups: channel groups per layer (every width must be divisible by it).
        widths: output channels of each conv layer.
        pool_after: indices of the layers followed by 2x2 max-pooling.
    """

    modes = ("channel",)

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        groups: int = 4,
        widths: tuple[int, ...] = VGG_CONFIGS["vgg"][0],
        pool_after: tuple[int, ...] = VGG_CONFIGS["vgg"][1],
        arch: str = "vgg",
    ) -> None:
        super().__init__(in_shape, num_classes, groups)
        self.arch = arch
        self.widths = tuple(int(w) for w in widths)
        self.pool_after = tuple(int(p) for p in pool_after)
        if len(self.widths) < 2:
            raise ValueError(f"widths={widths!r} needs at least two layers (a stem and a decision point)")
        check_groups(groups, self.widths, "layer")
        c, h, w = self.in_shape
        self.spatial: list[tuple[int, int]] = []  # output size of each layer (after its pooling)
        for i in range(len(self.widths)):
            if i in self.pool_after:
                if h < 2 or w < 2:
                    raise ValueError(
                        f"input {self.in_shape[1]}x{self.in_shape[2]} is too small for arch {arch!r} "
                        f"({len(self.pool_after)} poolings); use a shallower arch such as 'vgg'"
                    )
                h, w = h // 2, w // 2
            self.spatial.append((h, w))
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i, width in enumerate(self.widths):
            c_in = c if i == 0 else self.widths[i - 1]
            self.convs.append(nn.Conv2d(c_in, width, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(width) if i == 0 else SwitchableBatchNorm2d(width, groups))
        self.fc = nn.Linear(self.widths[-1], num_classes)
        self._kernels = KernelCache()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def config(self) -> dict:
        return {"widths": list(self.widths), "pool_after": list(self.pool_after)}

    def feature_widths(self, mode: str) -> list[int]:
        self.check_mode(mode)
        return list(self.widths[:-1])

    def cost_table(self, mode: str) -> CostTable:
        self.check_mode(mode)
        A, L = self.groups, len(self.widths)
        h0, w0 = self._conv_out_size(0)
        stem = conv_flops(self.in_shape[0], self.widths[0], 3, h0, w0)
        steps = np.zeros((L - 1, A, A), dtype=np.int64)
        for t in range(L - 1):
            layer = t + 1
            ho, wo = self._conv_out_size(layer)
            for p in range(A):
                for a in range(A):
                    steps[t, p, a] = conv_flops(
                        self.channels(self.widths[layer - 1], p), self.channels(self.widths[layer], a), 3, ho, wo
                    )
        head = np.array([linear_flops(self.channels(self.widths[-1], a), self.num_classes) for a in range(A)], dtype=np.int64)
        return CostTable(stem=stem, steps=steps, head=head)

    def _conv_out_size(self, layer: int) -> tuple[int, int]:
        """Spatial size the conv of ``layer`` computes at (its input size; padding 1, stride 1)."""
        return (self.in_shape[1], self.in_shape[2]) if layer == 0 else self.spatial[layer - 1]

    # -- compute -----------------------------------------------------------------------------
    def _post(self, layer: int, y: torch.Tensor) -> torch.Tensor:
        y = F.relu(y)
        return F.max_pool2d(y, 2) if layer in self.pool_after else y

    @staticmethod
    def _post_fast(layer_pools: bool, y: torch.Tensor) -> torch.Tensor:
        """ReLU and pooling at inference: pool first (max-pooling and ReLU commute), then ReLU in
        place on the pooled map (a quarter of the memory traffic)."""
        return max_pool2x2(y).relu_() if layer_pools else y.relu_()

    def _folded(self, layer: int, prev_action: int, action: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached folded kernel of conv ``layer`` for ``prev_action -> action`` (the stem: ``-1, -1``):
        ``(weight, bias, weight in channels-last layout)``."""

        def parts():
            conv = self.convs[layer]
            bn = self.bns[0] if layer == 0 else self.bns[layer].bns[prev_action]
            return conv, bn

        def make():
            conv, bn = parts()
            c_in = self.in_shape[0] if layer == 0 else self.channels(self.widths[layer - 1], prev_action)
            c_out = self.widths[0] if layer == 0 else self.channels(self.widths[layer], action)
            return with_channels_last(fold_conv_bn(conv, bn, c_in, c_out))

        def sources():
            conv, bn = parts()
            return conv_slots(conv) + bn_slots(bn)

        return self._kernels.get((layer, prev_action, action), make, sources)

    def stem(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        self.check_mode(mode)
        if self._fast():
            y = inference_layout(conv_fast(input_layout(x), self._folded(0, -1, -1)))
            return self._post_fast(0 in self.pool_after, y)
        return self._post(0, self.bns[0](self.convs[0](x)))

    def decision(self, mode: str, t: int, h: torch.Tensor, prev_action: int, action: int) -> torch.Tensor:
        layer = t + 1
        c_in = self.channels(self.widths[t], prev_action)
        x = h[:, :c_in] if h.shape[1] != c_in else h
        if self._fast():
            return self._post_fast(layer in self.pool_after, conv_fast(x, self._folded(layer, prev_action, action)))
        conv, bn = self.convs[layer], self.bns[layer]
        c_out = self.channels(self.widths[layer], action)
        y = F.conv2d(x, conv.weight[:c_out, :c_in], None, padding=1)
        return self._post(layer, bn(y, prev_action))

    def output_channels(self, mode: str, t: int, action: int) -> int | None:
        return self.channels(self.widths[t + 1], action)

    def input_channels(self, mode: str, t: int, prev_action: int) -> int | None:
        return self.channels(self.widths[t], prev_action)

    def head(self, h: torch.Tensor, mode: str, last_action: int) -> torch.Tensor:
        c = self.channels(self.widths[-1], last_action)
        feats = (h[:, :c] if h.shape[1] != c else h).mean(dim=(2, 3))
        if self._fast():
            fc = self.fc
            w, b = self._kernels.get(
                ("fc", c),
                lambda: (fc.weight[:, :c].contiguous(), fc.bias),
                lambda: [(fc._parameters, "weight"), (fc._parameters, "bias")],
            )
            return F.linear(feats, w, b)
        return F.linear(feats, self.fc.weight[:, :c], self.fc.bias)
