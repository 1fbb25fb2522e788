"""Stable-Baselines3 face of the routing core: a native ``VecEnv``.

``make_vec_env("DynSkip-v0", n_envs=256, dataset="digits")`` routes all ``n_envs`` images as one
batch per step (no ``DummyVecEnv`` of single envs). It follows SB3's conventions: same-step
autoreset with ``infos[i]["terminal_observation"]``, ``infos[i]["episode"]`` statistics (``r``,
``l``, ``t``) as ``Monitor`` writes them, ``env_method("action_masks")`` for MaskablePPO, and
``get_attr`` / ``set_attr`` / ``env_is_wrapped`` / ``seed``.

The SB3 callbacks of the package are importable from here too: :class:`BackboneFinetuneCallback`
(fine-tunes the backbone under the policy's routes) and :class:`FlopsTargetCallback` (steers the
compute weight to a target FLOPs ratio).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from .callbacks import BackboneFinetuneCallback, FlopsTargetCallback
from .envs.routing import make_core, mode_of

__all__ = ["BackboneFinetuneCallback", "FlopsTargetCallback", "OneShotVecEnv", "RoutingVecEnv", "make_vec_env"]


class RoutingVecEnv(VecEnv):
    """Native SB3 ``VecEnv`` over a :class:`~dyncnn_gym.envs.core.RoutingCore` (or, for ``DynExit-v0``,
    an :class:`~dyncnn_gym.envs.exit_core.ExitCore`) with ``n_envs`` slots.

    Args:
        env_id: ``"DynChannel-v0"``, ``"DynSkip-v0"`` or ``"DynExit-v0"`` (optionally ``"dyncnn_gym:"``-prefixed).
            Episodes of ``DynExit-v0`` end at different steps: finished slots restart at once
            (SB3's same-step autoreset) while the others go on.
        n_envs: images routed in lockstep.
        seed: optional base seed (slot ``i`` gets ``seed + i``), as ``VecEnv.seed`` would set.
        env_kwargs: the single env's arguments (``dataset``, ``backbone``, ``reward``, ...).
    """

    def __init__(self, env_id: str, n_envs: int = 8, seed: int | None = None, **env_kwargs: Any) -> None:
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)
        observation_space, action_space = self._make_core(env_id, n_envs)
        self.render_mode = None
        VecEnv.__init__(self, n_envs, observation_space, action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(n_envs)
        self._lengths = np.zeros(n_envs, dtype=np.int64)
        self._t0 = time.time()
        if seed is not None:
            self.seed(seed)

    def _make_core(self, env_id: str, n_envs: int) -> tuple[gym.Space, gym.Space]:
        """Build ``self.core`` for ``n_envs`` slots; returns the observation and action spaces."""
        mode_of(env_id, "has no native SB3 VecEnv")  # an unknown id raises here, naming the envs
        self.core = make_core(env_id, n_envs, **self.env_kwargs)
        return self.core.observation_space, self.core.action_space

    def _run(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """One step of every slot: observations, rewards, terminations and infos."""
        return self.core.step(actions)

    def _reset_slots(self, slots: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Start new episodes in ``slots``: their first observations and infos."""
        return self.core.reset_slots(slots)

    @property
    def backbone(self):
        return self.core.net

    def reset(self) -> np.ndarray:
        for i, s in enumerate(self._seeds):
            if s is not None:
                self.core.rngs[i] = np.random.default_rng(s)
                self.core.restart()
        self._reset_seeds()
        obs, infos = self._reset_slots(np.arange(self.num_envs))
        self.reset_infos = infos
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, rew, term, infos = self._run(self._actions)
        self._actions = None
        self._returns += rew
        self._lengths += 1
        done = np.nonzero(term)[0]
        if len(done):
            now = round(time.time() - self._t0, 6)
            for s in done:
                infos[s]["terminal_observation"] = obs[s].copy()
                infos[s]["TimeLimit.truncated"] = False
                infos[s]["episode"] = {"r": float(self._returns[s]), "l": int(self._lengths[s]), "t": now}
            r_obs, r_infos = self._reset_slots(done)
            obs[done] = r_obs
            for r, s in enumerate(done):
                self.reset_infos[s] = r_infos[r]
            self._returns[done] = 0.0
            self._lengths[done] = 0
        return obs, rew.astype(np.float32), term.copy(), infos

    def close(self) -> None:
        pass

    # -- the rest of the VecEnv API --------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """bool ``[n_envs, A]`` of the actions allowed now."""
        return self.core.action_masks()

    def teacher(self, policy: Any = None) -> dict[str, np.ndarray]:
        """The outcome of every action at every env's current decision, batched (``core.teacher(policy)``);
        ``env_method("teacher")`` gives the same per env. It knows the labels: for training or
        analysing agents, never as an observation."""
        return self.core.teacher(policy)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        idx = self._get_indices(indices)
        if method_name == "action_masks":
            masks = self.core.action_masks()
            return [masks[i] for i in idx]
        if method_name == "render":
            return [None for _ in idx]
        if method_name == "set_backbone_state":  # the envs share one backbone: load it once
            self.core.load_backbone_state(*method_args, **method_kwargs)
            return [None for _ in idx]
        if method_name == "teacher":
            out = self.core.teacher(*method_args, **method_kwargs)
            return [{k: v[i] for k, v in out.items()} for i in idx]
        if method_name == "get_backbone_state":
            state = self.core.backbone_state()
            return [state for _ in idx]
        if method_name == "set_compute_weight":  # one reward for every slot
            self._check_all(idx, "env_method('set_compute_weight')")
            self.core.set_compute_weight(*method_args, **method_kwargs)
            return [None for _ in idx]
        raise AttributeError(
            f"env_method({method_name!r}) is not available on the native routing VecEnv; available:"
            " ['action_masks', 'get_backbone_state', 'render', 'set_backbone_state', 'set_compute_weight', 'teacher']"
        )

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        idx = self._get_indices(indices)
        for owner in (self, self.core):
            if hasattr(owner, attr_name):
                value = getattr(owner, attr_name)
                return [value for _ in idx]
        raise AttributeError(f"the routing VecEnv has no attribute {attr_name!r}")

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._check_all(self._get_indices(indices), f"set_attr({attr_name!r})")
        target = self.core if hasattr(self.core, attr_name) else self
        setattr(target, attr_name, value)

    def _check_all(self, indices: Any, what: str) -> None:
        idx = list(indices)
        if idx != list(range(self.num_envs)):
            raise ValueError(
                f"{what} on indices {idx}: the native VecEnv shares one backbone and"
                " configuration across all envs, so it can only be set for all of them"
            )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True only for SB3's ``Monitor``, whose episode statistics this VecEnv writes itself."""
        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]


