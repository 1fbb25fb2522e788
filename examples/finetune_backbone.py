"""Co-training with the package's recipe (``dyncnn_gym.recipes.train_cotrained``): PPO learns the
routing while BackboneFinetuneCallback fine-tunes a private copy of the backbone under the routes
the policy takes (RNP's alternating schedule: 10 backbone steps every 2 rollouts), on train images
shifted by up to 2 pixels, at compute weight 0.07.

    python examples/finetune_backbone.py                      # shapes, 150k steps: about 100 s
    python examples/finetune_backbone.py --compute-weight 0.05       # the best co-trained points on held-out images (docs/results.md)
    python examples/finetune_backbone.py --dataset digits --no-augment --compute-weight 0.002

The shift (``--augment``, the default) is what makes co-training pay on the default shapes backbone:
without it the fine-tuning memorises the 10 000 train images (docs/results.md).
Digits' 8x8 images are too small to shift.
"""

import argparse

from dyncnn_gym import evaluate
from dyncnn_gym.benchmark.baselines import interpolate, pareto, static_baselines
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import DEFAULT_ARCH
from dyncnn_gym.recipes import cotrain_recipe, train_cotrained

ENV = "DynChannel-v0"

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
p.add_argument("--timesteps", type=int, default=None, help="PPO steps (default: the recipe's, 150 000)")
p.add_argument(
    "--compute-weight",
    type=float,
    default=None,
    help=f"reward per unit of FLOPs ratio saved (default: the co-training recipe's, {cotrain_recipe(ENV)['compute_weight']})",
)
p.add_argument(
    "--augment",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="shift the fine-tuning images by up to 2 pixels (default: on; images of at least 16x16)",
)
p.add_argument("--seed", type=int, default=0, help="seeds the envs, PPO and the fine-tuning")
args = p.parse_args()

overrides = {"compute_weight": args.compute_weight} if args.compute_weight is not None else {}
model, kwargs = train_cotrained(
    ENV,
    dataset=args.dataset,
    finetune_kwargs={"augment": args.augment},
    total_timesteps=args.timesteps,
    seed=args.seed,
    **overrides,
)
res = evaluate(model, ENV, **kwargs)  # kwargs["backbone"] is the fine-tuned copy

# the frozen default backbone's uniform static widths, interpolated at the co-trained point's FLOPs
frozen = RoutingCore("channel", 1, split="test", dataset=args.dataset, backbone=DEFAULT_ARCH["channel"])
uniform = static_baselines(frozen, greedy=False)["uniform"]
static = interpolate(pareto(uniform), res["flops_ratio"])
print(
    f"co-trained: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f};"
    f" full network {uniform[-1]['accuracy']:.4f}; uniform static widths at the same FLOPs {static:.4f}"
)
