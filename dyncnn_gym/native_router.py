"""One image's routing decision, and a batch's, as one compiled kernel each (numba), for the host router.

A decision of :class:`~dyncnn_gym.host_head.HostRouter` for one image is some twenty NumPy calls
(pooling, ``tanh``, the folded first layer, the confidences, the policy's layers, the choice), each
a microsecond or more of call overhead on arrays of a few dozen numbers, and slower still right
after a convolution has filled the caches: at batch 1 about as much as the convolution it decides
on (the router overhead column of ``dyncnn-gym perf --routed-only``, with and without
``DYNCNN_GYM_NATIVE=0``). :func:`decide` does the same arithmetic
in float64 in one compiled call. :func:`decide_rows` does a batch's decision (pooled features in,
actions out) in float32 in one call instead of some forty NumPy and torch calls, a policy step at
a time for the whole batch (four rows per pass over a weight matrix); its ``tanh`` is a rational
approximation (:func:`tanh32`, a few float32 ulp) that the compiler vectorises, where the C
library's would be one call per number.

Its scores differ from the NumPy path's and the torch head's by rounding only (the summation order
differs), so it keeps the host's rule: the action is returned only when it leads the second by more
than :data:`~dyncnn_gym.host_head.TOLERANCE` of the scores' magnitudes, else the torch head
decides. Actions, predictions and FLOPs stay those of :func:`dyncnn_gym.evaluate`.

Each kernel is compiled when a process first uses it (2-3 s; nothing is cached on disk, so no
file is read). Without numba, or with the environment variable ``DYNCNN_GYM_NATIVE=0``, the host
router runs its NumPy path.
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

#: compiled kernels by name (``False``: numba could not be imported)
_COMPILED: dict[str, Any] = {}


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
    return _compiled("decide")


def rows_kernel() -> Any:
    """The compiled :func:`decide_rows` (as :func:`kernel`)."""
    return _compiled("decide_rows")


def _compiled(name: str) -> Any:
    hit = _COMPILED.get(name)
    if hit is None:
        try:
            from numba import njit
        except ImportError as e:
            warnings.warn(
                f"numba could not be imported ({e}); routing runs the NumPy host path (set {ENV_VAR}=0 to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
            hit = False
        else:
            # sums may be reordered (vectorised) and fused; NaN and infinity keep their IEEE meaning,
            # which the choice's finiteness check needs. NumPy's error model: a division by zero
            # gives an infinity or NaN instead of raising (Python's model tests every divisor, and
            # the test keeps loops such as tanh32's from being vectorised).
            options = {"fastmath": {"reassoc", "contract"}, "error_model": "numpy"}
            g = globals()
            for helper, source in _HELPERS.items():  # the kernels call them by their global names
                if g[helper] is source:
                    g[helper] = njit(inline="always", **options)(source)
            hit = njit(nogil=True, cache=False, **options)(g[name])
        _COMPILED[name] = hit
    return hit or None


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
        top, margin, ent = confidence(x[:K] if K > 0 else z)
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
    return choice(cur, cost, allowed, out, tol)


def _tanh32(x):
    """``tanh(x)`` for a float32 ``x``: Eigen's rational approximation (a few float32 ulp; exact 0 at 0,
    +-1 beyond +-7.9), branch-free so that loops of it vectorise."""
    c = np.float32(7.90531110763549805)
    x = min(max(x, -c), c)
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    return x * p / q


def _confidence(zz):
    """The probe's confidences of logits ``zz [n >= 2]`` (float32 or float64), in float64: top
    probability, margin between the two best, entropy / log(n).

    One exponential per class and one logarithm: with ``e_i = exp(z_i - max z)`` and ``S = sum e_i``,
    the entropy ``-sum p_i log p_i`` is ``log S - sum e_i (z_i - max z) / S``. (The env's formula
    clamps each ``p_i`` at 1e-12 inside the logarithm; the two differ by at most 1e-12 / e per class.)"""
    n = zz.shape[0]
    m = zz[0]
    for i in range(1, n):
        m = max(m, zz[i])
    total = 0.0
    weighted = 0.0
    top = 0.0
    second = 0.0
    for i in range(n):
        d = np.float64(zz[i] - m)
        e = np.exp(d)
        total += e
        weighted += e * d
        if e > top:
            second = top
            top = e
        elif e > second:
            second = e
    return top / total, (top - second) / total, (np.log(total) - weighted / total) / np.log(n)


def _choice(cur, cost, allowed, out, tol):
    """The host's choice from the last scores ``cur [A]`` minus ``cost [A]`` (written to ``out``,
    float64): the best action ``allowed [A]`` permits, or -1 when its lead over the second is within
    ``tol`` of the scores' magnitudes, a score is not finite, or no action is allowed."""
    A = cur.shape[0]
    best = -np.inf
    second = -np.inf
    pick = -1
    for i in range(A):
        v = np.float64(cur[i] - cost[i])
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
    if second != -np.inf and best - second <= tol * (1.0 + abs(best) + abs(second) + np.log(A)):
        return -1
    return pick


