"""DAgger with the env's teacher: a per-decision policy regressed on the teacher's action values,
CleanRL-style, one file.

    python agents/dagger_teacher.py --env DynExit-v0 --compute-weight 0.02
    python agents/dagger_teacher.py --env DynChannel-v0 --compute-weight 0.1 --obs probe
    python agents/dagger_teacher.py --env DynExit-v0 --stages depth --dataset digits --steps 20000

Every routing env exposes a **teacher** beside the RL interface (``env.unwrapped.teacher()``,
``vec_env.teacher()``; never in the observation, since it knows the label): at the current
decision, the env's own return of every action under documented continuations (the uniform
continuations for the per-decision envs, every later exit for ``DynExit-v0``). This agent learns
from it, supervised, in the manner of DAgger / AggreVaTe (Ross et al. 2011, Ross & Bagnell 2014):

* **collect**: run ``--n-envs`` episodes at once in the native SB3 VecEnv; at every decision record
  the observation and the teacher's value of each action (``--target q``: under the action's best
  continuation; ``q_full``: under the full continuation; ``policy``: when the current policy
  continues, i.e. approximate policy iteration with exact per-image rollouts, the full
  continuation in the first iteration), and act with the teacher's best action
  with probability ``beta`` (1 in the first iteration, halved every iteration after it), else with
  the current policy's;
* **fit**: an MLP from observations to one value per action (relative to the state's mean value),
  mean squared error on every state collected so far (the aggregated data set), Adam, keeping the
  epoch whose error on the states of held-out images (one image in ten) is lowest;
* act greedily: the action of highest predicted value (allowed actions only).

The teacher's values are returns, so the policy optimises the same reward as an RL agent (the
compute weight sets the trade-off), but every decision gets the value of every action, not only of
the one taken. States are collected on held-out images where the data has them (``"val"``,
``--split auto``): on its own training images the backbone is almost always right (the default
VGG at full width: 100 % of shapes' train split), so values measured there say that more
computation never pays.

Output in ``--out``: ``policy.pt`` (load with :func:`load_policy`: the value network, an
``nn.Module`` mapping observations ``[B, D]`` to one value per action, which ``dyncnn_gym.evaluate``
and ``dyncnn_gym.export`` accept) and ``result.json`` (the test-split evaluation,
``dyncnn_gym.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dyncnn_gym  # noqa: F401  (registers the envs)
from dyncnn_gym import EXIT_IDS, evaluate
from dyncnn_gym.cli import HelpFormatter, add_dataclass_arguments, arg
from dyncnn_gym.fileio import check_writable_dir, save_torch, write_text
from dyncnn_gym.sb3 import make_vec_env

TARGETS = ("q", "q_full", "policy")
#: the bench agent's cap on the decisions it collects
MAX_BENCH_STEPS = 60_000


@dataclass
class Args:
    env: str = arg("DynExit-v0", "routing env id (DynExit-v0, DynChannel-v0, DynSkip-v0, DynRoute-v0, ...)")
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    stages: str = arg("width", "DynExit-v0 only: width or depth stages")
    obs: str = arg("", "observation mode (default: empty, the env's own; e.g. probe on the per-decision envs)")
    compute_weight: float = arg(0.02, "the reward's compute weight")
    steps: int = arg(40_000, "decisions collected in all")
    n_envs: int = arg(64, "episodes (images) stepped as one batch")
    iterations: int = arg(4, "DAgger iterations (collect, then fit)")
    target: str = arg("policy", "the teacher's value regressed: q, q_full or policy")
    soft: bool = arg(True, "the error term's expectation 1 - p(true label) instead of the 0/1 error")
    split: str = arg("auto", "images states are collected on: auto (val where the data has one, else train), train or val")
    hidden: int = arg(64, "width of the value network's hidden layers")
    epochs: int = arg(10, "passes over the aggregated states per fit")
    batch_size: int = arg(512, "states per minibatch")
    lr: float = arg(1e-3, "Adam learning rate")
    weight_decay: float = arg(1e-4, "Adam weight decay")
    seed: int = arg(0, "seeds the env, the network and the mixing of teacher and policy")
    out: str = arg("runs/dagger", "output folder (policy.pt, result.json)")


class ValueNet(nn.Module):
    """Observation ``[B, D]`` -> one value per action ``[B, A]`` (the policy takes the argmax)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.config = {"obs_dim": int(obs_dim), "num_actions": int(num_actions), "hidden": int(hidden)}
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_actions)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def env_kwargs(args: Args, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The env's arguments (``base``: a bench task's), with this run's compute weight and split."""
    kw = dict(base) if base is not None else {"dataset": args.dataset, "loss": "error"}
    if base is None and args.env.split(":", 1)[-1] in EXIT_IDS:
        kw["stages"] = args.stages
    if base is None and args.obs:
        kw["obs"] = args.obs
    kw["compute_weight"] = args.compute_weight
    return kw


