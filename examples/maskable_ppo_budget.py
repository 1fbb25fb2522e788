"""MaskablePPO under a per-image compute budget: actions that could not finish within
``--budget`` (a FLOPs ratio) are masked, so every image stays within it.

    python examples/maskable_ppo_budget.py --budget 0.5
"""

import argparse

from sb3_contrib import MaskablePPO

from dyncnn_gym import evaluate
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.sb3 import make_vec_env

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
p.add_argument("--budget", type=float, default=0.5, help="FLOPs-ratio cap per image; actions that would exceed it are masked")
p.add_argument("--timesteps", type=int, default=60_000, help="MaskablePPO env steps (decisions)")
p.add_argument("--seed", type=int, default=0, help="seeds the envs and MaskablePPO")
args = p.parse_args()

env_kwargs = {"dataset": args.dataset, "budget": args.budget, "compute_weight": 0.0}
vec = make_vec_env("DynChannel-v0", n_envs=64, seed=args.seed, **env_kwargs)
model = MaskablePPO("MlpPolicy", vec, n_steps=40, batch_size=512, gamma=1.0, seed=args.seed, verbose=0)
model.learn(args.timesteps)
res = evaluate(model, "DynChannel-v0", **env_kwargs)
print(f"MaskablePPO (budget {args.budget}): accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}")
