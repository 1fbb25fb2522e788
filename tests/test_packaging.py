"""What an install contains: every package folder, the reference agents as ``dyncnn_gym.agents``,
``py.typed``; and no module of the package reaches into the folders above it.

(CI also installs the package non-editable and runs ``dyncnn-gym demo --help`` and a tiny bench
with a reference agent from outside the checkout; see ``.ci/run``.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, mode_of

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PACKAGE_SOURCES = [REPO_ROOT / "dyncnn_gym", REPO_ROOT / "agents"]


def _setuptools_config() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_the_agents_folder_installs_as_dyncnn_gym_agents():
    cfg = _setuptools_config()
    found = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "dyncnn_gym").rglob("__init__.py")} | {
        "dyncnn_gym.agents"
    }
    assert set(cfg["packages"]) == found
    assert cfg["package-dir"] == {"dyncnn_gym.agents": "agents"}
    assert (REPO_ROOT / "agents" / "__init__.py").is_file()


def test_py_typed_ships_as_package_data():
    assert (REPO_ROOT / "dyncnn_gym" / "py.typed").is_file()
    assert "py.typed" in _setuptools_config()["package-data"]["dyncnn_gym"]


def test_the_installed_agents_are_the_agents_folder():
    import dyncnn_gym.agents
    from dyncnn_gym.agents import blockdrop_pg, rnp_dqn, skipnet_hrl

    assert all(callable(m.bench_agent) for m in (rnp_dqn, skipnet_hrl, blockdrop_pg))
    assert [Path(p).name for p in dyncnn_gym.agents.__path__] == ["agents"]


@pytest.mark.parametrize("source", PACKAGE_SOURCES, ids=lambda p: p.name)
def test_no_module_resolves_paths_above_its_own_package(source):
    """``Path(__file__).parent / "checkpoints"`` is fine; ``parents[2]`` or ``..`` would read the
    source tree, which an installed package does not have."""
    above = re.compile(r"parents\[|\.parent\.parent|os\.pardir|['\"]\.\./")
    offending = [
        f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for path in source.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if above.search(line)
    ]
    assert not offending, "\n".join(offending)


def test_agent_scripts_run_from_a_checkout(tmp_path):
    """``python agents/rnp_dqn.py --help`` from the repository root, and by path from elsewhere."""
    for cwd, script in ((REPO_ROOT, "agents/rnp_dqn.py"), (tmp_path, str(REPO_ROOT / "agents" / "blockdrop_pg.py"))):
        out = subprocess.run([sys.executable, script, "--help"], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "--iterations" in out.stdout


def test_the_shipped_checkpoints_are_exactly_what_the_defaults_and_the_suites_load():
    """A checkpoint ships when a registered default (on the embedded shapes or on digits) or a
    benchmark suite's task loads it, or when it is one of the few named extras (on shapes); the GPU
    suite's CIFAR-10 backbones are trained on first use."""
    from dyncnn_gym.benchmark.suites import SUITES
    from dyncnn_gym.envs.core import _shared_data
    from dyncnn_gym.pretraining import DEFAULT_ARCH, SHIPPED_DIR, SHIPPED_EXTRA, default_checkpoint_name

    needed = {
        default_checkpoint_name(arch, 4, _shared_data(dataset))
        for dataset in ("shapes", "digits")
        for arch in DEFAULT_ARCH.values()
    } | {default_checkpoint_name(arch, 4, _shared_data("shapes")) for arch in SHIPPED_EXTRA}
    for suite in SUITES.values():
        for task in suite.tasks:
            if task.env_kwargs.get("dataset") in ("shapes", "digits"):
                arch = task.env_kwargs.get("backbone") or DEFAULT_ARCH[mode_of(task.env_id)]
                needed.add(
                    default_checkpoint_name(arch, task.env_kwargs.get("groups", 4), _shared_data(task.env_kwargs["dataset"]))
                )
    assert {p.name for p in SHIPPED_DIR.glob("*.pt")} == needed
