"""REINFORCE on per-decision gates with a recurrent core (SkipNet's RL stage), CleanRL-style, one file.

    python agents/reinforce_gates.py --env DynSkip-v0 --iterations 300
    python agents/reinforce_gates.py --env DynChannel-v0 --dataset digits --iterations 50

The gate network follows SkipNet's recurrent gate: each observation (the pooled feature map
entering the block) is projected to a small code, one GRU is shared across decision points, and a
linear head gives the action distribution (Bernoulli execute/skip on DynSkip-v0, categorical
widths on DynChannel-v0). Episodes are rolled out ``--num-envs`` at a time through the native
Gymnasium vector env (all in lockstep, one batched backbone pass per decision), returns are
undiscounted (``gamma = 1``: per-gate compute reward plus the final ``-CE`` term the env pays),
and the baseline is the batch's mean return at each decision (a self-critical baseline).

What this file does not do (yet) of SkipNet's hybrid scheme: the supervised pre-training of the
gates with a straight-through estimator, and joint backbone training (use
``dyncnn_gym.callbacks.BackboneFinetuneCallback`` for supervised fine-tuning under the routes).
Results are written in the benchmark's format (``dyncnn_gym.evaluate`` on the whole test split).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import dyncnn_gym  # noqa: F401  (registers the envs)
from dyncnn_gym import evaluate
from dyncnn_gym.cli import HelpFormatter, add_dataclass_arguments, arg
from dyncnn_gym.fileio import check_writable_dir, save_torch, write_text


@dataclass
class Args:
    env: str = arg("DynSkip-v0", "routing env id: DynSkip-v0 or DynChannel-v0")
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    compute_weight: float = arg(0.5, "reward per unit of FLOPs ratio saved")
    num_envs: int = arg(256, "episodes per rollout, stepped as one batch")
    iterations: int = arg(300, "REINFORCE iterations")
    lr: float = arg(3e-3, "Adam learning rate")
    ent_coef: float = arg(0.01, "entropy bonus")
    hidden: int = arg(32, "width of the gate code and of the GRU state")
    seed: int = arg(0, "seeds the env, the gates and the sampling")
    obs: str = arg("probe", "observation mode of the env: features or probe")
    out: str = arg("runs/reinforce_gates", "output folder (policy.pt, result.json)")


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataclass_arguments(p, Args)
    ns = p.parse_args()
    if ns.env not in ("DynChannel-v0", "DynSkip-v0"):
        p.error(f"--env {ns.env!r} is not a routing env; choose DynChannel-v0 or DynSkip-v0")
    return Args(**vars(ns))


class GatePolicy(nn.Module):
    """obs ``[B, D]`` + GRU state ``[B, H]`` -> action logits ``[B, A]`` and the new state."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.core = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, n_actions)

    def forward(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.core(self.encode(obs), h)
        return self.head(h), h


class Deterministic:
    """The trained gates as a batch policy for ``dyncnn_gym.evaluate`` (argmax, state across decisions)."""

    def __init__(self, policy: GatePolicy, hidden: int, T: int) -> None:
        self.policy, self.hidden, self.T, self.h, self.t = policy, hidden, T, None, 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.h is None or self.t % self.T == 0 or self.h.shape[0] != len(obs):
            self.h = torch.zeros(len(obs), self.hidden)
        with torch.no_grad():
            logits, self.h = self.policy(torch.as_tensor(obs), self.h)
        self.t += 1
        return logits.argmax(1).numpy()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    env_kwargs = {"dataset": args.dataset, "compute_weight": args.compute_weight, "obs": args.obs}
    envs = gym.make_vec(args.env, num_envs=args.num_envs, **env_kwargs)
    T = envs.unwrapped.core.T
    n_actions = int(envs.single_action_space.n)
    policy = GatePolicy(envs.single_observation_space.shape[0], n_actions, args.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    obs, _ = envs.reset(seed=args.seed)
    out = check_writable_dir(args.out, "--out")  # before training, so no run is lost to a bad path
    start = time.time()
    for it in range(args.iterations):
        h = torch.zeros(args.num_envs, args.hidden)
        logps, ents, rewards = [], [], []
        for _t in range(T):  # every episode has exactly T decisions: one batch = num_envs episodes
            logits, h = policy(torch.as_tensor(obs), h)
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            logps.append(dist.log_prob(action))
            ents.append(dist.entropy())
            obs, reward, terminated, _, info = envs.step(action.numpy())
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
        assert terminated.all()
        obs, _, _, _, _ = envs.step(np.zeros(args.num_envs, dtype=np.int64))  # NextStep autoreset
        R = torch.stack(rewards)  # [T, B]
        returns = R.flip(0).cumsum(0).flip(0)  # undiscounted reward-to-go
        adv = returns - returns.mean(dim=1, keepdim=True)
        loss = -(torch.stack(logps) * adv).mean() - args.ent_coef * torch.stack(ents).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % max(1, args.iterations // 10) == 0 or it == args.iterations - 1:
            acc = float(np.mean(info["correct"])) if "correct" in info else float("nan")
            print(
                f"iter {it:4d}  return {returns[0].mean():+.3f}  train acc {acc:.3f}  "
                f"flops {np.mean(info['flops_ratio']):.3f}  {time.time() - start:.0f}s",
                flush=True,
            )
    res = evaluate(Deterministic(policy, args.hidden, T), args.env, **env_kwargs)
    print(f"test: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}")
    save_torch(policy.state_dict(), out / "policy.pt")
    entry = {
        "env_id": args.env,
        "env_kwargs": env_kwargs,
        "algorithm": "REINFORCE-gates",
        "args": asdict(args),
        "accuracy": res["accuracy"],
        "flops_ratio": res["flops_ratio"],
        "mean_action": res["mean_action"],
    }
    write_text(out / "result.json", json.dumps(entry, indent=2))
    print(f"wrote {out}/result.json and policy.pt")


if __name__ == "__main__":
    main()
