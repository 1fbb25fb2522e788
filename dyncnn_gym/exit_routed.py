"""An early-exit router and its cascade as one torch model: :class:`ExitRoutedNet`.

The ``DynExit-v0`` counterpart of :class:`~dyncnn_gym.routed.RoutedNet` (exit models only; the
per-decision envs export through :mod:`dyncnn_gym.routed`, and :func:`dyncnn_gym.export` picks the
right one). It routes a batch through the stages with the same
:class:`~dyncnn_gym.exit_walk.ExitWalk` the env uses: at every exit it builds the env's
observation, runs the policy, and the images whose action is 0 **leave the batch** with that exit's
prediction; only the others run the next stage. So on the test split it gives the same predictions,
exits and FLOPs as :func:`dyncnn_gym.evaluate` with the same policy, and its wall-clock time follows
the FLOPs it spends.

The policy is turned into torch modules by :func:`dyncnn_gym.routed.policy_head`, i.e. by
:func:`dyncnn_gym.policies.as_policy`, the one adapter every face uses. :meth:`ExitRoutedNet.save`
and :func:`load` store and rebuild the model without SB3 or the data, in the file layout of
:class:`~dyncnn_gym.routed.RoutedNet`: written atomically, read with ``weights_only=True`` (only the
policy-head classes of :func:`dyncnn_gym.routed.head_classes` and those a caller passes are rebuilt).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .envs.exit_core import ExitCore
from .envs.probes import confidence
from .exit_walk import ExitWalk, RoutedExits, run_exits
from .host_head import HostRouter, cached_router
from .models import DynamicNet
from .models.base import first_parameter, param_dtype
from .models.exits import make_stages
from .policies import Policy, RecurrentHead
from .routed import (
    _dry_run,
    backbone_entry,
    backbone_from_entry,
    check_images,
    check_spaces,
    checked_action,
    checked_actions,
    head_policy,
    policy_head,
    read_file,
)

#: ``format`` tag of files written by :meth:`ExitRoutedNet.save`
EXIT_FORMAT = "dyncnn_gym.exit_routed"
EXIT_FORMAT_VERSION = 1


class ExitRoutedNet(nn.Module):
    """A cascade of stages with exits and its router in one inference-only model.

    ``forward(images [B, C, H, W]) -> logits [B, K]``; :meth:`route` also gives the exits, actions
    and FLOPs, and :attr:`last` holds the :class:`RoutedExits` of the latest call.
    """

    def __init__(
        self,
        backbone: DynamicNet,
        stages: dict,
        head: nn.Module,
        scales: list[torch.Tensor],
        budget: float | None = None,
        env_id: str | None = None,
        info: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, DynamicNet):
            raise TypeError(f"backbone={type(backbone).__name__} must be a dyncnn_gym DynamicNet")
        self.backbone, self.head, self.env_id = backbone, head, env_id
        self.stage_spec = dict(stages)
        self.stages = make_stages(backbone, stages["kind"], tuple(stages["widths"]) if "widths" in stages else None)
        costs = self.stages.costs
        self.S, self.T, self.A, self.full = costs.num_exits, costs.num_exits - 1, 2, int(costs.full)
        self.feat_dim = max(self.stages.feature_widths)
        if len(scales) != self.S:
            raise ValueError(f"expected {self.S} observation scales (one per exit), got {len(scales)}")
        for k, s in enumerate(scales):
            self.register_buffer(f"scale_{k}", torch.as_tensor(s).detach().clone())
        self.obs_dim = self.feat_dim + self.T + 4
        self.budget = None if budget is None else float(budget)
        self.recurrent = isinstance(head, RecurrentHead)
        self.info = dict(info or {})
        self.last: RoutedExits | None = None
        super().train(False)

    def train(self, mode: bool = True) -> ExitRoutedNet:
        """Inference only: ``train(True)`` raises."""
        if mode:
            raise RuntimeError("ExitRoutedNet is inference-only (its exits are not differentiable)")
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device of the backbone (and of every buffer and the policy head)."""
        p = first_parameter(self.backbone)
        return torch.device("cpu") if p is None else p.device

    def _apply(self, fn, *args: Any, **kwargs: Any) -> ExitRoutedNet:
        for cached in ("_rows", "_ratios", "_host"):  # .to() / .cuda() / .half() may move or cast everything
            self.__dict__.pop(cached, None)
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"env_id={self.env_id!r}, stages={self.stage_spec}, budget={self.budget}, policy={self.info.get('policy')!r}"

    @property
    def policy(self) -> Policy:
        """The routing policy (:class:`~dyncnn_gym.policies.Policy`) around :attr:`head`."""
        return head_policy(self)

    @torch.no_grad()
    def observe(self, walk: ExitWalk) -> torch.Tensor:
        """Observations ``[B, obs_dim]`` float32 at the walk's exit (as ``DynExit-v0`` builds them)."""
        return self._observe_rows(walk)

    def _observe_rows(self, walk: ExitWalk, rows: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`observe` of the walk's images, or of its ``rows`` (int64) only."""
        logits, pooled, flops = walk.logits, walk.pooled, walk.flops
        if rows is not None:
            idx = torch.from_numpy(rows).to(logits.device)
            logits, pooled, flops = logits.index_select(0, idx), pooled.index_select(0, idx), flops[rows]
        ratio = torch.from_numpy(np.minimum(flops / self.full, 1.0).astype(np.float32)[:, None])
        return self._observe(walk.t, logits, pooled, ratio.to(logits.device))

    def _observe(self, t: int, logits: torch.Tensor, pooled: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """The observation at exit ``t`` from its logits ``[B, K]``, pooled features ``[B, C_t]`` and
        FLOPs-ratio column ``[B, 1]``: ``[tanh(features / scale), zero padding, one-hot of t,
        confidence, FLOPs ratio]``."""
        ft = torch.tanh(pooled.float() / getattr(self, f"scale_{t}"))
        row = self._row(t, ft.device)
        b = ft.shape[0]
        return torch.cat([ft, row if b == 1 else row.expand(b, -1), confidence(logits), ratio], 1)

    def _row(self, t: int, device: torch.device) -> torch.Tensor:
        """The constant part of exit ``t``'s observation (padding and one-hot), ``[1, F - C_t + T]`` (cached)."""
        rows = self.__dict__.setdefault("_rows", {})
        hit = rows.get((t, device))
        if hit is None:
            pad = self.feat_dim - self.stages.feature_widths[t]
            hit = torch.zeros((1, pad + self.T), device=device)
            hit[0, pad + t] = 1.0
            rows[(t, device)] = hit
        return hit

    def masks(self, walk: ExitWalk) -> np.ndarray:
        """bool ``[B, 2]``: exiting always; continuing unless the budget forbids the next stage."""
        m = np.ones((len(walk), 2), dtype=bool)
        if self.budget is not None:
            k = walk.t + 1
            costs = self.stages.costs
            m[:, 1] = walk.flops + costs.stages[k] + costs.heads[k] <= self.budget * self.full + 1e-9
        return m

    def _check_images(self, images: Any) -> torch.Tensor:
        return check_images(images, self.backbone.in_shape, self.device)

    @torch.no_grad()
    def route(self, images: torch.Tensor | np.ndarray) -> RoutedExits:
        """Route a batch (see the module docstring): images that exit stop computing."""
        x = self._check_images(images)
        if self.backbone.training:
            self.backbone.eval()
        B = x.shape[0]
        if B == 1:
            return self._route_one(x)
        if B == 0:
            logits = torch.zeros((0, self.backbone.num_classes), device=x.device)
            ints = torch.zeros((0, self.T + 2), dtype=torch.int64)
            self.last = RoutedExits(logits, ints[:, 0], ints[:, 2:], ints[:, 1], ints[:, 1].double())
            return self.last
        policy = self.policy
        state = [policy.initial_state(B, x.device)]
        went_on: list[np.ndarray] = []  # rows of the walk that continued at the last decision

        host = self._host_router() if x.device.type == "cpu" and not self.recurrent else None

        def choose(walk: ExitWalk) -> np.ndarray:
            if went_on and state[0] is not None:  # a recurrent state follows the images that are still in the walk
                keep = torch.from_numpy(went_on.pop()).to(x.device)
                state[0] = tuple(s.index_select(1, keep) for s in state[0])
            allowed = None if self.budget is None else self.masks(walk)
            if host is not None:  # float32 on the host; the torch head for the rows it cannot call
                chosen = host.choose_batch(walk.t, walk.pooled, np.minimum(walk.flops / self.full, 1.0), walk.logits, allowed)
                if chosen is not None:
                    acts, sure = chosen
                    if not sure.all():
                        rows = np.flatnonzero(~sure)
                        obs = self._observe_rows(walk, rows)
                        sub = None if allowed is None else allowed[rows]
                        a, _ = policy.act(obs, None if sub is None else torch.from_numpy(sub).to(x.device), None)
                        acts[rows] = checked_actions(a, sub, walk.t, self.A, self.budget, len(rows), where="exit")
                    return acts
            obs = self.observe(walk)
            mask = None if allowed is None else torch.from_numpy(allowed).to(obs.device)
            a, state[0] = policy.act(obs, mask, state[0])
            acts = checked_actions(a, allowed, walk.t, self.A, self.budget, len(walk), where="exit")
            went_on[:] = [np.flatnonzero(acts == 1)]
            return acts

        logits, flops, exits, actions = run_exits(self.stages, x, choose)
        f = torch.from_numpy(flops)
        self.last = RoutedExits(logits, torch.from_numpy(exits), torch.from_numpy(actions), f, f.double() / self.full)
        return self.last

    def _route_one(self, x: torch.Tensor) -> RoutedExits:
        """:meth:`route` for one image: the same stages, observations and actions with scalar
        bookkeeping (no row gathers, no NumPy accounting)."""
        stages, costs = self.stages, self.stages.costs
        dtype = param_dtype(self.backbone)
        if x.dtype != dtype:
            x = x.to(dtype)
        policy = self.policy
        state = policy.initial_state(1, x.device)
        carry, logits, pooled = stages.advance(0, stages.begin(x))
        flops = int(costs.stem + costs.stages[0] + costs.heads[0])
        actions = [-1] * self.T
        limit = None if self.budget is None else self.budget * self.full + 1e-9
        t = 0
        host = self._host_router() if x.device.type == "cpu" and not self.recurrent else None
        while t < self.T:
            nxt = flops + int(costs.stages[t + 1] + costs.heads[t + 1])
            allowed = None if limit is None or nxt <= limit else np.array([[True, False]])
            v = None
            if host is not None:  # NumPy, unless the two actions are too close to tell apart
                v = host.choose_pooled(t, pooled, min(flops / self.full, 1.0), logits, None if allowed is None else allowed[0])
            if v is None:
                mask = None if allowed is None else torch.from_numpy(allowed).to(x.device)
                a, state = policy.act(self._observe(t, logits, pooled, self._ratio(flops, x.device)), mask, state)
                if a.numel() != 1:  # raises, naming the count
                    checked_actions(a, allowed, t, self.A, self.budget, 1, where="exit")
                v = checked_action(a, allowed, t, self.A, self.budget, where="exit")
            actions[t] = v
            if v == 0:
                break
            t += 1
            carry, logits, pooled = stages.advance(t, carry)
            flops = nxt
        ints = torch.tensor([flops, t, *actions], dtype=torch.int64)  # one allocation, sliced
        f = ints[:1]
        self.last = RoutedExits(logits, ints[1:2], ints[2:].view(1, self.T), f, f.double() / self.full)
        return self.last

    def _host_router(self) -> HostRouter | None:
        """The router on the host (see :mod:`dyncnn_gym.host_head`), or ``None``."""
        return cached_router(
            self,
            lambda: HostRouter.of(
                self.head,
                self.A,
                [getattr(self, f"scale_{t}") for t in range(self.T)],
                [self.feat_dim + t for t in range(self.T)],
                self.obs_dim,
                confidences=True,
            ),
        )

    def _ratio(self, flops: int, device: torch.device) -> torch.Tensor:
        """The observation's last column for one image, ``[[min(flops / full, 1)]]`` float32 (cached per value)."""
        cache = self.__dict__.setdefault("_ratios", {})
        hit = cache.get((flops, device))
        if hit is None:
            hit = cache[(flops, device)] = torch.tensor([[np.float32(min(flops / self.full, 1.0))]], device=device)
        return hit

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class scores ``[B, K]`` of routed ``images [B, C, H, W]`` (see :meth:`route`)."""
        return self.route(images).logits

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``torch.save`` file :func:`load` reads without SB3 or data),
        atomically (see :mod:`dyncnn_gym.fileio`): readers see the old file or the complete new one."""
        from .fileio import save_torch

        blob = {
            "format": EXIT_FORMAT,
            "version": EXIT_FORMAT_VERSION,
            "backbone": backbone_entry(self.backbone),
            "stages": self.stage_spec,
            "env_id": self.env_id,
            "budget": self.budget,
            "scales": [getattr(self, f"scale_{k}").cpu() for k in range(self.S)],
            "head": copy.deepcopy(self.head).cpu(),
            "info": self.info,
            "torch": str(torch.__version__),
        }
        return save_torch(blob, path)


def export_exits(policy: Any, core: ExitCore, env_id: str = "DynExit-v0") -> ExitRoutedNet:
    """One model that routes like ``policy`` does in the early-exit ``core`` (see
    :func:`dyncnn_gym.export` for the accepted policies)."""
    head, description = policy_head(policy)
    check_spaces(policy, core)
    net = core.net
    routed = ExitRoutedNet(
        net,
        core.stages.describe(),
        head.to(core.device),
        list(core.scale),
        core.budget,
        env_id,
        {
            "policy": description,
            "data": core.data.name,
            "data_fingerprint": core.data.fingerprint,
            "backbone": net.arch,
        },
    ).to(core.device)
    _dry_run(routed)
    return routed


def is_exit_file(blob: Any) -> bool:
    """Whether a loaded file ``blob`` is an :class:`ExitRoutedNet` saved by :meth:`ExitRoutedNet.save`."""
    return isinstance(blob, dict) and blob.get("format") == EXIT_FORMAT


def from_blob(blob: dict, path: str | Path, device: torch.device) -> ExitRoutedNet:
    """Rebuild an :class:`ExitRoutedNet` from a file's contents (read by :func:`dyncnn_gym.deployment.load`)."""
    from .fileio import CorruptFileError

    if blob.get("version") != EXIT_FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has format version {blob.get('version')!r}; this dyncnn_gym reads {EXIT_FORMAT_VERSION}"
        )
    try:
        net = backbone_from_entry(blob["backbone"])
        if not isinstance(blob["head"], nn.Module):
            raise TypeError(f"its policy head is a {type(blob['head']).__name__}, not a torch module")
        out = ExitRoutedNet(net, blob["stages"], blob["head"], blob["scales"], blob["budget"], blob["env_id"], blob["info"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{str(path)!r} is a damaged early-exit model ({str(e).splitlines()[0][:200]})") from None
    return out.to(device)


def load(path: str | Path, device: str | torch.device = "cpu", *, safe_globals: Any = ()) -> ExitRoutedNet:
    """Rebuild an :class:`ExitRoutedNet` saved with :meth:`ExitRoutedNet.save` on ``device`` (read
    with ``weights_only=True``; see :func:`dyncnn_gym.routed.load` for ``safe_globals`` and the errors)."""
    blob, dev = read_file(path, device, safe_globals)
    if not is_exit_file(blob):
        raise ValueError(f"{str(path)!r} is not an early-exit model saved by ExitRoutedNet.save (no format {EXIT_FORMAT!r})")
    return from_blob(blob, path, dev)


__all__ = ["EXIT_FORMAT", "ExitRoutedNet", "RoutedExits", "export_exits", "load"]
