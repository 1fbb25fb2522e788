"""Run independent benchmark jobs one after the other or as Ray tasks, with the same results.

``bench`` and ``sweep`` cut their work into jobs (one agent trained and evaluated at one operating
point of one task with one seed) and hand them to :func:`run_jobs`:

* serially (default): in this process, in order;
* with Ray (``ray_address`` given): each job is a Ray task (``num_cpus=1``), on a local Ray started
  here (``"local"``; ``workers`` CPUs, default all) or on a running cluster (``"auto"``,
  ``"ray://host:10001"``, ``"host:6379"``). Results come back in job order.

A job is deterministic given its seed (:func:`job_context`): one intra-op torch thread, and
Python's, NumPy's and torch's global generators seeded from the job's seed, whichever process runs
it and whatever ran there before. So a Ray run equals the serial run of the same jobs exactly
(tested in the RLlib virtual environment, where Ray is installed).

Ray is optional (the ``rllib`` extra installs it): without it, asking for Ray raises an
``ImportError`` that says how to install it.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

#: environment variables every Ray worker gets (one thread per job; the package's cache where set)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def job_context(seed: int, threads: int = 1) -> Iterator[None]:
    """Run a job deterministically: ``threads`` intra-op torch threads (restored afterwards) and the
    global generators of ``random``, NumPy and torch seeded with ``seed``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ray_module():
    """The ``ray`` module, or an ``ImportError`` saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "--ray needs Ray, which is not installed here: pip install 'dyncnn_gym[rllib]' (or pip install ray)"
            " in a virtual environment of its own (ray[rllib] pins its own gymnasium)"
        ) from err
    return ray


def add_executor_arguments(p: Any, unit: str) -> None:
    """Add ``--ray [ADDRESS]`` and ``--workers N`` to the argparse parser ``p``; ``unit`` names what
    one Ray task runs (e.g. "(agent, task, operating point, seed) job")."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"run each {unit} as a Ray task: on a local Ray without ADDRESS, on the cluster at ADDRESS with one"
        " (e.g. auto, ray://head:10001); results equal the serial run's (default: serial)",
    )
    p.add_argument("--workers", type=int, default=None, help="CPUs of a local Ray (--ray without ADDRESS; default: all)")


def check_executor(ray_address: str | None, workers: int | None) -> None:
    """Refuse a bad ``workers`` or ``workers`` without a local Ray, and ask for Ray where it is
    missing: before any job runs.

    Raises:
        ValueError: ``workers`` is not a positive integer, or is given without ``ray_address="local"``
            (it sets a local Ray's CPUs; a cluster brings its own).
        ImportError: ``ray_address`` is given and Ray is not installed.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} must be a positive number of CPUs (or None for all)")
        if ray_address != "local":
            raise ValueError(
                f"workers={workers} sets the CPUs of a local Ray (--ray without an address); with ray={ray_address!r}"
                " it would not be used"
            )
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address.strip():
            raise ValueError(
                f"ray={ray_address!r} must be 'local' or a Ray cluster address such as 'auto' or 'ray://host:10001'"
            )
        ray_module()


def describe_executor(ray_address: str | None, workers: int | None) -> dict[str, Any]:
    """What ran the jobs: ``{"kind": "serial"}`` or ``{"kind": "ray", "address": ..., "workers": ...}``."""
    if ray_address is None:
        return {"kind": "serial", "workers": 1}
    return {"kind": "ray", "address": ray_address, "workers": workers}


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    log: Callable[[str], Any] = print,
    describe: Callable[[Any], str] = str,
) -> list[Any]:
    """``[fn(job) for job in jobs]``, serially or as Ray tasks (see the module docstring).

    Args:
        fn: a module-level function (Ray workers import it by name).
        jobs: picklable job descriptions.
        ray_address: ``None`` (serial), ``"local"`` (start a local Ray here) or a cluster address.
        workers: CPUs of a local Ray (default: all of this machine's); ignored for a cluster.
        log: progress lines (one per finished job).
        describe: a job's name in the progress lines.
    """
    check_executor(ray_address, workers)
    start = time.perf_counter()
    n = len(jobs)
    if ray_address is None:
        out = []
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            out.append(fn(job))
            log(
                f"[jobs] {i + 1}/{n} done: {describe(job)} ({time.perf_counter() - t0:.0f} s; {time.perf_counter() - start:.0f} s in all)"
            )
        return out
    ray = ray_module()
    started = False
    if not ray.is_initialized():
        env = dict(WORKER_ENV)
        if os.environ.get("DYNCNN_GYM_CACHE"):
            env["DYNCNN_GYM_CACHE"] = os.environ["DYNCNN_GYM_CACHE"]
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "logging_level": "warning"}
        if ray_address == "local":
            kwargs["num_cpus"] = workers or os.cpu_count() or 1
        else:
            kwargs["address"] = ray_address
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = [remote.remote(job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += 1
            log(f"[jobs] {done}/{n} done: {describe(jobs[index[ready[0]]])} ({time.perf_counter() - start:.0f} s in all)")
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()
