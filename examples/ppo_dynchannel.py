"""Train SB3 PPO to prune channel groups per image (DynChannel-v0) with the package's recipe.

    python examples/ppo_dynchannel.py --timesteps 120000 --compute-weight 0.5
"""

import argparse

from dyncnn_gym import evaluate
from dyncnn_gym.recipes import train_ppo

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--dataset", default="shapes")
p.add_argument("--timesteps", type=int, default=120_000)
p.add_argument("--compute-weight", type=float, default=0.5, help="reward per unit of FLOPs ratio saved")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default="ppo_dynchannel.zip")
args = p.parse_args()

env_kwargs = {"dataset": args.dataset, "compute_weight": args.compute_weight}
model = train_ppo("DynChannel-v0", total_timesteps=args.timesteps, seed=args.seed, **env_kwargs)
model.save(args.out)
res = evaluate(model, "DynChannel-v0", **env_kwargs)
print(f"test accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}; saved {args.out}")
