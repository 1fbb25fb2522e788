"""BlockDrop's one-look router on a deep trained ResNet, timed as `dyncnn-gym perf` times routed models.

PPO with the package's recipe learns `DynBlockDrop-v1` (every block kept or dropped from one look at
the stem's features, dialed to the FLOPs target 0.68) on your skip backbone; the router is
evaluated on the whole test split against the static skip patterns of the same backbone (uniform
and greedy, the greedy ones chosen on `--select-on` held-out and train images), exported, and timed at batch 1,
64 and 256 against the full network, the same routes without the router, and the static networks
of the same FLOPs and of the same accuracy (the columns of docs/speed.md's table).

    dyncnn-gym pretrain resnet110@skip --data shapes --epochs 8 --out r110.pt   # about 30 min on 2 cores
    python examples/deep_blockdrop.py --backbone r110.pt --out deep_blockdrop.json

A deep backbone's greedy front costs about two route evaluations per decision on every greedy
step (53 decisions on ResNet-110): `--select-on 250` keeps it to minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from dyncnn_gym.benchmark.protocol import evaluate
from dyncnn_gym.benchmark.routed_table import format_routed, route_timed_setup, time_setup
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.blockdrop import as_skip_env
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.recipes import env_kwargs, train_ppo

ENV = "DynBlockDrop-v1"


def run(
    backbone: Any,
    data: Any = "shapes",
    steps: int | None = None,
    select_on: int = 250,
    repeats: int = 5,
    threads: list[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train, evaluate and time the router on ``backbone`` (a checkpoint path, a registry name or a
    ``DynamicNet``); returns ``{"model", "setup", "evaluation", "static_front", "table", "seconds"}``
    (``table``: what :func:`~dyncnn_gym.benchmark.routed_table.format_routed` prints)."""
    seconds = {}
    kw = env_kwargs(ENV, dataset=data, backbone=backbone)
    t = time.perf_counter()
    model = train_ppo(ENV, seed=seed, total_timesteps=steps, progress=progress, **kw)
    seconds["train"] = time.perf_counter() - t
    route_id, route_kw = as_skip_env(ENV, kw)  # the DynSkip-v1 core the one-look router routes through
    core = make_core(route_id, 1, split="test", **route_kw)
    t = time.perf_counter()
    res = evaluate(model, ENV, core=core)
    setup = route_timed_setup(model, core, ENV, evaluated=res, select_on=select_on)
    seconds["evaluate"] = time.perf_counter() - t
    name = f"{ENV} {core.net.arch}"
    t = time.perf_counter()
    threads = threads or sorted({1, torch.get_num_threads()})
    rows = time_setup(setup, name, core.device, repeats, threads=threads)
    seconds["time"] = time.perf_counter() - t
    evaluation = {k: res[k] for k in ("accuracy", "flops_ratio", "dialed")}
    return {
        "model": model,
        "setup": name,
        "evaluation": evaluation,
        "static_front": setup.info["static_front"],
        "table": {"setups": {name: setup.info | {"router": "PPO"}}, "rows": rows},
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--backbone", required=True, help="a pretrained skip backbone: checkpoint file or registry name")
    p.add_argument("--data", default="shapes", help="data set the backbone was trained on")
    p.add_argument("--steps", type=int, default=None, help="PPO steps (default: the recipe's 150000)")
    p.add_argument(
        "--select-on",
        type=int,
        default=250,
        help="images (of the held-out split, where the data has one, and of the train split) the greedy static routes are chosen on",
    )
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per measurement (median reported)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts (default: 1 and torch's)")
    p.add_argument("--seed", type=int, default=0, help="PPO seed")
    p.add_argument("--out", default=None, help="write the results as JSON to this file (default: none)")
    args = p.parse_args()
    out = run(args.backbone, args.data, args.steps, args.select_on, args.repeats, args.threads, args.seed)
    e = out["evaluation"]
    print(f"{out['setup']}: PPO {100 * e['accuracy']:.2f} % at {e['flops_ratio']:.3f} of the full FLOPs")
    print("static front:", ", ".join(f"{100 * q['accuracy']:.2f} % at {q['flops_ratio']:.3f}" for q in out["static_front"]))
    print("\n".join(format_routed(out["table"])))
    print("seconds:", {k: round(v) for k, v in out["seconds"].items()})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({k: v for k, v in out.items() if k != "model"}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
