"""Saved policies of a bench run: the files ``dyncnn-gym validate`` reads back, safely.

This module only writes and reads policies; routing with one goes through the package's single
policy adapter, :func:`dyncnn_gym.policies.as_policy` (what :func:`~dyncnn_gym.evaluate` calls).

A trained policy is kept in one of two forms:

* ``"sb3"``: an SB3 / sb3-contrib model, saved with ``model.save`` as a ``.zip`` and read back with
  :func:`dyncnn_gym.sb3_files.load_sb3_model`, which runs nothing the file holds;
* ``"agent"``: the agent's own file format: the module that defines the agent function also
  defines ``save_policy(policy, path)`` and ``load_policy(path)`` (the reference agents of
  :mod:`dyncnn_gym.agents` do, with weights-only torch files).

Any other policy (a plain callable, say) is not saved, and ``validate`` reports its figures as not
checkable. Saving goes through bytes (:func:`policy_bytes`) so that a job on another machine (a Ray
worker) hands its policy back to the process that writes the results, which writes it atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..fileio import write_bytes
from ..policies import _is_sb3_like

#: file suffix per policy form
SUFFIX = {"sb3": ".zip", "agent": ".pt"}


def is_sb3_model(policy: Any) -> bool:
    """Whether ``policy`` is an SB3 / sb3-contrib algorithm (not only its ``.policy``), which ``save`` writes as a zip."""
    return _is_sb3_like(policy) and hasattr(policy, "learn") and hasattr(policy, "save")


def policy_bytes(fn: Any, policy: Any) -> dict[str, Any] | None:
    """``{"format", "bytes"}`` of ``policy`` (returned by the agent function ``fn``), or ``None`` when it
    has no saved form (see the module docstring)."""
    import io

    if is_sb3_model(policy):
        buf = io.BytesIO()
        policy.save(buf)
        return {"format": "sb3", "bytes": buf.getvalue()}
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    save, load = getattr(module, "save_policy", None), getattr(module, "load_policy", None)
    if callable(save) and callable(load):
        with tempfile.TemporaryDirectory(prefix="dyncnn_gym-policy-") as tmp:
            path = Path(tmp) / "policy.pt"
            save(policy, path)
            return {"format": "agent", "bytes": path.read_bytes()}
    return None


def write_policy(out_dir: Path, relative: str, blob: dict[str, Any]) -> dict[str, Any]:
    """Write ``blob`` (from :func:`policy_bytes`) under ``out_dir`` at ``relative`` + its suffix;
    returns the record a result keeps: ``file`` (relative to ``out_dir``), ``format`` and ``sha256``."""
    rel = relative + SUFFIX[blob["format"]]
    write_bytes(out_dir / rel, blob["bytes"])
    return {"file": rel, "format": blob["format"], "sha256": hashlib.sha256(blob["bytes"]).hexdigest()}


def load_policy(out_dir: Path, record: dict[str, Any], agent_fn: Any = None) -> Any:
    """Load a saved policy described by ``record`` (see :func:`write_policy`), checking its sha256.

    ``"agent"`` files are read by ``load_policy`` of the module that defines ``agent_fn``; the
    caller decides which agent modules it trusts (``validate`` trusts the registered reference
    agents and those named on its command line).

    Raises:
        ValueError: the file's hash differs from the record's, or its form is unknown or unreadable.
    """
    from ..fileio import CorruptFileError

    path = Path(out_dir) / record["file"]
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.get("sha256"):
        raise CorruptFileError(f"policy file {str(path)!r} has sha256 {digest}, but the results record {record.get('sha256')}")
    if record.get("format") == "sb3":
        from ..sb3_files import load_sb3_model

        return load_sb3_model(path)
    if record.get("format") == "agent":
        if agent_fn is None:
            raise ValueError(f"policy file {str(path)!r} is in an agent's own format; name the agent to read it with")
        module = (
            importlib.import_module(agent_fn.__module__)
            if agent_fn.__module__ not in sys.modules
            else sys.modules[agent_fn.__module__]
        )
        load = getattr(module, "load_policy", None)
        if not callable(load):
            raise ValueError(f"agent module {agent_fn.__module__!r} has no load_policy(path) to read {str(path)!r}")
        return load(path)
    raise ValueError(f"policy file {str(path)!r} has format {record.get('format')!r}; expected one of {sorted(SUFFIX)}")
