"""SkipNet's hybrid learning (Wang et al., ECCV 2018): supervised gates with a straight-through
estimator, then REINFORCE, CleanRL-style, one file.

    python agents/skipnet_hrl.py --env DynSkip-v0 --ste-iterations 100 --rl-iterations 100
    python agents/skipnet_hrl.py --env DynSkip-v0 --dataset digits --joint-backbone
    python agents/skipnet_hrl.py --env DynChannel-v0 --ste-iterations 0     # stage 2 only

Gates: SkipNet's recurrent gate — each observation (the pooled feature map entering the block, as
the env gives it) is projected to a ``--hidden`` code, one GRU cell is shared across decision
points, and a linear head gives the action logits (execute/skip on DynSkip-v0; widths on
DynChannel-v0). Test time is deterministic: execute when ``P(execute) > 0.5`` (the argmax).

**Stage 1, supervised (DynSkip-v0 only)**: train images go through the backbone's own modules
(``stem``, ``decision``, ``head``) with autograd; gate ``t`` outputs ``p = P(execute)``, the forward
pass uses the hard gate ``g = [p > 0.5]`` and the backward pass the gradient of ``p`` (straight-
through estimator). The next feature map is ``g * block(h) + (1 - g) * shortcut(h)``, so **in
this stage only every block is computed** (and then selected): that is what makes the gates
differentiable. The loss is ``CE + alpha * FLOPs ratio`` (the hard route's FLOPs, with the STE
gradient), i.e. the env's ``"flops"`` objective with ``alpha = compute_weight`` by default. The
observations are built from the soft pass exactly as the env builds them from a walk (checked by
the tests), so the gates transfer unchanged to stage 2 and to the env.

**Stage 2, REINFORCE** (as ``agents/reinforce_gates.py``): ``--num-envs`` episodes in lockstep on the
native Gymnasium vector env, where skipped blocks are really not computed; gates are sampled
(Bernoulli / categorical), undiscounted returns (per-gate compute reward + final ``-CE``, or
``-1`` for a wrong prediction with ``--loss error``), the batch's mean return at each decision as
the baseline, an entropy bonus. ``--rl-sharpness b > 1`` samples from ``softmax(b * logits)``, so
that stage 2 starts close to stage 1's hard gates (the greedy gates, used for evaluation, are the
same). On train images the backbone has memorised, the full network has nearly zero CE: with a
small ``--compute-weight`` (0.5 on shapes) stage 2 rightly learns to run every block; 2.0 keeps it
skipping.

Backbone: frozen by default (its batch-norm statistics always are). ``--joint-backbone`` trains a
private copy jointly — stage 1 with the routed CE, stage 2 with one supervised step per iteration
on train images routed by the sampled gates (SkipNet adds the CE loss to the policy gradient) — and
the test evaluation then uses it (saved as ``backbone.pt``).

Output in ``--out``: ``policy.pt`` (:func:`load_policy` gives an ``nn.Module`` obs ``[B, D]`` -> logits
``[B, A]`` that keeps its GRU state across an episode and resets it at decision 0, which
``dyncnn_gym.evaluate`` accepts) and ``result.json`` (``dyncnn_gym.evaluate`` on the whole test
split after each stage, plus the static-route front at the same FLOPs unless ``--no-compare-static``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dyncnn_gym  # noqa: F401  (registers the envs)
from dyncnn_gym import Walk, evaluate
from dyncnn_gym.benchmark.bench import point_env_kwargs
from dyncnn_gym.cli import HelpFormatter, add_dataclass_arguments, arg
from dyncnn_gym.envs.rewards import FlopsTarget
from dyncnn_gym.envs.routing import mode_of
from dyncnn_gym.fileio import check_writable_dir, load_torch, save_torch, write_text
from dyncnn_gym.pretraining import save_checkpoint
from dyncnn_gym.walk import run

ENVS = ("DynSkip-v0", "DynChannel-v0", "DynSkip-v1", "DynChannel-v1")


@dataclass
class Args:
    env: str = arg("DynSkip-v0", "routing env id: DynSkip-v0 or DynSkip-v1, DynChannel-v0 or DynChannel-v1 (stage 2 only)")
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    backbone: str = arg("", "backbone name or checkpoint path (default: empty, the env's default backbone)")
    compute_weight: float = arg(0.5, "reward per unit of FLOPs ratio saved (with --flops-target: where its adaptation starts)")
    flops_target: float = arg(
        0.0, "hold this FLOPs ratio by adapting the compute weight (and stage 1's alpha) across episodes (0: fixed)"
    )
    loss: str = arg("ce", "the reward's classification term: ce (clipped cross-entropy, the paper's) or error (0/1)")
    obs: str = arg("probe", "observation mode of the env: features or probe")
    split: str = arg("train", "images the gates learn on: train, or val (held out from the backbone)")
    hidden: int = arg(32, "width of the gate code and of the GRU state")
    alpha: float = arg(-1.0, "compute penalty of stage 1 (negative: --compute-weight)")
    ste_iterations: int = arg(100, "stage 1 (straight-through gates) steps; 0 skips stage 1")
    ste_batch: int = arg(128, "train images per stage 1 step")
    ste_lr: float = arg(3e-3, "Adam learning rate of stage 1")
    rl_iterations: int = arg(100, "stage 2 (REINFORCE) iterations; 0 skips stage 2")
    num_envs: int = arg(256, "episodes per stage 2 rollout, stepped as one batch")
    lr: float = arg(3e-3, "Adam learning rate of stage 2")
    ent_coef: float = arg(0.01, "entropy bonus of stage 2")
    rl_sharpness: float = arg(1.0, "stage 2 samples from softmax(sharpness * logits); > 1 starts it near stage 1's gates")
    joint_backbone: bool = arg(False, "also train a private copy of the backbone under the gates")
    backbone_lr: float = arg(1e-4, "Adam learning rate of the backbone (--joint-backbone)")
    compare_static: bool = arg(True, "also measure the static-route front at the policy's FLOPs")
    seed: int = arg(0, "seeds the env, the gates and the sampling")
    out: str = arg("runs/skipnet_hrl", "output folder (policy.pt, result.json, backbone.pt)")


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataclass_arguments(p, Args)
    ns = p.parse_args(argv)
    if ns.loss not in ("ce", "error"):
        p.error(f"--loss {ns.loss!r} is not a classification term; choose one of ['ce', 'error']")
    if ns.split not in ("train", "val"):
        p.error(f"--split {ns.split!r} is not a training split; choose one of ['train', 'val']")
    if ns.env not in ENVS:
        p.error(f"--env {ns.env!r} is not a routing env; choose one of {list(ENVS)}")
    if ns.env.startswith("DynChannel") and ns.ste_iterations > 0:
        p.error(f"stage 1 (straight-through gates) supports DynSkip only; for {ns.env} pass --ste-iterations 0")
    for name in ("hidden", "ste_batch", "num_envs"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be a positive integer")
    for name in ("ste_iterations", "rl_iterations"):
        if getattr(ns, name) < 0:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be >= 0")
    if ns.ste_iterations + ns.rl_iterations == 0:
        p.error("nothing to train: --ste-iterations and --rl-iterations are both 0")
    for name in ("ste_lr", "lr", "backbone_lr", "rl_sharpness"):
        if getattr(ns, name) <= 0:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be > 0")
    return Args(**vars(ns))


class GatePolicy(nn.Module):
    """SkipNet's recurrent gate: obs ``[B, D]`` -> linear code -> GRU cell (shared) -> logits ``[B, A]``.

    :meth:`step` is the functional form (``obs, h -> logits, h``); calling the module keeps the
    state inside for ``dyncnn_gym.evaluate`` (rows whose decision one-hot — entries
    ``feat_dim .. feat_dim + T`` — reads 0 start from a zero state).
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, feat_dim: int, n_decisions: int) -> None:
        super().__init__()
        self.config = {
            "obs_dim": int(obs_dim),
            "n_actions": int(n_actions),
            "hidden": int(hidden),
            "feat_dim": int(feat_dim),
            "n_decisions": int(n_decisions),
        }
        self.hidden, self.F, self.T = hidden, feat_dim, n_decisions
        self.encode = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.core = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, n_actions)
        with torch.no_grad():  # start near "execute everything" (the full network)
            self.head.bias.copy_(torch.linspace(0.0, 1.0, n_actions))
        self._h: torch.Tensor | None = None

    def step(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.core(self.encode(obs), h)
        return self.head(h), h

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        first = obs[:, self.F : self.F + self.T].argmax(1) == 0
        if self._h is None or self._h.shape[0] != obs.shape[0]:
            if not bool(first.all()):
                raise RuntimeError("the recurrent policy got a batch mid-episode without its state; start at decision 0")
            self._h = torch.zeros(obs.shape[0], self.hidden, device=obs.device)
        h = torch.where(first[:, None], torch.zeros_like(self._h), self._h)
        logits, self._h = self.step(obs, h)
        return logits


def save_policy(policy: GatePolicy, path: str | Path) -> None:
    save_torch({"config": policy.config, "state_dict": policy.state_dict()}, path)


def load_policy(path: str | Path) -> GatePolicy:
    """The saved gates (eval mode): ``dyncnn_gym.evaluate(load_policy(path), env_id, ...)``."""
    blob = load_torch(path, what="SkipNet gate file")
    policy = GatePolicy(**blob["config"])
    policy.load_state_dict(blob["state_dict"])
    return policy.eval()


# -- stage 1: straight-through gates on a soft (masked) pass ------------------------------------------
def soft_observation(core, t: int, h: torch.Tensor, flops: torch.Tensor) -> torch.Tensor:
    """The env's observation ``[B, D]`` of decision ``t`` from a feature map ``h`` ``[B, C, H, W]``
    and the FLOPs spent so far ``[B]`` (detached: the gates see features, gradients flow through
    their actions), built as ``RoutingCore.observe`` builds it from a walk."""
    from dyncnn_gym.envs.probes import confidence

    B = h.shape[0]
    f = torch.tanh(h.detach().mean(dim=(2, 3)) / core.scale[t]).float()
    out = torch.zeros(B, core.observation_space.shape[0])
    out[:, : f.shape[1]] = f
    out[:, core.feat_dim + t] = 1.0
    if core.probes is not None:
        w, bias = core.probes[t]
        c0 = core.feat_dim + core.T
        out[:, c0 : c0 + 3] = confidence(f @ w + bias)
    out[:, -1] = torch.clamp(flops.detach().float() / core.full, max=1.0)
    return out


def ste_forward(core, policy: GatePolicy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft pass of ``x`` through ``core.net`` (skip mode) with straight-through gates.

    Returns logits ``[B, classes]``, the FLOPs ratio of the hard route ``[B]`` (differentiable
    through the STE) and the hard gates ``[B, T]``.
    """
    net, table = core.net, core.table
    h = net.stem(x, "skip")
    flops = torch.full((x.shape[0],), float(table.stem))
    state = torch.zeros(x.shape[0], policy.hidden)
    gates = []
    for t in range(core.T):
        logits, state = policy.step(soft_observation(core, t, h, flops), state)
        p = torch.softmax(logits, 1)[:, 1]  # P(execute)
        g = (p > 0.5).float() + (p - p.detach())  # hard forward (exactly 0/1), sigmoid gradient backward
        run, skip = net.decision("skip", t, h, 1, 1), net.decision("skip", t, h, 1, 0)
        gv = g.view(-1, 1, 1, 1)
        h = gv * run + (1 - gv) * skip
        flops = flops + g * float(table.steps[t, 1, 1]) + (1 - g) * float(table.steps[t, 1, 0])
        gates.append(g.detach())
    out = net.head(h, "skip", 1)
    flops = flops + float(table.head[1])
    return out, flops / core.full, torch.stack(gates, 1)


def ste_objective(core, policy: GatePolicy, x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict]:
    """``CE + alpha * FLOPs ratio`` of the straight-through pass, and its parts."""
    logits, ratio, gates = ste_forward(core, policy, x)
    ce = F.cross_entropy(logits, y)
    loss = ce + alpha * ratio.mean()
    return loss, {
        "loss": loss.item(),
        "ce": ce.item(),
        "flops_ratio": ratio.mean().item(),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "execute_rate": gates.mean().item(),
    }


def train_ste(
    core,
    policy: GatePolicy,
    iterations: int,
    batch: int,
    lr: float,
    alpha: float,
    rng: np.random.Generator,
    backbone_opt: torch.optim.Optimizer | None = None,
    log=print,
    split: str = "train",
    target: FlopsTarget | None = None,
) -> list[dict]:
    """Stage 1: ``iterations`` Adam steps of :func:`ste_objective` on batches of ``split`` (BN frozen).

    With ``target`` (a :class:`~dyncnn_gym.envs.rewards.FlopsTarget`), ``alpha`` is its weight, moved
    after every batch by the batch's FLOPs ratio (dual ascent, as the env holds a ``flops_target``)."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    net, train = core.net, core.data.split(split)
    X, Y = torch.as_tensor(train.images), torch.as_tensor(train.labels)
    net.eval()
    history = []
    for it in range(iterations):
        idx = torch.as_tensor(rng.integers(0, len(Y), batch))
        if target is not None:
            alpha = target.weight
        loss, stats = ste_objective(core, policy, X[idx].to(core.device), Y[idx].to(core.device), alpha)
        opt.zero_grad(set_to_none=True)
        if backbone_opt is not None:
            backbone_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if backbone_opt is not None:
            backbone_opt.step()
        if target is not None:
            target.update(np.full(batch, stats["flops_ratio"]), core.T)
            stats["alpha"] = alpha
        history.append({"iteration": it, **stats})
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            log(
                f"[ste] iter {it:4d}  loss {stats['loss']:.3f}  ce {stats['ce']:.3f}  acc {stats['accuracy']:.3f}  "
                f"flops {stats['flops_ratio']:.3f}"
            )
    return history


# -- stage 2: REINFORCE on the env ---------------------------------------------------------------
def routed_step(
    core, policy: GatePolicy, opt: torch.optim.Optimizer, batch: int, rng: np.random.Generator, sharpness: float = 1.0
) -> float:
    """One supervised backbone step on train images routed by sampled gates (only executed blocks run)."""
    train = core.data.train
    idx = rng.integers(0, len(train.labels), batch)
    x = torch.as_tensor(train.images[idx]).to(core.device)
    y = torch.as_tensor(train.labels[idx]).to(core.device)
    state = [torch.zeros(batch, policy.hidden)]

    def sampled_gates(walk: Walk) -> np.ndarray:
        with torch.no_grad():
            logits, state[0] = policy.step(torch.as_tensor(core.observe(walk)), state[0])
        return torch.distributions.Categorical(logits=sharpness * logits).sample().numpy()

    walk = run(Walk(core.net, core.mode, x), sampled_gates)
    loss = F.cross_entropy(walk.logits(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_reinforce(
    envs,
    policy: GatePolicy,
    iterations: int,
    lr: float,
    ent_coef: float,
    seed: int,
    backbone_opt: torch.optim.Optimizer | None = None,
    rng: np.random.Generator | None = None,
    log=print,
    sharpness: float = 1.0,
) -> list[dict]:
    """Stage 2: REINFORCE with a per-decision batch-mean baseline (undiscounted returns); actions are
    sampled from ``softmax(sharpness * logits)`` (the greedy gates, and so evaluation, do not depend on it)."""
    core = envs.unwrapped.core
    n, T = envs.num_envs, core.T
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    obs, info = envs.reset(seed=seed)
    history, start = [], time.time()
    for it in range(iterations):
        h = torch.zeros(n, policy.hidden)
        logps, ents, rewards = [], [], []
        for _t in range(T):  # every episode has exactly T decisions: one batch = n whole episodes
            logits, h = policy.step(torch.as_tensor(obs), h)
            logits = sharpness * logits
            if "action_mask" in info:
                logits = logits.masked_fill(~torch.as_tensor(info["action_mask"]), -1e9)
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            logps.append(dist.log_prob(action))
            ents.append(dist.entropy())
            obs, reward, terminated, _, info = envs.step(action.numpy())
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
        assert terminated.all(), "episodes must end together after T steps"
        final = info["final_info"]
        R = torch.stack(rewards)  # [T, n]
        returns = R.flip(0).cumsum(0).flip(0)
        adv = returns - returns.mean(dim=1, keepdim=True)
        loss = -(torch.stack(logps) * adv).mean() - ent_coef * torch.stack(ents).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {
            "iteration": it,
            "return": float(returns[0].mean()),
            "train_accuracy": float(np.mean(final["correct"])),
            "flops_ratio": float(np.mean(final["flops_ratio"])),
        }
        if backbone_opt is not None:
            row["backbone_ce"] = routed_step(
                core, policy, backbone_opt, min(128, n), rng or np.random.default_rng(seed), sharpness
            )
        history.append(row)
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            log(
                f"[rl]  iter {it:4d}  return {row['return']:+.3f}  train acc {row['train_accuracy']:.3f}  "
                f"flops {row['flops_ratio']:.3f}  {time.time() - start:.0f}s"
            )
    return history


def train(args: Args, env_kwargs: dict[str, Any], log=print, after_stage1=None) -> tuple[GatePolicy, Any, dict]:
    """Both stages. Returns the gates (eval mode), the backbone used and the logs.

    ``after_stage1(policy, net)`` (optional) is called between the stages (e.g. to evaluate).
    """
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env_kwargs = {**env_kwargs, "split": args.split}
    envs = gym.make_vec(args.env, num_envs=args.num_envs, autoreset_mode="SameStep", **env_kwargs)
    if args.joint_backbone:  # train a private copy: the process-wide cached backbone stays untouched
        net = copy.deepcopy(envs.unwrapped.core.net)
        envs = gym.make_vec(args.env, num_envs=args.num_envs, autoreset_mode="SameStep", **{**env_kwargs, "backbone": net})
    core = envs.unwrapped.core
    policy = GatePolicy(envs.single_observation_space.shape[0], core.A, args.hidden, core.feat_dim, core.T)
    bb_opt = torch.optim.Adam(core.net.parameters(), lr=args.backbone_lr) if args.joint_backbone else None
    if not args.joint_backbone:
        for prm in core.net.parameters():
            prm.requires_grad_(False)
    logs: dict[str, Any] = {}
    try:
        alpha = args.compute_weight if args.alpha < 0 else args.alpha
        # with a FLOPs target the env adapts its compute weight; stage 1 adapts alpha the same way, from
        # the env's start, and stage 2 starts the env from where stage 1 ended
        target = FlopsTarget(core.target.target, core.target.weight) if core.target is not None else None
        if args.ste_iterations:
            # gates learn on the agent's split; a jointly trained backbone would see those images, so
            # with --joint-backbone they stay on train
            logs["stage1"] = train_ste(
                core,
                policy,
                args.ste_iterations,
                args.ste_batch,
                args.ste_lr,
                alpha,
                rng,
                bb_opt,
                log,
                split="train" if args.joint_backbone else args.split,
                target=target,
            )
            if target is not None:
                core.set_compute_weight(target.weight)
            if after_stage1 is not None:
                after_stage1(policy.eval(), core.net)
                policy.train()
        if args.rl_iterations:
            logs["stage2"] = train_reinforce(
                envs, policy, args.rl_iterations, args.lr, args.ent_coef, args.seed, bb_opt, rng, log, args.rl_sharpness
            )
    finally:
        for prm in core.net.parameters():
            prm.requires_grad_(True)
        core.net.eval()
    return policy.eval(), core.net, logs


def static_comparison(env_id: str, res: dict[str, Any], **env_kwargs: Any) -> dict[str, Any]:
    """The static-route front (uniform + greedy / exhaustive routes, test split) at ``res``'s FLOPs."""
    from dyncnn_gym.benchmark.baselines import interpolate, static_baselines
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.envs.routing import mode_of

    kw = {k: v for k, v in env_kwargs.items() if k not in ("compute_weight", "reward", "loss_weight", "ce_clip", "loss")}
    static = static_baselines(RoutingCore(mode_of(env_id), 1, split="test", **kw))
    at = interpolate(static["front"], res["flops_ratio"])
    return {
        "full": static["full"],
        "front": static["front"],
        "static_front_accuracy_at_same_flops": at,
        "gain_points": 100.0 * (res["accuracy"] - at) if np.isfinite(at) else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    env_kwargs: dict[str, Any] = {
        "dataset": args.dataset,
        "compute_weight": args.compute_weight,
        "loss": args.loss,
        "obs": args.obs,
    }
    if args.flops_target > 0:
        env_kwargs["flops_target"] = args.flops_target
    if args.backbone:
        env_kwargs["backbone"] = args.backbone
    stage1: dict[str, Any] = {}

    def after_stage1(policy: GatePolicy, net) -> None:
        r = evaluate(policy, args.env, **{**env_kwargs, "backbone": net})
        stage1.update(accuracy=r["accuracy"], flops_ratio=r["flops_ratio"])
        print(f"test after stage 1 (STE): accuracy {r['accuracy']:.4f} at FLOPs ratio {r['flops_ratio']:.3f}")

    out = check_writable_dir(args.out, "--out")  # before training, so no run is lost to a bad path
    t0 = time.time()
    policy, net, logs = train(args, env_kwargs, after_stage1=after_stage1)
    train_s = time.time() - t0
    save_policy(policy, out / "policy.pt")
    eval_kwargs = {**env_kwargs, "backbone": net}
    if args.joint_backbone:
        from dyncnn_gym.pretraining import load_checkpoint

        save_checkpoint(net, out / "backbone.pt")
        eval_kwargs["backbone"] = load_checkpoint(out / "backbone.pt")  # evaluated as reloaded from the file
    res = evaluate(policy, args.env, **eval_kwargs)
    print(f"test: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f} ({train_s:.0f}s training)")
    entry = {
        "env_id": args.env,
        "env_kwargs": env_kwargs,
        "algorithm": "SkipNet-HRL",
        "args": asdict(args),
        "train_seconds": round(train_s, 1),
        "joint_backbone": args.joint_backbone,
        **res,
        "after_stage1": stage1 or None,
        "history": logs,
    }
    if args.compare_static:
        cmp = static_comparison(args.env, res, **eval_kwargs)
        entry["static"] = cmp
        print(
            f"static front at the same FLOPs: {cmp['static_front_accuracy_at_same_flops']:.4f} "
            f"(gain {cmp['gain_points']:+.2f} points)"
        )
    write_text(out / "result.json", json.dumps(entry, indent=2, default=float))
    print(f"wrote {out}/result.json and policy.pt")
    return entry


def bench_agent(env_fn, task, seed: int, step_budget: int) -> GatePolicy:
    """``dyncnn-gym bench`` plug-in: SkipNet-HRL on ``task``, backbone frozen.

    ``step_budget`` env steps go to stage 2 (REINFORCE on the native Gymnasium vector env built from
    ``task.env_id``, ``task.env_kwargs`` and ``env_fn.compute_weight``). Stage 1 (DynSkip-v0 only)
    is supervised and takes no env steps: it runs ``min(100, step_budget // 1000)`` iterations
    (none for tiny budgets). Returns the gates (an ``nn.Module``, obs -> logits).
    """
    torch.set_num_threads(1)
    probe = gym.make(task.env_id, **task.env_kwargs)
    T = probe.unwrapped.core.T
    num_envs = int(np.clip(step_budget // (T * 20), 8, 256))
    ste = min(100, step_budget // 1000) if mode_of(task.env_id) == "skip" else 0
    weight = {} if getattr(env_fn, "flops_target", None) is not None else {"compute_weight": env_fn.compute_weight}
    args = Args(
        env=task.env_id,
        **weight,
        num_envs=num_envs,
        ste_iterations=ste,
        rl_iterations=max(1, step_budget // (num_envs * T)),
        seed=seed,
        joint_backbone=False,
    )
    policy, _, _ = train(args, {**task.env_kwargs, **point_env_kwargs(env_fn)}, log=lambda *a, **k: None)
    return policy


if __name__ == "__main__":
    main()
