"""What a benchmark result was produced with: versions, hardware, threads, the command and the time.

Every agent entry of a bench run carries :func:`run_record` (``bench --merge`` keeps each entry's
own), and every job its :func:`host` (a Ray cluster may run jobs on several kinds of machine).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from functools import lru_cache
from typing import Any

#: distributions whose versions a result records (``None`` where one is not installed)
PACKAGES = (
    "dyncnn_gym",
    "torch",
    "stable_baselines3",
    "sb3_contrib",
    "gymnasium",
    "numpy",
    "scipy",
    "rliable",
    "ray",
)


def versions() -> dict[str, str | None]:
    """Python's and every package of :data:`PACKAGES`'s version."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def host() -> dict[str, Any]:
    """This machine: CPU model, logical cores, OS and architecture."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()}


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``dyncnn-gym ...`` for the CLI (``argv`` without the program), else this
    process's ``sys.argv``."""
    if argv is not None:
        return shlex.join(["dyncnn-gym", *argv])
    return shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])


def run_record(command: str, executor: dict[str, Any], threads: int, started: float) -> dict[str, Any]:
    """The record of one run: versions, host, ``threads`` per job, the executor, the command, the start time."""
    return {
        "versions": versions(),
        "host": host(),
        "threads_per_job": int(threads),
        "executor": executor,
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
