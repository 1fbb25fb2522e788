"""Export a trained router and its backbone as one torch model that routes internally.

(The module is ``routed``, not ``export``: a submodule named like the package-level function
``dyncnn_gym.export`` would shadow it once imported.)

:func:`export` turns a policy (an SB3 / sb3-contrib model or a torch module) and the env it was
trained on into a :class:`RoutedNet`: ``net(images [B, C, H, W]) -> logits [B, K]``. At every
decision point it builds exactly the observation the env builds (``tanh(pooled / scale)`` padded
to ``F``, the one-hot of ``t``, the probe confidences with ``obs="probe"``, the FLOPs ratio spent
so far), runs the policy network, masks the actions a compute ``budget`` forbids exactly as the env
does, and lets the backbone compute only what was chosen (a batched :class:`~dyncnn_gym.walk.Walk`:
skipped blocks and pruned channel groups are never computed). So on the test split it gives the
same predictions, actions and FLOPs as :func:`dyncnn_gym.evaluate` with the same policy.

The policy is kept as plain torch modules only (no SB3 object), copied at export time:

* PPO / A2C (and RecurrentPPO): ``features extractor -> mlp_extractor.policy_net -> action_net``;
  the action is the argmax of the categorical distribution's probabilities, as
  ``predict(deterministic=True)`` computes it (RecurrentPPO carries its LSTM state from decision to
  decision of an image, starting from zeros).
* MaskablePPO: the same with the budget's action mask applied as sb3-contrib applies it.
* DQN: argmax of the Q-values; QR-DQN: argmax of the mean quantile.
* a torch module mapping observations ``[B, D]`` to action scores ``[B, A]`` (argmax over the
  allowed actions) or to integer actions ``[B]`` (checked against the budget).

Actor-critic policies that are not maskable, DQN and QR-DQN take the argmax over *allowed* actions
under a budget (in :func:`~dyncnn_gym.evaluate` such a policy fails on the first forbidden action);
without a budget every action is allowed and nothing changes.

``RoutedNet.save(path)`` / :func:`load` store and rebuild it without SB3 and without the data set:
the backbone (arch, config, weights: the layout of :func:`dyncnn_gym.pretraining.save_checkpoint`),
the observation scales, the probes, the policy modules and what the env was.

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
from .models import DynamicNet, build
from .walk import Walk, cost_tensors

#: ``format`` tag of files written by :meth:`RoutedNet.save`
FORMAT = "dyncnn_gym.routed"
FORMAT_VERSION = 1
ACCEPTED = (
    "an SB3 / sb3-contrib model (PPO, A2C, MaskablePPO, RecurrentPPO, DQN, QRDQN) or its .policy, or a torch"
    " nn.Module mapping observations [B, D] to action scores [B, A] or integer actions [B]"
)


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


# -- policy heads: observations [B, D] float32 and allowed actions [B, A] bool -> actions int64 [B] --
class ScoreHead(nn.Module):
    """Argmax of the scores ``body(obs) [B, A]`` over the allowed actions.

    ``kind``: ``"categorical"`` (SB3's ``Categorical(logits)``: forbidden actions at -1e8, logits
    normalised, argmax of the probabilities), ``"maskable"`` (sb3-contrib's ``MaskableCategorical``:
    normalised, masked to -1e8, normalised again) or ``"argmax"`` (forbidden actions at -inf).
    """

    def __init__(self, body: nn.Module, kind: str = "argmax") -> None:
        super().__init__()
        if kind not in ("categorical", "maskable", "argmax"):
            raise ValueError(f"kind={kind!r} is not a head kind; choose one of ['argmax', 'categorical', 'maskable']")
        self.body = body
        self.kind = kind
        self.probabilities = kind != "argmax"
        self.normalise_first = kind == "maskable"

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _choose(self.body(obs), mask, self.probabilities, self.normalise_first)


def _choose(scores: torch.Tensor, mask: torch.Tensor, probabilities: bool, normalise_first: bool) -> torch.Tensor:
    if not probabilities:
        return scores.masked_fill(~mask, float("-inf")).argmax(1)
    if normalise_first:
        scores = scores - scores.logsumexp(-1, keepdim=True)
    scores = torch.where(mask, scores, torch.full_like(scores, -1e8))
    logits = scores - scores.logsumexp(-1, keepdim=True)
    return torch.softmax(logits, -1).argmax(1)


class QuantileMean(nn.Module):
    """``[B, n * A]`` quantiles -> ``[B, A]`` mean over the ``n`` quantiles (QR-DQN's Q-values)."""

    def __init__(self, n_quantiles: int, num_actions: int) -> None:
        super().__init__()
        self.n_quantiles, self.num_actions = int(n_quantiles), int(num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.n_quantiles, self.num_actions).mean(1)


class RecurrentHead(nn.Module):
    """RecurrentPPO's actor: ``features -> LSTM (state carried across decisions) -> policy_net ->
    action_net``, the action being the argmax of the categorical probabilities.

    ``forward(obs, mask, h, c) -> (actions, h, c)``; states are ``[layers, B, hidden]``, zeros at
    the first decision (:meth:`initial_state`).
    """

    def __init__(self, features: nn.Module, lstm: nn.LSTM, policy_net: nn.Module, action_net: nn.Module) -> None:
        super().__init__()
        self.features, self.lstm, self.policy_net, self.action_net = features, lstm, policy_net, action_net

    def initial_state(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros((self.lstm.num_layers, batch, self.lstm.hidden_size), device=device)
        return z, z.clone()

    def forward(
        self, obs: torch.Tensor, mask: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(obs)
        out, (h, c) = self.lstm(f.unsqueeze(0), (h, c))
        scores = self.action_net(self.policy_net(out.squeeze(0)))
        return _choose(scores, mask, True, False), h, c


class ModuleHead(nn.Module):
    """A user's torch module: scores ``[B, A]`` (argmax over the allowed actions, forbidden ones at
    -inf, as :func:`dyncnn_gym.benchmark.protocol.as_policy` does) or integer actions ``[B]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.module(obs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the policy module returned {type(out).__name__}; expected a tensor of scores [B, A] or actions [B]"
            )
        if out.dtype.is_floating_point:
            if out.dim() != 2 or out.shape[1] != mask.shape[1]:
                raise ValueError(
                    f"the policy module returned scores of shape {tuple(out.shape)}; expected [B, {mask.shape[1]}]"
                )
            return out.masked_fill(~mask, float("-inf")).argmax(1)
        if out.dtype == torch.bool or out.dtype.is_complex:
            raise TypeError(f"the policy module returned dtype {out.dtype}; expected float scores or integer actions")
        return out.reshape(-1)


# -- policy -> head ---------------------------------------------------------------------------------
def _features_module(fe: nn.Module) -> nn.Module:
    """SB3's ``FlattenExtractor`` as a plain ``nn.Flatten``; any other extractor is copied as is."""
    if type(fe).__name__ == "FlattenExtractor" and isinstance(getattr(fe, "flatten", None), nn.Flatten):
        return copy.deepcopy(fe.flatten)
    return copy.deepcopy(fe)


def policy_head(policy: Any) -> tuple[nn.Module, str]:
    """The policy's deterministic action choice as torch modules: ``(head, description)``.

    Raises:
        TypeError: ``policy`` is not one of the accepted kinds (a plain callable included).
    """
    sb3 = policy.policy if (hasattr(policy, "predict") and isinstance(getattr(policy, "policy", None), nn.Module)) else policy
    name = type(policy).__name__
    if isinstance(sb3, nn.Module) and hasattr(sb3, "action_net") and hasattr(sb3, "mlp_extractor"):
        dist = type(getattr(sb3, "action_dist", None)).__name__
        if "Categorical" not in dist or "Multi" in dist:
            raise TypeError(
                f"{name} has a {dist} action distribution; only Discrete action spaces (Categorical) can be exported"
            )
        feats = _features_module(getattr(sb3, "pi_features_extractor", sb3.features_extractor))
        policy_net = copy.deepcopy(sb3.mlp_extractor.policy_net)
        action_net = copy.deepcopy(sb3.action_net)
        if getattr(sb3, "lstm_actor", None) is not None:
            head: nn.Module = RecurrentHead(feats, copy.deepcopy(sb3.lstm_actor), policy_net, action_net)
            return head.eval(), f"{name} (recurrent actor, LSTM state carried across decisions)"
        kind = "maskable" if dist.startswith("Maskable") else "categorical"
        return ScoreHead(nn.Sequential(feats, policy_net, action_net), kind).eval(), f"{name} ({kind} actor)"
    if isinstance(sb3, nn.Module) and hasattr(sb3, "quantile_net") and hasattr(sb3.quantile_net, "quantile_net"):
        qn = sb3.quantile_net
        body = nn.Sequential(
            _features_module(qn.features_extractor),
            copy.deepcopy(qn.quantile_net),
            QuantileMean(qn.n_quantiles, int(qn.action_space.n)),
        )
        return ScoreHead(body, "argmax").eval(), f"{name} (argmax of the mean quantile)"
    if isinstance(sb3, nn.Module) and hasattr(sb3, "q_net") and hasattr(sb3.q_net, "q_net"):
        qn = sb3.q_net
        body = nn.Sequential(_features_module(qn.features_extractor), copy.deepcopy(qn.q_net))
        return ScoreHead(body, "argmax").eval(), f"{name} (argmax of Q)"
    if sb3 is not policy or type(policy).__module__.split(".")[0] in ("stable_baselines3", "sb3_contrib"):
        raise TypeError(f"policy={name} is an SB3-like model whose policy network is not supported; accepted: {ACCEPTED}")
    if isinstance(policy, nn.Module):
        return ModuleHead(copy.deepcopy(policy)).eval(), f"torch module {name}"
    if callable(policy):
        raise TypeError(
            f"policy={policy!r} is a plain Python callable, which cannot be exported as a model (it may run"
            f" anything); accepted: {ACCEPTED}. dyncnn_gym.evaluate still accepts it."
        )
    raise TypeError(f"policy={policy!r} cannot be exported; accepted: {ACCEPTED}")


# -- the routed model ----------------------------------------------------------------------------------
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
        self._device: torch.device | None = None
        self.budget = None if budget is None else float(budget)
        self.recurrent = isinstance(head, RecurrentHead)
        self.info = dict(info or {})
        self.last: Routed | None = None
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
        if self._device is None:
            self._device = next(self.backbone.parameters()).device
        return self._device

    def _apply(self, fn, *args: Any, **kwargs: Any) -> RoutedNet:
        self._device = None  # .to() / .cuda() / .cpu() may move everything
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"env_id={self.env_id!r}, mode={self.mode!r}, obs={self.obs_mode!r}, budget={self.budget}, "
            f"T={self.T}, A={self.A}, policy={self.info.get('policy')!r}"
        )

    # -- observations and masks (as RoutingCore._observe / _masks) -------------------------------
    @torch.no_grad()
    def observe(self, walk: Walk) -> torch.Tensor:
        """Observations ``[B, obs_dim]`` float32 on the model's device at the walk's decision point."""
        t, b = walk.t, len(walk)
        ft = torch.tanh(walk.pooled() / getattr(self, f"scale_{t}")).float()
        # [features, zero padding to F, one-hot of t, (probe confidence), FLOPs ratio]: one concatenation
        parts = [ft, getattr(self, f"_row_{t}").expand(b, -1)]
        if self.obs_mode == "probe":
            parts.append(confidence(ft @ getattr(self, f"probe_w_{t}") + getattr(self, f"probe_b_{t}")))
        ratio = np.minimum(walk.flops.numpy() / self.full, 1.0).astype(np.float32)
        parts.append(torch.from_numpy(ratio[:, None]).to(ft.device))
        return torch.cat(parts, 1)

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
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch tensor (or NumPy array) [B, C, H, W]; got {type(images).__name__}")
        shape = tuple(self.backbone.in_shape)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            hint = " (one image: add a batch dimension, images[None])" if tuple(images.shape) == shape else ""
            raise ValueError(f"images have shape {tuple(images.shape)}; expected [B, {', '.join(map(str, shape))}]{hint}")
        if not images.dtype.is_floating_point:
            raise TypeError(f"images have dtype {images.dtype}; expected a floating dtype (e.g. torch.float32)")
        if images.device != self.device:
            raise ValueError(
                f"images are on {images.device} but the model is on {self.device}; move one of them (images.to(net.device))"
            )
        return images

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
        state = self.head.initial_state(len(walk), x.device) if self.recurrent else None
        allowed = np.ones((len(walk), self.A), dtype=bool)  # without a budget: every action, always
        mask = torch.ones((len(walk), self.A), dtype=torch.bool, device=x.device)
        while not walk.done:
            obs = self.observe(walk)
            if self.budget is not None:
                allowed = self.masks(walk)
                mask = torch.from_numpy(allowed).to(obs.device)
            if state is not None:
                a, h, c = self.head(obs, mask, *state)
                state = (h, c)
            else:
                a = self.head(obs, mask)
            walk.step(self._check_actions(a, allowed, walk.t))
        logits = walk.logits()
        flops = walk.flops.clone()
        self.last = Routed(logits, walk.actions.clone(), flops, flops.double() / self.full)
        return self.last

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class scores ``[B, K]`` of routed ``images [B, C, H, W]`` (see :meth:`route`)."""
        return self.route(images).logits

    def _check_actions(self, a: torch.Tensor, allowed: np.ndarray, t: int) -> np.ndarray:
        acts = a.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if acts.shape[0] != allowed.shape[0]:
            raise ValueError(
                f"the policy gave {acts.shape[0]} actions at decision {t}; expected {allowed.shape[0]} (one per image)"
            )
        if acts.shape[0] and (acts.min() < 0 or acts.max() >= self.A):
            bad = acts[(acts < 0) | (acts >= self.A)]
            raise ValueError(f"the policy gave action {int(bad[0])} at decision {t}; valid: 0..{self.A - 1}")
        if self.budget is None:
            return acts
        ok = allowed[np.arange(acts.shape[0]), acts]
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"the policy gave action {int(acts[r])} to image {r} at decision {t}, which breaks the compute budget"
                f" {self.budget}; valid actions there: {np.flatnonzero(allowed[r]).tolist()}"
            )
        return acts

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``torch.save`` file :func:`load` reads without SB3 or data)."""
        from .pretraining import CHECKPOINT_VERSION

        net = self.backbone
        meta = dict(getattr(net, "meta", None) or {})
        meta.update(
            arch=net.arch, config=net.config(), in_shape=list(net.in_shape), num_classes=net.num_classes, groups=net.groups
        )
        blob = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": {
                "version": CHECKPOINT_VERSION,
                "meta": meta,
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            },
            "mode": self.mode,
            "env_id": self.env_id,
            "budget": self.budget,
            "scales": [getattr(self, f"scale_{t}").cpu() for t in range(self.T)],
            "probes": None
            if self.obs_mode != "probe"
            else [(getattr(self, f"probe_w_{t}").cpu(), getattr(self, f"probe_b_{t}").cpu()) for t in range(self.T)],
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

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> RoutedNet:
        """Read a model written by :meth:`save` (see :func:`load`)."""
        return load(path, device)


def load(path: str | Path, device: str | torch.device = "cpu") -> RoutedNet:
    """Rebuild a :class:`RoutedNet` saved with :meth:`RoutedNet.save` on ``device``.

    Needs neither SB3 nor the data set (a custom policy module's class must be importable). The file
    is unpickled (``weights_only=False``): load only files you trust.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a saved routed model, or ``device`` is CUDA without a CUDA device.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved routed model at {str(path)!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but torch sees no CUDA device; use device='cpu'")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a routed model saved by RoutedNet.save (no format {FORMAT!r})")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has format version {blob.get('version')!r}; this dyncnn_gym reads {FORMAT_VERSION}")
    meta = blob["backbone"]["meta"]
    net = build(meta["arch"], tuple(meta["in_shape"]), meta["num_classes"], meta["groups"], **meta["config"])
    net.load_state_dict(blob["backbone"]["state_dict"])
    net.meta = meta
    out = RoutedNet(
        net.eval(), blob["mode"], blob["head"], blob["scales"], blob["probes"], blob["budget"], blob["env_id"], blob["info"]
    )
    return out.to(dev)


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
        " make_vec of DynChannel-v0 / DynSkip-v0, or dyncnn_gym.sb3.make_vec_env)"
    )


def export(policy: Any, env_id: str | None = None, *, core: Any = None, **env_kwargs: Any) -> RoutedNet:
    """One model that routes like ``policy`` does in the env ``env_id(**env_kwargs)``.

    Args:
        policy: an SB3 / sb3-contrib model (PPO, A2C, MaskablePPO, RecurrentPPO, DQN, QRDQN) or its
            ``.policy``, or a torch module mapping observations ``[B, D]`` to scores ``[B, A]`` or
            integer actions ``[B]``. Copied: later training does not change the exported model.
        env_id: ``"DynChannel-v0"`` (default) or ``"DynSkip-v0"``.
        core: instead of ``env_kwargs``, an env (single, vector or SB3 ``VecEnv``) or its
            :class:`~dyncnn_gym.envs.core.RoutingCore`, whose backbone, scales, probes and budget
            are used.
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

    if core is not None:
        if env_kwargs:
            raise ValueError(f"pass either core= or env arguments, not both (got {sorted(env_kwargs)})")
        core = _core_of(core)
        if env_id is not None and mode_of(env_id) != core.mode:
            raise ValueError(f"env_id={env_id!r} has {mode_of(env_id)!r} decisions, but core= routes in {core.mode!r} mode")
    else:
        from .envs.core import RoutingCore

        env_id = env_id or "DynChannel-v0"
        mode = mode_of(env_id)
        env_kwargs.pop("render_mode", None)
        core = RoutingCore(mode, 1, **env_kwargs)
    if env_id is None:
        env_id = {"channel": "DynChannel-v0", "skip": "DynSkip-v0", "route": "DynRoute-v0"}[core.mode]
    head, description = policy_head(policy)
    _check_spaces(policy, core)
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


def _check_spaces(policy: Any, core) -> None:
    """An SB3 model's spaces must be the env's (e.g. a model trained with ``obs="probe"``)."""
    obs_space = getattr(policy, "observation_space", None)
    act_space = getattr(policy, "action_space", None)
    D = core.observation_space.shape[0]
    shape = getattr(obs_space, "shape", None)
    if shape is not None and tuple(shape) != (D,):
        raise ValueError(
            f"the policy observes shape {tuple(shape)} but the env gives ({D},) (obs={core.obs_mode!r}, T={core.T});"
            " export with the env arguments the policy was trained with (obs=, backbone=, dataset=)"
        )
    n = getattr(act_space, "n", None)
    if n is not None and int(n) != core.A:
        raise ValueError(f"the policy has {int(n)} actions but the env has Discrete({core.A}); check groups= and env_id")


def _dry_run(routed: RoutedNet) -> None:
    """Run the head once on zero observations so a policy that does not fit fails at export time."""
    dev = routed.device
    obs = torch.zeros((1, routed.obs_dim), device=dev)
    mask = torch.ones((1, routed.A), dtype=torch.bool, device=dev)
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


__all__ = ["ModuleHead", "QuantileMean", "RecurrentHead", "Routed", "RoutedNet", "ScoreHead", "export", "load", "policy_head"]
