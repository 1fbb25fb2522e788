"""``BackboneFinetuneCallback``: fine-tune the backbone under the routes the current policy takes.

While an SB3 agent learns routing with RL, this callback trains the backbone supervisedly (cross-
entropy, gradients into the backbone only) on train images routed by the *current policy*, as
Runtime Neural Pruning alternates agent and network training. Batch-norm running statistics are
kept frozen by default (``bn="frozen"``): the routed network is evaluated with them, and letting
sampled routes rewrite them is what made SkipNet's accuracy collapse when its RL stage started.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback

from .envs.core import RoutingCore
from .pretraining import can_augment, route_loss, shift_images
from .walk import Walk


def check_augment(data: Any) -> None:
    """Raise ``ValueError`` unless ``augment=True`` can shift the images of ``data`` (a
    :class:`~dyncnn_gym.data.DataSplits`) by up to 2 pixels: they must be at least 16x16."""
    if not can_augment(data):
        shape = tuple(data.image_shape)
        raise ValueError(
            f"augment=True shifts images by up to 2 pixels, which needs images of at least 16x16;"
            f" this data set's are {shape[1]}x{shape[2]}: pass augment=False"
        )


def routed_logits(
    core: RoutingCore, policy: Any, images: torch.Tensor, deterministic: bool = True
) -> tuple[torch.Tensor, Walk]:
    """Route ``images`` through ``core.net`` with ``policy`` (an SB3 model, or anything
    :func:`~dyncnn_gym.policies.as_policy` accepts) choosing every action: :meth:`RoutingCore.route`.

    Runs with autograd enabled (gradients reach the backbone only; the policy sees detached
    observations). Returns the logits ``[B, classes]`` and the finished walk.
    """
    return core.route(policy, images, deterministic)


def local_core(venv: Any) -> RoutingCore:
    """A one-slot :class:`RoutingCore` in this process that mirrors env 0 of ``venv`` (an SB3 VecEnv of
    single routing envs, e.g. a ``SubprocVecEnv``): built from that env's constructor arguments and
    loaded with its current backbone weights. Raises ``ValueError`` if env 0 is not a routing env."""
    try:
        mode = venv.get_attr("mode", indices=[0])[0]
        kwargs = dict(venv.get_attr("_ezpickle_kwargs", indices=[0])[0])
    except AttributeError as e:
        raise ValueError(
            f"BackboneFinetuneCallback cannot find the routing env in the training env {type(venv).__name__}"
            f" ({e}); train on dyncnn_gym.sb3.make_vec_env(...), a VecEnv of gymnasium.make('DynChannel-v0' /"
            " 'DynSkip-v0', ...) envs, or pass core=RoutingCore(...)"
        ) from e
    if mode not in ("channel", "skip"):
        raise ValueError(
            f"env 0 of the training env has mode={mode!r}; BackboneFinetuneCallback routes 'channel' or 'skip' envs"
        )
    kwargs.pop("render_mode", None)
    core = RoutingCore(mode, 1, **kwargs)
    core.load_backbone_state(venv.env_method("get_backbone_state", indices=[0])[0])
    return core


def training_core(venv: Any) -> tuple[RoutingCore, bool]:
    """The :class:`RoutingCore` behind an SB3 VecEnv (wrappers removed) and whether it is a *local*
    mirror: the native VecEnv's own core (``False``), else :func:`local_core` of env 0 (``True``)."""
    while hasattr(venv, "venv"):
        venv = venv.venv
    core = getattr(venv, "core", None)
    return (core, False) if isinstance(core, RoutingCore) else (local_core(venv), True)


