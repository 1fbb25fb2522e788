"""Calibrate, then fine-tune under the dialed routes, then recalibrate (DynSkip-v0, PPO recipe at weight 0.2, target 0.69).

Usage: OMP_NUM_THREADS=1 python run.py SEEDS STEPS LR aug|noaug   (e.g. run.py 0,1 300 1e-4 aug)
Each seed: train PPO on a private frozen copy of the default backbone, dial it to 0.69 on held-out
images, evaluate; then BackboneFinetuneCallback.finetune(STEPS) under the dialed routes, dial again,
evaluate. "vs greedy" is against the frozen backbone's greedy static front on the test split.
"""
import copy
import sys
import time

import torch
from dyncnn_gym import evaluate
from dyncnn_gym.recipes import env_kwargs, train_ppo
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import DEFAULT_ARCH
from dyncnn_gym.benchmark.calibrate import calibrate, held_out_accuracy
from dyncnn_gym.benchmark.baselines import static_baselines, interpolate, pareto
from dyncnn_gym.callbacks import BackboneFinetuneCallback

if len(sys.argv) != 5 or sys.argv[4] not in ("aug", "noaug"):
    sys.exit(__doc__)
env, mode, target = "DynSkip-v0", "skip", 0.69
steps, lr = int(sys.argv[2]), float(sys.argv[3])
base = RoutingCore(mode, 1, split="test", dataset="shapes", backbone=DEFAULT_ARCH[mode])
st = static_baselines(base)
front, full = st["front"], st["full"]["accuracy"]
for seed in [int(s) for s in sys.argv[1].split(",")]:
    t0 = time.time()
    net = copy.deepcopy(base.net)
    kw = env_kwargs(env, backbone=net, compute_weight=0.2)
    torch.manual_seed(seed)
    test_core = RoutingCore(mode, 500, split="test", **{**kw, "shaping": "none"})
    model = train_ppo(env, seed=seed, progress=False, **kw)
    d0 = calibrate(model, target, test_core, seed=seed)
    r0 = evaluate(d0, env, core=test_core)
    h0 = held_out_accuracy(test_core, d0)
    cb = BackboneFinetuneCallback(augment=sys.argv[4] == "aug", seed=seed, lr=lr, core=test_core)
    cb.model = d0
    cb.opt = torch.optim.Adam(net.parameters(), lr=lr)
    stats = cb.finetune(steps)
    d1 = calibrate(model, target, test_core, seed=seed)
    r1 = evaluate(d1, env, core=test_core)
    h1 = held_out_accuracy(test_core, d1)
    def row(r):
        x, a = r["flops_ratio"], r["accuracy"]
        return f"{100*a:.2f} at {x:.3f} (vs full {100*(a-full):+.2f}, vs greedy {100*(a-interpolate(pareto(front), x)):+.2f})"
    print(f"seed {seed}: dialed {row(r0)} held-out {100*h0[0]:.2f}@{h0[1]:.3f} | after finetune {row(r1)} held-out {100*h1[0]:.2f}@{h1[1]:.3f}"
          f" | ft {stats} | {time.time()-t0:.0f}s", flush=True)
