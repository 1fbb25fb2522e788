"""Ray RLlib face: an ``env_config -> env`` creator and an RLModule-to-policy adapter.

RLlib (new API stack: ``PPOConfig().environment(...).env_runners(...)``) can use the envs three ways:

* by id string: ``config.environment("dyncnn_gym:DynChannel-v0", env_config={"dataset": "digits"})``
  (the ``dyncnn_gym:`` prefix makes every env-runner process import the package, which registers
  the ids); ``env_config`` holds the env's keyword arguments;
* through ``ray.tune.registry.register_env("dyn-channel", EnvCreator("DynChannel-v0"))``;
* either way with ``config.env_runners(gym_env_vectorize_mode="vector_entry_point")``, so that each
  env runner steps one native vector env (``num_envs_per_env_runner`` images as one batch through
  the backbone) instead of a ``SyncVectorEnv`` of single envs.

Env runners are other processes: ``env_config`` is pickled to them, and each one loads the data and
the backbone itself. Named data sets and arch names (or the defaults) resolve offline there from the
shipped checkpoints or the ``$DYNCNN_GYM_CACHE`` cache (pass that variable to the workers, e.g. with
``ray.init(runtime_env={"env_vars": {...}})``, if it is not set where Ray was started).

This module imports neither torch nor ray at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import gymnasium as gym


class EnvCreator:
    """Build a registered env from a config dict: the single env, or the native vector env when the
    dict holds ``num_envs``.

    Args:
        env_id: a registered id (``"DynChannel-v0"``, ``"DynSkip-v0"``, optionally
            ``"dyncnn_gym:"``-prefixed so that a worker process imports the package itself).

    ``creator(config)`` (``config``: a dict or RLlib ``EnvContext`` of the env's keyword arguments,
    e.g. ``dataset``, ``backbone``, ``groups``, ``compute_weight``) returns
    ``gymnasium.make(env_id, **config)``. If ``config`` holds ``num_envs`` (an int >= 1; RLlib adds
    it with ``gym_env_vectorize_mode="vector_entry_point"``) it returns
    ``gymnasium.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point", **rest)``.
    The creator pickles by reference with the id as its only state, so it crosses process
    boundaries under every start method.
    """

    def __init__(self, env_id: str) -> None:
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"env_id={env_id!r} must be a registered env id such as 'DynChannel-v0'")
        module, _, name = env_id.rpartition(":")
        if module:  # "dyncnn_gym:DynChannel-v0": import the package that registers the id
            importlib.import_module(module)
        else:
            importlib.import_module("dyncnn_gym")
        gym.spec(name)  # raises gymnasium's error naming an unknown id here, not in a worker
        self.env_id = env_id

    def __call__(self, config: Mapping[str, Any] | None = None) -> gym.Env | gym.vector.VectorEnv:
        kwargs = dict(config or {})
        num_envs = kwargs.pop("num_envs", None)
        if num_envs is None:
            return gym.make(self.env_id, **kwargs)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be a positive integer (the vector env's number of images)")
        return gym.make_vec(self.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)

    def __repr__(self) -> str:
        return f"EnvCreator({self.env_id!r})"


def rlmodule_policy(module: Any):
    """Wrap a trained RLlib ``RLModule`` (torch, discrete actions) for :func:`dyncnn_gym.evaluate`.

    Returns a ``torch.nn.Module`` mapping float32 observations ``[B, D]`` to the module's action
    logits ``[B, A]`` (``forward_inference``'s ``action_dist_inputs``), which ``evaluate`` turns into
    deterministic actions (argmax over the allowed actions, so compute-budget masks are honoured).
    Get the module with ``algo.get_module()``.
    """
    import torch
    from ray.rllib.core.columns import Columns

    class _Scores(torch.nn.Module):
        def __init__(self, rl_module: Any) -> None:
            super().__init__()
            self.rl_module = rl_module

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            out = self.rl_module.forward_inference({Columns.OBS: obs})
            return out[Columns.ACTION_DIST_INPUTS]

    if not hasattr(module, "forward_inference"):
        raise TypeError(
            f"module={type(module).__name__} is not an RLlib RLModule (no forward_inference); pass algo.get_module()"
        )
    return _Scores(module).eval()
