"""Building blocks shared by the backbones: width-switchable batch-norm and folded kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per input-width variant, as in slimmable networks.

    The statistics of a channel depend on how many input channels fed it, so a layer whose input
    width varies keeps separate statistics (and affine parameters) for each variant. Called on
    fewer channels than it was built for, it normalises the leading ones.
    """

    def __init__(self, channels: int, variants: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(variants))

    def forward(self, x: torch.Tensor, variant: int) -> torch.Tensor:
        return sliced_bn(self.bns[variant], x)


def sliced_bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Apply ``bn`` to the leading ``x.shape[1]`` channels (running statistics updated in place)."""
    c = x.shape[1]
    if c == bn.num_features:
        return bn(x)
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        bn.running_mean[:c] if bn.running_mean is not None else None,
        bn.running_var[:c] if bn.running_var is not None else None,
        bn.weight[:c] if bn.weight is not None else None,
        bn.bias[:c] if bn.bias is not None else None,
        use_batch,
        bn.momentum if bn.momentum is not None else 0.1,
        bn.eps,
    )


def fold_conv_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, c_in: int, c_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous weight ``[c_out, c_in, k, k]`` and bias ``[c_out]`` of ``bn(conv(x))`` in eval mode,
    for the leading ``c_in`` input and ``c_out`` output channels."""
    w = conv.weight[:c_out, :c_in]
    scale = bn.weight[:c_out] / torch.sqrt(bn.running_var[:c_out] + bn.eps)
    bias = bn.bias[:c_out] - bn.running_mean[:c_out] * scale
    if conv.bias is not None:
        bias = bias + conv.bias[:c_out] * scale
    return (w * scale[:, None, None, None]).contiguous(), bias.contiguous()


class KernelCache:
    """Folded, contiguous weight slices keyed by (layer, widths), dropped when the weights change.

    ``owner.weights_version()`` is compared on each lookup, so an optimiser step or a
    ``load_state_dict`` on the backbone is seen at once.
    """

    def __init__(self) -> None:
        self._store: dict = {}
        self._version: int | None = None

    def get(self, owner, key, make):
        version = owner.weights_version()
        if version != self._version:
            self._store.clear()
            self._version = version
        hit = self._store.get(key)
        if hit is None:
            with torch.no_grad():
                hit = make()
            self._store[key] = hit
            # creating the kernels does not modify the weights, so the version is unchanged
        return hit

    def clear(self) -> None:
        self._store.clear()
        self._version = None
