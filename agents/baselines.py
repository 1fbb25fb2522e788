"""Baseline routers on the whole test split, in the benchmark's result format (CleanRL-style, one file).

    python agents/baselines.py --env DynChannel-v0 --out runs/baselines_channel.json
    python agents/baselines.py --env DynSkip-v0 --dataset digits --rate 0.3

* ``static``: the same action at every decision (every static width, skip none / skip all), and
  per-decision static routes found greedily on held-out and on train images (all routes when there
  are <= 64);
* ``random``: each decision draws its action at random; ``--rate`` sets the probability of the
  cheap choice (skip / narrowest width), the rest spread over the other actions;
* ``cascade``: a confidence cascade — at every decision, the rich action (widest / execute) where the
  probe's top probability is below a threshold, else the cheap one; action pairs and thresholds
  chosen on held-out images, its front measured on the test split (the hand-made adaptive router a
  learned policy should beat);
* ``oracle``: knows the label — each image takes the cheapest static route that classifies it
  correctly (an upper bound for analysis, not a policy).

Only the public API is used (``RoutingCore`` is what every env face is built on).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields

import numpy as np

from dyncnn_gym.benchmark.baselines import cascade_front, oracle, random_policy_eval, static_baselines
from dyncnn_gym.cli import HelpFormatter, arg
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.fileio import write_text


@dataclass
class Args:
    env: str = arg("DynChannel-v0", "routing env id: DynChannel-v0 or DynSkip-v0")
    dataset: str = arg("shapes", "data set name (shapes, digits, ...)")
    backbone: str | None = arg(None, "backbone name or checkpoint path (default: the env's default backbone)")
    groups: int = arg(4, "channel groups per layer")
    rate: float = arg(0.5, "random routes: probability of the cheap action (skip / narrowest width)")
    seed: int = arg(0, "seeds the random routes")
    out: str | None = arg(None, "also write the results to this JSON file (default: print only)")


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    for f in fields(Args):
        kind = type(f.default) if f.default is not None else str
        p.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"])
    ns = p.parse_args()
    if ns.env not in ("DynChannel-v0", "DynSkip-v0"):
        p.error(f"--env {ns.env!r} is not a routing env; choose DynChannel-v0 or DynSkip-v0")
    if not 0.0 <= ns.rate <= 1.0:
        p.error(f"--rate {ns.rate} must be a probability in [0, 1]")
    return Args(**vars(ns))


def main() -> None:
    args = parse_args()
    mode = "channel" if args.env == "DynChannel-v0" else "skip"
    core = RoutingCore(mode, 1, dataset=args.dataset, backbone=args.backbone, groups=args.groups, split="test")
    static = static_baselines(core)
    others = [args.rate] + [(1 - args.rate) / (core.A - 1)] * (core.A - 1)
    rnd = random_policy_eval(core, [others] * core.T, seed=args.seed)
    pool = static.get("exhaustive") or (static["uniform"] + static.get("greedy", []))
    orc = oracle(core, np.array([r["actions"] for r in pool], dtype=np.int64))
    cascade = cascade_front(core)
    result = {
        "env_id": args.env,
        "env_kwargs": {"dataset": args.dataset, "backbone": args.backbone, "groups": args.groups},
        "full": static["full"],
        "static": static,
        "random": {"rate_cheapest": args.rate, **rnd},
        "cascade": cascade,
        "oracle": orc,
    }
    print(f"{args.env} on {args.dataset}: full {static['full']['accuracy']:.4f}")
    for row in static["front"]:
        print(f"  static {row['actions']}: accuracy {row['accuracy']:.4f} at FLOPs ratio {row['flops_ratio']:.3f}")
    print(f"  random (cheapest with p={args.rate}): {rnd['accuracy']:.4f} at {rnd['flops_ratio']:.3f}")
    for c in cascade["front"]:
        print(
            f"  cascade {c['cheap']}->{c['rich']} below top probability {c['threshold']}: accuracy {c['accuracy']:.4f}"
            f" at FLOPs ratio {c['flops_ratio']:.3f}"
        )
    print(f"  oracle (knows the label): {orc['accuracy']:.4f} at {orc['flops_ratio']:.3f}")
    if args.out:
        write_text(args.out, json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
