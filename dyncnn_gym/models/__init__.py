"""Dynamic backbones and their cost tables (no training loops here)."""

from __future__ import annotations

from .base import MODES, CostTable, DynamicNet, conv_flops, linear_flops
from .exits import ExitResNet
from .resnet import RESNET_DEPTHS, ResNet
from .vgg import VGG_CONFIGS, ChannelVGG

#: every arch name ``build`` accepts, and the modes each supports
ARCHS: dict[str, tuple[str, ...]] = {
    **{name: ChannelVGG.modes for name in VGG_CONFIGS},
    **{f"resnet{d}": ResNet.modes for d in RESNET_DEPTHS},
    **{f"resnet{d}-lite": ResNet.modes for d in RESNET_DEPTHS},
    **{f"resnet{d}-exits": ExitResNet.modes for d in RESNET_DEPTHS},
    **{f"resnet{d}-lite-exits": ExitResNet.modes for d in RESNET_DEPTHS},
}


def build(arch: str, in_shape: tuple[int, int, int], num_classes: int, groups: int = 4, **kwargs) -> DynamicNet:
    """A freshly initialised backbone called ``arch`` (see :data:`ARCHS`).

    ``kwargs`` override the arch's configuration (``widths=``, ``pool_after=`` for VGGs,
    ``widths=``, ``stem_stride=`` for ResNets, ``exits=``, ``head_convs=`` for exit ResNets). ``resnet{d}-lite`` is
    ``resnet{d}`` with a stride-2 stem; ``resnet{d}[-lite]-exits`` is that ResNet with early-exit
    heads (:class:`~dyncnn_gym.models.exits.ExitResNet`).
    """
    if isinstance(arch, str) and arch.endswith("-exits") and arch in ARCHS:
        own = ("exits", "head_convs")
        rest = {k: v for k, v in kwargs.items() if k not in own}
        base = build(arch[: -len("-exits")], in_shape, num_classes, groups, **rest)
        return ExitResNet(
            in_shape, num_classes, groups, arch=arch, **base.config(), **{k: kwargs[k] for k in own if k in kwargs}
        )
    if arch in VGG_CONFIGS:
        widths, pools = VGG_CONFIGS[arch]
        kw = {"widths": widths, "pool_after": pools, **kwargs}
        return ChannelVGG(in_shape, num_classes, groups, arch=arch, **kw)
    lite = isinstance(arch, str) and arch.endswith("-lite")
    base = arch[: -len("-lite")] if lite else arch
    if isinstance(arch, str) and base.startswith("resnet") and base[6:].isdigit() and int(base[6:]) in RESNET_DEPTHS:
        kw = {**kwargs, "depth": int(base[6:])}
        if lite:
            kw.setdefault("stem_stride", 2)
        if kwargs.get("depth", kw["depth"]) != kw["depth"]:
            raise ValueError(f"arch={arch!r} has depth {kw['depth']}, not depth={kwargs['depth']!r}")
        return ResNet(in_shape, num_classes, groups, arch=arch, **kw)
    raise ValueError(f"arch={arch!r} is not a known backbone; choose one of {sorted(ARCHS)}")


__all__ = [
    "ARCHS",
    "MODES",
    "ChannelVGG",
    "CostTable",
    "DynamicNet",
    "ExitResNet",
    "ResNet",
    "build",
    "conv_flops",
    "linear_flops",
]
