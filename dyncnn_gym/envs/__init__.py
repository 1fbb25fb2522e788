"""Gymnasium faces of the routing core."""

from .core import RoutingCore
from .rewards import REWARD_KINDS, Reward
from .routing import DynChannelEnv, DynSkipEnv, RoutingEnv

__all__ = ["DynChannelEnv", "DynSkipEnv", "REWARD_KINDS", "Reward", "RoutingCore", "RoutingEnv"]
