"""RecurrentPPO (sb3-contrib): an LSTM policy that carries what it saw at earlier decision points,
like RNP's recurrent core shared across layers.

    python examples/recurrent_ppo.py --timesteps 60000
"""

import argparse

from sb3_contrib import RecurrentPPO

from dyncnn_gym import evaluate
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.sb3 import make_vec_env

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--env", default="DynChannel-v0", choices=["DynChannel-v0", "DynSkip-v0"], help="env id")
p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
p.add_argument("--timesteps", type=int, default=60_000, help="RecurrentPPO env steps (decisions)")
p.add_argument("--seed", type=int, default=0, help="seeds the envs and RecurrentPPO")
args = p.parse_args()

env_kwargs = {"dataset": args.dataset}
vec = make_vec_env(args.env, n_envs=64, seed=args.seed, **env_kwargs)
model = RecurrentPPO("MlpLstmPolicy", vec, n_steps=40, batch_size=512, gamma=1.0, seed=args.seed, verbose=0)
model.learn(args.timesteps)
res = evaluate(model, args.env, **env_kwargs)
print(f"RecurrentPPO: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}")
