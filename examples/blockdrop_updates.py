"""The BlockDrop bench agent with fewer images per policy-gradient update (so more updates).

``dyncnn-gym bench`` gives ``blockdrop`` 256 images per update at the ``cpu-v1`` budget (20 updates
of the one-shot policy). These agents are the same with 64 or 32 images per update (78 or 156
updates); the bench's per-point ``routes.distinct`` and its table against random routes at the same
rates show whether the routes then depend on the image. ``python examples/blockdrop_updates.py``
runs, for each ``--images`` value N (from the repository root):

    dyncnn-gym bench --suite cpu-v1 --task skip-resnet32-lite@skip-shapes --seed 0 \\
        --agent examples/blockdrop_updates.py:images_N --agent static --agent random --out OUT/images_N
"""

from __future__ import annotations

import argparse

from dyncnn_gym import cli
from dyncnn_gym.agents.blockdrop_pg import bench_agent, load_policy, save_policy
from dyncnn_gym.policies import OneShotHead

__all__ = ["images_32", "images_64", "load_policy", "save_policy"]


def images_64(env_fn, task, seed: int, step_budget: int) -> OneShotHead:
    """``blockdrop`` with 64 images per update."""
    return bench_agent(env_fn, task, seed, step_budget, images_per_update=64)


def images_32(env_fn, task, seed: int, step_budget: int) -> OneShotHead:
    """``blockdrop`` with 32 images per update."""
    return bench_agent(env_fn, task, seed, step_budget, images_per_update=32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[64, 32], choices=[64, 32], help="images per update")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="seeds")
    p.add_argument("--out", default="runs/blockdrop_updates", help="output folder (one bench run per --images value)")
    args = p.parse_args()
    for n in args.images:
        cli.main(
            ["bench", "--suite", "cpu-v1", "--task", "skip-resnet32-lite@skip-shapes", "--seed", *map(str, args.seed)]
            + [
                "--agent",
                f"{__file__}:images_{n}",
                "--agent",
                "static",
                "--agent",
                "random",
                "--out",
                f"{args.out}/images_{n}",
            ]
        )


if __name__ == "__main__":
    main()
