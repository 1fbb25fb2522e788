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


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, c_in: int, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous weight ``[c_out, c_in, k, k]`` and bias ``[c_out]`` of ``bn(conv(x))`` in eval mode,
    for the leading ``c_in`` input and ``c_out`` output channels."""
    w = conv.weight[:c_out, :c_in]
    scale = bn.weight[:c_out] / torch.sqrt(bn.running_var[:c_out] + bn.eps)
    bias = bn.bias[:c_out] - bn.running_mean[:c_out] * scale
    if conv.bias is not None:
        bias = bias + conv.bias[:c_out] * scale
    return (w * scale[:, None, None, None]).contiguous(), bias.contiguous()


#: batches at least this large run the folded inference kernels in channels-last (NHWC) layout,
#: which oneDNN convolves without reordering
CHANNELS_LAST_MIN_BATCH = 4
#: single images' feature maps with at least this many pixels per channel run channels-last too (on
#: 32x32 inputs the NHWC kernels beat the NCHW ones at batch 1 after the stem; on 8x8 and 12x12 inputs
#: they do not). The stem's input (a few colour channels) stays NCHW at batch 1: :func:`input_layout`
CHANNELS_LAST_MIN_PIXELS = 256


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout the folded inference kernels run fastest on (on CPU: channels-last for
    batches of at least :data:`CHANNELS_LAST_MIN_BATCH`, or of images of at least
    :data:`CHANNELS_LAST_MIN_PIXELS` pixels; unchanged otherwise)."""
    if (
        x.device.type == "cpu"
        and x.dim() == 4
        and (x.shape[0] >= CHANNELS_LAST_MIN_BATCH or x.shape[2] * x.shape[3] >= CHANNELS_LAST_MIN_PIXELS)
    ):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def input_layout(x: torch.Tensor) -> torch.Tensor:
    """The images entering the stem in the layout its convolution runs fastest on: channels-last for
    batches of at least :data:`CHANNELS_LAST_MIN_BATCH` on CPU; unchanged otherwise (a 3-channel
    convolution of one image is twice as fast NCHW)."""
    if x.device.type == "cpu" and x.dim() == 4 and x.shape[0] >= CHANNELS_LAST_MIN_BATCH:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def with_channels_last(kernel: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A folded ``(weight, bias)`` plus the weight in channels-last layout (a channels-last input
    convolved with a plain-layout weight makes oneDNN copy the weight on every call)."""
    w, b = kernel
    return w, b, w.contiguous(memory_format=torch.channels_last)


def conv_fast(x: torch.Tensor, kernel: tuple, stride: int = 1) -> torch.Tensor:
    """3x3 convolution (padding 1) of ``x`` with a cached :func:`with_channels_last` kernel, using
    the weight in the layout of ``x``."""
    w, b, w_cl = kernel
    return F.conv2d(x, w_cl if is_channels_last(x) else w, b, stride, 1)


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is laid out channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


#: channels-last maps of up to this many numbers are pooled by ``F.max_pool2d`` itself (NCHW maps: up
#: to a quarter of it): on small maps its one call beats :func:`max_pool2x2`'s five (2-6x at batch 1)
NATIVE_POOL_MAX = 32768


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for inference: the same values (odd trailing rows / columns are dropped,
    as max-pooling does), several times faster on CPU for large maps (no argmax indices), in ``x``'s
    memory layout.

    A channels-last map is pooled as two maxima of contiguous halves (columns in pairs: the two
    halves of each ``2 * C`` run; then rows in pairs: the two halves of each ``2 * W/2 * C`` run),
    which vectorise over whole runs of memory; other layouts as the maximum of four strided views.
    Small maps (:data:`NATIVE_POOL_MAX`), where a call's dispatch outweighs the memory traffic, go
    to ``F.max_pool2d``.
    """
    cl = is_channels_last(x)
    if x.numel() <= (NATIVE_POOL_MAX if cl else NATIVE_POOL_MAX // 4):
        return F.max_pool2d(x, 2)
    N, C, H2, W2 = x.shape[0], x.shape[1], x.shape[-2] // 2, x.shape[-1] // 2
    if cl and x.shape[-2] == 2 * H2 and x.shape[-1] == 2 * W2:
        v = x.permute(0, 2, 3, 1).reshape(N, 2 * H2, W2, 2 * C)  # a view: NHWC memory is contiguous
        cols = torch.maximum(v[..., :C], v[..., C:]).view(N, H2, 2 * W2 * C)
        run = W2 * C
        return torch.maximum(cols[..., :run], cols[..., run:]).view(N, H2, W2, C).permute(0, 3, 1, 2)
    if x.shape[-2] != 2 * H2 or x.shape[-1] != 2 * W2:
        x = x[..., : 2 * H2, : 2 * W2]
    return torch.maximum(
        torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
        torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]),
    )


class KernelCache:
    """Folded, contiguous weight slices, each recomputed when a tensor it was made from changes.

    Every entry remembers where its source tensors live (``(module._parameters, "weight")``,
    ``(bn._buffers, "running_var")``, ...) and, for each, the tensor object, its version counter
    and its storage. A lookup re-reads those few dictionary slots and compares: an optimiser step
    or a ``load_state_dict`` (in-place: the version moves), ``load_state_dict(assign=True)`` or a
    reassigned parameter (another object), and ``.to(device or dtype)`` (other storage) are all
    seen at once, and a lookup costs a few microseconds whatever the size of the network.
    """

    def __init__(self) -> None:
        self._store: dict = {}

    def get(self, key, make, sources):
        """The cached ``make()`` for ``key``.

        ``sources()`` (called on a miss only) returns the ``(dict, name)`` slots of the tensors
        ``make`` reads, e.g. ``[(conv._parameters, "weight"), (bn._buffers, "running_mean")]``.
        """
        hit = self._store.get(key)
        if hit is not None:
            checks, value = hit
            if _unchanged(checks):
                return value
        slots = tuple(sources())
        with torch.no_grad():
            value = make()
        self._store[key] = (_checks(slots), value)
        return value

    def clear(self) -> None:
        self._store.clear()


def tensor_version(t: torch.Tensor) -> int | None:
    """``t``'s in-place version counter, or ``None`` for an inference tensor (made under
    ``torch.inference_mode``), which keeps none."""
    return None if t.is_inference() else t._version


def _checks(slots) -> tuple:
    """What :func:`_unchanged` compares for each ``(dict, name)`` slot: ``(dict, name, tensor,
    version, storage address)`` as they are now. The entry keeps the tensor alive, so no other
    tensor can take its place unseen."""
    out = []
    for d, name in slots:
        t = d.get(name)
        out.append((d, name, t, None if t is None else tensor_version(t), None if t is None else t.data_ptr()))
    return tuple(out)


def _unchanged(checks) -> bool:
    """Whether every slot of :func:`_checks` still holds the same tensor, at the same version (an
    inference tensor has none, and stays one) and in the same storage."""
    for d, name, t, version, ptr in checks:
        if d.get(name) is not t:
            return False
        if t is not None and ((version is not None and t._version != version) or t.data_ptr() != ptr):
            return False
    return True


def conv_slots(conv: nn.Conv2d) -> list:
    """Where the tensors of a convolution live (for :meth:`KernelCache.get`)."""
    return [(conv._parameters, "weight"), (conv._parameters, "bias")]


def bn_slots(bn: nn.BatchNorm2d) -> list:
    """Where the tensors a folded batch-norm reads live (for :meth:`KernelCache.get`)."""
    return [(bn._parameters, "weight"), (bn._parameters, "bias"), (bn._buffers, "running_mean"), (bn._buffers, "running_var")]
