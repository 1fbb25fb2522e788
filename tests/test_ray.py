"""``--ray``: bench, sweep and validate jobs as Ray tasks on a local Ray give the serial run's results.

Skipped where Ray is not installed (the ``rllib`` extra installs it; CI runs this file in that
second virtual environment), unless ``DYNCNN_GYM_REQUIRE_RLLIB=1``, which turns a missing Ray into a
failure. Every job is tiny (digits, 64 training steps), and one local Ray serves the module."""

from __future__ import annotations

import os
import zipfile

import pytest

if os.environ.get("DYNCNN_GYM_REQUIRE_RLLIB") == "1":
    import ray  # noqa: F401  (a hard failure where the rllib extra is required)
else:
    pytest.importorskip("ray")

from dyncnn_gym.benchmark.bench import run_bench  # noqa: E402
from dyncnn_gym.benchmark.suites import SUITES, Suite, Task, get_suite  # noqa: E402
from dyncnn_gym.benchmark.sweep import run_sweep  # noqa: E402
from dyncnn_gym.benchmark.validate import validate  # noqa: E402

SUITE = "ray-test-v0"
#: what depends on the machine or the moment, not on the jobs: timings, host, provenance, and the hashes of
#: the policy files (an SB3 zip records wall-clock times; the networks in them are compared by :func:`weights`)
VOLATILE = {"seconds", "train_seconds", "eval_seconds", "host", "provenance", "wall_seconds", "started", "executor", "sha256"}


def weights(path):
    """A saved policy's networks: an SB3 zip's torch members (its ``data`` records wall-clock times), or
    a reference agent's whole file."""
    if path.suffix != ".zip":
        return path.read_bytes()
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist() if n.endswith(".pth")}


def stable(x):
    """``x`` without what :data:`VOLATILE` names, recursively."""
    if isinstance(x, dict):
        return {k: stable(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [stable(v) for v in x]
    return x


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (the runner uses a Ray already started rather than starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def registered():
    task = get_suite("tiny-v1").tasks[0]
    one = Task(task.name, task.env_id, task.env_kwargs, 64, flops_targets=(0.5,), flops_range=(0.3, 0.8))
    SUITES[SUITE] = Suite(SUITE, 0, (one,), {one.name: None}, seeds=(0, 1))
    yield
    del SUITES[SUITE]


def test_bench_on_a_local_ray_equals_the_serial_run_and_validates(tmp_path):
    agents = ["ppo", "rnp", "static", "random"]
    serial = run_bench(SUITE, agents, tmp_path / "serial", progress=False, reps=100, command="test")
    on_ray = run_bench(SUITE, agents, tmp_path / "ray", progress=False, reps=100, command="test", ray="local", workers=2)
    assert on_ray["provenance"]["executor"] == {"kind": "ray", "address": "local", "workers": 2}
    assert stable(on_ray) == stable(serial)
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial" / "policies").rglob("*.*"))
    assert {f.suffix for f in files} == {".zip", ".pt"}  # PPO's SB3 zips and RNP's own files
    for f in files:  # the same networks, to the bit
        assert weights(tmp_path / "serial" / f) == weights(tmp_path / "ray" / f), f
    report = validate(tmp_path / "ray", progress=False, ray="local", workers=2)
    assert report.failures == 0, report.lines


def test_sweep_on_a_local_ray_equals_the_serial_run(tmp_path):
    kw = dict(
        envs=("DynChannel-v0",),
        dataset="digits",
        backbone="vgg",
        weights={"DynChannel-v0": (0.05,)},
        timesteps=64,
        cotrain=False,
        seed=(0, 1),
        progress=False,
    )
    serial = run_sweep(tmp_path / "serial", **kw)
    on_ray = run_sweep(tmp_path / "ray", ray="local", workers=2, **kw)
    assert stable(on_ray["envs"]) == stable(serial["envs"])
