"""Every learned point of a ``dyncnn-gym bench`` run beside the baselines at the same FLOPs.

For each task of a bench's ``results.json`` and each point of every learned agent (one compute
weight and seed), prints its accuracy and FLOPs ratio with, at the same FLOPs ratio (linear
interpolation of the fronts, as the bench's score does): the static front (static routes, or static
exits), the confidence cascade's front, random routes at the point's own action (exit) rates, and
the full network. Optionally it adds another task's fronts for comparison (``--against``), e.g.
``DynRoute-v0``'s points against the ``DynChannel-v0`` and ``DynSkip-v0`` fronts of the same ResNet.

    python examples/front_table.py bench_out/results.json
    python examples/front_table.py bench_out/results.json --task route-resnet20-lite@route+sandwich+distill-shapes \\
        --against channel-resnet20-lite@route+sandwich+distill-shapes skip-resnet20-lite@route+sandwich+distill-shapes
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dyncnn_gym.benchmark.baselines import interpolate, pareto
from dyncnn_gym.cli import HelpFormatter


def front_of(points: list[dict]) -> list[dict]:
    return pareto([{"accuracy": p["accuracy"], "flops_ratio": p["flops_ratio"]} for p in points])


def at(front: list[dict], x: float) -> str:
    v = interpolate(front, x) if front else float("nan")
    return "" if not np.isfinite(v) else f"{100 * v:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("results", help="a bench's results.json")
    p.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
    p.add_argument("--against", nargs="+", default=[], help="other tasks whose learned fronts to compare with (default: none)")
    args = p.parse_args()
    res = json.loads(open(args.results).read())
    for name, entry in res["tasks"].items():
        if args.task and name not in args.task:
            continue
        agents = entry["agents"]
        static = entry["static"]["front"]
        full = entry["static"]["full"]
        cascade = front_of(agents["cascade"]["points"]) if "cascade" in agents else []
        others = {}
        for o in args.against:
            for spec, a in res["tasks"][o]["agents"].items():
                if a["kind"] in ("learned", "teacher"):
                    others[f"{spec} on {o.split('-')[0]}"] = front_of(a["points"])
        print(f"\n## {name} ({entry['env_id']}): full network {100 * full['accuracy']:.2f} % at {full['flops_ratio']:.3f}")
        cols = ["agent", "weight", "seed", "accuracy", "FLOPs", "static front", "cascade front", "random (matched)"]
        cols += list(others)
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for spec, a in agents.items():
            if a["kind"] not in ("learned", "teacher"):
                continue
            for pt in sorted(a["points"], key=lambda q: q["flops_ratio"]):
                x = pt["flops_ratio"]
                rnd = pt.get("random_matched", {})
                row = [
                    spec,
                    str(pt.get("compute_weight")),
                    str(pt.get("seed")),
                    f"{100 * pt['accuracy']:.2f}",
                    f"{x:.3f}",
                    at(static, x),
                    at(cascade, x),
                    f"{100 * rnd['accuracy']:.2f} at {rnd['flops_ratio']:.3f}" if rnd else "",
                ]
                row += [at(f, x) for f in others.values()]
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
