"""One image's routing decision as one compiled kernel (numba), for the host router at batch 1.

A decision of :class:`~dyncnn_gym.host_head.HostRouter` for one image is some twenty NumPy calls
(pooling, ``tanh``, the folded first layer, the confidences, the policy's layers, the choice), each
a microsecond or more of call overhead on arrays of a few dozen numbers, and slower still right
after a convolution has filled the caches: at batch 1 about as much as the convolution it decides
on (the router overhead column of ``dyncnn-gym perf --routed-only``, with and without
``DYNCNN_GYM_NATIVE=0``). :func:`decide` does the same arithmetic
in float64 in one compiled call.

Its scores differ from the NumPy path's and the torch head's by rounding only (the summation order
differs), so it keeps the host's rule: the action is returned only when it leads the second by more
than :data:`~dyncnn_gym.host_head.TOLERANCE` of the scores' magnitudes, else the torch head
decides. Actions, predictions and FLOPs stay those of :func:`dyncnn_gym.evaluate`.

The kernel is compiled when a process first routes one image on the host (2-3 s; nothing is
cached on disk, so no file is read). Without numba, or with the environment variable
``DYNCNN_GYM_NATIVE=0``, the host router runs its NumPy path.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import numpy as np

#: set to ``0`` to route one image with the NumPy host path instead of the compiled kernel
ENV_VAR = "DYNCNN_GYM_NATIVE"

#: step codes of a policy's program after its first linear layer (see :func:`decide`)
LINEAR, TANH, RELU, SIN, LOGPROB = 0, 1, 2, 3, 4

_KERNEL: Any = None


def enabled() -> bool:
    """Whether one image's decisions run in the compiled kernel: numba is installed and
    ``$DYNCNN_GYM_NATIVE`` is not ``0``."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False
    return importlib.util.find_spec("numba") is not None


def kernel() -> Any:
    """The compiled :func:`decide` (compiled on first use, once per process and argument types), or
    ``None`` with a warning when numba is installed but cannot be imported (e.g. built for another
    NumPy): the NumPy host path then runs."""
    global _KERNEL
    if _KERNEL is None:
        try:
            from numba import njit
        except ImportError as e:
            warnings.warn(
                f"numba could not be imported ({e}); routing one image runs the NumPy host path"
                f" (set {ENV_VAR}=0 to silence this)",
                RuntimeWarning,
                stacklevel=2,
            )
            _KERNEL = False
        else:
            # sums may be reordered (vectorised) and fused; NaN and infinity keep their IEEE meaning,
            # which the choice's finiteness check needs
            _KERNEL = njit(nogil=True, cache=False, fastmath={"reassoc", "contract"})(decide)
    return _KERNEL or None


