"""Export a trained router and its backbone as one torch model that routes internally.

(The module is ``routed``, not ``export``: a submodule named like the package-level function
``dyncnn_gym.export`` would shadow it once imported.)

:func:`export` turns a policy (an SB3 / sb3-contrib model or a torch module) and the env it was
trained on into a :class:`RoutedNet`: ``net(images [B, C, H, W]) -> logits [B, K]``. At every
decision point it builds exactly the observation the env builds (``tanh(pooled / scale)`` padded
to ``F``, the one-hot of ``t``, the probe confidences with ``obs="probe"``, the FLOPs ratio spent
so far), runs the policy network, masks the actions a compute ``budget`` forbids exactly as the env
does, and lets the backbone compute only what was chosen (a batched :class:`~dyncnn_gym.walk.Walk`:
skipped blocks and pruned channel groups are not computed, but for a bounded share of a mixed
batch's rows: :data:`~dyncnn_gym.walk.MERGE_FLOPS`, :data:`~dyncnn_gym.walk.DENSE_SKIP_SHARE`).
So on the test split it gives the same predictions, actions and FLOPs as
:func:`dyncnn_gym.evaluate` with the same policy.

The policy is turned into its torch form by :func:`dyncnn_gym.policies.as_policy` (the one adapter
every face uses) and kept as plain torch modules only (no SB3 object), copied at export time:

* PPO / A2C (and RecurrentPPO): ``features extractor -> mlp_extractor.policy_net -> action_net``;
  the action is the argmax of the categorical distribution's probabilities, as
  ``predict(deterministic=True)`` computes it (RecurrentPPO carries its LSTM state from decision to
  decision of an image, starting from zeros).
* MaskablePPO: the same with the budget's action mask applied as sb3-contrib applies it.
* DQN: argmax of the Q-values; QR-DQN: argmax of the mean quantile.
* a torch module mapping observations ``[B, D]`` to action scores ``[B, A]`` (argmax over the
  allowed actions) or to integer actions ``[B]`` (checked against the budget);
* an ensemble of SB3 models or a :class:`~dyncnn_gym.policies.CostBiasedPolicy` (the mean of the
  members' scores, less the cost bias).

On the CPU a score head's decision runs on the host (:mod:`dyncnn_gym.host_head`): the observation
and the policy's layers in float64 NumPy for one image (a few tens of microseconds instead of some
thirty torch dispatches), in float32 NumPy for a batch (NumPy's elementwise functions are several
times faster than torch's at these sizes); when two actions are too close for that to call the
float32 torch head's choice, the torch path below decides (for those rows of a batch). Elsewhere
the observation is built from cached constant parts (the one-hot row, the FLOPs-ratio entry of the
FLOPs spent so far) and the policy's layers run as direct functional calls. The walk advances one
image without grouping.

Actor-critic policies that are not maskable, DQN and QR-DQN take the argmax over *allowed* actions
under a budget (in :func:`~dyncnn_gym.evaluate` such a policy fails on the first forbidden action);
without a budget every action is allowed and nothing changes.

``RoutedNet.save(path)`` / :func:`load` store and rebuild it without SB3 and without the data set:
the backbone (arch, config, weights: the layout of :func:`dyncnn_gym.pretraining.save_checkpoint`),
the observation scales, the probes, the policy modules and what the env was. Files are written
atomically and read with ``weights_only=True`` (only :func:`head_classes` and the classes a caller
passes are rebuilt), so loading a file cannot run code.

TorchScript / ``torch.export``: a :class:`RoutedNet` cannot be scripted or traced as one graph.
Which layers and channel slices run depends on the actions, i.e. on the data, and the walk keeps its
accounting in NumPy and regroups samples by action with Python control flow (``np.argsort``,
per-group calls on cached weight slices); a trace would freeze one route and a graph with masks
would compute everything. The policy heads alone (:class:`ScoreHead`, :class:`RecurrentHead`) are
scriptable (``torch.jit.script(net.head)``), for running the router elsewhere.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .envs.probes import confidence
from .host_head import HostRouter, cached_router
from .models import DynamicNet, build
from .models.base import first_parameter
from .policies import (
    ACCEPTED,
    ModuleHead,
    OneShotHead,
    Policy,
    QuantileMean,
    RecurrentHead,
    ScoreHead,
    as_policy,
    within_budget,
)
from .walk import Walk, cost_tensors, run

#: ``format`` tag of files written by :meth:`RoutedNet.save`
FORMAT = "dyncnn_gym.routed"
FORMAT_VERSION = 1


class Routed(NamedTuple):
    """What one routed forward pass gives.

    Attributes:
        logits: class scores ``[B, K]`` (float, on the model's device).
        actions: int64 ``[B, T]`` (CPU): the action taken at each decision point.
        flops: int64 ``[B]`` (CPU): FLOPs each image cost (stem, decisions, head).
        flops_ratio: float64 ``[B]`` (CPU): ``flops`` / FLOPs of the full network.
    """

    logits: torch.Tensor
    actions: torch.Tensor
    flops: torch.Tensor
    flops_ratio: torch.Tensor


# -- policy -> head ---------------------------------------------------------------------------------
def policy_head(policy: Any) -> tuple[nn.Module, str]:
    """The policy's deterministic action choice as torch modules: ``(head, description)``
    (:func:`dyncnn_gym.policies.as_policy`'s torch form, which a routed model ships).

    Raises:
        TypeError: ``policy`` is not one of the accepted kinds, or has no torch form (a plain callable,
            an SB3-like model whose network this package does not know).
    """
    try:
        adapted = as_policy(policy)
    except TypeError as e:
        if "accepted:" in str(e) and "is not a policy" in str(e):
            raise TypeError(f"policy={policy!r} cannot be exported; accepted: {ACCEPTED}") from None
        raise
    if adapted.head is None:
        if callable(policy) and not hasattr(policy, "predict"):
            raise TypeError(
                f"policy={policy!r} is a plain Python callable, which cannot be exported as a model (it may run"
                f" anything); accepted: {ACCEPTED}. dyncnn_gym.evaluate still accepts it."
            )
        raise TypeError(
            f"policy={type(policy).__name__} has no torch form this package knows (it is routed through its predict),"
            f" so it cannot be exported; accepted: {ACCEPTED}"
        )
    return adapted.head, adapted.description


# -- the routed model ----------------------------------------------------------------------------------
def head_policy(model: nn.Module) -> Policy:
    """The :class:`~dyncnn_gym.policies.Policy` around a routed model's ``head`` (cached on the model
    until its head is replaced)."""
    p = model.__dict__.get("_policy")
    if p is None or p.head is not model.head:
        p = model.__dict__["_policy"] = Policy(
            model.head, str(model.info.get("policy", type(model.head).__name__)), model.head
        )
    return p


def checked_action(
    a: torch.Tensor, allowed: np.ndarray | None, t: int, A: int, budget: float | None, where: str = "decision"
) -> int:
    """:func:`checked_actions` for one image (``a`` holds one action): a Python int."""
    v = int(a)
    if not 0 <= v < A:
        raise ValueError(f"the policy gave action {v} at {where} {t}; valid: 0..{A - 1}")
    if allowed is not None and not allowed[0, v]:
        raise ValueError(
            f"the policy gave action {v} to image 0 at {where} {t}, which breaks the compute budget"
            f" {budget}; valid actions there: {np.flatnonzero(allowed[0]).tolist()}"
        )
    return v


def checked_actions(
    a: torch.Tensor, allowed: np.ndarray | None, t: int, A: int, budget: float | None, batch: int, where: str = "decision"
) -> np.ndarray:
    """A policy's actions at decision (or exit) ``t`` as int64 ``[batch]``, or a clear error: one per
    image, each in ``0..A-1`` and, when ``allowed`` (bool ``[batch, A]``) is given, allowed there by the
    compute ``budget``."""
    acts = a.detach().cpu().numpy().astype(np.int64).reshape(-1)
    if acts.shape[0] != batch:
        raise ValueError(f"the policy gave {acts.shape[0]} actions at {where} {t}; expected {batch} (one per image)")
    if acts.shape[0] and (acts.min() < 0 or acts.max() >= A):
        bad = acts[(acts < 0) | (acts >= A)]
        raise ValueError(f"the policy gave action {int(bad[0])} at {where} {t}; valid: 0..{A - 1}")
    if allowed is None:
        return acts
    ok = allowed[np.arange(acts.shape[0]), acts]
    if not ok.all():
        r = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"the policy gave action {int(acts[r])} to image {r} at {where} {t}, which breaks the compute budget"
            f" {budget}; valid actions there: {np.flatnonzero(allowed[r]).tolist()}"
        )
    return acts


class RoutedNet(nn.Module):
    """A backbone and a router in one inference-only model (see the module docstring).

    ``forward(images [B, C, H, W] float) -> logits [B, K]``; :meth:`route` also gives the actions and
    FLOPs, and :attr:`last` holds the :class:`Routed` of the latest call. Images go on the model's
    device (``net.to(device)`` moves everything). Always runs without autograd, backbone in eval mode.

    Attributes:
        mode, env_id, obs_mode, budget: what the env was (``budget``: FLOPs-ratio cap or ``None``).
        T, A: decision points and actions per decision; ``full``: FLOPs of the full network.
        obs_dim: ``F + T (+ 3 with probes) + 1``; ``info``: a dict describing the export.
    """

    def __init__(
        self,
        backbone: DynamicNet,
        mode: str,
        head: nn.Module,
        scales: list[torch.Tensor],
        probes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        budget: float | None = None,
        env_id: str | None = None,
        info: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, DynamicNet):
            raise TypeError(f"backbone={type(backbone).__name__} must be a dyncnn_gym DynamicNet")
        backbone.check_mode(mode)
        self.backbone, self.head, self.mode = backbone, head, mode
        self.env_id = env_id
        self.table, _, _ = cost_tensors(backbone, mode)
        self.T, self.A, self.full = self.table.num_decisions, self.table.num_actions, int(self.table.full)
        self._min_to_go = self.table.min_to_go()
        self.widths = backbone.feature_widths(mode)
        self.feat_dim = max(self.widths)
        if len(scales) != self.T:
            raise ValueError(f"expected {self.T} observation scales (one per decision point), got {len(scales)}")
        for t, s in enumerate(scales):
            self.register_buffer(f"scale_{t}", torch.as_tensor(s).detach().clone())
        self.obs_mode = "probe" if probes is not None else "features"
        if probes is not None:
            if len(probes) != self.T:
                raise ValueError(f"expected {self.T} probes (one per decision point), got {len(probes)}")
            for t, (w, b) in enumerate(probes):
                self.register_buffer(f"probe_w_{t}", torch.as_tensor(w).detach().clone())
                self.register_buffer(f"probe_b_{t}", torch.as_tensor(b).detach().clone())
        self.obs_dim = self.feat_dim + self.T + (3 if probes is not None else 0) + 1
        dev = next(backbone.parameters()).device
        for t, width in enumerate(self.widths):  # the constant part of decision t's observation
            row = torch.zeros((1, self.feat_dim - width + self.T), device=dev)
            row[0, self.feat_dim - width + t] = 1.0
            self.register_buffer(f"_row_{t}", row, persistent=False)
        self.budget = None if budget is None else float(budget)
        self.one_shot = isinstance(head, OneShotHead)  # every decision planned at the first: one observation per image
        if self.one_shot and mode != "skip":
            raise ValueError(f"a one-shot (BlockDrop) head makes skip decisions; this model routes in {mode!r} mode")
        self.recurrent = isinstance(head, (RecurrentHead, OneShotHead))
        self.info = dict(info or {})
        self.last: Routed | None = None
        self._consts: list[tuple] | None = None  # per decision: (scale, row, probe weight, probe bias)
        self._ratios: dict[int, torch.Tensor] = {}  # FLOPs spent -> the observation's [1, 1] FLOPs-ratio entry
        self._ones: dict[int, torch.Tensor] = {}  # batch -> all-allowed mask [B, A]
        super().train(False)

    # -- nn.Module ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> RoutedNet:
        """Inference only: ``train(True)`` raises (fine-tune the backbone in the env instead)."""
        if mode:
            raise RuntimeError(
                "RoutedNet is inference-only (its routes are not differentiable); fine-tune the backbone with"
                " dyncnn_gym.callbacks in the env and export again"
            )
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device of the backbone (and of every buffer and the policy head)."""
        p = first_parameter(self.backbone)
        return torch.device("cpu") if p is None else p.device

    def _apply(self, fn, *args: Any, **kwargs: Any) -> RoutedNet:
        self._consts, self._ratios, self._ones = None, {}, {}
        self.__dict__.pop("_host", None)
        return super()._apply(fn, *args, **kwargs)

    def _constants(self) -> list[tuple]:
        """Per decision point: its scale, constant observation row, and probe (``None`` without probes)."""
        if self._consts is None:
            probe = self.obs_mode == "probe"
            self._consts = [
                (
                    getattr(self, f"scale_{t}"),
                    getattr(self, f"_row_{t}"),
                    getattr(self, f"probe_w_{t}") if probe else None,
                    getattr(self, f"probe_b_{t}") if probe else None,
                )
                for t in range(self.T)
            ]
        return self._consts

    @property
    def policy(self) -> Policy:
        """The routing policy (:class:`~dyncnn_gym.policies.Policy`) around :attr:`head`."""
        return head_policy(self)

    def _host_router(self) -> HostRouter | None:
        """The router on the host (see :mod:`dyncnn_gym.host_head`), or ``None``."""
        consts = self._constants()
        return cached_router(
            self,
            lambda: HostRouter.of(
                self.head,
                self.T if self.one_shot else self.A,
                [c[0] for c in consts],
                [self.feat_dim + t for t in range(self.T)],
                self.obs_dim,
                None if self.obs_mode != "probe" else [(c[2], c[3]) for c in consts],
            ),
        )

    def extra_repr(self) -> str:
        return (
            f"env_id={self.env_id!r}, mode={self.mode!r}, obs={self.obs_mode!r}, budget={self.budget}, "
            f"T={self.T}, A={self.A}, policy={self.info.get('policy')!r}"
        )

    # -- observations and masks (as RoutingCore._observe / _masks) -------------------------------
    @torch.no_grad()
    def observe(self, walk: Walk) -> torch.Tensor:
        """Observations ``[B, obs_dim]`` float32 on the model's device at the walk's decision point."""
        return self._observe(walk)

    def _observe(self, walk: Walk) -> torch.Tensor:
        return self._observation(walk.t, walk.pooled(), walk.flops.numpy())

    def _observation(self, t: int, pooled: torch.Tensor, flops: np.ndarray) -> torch.Tensor:
        """Decision ``t``'s observations of images with pooled features ``[b, C]`` that spent ``flops`` (int ``[b]``)."""
        b = pooled.shape[0]
        scale, row, probe_w, probe_b = self._constants()[t]
        ft = torch.tanh(pooled / scale)
        if ft.dtype != torch.float32:
            ft = ft.float()
        # [features, zero padding to F, one-hot of t, (probe confidence), FLOPs ratio]: one concatenation
        parts = [ft, row if b == 1 else row.expand(b, -1)]
        if probe_w is not None:
            parts.append(confidence(ft @ probe_w + probe_b))
        parts.append(self._ratio_entry(flops, ft.device))
        return torch.cat(parts, 1)

    def _ratio_entry(self, flops: np.ndarray, device: torch.device) -> torch.Tensor:
        """The observation's last column: ``min(flops / full, 1)`` as float32 ``[B, 1]`` (cached per FLOPs value at batch 1)."""
        if flops.shape[0] == 1:
            f = int(flops[0])
            hit = self._ratios.get(f)
            if hit is None:
                if len(self._ratios) > 4096:
                    self._ratios.clear()
                hit = self._ratios[f] = torch.tensor([[np.float32(min(f / self.full, 1.0))]], device=device)
            return hit
        ratio = np.minimum(flops / self.full, 1.0).astype(np.float32)
        return torch.from_numpy(ratio[:, None]).to(device)

    def masks(self, walk: Walk) -> np.ndarray:
        """bool ``[B, A]``: actions the budget allows at the walk's decision point (all without one)."""
        b = len(walk)
        if self.budget is None:
            return np.ones((b, self.A), dtype=bool)
        t = walk.t
        limit = self.budget * self.full + 1e-9
        need = walk.flops.numpy()[:, None] + self.table.steps[t][walk.prev.numpy()] + self._min_to_go[t + 1][None, :]
        return need <= limit

    # -- routing --------------------------------------------------------------------------------
    def _check_images(self, images: Any) -> torch.Tensor:
        return check_images(images, self.backbone.in_shape, self.device)

    @torch.no_grad()
    def route(self, images: torch.Tensor | np.ndarray) -> Routed:
        """Route a batch: ``images [B, C, H, W]`` -> :class:`Routed` (logits, actions, FLOPs)."""
        x = self._check_images(images)
        if self.backbone.training:
            self.backbone.eval()
        if x.shape[0] == 0:
            logits = torch.zeros((0, self.backbone.num_classes), device=x.device)
            flops = torch.zeros(0, dtype=torch.int64)
            self.last = Routed(logits, torch.zeros((0, self.T), dtype=torch.int64), flops, flops.double())
            return self.last
        walk = Walk(self.backbone, self.mode, x)
        B = len(walk)
        policy = self.policy
        state = [policy.initial_state(B, x.device)]
        # without a budget every action is allowed: score heads skip the mask; other heads get all-ones
        free = None if isinstance(self.head, ScoreHead) else self._all_allowed(B, x.device)

        host = self._host_router() if x.device.type == "cpu" and not isinstance(self.head, RecurrentHead) else None

        def choose(walk: Walk) -> int | np.ndarray:
            allowed = None if self.budget is None else self.masks(walk)
            one = host is not None and B == 1  # one image: float64 NumPy, unless too close to tell apart
            if one and self.one_shot and state[0] is None:  # the plan on the host; else the torch head plans below
                ratio = min(walk.spent() / self.full, 1.0)
                keeps = host.plan_features(walk.t, walk.features_one(), ratio, self.head.bias)
                if keeps is not None:
                    state[0] = keeps[None, :]
            if self.one_shot and state[0] is not None:  # the route planned at the first decision: no observation
                a = state[0][:, walk.t] if allowed is None else within_budget(state[0][:, walk.t], allowed)
                return int(a[0]) if B == 1 else a.astype(np.int64)
            if one and not self.one_shot:
                ratio = min(walk.spent() / self.full, 1.0)
                a = host.choose_features(walk.t, walk.features_one(), ratio, None if allowed is None else allowed[0])
                if a is not None:
                    return a
            elif host is not None and B > 1 and not self.one_shot:  # a batch: float32 on the host; rows it cannot call: torch
                pooled, flops = walk.pooled(), walk.flops.numpy()
                chosen = host.choose_batch(walk.t, pooled, np.minimum(flops / self.full, 1.0), None, allowed)
                if chosen is not None:
                    acts, sure = chosen
                    if not sure.all():
                        rows = np.flatnonzero(~sure)
                        obs = self._observation(
                            walk.t, pooled.index_select(0, torch.from_numpy(rows).to(x.device)), flops[rows]
                        )
                        sub = None if allowed is None else allowed[rows]
                        mask = self._allowed_mask(sub, len(rows), free, obs.device)
                        a, _ = policy.act(obs, mask, None)
                        acts[rows] = checked_actions(a, sub, walk.t, self.A, self.budget, len(rows))
                    return acts
            obs = self._observe(walk)
            a, state[0] = policy.act(obs, self._allowed_mask(allowed, B, free, obs.device), state[0])
            if self.one_shot:  # every decision's action before the budget, as NumPy [B, T]
                check_plan(state[0][0], self.T)
                state[0] = self.head.keeps(state[0][0]).cpu().numpy()
            return self._check_actions(a, allowed, walk.t, B)

        if B == 1 and host is not None and self.budget is None and not self.one_shot:
            full = self.full  # one image, the router on the host: choose's first branch without choose
            while not walk.done:
                a = host.choose_features(walk.t, walk.features_one(), min(walk.spent() / full, 1.0))
                walk.advance(choose(walk) if a is None else a)  # not sure: the torch head decides
        else:
            run(walk, choose)
        logits = walk.logits()
        actions, flops = walk.accounts()
        self.last = Routed(logits, actions, flops, flops.double() / self.full)
        return self.last

    def _allowed_mask(
        self, allowed: np.ndarray | None, batch: int, free: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """The policy's action mask: the budget's ``allowed`` rows, else ``None`` for a score head
        (``free`` is ``None``) or all-ones ``[batch, A]`` for other heads."""
        if allowed is not None:
            return torch.from_numpy(allowed).to(device)
        return None if free is None else self._all_allowed(batch, device)

    def _all_allowed(self, batch: int, device: torch.device) -> torch.Tensor:
        hit = self._ones.get(batch)
        if hit is None:
            if len(self._ones) > 64:
                self._ones.clear()
            hit = self._ones[batch] = torch.ones((batch, self.A), dtype=torch.bool, device=device)
        return hit

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class scores ``[B, K]`` of routed ``images [B, C, H, W]`` (see :meth:`route`)."""
        return self.route(images).logits

    def _check_actions(self, a: torch.Tensor, allowed: np.ndarray | None, t: int, batch: int) -> int | np.ndarray:
        """The policy's actions, checked: one Python int for a batch of one, else int64 ``[B]``."""
        if batch == 1 and a.numel() == 1:
            return checked_action(a, allowed, t, self.A, self.budget)
        return checked_actions(a, allowed, t, self.A, self.budget, batch)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``torch.save`` file :func:`load` reads without SB3 or data),
        atomically (see :mod:`dyncnn_gym.fileio`): readers see the old file or the complete new one."""
        from .fileio import save_torch

        blob = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": backbone_entry(self.backbone),
            "mode": self.mode,
            "env_id": self.env_id,
            "budget": self.budget,
            "scales": [getattr(self, f"scale_{t}").cpu() for t in range(self.T)],
            "probes": None
            if self.obs_mode != "probe"
            else [(getattr(self, f"probe_w_{t}").cpu(), getattr(self, f"probe_b_{t}").cpu()) for t in range(self.T)],
            "head": copy.deepcopy(self.head).cpu(),
            "info": self.info,
            "torch": str(torch.__version__),
        }
        return save_torch(blob, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", *, safe_globals: Any = ()) -> RoutedNet:
        """Read a model written by :meth:`save` (see :func:`load`)."""
        return load(path, device, safe_globals=safe_globals)


def check_images(images: Any, in_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``images`` as a float tensor ``[B, *in_shape]`` on ``device`` (a NumPy array is converted), or a
    clear error: the routed models' input check."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor (or NumPy array) [B, C, H, W]; got {type(images).__name__}")
    shape = tuple(in_shape)
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        hint = " (one image: add a batch dimension, images[None])" if tuple(images.shape) == shape else ""
        raise ValueError(f"images have shape {tuple(images.shape)}; expected [B, {', '.join(map(str, shape))}]{hint}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images have dtype {images.dtype}; expected a floating dtype (e.g. torch.float32)")
    if images.device != device:
        raise ValueError(
            f"images are on {images.device} but the model is on {device}; move one of them (images.to(net.device))"
        )
    return images


def backbone_entry(net: DynamicNet) -> dict[str, Any]:
    """The ``"backbone"`` entry of a saved routed model: checkpoint version, plain metadata (arch,
    config, input shape, classes, groups) and the CPU state dict (:func:`backbone_from_entry` reads it)."""
    from .pretraining import CHECKPOINT_VERSION, plain_meta

    meta = plain_meta(dict(getattr(net, "meta", None) or {}))
    meta.update(
        arch=net.arch, config=net.config(), in_shape=list(net.in_shape), num_classes=net.num_classes, groups=net.groups
    )
    return {
        "version": CHECKPOINT_VERSION,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }


def backbone_from_entry(entry: dict[str, Any]) -> DynamicNet:
    """The backbone (in eval mode) a :func:`backbone_entry` describes; ``KeyError`` / ``TypeError`` /
    ``RuntimeError`` on a damaged entry."""
    from .pretraining import plain_meta

    meta = plain_meta(entry["meta"])
    net = build(meta["arch"], tuple(meta["in_shape"]), meta["num_classes"], meta["groups"], **meta["config"])
    net.load_state_dict(entry["state_dict"])
    net.meta = meta
    return net.eval()


def read_file(path: str | Path, device: str | torch.device = "cpu", safe_globals: Any = ()) -> tuple[Any, torch.device]:
    """A saved routed model's contents, read with ``weights_only=True`` (tensors, plain containers,
    the classes of :func:`head_classes` and ``safe_globals``), and the device to build it on."""
    from .device import check_device
    from .fileio import load_torch
    from .pretraining import CHECKPOINT_GLOBALS

    path = Path(path)
    dev = check_device(device)
    if not path.exists():
        raise FileNotFoundError(f"no saved routed model at {str(path)!r}")
    extra = tuple(safe_globals)
    if not all(isinstance(c, type) for c in extra):
        raise TypeError(f"safe_globals={safe_globals!r} must be a sequence of classes")
    return load_torch(path, (*CHECKPOINT_GLOBALS, *head_classes(), *extra), "routed model"), dev


def head_classes() -> tuple[type, ...]:
    """The classes a saved policy head may be rebuilt from: the policy heads (defined in
    :mod:`dyncnn_gym.policies` and this module) and every layer class of ``torch.nn`` (SB3's networks
    are built from them)."""
    from . import policies

    heads = [
        v
        for module in (globals(), vars(policies))
        for v in module.values()
        if isinstance(v, type)
        and issubclass(v, nn.Module)
        and v.__module__ in (__name__, policies.__name__)
        and v is not RoutedNet
    ]
    layers = [v for v in vars(nn).values() if isinstance(v, type) and issubclass(v, nn.Module)]
    return (*heads, *layers)


def load(path: str | Path, device: str | torch.device = "cpu", *, safe_globals: Any = ()) -> RoutedNet:
    """Rebuild a :class:`RoutedNet` saved with :meth:`RoutedNet.save` on ``device``.

    Needs neither SB3 nor the data set. The file is read with ``weights_only=True``: besides tensors
    and plain containers only the classes of :func:`head_classes` (this module's policy heads and
    ``torch.nn``'s layers) can be rebuilt, so a file cannot run code when loaded. A model whose
    policy is a custom torch module needs that module's class: pass it in ``safe_globals`` (a
    sequence of classes) if you trust the file; otherwise the file is refused, naming the class.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeFileError: (a ValueError) the file needs a class neither allow-listed nor in ``safe_globals``.
        CorruptFileError: (a ValueError) the file is empty, truncated or no torch file.
        ValueError: the file is not a saved routed model, or ``device`` is not available here.
    """
    blob, dev = read_file(path, device, safe_globals)
    return from_blob(blob, path, dev)


def from_blob(blob: Any, path: str | Path, device: torch.device) -> RoutedNet:
    """Rebuild a :class:`RoutedNet` from a file's contents (read by :func:`read_file`); ``path`` names
    the file in errors."""
    from .fileio import CorruptFileError

    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a routed model saved by RoutedNet.save (no format {FORMAT!r})")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has format version {blob.get('version')!r}; this dyncnn_gym reads {FORMAT_VERSION}")
    try:
        net = backbone_from_entry(blob["backbone"])
        if not isinstance(blob["head"], nn.Module):
            raise TypeError(f"its policy head is a {type(blob['head']).__name__}, not a torch module")
        out = RoutedNet(
            net,
            blob["mode"],
            blob["head"],
            blob["scales"],
            blob["probes"],
            blob["budget"],
            blob["env_id"],
            blob["info"],
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{str(path)!r} is a damaged routed model ({str(e).splitlines()[0][:200]})") from None
    return out.to(device)


# -- export ---------------------------------------------------------------------------------------------
def _core_of(core: Any):
    from .envs.core import RoutingCore

    if isinstance(core, RoutingCore):
        return core
    for obj in (core, getattr(core, "unwrapped", None)):
        c = getattr(obj, "core", None)
        if isinstance(c, RoutingCore):
            return c
    raise TypeError(
        f"core={type(core).__name__} is neither a RoutingCore nor an env built on one (gymnasium.make /"
        " make_vec of DynChannel / DynSkip / DynRoute-v0, or dyncnn_gym.sb3.make_vec_env; DynExit-v0 exports through"
        " dyncnn_gym.export)"
    )


def export(
    policy: Any, env_id: str | None = None, *, core: Any = None, dial: bool | None = None, **env_kwargs: Any
) -> RoutedNet:
    """One model that routes like ``policy`` does in the env ``env_id(**env_kwargs)``.

    Args:
        policy: an SB3 / sb3-contrib model (PPO, A2C, MaskablePPO, RecurrentPPO, DQN, QRDQN) or its
            ``.policy``, or a torch module mapping observations ``[B, D]`` to scores ``[B, A]`` or
            integer actions ``[B]``, or a one-shot policy on the skip envs (an actor trained on
            ``DynBlockDrop``, a :class:`~dyncnn_gym.policies.OneShotHead`). Copied: later training
            does not change the exported model.
        env_id: ``"DynChannel-v0"`` (default) or ``"DynSkip-v0"``.
        core: instead of ``env_kwargs``, an env (single, vector or SB3 ``VecEnv``) or its
            :class:`~dyncnn_gym.envs.core.RoutingCore`, whose backbone, scales, probes and budget
            are used.
        dial: dial the policy to the env's ``flops_target`` first, as
            :func:`~dyncnn_gym.evaluate` does (:func:`~dyncnn_gym.benchmark.calibrate.dial_to_target`;
            ``None``, the default: when the env holds a target and the policy has action scores), so
            that the exported model routes as the evaluation measured.
        env_kwargs: the env's arguments (``dataset``, ``backbone``, ``groups``, ``obs``, ``budget``,
            ``device``, ...), as given to ``gymnasium.make``; the data set is only read here (for the
            observation scales and probes).

    Returns:
        A :class:`RoutedNet` on the env's device, in eval mode.

    Raises:
        TypeError: ``policy`` cannot be exported (a plain callable, say) or ``core`` is no env.
        ValueError: ``env_id`` is unknown, or the policy does not fit the env's observations/actions.
    """
    from .envs.routing import mode_of

    if env_id is not None and mode_of(env_id) == "exit":
        raise ValueError(
            f"env_id={env_id!r} is the early-exit env: export it with dyncnn_gym.export (an ExitRoutedNet,"
            " dyncnn_gym.exit_routed), not with dyncnn_gym.routed.export"
        )
    if core is not None:
        if env_kwargs:
            raise ValueError(f"pass either core= or env arguments, not both (got {sorted(env_kwargs)})")
        core = _core_of(core)
        if env_id is not None and mode_of(env_id) != core.mode:
            raise ValueError(f"env_id={env_id!r} has {mode_of(env_id)!r} decisions, but core= routes in {core.mode!r} mode")
    else:
        from .envs.routing import make_core

        env_id = env_id or "DynChannel-v0"
        env_kwargs.pop("render_mode", None)
        core = make_core(env_id, 1, **env_kwargs)
    if env_id is None:
        env_id = {"channel": "DynChannel-v0", "skip": "DynSkip-v0", "route": "DynRoute-v0"}[core.mode]
    from .benchmark.calibrate import dial_to_target

    policy, _ = dial_to_target(policy, core, dial)
    head, description = policy_head(policy)
    check_spaces(policy, core)
    net = core.net
    routed = RoutedNet(
        net,
        core.mode,
        head.to(core.device),
        list(core.scale),
        None if core.probes is None else list(core.probes),
        core.budget,
        env_id,
        {
            "policy": description,
            "obs": core.obs_mode,
            "data": core.data.name,
            "data_fingerprint": core.data.fingerprint,
            "backbone": net.arch,
            "groups": net.groups,
        },
    ).to(core.device)
    _dry_run(routed)
    return routed


def check_plan(plan: torch.Tensor, T: int) -> None:
    """A one-shot policy's keep logits ``plan [B, T']`` must cover the backbone's ``T`` skip decisions exactly."""
    if plan.dim() != 2 or plan.shape[1] != T:
        raise ValueError(
            f"the one-shot policy gives keep logits of shape {tuple(plan.shape)}; this backbone has {T} skip decisions"
            " (the policy was trained on a DynBlockDrop env with another backbone?)"
        )