def soften(tt: dict[str, np.ndarray], target: str, vec) -> np.ndarray:
    """The teacher's values ``tt[target]`` with the 0/1 error term (``loss="error"``) replaced by its
    expectation under the backbone, ``1 - p(true label)`` (from the reported loss): the same
    compute terms, far less noise per image."""
    lw = vec.core.reward.loss_weight
    q = tt[target]
    if target == "q_policy":
        correct, loss = tt["correct_policy"], tt["loss_policy"]
    else:  # the continuation each value was taken under
        if target == "q_full":
            pick = np.full(q.shape, -1) if tt["returns"].ndim == 3 else None
        else:
            pick = tt["returns"].argmax(-1) if tt["returns"].ndim == 3 else None
        if tt["returns"].ndim == 3:  # [N, A, C]
            idx = np.broadcast_to(np.arange(q.shape[1])[None, :], q.shape)
            c = pick % tt["returns"].shape[2]
            rows = np.arange(q.shape[0])[:, None]
            correct, loss = tt["correct"][rows, idx, c], tt["loss"][rows, idx, c]
        else:  # DynExit-v0: [N, S] over the exit left at
            t = tt["decision"]
            rows = np.arange(q.shape[0])
            later = np.where(np.arange(tt["returns"].shape[1])[None, :] > t[:, None], tt["returns"], -np.inf)
            leave1 = np.full(len(t), tt["returns"].shape[1] - 1) if target == "q_full" else later.argmax(1)
            correct = np.stack([tt["correct"][rows, t], tt["correct"][rows, leave1]], 1)
            loss = np.stack([tt["loss"][rows, t], tt["loss"][rows, leave1]], 1)
    error = (~correct).astype(np.float64)
    return np.where(np.isfinite(q), q + lw * error - lw * (1.0 - np.exp(-loss)), q)


