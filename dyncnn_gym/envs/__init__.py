"""Gymnasium faces of the routing core."""

from .blockdrop import BLOCKDROP_REWARDS, DynBlockDropEnv, DynBlockDropVectorEnv
from .core import RoutingCore
from .exit_core import ExitCore
from .exits import DynExitEnv, DynExitVectorEnv
from .rewards import REWARD_KINDS, Reward
from .routing import ENV_MODES, DynChannelEnv, DynRouteEnv, DynSkipEnv, RoutingEnv, make_core, mode_of

__all__ = [
    "BLOCKDROP_REWARDS",
    "DynBlockDropEnv",
    "DynBlockDropVectorEnv",
    "ENV_MODES",
    "DynChannelEnv",
    "DynExitEnv",
    "DynExitVectorEnv",
    "DynRouteEnv",
    "DynSkipEnv",
    "ExitCore",
    "REWARD_KINDS",
    "Reward",
    "RoutingCore",
    "RoutingEnv",
    "make_core",
    "mode_of",
]