def check_spaces(policy: Any, core) -> None:
    """An SB3 model's spaces must be the env's (e.g. a model trained with ``obs="probe"``); raises ``ValueError``."""
    from gymnasium import spaces

    obs_space = getattr(policy, "observation_space", None)
    act_space = getattr(policy, "action_space", None)
    one_shot = isinstance(act_space, spaces.MultiBinary)
    if one_shot and getattr(core, "mode", None) != "skip":
        raise ValueError(
            f"the policy has {act_space} actions (a one-shot BlockDrop policy): it routes skip decisions"
            f" (DynSkip / DynBlockDrop), not {getattr(core, 'mode', 'exit')!r} ones"
        )
    D = core.observation_space.shape[0]
    shape = getattr(obs_space, "shape", None)
    if shape is not None and tuple(shape) != (D,):
        raise ValueError(
            f"the policy observes shape {tuple(shape)} but the env gives ({D},) (obs={core.obs_mode!r}, T={core.T});"
            " export with the env arguments the policy was trained with (obs=, backbone=, dataset=)"
        )
    if one_shot:
        if tuple(act_space.shape) != (core.T,):
            raise ValueError(f"the policy has {act_space} actions but the backbone has {core.T} skip decisions")
        return
    n = getattr(act_space, "n", None)
    if n is not None and int(n) != core.A:
        raise ValueError(f"the policy has {int(n)} actions but the env has Discrete({core.A}); check groups= and env_id")