class BackboneFinetuneCallback(BaseCallback):
    """Supervised fine-tuning of the routed backbone inside ``model.learn``.

    Args:
        schedule: ``"alternate"`` (RNP: after every ``agent_rollouts`` rollouts, ``backbone_steps``
            steps of backbone training) or ``"joint"`` (``backbone_steps`` steps after every rollout).
        agent_rollouts, backbone_steps: see ``schedule``.
        lr: Adam learning rate of the backbone.
        batch_size: train images per backbone step.
        deterministic: route with the policy's deterministic actions (as evaluated) or sampled ones.
        bn: ``"frozen"`` (running statistics kept, default) or ``"train"`` (updated by the routed batches).
        distill: in-place distillation, as ``+distill`` backbones were pretrained: the routed logits
            are scored against the full network's (detached) probabilities on the same images
            instead of the labels, and the full network is trained on the labels in the same step
            (without that anchor the teacher drifts with its students and the network collapses).
        augment: shift every image by up to 2 pixels (as pretraining's ``augment``), so that
            fine-tuning does not memorise a small train split. Needs images of at least 16x16
            (checked at training start).
        core: the :class:`RoutingCore` whose backbone to train. Default: the training VecEnv's own
            core for the native VecEnv (``dyncnn_gym.sb3.make_vec_env``), which shares the backbone
            with every env slot. For single envs behind ``DummyVecEnv`` or in other processes
            (``SubprocVecEnv``, any start method), a *local* core built in this process at training
            start from the first env's constructor arguments (read with ``get_attr``), loaded with
            that env's current backbone weights (``env_method("get_backbone_state")``); its backbone
            is resolved like any env's in this process (an arch name or the default gives the
            process-wide shared network). Pass an explicit core to choose it yourself. Whenever the
            core is not the VecEnv's own, every backbone update is sent to every env with
            ``env_method("set_backbone_state", state_dict)`` (CPU tensors, one pickled copy per
            subprocess).
        seed: seeds the batch sampling.

    Logs ``finetune/loss`` (the step's loss: the routed one, plus the full network's with
    ``distill``), ``finetune/routed_accuracy`` and ``finetune/flops_ratio``.
    """

    def __init__(
        self,
        schedule: str = "alternate",
        agent_rollouts: int = 2,
        backbone_steps: int = 10,
        lr: float = 1e-4,
        batch_size: int = 128,
        deterministic: bool = True,
        bn: str = "frozen",
        distill: bool = False,
        augment: bool = False,
        core: RoutingCore | None = None,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if schedule not in ("alternate", "joint"):
            raise ValueError(f"schedule={schedule!r} is not a schedule; choose one of ['alternate', 'joint']")
        if bn not in ("frozen", "train"):
            raise ValueError(f"bn={bn!r} is not a batch-norm mode; choose one of ['frozen', 'train']")
        for name, v in (("agent_rollouts", agent_rollouts), ("backbone_steps", backbone_steps), ("batch_size", batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < float("inf"):
            raise ValueError(f"lr={lr!r} must be a positive number (Adam's learning rate)")
        self.schedule, self.agent_rollouts, self.backbone_steps = schedule, agent_rollouts, backbone_steps
        self.lr, self.batch_size, self.deterministic, self.bn = lr, batch_size, deterministic, bn
        for name, v in (("distill", distill), ("augment", augment), ("deterministic", deterministic)):
            if not isinstance(v, bool):
                raise ValueError(f"{name}={v!r} must be True or False")
        self.distill, self.augment = distill, augment
        self.core = core
        self.rng = np.random.default_rng(seed)
        self.rollouts = 0
        self.opt: torch.optim.Optimizer | None = None
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        if self.core is None:
            self.core, _ = training_core(self.training_env)
        if self.augment:
            check_augment(self.core.data)
        self.opt = torch.optim.Adam(self.core.net.parameters(), lr=self.lr)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.schedule == "alternate" and self.rollouts % self.agent_rollouts:
            return
        stats = self.finetune(self.backbone_steps)
        for k, v in stats.items():
            self.logger.record(f"finetune/{k}", v)
        self._broadcast()

    def finetune(self, steps: int) -> dict[str, float]:
        """Run ``steps`` supervised steps now; returns mean loss, routed accuracy and FLOPs ratio."""
        core = self.core
        assert core is not None and self.opt is not None
        net = core.net
        train = core.data.train
        X = torch.as_tensor(train.images)
        y = torch.as_tensor(train.labels)
        losses, accs, flops = [], [], []
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**62))) if self.augment else None
        net.train(self.bn == "train")
        try:
            for _ in range(steps):
                idx = torch.as_tensor(self.rng.integers(0, len(y), self.batch_size))
                xb, yb = X[idx], y[idx]
                if self.augment:
                    xb = shift_images(xb, gen)
                xb, yb = xb.to(core.device), yb.to(core.device)
                logits, walk = routed_logits(core, self.model, xb, self.deterministic)
                loss = torch.zeros((), device=logits.device)
                target = None
                if self.distill:
                    logits_full = net.full_forward(xb, core.mode)
                    loss = F.cross_entropy(logits_full, yb)
                    target = F.softmax(logits_full.detach(), dim=1)
                loss = loss + route_loss(logits, yb, target)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                losses.append(loss.item())
                accs.append(float((logits.argmax(1) == yb).float().mean()))
                flops.append(float(walk.flops.float().mean() / core.full))
        finally:
            net.eval()
        stats = {"loss": float(np.mean(losses)), "routed_accuracy": float(np.mean(accs)), "flops_ratio": float(np.mean(flops))}
        self.history.append(stats)
        return stats

    def _broadcast(self) -> None:
        """Send the new weights to every env unless they share this core (the native VecEnv)."""
        env = self.training_env
        if getattr(env, "core", None) is self.core:
            return  # the native VecEnv shares this backbone object: it already sees the new weights
        state = self.core.backbone_state()
        env.env_method("set_backbone_state", state)


#: how :class:`FlopsTargetCallback` measures the policy's FLOPs ratio
MEASURES = ("eval", "train")


