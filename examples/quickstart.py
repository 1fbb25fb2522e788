"""Quick start: both envs on the default (embedded) data, a random router against the full network.

    python examples/quickstart.py                    # embedded "shapes" data (a default backbone
                                                     # not shipped is pretrained once and cached)
    python examples/quickstart.py --dataset digits   # scikit-learn's digits instead

For each env it runs ``--episodes`` episodes over the test split twice: once choosing every
action at random, once always choosing the largest action (the full network), and prints the
accuracy and the mean FLOPs ratio (FLOPs used / FLOPs of the full network) of each.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import dyncnn_gym  # noqa: F401  (registers DynChannel-v0 and DynSkip-v0)
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.pretraining import DEFAULT_ARCH


def run(env: gym.Env, episodes: int, policy: str, seed: int) -> tuple[float, float]:
    """Accuracy and mean FLOPs ratio of ``episodes`` test images under a fixed policy."""
    rng = np.random.default_rng(seed)
    correct, ratios = [], []
    env.reset(seed=seed)  # a seeded reset starts the test sweep at image 0
    for episode in range(episodes):
        if episode:
            env.reset()
        terminated = False
        while not terminated:
            n = int(env.action_space.n)
            action = int(rng.integers(n)) if policy == "random" else n - 1
            _, _, terminated, truncated, info = env.step(action)
            assert not truncated  # episodes end after the last decision, never by truncation
        correct.append(info["correct"])
        ratios.append(info["flops_ratio"])
    return float(np.mean(correct)), float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--dataset", default="shapes", help="data set name (default: shapes, the embedded data)")
    parser.add_argument("--episodes", type=int, default=500, help="test images per policy (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random router")
    args = parser.parse_args()

    for env_id in ("DynChannel-v0", "DynSkip-v0"):
        env = gym.make(env_id, dataset=args.dataset, split="test")
        backbone = DEFAULT_ARCH[env.unwrapped.mode]  # no backbone= given: the env's default
        print(f"{env_id}: backbone {backbone}, {env.unwrapped.num_decisions} decisions, actions {env.action_space}")
        for policy in ("random", "full"):
            acc, ratio = run(env, args.episodes, policy, args.seed)
            print(f"  {policy:6s} router: accuracy {acc:.3f}  mean flops_ratio {ratio:.3f}  ({args.episodes} test images)")
        env.close()


if __name__ == "__main__":
    main()
