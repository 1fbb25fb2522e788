"""Is FLOPs a fair proxy of time on this machine? Each decision's wall-clock against its FLOPs.

Runs the default backbone of ``--env`` (``DynSkip-v1``: ``resnet32-lite@skip``; ``DynChannel-v1``:
``vgg+sandwich+distill``) on the first ``--batch`` test images and times every decision alone at
its most expensive action (a block run; a layer at full width after a full-width layer): the
feature map entering it is recorded once, then each decision's call is timed, interleaved with the
others (milliseconds per batch, medians of ``--repeats``). It prints each decision's input shape,
time, share of the decisions' time, share of their FLOPs, and time per GFLOP. Where the shares
differ, a route's FLOPs ratio misstates its time: routes that save time-cheap decisions run slower
than static routes of the same FLOPs that save time-expensive ones.

With ``--routers`` (a ``dyncnn-gym demo --out`` folder) on ``DynSkip-v1``, the demo's router is
exported and routes the same images, and the script also prints how often each block runs and
the decisions' share of FLOPs and of time (from the per-block times above) that its routes keep.

    python examples/decision_times.py                                  # DynSkip-v1, batch 256, 1 thread
    python examples/decision_times.py --env DynChannel-v1 --batch 64 --threads 2
    python examples/decision_times.py --routers demo_out
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dyncnn_gym.benchmark.timing import interleaved, median
from dyncnn_gym.cli import HelpFormatter
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
    p.add_argument("--routers", help="a `dyncnn-gym demo --out` folder: also the demo's DynSkip-v1 router's routes")
    args = p.parse_args()
    if args.routers and args.env != "DynSkip-v1":
        p.error(f"--routers reads skip routes: use it with --env DynSkip-v1, not --env {args.env}")
    torch.set_num_threads(args.threads)

    from dyncnn_gym.envs.routing import make_core

    core = make_core(args.env, 1, split="test")
    net, mode = core.net, core.mode
    x = core.images[: args.batch]
    T, top = core.T, core.A - 1
    table = net.cost_table(mode)
    with torch.no_grad():
        walk, entering = Walk(net, mode, x), []
        for _ in range(T):
            entering.append(walk.h.clone())
            walk.advance(top)
        fns = {t: (lambda t=t: net.decision(mode, t, entering[t], top, top)) for t in range(T)}
        times = interleaved(fns, args.repeats, x.device)
    ms = np.array([1000 * median(times[t]) for t in range(T)])
    flops = np.array([float(table.steps[t][top, top]) for t in range(T)])
    print(f"{args.env} ({net.arch}), batch {len(x)}, {args.threads} thread(s), {args.repeats} repeats")
    print("| decision | input [C, H, W] | ms per batch | share of time | share of FLOPs | ms per GFLOP |")
    print("|---:|---|---:|---:|---:|---:|")
    for t in range(T):
        shape = list(entering[t].shape[1:])
        per_gflop = ms[t] / (flops[t] * len(x) / 1e9)
        print(f"| {t} | {shape} | {ms[t]:.2f} | {ms[t] / ms.sum():.3f} | {flops[t] / flops.sum():.3f} | {per_gflop:.2f} |")
    if args.routers:
        import dyncnn_gym
        from dyncnn_gym.benchmark.routed_table import _load_router

        model, path = _load_router(args.routers, args.env)
        routed = dyncnn_gym.export(model, args.env)  # dialed to the env's FLOPs target, as evaluate does
        with torch.no_grad():
            runs = routed.route(x).actions.double().mean(0).numpy()
        print(f"\n{path}: how often each block runs, {', '.join(f'{r:.2f}' for r in runs)}")
        print(
            f"the decisions' FLOPs its routes keep: {runs @ flops / flops.sum():.3f}; their time, from the"
            f" per-block times above: {runs @ ms / ms.sum():.3f}"
        )


if __name__ == "__main__":
    main()
