"""A policy head's choice on the host, in NumPy: float64 for one observation, float32 for a batch.

At batch 1 on the CPU a routed model's decision is a few hundred multiply-adds spread over some
thirty torch operations, each a few microseconds of dispatch: the router then costs more than the
backbone it prunes. :class:`HostHead` holds a :class:`~dyncnn_gym.policies.ScoreHead`'s layers as
float64 NumPy arrays and chooses an action for one observation in a handful of NumPy calls
(:class:`HostRouter` folds the observation into the first layer, so one image's observation is
never built). A :class:`~dyncnn_gym.policies.OneShotHead`'s plan (every block's keep logit from
one observation) is made the same way (:meth:`HostRouter.plan_features`). Where numba is installed,
one image's whole decision (pooling, observation, policy layers and choice) is one compiled call
instead (:mod:`dyncnn_gym.native_router`), with the same arithmetic and the same rule below.

Its choice is the torch head's, or none: float64 scores differ from the float32 scores of the torch
path by rounding, so when the best allowed action does not lead the second by a margin far above
that rounding (:data:`TOLERANCE` of the scores' magnitudes), or a keep logit is that close to the
one-shot head's bias, the host returns ``None`` and the caller runs the torch head. Actions,
predictions and FLOPs stay those of :func:`dyncnn_gym.evaluate`.

A batch of images takes the same route in float32 (:meth:`HostRouter.choose_batch`: the pooled
features through the same folded first layer), in one compiled call with numba
(:func:`dyncnn_gym.native_router.decide_rows`), else in NumPy (:meth:`HostHead.choose_hidden_rows`):
at batch 64-256 the router's cost is its small matrix products and elementwise functions, and
NumPy's float32 ``tanh`` is several times faster than torch's on the CPU. Float32 rounding on both
sides is still some thousand times below :data:`TOLERANCE`; rows whose lead is not above it are
decided by the torch head, as one image is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import native_router
from .policies import ModuleHead, OneShotHead, ScoreHead, _plan

#: a lead below this share of ``1 + |best| + |second| + log(A)`` is left to the torch head (float32
#: rounding of the torch path, log-probabilities included, is about 1e-7 of twice these magnitudes,
#: times the layers' gain)
TOLERANCE = 1e-3


class _Watched:
    """Tensors with their in-place version counters as they were when watched (see :meth:`changed`).
    Inference tensors (made under ``torch.inference_mode``) keep no counter and are not watched."""

    __slots__ = ("tensors", "versions")

    def __init__(self, tensors) -> None:
        self.tensors = tuple(t for t in tensors if not t.is_inference())
        self.versions = [t._version for t in self.tensors]

    def changed(self) -> bool:
        """Whether a watched tensor was changed in place since."""
        return [t._version for t in self.tensors] != self.versions


_ONES: dict[int, np.ndarray] = {}


def _ones(n: int) -> np.ndarray:
    """float32 ones ``[n]`` (one per size): a feature map's per-channel sums as one matrix-vector product."""
    hit = _ONES.get(n)
    if hit is None:
        hit = _ONES[n] = np.ones(n, dtype=np.float32)
    return hit


_STEPS = ("linear", "tanh", "relu", "flatten", "logprob", "sin")
_NATIVE_OPS = {
    "linear": native_router.LINEAR,
    "tanh": native_router.TANH,
    "relu": native_router.RELU,
    "sin": native_router.SIN,
    "logprob": native_router.LOGPROB,
}


def _mm_weight(w: np.ndarray) -> torch.Tensor:
    """A ``[out, in]`` weight as the float32 ``[in, out]`` torch tensor :func:`_mm` multiplies by."""
    return torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32))


def _mm(x: np.ndarray, w: torch.Tensor, b: torch.Tensor | None = None) -> np.ndarray:
    """``x @ w (+ b)`` for float32 ``x [B, in]``, through torch: NumPy's BLAS runs its own thread pool,
    which fights torch's threads for the cores when both have several."""
    xt = torch.from_numpy(x)
    return (xt @ w if b is None else torch.addmm(b, xt, w)).numpy()


