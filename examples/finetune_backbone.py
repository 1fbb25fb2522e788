"""Co-training: PPO learns the routing while BackboneFinetuneCallback fine-tunes the backbone
under the routes the policy takes (RNP's alternating schedule).

    python examples/finetune_backbone.py --timesteps 60000
"""

import argparse
import copy

from stable_baselines3 import PPO

from dyncnn_gym import evaluate
from dyncnn_gym.callbacks import BackboneFinetuneCallback
from dyncnn_gym.sb3 import make_vec_env

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--dataset", default="shapes")
p.add_argument("--timesteps", type=int, default=60_000)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

# fine-tuning changes the backbone in place: give this run its own copy of the shared default
backbone = copy.deepcopy(make_vec_env("DynChannel-v0", n_envs=1, dataset=args.dataset).backbone)
vec = make_vec_env("DynChannel-v0", n_envs=64, seed=args.seed, dataset=args.dataset, backbone=backbone)
model = PPO("MlpPolicy", vec, n_steps=40, batch_size=512, n_epochs=4, gamma=1.0, seed=args.seed, verbose=0)
model.learn(args.timesteps, callback=BackboneFinetuneCallback(schedule="alternate", agent_rollouts=2, backbone_steps=10))
res = evaluate(model, "DynChannel-v0", dataset=args.dataset, backbone=backbone)
print(f"co-trained: accuracy {res['accuracy']:.4f} at FLOPs ratio {res['flops_ratio']:.3f}")
