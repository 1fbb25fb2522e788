"""Your own images: the ``-v1`` envs with nothing tuned, from an ``(images, labels)`` pair to scores.

``dyncnn_gym.load_dataset((X, y))`` splits the pair into train and test (stratified, seeded) and,
when the train split holds at least 5 000 images, keeps 10 % of it back as the held-out ``"val"``
split (``val_fraction="auto"``) where the ``-v1`` envs train routers. The default backbones are
pretrained on the rest on first use and cached (minutes on a CPU). Then, per env id, PPO with the
recipe (``dyncnn_gym.recipes.train_ppo``) and ``dyncnn_gym.evaluate`` on the whole test split, dialed
to the env's FLOPs target, against the full network and the static routes at the same FLOPs (uniform
widths and greedy routes for ``DynChannel-v1``; static exits and the confidence-threshold cascade
for ``DynExit-v1``).

Without ``--npz`` the pair is the embedded shapes generator drawn with another seed (``--shapes-seed``,
``--n`` images), handed over as plain arrays: nothing in it is the data the package ships.

    python examples/user_data.py                          # shapes drawn with seed 7, as user arrays
    python examples/user_data.py --npz my_images.npz      # arrays "images" [N, H, W(, C)] / [N, C, H, W] and "labels" [N]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import dyncnn_gym
from dyncnn_gym.benchmark.baselines import interpolate, static_baselines
from dyncnn_gym.benchmark.exit_baselines import static_exits, threshold_cascade
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.recipes import train_ppo

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--npz", default=None, help="an .npz file with arrays 'images' and 'labels' (default: none, shapes drawn anew)")
p.add_argument("--n", type=int, default=12_000, help="images drawn from the shapes generator without --npz")
p.add_argument("--shapes-seed", type=int, default=7, help="generator seed of those images (the shipped data use 0)")
p.add_argument("--env", nargs="+", default=["DynChannel-v1", "DynExit-v1"], help="env ids to train routers on")
p.add_argument("--seed", type=int, default=0, help="PPO seed")
p.add_argument("--threads", type=int, default=1, help="torch threads")
args = p.parse_args()
torch.set_num_threads(args.threads)

if args.npz:
    if not os.path.isfile(args.npz):
        p.error(f"--npz {args.npz}: no such file")
    with np.load(args.npz, allow_pickle=False) as f:
        missing = sorted({"images", "labels"} - set(f.files))
        if missing:
            p.error(f"--npz {args.npz}: no array {missing} (it holds {sorted(f.files)})")
        images, labels = f["images"], f["labels"]
else:
    from dyncnn_gym.data import make_shapes

    drawn = make_shapes(args.n, seed=args.shapes_seed)
    images, labels = drawn.images, drawn.labels
data = dyncnn_gym.load_dataset((images, labels))
print(f"train {len(data.train)}, held-out val {len(data.split('val')) if data.has_val else 0}, test {len(data.test)}")

for env_id in args.env:
    t0 = time.time()
    core = make_core(env_id, 1, dataset=data, split="test")  # pretrains the backbone on first use
    backbone_s = time.time() - t0
    t0 = time.time()
    model = train_ppo(env_id, dataset=data, seed=args.seed, progress=False)
    res = dyncnn_gym.evaluate(model, env_id, dataset=data)
    f = res["flops_ratio"]
    row = {"env": env_id, "accuracy": res["accuracy"], "flops_ratio": f, "split": model.get_env().core.split_name}
    if core.mode == "exit":
        static = static_exits(core)
        row |= {"full": static["full"]["accuracy"], "static_exits_at_flops": interpolate(static["front"], f)}
        row["cascade_at_flops"] = interpolate(threshold_cascade(core)["front"], f)
    else:
        static = static_baselines(core)
        row |= {"full": static["full"]["accuracy"], "static_front_at_flops": interpolate(static["front"], f)}
    row |= {"final_compute_weight": model.get_env().core.compute_weight, "backbone_s": round(backbone_s, 1)}
    row["train_and_eval_s"] = round(time.time() - t0, 1)
    print(json.dumps(row), flush=True)