_NO_LOGITS = np.zeros(2)


_NO_ROWS = np.zeros((0, 0), dtype=np.float32)  # the batch kernel's logits where it observes none
_NO_MASK = np.zeros((0, 0), dtype=bool)


def _float32(v: Any) -> Any:
    """``v`` with its float64 arrays (also inside a tuple) as float32 copies; anything else as is."""
    if isinstance(v, tuple):
        return tuple(_float32(x) for x in v)
    return v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v


def _feature_rows(features: torch.Tensor) -> tuple[np.ndarray, bool, int] | None:
    """One image's dense float32 feature map ``[1, C, H, W]`` as rows for the host: ``(array, cl,
    H * W)``, the array ``[C, H * W]`` (``cl`` False) or, for a channels-last map, ``[H * W, C]``
    (views, no copy); ``None`` for other maps (the torch path then decides)."""
    if features.dtype != torch.float32 or features.dim() != 4 or features.shape[0] != 1:
        return None
    _, C, H, W = features.shape
    if features.is_contiguous():
        return features.numpy().reshape(C, H * W), False, H * W
    if features.is_contiguous(memory_format=torch.channels_last):
        return features.numpy()[0].transpose(1, 2, 0).reshape(H * W, C), True, H * W
    return None


def _sums(m: tuple[np.ndarray, bool, int]) -> np.ndarray:
    """Per-channel sums ``[C]`` (float32) of :func:`_feature_rows`' rows, as one matrix-vector product."""
    rows, cl, hw = m
    return _ones(hw) @ rows if cl else rows @ _ones(hw)


