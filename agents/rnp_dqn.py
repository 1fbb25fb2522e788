"""Runtime Neural Pruning (Lin et al., NIPS 2017): recurrent Q-learning of per-layer widths, CleanRL-style, one file.

    python agents/rnp_dqn.py --env DynChannel-v0 --iterations 300
    python agents/rnp_dqn.py --env DynChannel-v0 --dataset digits --iterations 100 --finetune-every 20
    python agents/rnp_dqn.py --env DynSkip-v0 --no-compare-static

The Q-network follows RNP: at decision point ``t`` a **per-decision encoder** (a linear layer: the
feature widths differ from layer to layer) maps the pooled feature map entering the layer
(``widths[t]`` channels of the observation, plus its probe confidence and FLOPs-so-far entries) to
a ``--hidden`` code; **one GRU cell** shared across decision points carries what was seen at
earlier layers; a **per-decision Q-head** gives one Q-value per action (``groups`` widths on
DynChannel-v0, skip/execute on DynSkip-v0).

Learning: epsilon-greedy rollouts of ``--num-envs`` episodes at a time through the native
Gymnasium vector env (all in lockstep, same-step autoreset: every episode has exactly ``T``
steps), a replay buffer of **whole episodes** (the Q-network is recurrent across an episode's
decisions, so updates replay each sampled episode from its first decision), Double-DQN targets
from a target network synced every ``--target-every`` updates, Huber loss, ``--gamma 1``
(undiscounted: the env pays a compute bonus at every step and ``-CE`` at the last, or ``-1`` for a
wrong prediction with ``--loss error``). Epsilon is
annealed linearly from ``--eps-start`` to ``--eps-end`` over ``--eps-fraction`` of the iterations
(RNP: 1.0 -> 0.1).

Backbone: frozen by default. With ``--finetune-every K`` (RNP's alternating scheme), after every
``K`` iterations the backbone (a private copy: the process-wide cached one is never touched) is
trained for ``--finetune-steps`` steps of supervised cross-entropy on train images routed by the
current greedy Q-policy (gradients into the backbone only, batch-norm statistics frozen, as
``dyncnn_gym.callbacks.BackboneFinetuneCallback`` does for SB3 agents); the test evaluation then
uses the fine-tuned backbone, saved as ``backbone.pt`` next to the policy.

Output in ``--out``: ``policy.pt`` (load with :func:`load_policy`: an ``nn.Module`` mapping
observations ``[B, D]`` to Q-values ``[B, A]``, which ``dyncnn_gym.evaluate`` accepts; it keeps
its GRU state across the decisions of an episode and resets it where the observation's decision
one-hot reads decision 0) and ``result.json`` (``dyncnn_gym.evaluate`` on the whole test split,
plus, unless ``--no-compare-static``, the accuracy of the static-route front at the same FLOPs).
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
from dyncnn_gym.fileio import check_writable_dir, load_torch, save_torch, write_text
from dyncnn_gym.pretraining import save_checkpoint
from dyncnn_gym.walk import run

ENVS = ("DynChannel-v0", "DynSkip-v0", "DynChannel-v1", "DynSkip-v1")


@dataclass
class Args:
    env: str = arg("DynChannel-v0", "routing env id: DynChannel-v0, DynSkip-v0, DynChannel-v1 or DynSkip-v1")
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    backbone: str = arg("", "backbone name or checkpoint path (default: empty, the env's default backbone)")
    compute_weight: float = arg(0.5, "reward per unit of FLOPs ratio saved (with --flops-target: where its adaptation starts)")
    flops_target: float = arg(0.0, "hold this FLOPs ratio by adapting the compute weight across episodes (0: a fixed weight)")
    loss: str = arg("ce", "the reward's classification term: ce (clipped cross-entropy, the paper's) or error (0/1)")
    obs: str = arg("probe", "observation mode of the env: features or probe")
    split: str = arg("train", "images the agent trains on: train, or val (held out from the backbone)")
    num_envs: int = arg(128, "episodes (images) per rollout, stepped as one batch")
    iterations: int = arg(300, "rollout + update iterations")
    hidden: int = arg(64, "width of the per-decision codes and of the GRU state")
    lr: float = arg(1e-3, "Adam learning rate of the Q-network")
    gamma: float = arg(1.0, "discount factor in (0, 1]")
    batch_episodes: int = arg(64, "episodes per Q-learning minibatch")
    buffer_episodes: int = arg(4096, "capacity of the replay of whole episodes")
    updates_per_iter: int = arg(4, "Q-network updates per iteration")
    target_every: int = arg(50, "updates between target-network syncs")
    learning_starts: int = arg(256, "episodes in the replay before the first update")
    eps_start: float = arg(1.0, "initial exploration rate")
    eps_end: float = arg(0.05, "final exploration rate")
    eps_fraction: float = arg(0.5, "share of the iterations over which epsilon is annealed")
    finetune: bool = arg(False, "fine-tune a private copy of the backbone under the greedy routes (every 10 iterations)")
    finetune_every: int = arg(0, "iterations between backbone fine-tuning phases (0 = never; > 0 implies --finetune)")
    finetune_steps: int = arg(10, "supervised backbone steps per fine-tuning phase")
    finetune_lr: float = arg(1e-4, "Adam learning rate of the backbone fine-tuning")
    finetune_batch: int = arg(128, "train images per backbone step")
    compare_static: bool = arg(True, "also measure the static-route front at the policy's FLOPs")
    seed: int = arg(0, "seeds the env, the Q-network and exploration")
    out: str = arg("runs/rnp_dqn", "output folder (policy.pt, result.json, backbone.pt)")


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
    for name in (
        "num_envs",
        "iterations",
        "hidden",
        "batch_episodes",
        "buffer_episodes",
        "updates_per_iter",
        "target_every",
        "finetune_steps",
        "finetune_batch",
    ):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be a positive integer")
    if ns.finetune_every < 0:
        p.error(f"--finetune-every {ns.finetune_every} must be >= 0 (0 = never)")
    if not 0.0 < ns.gamma <= 1.0:
        p.error(f"--gamma {ns.gamma} must be in (0, 1]")
    for name in ("eps_start", "eps_end", "eps_fraction"):
        if not 0.0 <= getattr(ns, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be in [0, 1]")
    if ns.lr <= 0 or ns.finetune_lr <= 0:
        p.error(f"learning rates must be > 0 (got --lr {ns.lr}, --finetune-lr {ns.finetune_lr})")
    args = Args(**vars(ns))
    if args.finetune_every > 0:
        args.finetune = True
    elif args.finetune:
        args.finetune_every = 10
    return args


class RNPQNet(nn.Module):
    """RNP's Q-network: per-decision encoders, a GRU cell shared across decisions, per-decision Q-heads.

    Observations ``[B, D]`` are the env's: ``F`` (padded) pooled features, the one-hot of the decision
    ``T``, then ``tail`` entries (probe confidence if any, FLOPs so far). The encoder of decision
    ``t`` reads the first ``widths[t]`` features and the tail.

    :meth:`step` is the functional form (``obs, h -> Q [B, A], h``); calling the module
    (``forward(obs) -> Q [B, A]``) keeps the state inside, for ``dyncnn_gym.evaluate``: rows whose
    decision one-hot reads 0 start from a zero state.
    """

    def __init__(self, widths: list[int], feat_dim: int, n_decisions: int, tail: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.config = {
            "widths": [int(w) for w in widths],
            "feat_dim": int(feat_dim),
            "n_decisions": int(n_decisions),
            "tail": int(tail),
            "n_actions": int(n_actions),
            "hidden": int(hidden),
        }
        self.widths, self.F, self.T, self.tail, self.hidden = list(widths), feat_dim, n_decisions, tail, hidden
        self.encoders = nn.ModuleList(nn.Sequential(nn.Linear(w + tail, hidden), nn.Tanh()) for w in widths)
        self.core = nn.GRUCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n_actions) for _ in widths)
        self._h: torch.Tensor | None = None

    def decision_index(self, obs: torch.Tensor) -> torch.Tensor:
        """int64 ``[B]``: the decision point each observation belongs to (from its one-hot)."""
        return obs[:, self.F : self.F + self.T].argmax(1)

    def step(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_idx = self.decision_index(obs)
        tail = obs[:, self.F + self.T :]
        x = torch.zeros(obs.shape[0], self.hidden, dtype=obs.dtype, device=obs.device)
        ts = t_idx.unique().tolist()
        for t in ts:
            rows = (t_idx == t).nonzero().squeeze(1) if len(ts) > 1 else slice(None)
            x[rows] = self.encoders[t](torch.cat([obs[rows, : self.widths[t]], tail[rows]], 1))
        h = self.core(x, h)
        q = torch.zeros(obs.shape[0], self.heads[0].out_features, dtype=obs.dtype, device=obs.device)
        for t in ts:
            rows = (t_idx == t).nonzero().squeeze(1) if len(ts) > 1 else slice(None)
            q[rows] = self.heads[t](h[rows])
        return q, h

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        first = self.decision_index(obs) == 0
        if self._h is None or self._h.shape[0] != obs.shape[0]:
            if not bool(first.all()):
                raise RuntimeError("the recurrent policy got a batch mid-episode without its state; start at decision 0")
            self._h = torch.zeros(obs.shape[0], self.hidden, device=obs.device)
        h = torch.where(first[:, None], torch.zeros_like(self._h), self._h)
        q, self._h = self.step(obs, h)
        return q


def build_qnet(env, hidden: int) -> RNPQNet:
    """An :class:`RNPQNet` sized for ``env`` (a single or vector routing env)."""
    core = env.unwrapped.core
    D = (env.single_observation_space if hasattr(env, "single_observation_space") else env.observation_space).shape[0]
    widths = core.net.feature_widths(core.mode)
    return RNPQNet(widths, core.feat_dim, core.T, D - core.feat_dim - core.T, core.A, hidden)


def save_policy(qnet: RNPQNet, path: str | Path) -> None:
    save_torch({"config": qnet.config, "state_dict": qnet.state_dict()}, path)


def load_policy(path: str | Path) -> RNPQNet:
    """The saved Q-network (eval mode): ``dyncnn_gym.evaluate(load_policy(path), env_id, ...)``."""
    blob = load_torch(path, what="RNP policy file")
    qnet = RNPQNet(**blob["config"])
    qnet.load_state_dict(blob["state_dict"])
    return qnet.eval()


class EpisodeReplay:
    """Whole episodes: obs ``[N, T, D]``, actions / rewards ``[N, T]``, action masks ``[N, T, A]`` (ring buffer)."""

    def __init__(self, capacity: int, T: int, D: int, A: int, rng: np.random.Generator) -> None:
        self.obs = np.zeros((capacity, T, D), dtype=np.float32)
        self.act = np.zeros((capacity, T), dtype=np.int64)
        self.rew = np.zeros((capacity, T), dtype=np.float32)
        self.mask = np.ones((capacity, T, A), dtype=bool)
        self.capacity, self.size, self.pos, self.rng = capacity, 0, 0, rng

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, mask: np.ndarray) -> None:
        for i in range(obs.shape[0]):
            self.obs[self.pos], self.act[self.pos], self.rew[self.pos], self.mask[self.pos] = obs[i], act[i], rew[i], mask[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, self.size, n)
        return (
            torch.as_tensor(self.obs[idx]),
            torch.as_tensor(self.act[idx]),
            torch.as_tensor(self.rew[idx]),
            torch.as_tensor(self.mask[idx]),
        )


def td_loss(qnet: RNPQNet, target: RNPQNet, obs, act, rew, mask, gamma: float) -> torch.Tensor:
    """Double-DQN Huber loss over every decision of a batch of whole episodes."""
    B, T, _ = obs.shape
    h = torch.zeros(B, qnet.hidden)
    hq = torch.zeros(B, qnet.hidden)
    qs, qt = [], []
    for t in range(T):
        q, h = qnet.step(obs[:, t], h)
        qs.append(q)
        with torch.no_grad():
            q2, hq = target.step(obs[:, t], hq)
            qt.append(q2)
    q_taken = torch.stack([qs[t].gather(1, act[:, t : t + 1]).squeeze(1) for t in range(T)], 1)  # [B, T]
    with torch.no_grad():
        y = rew.clone()
        for t in range(T - 1):
            a_star = qs[t + 1].detach().masked_fill(~mask[:, t + 1], float("-inf")).argmax(1, keepdim=True)
            y[:, t] += gamma * qt[t + 1].gather(1, a_star).squeeze(1)
    return F.smooth_l1_loss(q_taken, y)


def act_eps_greedy(q: torch.Tensor, mask: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy allowed action, or with probability ``eps`` a uniformly random allowed one."""
    greedy = q.masked_fill(~torch.as_tensor(mask), float("-inf")).argmax(1).numpy()
    explore = rng.random(len(greedy)) < eps
    if explore.any():
        p = mask[explore] / mask[explore].sum(1, keepdims=True)
        greedy[explore] = [rng.choice(len(r), p=r) for r in p]
    return greedy