def _dry_run(routed: RoutedNet) -> None:
    """Run the head once on zero observations so a policy that does not fit fails at export time."""
    dev = routed.device
    obs = torch.zeros((1, routed.obs_dim), device=dev)
    mask = torch.ones((1, routed.A), dtype=torch.bool, device=dev)
    if getattr(routed, "one_shot", False):  # a RoutedNet's one-shot head (an ExitRoutedNet has none)
        try:
            with torch.no_grad():
                plan = routed.head.plan(obs)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"the one-shot policy does not run on this env's observations [B, {routed.obs_dim}]: {e}") from e
        check_plan(plan, routed.T)
        return
    try:
        with torch.no_grad():
            if routed.recurrent:
                a = routed.head(obs, mask, *routed.head.initial_state(1, dev))[0]
            else:
                a = routed.head(obs, mask)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(
            f"the policy does not run on this env's observations [B, {routed.obs_dim}] with Discrete({routed.A}) actions: {e}"
        ) from e
    if a.numel() != 1:
        raise ValueError(
            f"the policy gave {a.numel()} actions for one observation; expected scores [B, {routed.A}] or actions [B]"
        )


__all__ = [
    "ModuleHead",
    "QuantileMean",
    "RecurrentHead",
    "OneShotHead",
    "Routed",
    "RoutedNet",
    "ScoreHead",
    "export",
    "head_classes",
    "load",
    "policy_head",
]
