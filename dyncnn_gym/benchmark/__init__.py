"""Evaluation protocol, baselines and benchmarks (imported lazily: nothing heavy at import)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "evaluate": ("dyncnn_gym.benchmark.evaluate", "evaluate"),
    "as_policy": ("dyncnn_gym.benchmark.evaluate", "as_policy"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dyncnn_gym.benchmark' has no attribute {name!r}")
