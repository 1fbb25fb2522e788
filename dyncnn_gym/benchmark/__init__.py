"""Evaluation protocol, baselines and benchmarks (imported lazily: nothing heavy at import)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "evaluate": ("dyncnn_gym.benchmark.protocol", "evaluate"),
    "as_policy": ("dyncnn_gym.benchmark.protocol", "as_policy"),
    "run_bench": ("dyncnn_gym.benchmark.bench", "run_bench"),
    "get_suite": ("dyncnn_gym.benchmark.suites", "get_suite"),
    "check_pins": ("dyncnn_gym.benchmark.suites", "check_pins"),
    "Suite": ("dyncnn_gym.benchmark.suites", "Suite"),
    "Task": ("dyncnn_gym.benchmark.suites", "Task"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dyncnn_gym.benchmark' has no attribute {name!r}")
