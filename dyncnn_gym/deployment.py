"""Export any trained router as one torch model: :func:`export` and :func:`load`.

* Per-decision envs (``DynChannel-v0``, ``DynSkip-v0``, ``DynRoute-v0``): a
  :class:`~dyncnn_gym.routed.RoutedNet` (:func:`dyncnn_gym.routed.export`).
* ``DynExit-v0``: an :class:`ExitRoutedNet`. It routes a batch through the stages with the same
  :class:`~dyncnn_gym.exit_walk.ExitWalk` the env uses: at every exit it builds the env's
  observation, runs the policy, and the images whose action is 0 **leave the batch** with that
  exit's prediction; only the others run the next stage. So on the test split it gives the same
  predictions, exits and FLOPs as :func:`dyncnn_gym.evaluate` with the same policy, and its
  wall-clock time follows the FLOPs it spends.

The policy is turned into plain torch modules exactly as for :class:`~dyncnn_gym.routed.RoutedNet`
(:func:`dyncnn_gym.routed.policy_head`: PPO / A2C / RecurrentPPO / MaskablePPO / DQN / QR-DQN or a
torch module). ``save`` / :func:`load` store and rebuild either kind without SB3 or the data.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .envs.exit_core import ExitCore
from .envs.probes import confidence
from .envs.routing import make_core, mode_of
from .exit_walk import ExitWalk
from .models import DynamicNet, build
from .models.exits import make_stages
from .routed import RecurrentHead, RoutedNet, _check_spaces, _core_of, policy_head
from .routed import export as export_routed
from .routed import load as load_routed

#: ``format`` tag of files written by :meth:`ExitRoutedNet.save`
EXIT_FORMAT = "dyncnn_gym.exit_routed"
EXIT_FORMAT_VERSION = 1


class RoutedExits(NamedTuple):
    """What one routed early-exit pass gives.

    Attributes:
        logits: class scores ``[B, K]`` (the prediction of the exit each image left at).
        exits: int64 ``[B]`` (CPU): the exit each image left at.
        actions: int64 ``[B, T]`` (CPU): 1 for every stage continued, 0 at the exit taken, -1 after.
        flops: int64 ``[B]`` (CPU): FLOPs each image cost (stem, stages, exit heads evaluated).
        flops_ratio: float64 ``[B]`` (CPU): ``flops`` / FLOPs of the full network.
    """

    logits: torch.Tensor
    exits: torch.Tensor
    actions: torch.Tensor
    flops: torch.Tensor
    flops_ratio: torch.Tensor


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
        return next(self.backbone.parameters()).device

    def extra_repr(self) -> str:
        return f"env_id={self.env_id!r}, stages={self.stage_spec}, budget={self.budget}, policy={self.info.get('policy')!r}"

    @torch.no_grad()
    def observe(self, walk: ExitWalk) -> torch.Tensor:
        """Observations ``[B, obs_dim]`` float32 at the walk's exit (as ``DynExit-v0`` builds them)."""
        b, t = len(walk), walk.t
        ft = torch.tanh(walk.pooled.float() / getattr(self, f"scale_{t}"))
        onehot = ft.new_zeros((b, self.feat_dim - ft.shape[1] + self.T))
        onehot[:, self.feat_dim - ft.shape[1] + t] = 1.0
        ratio = torch.from_numpy(np.minimum(walk.flops / self.full, 1.0).astype(np.float32)[:, None]).to(ft.device)
        return torch.cat([ft, onehot, confidence(walk.logits), ratio], 1)

    def masks(self, walk: ExitWalk) -> np.ndarray:
        """bool ``[B, 2]``: exiting always; continuing unless the budget forbids the next stage."""
        m = np.ones((len(walk), 2), dtype=bool)
        if self.budget is not None:
            k = walk.t + 1
            costs = self.stages.costs
            m[:, 1] = walk.flops + costs.stages[k] + costs.heads[k] <= self.budget * self.full + 1e-9
        return m

    def _check_images(self, images: Any) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch tensor (or NumPy array) [B, C, H, W]; got {type(images).__name__}")
        shape = tuple(self.backbone.in_shape)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"images have shape {tuple(images.shape)}; expected [B, {', '.join(map(str, shape))}]")
        if not images.dtype.is_floating_point:
            raise TypeError(f"images have dtype {images.dtype}; expected a floating dtype (e.g. torch.float32)")
        if images.device != self.device:
            raise ValueError(f"images are on {images.device} but the model is on {self.device}")
        return images

    @torch.no_grad()
    def route(self, images: torch.Tensor | np.ndarray) -> RoutedExits:
        """Route a batch (see the module docstring): images that exit stop computing."""
        x = self._check_images(images)
        if self.backbone.training:
            self.backbone.eval()
        B = x.shape[0]
        logits = torch.zeros((B, self.backbone.num_classes), device=x.device)
        exits = np.zeros(B, dtype=np.int64)
        actions = np.full((B, self.T), -1, dtype=np.int64)
        flops = np.zeros(B, dtype=np.int64)
        if B:
            walk = ExitWalk(self.stages, x)
            logits = logits.to(walk.logits.dtype)
            order = np.arange(B)  # image index of each row of the walk
            state = self.head.initial_state(B, x.device) if self.recurrent else None
            while not walk.done and len(walk):
                obs = self.observe(walk)
                allowed = self.masks(walk)
                mask = torch.from_numpy(allowed).to(obs.device)
                if state is not None:
                    a, h, c = self.head(obs, mask, *state)
                    state = (h, c)
                else:
                    a = self.head(obs, mask)
                a = self._check_actions(a, allowed, walk.t)
                before = walk.actions
                gone = walk.step(a)
                rows = order[gone.rows]
                logits[torch.from_numpy(rows).to(x.device)] = gone.logits
                exits[rows], flops[rows], actions[rows] = gone.exit, gone.flops, before[gone.rows]
                if len(gone.rows):
                    stay = np.flatnonzero(a == 1)
                    order = order[stay]
                    if state is not None:
                        keep = torch.from_numpy(stay).to(x.device)
                        state = (state[0].index_select(1, keep), state[1].index_select(1, keep))
            if len(walk):
                idx = torch.from_numpy(order).to(x.device)
                logits[idx] = walk.logits
                exits[order], flops[order], actions[order] = walk.t, walk.flops, walk.actions
        f = torch.from_numpy(flops)
        self.last = RoutedExits(logits, torch.from_numpy(exits), torch.from_numpy(actions), f, f.double() / self.full)
        return self.last

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class scores ``[B, K]`` of routed ``images [B, C, H, W]`` (see :meth:`route`)."""
        return self.route(images).logits

    def _check_actions(self, a: torch.Tensor, allowed: np.ndarray, t: int) -> np.ndarray:
        acts = a.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if acts.shape[0] != allowed.shape[0]:
            raise ValueError(f"the policy gave {acts.shape[0]} actions at exit {t}; expected {allowed.shape[0]}")
        if acts.shape[0] and (acts.min() < 0 or acts.max() > 1):
            raise ValueError(f"the policy gave actions outside {{0, 1}} at exit {t}: {sorted(set(acts.tolist()))}")
        ok = allowed[np.arange(acts.shape[0]), acts]
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"the policy continued image {r} at exit {t}, which breaks the compute budget {self.budget}")
        return acts

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``torch.save`` file :func:`load` reads without SB3 or data)."""
        from .pretraining import CHECKPOINT_VERSION

        net = self.backbone
        meta = dict(getattr(net, "meta", None) or {})
        meta.update(
            arch=net.arch, config=net.config(), in_shape=list(net.in_shape), num_classes=net.num_classes, groups=net.groups
        )
        blob = {
            "format": EXIT_FORMAT,
            "version": EXIT_FORMAT_VERSION,
            "backbone": {
                "version": CHECKPOINT_VERSION,
                "meta": meta,
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            },
            "stages": self.stage_spec,
            "env_id": self.env_id,
            "budget": self.budget,
            "scales": [getattr(self, f"scale_{k}").cpu() for k in range(self.S)],
            "head": copy.deepcopy(self.head).cpu(),
            "info": self.info,
            "torch": torch.__version__,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
        return path


def export(policy: Any, env_id: str | None = None, *, core: Any = None, **env_kwargs: Any) -> RoutedNet | ExitRoutedNet:
    """One model that routes like ``policy`` does in the env ``env_id(**env_kwargs)`` (or in ``core=``,
    an env or its core): an :class:`ExitRoutedNet` for ``DynExit-v0``, else a
    :class:`~dyncnn_gym.routed.RoutedNet` (see :func:`dyncnn_gym.routed.export` for the arguments)."""
    exit_core = None
    if core is not None:
        c = getattr(core, "unwrapped", core)
        c = getattr(c, "core", c)
        if isinstance(c, ExitCore):
            if env_kwargs:
                raise ValueError(f"pass either core= or env arguments, not both (got {sorted(env_kwargs)})")
            if env_id is not None and mode_of(env_id) != "exit":
                raise ValueError(f"env_id={env_id!r} has {mode_of(env_id)!r} decisions, but core= is an early-exit core")
            exit_core = c
    elif env_id is not None and mode_of(env_id) == "exit":
        env_kwargs.pop("render_mode", None)
        exit_core = make_core(env_id, 1, **env_kwargs)
    if exit_core is None:
        if core is not None:
            _core_of(core)  # a clear error for anything that is not an env
        return export_routed(policy, env_id, core=core, **env_kwargs)
    head, description = policy_head(policy)
    _check_spaces(policy, exit_core)
    net = exit_core.net
    routed = ExitRoutedNet(
        net,
        exit_core.stages.describe(),
        head.to(exit_core.device),
        list(exit_core.scale),
        exit_core.budget,
        env_id or "DynExit-v0",
        {
            "policy": description,
            "data": exit_core.data.name,
            "data_fingerprint": exit_core.data.fingerprint,
            "backbone": net.arch,
        },
    ).to(exit_core.device)
    obs = torch.zeros((1, routed.obs_dim), device=routed.device)
    try:
        with torch.no_grad():
            mask = torch.ones((1, 2), dtype=torch.bool, device=routed.device)
            a = (
                routed.head(obs, mask, *routed.head.initial_state(1, routed.device))[0]
                if routed.recurrent
                else routed.head(obs, mask)
            )
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"the policy does not run on this env's observations [B, {routed.obs_dim}]: {e}") from e
    if a.numel() != 1:
        raise ValueError(f"the policy gave {a.numel()} actions for one observation; expected scores [B, 2] or actions [B]")
    return routed


def load(path: str | Path, device: str | torch.device = "cpu") -> RoutedNet | ExitRoutedNet:
    """Rebuild a model saved by :meth:`RoutedNet.save` or :meth:`ExitRoutedNet.save` on ``device``.

    The file is unpickled (``weights_only=False``): load only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved routed model at {str(path)!r}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != EXIT_FORMAT:
        return load_routed(path, device)
    if blob.get("version") != EXIT_FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has format version {blob.get('version')!r}; this dyncnn_gym reads {EXIT_FORMAT_VERSION}"
        )
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but torch sees no CUDA device; use device='cpu'")
    meta = blob["backbone"]["meta"]
    net = build(meta["arch"], tuple(meta["in_shape"]), meta["num_classes"], meta["groups"], **meta["config"])
    net.load_state_dict(blob["backbone"]["state_dict"])
    net.meta = meta
    out = ExitRoutedNet(net.eval(), blob["stages"], blob["head"], blob["scales"], blob["budget"], blob["env_id"], blob["info"])
    return out.to(dev)


__all__ = ["ExitRoutedNet", "RoutedExits", "export", "load"]
