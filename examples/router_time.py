"""Where a routed model's time goes at batch N: the routes alone, the pooled features, the host's
decision and the torch head's rows, per batch routed.

Exports a trained PPO router of ``DynChannel-v1`` or ``DynSkip-v1`` as ``dyncnn-gym perf`` does,
routes the first ``--batch`` test images with it, and prints in milliseconds per batch (medians
of interleaved repeats) the routed model, the same routes without the router (the raw dynamic
pass) and the router's overhead; then, from as many instrumented runs, the time inside the routed
model spent in the walk's pooled features (``Walk.pooled``), in the host's batch decision
(``HostRouter.choose_batch``: one compiled call with numba, else NumPy), and in the torch head for
the rows the host leaves to it (near-ties), with the number of such rows. With
``DYNCNN_GYM_NATIVE=0`` the host decides in NumPy instead of the compiled kernel.

    python examples/router_time.py --routers demo_out          # a `dyncnn-gym demo --out` folder
    python examples/router_time.py --routers demo_out --env DynSkip-v1 --batch 64 --threads 2
    DYNCNN_GYM_NATIVE=0 python examples/router_time.py --routers demo_out
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager
from unittest import mock

import torch

from dyncnn_gym.benchmark.routed_table import routed_setup
from dyncnn_gym.benchmark.timing import interleaved, median, paired_ratio
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.host_head import HostRouter
from dyncnn_gym.walk import Walk


def at_least(low: int):
    """An argparse type: an int of at least ``low``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


@contextmanager
def timed(owner, name: str, spent: dict, rows: dict | None = None):
    """Add the time spent in ``owner.name`` to ``spent[name]`` (seconds) while the block runs; with
    ``rows``, also the number of rows of each call's second argument."""
    original = getattr(owner, name)

    def call(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0
            if rows is not None:
                rows[name] += int(args[1].shape[0])

    with mock.patch.object(owner, name, call):
        yield


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--routers", required=True, help="a `dyncnn-gym demo --out` folder (its models/<env>-PPO.zip)")
    p.add_argument("--env", default="DynChannel-v1", choices=["DynChannel-v1", "DynSkip-v1"], help="the env id")
    p.add_argument(
        "--batch",
        type=at_least(2),
        nargs="+",
        default=[64, 256],
        help="batch sizes (at least 2: batch 1 is decided per image)",
    )
    p.add_argument("--threads", type=at_least(1), default=1, help="torch threads")
    p.add_argument("--repeats", type=at_least(1), default=15, help="interleaved timing repeats (the median is reported)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        setup = routed_setup(args.env, torch.device("cpu"), args.routers, None, False)
    except FileNotFoundError as e:
        p.error(str(e))
    rn = setup.model
    print(
        f"{args.env}: test accuracy {setup.info['accuracy']:.4f} at {setup.info['test_flops_ratio']:.3f} of the FLOPs, {args.threads} thread(s)"
    )
    for B in args.batch:
        if B > setup.images.shape[0]:
            p.error(f"--batch {B} exceeds the {setup.images.shape[0]} test images")
        x = setup.images[:B]
        with torch.no_grad():
            acts = rn.route(x).actions
            fns = {"routed": lambda x=x: rn.route(x), "routes": lambda x=x, acts=acts: setup.replay(x, acts)}
            times = interleaved(fns, args.repeats, torch.device("cpu"))
            spent: dict = defaultdict(float)
            rows: dict = defaultdict(int)
            with (
                timed(Walk, "pooled", spent),
                timed(HostRouter, "choose_batch", spent),
                timed(rn, "_observation", spent, rows),
                timed(rn.policy, "act", spent),
            ):
                for _ in range(args.repeats):
                    rn.route(x)
        routed, routes = median(times["routed"]), median(times["routes"])
        overhead = paired_ratio(times, "routed", "routes") - 1
        per = defaultdict(float, {k: 1e3 * v / args.repeats for k, v in spent.items()})
        print(
            f"batch {B}: routed {1e3 * routed:.2f} ms, routes alone {1e3 * routes:.2f} ms, "
            f"router overhead {100 * overhead:+.0f} %; inside the routed model, per batch: "
            f"pooled features {per['pooled']:.2f} ms, host decision {per['choose_batch']:.2f} ms, "
            f"torch head {per['_observation'] + per['act']:.2f} ms for {rows['_observation'] / args.repeats:.1f} rows"
        )


if __name__ == "__main__":
    main()