class HostHead:
    """``choose(obs [D] float64, allowed [A] bool | None) -> int | None`` for a score head.

    Build it with :meth:`of`, which returns ``None`` for heads it cannot run (recurrent heads,
    modules of the user's own, ensembles of several members). ``stale()`` says whether a weight of
    the torch head changed in place since (then build it again).
    """

    def __init__(
        self,
        head: ScoreHead | ModuleHead,
        steps: list[tuple[str, np.ndarray | None, np.ndarray | None]],
        tensors: list[torch.Tensor],
    ) -> None:
        self._steps = steps
        biased = getattr(head, "biased", False)
        self._cost = head.cost.detach().double().cpu().numpy() * head.bias if biased else None
        self._watched = _Watched(tensors)
        self.num_actions: int | None = None
        for kind, w, _ in reversed(steps):
            if kind == "linear":
                self.num_actions = int(w.shape[0])
                break

    @classmethod
    def of(cls, head: object) -> HostHead | None:
        """The host form of ``head``, or ``None`` if it is neither a :class:`ScoreHead`, a
        :class:`ModuleHead` (argmax of its scores) nor a :class:`OneShotHead` (its keep logits are
        the scores) of plain layers on the CPU."""
        if type(head) is ScoreHead or type(head) is OneShotHead:
            body = head.body
        elif type(head) is ModuleHead:
            body = head.module
        else:
            return None
        tensors = [*head.parameters(), *head.buffers()]
        if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) for t in tensors if t.numel()):
            return None  # a half-precision head rounds more than TOLERANCE allows for
        steps: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
        for kind, module in _plan(body):
            if kind not in _STEPS:
                return None
            if kind == "linear":
                w = module.weight.detach().double().numpy().copy()
                b = None if module.bias is None else module.bias.detach().double().numpy().copy()
                steps.append((kind, w, b))
            elif kind == "sin":
                steps.append((kind, np.float64(module.frequency), None))
            elif kind != "flatten":
                steps.append((kind, None, None))
        if not steps or steps[0][0] != "linear":
            return None
        # a last log-probability step shifts every action's score alike: an argmax need not compute
        # it, a one-shot head's keep logits (each compared with the bias) must
        drop = steps[-1][0] == "logprob" and type(head) is not OneShotHead
        return cls(head, steps[:-1] if drop else steps, tensors)

    def stale(self) -> bool:
        """Whether a weight or buffer of the torch head was changed in place since this was built."""
        return self._watched.changed()

    def _steps32(self) -> list[tuple[str, object, object]]:
        """The steps for :meth:`scores_rows`, made once: a linear layer's weight as a float32 torch
        tensor ``[in, out]`` and its bias ``[out]``."""
        steps = self.__dict__.get("_f32")
        if steps is None:
            steps = [
                (k, _mm_weight(w), None if b is None else torch.from_numpy(b.astype(np.float32)))
                if k == "linear"
                else (k, w, b)
                for k, w, b in self._steps
            ]
            self.__dict__["_f32"] = steps
            self.__dict__["_cost32"] = None if self._cost is None else self._cost.astype(np.float32)
        return steps

    def scores_rows(self, obs: np.ndarray) -> np.ndarray:
        """:meth:`scores` of a batch of observations ``obs [B, D]`` float32, in float32: ``[B, A]``."""
        _, w, b = self._steps32()[0]
        return self.scores_hidden_rows(_mm(obs, w, b))  # type: ignore[arg-type]

    def scores_hidden_rows(self, x: np.ndarray) -> np.ndarray:
        """:meth:`scores_rows` from the first linear layer's outputs ``x [B, H]`` float32 (overwritten)."""
        for kind, w, b in self._steps32()[1:]:
            if kind == "linear":
                x = _mm(x, w, b)  # type: ignore[arg-type]
            elif kind == "tanh":
                np.tanh(x, out=x)
            elif kind == "relu":
                np.maximum(x, 0.0, out=x)
            elif kind == "sin":
                x = np.sin(np.float32(w) * x)
            else:  # logprob
                m = x.max(1, keepdims=True)
                x = x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))
        cost = self.__dict__["_cost32"]
        if cost is not None:
            x -= cost
        return x

    def choose_rows(self, obs: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`choose` for a batch ``obs [B, D]`` float32 (``allowed [B, A]`` bool or ``None``):
        ``(actions int64 [B], sure bool [B])``; a row that is not ``sure`` (a lead within
        :data:`TOLERANCE`, a score that is not finite, no allowed action) is for the torch head."""
        return self.pick_rows(self.scores_rows(obs), allowed)

    def choose_hidden_rows(self, x: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`choose_rows` from the first linear layer's outputs ``x [B, H]`` float32 (overwritten)."""
        return self.pick_rows(self.scores_hidden_rows(x), allowed)

    @staticmethod
    def pick_rows(s: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`pick` for float32 scores ``s [B, A]``: ``(actions int64 [B], sure bool [B])``."""
        A = s.shape[1]
        finite = np.isfinite(s).all(1)
        if allowed is not None:
            s = np.where(allowed, s, -np.inf)
        pick = s.argmax(1)
        if A == 1:
            return pick, finite & np.isfinite(s[:, 0])
        top2 = np.partition(s, A - 2, axis=1)[:, A - 2 :].astype(np.float64)
        second, best = top2[:, 0], top2[:, 1]
        with np.errstate(invalid="ignore"):
            lead = best - second > TOLERANCE * (1.0 + np.abs(best) + np.abs(second) + math.log(A))
        sure = finite & np.isfinite(best) & (np.isneginf(second) | lead)
        return pick, sure

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """The head's action scores ``[A]`` (float64) for one observation ``obs [D]``, cost bias
        included, up to one constant shared by all actions (a last log-probability step, which shifts
        every score alike, is left out)."""
        _, w, b = self._steps[0]
        x = w @ obs
        if b is not None:
            x += b
        return self.scores_of_hidden(x)

    def first_layer(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The first linear layer, float64: weight ``[H, D]`` and bias ``[H]`` (or ``None``)."""
        _, w, b = self._steps[0]
        return w, b  # type: ignore[return-value]

    def native_program(self) -> tuple:
        """The steps after the first linear layer for :func:`dyncnn_gym.native_router.decide`:
        ``(ws, bs, ops, params, cost)``, made once."""
        hit = self.__dict__.get("_native")
        if hit is None:
            ws, bs, ops, params = [], [], [], []
            for kind, w, b in self._steps[1:]:
                if kind == "linear":
                    ws.append(np.ascontiguousarray(w))
                    bs.append(np.zeros(w.shape[0]) if b is None else np.ascontiguousarray(b))
                ops.append(_NATIVE_OPS[kind])
                params.append(float(w) if kind == "sin" else 0.0)
            A = int(self.num_actions)  # type: ignore[arg-type]
            cost = np.zeros(A) if self._cost is None else np.ascontiguousarray(self._cost, dtype=np.float64)
            hit = self.__dict__["_native"] = (
                tuple(ws),
                tuple(bs),
                np.array(ops, dtype=np.int64),
                np.array(params, dtype=np.float64),
                cost,
            )
        return hit

    def scores_of_hidden(self, x: np.ndarray) -> np.ndarray:
        """:meth:`scores` from the first linear layer's output ``x [H]`` (float64, overwritten)."""
        for kind, w, b in self._steps[1:]:
            if kind == "linear":
                x = w @ x
                if b is not None:
                    x += b
            elif kind == "tanh":
                np.tanh(x, out=x)
            elif kind == "relu":
                np.maximum(x, 0.0, out=x)
            elif kind == "sin":
                x = np.sin(w * x)
            else:  # logprob
                m = x.max()
                x = x - (m + math.log(np.exp(x - m).sum()))
        if self._cost is not None:
            x -= self._cost
        return x

    def choose(self, obs: np.ndarray, allowed: np.ndarray | None = None) -> int | None:
        """The best allowed action for ``obs [D]``, or ``None`` when the lead is too small to be sure
        (or a score is not finite)."""
        return self.pick(self.scores(obs), allowed)

    def choose_hidden(self, x: np.ndarray, allowed: np.ndarray | None = None) -> int | None:
        """:meth:`choose` from the first linear layer's output ``x [H]`` (float64, overwritten)."""
        return self.pick(self.scores_of_hidden(x), allowed)

    @staticmethod
    def pick(scores: np.ndarray, allowed: np.ndarray | None = None) -> int | None:
        """The best allowed action of float64 ``scores [A]``, or ``None`` when its lead over the
        second is within :data:`TOLERANCE`, a score is not finite or no action is allowed."""
        s = scores.tolist()
        A = len(s)
        best = second = -math.inf
        pick = -1
        for i in range(A):
            v = s[i]
            if not math.isfinite(v):
                return None
            if allowed is not None and not allowed[i]:
                continue
            if v > best:
                best, second, pick = v, best, i
            elif v > second:
                second = v
        if pick < 0:
            return None
        if second == -math.inf:
            return pick
        if best - second <= TOLERANCE * (1.0 + abs(best) + abs(second) + math.log(A)):
            return None
        return pick


class HostRouter:
    """A routed model's router on the host: its :class:`HostHead` and, per decision ``t``, the
    observation scale and the observation's constant part (zeros and the one-hot of ``t``).
    Observations are ``[tanh(pooled / scale), zeros, one-hot of t, (3 confidences), FLOPs ratio]``,
    as the envs build them.

    One image never has its observation built: :meth:`choose_features` pools the feature map with
    one NumPy matrix-vector product and runs the head's first layer folded per decision (its
    one-hot column and bias in one vector, the probe's weights stacked on the feature columns), so
    that a decision costs one compiled call (:mod:`dyncnn_gym.native_router`) or about a dozen
    NumPy calls. A batch goes through the same fold in float32 (:meth:`choose_batch`).

    Build it with :meth:`of` (``None`` when the head has no host form); :meth:`stale` says whether a
    weight, scale or probe changed in place since.
    """

    def __init__(
        self,
        host: HostHead,
        scales: list[torch.Tensor],
        onehots: list[int],
        obs_dim: int,
        probes: list[tuple[torch.Tensor, torch.Tensor]] | None,
        confidences: bool,
    ) -> None:
        self.head = host
        self.obs_dim = obs_dim
        self._all = np.ones(host.num_actions or 0, dtype=bool)
        self._native: Any = False  # the compiled decision, decided on first use (see _kernel)
        self._native_rows: Any = False  # the compiled batch decision (see _rows_kernel)
        self._rows32: dict[tuple[int, int], tuple | None] = {}  # (t, C) -> its fixed arguments
        self._programs: dict[tuple[int, int, int], tuple] = {}  # (t, C, H * W) -> the kernel's fixed arguments
        self._fold32: dict[tuple[int, int], tuple | None] = {}  # (t, C) -> choose_batch's float32 fold
        self._nan = np.full(host.num_actions or 0, np.nan)
        self._nan.flags.writeable = False
        self.confidences = confidences
        self.scales = [s.detach().double().cpu().numpy() for s in scales]
        self.probes = None
        watched = list(scales)
        if probes is not None:
            self.probes = [(w.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()) for w, b in probes]
            watched += [t for pair in probes for t in pair]
        self._watched = _Watched([*host._watched.tensors, *watched])  # the head's and these: one check
        self.onehots = list(onehots)
        w1, b1 = host.first_layer()
        self._classes = 0 if self.probes is None else int(self.probes[0][1].shape[0])
        # per decision: [probe weights; first-layer feature columns] [K + H, width], their biases
        # [probe bias; first-layer bias + one-hot column], and 1 / (scale * H * W) per (channels, H * W)
        self._folded: list[tuple[np.ndarray, np.ndarray, dict]] = []
        for t, i in enumerate(self.onehots):
            width = self.scales[t].shape[0]
            weight, bias = w1[:, :width], w1[:, i] + (0.0 if b1 is None else b1)
            if self.probes is not None:
                pw, pb = self.probes[t]
                weight, bias = np.concatenate([pw[:width].T, weight]), np.concatenate([pb, bias])
            self._folded.append((np.ascontiguousarray(weight), bias, {}))
        # the first layer's columns of (3 confidences and) the FLOPs ratio
        self._tail = np.ascontiguousarray(w1[:, obs_dim - (4 if confidences else 1) :])

    @classmethod
    def of(
        cls,
        head: object,
        num_actions: int,
        scales: list[torch.Tensor],
        onehots: list[int],
        obs_dim: int,
        probes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        confidences: bool = False,
    ) -> HostRouter | None:
        """The host router of a model whose ``head`` chooses among ``num_actions``, or ``None``.

        ``scales[t]``: decision ``t``'s per-channel scale; ``onehots[t]``: the index of its one-hot
        entry; ``probes[t]``: ``(weight [C_t, K], bias [K])`` whose logits' confidences fill the three
        entries before the last; ``confidences``: those entries come from logits the caller passes
        (an exit's prediction) instead."""
        host = HostHead.of(head)
        if host is None or host.num_actions != num_actions:
            return None
        return cls(host, scales, onehots, obs_dim, probes, confidences or probes is not None)

    def stale(self) -> bool:
        """Whether the head, a scale or a probe was changed in place since this was built."""
        return self._watched.changed()

    def choose_features(self, t: int, features: torch.Tensor, ratio: float, allowed: np.ndarray | None = None) -> int | None:
        """Decision ``t``'s action for one image from its feature map ``[1, C, H, W]`` (``C`` up to
        the decision's width: the others are zero) and the FLOPs ratio spent (``allowed [A]`` bool or
        ``None``); ``None`` when the lead is too small to be sure (:meth:`HostHead.choose`) or the
        features are not a dense float32 map (the torch path then decides)."""
        kernel = self._kernel()
        if kernel is not None:
            return self._decide(kernel, t, features, ratio, _NO_LOGITS, allowed)[0]
        m = _feature_rows(features)
        if m is None:
            return None
        x = self._hidden(t, _sums(m), m[2], ratio, None)
        return None if x is None else self.head.choose_hidden(x, allowed)

    def plan_features(self, t: int, features: torch.Tensor, ratio: float, bias: float) -> np.ndarray | None:
        """A one-shot head's plan for one image (:class:`~dyncnn_gym.policies.OneShotHead`): whether
        each block runs, bool ``[T]``, from the observation of decision ``t`` (as
        :meth:`choose_features`) and the head's ``bias``; ``None`` when a keep logit is within
        :data:`TOLERANCE` of the bias, or not finite (the torch head then plans)."""
        kernel = self._kernel()
        if kernel is not None:
            scores = self._decide(kernel, t, features, ratio, _NO_LOGITS, None)[1]
        else:
            m = _feature_rows(features)
            if m is None:
                return None
            x = self._hidden(t, _sums(m), m[2], ratio, None)
            if x is None:
                return None
            scores = self.head.scores_of_hidden(x)
        z = scores - bias
        if not np.isfinite(z).all() or (np.abs(z) <= TOLERANCE * (1.0 + np.abs(z) + abs(bias))).any():
            return None
        return z > 0

    def choose_pooled(
        self, t: int, pooled: torch.Tensor, ratio: float, logits: torch.Tensor | None = None, allowed: np.ndarray | None = None
    ) -> int | None:
        """:meth:`choose_features` from pooled features ``[1, C]``; ``logits [1, K]`` give the
        confidences where the model has no probes (``None`` when either is not float32, or for
        logits of fewer than 2 classes)."""
        if pooled.dtype != torch.float32:
            return None
        kernel = self._kernel()
        if kernel is None:
            x = self._hidden(t, pooled.numpy()[0], 1, ratio, logits)
            return None if x is None else self.head.choose_hidden(x, allowed)
        z = _NO_LOGITS
        if self.confidences and not self._classes:
            if logits is None or logits.dtype != torch.float32 or logits.shape[-1] < 2:
                return None
            z = logits.numpy()[0].astype(np.float64)
        return self._decide(kernel, t, pooled.reshape(1, -1, 1, 1), ratio, z, allowed)[0]

    def _kernel(self):
        """The compiled decision (:func:`dyncnn_gym.native_router.kernel`), or ``None`` (numba
        missing or turned off, or a policy whose layers do not chain)."""
        if self._native is False:
            self._native = native_router.kernel() if native_router.enabled() and self._chains() else None
        return self._native

    def _rows_kernel(self):
        """The compiled batch decision (:func:`dyncnn_gym.native_router.rows_kernel`), or ``None``
        (as :meth:`_kernel`)."""
        if self._native_rows is False:
            self._native_rows = native_router.rows_kernel() if native_router.enabled() and self._chains() else None
        return self._native_rows

    def _chains(self) -> bool:
        """Whether the policy's layers chain (each linear layer reads what the one before it
        writes): the compiled kernel indexes without bounds checks."""
        ws = self.head.native_program()[0]
        if not ws or not self._folded:
            return False
        hidden = self._folded[0][0].shape[0] - self._classes
        width = hidden
        for w in ws:
            if w.shape[1] != width:
                return False
            width = w.shape[0]
        return width == self.head.num_actions and self._tail.shape[0] == hidden

    def _decide(
        self, kernel, t: int, features: torch.Tensor, ratio: float, z: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int | None, np.ndarray]:
        """The compiled decision ``t`` on one image's features ``[1, C, H, W]``: the action (``None``
        when not sure, or for features that are not a dense float32 map) and the scores, float64
        ``[A]`` (NaN where the kernel did not run)."""
        f, shape = features, features.shape
        if (
            len(shape) != 4
            or shape[0] != 1
            or f.dtype is not torch.float32
            or not (f.is_contiguous(memory_format=torch.channels_last) or f.is_contiguous())
        ):
            return None, self._nan
        key = (t, shape[1], shape[2] * shape[3])
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = self._program(*key)
        if not program or (allowed is not None and allowed.shape != self._all.shape):
            return None, self._nan
        out = np.empty(self._all.shape[0])
        a = kernel(
            f.numpy(), ratio, z, self._all if allowed is None else np.ascontiguousarray(allowed, dtype=bool), out, *program
        )
        return (None if a < 0 else int(a)), out

    def _program(self, t: int, C: int, hw: int) -> tuple:
        """The kernel's arguments after the image's own for decision ``t`` on ``C`` channels of ``hw``
        positions (empty where ``C`` exceeds the decision's width)."""
        inv, weight = self._first(t, C, hw)
        if weight is None:
            return ()
        ws, bs, ops, params, cost = self.head.native_program()  # type: ignore[misc]
        return (
            inv,
            weight,
            self._folded[t][1],
            self._classes,
            self._tail,
            self.confidences,
            ws,
            bs,
            ops,
            params,
            cost,
            TOLERANCE,
        )

    def _first(self, t: int, C: int, hw: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decision ``t``'s ``1 / (scale * hw)`` for ``C`` channels and its folded first layer's
        first ``C`` columns, contiguous (``None`` where ``C`` exceeds the decision's width)."""
        weight, _, cache = self._folded[t]
        hit = cache.get((C, hw))
        if hit is None:
            cols = np.ascontiguousarray(weight[:, :C]) if C <= weight.shape[1] else None
            hit = cache[(C, hw)] = (1.0 / (self.scales[t][:C] * hw), cols)
        return hit

    def _hidden(self, t: int, sums: np.ndarray, hw: int, ratio: float, logits: torch.Tensor | None) -> np.ndarray | None:
        """The head's first layer applied to decision ``t``'s observation without building it, from
        per-channel sums ``[C]`` of ``hw`` positions each: float64 ``[H]``, or ``None`` where the
        confidences would come from ``logits`` that are missing, not float32 or of fewer than 2 classes."""
        bias = self._folded[t][1]
        inv, weight = self._first(t, sums.shape[0], hw)
        if weight is None:
            return None
        ft = sums * inv  # float64
        np.tanh(ft, out=ft)
        x = weight @ ft
        x += bias
        if not self.confidences:
            x += ratio * self._tail[:, 0]
            return x
        K = self._classes
        if K:
            z, x = x[:K], x[K:]
        else:
            if logits is None or logits.dtype != torch.float32 or logits.shape[-1] < 2:
                return None
            z = logits.numpy()[0].astype(np.float64)
        top, margin, entropy = confidence_host(z)
        x += self._tail @ np.array((top, margin, entropy, ratio))
        return x

    def choose_batch(
        self,
        t: int,
        pooled: torch.Tensor,
        ratio: np.ndarray,
        logits: torch.Tensor | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Decision ``t`` for a batch, in float32, without building its observations: the pooled
        features ``[B, C]`` (CPU) through the folded first layer (:meth:`choose_features`' fold, the
        probe's logits in the same product), the FLOPs ratios spent ``[B]`` and, where the model
        has no probes, the logits ``[B, K]`` whose confidences it observes. With numba, one
        compiled call (:func:`dyncnn_gym.native_router.decide_rows`), else NumPy. Returns
        ``(actions int64 [B], sure bool [B])`` (:meth:`HostHead.choose_hidden_rows`; an action where
        not ``sure`` is for the torch head to replace), or ``None`` for features or logits that are
        not float32, logits of fewer than 2 classes, or features wider than the decision (the torch
        path then decides)."""
        K = self._classes
        observed = self.confidences and not K  # the confidences of the model's logits
        if pooled.dtype != torch.float32 or (
            observed and (logits is None or logits.dtype != torch.float32 or logits.shape[-1] < 2)
        ):
            return None
        B, C = pooled.shape
        kernel = self._rows_kernel()
        if kernel is not None:  # one compiled call; it indexes without bounds checks: shapes checked here
            program = self._program32(t, C)
            z = np.ascontiguousarray(logits.numpy()) if observed else _NO_ROWS  # type: ignore[union-attr]
            masked = allowed is not None
            if (
                program is None
                or ratio.shape != (B,)
                or (observed and z.shape[0] != B)
                or (masked and allowed.shape != (B, self._all.shape[0]))  # type: ignore[union-attr]
            ):
                return None
            acts = np.empty(B, dtype=np.int64)
            kernel(
                np.ascontiguousarray(pooled.numpy()),
                ratio.astype(np.float32),
                z,
                np.ascontiguousarray(allowed, dtype=bool) if masked else _NO_MASK,
                masked,
                acts,
                *program,
            )
            return acts, acts >= 0
        folded = self._first32(t, C)
        if folded is None:
            return None
        inv, weight, bias, tail = folded
        ft = pooled.numpy() * inv
        np.tanh(ft, out=ft)
        x = _mm(ft, weight, bias)
        r = ratio.astype(np.float32).reshape(B, 1)
        if not self.confidences:
            h = x
            h += r * tail[0].numpy()
        else:
            z, h = (x[:, :K], x[:, K:]) if K else (logits.numpy(), x)  # type: ignore[union-attr]
            top, margin, entropy = confidence_rows(z)
            h += _mm(np.column_stack((top, margin, entropy, r)), tail)  # float32, as z
        return self.head.choose_hidden_rows(h, allowed)

    def _program32(self, t: int, C: int) -> tuple | None:
        """:func:`~dyncnn_gym.native_router.decide_rows`' arguments after the batch's own for decision
        ``t`` on ``C`` channels: :meth:`_program`'s for pooled features, in float32; ``None`` where
        ``C`` exceeds the decision's width."""
        key = (t, C)
        if key not in self._rows32:
            program = self._program(t, C, 1)
            self._rows32[key] = tuple(_float32(v) for v in program) if program else None
        return self._rows32[key]

    def _first32(self, t: int, C: int) -> tuple | None:
        """:meth:`choose_batch`'s float32 fold for decision ``t`` on ``C`` channels: ``1 / scale``
        ``[C]`` (NumPy), the folded first layer as ``[C, K + H]`` and its bias (torch, for
        :func:`_mm`), the tail columns ``[1 or 4, H]`` (torch); ``None`` where ``C`` exceeds the
        decision's width."""
        key = (t, C)
        if key not in self._fold32:
            inv, cols = self._first(t, C, 1)
            self._fold32[key] = (
                None
                if cols is None
                else (
                    inv.astype(np.float32),
                    _mm_weight(cols),
                    torch.from_numpy(self._folded[t][1].astype(np.float32)),
                    _mm_weight(self._tail),
                )
            )
        return self._fold32[key]


def cached_router(model: object, build) -> HostRouter | None:
    """``model``'s :class:`HostRouter`, kept in its ``__dict__`` and built again by ``build()`` when
    the model's head was replaced or a tensor it copies changed in place."""
    hit = model.__dict__.get("_host")
    if hit is not None and hit[0] is model.head and (hit[1] is None or not hit[1].stale()):
        return hit[1]
    router = build()
    model.__dict__["_host"] = (model.head, router)
    return router


#: up to this many classes :func:`confidence_host` loops in Python (fewer calls than NumPy's)
PYTHON_CLASSES = 32


def confidence_host(z: np.ndarray) -> tuple[float, float, float]:
    """:func:`~dyncnn_gym.envs.probes.confidence` of one image's probe logits ``z [K]`` (K >= 2), in
    float64: top probability, margin between the two best, entropy / log(K)."""
    K = z.shape[0]
    if K <= PYTHON_CLASSES:
        zl = z.tolist()
        m = max(zl)
        e = [math.exp(v - m) for v in zl]
        total = sum(e)
        top = second = ent = 0.0
        for v in e:
            p = v / total
            if p > top:
                top, second = p, top
            elif p > second:
                second = p
            ent -= p * math.log(p if p > 1e-12 else 1e-12)
        return top, top - second, ent / math.log(K)
    p = z - z.max()
    np.exp(p, out=p)
    p /= p.sum()
    second, top = np.partition(p, -2)[-2:].tolist()
    return top, top - second, float(-(p @ np.log(np.maximum(p, 1e-12))) / math.log(K))


def confidence_rows(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~dyncnn_gym.envs.probes.confidence` of a batch of logits ``z [B, K]`` (K >= 2), in
    ``z``'s precision: top probabilities, margins between the two best, entropies / log(K), ``[B]`` each."""
    K = z.shape[1]
    p = z - z.max(1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(1, keepdims=True)
    top2 = np.partition(p, K - 2, axis=1)[:, K - 2 :]
    ent = (p * np.log(np.maximum(p, 1e-12))).sum(1)
    ent /= -math.log(K)
    return top2[:, 1], top2[:, 1] - top2[:, 0], ent


__all__ = ["PYTHON_CLASSES", "TOLERANCE", "HostHead", "HostRouter", "cached_router", "confidence_host", "confidence_rows"]
