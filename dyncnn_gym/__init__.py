"""dyncnn_gym: input-adaptive CNNs as Gymnasium environments.

Importing the package registers ``DynChannel`` (Runtime Neural Pruning: how many channel groups each
layer computes) and ``DynSkip`` (SkipNet: which residual blocks run), the per-decision routing envs,
and ``DynBlockDrop`` (BlockDrop: all block keep/drop decisions in one step), ``DynRoute`` (both:
skip each block or run it at a chosen width, one decision per residual block) and ``DynExit``
(early exit: whether an image stops at a stage's classifier, episodes of varying length), each as
``-v1`` (the settings that work, with a FLOPs-ratio target as the operating point) and ``-v0``
(kept exactly as first published, so its numbers stay reproducible). Nothing heavy
happens at import: data are generated and backbones trained or loaded when an env is made.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

#: the settings that work, registered as the ``-v1`` ids' defaults: the 0/1 error as the classification
#: term (it pays exactly the accuracy), the probe observations (the early classifiers' confidence),
#: and an operating point given as a FLOPs ratio that the env holds by adapting its compute weight
#: (:class:`~dyncnn_gym.envs.rewards.FlopsTarget`), so nothing needs tuning per data set
V1_DEFAULTS: dict[str, dict[str, Any]] = {
    "DynChannel-v1": {"reward": "flops", "loss": "error", "obs": "probe", "flops_target": 0.55, "split": "auto"},
    "DynSkip-v1": {"reward": "flops", "loss": "error", "obs": "probe", "flops_target": 0.68, "split": "auto"},
    "DynBlockDrop-v1": {"reward": "flops", "loss": "error", "obs": "probe", "flops_target": 0.68, "split": "auto"},
    "DynRoute-v1": {"reward": "flops", "loss": "error", "obs": "probe", "flops_target": 0.55, "split": "auto"},
    "DynExit-v1": {"reward": "flops", "loss": "error", "flops_target": 0.45, "split": "auto"},
}

#: the defaults every registered id is registered with: the ``-v1`` ids' and, for ``DynExit-v0``,
#: episodes on the held-out split where the data has one (a backbone is right on almost every image
#: it trained on, which tells a router nothing about when continuing pays)
REGISTERED_KWARGS: dict[str, dict[str, Any]] = {**V1_DEFAULTS, "DynExit-v0": {"split": "auto"}}

#: the per-decision routing envs (one step per decision point)
ENV_IDS = ("DynChannel-v1", "DynSkip-v1", "DynRoute-v1", "DynChannel-v0", "DynSkip-v0", "DynRoute-v0")
#: early-exit envs: one step per exit until the image exits (episodes of 1 to ``T`` steps)
EXIT_IDS = ("DynExit-v1", "DynExit-v0")
#: one-step envs: every decision of an image in one ``MultiBinary`` action
ONE_SHOT_IDS = ("DynBlockDrop-v1", "DynBlockDrop-v0")
#: the newest version of each env, the ids a new user starts from
LATEST_IDS = ("DynChannel-v1", "DynSkip-v1", "DynBlockDrop-v1", "DynRoute-v1", "DynExit-v1")

_ENTRY = {
    "DynChannel": ("dyncnn_gym.envs.routing:DynChannelEnv", "dyncnn_gym.envs.vector:DynChannelVectorEnv"),
    "DynSkip": ("dyncnn_gym.envs.routing:DynSkipEnv", "dyncnn_gym.envs.vector:DynSkipVectorEnv"),
    "DynRoute": ("dyncnn_gym.envs.routing:DynRouteEnv", "dyncnn_gym.envs.vector:DynRouteVectorEnv"),
    "DynExit": ("dyncnn_gym.envs.exits:DynExitEnv", "dyncnn_gym.envs.exits:DynExitVectorEnv"),
    "DynBlockDrop": ("dyncnn_gym.envs.blockdrop:DynBlockDropEnv", "dyncnn_gym.envs.blockdrop:DynBlockDropVectorEnv"),
}


def _register() -> None:
    for env_id in (*ENV_IDS, *EXIT_IDS, *ONE_SHOT_IDS):
        if env_id not in registry:
            entry, vector_entry = _ENTRY[env_id.split("-v")[0]]
            register(
                id=env_id,
                entry_point=entry,
                vector_entry_point=vector_entry,
                disable_env_checker=False,
                kwargs=dict(REGISTERED_KWARGS.get(env_id, {})),
            )


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


__all__ = ["ENV_IDS", "EXIT_IDS", "LATEST_IDS", "ONE_SHOT_IDS", "V1_DEFAULTS", "__version__", *_LAZY]
