"""``DynExit-v1`` with nothing tuned: PPO with the recipe on the registered FLOPs target, scored on
the whole test split against the full network and the early-exit baselines at the same FLOPs.

For every (data set, kind of stages, seed): ``dyncnn_gym.recipes.train_ppo("DynExit-v1", ...)``
(64 envs, 150 000 steps, the frozen default backbone), then ``dyncnn_gym.evaluate`` (dialed to the
target on held-out images, as by default). Each run prints one JSON line: accuracy, FLOPs ratio,
the compute weight the target settled at, the full network (last exit), and at the policy's FLOPs
ratio the static exits' front, the confidence-threshold cascade's front, and random exits at the
policy's own per-exit rates. A table of all runs follows.

    python examples/exit_v1.py --dataset shapes --stages width depth --seed 0 1 2
    python examples/exit_v1.py --baselines-at 0.45     # no training: the baselines at one FLOPs ratio
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import dyncnn_gym
from dyncnn_gym.benchmark.baselines import interpolate
from dyncnn_gym.benchmark.exit_baselines import random_exits, static_exits, threshold_cascade
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.data.arrays import check_val_fraction
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.fileio import check_writable_file, write_json
from dyncnn_gym.recipes import train_ppo

ENV = "DynExit-v1"
p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--dataset", nargs="+", default=["shapes", "digits"], help="data sets (names dyncnn_gym.data knows)")
p.add_argument("--stages", nargs="+", default=["width", "depth"], choices=["width", "depth"], help="kinds of stages")
p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
p.add_argument(
    "--val-fraction",
    default="auto",
    help="load_dataset's val_fraction: the share of train held out for the routers ('auto', or a number in [0, 1))",
)
p.add_argument(
    "--val-images",
    type=int,
    default=None,
    help="keep only the first N images of the held-out split the routers train on (default: all)",
)
p.add_argument(
    "--baselines-at",
    type=float,
    default=None,
    help="train nothing: print the full network and the static exits' and the cascade's fronts at this FLOPs ratio"
    " (default: train and evaluate PPO)",
)
p.add_argument("--threads", type=int, default=1, help="torch threads")
p.add_argument("--out", default=None, help="also write all runs to this JSON file (default: none)")
args = p.parse_args()
if args.out:
    check_writable_file(args.out, "--out")
torch.set_num_threads(args.threads)
if args.val_images is not None and args.val_images < 1:
    p.error(f"--val-images {args.val_images}: must be a positive number of images")
try:
    val_fraction = check_val_fraction(args.val_fraction if args.val_fraction == "auto" else float(args.val_fraction))
except ValueError as e:
    p.error(f"--val-fraction {args.val_fraction}: {e}")


def held_out_head(data, n: int):
    """``data`` with only the first ``n`` images of its ``"val"`` split."""
    if not data.has_val:
        p.error(f"--val-images {n}: data {data.name!r} has no held-out split")
    val = data.split("val")
    head = dataclasses.replace(
        val,
        images=val.images[:n],
        labels=val.labels[:n],
        difficulty=val.difficulty[:n],
        difficulty_params={k: v[:n] for k, v in val.difficulty_params.items()},
    )
    return dataclasses.replace(data, val=head)


def run(name: str, stages: str, seed: int) -> dict:
    data = dyncnn_gym.load_dataset(name, val_fraction=val_fraction)
    if args.val_images is not None:
        data = held_out_head(data, args.val_images)
    t0 = time.time()
    model = train_ppo(ENV, dataset=data, stages=stages, seed=seed, progress=False)
    train_s = time.time() - t0
    res = dyncnn_gym.evaluate(model, ENV, dataset=data, stages=stages)
    core = make_core(ENV, 1, dataset=data, stages=stages, split="test")
    f = res["flops_ratio"]
    static, cascade = static_exits(core), threshold_cascade(core)
    return {
        "dataset": name,
        "val_fraction": args.val_fraction,
        "val_images": args.val_images,
        "stages": stages,
        "seed": seed,
        "accuracy": res["accuracy"],
        "flops_ratio": f,
        "exit_rates": res["exit_rates"],
        "dialed": res["dialed"],
        "final_compute_weight": model.get_env().core.compute_weight,
        "full": static["full"]["accuracy"],
        "static_exits_at_flops": interpolate(static["front"], f),
        "cascade_at_flops": interpolate(cascade["front"], f),
        "random_exits_at_rates": random_exits(core, res["exit_rates"], seed=seed)["accuracy"],
        "train_seconds": round(train_s, 1),
    }


def baselines_at(name: str, stages: str, f: float) -> str:
    data = dyncnn_gym.load_dataset(name, val_fraction=val_fraction)
    core = make_core(ENV, 1, dataset=data, stages=stages, split="test")
    static, cascade = static_exits(core), threshold_cascade(core)
    full, st, cas = static["full"]["accuracy"], interpolate(static["front"], f), interpolate(cascade["front"], f)
    exits = ", ".join(f"{100 * q['accuracy']:.2f} @ {q['flops_ratio']:.3f}" for q in static["points"])
    return (
        f"| {name}, {stages} | {len(core.labels)} | {100 * full:.2f} | {exits} | {100 * st:.2f} | {100 * cas:.2f} |"
        f" {100 * (full - st):+.2f} |"
    )


if args.baselines_at is not None:
    if not 0 < args.baselines_at <= 1:
        p.error(f"--baselines-at {args.baselines_at}: must be a FLOPs ratio in (0, 1]")
    f = args.baselines_at
    print(
        f"| data, stages | test images | full network (%) | static exits (% @ FLOPs ratio) | static exits' front at {f} | cascade's front at {f} | full - static front |"
    )
    print("|---|---:|---:|---|---:|---:|---:|")
    for name in args.dataset:
        for stages in args.stages:
            print(baselines_at(name, stages, f), flush=True)
    raise SystemExit(0)

runs = []
for data in args.dataset:
    for stages in args.stages:
        for seed in args.seed:
            runs.append(run(data, stages, seed))
            print(json.dumps(runs[-1]), flush=True)
print("\n| data, stages | seed | PPO (%) | FLOPs ratio | full network | static exits | threshold cascade | random exits |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    cells = [r["accuracy"], r["full"], r["static_exits_at_flops"], r["cascade_at_flops"], r["random_exits_at_rates"]]
    a, full, st, cas, rnd = (f"{100 * c:.2f}" for c in cells)
    print(f"| {r['dataset']}, {r['stages']} | {r['seed']} | {a} | {r['flops_ratio']:.3f} | {full} | {st} | {cas} | {rnd} |")
if args.out:
    write_json(args.out, runs, indent=2)