def decide(feat, ratio, z, allowed, out, inv, weight, bias, K, tail, conf, ws, bs, ops, params, cost, tol):  # noqa: PLR0912, PLR0913, PLR0915
    """One image's decision from its feature map, as :class:`~dyncnn_gym.host_head.HostRouter`
    makes it in NumPy (this is the Python source numba compiles; called uncompiled it gives the
    same result, slowly).

    Args:
        feat: float32 feature map ``[1, C, H, W]``, any strides (channels-last is read in memory order).
        ratio: the FLOPs ratio spent so far.
        z: float64 logits ``[n >= 2]`` whose confidences are observed where ``K`` is 0 and ``conf``.
        allowed: bool ``[A]``. out: float64 ``[A]``, receives the scores.
        inv: float64 ``[C]``: ``1 / (scale * H * W)`` per channel (the pooled mean over the scale).
        weight, bias: the folded first layer, float64 ``[K + H, C]`` and ``[K + H]`` (``K`` probe rows first).
        K: number of probe classes (0: no probe; then ``z`` holds the logits when ``conf``).
        tail: float64 ``[H, 1]`` (the FLOPs ratio's column) or ``[H, 4]`` (3 confidences, ratio).
        conf: whether the observation has the three confidences.
        ws, bs: the later linear layers' weights ``[out, in]`` and biases (float64), in order.
        ops, params: the steps after the first linear layer (:data:`LINEAR`, :data:`TANH`,
            :data:`RELU`, :data:`SIN` with its frequency in ``params``, :data:`LOGPROB`).
        cost: float64 ``[A]`` subtracted from the last scores (zeros without a cost bias).
        tol: the host's tolerance.

    Returns:
        the best allowed action, or -1 when its lead over the second is within ``tol`` of the
        scores' magnitudes, a score is not finite, or no action is allowed.
    """
    C, Hh, Ww = feat.shape[1], feat.shape[2], feat.shape[3]
    ft = np.zeros(C)
    if feat.strides[1] < feat.strides[3]:  # channels-last: channels vary fastest in memory
        for i in range(Hh):
            for j in range(Ww):
                for c in range(C):
                    ft[c] += feat[0, c, i, j]
    else:
        for c in range(C):
            s = 0.0
            for i in range(Hh):
                for j in range(Ww):
                    s += feat[0, c, i, j]
            ft[c] = s
    for c in range(C):
        ft[c] = np.tanh(ft[c] * inv[c])
    R = weight.shape[0]
    x = np.empty(R)
    for r in range(R):
        s = bias[r]
        for c in range(C):
            s += weight[r, c] * ft[c]
        x[r] = s
    cur = x[K:].copy()
    H = cur.shape[0]
    if not conf:
        for j in range(H):
            cur[j] += ratio * tail[j, 0]
    else:
        zz = x[:K] if K > 0 else z
        n = zz.shape[0]
        m = zz[0]
        for i in range(1, n):
            if zz[i] > m:
                m = zz[i]
        total = 0.0
        for i in range(n):
            total += np.exp(zz[i] - m)
        top = 0.0
        second = 0.0
        ent = 0.0
        for i in range(n):
            p = np.exp(zz[i] - m) / total
            if p > top:
                second = top
                top = p
            elif p > second:
                second = p
            ent -= p * np.log(p if p > 1e-12 else 1e-12)
        ent /= np.log(n)
        margin = top - second
        for j in range(H):
            cur[j] += tail[j, 0] * top + tail[j, 1] * margin + tail[j, 2] * ent + tail[j, 3] * ratio
    layer = 0
    for k in range(ops.shape[0]):
        op = ops[k]
        if op == 0:
            w = ws[layer]
            b = bs[layer]
            layer += 1
            nxt = np.empty(w.shape[0])
            for r in range(w.shape[0]):
                s = b[r]
                for c in range(w.shape[1]):
                    s += w[r, c] * cur[c]
                nxt[r] = s
            cur = nxt
        elif op == 1:
            for j in range(cur.shape[0]):
                cur[j] = np.tanh(cur[j])
        elif op == 2:
            for j in range(cur.shape[0]):
                if cur[j] < 0.0:
                    cur[j] = 0.0
        elif op == 3:
            for j in range(cur.shape[0]):
                cur[j] = np.sin(params[k] * cur[j])
        else:
            m = cur[0]
            for j in range(1, cur.shape[0]):
                if cur[j] > m:
                    m = cur[j]
            total = 0.0
            for j in range(cur.shape[0]):
                total += np.exp(cur[j] - m)
            shift = m + np.log(total)
            for j in range(cur.shape[0]):
                cur[j] -= shift
    A = cur.shape[0]
    best = -np.inf
    second = -np.inf
    pick = -1
    for i in range(A):
        v = cur[i] - cost[i]
        out[i] = v
        if not np.isfinite(v):
            pick = -2
        elif pick > -2 and allowed[i]:
            if v > best:
                second = best
                best = v
                pick = i
            elif v > second:
                second = v
    if pick < 0:
        return -1
    if second == -np.inf:
        return pick
    if best - second <= tol * (1.0 + abs(best) + abs(second) + np.log(A)):
        return -1
    return pick


__all__ = ["ENV_VAR", "decide", "enabled", "kernel"]