class OneShotVecEnv(RoutingVecEnv):
    """Native SB3 ``VecEnv`` of ``DynBlockDrop``: ``n_envs`` one-step episodes per step, every image's
    ``MultiBinary(T)`` route run through one batched walk (the skip-mode core of
    :class:`~dyncnn_gym.envs.blockdrop.DynBlockDropVectorEnv`).

    Every step ends every episode: ``infos[i]`` holds the ``terminal_observation`` and the
    ``episode`` statistics (``l = 1``), and the observations returned are the next images' (SB3's
    same-step autoreset). Arguments as for :class:`RoutingVecEnv`; ``env_kwargs`` are the one-step
    env's (``reward="blockdrop"``, ``penalty``, ``usage``, or a ``DynSkip`` reward form), on top of
    the id's registered defaults.
    """

    def _make_core(self, env_id: str, n_envs: int) -> tuple[gym.Space, gym.Space]:
        from . import ONE_SHOT_IDS
        from .envs.blockdrop import _OneShot

        name = env_id.split(":", 1)[-1]
        if name not in ONE_SHOT_IDS:
            raise ValueError(f"env_id={env_id!r} is not a one-step env; choose one of {list(ONE_SHOT_IDS)}")
        self._shot = _OneShot(n_envs, **{**gym.spec(name).kwargs, **self.env_kwargs})
        self.core = self._shot.core
        return self._shot.observation_space, self._shot.action_space

    def _run(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        last, rew, infos = self._shot.run(self._shot.check_actions(actions, self.num_envs))
        return last, rew, np.ones(self.num_envs, dtype=bool), infos

    def _reset_slots(self, slots: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        obs, infos = self.core.reset_slots(slots)
        for info in infos:
            info.pop("action_mask", None)
        return obs, infos

    def action_masks(self) -> np.ndarray:
        raise AttributeError("DynBlockDrop has no action masks: every route of MultiBinary(T) is allowed")

    def teacher(self, routes: Any = None) -> dict[str, np.ndarray]:
        """The outcome of the documented routes for every env's image, batched
        (:meth:`~dyncnn_gym.envs.blockdrop._OneShot.teacher`). It knows the labels: for training or
        analysing agents, never as an observation."""
        return self._shot.teacher(routes)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name == "action_masks":
            return self.action_masks()  # raises: there are none
        if method_name == "teacher":
            out = self.teacher(*method_args, **method_kwargs)
            return [{k: v[i] for k, v in out.items()} for i in self._get_indices(indices)]
        return super().env_method(method_name, *method_args, indices=indices, **method_kwargs)


def make_vec_env(env_id: str, n_envs: int = 8, seed: int | None = None, **env_kwargs: Any) -> RoutingVecEnv:
    """The native SB3 ``VecEnv`` of a registered env: :class:`RoutingVecEnv` for the per-decision and
    early-exit envs, :class:`OneShotVecEnv` for ``DynBlockDrop``."""
    from . import ONE_SHOT_IDS

    if env_id.split(":", 1)[-1] in ONE_SHOT_IDS:
        return OneShotVecEnv(env_id, n_envs, seed=seed, **env_kwargs)
    return RoutingVecEnv(env_id, n_envs, seed=seed, **env_kwargs)