class FlopsTargetCallback(BaseCallback):
    """Steer the reward's compute weight so that the policy's mean FLOPs ratio tracks ``target``.

    At one fixed compute weight, seeds of the same agent land at scattered FLOPs (on frozen DynSkip
    at weight 0.2, from 24 % to 41 % saved), so single operating points are hard to compare and a
    wanted cost is hard to hit. This callback treats the cost as a constraint and the weight as its
    multiplier (dual ascent): after every rollout it measures the policy's mean FLOPs ratio ``f``
    and sets ``w <- w * exp(gain * (f - target))`` on every env (the native VecEnv's core, or
    ``env_method("set_compute_weight", w)`` for single envs in this or other processes).

    Args:
        target: the FLOPs ratio (of the full network's) to steer to, in ``[min, 1]`` where ``min``
            is the cheapest route of the backbone (checked at training start).
        measure: ``"train"`` (default): ``f`` is the mean FLOPs ratio of the training episodes that
            ended in the rollout (sampled actions; free, and smooth). Sampled routes usually cost a
            few points of FLOPs ratio less than the deterministic routing of evaluation, so aim the
            target that much lower. ``"eval"``: ``f`` is the FLOPs ratio of the *deterministic*
            policy, as :func:`~dyncnn_gym.benchmark.protocol.evaluate` routes, on a fixed set of
            ``eval_images`` held-out images (the ``"val"`` split where the data has one, else
            ``"train"``). It measures what test-time routing spends, but it jumps as argmax
            decisions flip; on frozen DynChannel the weight then oscillated over two orders of
            magnitude (docs/results.md).
        gain: change of ``log w`` per unit of FLOPs-ratio error, per rollout (> 0).
        weight: the starting weight; default: the env's current one.
        eval_images: images per ``"eval"`` measurement.
        seed: picks the ``"eval"`` images.

    ``history`` holds one ``{"timesteps", "flops_ratio", "compute_weight"}`` per rollout (the
    weight set after that measurement); the same go to SB3's logger as ``flops_target/*``.
    """

    def __init__(
        self,
        target: float,
        measure: str = "train",
        gain: float = 3.0,
        weight: float | None = None,
        eval_images: int = 512,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target <= 1:
            raise ValueError(f"target={target!r} is not a FLOPs ratio; use a value in (0, 1]")
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not a measurement; choose one of {list(MEASURES)}")
        for name, v in (("gain", gain), ("weight", weight)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not (np.isfinite(v) and v > 0)):
                raise ValueError(f"{name}={v!r} must be a positive finite number")
        if isinstance(eval_images, bool) or not isinstance(eval_images, (int, np.integer)) or eval_images < 1:
            raise ValueError(f"eval_images={eval_images!r} must be a positive integer")
        self.target, self.measure, self.gain = float(target), measure, float(gain)
        self.weight = None if weight is None else float(weight)
        self.eval_images, self.seed = eval_images, seed
        self.history: list[dict[str, float]] = []
        self._flops: list[float] = []
        self._core: RoutingCore | None = None
        self._local = False
        self._images: torch.Tensor | None = None

    def _on_training_start(self) -> None:
        self._core, self._local = training_core(self.training_env)
        self._core.check_flops_ratio(self.target, "target")
        if self.weight is None:
            self.weight = float(self.training_env.get_attr("compute_weight", indices=[0])[0])
            if not self.weight > 0:
                raise ValueError("the env's compute weight is 0, which dual ascent cannot scale; pass weight=")
        self._set(self.weight)
        if self.measure == "eval":
            self._images = self._core.held_out_images(self.eval_images, self.seed)

    def _on_step(self) -> bool:
        if self.measure == "train":
            self._flops += [info["flops_ratio"] for info in self.locals["infos"] if "flops_ratio" in info]
        return True

    def _on_rollout_end(self) -> None:
        f = self.measured_flops_ratio()
        if f is None:
            return
        self.weight *= float(np.exp(self.gain * (f - self.target)))
        self._set(self.weight)
        self.history.append({"timesteps": float(self.num_timesteps), "flops_ratio": f, "compute_weight": self.weight})
        self.logger.record("flops_target/flops_ratio", f)
        self.logger.record("flops_target/compute_weight", self.weight)

    def measured_flops_ratio(self) -> float | None:
        """The policy's mean FLOPs ratio now, as ``measure`` defines it (``None``: no episode ended)."""
        if self.measure == "train":
            f = float(np.mean(self._flops)) if self._flops else None
            self._flops = []
            return f
        core = self._core
        assert core is not None and self._images is not None
        if self._local:  # follow a backbone fine-tuned in other processes
            core.load_backbone_state(self.training_env.env_method("get_backbone_state", indices=[0])[0])
        with torch.no_grad():
            _, walk = core.route(self.model, self._images)
        return float(walk.flops.double().mean() / core.full)

    def _set(self, w: float) -> None:
        self.training_env.env_method("set_compute_weight", w)