@torch.no_grad()
def collect(vec, policy: ValueNet, steps: int, beta: float, target: str, rng: np.random.Generator, soft: bool = True):
    """``steps`` decisions of the mixture policy in ``vec``; returns observations ``[N, D]``, the
    teacher's values ``[N, A]`` and the image index of every state ``[N]``."""
    obs = vec.reset()
    image = np.array([info["index"] for info in vec.reset_infos])
    xs, ys, ids = [], [], []

    for _ in range(max(1, steps // vec.num_envs)):
        tt = vec.teacher(policy if target == "q_policy" else None)  # continuations by the current policy's greedy actions
        scores = policy(torch.as_tensor(obs)).numpy()
        masks = vec.action_masks()
        mine = np.where(masks, scores, -np.inf).argmax(1)
        act = np.where(rng.random(vec.num_envs) < beta, tt["best_action"], mine)
        xs.append(obs.copy())
        ys.append(soften(tt, target, vec) if soft else tt[target].copy())
        ids.append(image.copy())
        obs, _, done, infos = vec.step(act)
        image = np.array([vec.reset_infos[i]["index"] if done[i] else infos[i]["index"] for i in range(vec.num_envs)])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(ids)


def _relative(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each state's finite values relative to their mean (the argmax does not depend on a state's
    own value, which would dominate the error: whether an image is hopeless or easy), and their mask."""
    ok = torch.isfinite(y)
    y = torch.where(ok, y, torch.zeros_like(y))
    return torch.where(ok, y - y.sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp_min(1), y), ok


def fit(policy: ValueNet, X: np.ndarray, Y: np.ndarray, ids: np.ndarray, args: Args, gen: torch.Generator) -> float:
    """Mean squared error on the teacher's (relative) values, with early stopping: the states of one
    image in ten (by image index) are held out, and the weights of the epoch with the lowest
    held-out error are kept (states repeat images, so a network can learn an image's values by
    heart). Returns that held-out error."""
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    y, ok = _relative(torch.as_tensor(Y, dtype=torch.float32))
    x = torch.as_tensor(X)
    held = torch.as_tensor(ids % 10 == 0)
    xt, yt, okt = x[~held], y[~held], ok[~held]
    xv, yv, okv = x[held], y[held], ok[held]

    def held_out() -> float:
        with torch.no_grad():
            return float((((policy(xv) - yv) ** 2) * okv).sum() / okv.sum().clamp_min(1))

    best, state = held_out(), {k: v.clone() for k, v in policy.state_dict().items()}
    for _ in range(args.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), args.batch_size):
            b = perm[i : i + args.batch_size]
            loss = (((policy(xt[b]) - yt[b]) ** 2) * okt[b]).sum() / okt[b].sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        err = held_out()
        if err < best:
            best, state = err, {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(state)
    return best


def train(args: Args, kwargs: dict[str, Any], log=print) -> tuple[ValueNet, list[dict[str, float]]]:
    """Run DAgger on the env ``args.env(**kwargs)``; returns the policy and the per-iteration log."""
    if args.target not in TARGETS:
        raise ValueError(f"target={args.target!r} is not a teacher value; choose one of {list(TARGETS)}")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vec = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed, **{**kwargs, "split": args.split})
    policy = ValueNet(vec.observation_space.shape[0], int(vec.action_space.n), args.hidden)
    X = np.zeros((0, vec.observation_space.shape[0]), dtype=np.float32)
    Y = np.zeros((0, int(vec.action_space.n)))
    ids = np.zeros(0, dtype=np.int64)
    history = []
    per_iteration = max(vec.num_envs, args.steps // max(args.iterations, 1))
    for it in range(args.iterations):
        beta = 1.0 if it == 0 else 0.5**it
        # "policy": each action's value when the current policy continues (policy iteration); the
        # first iteration, with no policy yet, uses the full continuation
        target = {"policy": "q_full" if it == 0 else "q_policy"}.get(args.target, args.target)
        x, y, i = collect(vec, policy, per_iteration, beta, target, rng, soft=args.soft and kwargs.get("loss") == "error")
        X, Y, ids = np.concatenate([X, x]), np.concatenate([Y, y]), np.concatenate([ids, i])
        loss = fit(policy, X, Y, ids, args, gen)
        history.append({"iteration": it, "beta": beta, "states": len(X), "held_out_mse": loss})
        log(f"[dagger] iteration {it}: beta {beta:.3f}, {len(X)} states, held-out value MSE {loss:.5f}")
    policy.eval()
    return policy, history


def save_policy(policy: ValueNet, path: str | Path) -> Path:
    """Write the value network (its config and weights; no pickled code) atomically."""
    return save_torch({"config": policy.config, "state_dict": policy.state_dict()}, path)


def load_policy(path: str | Path) -> ValueNet:
    """The saved value network (eval mode): ``dyncnn_gym.evaluate(load_policy(path), env_id, ...)``."""
    from dyncnn_gym.fileio import load_torch

    blob = load_torch(path, what="DAgger policy")
    policy = ValueNet(**blob["config"])
    policy.load_state_dict(blob["state_dict"])
    return policy.eval()


def bench_agent(env_fn, task, seed: int, step_budget: int) -> ValueNet:
    """``dyncnn-gym bench`` plug-in: DAgger on the teacher of ``task`` for ``step_budget`` decisions.

    Collects at most :data:`MAX_BENCH_STEPS` decisions (each gives the value of every action, not
    one sampled return, and asking the teacher costs a pass over the rest of the network per
    action) on the task's env arguments with ``env_fn.compute_weight`` (held-out images where the
    data has them); returns the value network (an ``nn.Module``, obs -> one value per action).
    """
    torch.set_num_threads(1)
    steps = min(int(step_budget), MAX_BENCH_STEPS)
    args = Args(env=task.env_id, compute_weight=env_fn.compute_weight, steps=steps, seed=seed)
    policy, _ = train(args, env_kwargs(args, task.env_kwargs), log=lambda *a, **k: None)
    return policy


#: tells the bench that this agent learns from the teacher (shown apart from pure-RL agents)
bench_agent.uses_teacher = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataclass_arguments(p, Args)
    args = Args(**vars(p.parse_args()))
    torch.set_num_threads(1)
    out = check_writable_dir(args.out, "out")  # before training: a run is not lost to an unwritable --out
    t0 = time.perf_counter()
    kwargs = env_kwargs(args)
    policy, history = train(args, kwargs)
    kwargs.pop("compute_weight")
    res = evaluate(policy, args.env, compute_weight=args.compute_weight, **kwargs)
    save_policy(policy, out / "policy.pt")
    keep = ("accuracy", "flops_ratio", "action_rates", "exit_rates")
    result = {"args": asdict(args), "history": history, **{k: res[k] for k in keep if k in res}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_text(out / "result.json", json.dumps(result, indent=2))
    print(f"test accuracy {100 * res['accuracy']:.2f} % at FLOPs ratio {res['flops_ratio']:.4f} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
