"""Checking a ``device=`` argument before any work is done on it."""

from __future__ import annotations

from typing import Any

import torch

#: device types a backbone and the walk can run on (when torch has a backend for them here)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` that holds data and is present on this machine.

    Raises:
        ValueError: not a device string (e.g. ``"gpu"``), a type without data (``"meta"``), or a
            device torch cannot use here (``"cuda"`` without CUDA, a CUDA index beyond the devices);
            the message names the value and the choices.
        TypeError: neither a string nor a :class:`torch.device`.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"{name}={device!r} is not a torch device; choose one of {list(DEVICE_TYPES)} (optionally with an"
                " index, e.g. 'cuda:0')"
            ) from None
    else:
        raise TypeError(f"{name}={device!r} must be a device string such as 'cpu' or 'cuda', or a torch.device")
    if dev.type not in DEVICE_TYPES:
        raise ValueError(
            f"{name}={str(device)!r}: device type {dev.type!r} holds no data here; choose one of {list(DEVICE_TYPES)}"
        )
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(device)!r} was asked for, but torch sees no CUDA device; use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name}={str(device)!r}: this machine has {count} CUDA device(s), indices 0..{count - 1}")
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    if backend is None or not backend.is_available():
        raise ValueError(f"{name}={str(device)!r} was asked for, but torch has no {dev.type!r} device here; use device='cpu'")
    return dev