def _greedy(core, qnet: RNPQNet, batch: int):
    """``walk -> actions``: the argmax of ``qnet``'s Q-values, its recurrent state carried across decisions."""
    state = [torch.zeros(batch, qnet.hidden)]

    def choose(walk: Walk) -> np.ndarray:
        with torch.no_grad():
            q, state[0] = qnet.step(torch.as_tensor(core.observe(walk)), state[0])
        return q.argmax(1).numpy()

    return choose


def finetune_backbone(
    core, qnet: RNPQNet, opt: torch.optim.Optimizer, steps: int, batch: int, rng: np.random.Generator
) -> dict[str, float]:
    """``steps`` supervised steps on train images routed greedily by ``qnet`` (batch-norm frozen)."""
    net, train = core.net, core.data.train
    X, y = torch.as_tensor(train.images), torch.as_tensor(train.labels)
    losses, accs, flops = [], [], []
    net.eval()  # BN statistics frozen; autograd still reaches every weight
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(y), batch))
        xb, yb = X[idx].to(core.device), y[idx].to(core.device)
        walk = run(Walk(net, core.mode, xb), _greedy(core, qnet, batch))
        logits = walk.logits()
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append(float((logits.argmax(1) == yb).float().mean()))
        flops.append(float(walk.flops.float().mean() / core.full))
    return {"loss": float(np.mean(losses)), "routed_accuracy": float(np.mean(accs)), "flops_ratio": float(np.mean(flops))}


