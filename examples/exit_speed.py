"""Wall-clock of an exported ``DynExit-v1`` router (or ``-v0``) against the full network, at batch 256 and 1.

The exported model (``dyncnn_gym.export``) runs the stages with the env's own walk: images that
exit leave the batch and are not computed any further. This script routes the test split with it
and with the plain full network (the same backbone at full width, folded inference kernels), in
interleaved repeats, and prints the median times, the speed-up, the FLOPs ratio and
``speed-up * FLOPs ratio`` (1.0 = the speed-up follows the FLOPs exactly; the router's own
observation and policy are not counted in FLOPs but are in the time), and how long the first stage
alone takes (what every image pays) against its share of the FLOPs.

    python examples/exit_speed.py --model demo_out/models/DynExit-v1-PPO.zip
    python examples/exit_speed.py                      # trains PPO with the recipe first (minutes)
    python examples/exit_speed.py --stages depth
    python examples/exit_speed.py --env DynExit-v0 --stages depth --compute-weight 0.16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import dyncnn_gym
from dyncnn_gym.benchmark.protocol import load_model
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.exit_walk import ExitWalk
from dyncnn_gym.recipes import env_kwargs, train_ppo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--env", default="DynExit-v1", choices=["DynExit-v1", "DynExit-v0"], help="the env id")
    p.add_argument("--model", default=None, help="a saved SB3 model of that env (default: train PPO with the recipe)")
    p.add_argument("--stages", default="width", choices=["width", "depth"], help="the kind of stages of the env")
    p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
    p.add_argument("--compute-weight", type=float, default=None, help="DynExit-v0's compute weight (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--batch1-images", type=int, default=200, help="images timed one by one")
    args = p.parse_args()
    if args.compute_weight is not None and args.env != "DynExit-v0":
        p.error(f"--compute-weight is DynExit-v0's; {args.env} holds a FLOPs target")
    torch.set_num_threads(args.threads)
    weight = {} if args.compute_weight is None else {"compute_weight": args.compute_weight}
    kw = env_kwargs(args.env, dataset=args.dataset, stages=args.stages, **weight)
    model = load_model(args.model) if args.model else train_ppo(args.env, progress=False, **kw)
    routed = dyncnn_gym.export(model, args.env, **kw)
    net = routed.backbone
    x = torch.as_tensor(routed_core_images(kw))
    with torch.no_grad():
        out = routed.route(x)
    ratio = float(out.flops_ratio.mean())
    print(
        f"routed: accuracy {100 * float((out.logits.argmax(1).numpy() == labels(kw)).mean()):.2f} %, FLOPs ratio {ratio:.3f}"
    )

    def full(batch: torch.Tensor) -> torch.Tensor:
        return net.full_forward(batch, "exit" if args.stages == "depth" else "channel")

    def first(batch: torch.Tensor) -> torch.Tensor:  # what every image costs: the stem, stage 0, exit 0
        return ExitWalk(routed.stages, batch).logits

    first_ratio = routed.stages.costs.exit_flops(0) / routed.full

    for batch in (256, 1):
        n = len(x) if batch > 1 else args.batch1_images
        chunks = [x[i : i + batch] for i in range(0, n, batch)]
        times: dict[str, list[float]] = {"full": [], "routed": [], "first": []}
        with torch.no_grad():
            for fn in (full, routed, first):  # warm-up (kernel caches, allocator)
                for c in chunks[:2]:
                    fn(c)
            for _ in range(args.repeats):
                for name, fn in (("full", full), ("routed", routed), ("first", first)):
                    t0 = time.perf_counter()
                    for c in chunks:
                        fn(c)
                    times[name].append(time.perf_counter() - t0)
        tf, tr, t0 = (statistics.median(times[k]) for k in ("full", "routed", "first"))
        speed = tf / tr
        print(
            f"batch {batch:3d}: full {1e3 * tf / n:.3f} ms/image, routed {1e3 * tr / n:.3f} ms/image, speed-up {speed:.2f}x,"
            f" speed-up * FLOPs ratio {speed * ratio:.2f}; the first stage alone (every image at exit 0, FLOPs ratio"
            f" {first_ratio:.3f}): {t0 / tf:.2f} of the full network's time (medians of {args.repeats} interleaved repeats,"
            f" {args.threads} thread(s))"
        )


def routed_core_images(kw: dict) -> np.ndarray:
    from dyncnn_gym.envs.core import _shared_data

    return _shared_data(kw.get("dataset", "shapes")).test.images


def labels(kw: dict) -> np.ndarray:
    from dyncnn_gym.envs.core import _shared_data

    return np.asarray(_shared_data(kw.get("dataset", "shapes")).test.labels)


if __name__ == "__main__":
    main()