def _affine(X, n, w, bias, Y):
    """``Y[b, :out] = w @ X[b, :n] + bias`` for every row ``b`` of ``X`` (float32; ``w [out, >= n]``),
    four rows per pass over ``w``, so that each weight is loaded once for four rows (the rows
    after the last four one at a time; a row's sums are the same whichever way, up to the order
    the compiler adds them in)."""
    B = X.shape[0]
    out = w.shape[0]
    B4 = B - B % 4
    for b0 in range(0, B4, 4):
        for r in range(out):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            for c in range(n):
                wv = w[r, c]
                s0 += wv * X[b0, c]
                s1 += wv * X[b0 + 1, c]
                s2 += wv * X[b0 + 2, c]
                s3 += wv * X[b0 + 3, c]
            br = bias[r]
            Y[b0, r] = s0 + br
            Y[b0 + 1, r] = s1 + br
            Y[b0 + 2, r] = s2 + br
            Y[b0 + 3, r] = s3 + br
    for b in range(B4, B):
        for r in range(out):
            s = np.float32(0.0)
            for c in range(n):
                s += w[r, c] * X[b, c]
            Y[b, r] = s + bias[r]


# the kernels' helpers by the global names they call them by; _compiled replaces each with its
# compiled, inlined form before compiling a kernel (uncompiled, the kernels call the Python ones)
tanh32, confidence, choice, affine = _tanh32, _confidence, _choice, _affine
_HELPERS = {"tanh32": _tanh32, "confidence": _confidence, "choice": _choice, "affine": _affine}


def decide_rows(pooled, ratio, z, allowed, masked, acts, inv, weight, bias, K, tail, conf, ws, bs, ops, params, cost, tol):  # noqa: PLR0912, PLR0913, PLR0915
    """A batch's decision from its pooled features, in float32, one step of the policy at a time
    for the whole batch: :func:`decide`'s arithmetic, as
    :meth:`~dyncnn_gym.host_head.HostRouter.choose_batch` makes it in NumPy.

    Args:
        pooled: float32 ``[B, C]``, the feature maps' means. ratio: float32 ``[B]``, FLOPs ratios spent.
        z: float32 logits ``[B, n >= 2]`` whose confidences are observed where ``K`` is 0 and ``conf``
            (else any 2-D float32 array).
        allowed, masked: bool ``[B, A]`` and whether to apply it (else any 2-D bool array).
        acts: int64 ``[B]``, receives each row's action, or -1 where the torch head must decide.
        inv: float32 ``[C]``, ``1 / scale``. weight, bias: the folded first layer, float32
            ``[K + H, C]`` and ``[K + H]`` (the ``K`` probe rows first).
        K, conf, ops, params, tol: as for :func:`decide`; ``tail`` as there, float32.
        ws, bs: the later linear layers, float32 ``[out, in]`` and ``[out]``. cost: float32 ``[A]``.
    """
    B, C = pooled.shape
    R = weight.shape[0]
    H = R - K
    A = cost.shape[0]
    width = H
    for w in ws:
        width = max(width, w.shape[0])
    ft = np.empty((B, C), dtype=np.float32)
    for b in range(B):
        for c in range(C):
            ft[b, c] = tanh32(pooled[b, c] * inv[c])
    x = np.empty((B, R), dtype=np.float32)
    affine(ft, C, weight, bias, x)
    cur = np.empty((B, width), dtype=np.float32)
    nxt = np.empty((B, width), dtype=np.float32)
    for b in range(B):
        for j in range(H):
            cur[b, j] = x[b, K + j]
        if not conf:
            rb = ratio[b]
            for j in range(H):
                cur[b, j] += rb * tail[j, 0]
        else:
            top, margin, ent = confidence(x[b, :K] if K > 0 else z[b])
            c0, c1, c2, c3 = np.float32(top), np.float32(margin), np.float32(ent), ratio[b]
            for j in range(H):
                cur[b, j] += tail[j, 0] * c0 + tail[j, 1] * c1 + tail[j, 2] * c2 + tail[j, 3] * c3
    n = H
    layer = 0
    for k in range(ops.shape[0]):
        op = ops[k]
        if op == 0:
            affine(cur, n, ws[layer], bs[layer], nxt)
            n = ws[layer].shape[0]
            layer += 1
            cur, nxt = nxt, cur
        elif op == 1:
            for b in range(B):
                for j in range(n):
                    cur[b, j] = tanh32(cur[b, j])
        elif op == 2:
            for b in range(B):
                for j in range(n):
                    cur[b, j] = max(cur[b, j], np.float32(0.0))
        elif op == 3:
            f = np.float32(params[k])
            for b in range(B):
                for j in range(n):
                    cur[b, j] = np.sin(f * cur[b, j])
        else:
            for b in range(B):
                m = cur[b, 0]
                for j in range(1, n):
                    m = max(m, cur[b, j])
                total = 0.0
                for j in range(n):
                    total += np.exp(np.float64(cur[b, j] - m))
                shift = np.float32(m + np.log(total))
                for j in range(n):
                    cur[b, j] -= shift
    every = np.ones(A, dtype=np.bool_)
    scores = np.empty(A)
    for b in range(B):
        acts[b] = choice(cur[b, :A], cost, allowed[b] if masked else every, scores, tol)


__all__ = ["ENV_VAR", "decide", "decide_rows", "enabled", "kernel", "rows_kernel", "tanh32"]
