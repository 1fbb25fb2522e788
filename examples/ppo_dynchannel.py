"""Train SB3 PPO to prune channel groups per image (DynChannel-v0) with the package's recipe.

    python examples/ppo_dynchannel.py --timesteps 150000 --compute-weight 0.1

The recipe (``dyncnn_gym/recipes.py``) also fixes the env's reward terms and observations
(``recipes.env_kwargs``); the model is evaluated on an env built with the same arguments.
"""

import argparse

from dyncnn_gym import evaluate
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.recipes import env_kwargs, recipe, train_ppo

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
p.add_argument("--timesteps", type=int, default=recipe("DynChannel-v0")["total_timesteps"], help="PPO env steps (decisions)")
p.add_argument(
    "--compute-weight",
    type=float,
    default=None,
    help="reward per unit of FLOPs ratio saved, in accuracy (default: the recipe's)",
)
p.add_argument("--seed", type=int, default=0, help="seeds the envs and PPO")
p.add_argument("--out", default="ppo_dynchannel.zip", help="where to save the trained SB3 model")
args = p.parse_args()

overrides = {"dataset": args.dataset}
if args.compute_weight is not None:
    overrides["compute_weight"] = args.compute_weight
model = train_ppo("DynChannel-v0", total_timesteps=args.timesteps, seed=args.seed, **overrides)
model.save(args.out)
res = evaluate(model, "DynChannel-v0", **env_kwargs("DynChannel-v0", **overrides))
print(f"test accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}; saved {args.out}")
