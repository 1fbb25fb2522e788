"""Plain ``nn.Module`` versions of the package's backbones: the "plain torch" speed reference.

:func:`plain_copy` rebuilds a :class:`~dyncnn_gym.models.ChannelVGG` or
:class:`~dyncnn_gym.models.ResNet` at full width as the network a user would write with stock
``torch.nn`` layers (``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ``Linear``), with the same
weights: the batch-norm of each layer is the one the full route uses. Run in eval mode under
``torch.no_grad()``, it computes the full network's logits (up to float rounding) with nothing the
package adds: no folding, no cached kernels, no layout choices, no decision points.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ChannelVGG, DynamicNet, ResNet


class PlainVGG(nn.Module):
    """``[Conv2d -> BatchNorm2d -> ReLU (-> MaxPool2d)] * L -> global average pool -> Linear``."""

    def __init__(self, net: ChannelVGG) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = net.groups - 1
        for i, conv in enumerate(net.convs):
            bn = net.bns[0] if i == 0 else net.bns[i].bns[last]
            layers += [copy.deepcopy(conv), copy.deepcopy(bn), nn.ReLU(inplace=True)]
            if i in net.pool_after:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = copy.deepcopy(net.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class PlainBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, option-A shortcut (subsample, zero channels)."""

    def __init__(self, block, last: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = copy.deepcopy(block.conv1), copy.deepcopy(block.bn1)
        self.conv2, self.bn2 = copy.deepcopy(block.conv2), copy.deepcopy(block.bn2.bns[last])
        self.stride, self.extra = block.stride, block.c_out - block.c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x
        if self.stride != 1 or self.extra:
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + sc)


class PlainResNet(nn.Module):
    """CIFAR ResNet: ``Conv2d -> BatchNorm2d -> ReLU``, the basic blocks, global average pool, ``Linear``."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1 = copy.deepcopy(net.conv1), copy.deepcopy(net.bn1)
        self.blocks = nn.Sequential(*(PlainBlock(b, net.groups - 1) for b in net.blocks))
        self.fc = copy.deepcopy(net.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.blocks(h).mean(dim=(2, 3)))


def plain_copy(net: DynamicNet) -> nn.Module:
    """The full network of ``net`` as a plain ``nn.Module`` (eval mode, same device and weights)."""
    if isinstance(net, ChannelVGG):
        out: nn.Module = PlainVGG(net)
    elif isinstance(net, ResNet):
        out = PlainResNet(net)
    else:
        raise TypeError(f"net={type(net).__name__} has no plain version; expected a ChannelVGG or a ResNet")
    return out.eval()


__all__ = ["PlainBlock", "PlainResNet", "PlainVGG", "plain_copy"]
