"""Decision costs in time: what each routing decision takes on this machine, for a reward that
saves time where FLOPs and time part.

On small CPU networks a FLOP is not worth the same time everywhere: the default ``resnet32-lite``'s
first-stage blocks (16 channels, 16x16 maps) take about twice the time per FLOP of its last
stage's (64 channels, 4x4), so a router paid for FLOPs saves the cheap-in-time blocks as gladly as
the dear ones, and its routes run slower than static routes of the same FLOPs that skip the dear
ones (``examples/decision_times.py``). :func:`decision_times` measures each decision's time;
passed to a routing env as ``decision_costs`` (or ``decision_costs="time"``, measured when the env
is built), the reward's compute term prices each decision by its share of the time instead of its
share of the FLOPs (:func:`time_weighted_steps`). FLOPs are still counted exactly and reported in
``info``; ``flops_target`` and ``budget`` stay FLOPs ratios.
"""

from __future__ import annotations

import numbers
import reprlib
import weakref
from typing import Any

import numpy as np
import torch

from .models import DynamicNet
from .walk import Walk, cost_tensors

#: images per timed call of :func:`decision_times` when an env measures its own (``decision_costs="time"``)
TIME_BATCH = 256
#: interleaved repeats per decision (the median is kept)
TIME_REPEATS = 7
_MEASURED: weakref.WeakKeyDictionary[DynamicNet, dict[tuple, np.ndarray]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def decision_times(net: DynamicNet, mode: str, images: torch.Tensor, repeats: int = TIME_REPEATS) -> np.ndarray:
    """float64 ``[T, A, A]``: milliseconds a batch of ``images`` ``[B, C, H, W]`` takes at each
    decision ``t`` after previous action ``p`` with action ``a`` (index ``[t, p, a]``, as the FLOPs
    of :class:`~dyncnn_gym.models.base.CostTable` ``steps``), on this machine at torch's thread
    count now; each the median of ``repeats`` interleaved calls, the feature map entering decision
    ``t`` being that of the full route. Where a decision's work does not depend on the previous
    action (``net.decision_uses_prev(mode)`` false, and ``t = 0``), one time is repeated along ``p``.
    """
    from .benchmark.timing import interleaved, median

    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 1")
    table = cost_tensors(net, mode)[0]
    T, A = table.num_decisions, table.num_actions
    by_prev = net.decision_uses_prev(mode)
    pairs = [(t, p, a) for t in range(T) for p in (range(A) if by_prev and t else [A - 1]) for a in range(A)]
    was_training = net.training
    net.eval()
    try:
        walk, entering = Walk(net, mode, images), []
        for _ in range(T):
            entering.append(walk.h)
            walk.advance(A - 1)
        fns = {k: (lambda k=k: net.decision(mode, k[0], entering[k[0]], k[1], k[2])) for k in pairs}
        times = interleaved(fns, int(repeats), images.device)
    finally:
        net.train(was_training)
    out = np.zeros((T, A, A), dtype=np.float64)
    for t, p, a in pairs:
        out[t, p if by_prev and t else slice(None), a] = 1000.0 * median(times[(t, p, a)])
    return out


def measured_times(net: DynamicNet, mode: str, images: torch.Tensor) -> np.ndarray:
    """:func:`decision_times` of ``images`` ``[B, C, H, W]``, measured once per backbone, mode, batch
    shape, dtype, device and thread count in a process (a copy): every env built on one backbone
    prices decisions by one table, whatever its split, and a second env costs no second
    measurement. (A decision's time depends on the tensors' shapes, not on the images' values.)"""
    key = (mode, tuple(images.shape), images.dtype, str(images.device), torch.get_num_threads())
    per_net = _MEASURED.setdefault(net, {})
    if key not in per_net:
        per_net[key] = decision_times(net, mode, images)
    return per_net[key].copy()


def check_costs(costs: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """``costs`` as float64 ``[T, A, A]`` if it is an array-like of that ``shape`` with finite values
    >= 0 and a full route (every decision at ``A - 1``) that costs more than 0; else a ``ValueError``
    naming what is wrong."""
    try:
        arr = np.asarray(costs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"decision_costs={reprlib.repr(costs)} must be 'flops', 'time' or an array of shape {list(shape)}"
            " (cost of decision t after previous action p with action a)"
        ) from e
    if arr.shape != shape:
        raise ValueError(
            f"decision_costs has shape {list(arr.shape)}; this env needs {list(shape)} (decision t,"
            " previous action p, action a), e.g. from dyncnn_gym.time_costs.decision_times"
        )
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        t, p, a = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"decision_costs[{t}, {p}, {a}] = {float(arr[t, p, a])!r} must be a finite number >= 0")
    top = shape[2] - 1
    if not arr[np.arange(shape[0]), top, top].sum() > 0:
        raise ValueError("decision_costs gives the full route (every decision at its largest action) no cost")
    return arr


def time_weighted_steps(steps: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """float64 ``[T, A, A]``: ``costs`` (checked by :func:`check_costs`) rescaled so that the full
    route's decisions cost what their FLOPs do (``steps``, int64 ``[T, A, A]``): "time-weighted
    FLOPs", each decision priced by its share of the time. A reward built on them keeps the scale
    (and the meaning of ``compute_weight``) of the FLOPs reward; only where the savings go changes."""
    T, A = steps.shape[0], steps.shape[2]
    full = np.arange(T), A - 1, A - 1
    return costs * (float(steps[full].sum()) / float(costs[full].sum()))
