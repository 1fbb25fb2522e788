"""Train Ray RLlib's PPO (new API stack: env runners, RLModules) on DynChannel-v0 or DynSkip-v0 with
remote env runners, then evaluate the learned policy on the whole test split.

    pip install -e ".[rllib]"
    python examples/rllib_ppo.py                           # DynChannel-v0 on digits, ~2 min on 2 cores
    python examples/rllib_ppo.py --env DynSkip-v0 --iterations 30
    python examples/rllib_ppo.py --via register_env --vectorize sync

Every env runner is a separate process that builds its own env from ``env_config`` (here by name:
the data set loads there and the default backbone comes from the shipped checkpoints, offline).
With ``--vectorize vector_entry_point`` (default) each runner steps the native vector env, all
``--envs-per-runner`` images as one batch through the backbone. The policy is evaluated with
``dyncnn_gym.evaluate`` (deterministic: argmax of the RLModule's action logits) against the full
network.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.fileio import check_writable_file, write_json

ENV_IDS = ("DynChannel-v0", "DynSkip-v0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--env", default="DynChannel-v0", choices=ENV_IDS, help="env id (default: %(default)s)")
    p.add_argument("--dataset", default="digits", help="data set name, e.g. digits or shapes (default: %(default)s)")
    p.add_argument(
        "--compute-weight", type=float, default=0.5, help="reward per unit of FLOPs ratio saved (default: %(default)s)"
    )
    p.add_argument("--obs", default="features", choices=("features", "probe"), help="observation mode (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=20, help="PPO training iterations (default: %(default)s)")
    p.add_argument("--env-runners", type=int, default=1, help="remote env-runner processes, >= 1 (default: %(default)s)")
    p.add_argument(
        "--envs-per-runner", type=int, default=32, help="images per env runner, stepped as one batch (default: %(default)s)"
    )
    p.add_argument(
        "--train-batch", type=int, default=2048, help="env steps (decisions) per training iteration (default: %(default)s)"
    )
    p.add_argument("--minibatch", type=int, default=512, help="SGD minibatch size in env steps (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=4, help="SGD passes over each train batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--vectorize",
        default="vector_entry_point",
        choices=("vector_entry_point", "sync"),
        help="gym_env_vectorize_mode: the native vector env, or a SyncVectorEnv of single envs (default: %(default)s)",
    )
    p.add_argument(
        "--via",
        default="id",
        choices=("id", "register_env"),
        help='env given as the id string "dyncnn_gym:ENV" or through ray.tune.registry.register_env (default: %(default)s)',
    )
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds RLlib and the envs (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the evaluation results to this JSON file")
    args = p.parse_args(argv)
    if args.out:
        check_writable_file(args.out, "--out")  # before training: a finished run is not lost to an unwritable path
    for name in ("iterations", "env_runners", "envs_per_runner", "train_batch", "minibatch", "epochs", "num_cpus"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    if args.minibatch > args.train_batch:
        p.error(f"--minibatch={args.minibatch} must not exceed --train-batch={args.train_batch}")
    return args


def build_config(args: argparse.Namespace, env: str | None = None):
    """The ``PPOConfig`` for ``args``; ``env`` overrides the env given to RLlib (a registered name)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    env_config: dict[str, Any] = {"dataset": args.dataset, "compute_weight": args.compute_weight, "obs": args.obs}
    # fragment length: each runner collects train_batch / runners steps per iteration
    fragment = max(1, args.train_batch // (args.env_runners * args.envs_per_runner))
    return (
        PPOConfig()
        .environment(env or f"dyncnn_gym:{args.env}", env_config=env_config)
        .env_runners(
            num_env_runners=args.env_runners,
            num_envs_per_env_runner=args.envs_per_runner,
            gym_env_vectorize_mode=args.vectorize,
            rollout_fragment_length=fragment,
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)  # learn in this process
        .training(
            train_batch_size_per_learner=args.train_batch,
            minibatch_size=args.minibatch,
            num_epochs=args.epochs,
            lr=args.lr,
            gamma=1.0,  # every episode has exactly T steps; the loss arrives on the last
            lambda_=0.95,
            entropy_coeff=0.01,
            clip_param=0.2,
        )
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=args.seed)
    )


def main(argv: list[str] | None = None, inspect: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Train, evaluate, print; returns the results dict. ``inspect(algo)``, if given, is called after
    training (before the algorithm stops) and its return value is stored under ``"inspect"``."""
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import ray
    import torch

    from dyncnn_gym import evaluate
    from dyncnn_gym.rllib import EnvCreator, rlmodule_policy

    torch.set_num_threads(1)
    env_vars = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "DYNCNN_GYM_CACHE") if k in os.environ}
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    env_name = None
    if args.via == "register_env":
        from ray.tune.registry import register_env

        env_name = f"dyncnn-{args.env}"
        register_env(env_name, EnvCreator(args.env))
    t0 = time.perf_counter()
    algo = build_config(args, env_name).build_algo()
    history = []
    try:
        for i in range(args.iterations):
            r = algo.train()
            runners = r.get("env_runners", {})
            row = {
                "iteration": i + 1,
                "episode_return_mean": runners.get("episode_return_mean"),
                "episodes": runners.get("num_episodes_lifetime"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            history.append(row)
            print(json.dumps(row))
        train_s = time.perf_counter() - t0
        inspected = inspect(algo) if inspect is not None else None
        module = algo.get_module()
        env_kwargs = {"dataset": args.dataset, "compute_weight": args.compute_weight, "obs": args.obs}
        learned = evaluate(rlmodule_policy(module), args.env, **env_kwargs)
        widest = int(module.action_space.n) - 1  # every group computed / every block run
        full = evaluate(lambda obs: np.full(len(obs), widest), args.env, **env_kwargs)
    finally:
        algo.stop()
        if started_ray:
            ray.shutdown()
    result = {
        "env": args.env,
        "dataset": args.dataset,
        "train_seconds": round(train_s, 1),
        "history": history,
        "accuracy": learned["accuracy"],
        "flops_ratio": learned["flops_ratio"],
        "n_images": learned["n_images"],
        "mean_action": learned["mean_action"],
        "full_network_accuracy": full["accuracy"],
    }
    if inspect is not None:
        result["inspect"] = inspected
    print(
        f"{args.env} on {args.dataset}: test accuracy {learned['accuracy']:.4f} at FLOPs ratio "
        f"{learned['flops_ratio']:.3f} over {learned['n_images']} images (full network {full['accuracy']:.4f};"
        f" {train_s:.0f} s of RLlib PPO)"
    )
    if args.out:
        write_json(args.out, result, indent=2)
    return result


if __name__ == "__main__":
    main()
