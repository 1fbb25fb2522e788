"""Export any trained router as one torch model, and load it back: :func:`export` and :func:`load`
(``dyncnn_gym.export`` and ``dyncnn_gym.load_routed``).

* Per-decision envs (``DynChannel``, ``DynSkip``, ``DynRoute-v0``): a
  :class:`~dyncnn_gym.routed.RoutedNet` (:func:`dyncnn_gym.routed.export`).
* ``DynBlockDrop``: a :class:`~dyncnn_gym.routed.RoutedNet` over its ``DynSkip`` core whose one-shot
  head plans every block from the first observation
  (:func:`~dyncnn_gym.envs.blockdrop.as_skip_env`).
* ``DynExit-v0``: an :class:`~dyncnn_gym.exit_routed.ExitRoutedNet`
  (:func:`dyncnn_gym.exit_routed.export_exits`), in which an exited image stops computing.

Both turn the policy into torch modules with :func:`dyncnn_gym.policies.as_policy` and save files
that load with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .envs.exit_core import ExitCore
from .envs.routing import make_core, mode_of
from .exit_routed import ExitRoutedNet, export_exits, from_blob, is_exit_file
from .routed import RoutedNet, read_file
from .routed import export as export_routed
from .routed import from_blob as routed_from_blob


def _exit_core_of(core: Any) -> ExitCore | None:
    for obj in (core, getattr(core, "unwrapped", None)):
        if isinstance(obj, ExitCore):
            return obj
        c = getattr(obj, "core", None)
        if isinstance(c, ExitCore):
            return c
    return None


def export(
    policy: Any, env_id: str | None = None, *, core: Any = None, dial: bool | None = None, **env_kwargs: Any
) -> RoutedNet | ExitRoutedNet:
    """One model that routes like ``policy`` does in the env ``env_id(**env_kwargs)`` (or in ``core=``,
    an env or its core): an :class:`~dyncnn_gym.exit_routed.ExitRoutedNet` for the early-exit envs, else a
    :class:`~dyncnn_gym.routed.RoutedNet` (see :func:`dyncnn_gym.routed.export` for the arguments;
    ``dial`` applies to envs with a ``flops_target``, the ``-v1`` ids, and dials as
    :func:`~dyncnn_gym.evaluate` does)."""
    from .envs.blockdrop import as_skip_env

    one_step_id = None
    if env_id is not None:
        skip_id, env_kwargs = as_skip_env(env_id, env_kwargs)
        one_step_id, env_id = (env_id, skip_id) if skip_id != env_id else (None, env_id)
    exit_core = None
    if core is not None:
        exit_core = _exit_core_of(core)
        if exit_core is not None:
            if env_kwargs:
                raise ValueError(f"pass either core= or env arguments, not both (got {sorted(env_kwargs)})")
            if env_id is not None and mode_of(env_id) != "exit":
                raise ValueError(f"env_id={env_id!r} has {mode_of(env_id)!r} decisions, but core= is an early-exit core")
    elif env_id is not None and mode_of(env_id) == "exit":
        env_kwargs.pop("render_mode", None)
        exit_core = make_core(env_id, 1, **env_kwargs)
    if exit_core is None:
        routed = export_routed(policy, env_id, core=core, dial=dial, **env_kwargs)
        if one_step_id is not None:
            routed.env_id = one_step_id
        return routed
    from .benchmark.calibrate import dial_to_target

    policy, _ = dial_to_target(policy, exit_core, dial)
    return export_exits(policy, exit_core, env_id or ("DynExit-v1" if exit_core.target is not None else "DynExit-v0"))


def load(path: str | Path, device: str | torch.device = "cpu", *, safe_globals: Any = ()) -> RoutedNet | ExitRoutedNet:
    """Rebuild a model saved by :meth:`RoutedNet.save <dyncnn_gym.routed.RoutedNet.save>` or
    :meth:`ExitRoutedNet.save <dyncnn_gym.exit_routed.ExitRoutedNet.save>` on ``device``, without SB3
    or the data set. Read with ``weights_only=True``: see :func:`dyncnn_gym.routed.load` for
    ``safe_globals`` and the errors."""
    blob, dev = read_file(path, device, safe_globals)
    if is_exit_file(blob):
        return from_blob(blob, path, dev)
    return routed_from_blob(blob, path, dev)


__all__ = ["export", "load"]
