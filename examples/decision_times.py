"""Is FLOPs a fair proxy of time on this machine? Each decision's wall-clock against its FLOPs.

Runs the default backbone of ``--env`` (``DynSkip-v1``: ``resnet32-lite@skip``; ``DynChannel-v1``:
``vgg+sandwich+distill``) on the first ``--batch`` test images and times every decision alone, at
every action after every previous action, as a routing env does with ``decision_costs="time"``
(``dyncnn_gym.time_costs.decision_times``: the feature map entering each decision on the full
route, each call the median of ``--repeats`` interleaved with the others; milliseconds per batch).
It prints, at the most expensive action (a block run; a layer at full width after a full-width
layer), each decision's input shape, time, share of the decisions' time, share of their FLOPs, and
time per GFLOP. Where the shares differ, a route's FLOPs ratio misstates its time: routes that save
time-cheap decisions run slower than static routes of the same FLOPs that save time-expensive ones.

With ``--routers`` (a ``dyncnn-gym demo --out`` folder), the demo's router for ``--env`` is
evaluated on the whole test split (``dyncnn_gym.evaluate``, dialed to ``--flops-target``, by
default the env's); the script prints its accuracy, its FLOPs ratio, how often each action is
taken at each decision, and the share of the decisions' FLOPs and of their time (from the times
above) that its routes keep: two routers of the same accuracy and FLOPs can differ in time.

    python examples/decision_times.py                                  # DynSkip-v1, batch 256, 1 thread
    python examples/decision_times.py --env DynChannel-v1 --batch 64 --threads 2
    python examples/decision_times.py --routers demo_out
    python examples/decision_times.py --routers demo_out --flops-target 0.64
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.time_costs import decision_times
from dyncnn_gym.walk import Walk

ENVS = ("DynSkip-v1", "DynChannel-v1")


def positive(text: str) -> int:
    """An argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--env", default="DynSkip-v1", choices=ENVS, help="the env id (its registered default backbone)")
    p.add_argument("--batch", type=positive, default=256, help="test images per call")
    p.add_argument("--threads", type=positive, default=1, help="torch threads")
    p.add_argument("--repeats", type=positive, default=15, help="interleaved timing repeats (the median is reported)")
    p.add_argument("--routers", help="a `dyncnn-gym demo --out` folder: also the demo's router for --env")
    p.add_argument(
        "--flops-target",
        type=float,
        default=None,
        help="with --routers: dial the router to this FLOPs ratio (default: the env's flops_target)",
    )
    args = p.parse_args()
    if args.flops_target is not None and not args.routers:
        p.error("--flops-target dials a router: give --routers too")
    torch.set_num_threads(args.threads)

    from dyncnn_gym.envs.routing import make_core

    core = make_core(args.env, 1, split="test")
    net, mode = core.net, core.mode
    x = core.images[: args.batch]
    T, top = core.T, core.A - 1
    table = net.cost_table(mode)
    times = decision_times(net, mode, x, repeats=args.repeats)
    ms = times[np.arange(T), top, top]
    flops = table.steps[np.arange(T), top, top].astype(np.float64)
    print(f"{args.env} ({net.arch}), batch {len(x)}, {args.threads} thread(s), {args.repeats} repeats")
    print("| decision | input [C, H, W] | ms per batch | share of time | share of FLOPs | ms per GFLOP |")
    print("|---:|---|---:|---:|---:|---:|")
    with torch.no_grad():  # the feature map entering each decision, on the full route
        walk, shapes = Walk(net, mode, x[:1]), []
        for _ in range(T):
            shapes.append(list(walk.h.shape[1:]))
            walk.advance(top)
    for t in range(T):
        shape = shapes[t]
        per_gflop = ms[t] / (flops[t] * len(x) / 1e9)
        print(f"| {t} | {shape} | {ms[t]:.2f} | {ms[t] / ms.sum():.3f} | {flops[t] / flops.sum():.3f} | {per_gflop:.2f} |")
    if args.routers:
        import dyncnn_gym
        from dyncnn_gym.benchmark.routed_table import load_router

        model, path = load_router(args.routers, args.env)
        dial = {} if args.flops_target is None else {"flops_target": args.flops_target}
        res = dyncnn_gym.evaluate(model, args.env, per_image=True, **dial)  # dialed to the target
        acts = res["images"]["actions"]
        prev = np.full(len(acts), top)
        kept_ms, kept_flops = np.zeros(len(acts)), np.zeros(len(acts))
        for t in range(T):
            kept_ms += times[t, prev, acts[:, t]]
            kept_flops += table.steps[t, prev, acts[:, t]]
            prev = acts[:, t]
        rates = [np.bincount(acts[:, t], minlength=core.A) / len(acts) for t in range(T)]
        print(f"\n{path}, {len(acts)} test images: accuracy {res['accuracy']:.4f}, FLOPs ratio {res['flops_ratio']:.3f}")
        what = "how often each block runs" if core.A == 2 else "mean action (0 narrowest) at each decision"
        how = [f"{r[1]:.2f}" for r in rates] if core.A == 2 else [f"{float(r @ np.arange(core.A)):.2f}" for r in rates]
        print(f"{what}: {', '.join(how)}")
        print(
            f"the decisions' FLOPs its routes keep: {kept_flops.mean() / flops.sum():.3f}; their time, from the"
            f" times above: {kept_ms.mean() / ms.sum():.3f}"
        )


if __name__ == "__main__":
    main()
