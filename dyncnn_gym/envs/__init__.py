"""Gymnasium faces of the routing core."""

from .blockdrop import BLOCKDROP_REWARDS, DynBlockDropEnv, DynBlockDropVectorEnv
from .core import RoutingCore
from .rewards import REWARD_KINDS, Reward
from .routing import ENV_MODES, DynChannelEnv, DynSkipEnv, RoutingEnv, mode_of

__all__ = [
    "BLOCKDROP_REWARDS",
    "DynBlockDropEnv",
    "DynBlockDropVectorEnv",
    "ENV_MODES",
    "DynChannelEnv",
    "DynSkipEnv",
    "REWARD_KINDS",
    "Reward",
    "RoutingCore",
    "RoutingEnv",
    "mode_of",
]
