"""BlockDrop (Wu et al., CVPR 2018): one look, all block decisions at once, policy gradient with a
self-critical baseline and a curriculum, CleanRL-style, one file.

    python agents/blockdrop_pg.py --iterations 300
    python agents/blockdrop_pg.py --dataset digits --iterations 100 --reward flops --compute-weight 0.5
    python agents/blockdrop_pg.py --dataset digits --iterations 100 --finetune-iterations 100

Env: ``DynBlockDrop-v0`` (one step per image: the observation is the one ``DynSkip-v0`` gives at
its first decision, the action ``MultiBinary(T)`` keeps or drops every later residual block;
dropped blocks are not computed). Reward (``--reward blockdrop``, default): ``1 - u**2`` if the
image is classified correctly (``u`` = fraction of blocks kept), else ``-penalty``; ``--reward
flops`` pays ``DynSkip-v0``'s return for the same actions (``compute_weight * (1 - FLOPs ratio) -
CE``) instead.

Policy: an MLP from the observation to ``T`` keep logits (independent Bernoulli per block). Each
iteration routes ``--num-envs`` train images twice, through two vector envs seeded alike (so
both draw the same images): once with actions sampled from the policy (probabilities bounded
away from 0 and 1 by ``--explore``: ``p' = explore * p + (1 - explore) * (1 - p)``, BlockDrop's
``alpha``), once with the greedy actions (``p > 0.5``); the greedy reward is the **self-critical
baseline**: ``loss = -(R(sampled) - R(greedy)) * log pi(sampled) - ent_coef * entropy``.
**Curriculum**: for the first ``--curriculum-fraction`` of the iterations only the last ``j``
blocks are decided by the policy (the others are kept), ``j`` growing linearly from 1 to ``T``.
The backbone is frozen during these ``--iterations``.

**Joint fine-tuning** (BlockDrop's last stage; ``--finetune-iterations N``, default 0 = off): ``N``
more iterations after the curriculum, each (1) one policy-gradient update as above with every
block decided by the policy, then (2) one supervised step of the backbone: cross-entropy of the
network run on ``--finetune-batch`` random train images with the blocks the policy samples for
them (same ``--explore`` bound; dropped blocks are not computed), Adam at ``--finetune-lr``,
gradients into the backbone only, batch-norm statistics frozen (eval mode, as
``dyncnn_gym.callbacks.BackboneFinetuneCallback`` and ``agents/rnp_dqn.py`` keep them). The
backbone trained is a private copy (the process-wide cached one is never touched) that both
vector envs share, so their next rollouts see the new weights. The envs' observation scales and
probes stay those of the backbone the stage started from; the test evaluation reloads the saved
``backbone.pt`` as a fresh network, as a user would (its scales and probes are refitted on the
fine-tuned weights), so ``result.json`` is what the saved files reproduce.

Evaluation: the learned network is wrapped as the package's one-shot policy head,
:class:`dyncnn_gym.policies.OneShotHead` (keep block ``t`` where its logit is above 0, or above the
FLOPs dial's bias), so ``dyncnn_gym.evaluate(head, "DynSkip-v0", ...)`` measures it on the whole test
split under the common protocol (same keys, same FLOPs as the one-shot env; checked by the tests),
reading one observation per image, and ``dyncnn_gym.export`` turns it into a routed model.

Output in ``--out``: ``policy.pt`` (:func:`load_policy`: the :class:`OneShotHead` by default, the
raw :class:`OneShotPolicy` network with ``raw=True``), ``result.json`` and, after joint
fine-tuning, ``backbone.pt`` (a backbone checkpoint: pass its path as ``backbone=`` to the envs or
``dyncnn_gym.evaluate``); ``result.json``'s ``finetune`` entry records the stage's settings and
its final supervised loss.
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
from dyncnn_gym.policies import OneShotHead
from dyncnn_gym.pretraining import save_checkpoint
from dyncnn_gym.walk import run

REWARDS = ("blockdrop", "flops")


@dataclass
class Args:
    env: str = arg(
        "DynBlockDrop-v0", "one-step env id: DynBlockDrop-v0 or DynBlockDrop-v1 (a FLOPs target, see --flops-target)"
    )
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    backbone: str = arg("", "backbone name or checkpoint path (default: empty, the DynSkip default, resnet32-lite@skip)")
    obs: str = arg("probe", "observation mode of the env: features or probe")
    reward: str = arg("blockdrop", "blockdrop (1 - u**2 if correct, else -penalty) or flops (DynSkip-v0's return)")
    penalty: float = arg(1.0, "reward of a wrong prediction is -penalty (--reward blockdrop)")
    compute_weight: float = arg(0.5, "reward per unit of FLOPs ratio saved (--reward flops only)")
    flops_target: float = arg(0.0, "--reward flops: hold this FLOPs ratio by adapting the compute weight (0: a fixed weight)")
    num_envs: int = arg(256, "images per rollout, stepped as one batch")
    iterations: int = arg(300, "policy-gradient iterations with the backbone frozen")
    hidden: int = arg(64, "hidden width of the policy MLP")
    lr: float = arg(3e-3, "Adam learning rate of the policy")
    ent_coef: float = arg(0.0, "entropy bonus")
    explore: float = arg(0.8, "keep probabilities are bounded to explore * p + (1 - explore) * (1 - p); in [0.5, 1]")
    curriculum_fraction: float = arg(0.5, "share of the iterations over which the policy decides the last j blocks, j growing")
    finetune_iterations: int = arg(0, "joint policy + backbone iterations after the RL stage (0 = backbone frozen)")
    finetune_lr: float = arg(1e-4, "Adam learning rate of the backbone in the joint stage")
    finetune_batch: int = arg(128, "train images per backbone step")
    compare_static: bool = arg(True, "also measure the static-route front at the policy's FLOPs")
    seed: int = arg(0, "seeds the envs, the policy and the sampling")
    out: str = arg("runs/blockdrop_pg", "output folder (policy.pt, result.json, backbone.pt)")


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_dataclass_arguments(p, Args)
    ns = p.parse_args(argv)
    if ns.env not in ("DynBlockDrop-v0", "DynBlockDrop-v1"):
        p.error(f"--env {ns.env!r} is not a one-step env; choose one of ['DynBlockDrop-v0', 'DynBlockDrop-v1']")
    if ns.reward not in REWARDS:
        p.error(f"--reward {ns.reward!r} is not supported; choose one of {list(REWARDS)}")
    for name in ("num_envs", "iterations", "hidden", "finetune_batch"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(ns, name)} must be a positive integer")
    if ns.finetune_iterations < 0:
        p.error(f"--finetune-iterations {ns.finetune_iterations} must be >= 0 (0 = backbone frozen)")
    if not 0.5 <= ns.explore <= 1.0:
        p.error(f"--explore {ns.explore} must be in [0.5, 1] (1 = sample from the policy as is)")
    if not 0.0 <= ns.curriculum_fraction <= 1.0:
        p.error(f"--curriculum-fraction {ns.curriculum_fraction} must be in [0, 1]")
    if ns.lr <= 0:
        p.error(f"--lr {ns.lr} must be > 0")
    if not ns.finetune_lr > 0:
        p.error(f"--finetune-lr {ns.finetune_lr} must be > 0")
    return Args(**vars(ns))


class OneShotPolicy(nn.Module):
    """BlockDrop's policy network: observation ``[B, D]`` -> keep logits ``[B, T]`` (one per block)."""

    def __init__(self, obs_dim: int, n_blocks: int, hidden: int, feat_dim: int) -> None:
        super().__init__()
        self.config = {"obs_dim": int(obs_dim), "n_blocks": int(n_blocks), "hidden": int(hidden), "feat_dim": int(feat_dim)}
        self.T, self.F = n_blocks, feat_dim
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_blocks)
        )
        with torch.no_grad():  # start by keeping every block
            self.net[-1].bias.fill_(1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def save_policy(policy: OneShotPolicy | OneShotHead, path: str | Path) -> None:
    """Save the one-shot network (the body of a :class:`OneShotHead` too) as a weights-only torch file."""
    if isinstance(policy, OneShotHead):
        policy = policy.body
    if not isinstance(policy, OneShotPolicy):
        raise TypeError(f"save_policy saves a OneShotPolicy or a OneShotHead around one, not {type(policy).__name__}")
    save_torch({"config": policy.config, "state_dict": policy.state_dict()}, path)


def load_policy(path: str | Path, raw: bool = False) -> OneShotHead | OneShotPolicy:
    """The saved policy (eval mode): a :class:`OneShotHead` (default; ``dyncnn_gym.evaluate`` and
    ``dyncnn_gym.export`` take it on the ``DynSkip`` and ``DynBlockDrop`` ids) or, with ``raw=True``,
    the :class:`OneShotPolicy` network (observation ``[B, D]`` -> keep logits ``[B, T]``)."""
    blob = load_torch(path, what="BlockDrop policy file")
    net = OneShotPolicy(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net if raw else OneShotHead(net).eval()


def curriculum_blocks(it: int, iterations: int, T: int, fraction: float) -> int:
    """Blocks the policy decides at iteration ``it``: the last ``j``, ``j`` from 1 up to ``T``."""
    span = fraction * iterations
    if span <= 0:
        return T
    return int(min(T, 1 + np.floor(it / span * T)))


def explore_probs(p: torch.Tensor, explore: float) -> torch.Tensor:
    """Keep probabilities bounded away from 0 and 1: ``explore * p + (1 - explore) * (1 - p)``."""
    return explore * p + (1 - explore) * (1 - p)


def finetune_step(
    core, policy: OneShotPolicy, opt: torch.optim.Optimizer, batch: int, explore: float, rng: np.random.Generator
) -> dict[str, float]:
    """One supervised step of ``core.net``: cross-entropy on ``batch`` train images run with the blocks
    ``policy`` samples for them (dropped blocks are not computed; gradients into the backbone only,
    batch-norm statistics frozen)."""
    train = core.data.train
    idx = rng.integers(0, len(train.labels), batch)
    xb = torch.as_tensor(train.images[idx]).to(core.device)
    yb = torch.as_tensor(np.asarray(train.labels)[idx]).to(core.device)
    core.net.eval()  # BN statistics frozen; autograd still reaches every weight
    walk = Walk(core.net, core.mode, xb)
    with torch.no_grad():
        keep = torch.bernoulli(explore_probs(torch.sigmoid(policy(torch.as_tensor(core.observe(walk)))), explore))
    logits = run(walk, lambda w: keep[:, w.t].long()).logits()
    loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {
        "loss": loss.item(),
        "routed_accuracy": float((logits.argmax(1) == yb).float().mean()),
        "flops_ratio": float(walk.flops.float().mean() / core.full),
    }


def train(args: Args, env_kwargs: dict[str, Any], log=print) -> tuple[OneShotPolicy, Any, list[dict]]:
    """Train the one-shot policy on ``DynBlockDrop-v0`` (``env_kwargs`` are that env's arguments), then,
    with ``args.finetune_iterations``, jointly with a private copy of the backbone.

    Returns the policy (eval mode), the backbone it was trained with (the fine-tuned copy or the
    env's own) and the per-iteration log.
    """
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def make(**kw):
        return gym.make_vec(
            args.env,
            num_envs=args.num_envs,
            autoreset_mode="SameStep",
            **{**env_kwargs, **kw},
        )

    envs = make()
    if args.finetune_iterations:  # train a private copy: the process-wide cached backbone stays untouched
        net = copy.deepcopy(envs.unwrapped.core.net)
        envs = make(backbone=net)
    # the same backbone object: both envs see every update; under a FLOPs target only the sampled
    # episodes move the compute weight, and the greedy twin is paid at the same weight
    twin = make(backbone=envs.unwrapped.core.net, **({"flops_target": None} if envs.unwrapped.core.target is not None else {}))
    core = envs.unwrapped.core
    T = core.T
    policy = OneShotPolicy(envs.single_observation_space.shape[0], T, args.hidden, core.feat_dim)
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    bb_opt = torch.optim.Adam(core.net.parameters(), lr=args.finetune_lr) if args.finetune_iterations else None
    obs, info = envs.reset(seed=args.seed)
    obs2, info2 = twin.reset(seed=args.seed)
    history, start = [], time.time()
    total = args.iterations + args.finetune_iterations
    for it in range(total):
        assert np.array_equal(info["index"], info2["index"]), "the two envs must see the same images"
        joint = it >= args.iterations
        j = T if joint else curriculum_blocks(it, args.iterations, T, args.curriculum_fraction)
        logits = policy(torch.as_tensor(obs))
        p = torch.sigmoid(logits)
        dist = torch.distributions.Bernoulli(probs=explore_probs(p, args.explore))
        sampled = dist.sample()
        decided = torch.zeros(T, dtype=torch.bool)
        decided[T - j :] = True
        sampled[:, ~decided] = 1.0  # curriculum: the first T - j blocks are kept
        greedy = (p.detach() > 0.5).float()
        greedy[:, ~decided] = 1.0
        if core.target is not None:
            twin.unwrapped.core.set_compute_weight(core.compute_weight)
        obs, r_s, _, _, info = envs.step(sampled.long().numpy())
        obs2, r_g, _, _, info2 = twin.step(greedy.long().numpy())
        adv = torch.as_tensor(r_s - r_g, dtype=torch.float32)
        logp = (dist.log_prob(sampled) * decided).sum(1)
        ent = (dist.entropy() * decided).sum(1) / j
        loss = -(adv * logp).mean() - args.ent_coef * ent.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        fin = info["final_info"]
        row = {
            "iteration": it,
            "stage": "joint" if joint else "rl",
            "blocks_decided": j,
            "reward": float(r_s.mean()),
            "greedy_reward": float(r_g.mean()),
            "train_accuracy": float(np.mean(fin["correct"])),
            "flops_ratio": float(np.mean(fin["flops_ratio"])),
            "blocks_used": float(np.mean(fin["blocks_used"])),
        }
        if joint:
            row["finetune"] = finetune_step(core, policy, bb_opt, args.finetune_batch, args.explore, rng)
        history.append(row)
        if it % max(1, total // 10) == 0 or it == total - 1:
            ft = f"  ce {row['finetune']['loss']:.4f}" if joint else ""
            log(
                f"iter {it:4d}  decide {j}/{T}  reward {row['reward']:+.3f} (greedy {row['greedy_reward']:+.3f})  "
                f"train acc {row['train_accuracy']:.3f}  flops {row['flops_ratio']:.3f}{ft}  {time.time() - start:.0f}s"
            )
    core.net.eval()
    return policy.eval(), core.net, history


def env_kwargs_of(args: Args) -> dict[str, Any]:
    kw: dict[str, Any] = {"dataset": args.dataset, "obs": args.obs, "reward": args.reward}
    if args.reward == "blockdrop":
        kw["penalty"] = args.penalty
    else:
        kw["compute_weight"] = args.compute_weight
        if args.flops_target > 0:
            kw["flops_target"] = args.flops_target
    if args.backbone:
        kw["backbone"] = args.backbone
    return kw


def skip_kwargs(blockdrop_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``DynSkip`` arguments for evaluating under the common protocol (reward terms dropped; a FLOPs
    target kept: ``evaluate`` dials the policy to it)."""
    keep = ("dataset", "backbone", "groups", "device", "obs", "flops_target")
    return {k: v for k, v in blockdrop_kwargs.items() if k in keep}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    env_kwargs = env_kwargs_of(args)
    out = check_writable_dir(args.out, "--out")  # before training, so no run is lost to a bad path
    t0 = time.time()
    policy, net, history = train(args, env_kwargs)
    train_s = time.time() - t0
    save_policy(policy, out / "policy.pt")
    eval_kwargs = skip_kwargs(env_kwargs)
    test_kwargs = dict(eval_kwargs)
    if args.finetune_iterations:
        from dyncnn_gym.pretraining import load_checkpoint

        save_checkpoint(net, out / "backbone.pt")
        test_kwargs["backbone"] = load_checkpoint(out / "backbone.pt")  # evaluated as reloaded from the file
    skip_id = "DynSkip-" + args.env.rpartition("-")[2]
    res = evaluate(OneShotHead(policy), skip_id, **test_kwargs)
    print(
        f"test ({skip_id} protocol): accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f} "
        f"({train_s:.0f}s training)"
    )
    entry = {
        "env_id": skip_id,
        "train_env_id": args.env,
        "env_kwargs": eval_kwargs,
        "train_env_kwargs": env_kwargs,
        "algorithm": "BlockDrop-PG",
        "args": asdict(args),
        "train_seconds": round(train_s, 1),
        "finetuned_backbone": bool(args.finetune_iterations),
        **res,
        "history": history,
    }
    if args.finetune_iterations:
        last = history[-1]["finetune"]
        entry["finetune"] = {
            "iterations": args.finetune_iterations,
            "lr": args.finetune_lr,
            "batch": args.finetune_batch,
            "final_loss": last["loss"],
            "final_routed_accuracy": last["routed_accuracy"],
            "backbone": "backbone.pt",
        }
    if args.compare_static:
        from dyncnn_gym.benchmark.baselines import interpolate, static_baselines
        from dyncnn_gym.envs.core import RoutingCore

        static = static_baselines(RoutingCore("skip", 1, split="test", **test_kwargs))
        at = interpolate(static["front"], res["flops_ratio"])
        entry["static"] = {
            "full": static["full"],
            "front": static["front"],
            "static_front_accuracy_at_same_flops": at,
            "gain_points": 100.0 * (res["accuracy"] - at) if np.isfinite(at) else float("nan"),
        }
        print(f"static front at the same FLOPs: {at:.4f} (gain {entry['static']['gain_points']:+.2f} points)")
    write_text(out / "result.json", json.dumps(entry, indent=2, default=float))
    print(f"wrote {out}/result.json, policy.pt" + (" and backbone.pt" if args.finetune_iterations else ""))
    return entry


def bench_agent(env_fn, task, seed: int, step_budget: int, images_per_update: int | None = None) -> OneShotHead:
    """``dyncnn-gym bench`` plug-in (DynSkip tasks only; raises ``NotImplementedError`` on others):
    BlockDrop-PG, backbone frozen.

    Trains on the ``DynBlockDrop`` version of the task's ``DynSkip`` id (``-v0`` or ``-v1``) with the
    task's env arguments (reward, loss term, observations) at the operating point of ``env_fn`` (its
    compute weight, or its FLOPs target, which the env holds by adapting the weight): the objective
    every agent of the suite gets. An image routed once counts as ``T`` env steps (the decisions it
    covers), the self-critical pass included: ``images_per_update`` images per policy-gradient update
    (default: ``step_budget / (2 T 20)`` clipped to [8, 256], i.e. at least 20 updates), as many updates
    as the budget pays for. Returns the :class:`~dyncnn_gym.policies.OneShotHead`, which
    ``dyncnn_gym.evaluate`` runs on ``task.env_id``.
    """
    name, _, version = task.env_id.rpartition(":")[-1].partition("-")
    if name != "DynSkip":
        raise NotImplementedError(f"blockdrop_pg decides residual blocks: it runs on DynSkip tasks, not {task.env_id!r}")
    torch.set_num_threads(1)
    env_id = f"DynBlockDrop-{version}"
    kw = {**task.env_kwargs, **point_env_kwargs(env_fn)}
    T = gym.make(env_id, **kw).unwrapped.core.T
    if images_per_update is None:
        num_envs = int(np.clip(step_budget // (2 * T * 20), 8, 256))
    elif isinstance(images_per_update, bool) or not isinstance(images_per_update, int) or images_per_update < 1:
        raise ValueError(f"images_per_update={images_per_update!r} must be a positive integer")
    else:
        num_envs = images_per_update
    args = Args(
        env=env_id,
        num_envs=num_envs,
        iterations=max(1, step_budget // (2 * T * num_envs)),
        reward=kw.get("reward", "flops"),
        **({"compute_weight": kw["compute_weight"]} if "compute_weight" in kw else {}),
        seed=seed,
    )
    policy, _, _ = train(args, kw, log=lambda *a, **k: None)
    return OneShotHead(policy).eval()


if __name__ == "__main__":
    main()
