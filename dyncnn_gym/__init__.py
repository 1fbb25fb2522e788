"""dyncnn_gym: input-adaptive CNNs as Gymnasium environments.

Importing the package registers ``DynChannel-v0`` (Runtime Neural Pruning: how many channel
groups each layer computes), ``DynSkip-v0`` (SkipNet: which residual blocks run) and ``DynRoute-v0``
(both: skip each block or run it at a chosen width), the per-decision routing envs, ``DynExit-v0`` (early exit: whether an image stops at a stage's classifier), and
``DynBlockDrop-v0`` (BlockDrop: all block keep/drop decisions in one step). Nothing heavy
happens at import: data are generated and backbones trained or loaded when an env is made.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

#: the per-decision routing envs (one step per decision point)
ENV_IDS = ("DynChannel-v0", "DynSkip-v0", "DynRoute-v0")
#: early-exit envs: one step per exit until the image exits (episodes of 1 to ``T`` steps)
EXIT_IDS = ("DynExit-v0",)
#: one-step envs: every decision of an image in one ``MultiBinary`` action
ONE_SHOT_IDS = ("DynBlockDrop-v0",)

_ENTRY = {
    "DynChannel-v0": ("dyncnn_gym.envs.routing:DynChannelEnv", "dyncnn_gym.envs.vector:DynChannelVectorEnv"),
    "DynSkip-v0": ("dyncnn_gym.envs.routing:DynSkipEnv", "dyncnn_gym.envs.vector:DynSkipVectorEnv"),
    "DynRoute-v0": ("dyncnn_gym.envs.routing:DynRouteEnv", "dyncnn_gym.envs.vector:DynRouteVectorEnv"),
    "DynExit-v0": ("dyncnn_gym.envs.exits:DynExitEnv", "dyncnn_gym.envs.exits:DynExitVectorEnv"),
    "DynBlockDrop-v0": ("dyncnn_gym.envs.blockdrop:DynBlockDropEnv", "dyncnn_gym.envs.blockdrop:DynBlockDropVectorEnv"),
}


def _register() -> None:
    for env_id, (entry, vector_entry) in _ENTRY.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry, vector_entry_point=vector_entry, disable_env_checker=False)


_register()

_LAZY = {
    "pretrain": ("dyncnn_gym.pretraining", "pretrain"),
    "load_checkpoint": ("dyncnn_gym.pretraining", "load_checkpoint"),
    "load_dataset": ("dyncnn_gym.data", "load_dataset"),
    "Walk": ("dyncnn_gym.walk", "Walk"),
    "evaluate": ("dyncnn_gym.benchmark.protocol", "evaluate"),
    "export": ("dyncnn_gym.deployment", "export"),
    "load_routed": ("dyncnn_gym.deployment", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dyncnn_gym' has no attribute {name!r}")


__all__ = ["ENV_IDS", "EXIT_IDS", "ONE_SHOT_IDS", "__version__", *_LAZY]
