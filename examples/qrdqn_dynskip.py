"""Train sb3-contrib QR-DQN (distributional DQN: quantiles of the return) to skip residual blocks
per image (DynSkip-v0) on the native VecEnv.

    python examples/qrdqn_dynskip.py --timesteps 60000
"""

import argparse

from sb3_contrib import QRDQN

from dyncnn_gym import evaluate
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.sb3 import make_vec_env

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
p.add_argument("--timesteps", type=int, default=60_000, help="QR-DQN env steps (decisions)")
p.add_argument("--compute-weight", type=float, default=0.5, help="reward per unit of FLOPs ratio saved")
p.add_argument("--seed", type=int, default=0, help="seeds the envs and QR-DQN")
args = p.parse_args()

env_kwargs = {"dataset": args.dataset, "compute_weight": args.compute_weight}
vec = make_vec_env("DynSkip-v0", n_envs=32, seed=args.seed, **env_kwargs)
model = QRDQN(
    "MlpPolicy",
    vec,
    gamma=1.0,
    learning_starts=2000,
    exploration_fraction=0.3,
    train_freq=1,
    gradient_steps=4,
    target_update_interval=500,
    policy_kwargs={"n_quantiles": 25},
    seed=args.seed,
    verbose=0,
)
model.learn(args.timesteps)
res = evaluate(model, "DynSkip-v0", **env_kwargs)
print(f"QR-DQN: test accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}")
