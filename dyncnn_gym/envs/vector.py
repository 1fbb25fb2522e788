"""Native Gymnasium vector envs: N images step through the backbone as one batch.

Registered as the ``vector_entry_point`` of every id, so ``gymnasium.make_vec("DynChannel-v0",
num_envs=256)`` builds one of these (not a Sync/Async wrapper of single envs). Seeds, observations,
rewards and infos match ``num_envs`` single envs seeded ``seed, seed + 1, ...`` given the same actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .core import RoutingCore
from .routing import DynChannelEnv, DynRouteEnv, DynSkipEnv


def vector_autoreset_mode(autoreset_mode: AutoresetMode | str, render_mode: str | None) -> AutoresetMode:
    """The :class:`AutoresetMode` of a native vector env (``NEXT_STEP`` or ``SAME_STEP``, given as
    the enum or its value); ``ValueError`` for any other, or for a ``render_mode`` (they do not render)."""
    if render_mode is not None:
        raise ValueError(f"render_mode={render_mode!r}: the vector envs do not render; use the single env")
    modes = {m.value: m for m in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)}
    key = autoreset_mode.value if isinstance(autoreset_mode, AutoresetMode) else autoreset_mode
    if key not in modes:
        raise ValueError(f"autoreset_mode={autoreset_mode!r} is not supported; choose one of {list(modes)}")
    return modes[key]


def check_max_episode_steps(max_episode_steps: Any, T: int, fixed_length: bool = True) -> None:
    """``make_vec`` passes ``max_episode_steps``; every episode has exactly ``T`` steps (at most
    ``T`` where ``fixed_length`` is false), so only ``None`` or an int ``>= T`` (which changes
    nothing) is accepted."""
    if max_episode_steps is not None and (not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < T):
        raise ValueError(
            f"max_episode_steps={max_episode_steps!r}: every episode has {'exactly' if fixed_length else 'at most'}"
            f" {T} step{'s' if T > 1 else ''} and never truncates; pass None or a value >= {T}"
        )


def slot_seeds(seed: int | list | tuple | None, n: int) -> list[int | None] | None:
    """Per-slot seeds from a vector ``reset(seed=...)``: an int gives ``seed + i``; a list is taken as is."""
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, (list, tuple)) and len(seed) == n:
        return [None if s is None else int(s) for s in seed]
    raise ValueError(f"seed={seed!r} must be None, an int, or a list of {n} ints (one per env)")


def _new_array(value: Any, n: int) -> np.ndarray:
    """The batch array ``VectorEnv._add_info`` would create for the first ``value`` of a key."""
    if type(value) in (int, float, bool) or isinstance(value, np.number):
        return np.zeros(n, dtype=type(value))
    if isinstance(value, np.ndarray):
        return np.zeros((n, *value.shape), dtype=value.dtype)
    return np.full(n, fill_value=None, dtype=object)


def batch_infos(out: dict[str, Any], infos: Sequence[dict], slots: np.ndarray, n: int) -> dict[str, Any]:
    """Add per-env ``infos`` (env ``slots[i]`` has ``infos[i]``) to the dict-of-arrays ``out``.

    Gives exactly what calling ``VectorEnv._add_info(out, infos[i], slots[i])`` for each ``i`` in
    turn gives (arrays typed by the first value of each key, ``_key`` masks, nested dicts batched
    recursively, ``final_obs`` as an object array), but one NumPy assignment per key instead of one
    Python call per env and key.
    """
    if not len(infos):
        return out
    slots = np.asarray(slots, dtype=np.int64)
    keys0 = infos[0].keys()
    if all(d.keys() == keys0 for d in infos):  # the usual case: one kind of info
        signature: dict[tuple, list[int]] = {tuple(keys0): list(range(len(infos)))}
    else:
        signature = {}
        for r, d in enumerate(infos):
            signature.setdefault(tuple(d), []).append(r)
    for keys, rows in signature.items():
        sl = slots[rows] if len(rows) != len(infos) else slots
        for key in keys:
            values = [infos[r][key] for r in rows] if len(rows) != len(infos) else [d[key] for d in infos]
            first = values[0]
            if key == "final_obs":
                array = out.get("final_obs")
                if array is None:
                    array = np.full(n, fill_value=None, dtype=object)
                for s, v in zip(sl.tolist(), values):
                    array[s] = v
            elif isinstance(first, dict):
                array = batch_infos(out.get(key, {}), values, sl, n)
            else:
                array = out.get(key)
                if array is None:
                    array = _new_array(first, n)
                if array.dtype == object:
                    for s, v in zip(sl.tolist(), values):
                        array[s] = v
                elif isinstance(first, np.ndarray):
                    array[sl] = np.stack(values)
                else:
                    array[sl] = values
            mask = out.get(f"_{key}")
            if mask is None:
                mask = np.zeros(n, dtype=np.bool_)
            mask[sl] = True
            out[key], out[f"_{key}"] = array, mask
    return out


class RoutingVectorEnv(VectorEnv):
    """Base of the native vector envs. Arguments are those of the single env, plus:

    Args:
        num_envs: number of images routed in lockstep.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default; Gymnasium 1.x and RLlib) or
            ``AutoresetMode.SAME_STEP`` (the reset observation is returned at once; the last one is in
            ``info["final_obs"]``, the last info in ``info["final_info"]``).
        max_episode_steps: accepted because ``make_vec`` passes it; every episode has exactly
            ``T`` steps, so only ``None`` or a value ``>= T`` is valid (it changes nothing).

    Infos come in Gymnasium's dict-of-arrays form (``info["correct"]`` with mask ``info["_correct"]``).
    ``reset(options={"reset_mask": mask})`` resets only the envs where ``mask`` is true.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    mode = ""

    def __init__(
        self,
        num_envs: int = 1,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        mode = vector_autoreset_mode(autoreset_mode, render_mode)
        self.core = self.make_core(num_envs, **kwargs)
        if hasattr(self.core, "info_format"):  # the core can build the dict-of-arrays infos itself
            self.core.info_format = "arrays"
        check_max_episode_steps(max_episode_steps, self.core.T, getattr(self.core, "fixed_length", True))
        self.num_envs = int(num_envs)
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.render_mode = None
        self.single_observation_space = self.core.observation_space
        self.single_action_space = self.core.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        self._started = False

    def make_core(self, num_envs: int, **kwargs: Any) -> RoutingCore:
        """The ``num_envs``-slot core of this vector env (a :class:`RoutingCore` in its mode)."""
        return RoutingCore(self.mode, num_envs, **kwargs)

    @property
    def backbone(self):
        return self.core.net

    def reset(self, *, seed: int | list | None = None, options: dict | None = None):
        if isinstance(seed, np.integer):
            seed = int(seed)
        super().reset(seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; the only option is 'reset_mask'")
        seeds = slot_seeds(seed, self.num_envs)
        if mask is None:
            slots = np.arange(self.num_envs)
        else:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask!r}")
            if not self._started and not mask.all():
                raise ValueError("the first reset must reset every env (reset_mask all true, or no reset_mask)")
            slots = np.nonzero(mask)[0]
        if seeds is not None:
            for s in slots:
                self.core.rngs[s] = np.random.default_rng(seeds[s])
            self.core.restart()
        elif not self._started:
            for s in slots:
                self.core.rngs[s] = np.random.default_rng(self.np_random.integers(2**63))
        info: dict = {}
        if len(slots):
            obs, infos = self.core.reset_slots(slots)
            self._obs[slots] = obs
            self._needs_reset[slots] = False
            info = self._batched(infos, slots)
        self._started = True
        return self._obs.copy(), info

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        pending = self._needs_reset.copy()  # NEXT_STEP: episodes that ended last step restart now
        obs, rew, term, infos = self.core.step(actions)
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            stepped = np.flatnonzero(~pending)
            self._obs[stepped] = obs[stepped]
            info = self._of_slots(infos, stepped)
            slots = np.flatnonzero(pending)
            if len(slots):
                r_obs, r_infos = self.core.reset_slots(slots)
                self._obs[slots] = r_obs
                merge_infos(info, self._batched(r_infos, slots))
            self._needs_reset = term.copy()
        else:  # SAME_STEP: a finished episode restarts at once
            self._obs[:] = obs
            done = np.flatnonzero(term)
            info = self._of_slots(infos, np.flatnonzero(~term))
            if len(done):
                r_obs, r_infos = self.core.reset_slots(done)
                final_obs = np.full(n, fill_value=None, dtype=object)
                for s in done.tolist():
                    final_obs[s] = obs[s]
                mask = np.zeros(n, dtype=bool)
                mask[done] = True
                info["final_obs"], info["_final_obs"] = final_obs, mask
                info["final_info"], info["_final_info"] = self._of_slots(infos, done), mask.copy()
                merge_infos(info, self._batched(r_infos, done))
                self._obs[done] = r_obs
        return self._obs.copy(), rew, term, np.zeros(n, dtype=bool), info

    def action_masks(self) -> np.ndarray:
        """bool ``[num_envs, A]`` of the actions allowed now."""
        return self.core.action_masks()

    def teacher(self, policy: Any = None) -> dict[str, np.ndarray]:
        """The outcome of every action at every env's current decision, batched (``core.teacher(policy)``;
        envs waiting for their autoreset have ``active`` false). It knows the labels: for training
        or analysing agents, never as an observation."""
        return self.core.teacher(policy)

    # -- infos from the core: one dict per env, or (when the core builds them) already batched ------
    def _batched(self, infos: list[dict] | dict, slots: np.ndarray) -> dict:
        """Dict-of-arrays infos of ``reset_slots(slots)``."""
        return infos if isinstance(infos, dict) else batch_infos({}, infos, slots, self.num_envs)

    def _of_slots(self, infos: list[dict] | dict, slots: np.ndarray) -> dict:
        """Dict-of-arrays infos of ``step()`` restricted to ``slots``."""
        if isinstance(infos, dict):
            keep = np.zeros(self.num_envs, dtype=bool)
            keep[slots] = True
            return restrict_infos(infos, keep)
        return batch_infos({}, [infos[s] for s in slots], slots, self.num_envs)


def restrict_infos(info: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """The entries of a dict-of-arrays ``info`` for the envs where ``keep`` is true (masks narrowed).

    Arrays are copied: the step's infos and its ``final_info`` (same-step autoreset) are both
    restricted from one dict, and the reset infos merged into the first must not reach the second."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue
        mask = info[f"_{key}"] & keep
        if mask.any():
            out[key] = restrict_infos(value, keep) if isinstance(value, dict) else value.copy()
            out[f"_{key}"] = mask
    return out


def merge_infos(out: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Write the entries of dict-of-arrays ``new`` into ``out`` (as ``_add_info`` would, env by env)."""
    for key, value in new.items():
        if key.startswith("_") and key[1:] in new:
            continue
        mask = new[f"_{key}"]
        if key not in out:
            out[key], out[f"_{key}"] = value, mask.copy()
            continue
        if isinstance(value, dict):
            merge_infos(out[key], value)
        else:
            out[key][mask] = value[mask]
        out[f"_{key}"] = out[f"_{key}"] | mask
    return out


class DynChannelVectorEnv(RoutingVectorEnv):
    __doc__ = "Native vector env of ``DynChannel-v0``.\n\n" + (RoutingVectorEnv.__doc__ or "") + (DynChannelEnv.__doc__ or "")
    mode = "channel"


class DynSkipVectorEnv(RoutingVectorEnv):
    __doc__ = "Native vector env of ``DynSkip-v0``.\n\n" + (RoutingVectorEnv.__doc__ or "") + (DynSkipEnv.__doc__ or "")
    mode = "skip"


class DynRouteVectorEnv(RoutingVectorEnv):
    __doc__ = "Native vector env of ``DynRoute-v0``.\n\n" + (RoutingVectorEnv.__doc__ or "") + (DynRouteEnv.__doc__ or "")
    mode = "route"
