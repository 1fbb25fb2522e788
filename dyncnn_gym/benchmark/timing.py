"""Timing for ``dyncnn-gym perf``: interleaved repeats and paired ratios, machine facts, and the data
and untrained backbones the speed benchmarks run on (speed does not depend on trained weights).

Every number the benchmark reports is a ratio of two things measured in the same run, interleaved
(A, B, A, B, ... with the order alternating between repeats); the median over repeats is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


# -- measuring -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured ``repeats`` times, interleaved.

    Each function is called ``warmup`` times first (kernel caches, allocator). In repeat ``r`` the
    functions run in turn, in reversed order on odd repeats, so drifts in machine load hit all alike.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repeats of ``times[num][r] / times[den][r]``: each ratio compares two
    measurements taken back to back, so load that drifts between repeats cancels out."""
    return median(_paired(times, num, den))


def paired_range(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """``[min, max]`` over repeats of the paired ratios whose median :func:`paired_ratio` reports
    (rounded to 3 decimals): the spread of that figure within one run."""
    ratios = _paired(times, num, den)
    return [round(min(ratios), 3), round(max(ratios), 3)]


def _paired(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """``times[num][r] / times[den][r]`` for every repeat ``r``."""
    return [a / b for a, b in zip(times[num], times[den])]


def machine_facts(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import gymnasium
    import stable_baselines3

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    facts: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }
    try:
        facts["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


# -- data and backbones ----------------------------------------------------------------------------
def _synthetic(shape: tuple[int, int, int], n: int = 2048, num_classes: int = 10, name: str = "synthetic"):
    from ..data.base import DataSplits, Split, fingerprint_arrays

    rng = np.random.default_rng(0)
    splits = []
    for m in (n, max(n // 4, 1)):
        x = rng.standard_normal((m, *shape)).astype(np.float32)
        y = rng.integers(0, num_classes, m).astype(np.int64)
        splits.append(Split(x, y, np.full(m, np.nan, dtype=np.float32)))
    fp = fingerprint_arrays(splits[0].images, splits[0].labels, splits[1].images, splits[1].labels)
    c = shape[0]
    return DataSplits(name, splits[0], splits[1], num_classes, np.zeros(c, np.float32), np.ones(c, np.float32), fp)


def load_bench_data(name: str, shape: tuple[int, int, int]):
    """``load_dataset(name)``, or random images of ``shape`` when it is unavailable (speed does not
    depend on pixel values). Returns ``(data, note)``."""
    try:
        from ..data import load_dataset

        data = load_dataset(name)
        if tuple(data.image_shape) != tuple(shape):
            raise ValueError(f"{name!r} has shape {data.image_shape}, expected {shape}")
        return data, f"{name!r} ({len(data.train)} train images, {'x'.join(map(str, data.image_shape))})"
    except Exception as e:  # noqa: BLE001 - any failure falls back to random data of the same shape
        return _synthetic(shape, name=f"synthetic-{name}"), f"random images {shape} (load_dataset({name!r}) failed: {e})"


def fresh_backbone(arch: str, data, groups: int, device: torch.device, seed: int = 0):
    """A freshly initialised backbone (eval mode) for ``data``; speed does not depend on trained weights."""
    from ..models import build

    torch.manual_seed(seed)
    return build(arch, data.image_shape, data.num_classes, groups).to(device).eval()
