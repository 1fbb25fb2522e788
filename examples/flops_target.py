"""PPO (the recipe) with the compute weight steered towards a target FLOPs ratio while it trains.

At one compute weight, PPO seeds land at scattered FLOPs (on frozen DynSkip at weight 0.2, from 24 %
to 41 % saved), which makes single operating points hard to compare. This example adapts the
weight by dual ascent instead (:class:`dyncnn_gym.sb3.FlopsTargetCallback`): after every rollout,
``w <- w * exp(gain * (f - target))``, with ``f`` the mean FLOPs ratio of the training episodes that
ended in that rollout (``--measure train``, default), or of the deterministic policy on held-out
images (``--measure eval``). Training episodes sample actions; the test split is routed
deterministically, which usually costs somewhat more, so with ``--measure train`` the ``target`` is a
training-time FLOPs ratio. Each seed's result is compared with the full network and with the greedy static front
at its own FLOPs, on the whole test split.

    python examples/flops_target.py --env DynSkip-v0 --target 0.65 --seed 0 1 2 3 4
"""

from __future__ import annotations

import argparse

import torch

from dyncnn_gym.benchmark.baselines import interpolate, static_baselines
from dyncnn_gym.benchmark.protocol import evaluate
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.envs.routing import mode_of
from dyncnn_gym.recipes import env_kwargs, train_ppo
from dyncnn_gym.sb3 import FlopsTargetCallback

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--env", default="DynSkip-v0", choices=["DynChannel-v0", "DynSkip-v0"], help="env id")
p.add_argument("--target", type=float, default=0.65, help="training-time mean FLOPs ratio to steer to, in (0, 1]")
p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
p.add_argument("--start-weight", type=float, default=None, help="initial compute weight (default: the recipe's)")
p.add_argument("--gain", type=float, default=3.0, help="dual-ascent step: log-weight change per unit FLOPs-ratio error")
p.add_argument(
    "--measure",
    default="train",
    choices=["train", "eval"],
    help="FLOPs of the training episodes or of deterministic routing of held-out images",
)
p.add_argument("--timesteps", type=int, default=None, help="PPO steps per seed (default: the recipe's)")
args = p.parse_args()
if not 0 < args.target <= 1:
    p.error(f"--target {args.target} is not a FLOPs ratio; use a value in (0, 1]")
try:  # the callback's own checks (gain, start weight), before any work
    FlopsTargetCallback(args.target, measure=args.measure, gain=args.gain, weight=args.start_weight)
except ValueError as e:
    p.error(str(e))
if args.timesteps is not None and args.timesteps < 1:
    p.error(f"--timesteps {args.timesteps} must be a positive number of steps")
torch.set_num_threads(1)


kwargs = env_kwargs(args.env)
recipe_weight = kwargs.pop("compute_weight")  # the controller's starting point, passed per run below
w0 = args.start_weight or recipe_weight
mode = mode_of(args.env)
core = RoutingCore(mode, 1, split="test", **kwargs)
static = static_baselines(core)
full = static["full"]["accuracy"]
print(f"{args.env}: full network {100 * full:.2f} %; target training FLOPs ratio {args.target}, start weight {w0}")
for seed in args.seed:
    cb = FlopsTargetCallback(args.target, measure=args.measure, gain=args.gain, weight=w0, seed=seed)
    test_core = RoutingCore(mode, 500, split="test", compute_weight=w0, **kwargs)
    model = train_ppo(
        args.env, total_timesteps=args.timesteps, seed=seed, progress=False, callback=cb, compute_weight=w0, **kwargs
    )
    res = evaluate(model, args.env, core=test_core)
    x, acc = res["flops_ratio"], res["accuracy"]
    print(
        f"seed {seed}: final weight {cb.weight:.3f}; accuracy {100 * acc:.2f} % at FLOPs {x:.3f} ({100 * (1 - x):.1f} %"
        f" saved), vs full {100 * (acc - full):+.2f}, vs greedy static {100 * (acc - interpolate(static['front'], x)):+.2f}",
        flush=True,
    )
