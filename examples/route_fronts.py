"""Plot the learned fronts of several bench tasks on one figure (e.g. ``DynRoute-v0``,
``DynChannel-v0`` and ``DynSkip-v0`` on the same ResNet), as the bench computes them: each
agent's points joined linearly, extended beyond its cheapest / dearest point by the best random
per-image mixture with a static route.

    python examples/route_fronts.py bench_out/results.json --out docs/figures/route_fronts.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dyncnn_gym.benchmark.bench import algorithm_front
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.fileio import savefig

ROUTE = "resnet20-lite@route+sandwich+distill-shapes"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("results", help="a bench's results.json")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=[f"route-{ROUTE}", f"channel-{ROUTE}", f"skip-{ROUTE}"],
        help="the tasks whose fronts to draw",
    )
    p.add_argument("--agent", default="ppo", help="the agent whose points make each front")
    p.add_argument("--out", default="route_fronts.png", help="the PNG to write")
    p.add_argument("--xlim", type=float, nargs=2, default=(0.2, 1.0), help="FLOPs-ratio range of the plot")
    p.add_argument("--ylim", type=float, nargs=2, default=(76.0, 87.0), help="accuracy range (%%) of the plot")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(open(args.results).read())
    grid = np.linspace(*args.xlim, 401)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in args.tasks:
        entry = res["tasks"][name]
        pts = entry["agents"][args.agent]["points"]
        front = 100 * algorithm_front(pts, entry["static"]["front"], grid)
        (line,) = ax.plot(grid, front, lw=1.4, label=f"{args.agent} on {entry['env_id']}")
        ax.scatter([q["flops_ratio"] for q in pts], [100 * q["accuracy"] for q in pts], s=22, color=line.get_color())
    static = res["tasks"][args.tasks[0]]["static"]["front"]
    ax.plot(
        [q["flops_ratio"] for q in static],
        [100 * q["accuracy"] for q in static],
        color="0.4",
        lw=1,
        ls="--",
        label=f"static front ({res['tasks'][args.tasks[0]]['env_id']})",
    )
    ax.axvspan(0.3, 0.6, color="0.9", zorder=0)
    ax.set_xlim(*args.xlim)
    ax.set_ylim(*args.ylim)
    ax.set_xlabel("FLOPs ratio (used / full network)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"fronts on one backbone ({ROUTE.split('-shapes')[0]}, shapes)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    savefig(fig, args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
