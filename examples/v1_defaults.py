"""The ``-v1`` ids with nothing tuned: PPO on the registered defaults, scored against the full
network and the static networks of the same FLOPs on the whole test split.

Two ways to train, as a new user would:

* ``default``: ``gym.make(env_id, dataset=data)`` and ``PPO("MlpPolicy", env)`` with SB3's own
  defaults, ``learn(100_000)`` (single env; the slow one);
* ``recipe``: ``make_vec_env(env_id, n_envs=64)`` and ``PPO(**recipe(env_id)["ppo"])`` for the
  recipe's 150 000 steps.

Each run prints one JSON line: the split the episodes were drawn from, the final compute weight,
the full network's accuracy, and for the policy's plain argmax (``raw``) and for the policy dialed
to the env's FLOPs target (``dialed``, what ``dyncnn_gym.evaluate`` reports by default): accuracy,
FLOPs ratio, and accuracy points against the full network (``vs_full``), uniform static widths or
random skip patterns (``vs_uniform``) and the static front (``vs_front``) at the same FLOPs. A table
of all runs follows.

    python examples/v1_defaults.py --mode recipe --seed 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch
from stable_baselines3 import PPO

import dyncnn_gym
from dyncnn_gym.benchmark.baselines import interpolate, static_baselines
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.fileio import check_writable_file, write_json
from dyncnn_gym.recipes import recipe
from dyncnn_gym.sb3 import make_vec_env

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument(
    "--env",
    nargs="+",
    default=["DynChannel-v1", "DynSkip-v1"],
    choices=["DynChannel-v1", "DynSkip-v1", "DynRoute-v1"],
    help="env ids",
)
p.add_argument("--data", nargs="+", default=["shapes", "digits"], help="data sets (names dyncnn_gym.data knows)")
p.add_argument("--mode", nargs="+", default=["recipe"], choices=["default", "recipe"], help="how to train (see above)")
p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
p.add_argument("--threads", type=int, default=1, help="torch threads")
p.add_argument("--out", default=None, help="also write all runs to this JSON file (default: none)")
args = p.parse_args()
if args.out:
    check_writable_file(args.out, "--out")
torch.set_num_threads(args.threads)


def run(env_id: str, data: str, mode: str, seed: int) -> dict:
    t0 = time.time()
    if mode == "recipe":
        r = recipe(env_id)
        env = make_vec_env(env_id, n_envs=r["n_envs"], seed=seed, dataset=data)
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", **r["ppo"]).learn(r["total_timesteps"])
        core = env.core
    else:
        env = gym.make(env_id, dataset=data)
        model = PPO("MlpPolicy", env, seed=seed, device="cpu").learn(100_000)
        core = env.unwrapped.core
    out = {"env": env_id, "data": data, "mode": mode, "seed": seed, "train_s": round(time.time() - t0)}
    out.update(split=core.split_name, final_weight=core.compute_weight)
    test = make_core(env_id, 500, split="test", dataset=data)
    static = static_baselines(test)
    full = static["full"]["accuracy"]
    out["full"] = full
    for name, dial in (("raw", False), ("dialed", None)):
        res = dyncnn_gym.evaluate(model, env_id, core=test, dial=dial)
        acc, x = res["accuracy"], res["flops_ratio"]
        out[name] = {
            "accuracy": acc,
            "flops_ratio": x,
            "vs_full": 100 * (acc - full),
            "vs_uniform": 100 * (acc - interpolate(static["uniform"], x)),
            "vs_front": 100 * (acc - interpolate(static["front"], x)),
        }
    return out


runs = []
for seed in args.seed:
    for mode in args.mode:
        for data in args.data:
            for env_id in args.env:
                runs.append(run(env_id, data, mode, seed))
                print(json.dumps(runs[-1]), flush=True)
print("\n| env | data | training | seed | accuracy (%) | FLOPs ratio | vs full | vs static front | vs uniform |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for r in runs:
    d = r["dialed"]
    print(
        f"| {r['env']} | {r['data']} | {r['mode']} | {r['seed']} | {100 * d['accuracy']:.2f} | {d['flops_ratio']:.3f} "
        f"| {d['vs_full']:+.2f} | {d['vs_front']:+.2f} | {d['vs_uniform']:+.2f} |"
    )
if args.out:
    write_json(args.out, runs, indent=1)