def train(args: Args, env_kwargs: dict[str, Any], log=print) -> tuple[RNPQNet, Any, list[dict]]:
    """Train the Q-network (and, with ``args.finetune``, a copy of the backbone).

    Returns the Q-network (eval mode), the backbone it was trained with (fine-tuned copy or the
    env's own) and the per-iteration log.
    """
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env_kwargs = {**env_kwargs, "split": args.split}
    envs = gym.make_vec(args.env, num_envs=args.num_envs, autoreset_mode="SameStep", **env_kwargs)
    if args.finetune:  # train a private copy: the process-wide cached backbone stays untouched
        net = copy.deepcopy(envs.unwrapped.core.net)
        envs = gym.make_vec(args.env, num_envs=args.num_envs, autoreset_mode="SameStep", **{**env_kwargs, "backbone": net})
    core = envs.unwrapped.core
    T, A, D = core.T, core.A, envs.single_observation_space.shape[0]
    qnet = build_qnet(envs, args.hidden)
    target = copy.deepcopy(qnet)
    opt = torch.optim.Adam(qnet.parameters(), lr=args.lr)
    bb_opt = torch.optim.Adam(core.net.parameters(), lr=args.finetune_lr) if args.finetune else None
    replay = EpisodeReplay(args.buffer_episodes, T, D, A, rng)
    obs, info = envs.reset(seed=args.seed)
    updates, history, start = 0, [], time.time()
    for it in range(args.iterations):
        eps = args.eps_end + (args.eps_start - args.eps_end) * max(0.0, 1 - it / max(1.0, args.eps_fraction * args.iterations))
        ep_obs = np.zeros((args.num_envs, T, D), dtype=np.float32)
        ep_act = np.zeros((args.num_envs, T), dtype=np.int64)
        ep_rew = np.zeros((args.num_envs, T), dtype=np.float32)
        ep_mask = np.ones((args.num_envs, T, A), dtype=bool)
        h = torch.zeros(args.num_envs, args.hidden)
        for t in range(T):  # one batch = num_envs whole episodes (lockstep, same-step autoreset)
            mask = info["action_mask"] if "action_mask" in info else np.ones((args.num_envs, A), dtype=bool)
            with torch.no_grad():
                q, h = qnet.step(torch.as_tensor(obs), h)
            action = act_eps_greedy(q, mask, eps, rng)
            ep_obs[:, t], ep_act[:, t], ep_mask[:, t] = obs, action, mask
            obs, reward, terminated, _, info = envs.step(action)
            ep_rew[:, t] = reward
        assert terminated.all(), "episodes must end together after T steps"
        final = info["final_info"]
        replay.add(ep_obs, ep_act, ep_rew, ep_mask)
        losses = []
        if replay.size >= min(args.learning_starts, args.buffer_episodes):
            for _ in range(args.updates_per_iter):
                loss = td_loss(qnet, target, *replay.sample(args.batch_episodes), gamma=args.gamma)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(qnet.parameters(), 10.0)
                opt.step()
                losses.append(loss.item())
                updates += 1
                if updates % args.target_every == 0:
                    target.load_state_dict(qnet.state_dict())
        row = {
            "iteration": it,
            "eps": eps,
            "return": float(ep_rew.sum(1).mean()),
            "train_accuracy": float(np.mean(final["correct"])),
            "flops_ratio": float(np.mean(final["flops_ratio"])),
            "loss": float(np.mean(losses)) if losses else float("nan"),
        }
        if args.finetune and (it + 1) % args.finetune_every == 0:
            row["finetune"] = finetune_backbone(core, qnet, bb_opt, args.finetune_steps, args.finetune_batch, rng)
        history.append(row)
        if it % max(1, args.iterations // 10) == 0 or it == args.iterations - 1:
            log(
                f"iter {it:4d}  eps {eps:.2f}  return {row['return']:+.3f}  train acc {row['train_accuracy']:.3f}  "
                f"flops {row['flops_ratio']:.3f}  td {row['loss']:.4f}  {time.time() - start:.0f}s"
            )
    core.net.eval()
    return qnet.eval(), core.net, history


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


def env_kwargs_of(args: Args) -> dict[str, Any]:
    kw: dict[str, Any] = {"dataset": args.dataset, "compute_weight": args.compute_weight, "loss": args.loss, "obs": args.obs}
    if args.flops_target > 0:
        kw["flops_target"] = args.flops_target
    if args.backbone:
        kw["backbone"] = args.backbone
    return kw


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    env_kwargs = env_kwargs_of(args)
    out = check_writable_dir(args.out, "--out")  # before training, so no run is lost to a bad path
    t0 = time.time()
    qnet, net, history = train(args, env_kwargs)
    train_s = time.time() - t0
    save_policy(qnet, out / "policy.pt")
    eval_kwargs = {**env_kwargs, "backbone": net}
    if args.finetune:
        from dyncnn_gym.pretraining import load_checkpoint

        save_checkpoint(net, out / "backbone.pt")
        eval_kwargs["backbone"] = load_checkpoint(out / "backbone.pt")  # evaluated as reloaded from the file
    res = evaluate(qnet, args.env, **eval_kwargs)
    print(f"test: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f} ({train_s:.0f}s training)")
    entry = {
        "env_id": args.env,
        "env_kwargs": env_kwargs,
        "algorithm": "RNP-DQN",
        "args": asdict(args),
        "train_seconds": round(train_s, 1),
        "finetuned_backbone": args.finetune,
        **res,
        "history": history,
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


def bench_agent(env_fn, task, seed: int, step_budget: int) -> RNPQNet:
    """``dyncnn-gym bench`` plug-in: RNP-DQN on ``task`` for ``step_budget`` env steps, backbone frozen.

    Builds its own native Gymnasium vector env from ``task.env_id``, ``task.env_kwargs`` and
    ``env_fn.compute_weight``; returns the Q-network (an ``nn.Module``, obs -> Q-values).
    """
    torch.set_num_threads(1)
    probe = gym.make(task.env_id, **task.env_kwargs)
    T = probe.unwrapped.core.T
    num_envs = int(np.clip(step_budget // (T * 20), 8, 128))
    iterations = max(1, step_budget // (num_envs * T))
    args = Args(
        env=task.env_id,
        num_envs=num_envs,
        iterations=iterations,
        learning_starts=min(256, num_envs * 4),
        seed=seed,
        finetune=False,
        finetune_every=0,
    )
    qnet, _, _ = train(args, {**task.env_kwargs, **point_env_kwargs(env_fn)}, log=lambda *a, **k: None)
    return qnet


if __name__ == "__main__":
    main()
