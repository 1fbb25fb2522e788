"""``dyncnn-gym perf``: how fast the batched walk and its env faces are, and whether savings are real.

Every number is a *ratio of two things measured in the same run*, interleaved (A, B, A, B, ... with
the order alternating between repeats): each repeat gives one ratio of two back-to-back
measurements, and the median over ``repeats`` is reported. The machines this runs on are shared and
noisy; a ratio measured this way survives the noise far better than any absolute speed. On a shared
machine whose load exceeds its cores, ``--threads 1`` avoids OpenMP threads waiting on each other
(the load average at start and end is recorded with the results).

Measured (see :func:`run_perf` for the JSON layout):

* ``env_vs_raw_ratio`` — full episodes per second through the native Gymnasium vector env
  (``gymnasium.make_vec(id, num_envs=256)``, random actions) divided by the raw batched dynamic
  forward pass (:func:`~dyncnn_gym.walk.run_routes`) of the same backbone with the same actions and no
  env around it. Goal >= 0.8 (the raw pass is the limit; 1.0 would mean the env costs nothing).
* ``sb3_native_vs_dummy_ratio`` — SB3 PPO training env-steps per second with the native VecEnv
  (:func:`dyncnn_gym.sb3.make_vec_env`) divided by the same with SB3's ``DummyVecEnv`` of single envs,
  ``n_envs = 64``, on the default data shape (3x32x32) and on digits (1x8x8). PPO is kept cheap
  (``n_steps`` small, one epoch, one minibatch) so the env dominates as it does in real training.
  ``batching_limit`` = raw batched forward images/s at batch 64 / raw batch-1 forward images/s (same
  run) bounds what batching can gain on a CPU. Goals: >= 0.8 x batching_limit on the default data,
  >= 10 on digits.
* ``speedup`` — the dynamic forward pass vs the full network at FLOPs fractions about 0.25 / 0.5 /
  0.75, with static routes (every sample the same route) and per-sample random routes (mixed actions
  in one batch), at batch 1 and batch 256, for both default backbones. Goals: wall_speedup >= 0.8 /
  flops_ratio at batch >= 64 and >= 0.6 / flops_ratio at batch 1.

* ``export`` — the exported routed model (:func:`dyncnn_gym.routed.export`: router and backbone in
  one ``nn.Module``) vs the full backbone, at batch 1 and 256, per default env, on the *shipped*
  trained backbones and the embedded data's test images (routes depend on weights here). The router
  is :class:`ConfidenceThresholds`, a fixed, untrained torch module on the ``obs="probe"``
  observation (no RL training, so the section is cheap and deterministic). Reported with the mean
  FLOPs ratio of its routes: ``wall_speedup`` (full / routed), ``raw_speedup`` (full / the raw
  dynamic pass with the same routes, no router) and ``policy_overhead`` (routed / raw - 1: building
  the observations, the probes and the policy head at every decision). No goal; ``--export-only``
  runs this section alone.

* ``routed`` — what a user ships (:func:`bench_routed`; ``--routed-only`` runs it alone, ``--table-out``
  writes its Markdown table): the demo's trained PPO routers on ``DynChannel-v1``, ``DynSkip-v1`` and
  ``DynExit-v1`` (width stages), dialed to their FLOPs targets (trained here with the recipe, or loaded
  with ``--routers DIR``; the ``-v0`` ids with ``--setup``), PPO on ``DynExit-v1`` with depth stages
  (trained here) and ResNet-110 with a random router at about half of
  its blocks, at batch 1, 64 and 256, at 1 thread and at the default thread count: the routed model
  vs the full network (goal >= 0.6 / flops_ratio at batch 1, >= 0.8 / flops_ratio from batch 64),
  the same routes without the router, per-image routes vs static routes of the same FLOPs (goal
  >= 0.8 at batch 256), the routed model vs the static network of the same test accuracy (goal
  >= 1.0 at batch 256), and the package's full network vs a plain ``nn.Module`` of it (goal >= 1.0).

Speed does not depend on trained weights, so the backbones of the other sections are freshly built (untrained, eval mode)
networks of :data:`PERF_ARCH` (``vgg`` and ``resnet20-lite``, the package's default archs when these benchmarks
were written; the defaults are now ``vgg+sandwich+distill``, the same network, and ``resnet32-lite@skip``) on data of the default shape; the output says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import check_device
from ..fileio import check_writable_file, write_text

#: env id of each mode
ENV_OF_MODE = {"channel": "DynChannel-v0", "skip": "DynSkip-v0"}
#: FLOPs fractions the speedup table aims at
SPEEDUP_TARGETS = (0.25, 0.5, 0.75)

#: the archs every section measures (pinned, so that the committed figures stay reproducible)
PERF_ARCH = {"channel": "vgg", "skip": "resnet20-lite"}


# -- measuring -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured ``repeats`` times, interleaved.

    Each function is called ``warmup`` times first (kernel caches, allocator). In repeat ``r`` the
    functions run in turn, in reversed order on odd repeats, so drifts in machine load hit all alike.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repeats of ``times[num][r] / times[den][r]``: each ratio compares two
    measurements taken back to back, so load that drifts between repeats cancels out."""
    return _median([a / b for a, b in zip(times[num], times[den])])


def machine_facts(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import gymnasium
    import stable_baselines3

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    facts: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }
    try:
        facts["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


# -- data and backbones ----------------------------------------------------------------------------
def _synthetic(shape: tuple[int, int, int], n: int = 2048, num_classes: int = 10, name: str = "synthetic"):
    from ..data.base import DataSplits, Split, fingerprint_arrays

    rng = np.random.default_rng(0)
    splits = []
    for m in (n, max(n // 4, 1)):
        x = rng.standard_normal((m, *shape)).astype(np.float32)
        y = rng.integers(0, num_classes, m).astype(np.int64)
        splits.append(Split(x, y, np.full(m, np.nan, dtype=np.float32)))
    fp = fingerprint_arrays(splits[0].images, splits[0].labels, splits[1].images, splits[1].labels)
    c = shape[0]
    return DataSplits(name, splits[0], splits[1], num_classes, np.zeros(c, np.float32), np.ones(c, np.float32), fp)


def load_bench_data(name: str, shape: tuple[int, int, int]):
    """``load_dataset(name)``, or random images of ``shape`` when it is unavailable (speed does not
    depend on pixel values). Returns ``(data, note)``."""
    try:
        from ..data import load_dataset

        data = load_dataset(name)
        if tuple(data.image_shape) != tuple(shape):
            raise ValueError(f"{name!r} has shape {data.image_shape}, expected {shape}")
        return data, f"{name!r} ({len(data.train)} train images, {'x'.join(map(str, data.image_shape))})"
    except Exception as e:  # noqa: BLE001 - any failure falls back to random data of the same shape
        return _synthetic(shape, name=f"synthetic-{name}"), f"random images {shape} (load_dataset({name!r}) failed: {e})"


def fresh_backbone(arch: str, data, groups: int, device: torch.device, seed: int = 0):
    """A freshly initialised backbone (eval mode) for ``data``; speed does not depend on trained weights."""
    from ..models import build

    torch.manual_seed(seed)
    return build(arch, data.image_shape, data.num_classes, groups).to(device).eval()


# -- 1. env vs raw forward -----------------------------------------------------------------------------
def bench_env_vs_raw(data, nets: dict, device: torch.device, repeats: int, num_envs: int = 256, bar=None) -> dict:
    import gymnasium as gym

    import dyncnn_gym  # noqa: F401  (registers the ids)

    from ..walk import run_routes

    out = {}
    for mode, net in nets.items():
        env_id = ENV_OF_MODE[mode]
        venv = gym.make_vec(env_id, num_envs=num_envs, dataset=data, backbone=net, device=str(device))
        core = venv.unwrapped.core if hasattr(venv, "unwrapped") else venv.core
        T, A = core.T, core.A
        rng = np.random.default_rng(1)
        acts = rng.integers(0, A, (num_envs, T))
        acts_t = torch.as_tensor(acts)
        x = core.images[torch.as_tensor(rng.integers(0, len(core.labels), num_envs), device=core.images.device)]
        venv.reset(seed=0)

        def env_episodes(venv=venv, acts=acts, T=T):
            venv.reset()
            for t in range(T):
                venv.step(acts[:, t])

        def raw_forward(net=net, mode=mode, x=x, acts_t=acts_t):
            with torch.no_grad():
                run_routes(net, mode, x, acts_t)

        times = interleaved({"env": env_episodes, "raw": raw_forward}, repeats, device)
        t_env, t_raw = _median(times["env"]), _median(times["raw"])
        out[env_id] = {
            "backbone": net.arch,
            "num_envs": num_envs,
            "decisions": T,
            "env_episodes_per_s": num_envs / t_env,
            "raw_episodes_per_s": num_envs / t_raw,
            "ratio": paired_ratio(times, "raw", "env"),
            "vector_env": type(venv.unwrapped).__name__,
        }
        venv.close()
        if bar is not None:
            bar.update(1)
    return out


# -- 2. batching limit and SB3 --------------------------------------------------------------------------
def bench_batching_limit(data, net, mode: str, device: torch.device, repeats: int, batch: int = 64) -> dict:
    """Raw batched forward images/s at ``batch`` / raw batch-1 forward images/s (random actions)."""
    from ..walk import run_routes

    T, A = net.num_decisions(mode), net.num_actions(mode)
    rng = np.random.default_rng(2)
    x = torch.as_tensor(data.train.images[:batch]).to(device)
    acts = torch.as_tensor(rng.integers(0, A, (batch, T)))

    def batched():
        with torch.no_grad():
            run_routes(net, mode, x, acts)

    def one_by_one():
        with torch.no_grad():
            for i in range(batch):
                run_routes(net, mode, x[i : i + 1], acts[i : i + 1])

    times = interleaved({"batched": batched, "single": one_by_one}, repeats, device)
    return {
        "batch": batch,
        "batched_images_per_s": batch / _median(times["batched"]),
        "single_images_per_s": batch / _median(times["single"]),
        "batching_limit": paired_ratio(times, "single", "batched"),
    }


def bench_sb3(
    data, net, mode: str, device: torch.device, repeats: int, n_envs: int = 64, n_steps: int = 8, rollouts: int = 2
) -> dict:
    """PPO env-steps/s on the native VecEnv vs a ``DummyVecEnv`` of ``n_envs`` single envs."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    import dyncnn_gym  # noqa: F401

    from ..sb3 import make_vec_env

    env_id = ENV_OF_MODE[mode]
    kw = {"dataset": data, "backbone": net, "device": str(device)}
    vecs = {
        "native": make_vec_env(env_id, n_envs=n_envs, seed=0, **kw),
        "dummy": sb3_make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs=kw),
    }
    ppo_kw = {"n_steps": n_steps, "batch_size": n_steps * n_envs, "n_epochs": 1, "device": str(device), "seed": 0}
    models = {k: PPO("MlpPolicy", v, **ppo_kw) for k, v in vecs.items()}
    steps = n_steps * n_envs * rollouts
    for m in models.values():  # first learn() resets the env; later ones continue
        m.learn(n_steps * n_envs, reset_num_timesteps=False)

    fns = {k: (lambda m=m: m.learn(steps, reset_num_timesteps=False)) for k, m in models.items()}
    times = interleaved(fns, repeats, device, warmup=0)
    for v in vecs.values():
        v.close()
    t_native, t_dummy = _median(times["native"]), _median(times["dummy"])
    return {
        "env_id": env_id,
        "backbone": net.arch,
        "n_envs": n_envs,
        "ppo": {k: v for k, v in ppo_kw.items() if k != "device"},
        "env_steps_per_measure": steps,
        "native_steps_per_s": steps / t_native,
        "dummy_steps_per_s": steps / t_dummy,
        "ratio": paired_ratio(times, "dummy", "native"),
    }


# -- 3. speedup of real conditional execution ---------------------------------------------------------
def static_routes_for(table, targets: Sequence[float]) -> list[tuple[float, list[int]]]:
    """For each target FLOPs ratio, the static route (one action per decision) closest to it."""
    T, A = table.num_decisions, table.num_actions
    full = table.full
    if A**T > 200_000:  # too many to enumerate: uniform routes only
        cands = [[a] * T for a in range(A)]
    else:
        cands = [list(r) for r in itertools.product(range(A), repeat=T)]
    ratios = np.array([table.path_flops(r) / full for r in cands])
    out = []
    for target in targets:
        i = int(np.argmin(np.abs(ratios - target)))
        out.append((float(ratios[i]), cands[i]))
    return out


def random_routes_for(table, target: float, n: int, seed: int = 0) -> np.ndarray:
    """int64 ``[n, T]`` per-sample random routes whose mean FLOPs ratio is close to ``target``.

    Each action is a Binomial(A - 1, p) draw from fixed uniforms; ``p`` is found by bisection (the
    mean FLOPs ratio grows with ``p``), so samples take a mix of all actions.
    """
    T, A = table.num_decisions, table.num_actions
    u = np.random.default_rng(seed).random((n, T, A - 1))
    full = table.full
    steps, head, stem = table.steps, table.head, table.stem

    def routes(p: float) -> np.ndarray:
        return (u < p).sum(axis=2).astype(np.int64)

    def mean_ratio(r: np.ndarray) -> float:
        prev = np.full(n, A - 1)
        total = np.full(n, stem, dtype=np.int64)
        for t in range(T):
            total += steps[t][prev, r[:, t]]
            prev = r[:, t]
        total += head[prev]
        return float(total.mean() / full)

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if mean_ratio(routes(mid)) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda p: abs(mean_ratio(routes(p)) - target))
    return routes(best)


def bench_speedup(
    data, nets: dict, device: torch.device, repeats: int, batches: Sequence[int] = (1, 256), singles: int = 32, bar=None
) -> list[dict]:
    """Dynamic forward (:func:`run_routes`) vs the full network, per backbone, batch and route kind.

    Batch 1 is measured as a loop over ``singles`` images, each with its own route.
    """
    from ..walk import run_routes

    rows = []
    big = max(batches)
    for mode, net in nets.items():
        table = net.cost_table(mode)
        full = table.full
        x_all = torch.as_tensor(data.train.images[: max(big, singles)]).to(device)
        statics = static_routes_for(table, SPEEDUP_TARGETS)
        for batch in batches:
            n_calls = singles if batch == 1 else 1
            n = batch * n_calls
            x = x_all[:n]
            configs: list[tuple[str, float, np.ndarray]] = []
            for target, (_ratio, route) in zip(SPEEDUP_TARGETS, statics):
                configs.append(("static", target, np.tile(np.asarray(route, dtype=np.int64), (n, 1))))
            for k, target in enumerate(SPEEDUP_TARGETS):  # the routes' mean hits the target on these n images
                configs.append(("random", target, random_routes_for(table, target, n, seed=10 + k)))
            fns: dict[str, Callable[[], Any]] = {}

            def full_fn(x=x, batch=batch, n_calls=n_calls, net=net, mode=mode):
                with torch.no_grad():
                    for i in range(n_calls):
                        net.full_forward(x[i * batch : (i + 1) * batch], mode)

            fns["full"] = full_fn
            used = {}
            for c, (_kind, _target, acts) in enumerate(configs):
                a = torch.as_tensor(acts)
                used[c] = a

                def dyn_fn(x=x, a=a, batch=batch, n_calls=n_calls, net=net, mode=mode):
                    with torch.no_grad():
                        for i in range(n_calls):
                            run_routes(net, mode, x[i * batch : (i + 1) * batch], a[i * batch : (i + 1) * batch])

                fns[f"dyn{c}"] = dyn_fn
            times = interleaved(fns, repeats, device)
            for c, (kind, target, _acts) in enumerate(configs):
                a = used[c].numpy()
                ratio = float(np.mean([table.path_flops(r) for r in a]) / full)
                speed = paired_ratio(times, "full", f"dyn{c}")
                factor = 0.8 if batch >= 64 else 0.6
                rows.append(
                    {
                        "backbone": net.arch,
                        "env_id": ENV_OF_MODE[mode],
                        "mode": mode,
                        "batch": batch,
                        "routes": kind,
                        "target": target,
                        "flops_ratio": round(ratio, 4),
                        "wall_speedup": round(speed, 3),
                        "goal": round(factor / ratio, 3),
                        "met": bool(speed >= factor / ratio),
                        "route": a[0].tolist() if kind == "static" else None,
                    }
                )
            if bar is not None:
                bar.update(1)
    return rows


# -- 4. the exported routed model ----------------------------------------------------------------------
#: probe top-probability thresholds of :class:`ConfidenceThresholds` per mode: fixed, picked once
#: (from 4 candidates each) for mean FLOPs ratios of about 0.47 (vgg) and 0.63 (resnet20-lite) on the
#: first 1000 train images of the embedded data with the shipped backbones; not trained
EXPORT_THRESHOLDS = {"channel": (0.5, 0.3, 0.15), "skip": (0.3,)}


class ConfidenceThresholds(nn.Module):
    """A fixed confidence-threshold router (untrained; for timing the export, not a good policy).

    Reads the probe's top-class probability ``p`` from an ``obs="probe"`` observation ``[B, D]``
    (index ``F + T``) and picks action ``k`` = the number of ``thresholds`` that ``p`` falls below:
    confident images take small actions (fewer channel groups, skipped blocks). Returns one-hot
    scores ``[B, A]`` (float32), so the budget mask applies as for any score module.
    """

    def __init__(self, feat_dim: int, num_decisions: int, num_actions: int, thresholds: Sequence[float]) -> None:
        super().__init__()
        if len(thresholds) != num_actions - 1:
            raise ValueError(f"thresholds={list(thresholds)!r} must hold num_actions - 1 = {num_actions - 1} values")
        self.index, self.num_actions = int(feat_dim + num_decisions), int(num_actions)
        self.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        conf = obs[:, self.index]
        k = (conf[:, None] < self.thresholds[None, :]).sum(1)
        return torch.nn.functional.one_hot(k, self.num_actions).float()


def export_router(mode: str, device: torch.device, groups: int = 4):
    """The exported model of :func:`bench_export`: the shipped :data:`PERF_ARCH` backbone of the mode on the embedded
    data (a fresh one on random images if that is unavailable), ``obs="probe"``, and a
    :class:`ConfidenceThresholds` router. Returns ``(routed_net, test_images, test_labels, note)``."""
    from ..envs.core import RoutingCore
    from ..pretraining import resolve_backbone
    from ..routed import export

    data, note = load_bench_data("shapes", (3, 32, 32))
    arch = PERF_ARCH[mode]
    try:
        net = resolve_backbone(arch, data, mode, groups, device, progress=False)
        note += f"; shipped {arch} backbone"
    except Exception as e:  # noqa: BLE001 - fall back to an untrained backbone of the same arch
        net = fresh_backbone(arch, data, groups, device)
        note += f"; FRESH untrained {arch} backbone (shipped one unavailable: {e})"
    core = RoutingCore(mode, 1, dataset=data, backbone=net, split="test", obs="probe", device=str(device))
    policy = ConfidenceThresholds(core.feat_dim, core.T, core.A, EXPORT_THRESHOLDS[mode])
    return export(policy, core=core), core.images, torch.as_tensor(core.labels), note


def bench_export(
    device: torch.device, repeats: int, batches: Sequence[int] = (1, 256), singles: int = 32, groups: int = 4, bar=None
) -> dict:
    """Exported routed model vs the full backbone vs the raw dynamic pass with the router's routes.

    Batch 1 is measured as a loop over ``singles`` test images. Returns ``{"setup": ..., "rows": [...]}``.
    """
    from ..walk import run_routes

    rows, notes = [], {}
    big = max(batches)
    for mode in ("channel", "skip"):
        rn, images, labels, note = export_router(mode, device, groups)
        notes[ENV_OF_MODE[mode]] = note
        net = rn.backbone
        x_all = images[: max(big, singles)]
        for batch in batches:
            n_calls = singles if batch == 1 else 1
            n = batch * n_calls
            x = x_all[:n]
            parts = [x[i * batch : (i + 1) * batch] for i in range(n_calls)]
            routes = [rn.route(p) for p in parts]
            acts = [r.actions for r in routes]

            def full_fn(parts=parts, net=net, mode=mode):
                with torch.no_grad():
                    for p in parts:
                        net.full_forward(p, mode)

            def routed_fn(parts=parts, rn=rn):
                for p in parts:
                    rn.route(p)

            def raw_fn(parts=parts, acts=acts, net=net, mode=mode):
                with torch.no_grad():
                    for p, a in zip(parts, acts):
                        run_routes(net, mode, p, a)

            times = interleaved({"full": full_fn, "routed": routed_fn, "raw": raw_fn}, repeats, device)
            ratio = torch.cat([r.flops_ratio for r in routes])
            with torch.no_grad():
                full_pred = torch.cat([net.full_forward(p, mode).argmax(1).cpu() for p in parts])
            routed_pred = torch.cat([r.logits.argmax(1).cpu() for r in routes])
            all_acts = torch.cat(acts)
            rows.append(
                {
                    "env_id": ENV_OF_MODE[mode],
                    "backbone": net.arch,
                    "batch": batch,
                    "images": n,
                    "flops_ratio": round(float(ratio.mean()), 4),
                    "accuracy": round(float((routed_pred == labels[:n]).double().mean()), 4),
                    "full_accuracy": round(float((full_pred == labels[:n]).double().mean()), 4),
                    "wall_speedup": round(paired_ratio(times, "full", "routed"), 3),
                    "raw_speedup": round(paired_ratio(times, "full", "raw"), 3),
                    "policy_overhead": round(paired_ratio(times, "routed", "raw") - 1.0, 3),
                    "ms_per_image": {k: round(1000 * _median(v) / n, 4) for k, v in times.items()},
                    "distinct_routes": int(all_acts.unique(dim=0).shape[0]),
                    "mean_action": [round(float(v), 3) for v in all_acts.double().mean(0) / (rn.A - 1)],
                }
            )
            if bar is not None:
                bar.update(1)
    setup = {
        "router": "ConfidenceThresholds (fixed probe top-probability thresholds, untrained)",
        "thresholds": {ENV_OF_MODE[m]: list(t) for m, t in EXPORT_THRESHOLDS.items()},
        "obs": "probe",
        "data": notes,
        "images": "test split, in order",
        "batch1_images": singles,
    }
    return {"setup": setup, "rows": rows}


def format_export(export: dict) -> list[str]:
    """The export section as text lines."""
    lines = [f"exported routed model ({export['setup']['router']}) vs full backbone:"]
    lines.append(
        f"  {'env':<14} {'batch':>5} {'FLOPs':>6} {'acc':>6} {'full acc':>8} {'wall speedup':>12} {'raw speedup':>11} {'policy overhead':>15}"
        f" {'ms/img routed':>13} {'ms/img full':>11}"
    )
    for r in export["rows"]:
        ms = r["ms_per_image"]
        lines.append(
            f"  {r['env_id']:<14} {r['batch']:>5} {r['flops_ratio']:>6.3f} {r.get('accuracy', float('nan')):>6.3f}"
            f" {r.get('full_accuracy', float('nan')):>8.3f} {r['wall_speedup']:>12.3f} {r['raw_speedup']:>11.3f}"
            f" {100 * r['policy_overhead']:>14.1f}% {ms['routed']:>13.3f} {ms['full']:>11.3f}"
        )
    return lines


# -- 5. what a user ships: trained routers vs full, static and plain networks ---------------------------
#: the routed-model table's setups: name -> (mode, backbone, router); mode ``exit-width`` / ``exit-depth``:
#: ``DynExit-v1`` with that kind of stages; "ppo": the demo's PPO recipe (:func:`dyncnn_gym.recipes.train_ppo`
#: on the embedded shapes data; on a ``-v1`` id the policy is dialed to the env's FLOPs target, as
#: ``evaluate`` and ``export`` do), "random": :class:`RandomGates`
ROUTED_SETUPS: dict[str, tuple[str, str, str]] = {
    "DynChannel-v1": ("channel", "vgg+sandwich+distill", "ppo"),
    "DynSkip-v1": ("skip", "resnet32-lite@skip", "ppo"),
    "DynChannel-v0": ("channel", "vgg+sandwich+distill", "ppo"),
    "DynSkip-v0": ("skip", "resnet32-lite@skip", "ppo"),
    "DynSkip-v0 resnet110": ("skip", "resnet110", "random"),
    "DynExit-v1": ("exit-width", "vgg+sandwich+distill", "ppo"),
    "DynExit-v1 depth": ("exit-depth", "resnet20-lite-exits+distill", "ppo"),
    "DynExit-v0 resnet110": ("exit-depth", "resnet110-exits", "random"),
    "DynExit-v0 resnet56": ("exit-depth", "resnet56-exits", "random"),
    "DynExit-v1 resnet56": ("exit-depth", "resnet56-exits+distill", "ppo"),
    "DynExit-v0 resnet32": ("exit-depth", "resnet32-exits", "random"),
}
#: the setups measured by default: the routers ``dyncnn-gym demo`` trains and ships (``-v1``), PPO on the
#: depth-stage early exits of the default ResNet-20 and of the shipped ResNet-56 (trained here: 1 minute
#: each), and ResNet-110 (blocks skipped, or exits) with random routers
DEFAULT_ROUTED_SETUPS = (
    "DynChannel-v1",
    "DynSkip-v1",
    "DynExit-v1",
    "DynExit-v1 depth",
    "DynExit-v1 resnet56",
    "DynSkip-v0 resnet110",
    "DynExit-v0 resnet110",
)
#: batches of the routed-model table
ROUTED_BATCHES = (1, 64, 256)


class RandomGates(nn.Sequential):
    """A fixed random router for timing (skip decisions): a PPO-sized MLP ``obs -> 64 -> 64 -> 1``
    (tanh) with random weights whose execute score is ``sin(50 x)``: per-image pseudo-random routes
    that execute about half of the blocks, at the cost of a policy network like PPO's.

    Returns scores ``[B, 2]`` (skip: 0, execute: the sine). Built from plain layers (the skip score
    is a zero row of the last ``Linear``), so a routed model runs it as it runs a trained head."""

    def __init__(self, obs_dim: int, seed: int = 0) -> None:
        from ..policies import Sine

        super().__init__(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2), Sine(50.0))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self:
                if isinstance(m, nn.Linear):
                    out = 1 if m.out_features == 2 else m.out_features
                    w = torch.randn((out, m.in_features), generator=gen) / m.in_features**0.5
                    m.weight.zero_()
                    m.weight[-out:].copy_(w)
                    m.bias.zero_()


def static_forward(net, mode: str, images: torch.Tensor, route: Sequence[int]) -> torch.Tensor:
    """Logits of ``images`` on one static route (every image the same actions): the slim network that
    route defines, run as one dense pass per decision on the cached kernels (no router, no grouping)."""
    from ..walk import Walk

    walk = Walk(net, mode, images)
    for a in route:
        walk.advance(int(a))
    return walk.logits()


def spaced_route(table, target: float) -> list[int]:
    """A static skip route executing evenly spaced blocks, about ``target`` of the decisions (for a
    backbone without a static accuracy front, e.g. an untrained one)."""
    T = table.num_decisions
    return [int(np.floor((t + 1) * target) > np.floor(t * target)) for t in range(T)]


def _bracket(points: list[dict], key: str, value: float) -> tuple[dict, dict, float]:
    """The two points of ``points`` (sorted by ``key``) around ``value`` and the weight of the second
    (linear interpolation; clamped to the ends, where the weight is 0 or 1)."""
    pts = sorted(points, key=lambda p: p[key])
    if value <= pts[0][key]:
        return pts[0], pts[0], 0.0
    if value >= pts[-1][key]:
        return pts[-1], pts[-1], 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        if lo[key] <= value <= hi[key]:
            span = hi[key] - lo[key]
            return lo, hi, 0.0 if span <= 0 else (value - lo[key]) / span
    return pts[-1], pts[-1], 0.0  # pragma: no cover - the loop covers every value in range


def _load_router(routers: str | Path, env_id: str):
    from .protocol import load_model

    root = Path(routers)
    for cand in (root / "models" / f"{env_id}-PPO.zip", root / f"{env_id}-PPO.zip"):
        if cand.is_file():
            return load_model(str(cand)), str(cand)
    raise FileNotFoundError(
        f"no {env_id}-PPO.zip under {str(root)!r} (looked in models/ and the folder itself); write it with"
        f" `dyncnn-gym demo --env {env_id} --out DIR`, or leave --routers out to train the routers here"
    )


@dataclass
class TimedSetup:
    """What the routed-model table times for one setup (see :func:`bench_routed`).

    Attributes:
        info: what is reported about the setup (router, test accuracy and FLOPs ratio, static front).
        net: the backbone; ``plain``: its full network as a plain ``nn.Module``; ``images``: test images.
        full: ``full(x)`` runs the full network on ``x [B, C, H, W]``.
        route: ``route(x) -> (routes, flops_ratio [B])``: the exported routed model (router included).
        replay: ``replay(x, routes)``: the same routes without the router (the raw dynamic pass).
        static: ``static(x, key)``: the static network ``key`` of :attr:`front` (or of ``spaced``).
        front: the static networks' accuracy-FLOPs front on the test split, points ``{"key",
            "accuracy", "flops_ratio"}``; ``None`` without one (an untrained backbone).
        spaced: without a front, ``spaced(flops_ratio) -> key``: a static network of that FLOPs ratio.
        distinct: ``distinct(routes list) -> int``: distinct routes among the routed images.
    """

    info: dict
    net: Any
    plain: nn.Module
    images: torch.Tensor
    full: Callable[[torch.Tensor], Any]
    route: Callable[[torch.Tensor], tuple[Any, torch.Tensor]]
    replay: Callable[[torch.Tensor, Any], Any]
    static: Callable[[torch.Tensor, tuple], Any]
    front: list[dict] | None
    spaced: Callable[[float], tuple] | None
    distinct: Callable[[list], int]


def routed_setup(
    env_id: str, device: torch.device, routers: str | Path | None, steps: int | None, progress: bool
) -> TimedSetup:
    """One setup of the routed-model table: the exported model, its test-split accuracy and routes, and the
    static front (or a FLOPs-matched static route where there is no front). See :func:`bench_routed`."""
    from ..envs.core import RoutingCore
    from ..envs.routing import make_core
    from ..recipes import env_kwargs as recipe_env_kwargs
    from ..walk import run_routes
    from .baselines import static_baselines
    from .plain import plain_copy
    from .protocol import evaluate

    mode, arch, router = ROUTED_SETUPS[env_id]
    base_id = env_id.split()[0]
    info: dict[str, Any] = {"env_id": env_id, "mode": mode, "backbone": arch}
    if mode.startswith("exit-"):
        return _exit_setup(env_id, device, routers, steps, progress, info)
    if router == "ppo":
        kw = recipe_env_kwargs(base_id, dataset="shapes", backbone=arch, groups=4, device=str(device))
        core = make_core(base_id, 1, split="test", **kw)  # the id's registered defaults (a -v1 FLOPs target)
        model = _ppo_router(base_id, kw, routers, steps, progress, info)
        res = evaluate(model, base_id, core=core)  # dialed to a -v1 target on held-out images; export dials alike
        info.update(accuracy=res["accuracy"], test_flops_ratio=res["flops_ratio"], dialed=res["dialed"])
        rn = _export(model, core)
        front = static_baselines(core)["front"]
        points = _route_front(front, info)
    else:
        data, _note = load_bench_data("shapes", (3, 32, 32))
        core = RoutingCore(
            mode, 1, dataset=data, backbone=fresh_backbone(arch, data, 4, device), split="test", device=str(device)
        )
        rn = _export(RandomGates(core.observation_space.shape[0]), core)
        info["router"] = "RandomGates (a random PPO-sized MLP, sin(50 x) execute score: ~50 % of blocks per image)"
        info["static_front"], points = None, None
    net, table = rn.backbone, rn.table

    def route(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out = rn.route(x)
        return out.actions, out.flops_ratio

    return TimedSetup(
        info=info,
        net=net,
        plain=plain_copy(net),
        images=core.images,
        full=lambda x: net.full_forward(x, mode),
        route=route,
        replay=lambda x, acts: run_routes(net, mode, x, acts),
        static=lambda x, key: static_forward(net, mode, x, key),
        front=points,
        spaced=None if points else (lambda ratio: tuple(spaced_route(table, ratio))),
        distinct=lambda acts: int(torch.cat(acts).unique(dim=0).shape[0]),
    )


def _route_front(front: list[dict], info: dict) -> list[dict]:
    """A static front of routes (``static_baselines``'s ``front``) as :class:`TimedSetup` points keyed by
    route; ``info["static_front"]`` gets its routes, accuracies and FLOPs ratios."""
    info["static_front"] = [{k: p[k] for k in ("actions", "accuracy", "flops_ratio")} for p in front]
    return [{"key": tuple(p["actions"]), "accuracy": p["accuracy"], "flops_ratio": p["flops_ratio"]} for p in front]


def _ppo_router(env_id: str, kw: dict, routers: str | Path | None, steps: int | None, progress: bool, info: dict):
    """The PPO router of a setup: loaded from ``routers`` (a ``dyncnn-gym demo --out`` folder) when
    given, else trained with the recipe; ``info["router"]`` says which."""
    import warnings as _w

    from ..recipes import recipe, train_ppo

    if routers is not None and info["env_id"] == env_id:  # a setup with a suffix ("DynExit-v1 depth") trains its own
        model, where = _load_router(routers, env_id)
        info["router"] = f"PPO loaded from {where}"
        return model
    n = steps or recipe(env_id)["total_timesteps"]
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        model = train_ppo(env_id, total_timesteps=n, seed=0, progress=progress, **kw)
    info["router"] = f"PPO, the demo's recipe ({n} steps, seed 0)"
    return model


def _export(policy: Any, core: Any):
    from ..deployment import export

    return export(policy, core=core)


def _exit_setup(
    env_id: str, device: torch.device, routers: str | Path | None, steps: int | None, progress: bool, info: dict
) -> TimedSetup:
    """An early-exit setup of :data:`ROUTED_SETUPS`: its PPO router (loaded or trained) on the
    embedded shapes data, timed by :func:`exit_timed_setup`."""
    from ..envs.routing import make_core
    from ..recipes import env_kwargs as recipe_env_kwargs

    mode, arch, router = ROUTED_SETUPS[env_id]
    base_id, kind = env_id.split()[0], mode.split("-")[1]
    if router == "random":  # an untrained backbone: exits at random, about half of the images at each
        from ..envs.exit_core import ExitCore

        data, _note = load_bench_data("shapes", (3, 32, 32))
        net = fresh_backbone(arch, data, 4, device)
        core = ExitCore(1, dataset=data, backbone=net, stages=kind, split="test", device=str(device))
        info["router"] = "RandomGates (a random PPO-sized MLP, sin(50 x) continue score: ~50 % of images go on at each exit)"
        return exit_timed_setup(RandomGates(core.observation_space.shape[0]), core, base_id, info, trained=False)
    kw = recipe_env_kwargs(base_id, dataset="shapes", backbone=arch, stages=kind, groups=4, device=str(device))
    core = make_core(base_id, 1, split="test", **kw)
    model = _ppo_router(base_id, kw, routers, steps, progress, info)
    return exit_timed_setup(model, core, base_id, info)


def exit_timed_setup(
    policy: Any,
    core: Any,
    env_id: str = "DynExit-v1",
    info: dict | None = None,
    trained: bool = True,
    evaluated: dict | None = None,
) -> TimedSetup:
    """What :func:`time_setup` times for an early-exit router: ``policy`` (anything
    :func:`dyncnn_gym.export` accepts) exported on ``core`` (an ``ExitCore`` on the test split; a
    ``-v1`` policy is dialed to its target as ``evaluate`` dials it), against the full network and the
    static networks of the same backbone. With width stages the static networks are the backbone's
    static channel routes (uniform and greedy, the ``DynChannel-v1`` front on the test split); with
    depth stages, the truncated networks that end at one exit
    (:meth:`~dyncnn_gym.models.exits.ExitResNet.exit_forward`, no earlier exit head). ``trained=False``
    (an untrained backbone, depth stages): no accuracies, the truncated networks by FLOPs only.
    ``evaluated``: :func:`~dyncnn_gym.evaluate`'s result for ``policy`` on this env, when the caller
    has it (otherwise it is evaluated here)."""
    from ..envs.routing import make_core
    from ..exit_walk import run_fixed_exits
    from .baselines import pareto, static_baselines
    from .exit_baselines import exit_outcomes
    from .plain import plain_copy
    from .protocol import evaluate

    info = {"env_id": env_id, "mode": f"exit-{core.stages.kind}", "backbone": core.net.arch} if info is None else info
    if trained:
        res = evaluate(policy, env_id, core=core) if evaluated is None else evaluated
        info.update(accuracy=res["accuracy"], test_flops_ratio=res["flops_ratio"], dialed=res["dialed"])
    elif core.stages.kind != "depth":
        raise ValueError("an untrained backbone is timed with depth stages only (its static networks are the truncated ones)")
    rn = _export(policy, core)
    net, stages = rn.backbone, rn.stages
    if stages.kind == "width":
        channel = make_core(  # static routes need no observations: no probes to fit
            "DynChannel-v1",
            1,
            split="test",
            dataset=core.data,
            backbone=net,
            groups=net.groups,
            device=str(core.device),
            obs="features",
        )
        front = static_baselines(channel)["front"]
        points = _route_front(front, info)

        def static(x: torch.Tensor, key: tuple) -> Any:
            return static_forward(net, "channel", x, key)

        def full(x: torch.Tensor) -> Any:
            return net.full_forward(x, "channel")

    else:
        correct = exit_outcomes(core, "test").correct if trained else None  # [S, N]
        pts = [
            {
                "exit": k,
                "accuracy": None if correct is None else float(correct[k].mean()),
                "flops_ratio": net.exit_network_flops(k) / rn.full,
            }
            for k in range(rn.S)
        ]
        front = pareto(pts) if trained else pts
        info["static_front"] = front
        points = [{"key": (p["exit"],), "accuracy": p["accuracy"], "flops_ratio": p["flops_ratio"]} for p in front]

        def static(x: torch.Tensor, key: tuple) -> Any:
            return net.exit_forward(x, key[0])

        def full(x: torch.Tensor) -> Any:
            return net.full_forward(x, "exit")

    def route(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out = rn.route(x)
        return out.exits, out.flops_ratio

    return TimedSetup(
        info=info,
        net=net,
        plain=plain_copy(net),
        images=core.images,
        full=full,
        route=route,
        replay=lambda x, exits: run_fixed_exits(stages, x, exits),
        static=static,
        front=points,
        spaced=None,
        distinct=lambda exits: int(torch.cat(exits).unique().shape[0]),
    )


def bench_routed(
    device: torch.device,
    repeats: int,
    threads: Sequence[int],
    batches: Sequence[int] = ROUTED_BATCHES,
    singles: int = 32,
    routers: str | Path | None = None,
    steps: int | None = None,
    setups: Sequence[str] = DEFAULT_ROUTED_SETUPS,
    progress: bool = False,
    bar=None,
) -> dict:
    """The routed models a user ships vs the networks they replace, per setup, batch and thread count.

    Setups (``setups``, names of :data:`ROUTED_SETUPS`; default :data:`DEFAULT_ROUTED_SETUPS`): the demo's
    PPO routers on ``DynChannel-v1``, ``DynSkip-v1`` and ``DynExit-v1`` (width stages), dialed to their
    FLOPs targets (trained here with the recipe, or loaded from ``routers``: a ``dyncnn-gym demo --out``
    folder), PPO on ``DynExit-v1`` with depth stages (the default ResNet-20 with exits, and the shipped
    ResNet-56 with exits) and on the ``-v0`` ids (trained here), and ResNet-110 with :class:`RandomGates`. Batch 1 is a loop over ``singles`` test images; batch ``N``
    one call on ``N`` test images. Measured interleaved, per row:

    * ``full``: the package's full network; ``plain``: the same network as a plain ``nn.Module``
      (:func:`~dyncnn_gym.benchmark.plain.plain_copy`);
    * ``routed``: the exported routed model (router included); ``raw``: the same routes without the
      router (:func:`~dyncnn_gym.walk.run_routes`; :func:`~dyncnn_gym.exit_walk.run_fixed_exits`);
    * the static networks of the static front (uniform + greedy routes on the test split; for depth
      exits, the truncated networks) that bracket the router's test accuracy and its FLOPs ratio;
      their times are interpolated (per repeat) by accuracy and by FLOPs. Without a front
      (ResNet-110, untrained), an evenly spaced skip route of the routes' FLOPs (:func:`spaced_route`).

    Ratios (medians over repeats of per-repeat ratios): ``routed_vs_full``, ``raw_vs_full``,
    ``router_overhead`` (routed / raw - 1), ``routes_vs_static_same_flops`` (static / raw),
    ``routed_vs_static_same_accuracy`` (static / routed), ``full_vs_plain`` (plain / full).
    """
    rows: list[dict] = []
    info: dict[str, dict] = {}
    for env_id in setups:
        st = routed_setup(env_id, device, routers, steps, progress)
        info[env_id] = st.info
        rows += time_setup(st, env_id, device, repeats, threads, batches, singles, bar)
    return {"setups": info, "rows": rows, "threads": list(threads)}


def time_setup(
    st: TimedSetup,
    name: str,
    device: torch.device,
    repeats: int,
    threads: Sequence[int],
    batches: Sequence[int] = ROUTED_BATCHES,
    singles: int = 32,
    bar=None,
) -> list[dict]:
    """The rows of :func:`bench_routed` for one setup ``st`` (named ``name``): per thread count and batch,
    its ratios (see there), interleaved medians."""
    rows: list[dict] = []
    old = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for batch in batches:
                n_calls = singles if batch == 1 else 1
                parts = [st.images[i * batch : (i + 1) * batch] for i in range(n_calls)]
                with torch.no_grad():
                    outs = [st.route(p) for p in parts]
                routes = [o[0] for o in outs]
                ratio = float(torch.cat([o[1] for o in outs]).mean())
                plan: dict[str, list] = {}  # "accuracy" / "flops" -> [(static key, weight), ...]
                if st.front:
                    if st.info.get("accuracy") is not None:
                        lo, hi, w = _bracket(st.front, "accuracy", st.info["accuracy"])
                        plan["accuracy"] = [(lo["key"], 1 - w), (hi["key"], w)]
                    lo, hi, w = _bracket(st.front, "flops_ratio", ratio)
                    plan["flops"] = [(lo["key"], 1 - w), (hi["key"], w)]
                else:
                    assert st.spaced is not None
                    plan["flops"] = [(st.spaced(ratio), 1.0)]

                def timed(fn: Callable, *extra: Any, parts: list = parts) -> Callable[[], None]:
                    def call() -> None:
                        with torch.no_grad():
                            for i, p in enumerate(parts):
                                fn(p, *(e[i] for e in extra))

                    return call

                fns = {
                    "full": timed(st.full),
                    "plain": timed(st.plain),
                    "routed": timed(st.route),
                    "raw": timed(st.replay, routes),
                }
                for steps_ in plan.values():
                    for key, _w in steps_:
                        fns.setdefault(f"static{key}", timed(st.static, [key] * n_calls))
                times = interleaved(fns, repeats, device)
                for kind, steps_ in plan.items():
                    times[f"static_{kind}"] = [sum(w * times[f"static{key}"][i] for key, w in steps_) for i in range(repeats)]
                n = batch * n_calls
                factor = 0.6 if batch == 1 else 0.8
                row = {
                    "env_id": name,
                    "backbone": st.net.arch,
                    "batch": batch,
                    "threads": n_threads,
                    "images": n,
                    "flops_ratio": round(ratio, 4),
                    "routed_vs_full": round(paired_ratio(times, "full", "routed"), 3),
                    "goal_routed_vs_full": round(factor / ratio, 3),
                    "raw_vs_full": round(paired_ratio(times, "full", "raw"), 3),
                    "router_overhead": round(paired_ratio(times, "routed", "raw") - 1.0, 3),
                    "routes_vs_static_same_flops": round(paired_ratio(times, "static_flops", "raw"), 3),
                    "routed_vs_static_same_accuracy": (
                        round(paired_ratio(times, "static_accuracy", "routed"), 3) if "accuracy" in plan else None
                    ),
                    "full_vs_plain": round(paired_ratio(times, "plain", "full"), 3),
                    "static_routes": {k: [[list(key), round(w, 3)] for key, w in v] for k, v in plan.items()},
                    "ms_per_image": {
                        k: round(1000 * _median(v) / n, 4)
                        for k, v in times.items()
                        if k in ("full", "plain", "routed", "raw", "static_flops", "static_accuracy")
                    },
                    "distinct_routes": st.distinct(routes),
                }
                row["met_routed_vs_full"] = bool(row["routed_vs_full"] >= row["goal_routed_vs_full"])
                rows.append(row)
                if bar is not None:
                    bar.update(1)
    finally:
        torch.set_num_threads(old)
    return rows


def format_routed(routed: dict) -> list[str]:
    """The routed-model section as a Markdown table (one row per setup, batch and thread count)."""
    lines = [
        "| setup | router | batch | threads | FLOPs | routed vs full (goal) | same routes, no router, vs full |"
        " router overhead | per-image routes vs static of same FLOPs | routed vs static of same accuracy |"
        " full vs plain torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in routed["rows"]:
        st = routed["setups"][r["env_id"]]
        router = "PPO" if st["router"].startswith("PPO") else "random"
        acc = r["routed_vs_static_same_accuracy"]
        lines.append(
            f"| {r['env_id'].split()[0]} ({r['backbone']}) | {router} | {r['batch']} | {r['threads']} | {r['flops_ratio']:.3f} |"
            f" {r['routed_vs_full']:.2f} ({r['goal_routed_vs_full']:.2f}) | {r['raw_vs_full']:.2f} |"
            f" {100 * r['router_overhead']:+.0f} % | {r['routes_vs_static_same_flops']:.2f} |"
            f" {'n/a' if acc is None else f'{acc:.2f}'} | {r['full_vs_plain']:.2f} |"
        )
    return lines


# -- the whole benchmark -------------------------------------------------------------------------------
def _run_main_sections(
    result: dict,
    dev: torch.device,
    repeats: int,
    groups: int,
    quick: bool,
    sb3_steps: int,
    sb3_rollouts: int,
    singles: int,
    bar,
) -> None:
    """Sections 1-3 (env vs raw, batching and SB3, speedup) into ``result``."""
    default_data, default_note = load_bench_data("shapes", (3, 32, 32))
    digits, digits_note = load_bench_data("digits", (1, 8, 8))
    archs = dict(PERF_ARCH)
    nets = {m: fresh_backbone(archs[m], default_data, groups, dev) for m in ("channel", "skip")}
    digit_nets = {m: fresh_backbone(archs[m], digits, groups, dev) for m in ("channel", "skip")}
    result["setup"] = {
        "quick": quick,
        "repeats": repeats,
        "statistic": "ratios: median over repeats of the ratio of two back-to-back measurements; speeds: median",
        "default_data": default_note,
        "digits_data": digits_note,
        "backbones": {ENV_OF_MODE[m]: archs[m] for m in nets},
        "groups": groups,
        "weights": "freshly built, untrained backbones in eval mode (speed does not depend on trained weights)",
        "sb3": {"algo": "PPO", "n_envs": 64, "n_steps": sb3_steps, "n_epochs": 1, "rollouts_per_measure": sb3_rollouts},
        "speedup_batch1_images": singles,
    }

    env = bench_env_vs_raw(default_data, nets, dev, repeats, bar=bar)
    result["env_vs_raw"] = env
    result["env_vs_raw_ratio"] = {k: round(v["ratio"], 3) for k, v in env.items()}

    limits: dict[str, dict] = {}
    sb3: dict[str, dict] = {}
    for dname, data, dnets in (("default", default_data, nets), ("digits", digits, digit_nets)):
        limits[dname], sb3[dname] = {}, {}
        for mode, net in dnets.items():
            limits[dname][ENV_OF_MODE[mode]] = bench_batching_limit(data, net, mode, dev, repeats)
            if bar is not None:
                bar.update(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sb3[dname][ENV_OF_MODE[mode]] = bench_sb3(
                    data, net, mode, dev, repeats, n_steps=sb3_steps, rollouts=sb3_rollouts
                )
            if bar is not None:
                bar.update(1)
    result["batching"] = limits
    result["batching_limit"] = {d: {k: round(v["batching_limit"], 3) for k, v in r.items()} for d, r in limits.items()}
    result["sb3"] = sb3
    result["sb3_native_vs_dummy_ratio"] = {d: {k: round(v["ratio"], 3) for k, v in r.items()} for d, r in sb3.items()}

    result["speedup"] = bench_speedup(default_data, nets, dev, repeats, singles=singles, bar=bar)


def run_perf(
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
    repeats: int = 9,
    quick: bool = False,
    threads: int | None = None,
    groups: int = 4,
    progress: bool = True,
    verbose: bool = True,
    export_only: bool = False,
    routed_only: bool = False,
    routers: str | Path | None = None,
    router_steps: int | None = None,
    table_out: str | Path | None = None,
    setups: Sequence[str] | None = None,
) -> dict:
    """Run the benchmark; print a table (``verbose``) and write JSON to ``out`` (when given).

    Args:
        out: path of the JSON file.
        device: torch device of the backbones and the envs.
        repeats: interleaved repeats per measurement (medians are reported); ``quick`` caps it at 3.
        quick: a smaller, faster run (fewer repeats, fewer SB3 steps, fewer batch-1 images) for a
            smoke check; its numbers are noisier.
        threads: ``torch.set_num_threads`` for the run (default: leave torch's setting).
        groups: channel groups of the backbones.
        export_only: run only the export section (:func:`bench_export`).
        routed_only: run only the routed-model section (:func:`bench_routed`): the table of what a
            user ships. It runs at 1 thread and at the default thread count (``threads`` when given).
        routers: a ``dyncnn-gym demo --out`` folder to load the PPO routers from (default: train them
            here with the demo's recipe).
        router_steps: PPO steps when training the routers here (default: the recipe's; ``quick``: 20000).
        table_out: also write the routed-model section as a Markdown table to this file.
        setups: the routed-model table's setups (names of :data:`ROUTED_SETUPS`; default
            :data:`DEFAULT_ROUTED_SETUPS`).

    Returns:
        A dict with ``machine``, ``setup``, ``env_vs_raw_ratio``, ``env_vs_raw``,
        ``sb3_native_vs_dummy_ratio``, ``batching_limit``, ``sb3``, ``speedup`` (list of rows with
        ``backbone, batch, routes, flops_ratio, wall_speedup, goal, met``), ``goals`` (every ratio with
        its goal), ``export`` (see :func:`bench_export`), ``routed`` (see :func:`bench_routed`) and
        ``seconds``. With ``export_only`` / ``routed_only``: ``machine``, ``setup``, that section,
        ``goals`` (empty) and ``seconds``.
    """
    start = time.perf_counter()
    dev = check_device(device)
    out_path = None if out is None else check_writable_file(out, "out")  # before the measurements
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer")
    if export_only and routed_only:
        raise ValueError("export_only and routed_only each run one section; choose one of them")
    old_threads = torch.get_num_threads()
    routed_threads = [threads] if threads is not None else sorted({1, old_threads})
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive integer or None")
        torch.set_num_threads(threads)
    if quick:
        repeats = min(repeats, 3)
    sb3_steps = 4 if quick else 8
    sb3_rollouts = 1 if quick else 2
    singles = 8 if quick else 32
    if quick and router_steps is None and routers is None:
        router_steps = 20_000
    setups = DEFAULT_ROUTED_SETUPS if setups is None else tuple(setups)
    bad = [x for x in setups if x not in ROUTED_SETUPS]
    if bad or not setups:
        raise ValueError(f"setups={list(setups)!r}: choose one or more of {list(ROUTED_SETUPS)}")
    n_routed = len(setups) * len(routed_threads) * len(ROUTED_BATCHES)
    try:
        result: dict[str, Any] = {"machine": machine_facts(dev)}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            total = 4 if export_only else n_routed if routed_only else 2 + 4 + 4 + 4 + 4 + n_routed
            bar = tqdm(total=total, desc="dyncnn-gym perf", unit="part", file=sys.stderr)
        if export_only or routed_only:
            section = "export" if export_only else "routed"
            result["setup"] = {"quick": quick, "repeats": repeats, "groups": groups, "sections": [section]}
        else:
            _run_main_sections(result, dev, repeats, groups, quick, sb3_steps, sb3_rollouts, singles, bar)
        if not routed_only:
            result["export"] = bench_export(dev, repeats, singles=singles, groups=groups, bar=bar)
        if not export_only:
            result["routed"] = bench_routed(
                dev, repeats, routed_threads, singles=singles, routers=routers, steps=router_steps, setups=setups, bar=bar
            )
        if bar is not None:
            bar.close()
        result["goals"] = _goals(result)
        result["seconds"] = round(time.perf_counter() - start, 1)
        try:
            result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
    finally:
        torch.set_num_threads(old_threads)
    if verbose:
        print(format_table(result))
    if table_out is not None and "routed" in result:
        write_text(table_out, "\n".join(format_routed(result["routed"])) + "\n")
        if verbose:
            print(f"wrote {table_out}")
    if out_path is not None:
        write_text(out_path, json.dumps(result, indent=2, default=_json_default) + "\n")
        if verbose:
            print(f"wrote {out_path}")
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _goals(result: dict) -> list[dict]:
    rows: list[dict] = []
    for r in result.get("routed", {}).get("rows", []):
        tag = f"{r['env_id']} batch {r['batch']} threads {r['threads']}"
        rows.append(
            {
                "metric": f"routed_vs_full {tag}",
                "value": r["routed_vs_full"],
                "goal": r["goal_routed_vs_full"],
                "met": r["met_routed_vs_full"],
            }
        )
        rows.append(
            {"metric": f"full_vs_plain {tag}", "value": r["full_vs_plain"], "goal": 1.0, "met": r["full_vs_plain"] >= 1.0}
        )
        if r["batch"] >= 256:
            v = r["routes_vs_static_same_flops"]
            rows.append({"metric": f"routes_vs_static_same_flops {tag}", "value": v, "goal": 0.8, "met": v >= 0.8})
            v = r["routed_vs_static_same_accuracy"]
            if v is not None:
                rows.append({"metric": f"routed_vs_static_same_accuracy {tag}", "value": v, "goal": 1.0, "met": v >= 1.0})
    if "env_vs_raw_ratio" not in result:  # --export-only / --routed-only: only the routed goals
        return rows
    for env_id, r in result["env_vs_raw_ratio"].items():
        rows.append({"metric": f"env_vs_raw_ratio {env_id}", "value": r, "goal": 0.8, "met": r >= 0.8})
    for d, per_env in result["sb3_native_vs_dummy_ratio"].items():
        for env_id, r in per_env.items():
            limit = result["batching_limit"][d][env_id]
            goal = round(0.8 * limit, 3) if d == "default" else 10.0
            rows.append(
                {
                    "metric": f"sb3_native_vs_dummy_ratio {d} {env_id}",
                    "value": r,
                    "goal": goal,
                    "met": r >= goal,
                    "batching_limit": limit,
                }
            )
    for s in result["speedup"]:
        rows.append(
            {
                "metric": f"speedup {s['backbone']} batch {s['batch']} {s['routes']} flops {s['flops_ratio']:.3f}",
                "value": s["wall_speedup"],
                "goal": s["goal"],
                "met": s["met"],
            }
        )
    return rows


def format_table(result: dict) -> str:
    """The result as a plain-text table."""
    m = result["machine"]
    lines = [
        f"dyncnn-gym perf on {m['device']} ({m['cpu']}, {m['cpus_usable']} usable CPUs, torch {m['torch']},"
        f" {m['torch_threads']} threads); medians of {result['setup']['repeats']} interleaved repeats",
    ]
    if "env_vs_raw" not in result:  # --export-only / --routed-only
        if "export" in result:
            lines += [f"export data: {result['export']['setup']['data']}", *format_export(result["export"])]
        if "routed" in result:
            lines += ["routed models (see docs/speed.md for the columns):", *format_routed(result["routed"])]
        lines.append(f"total {result['seconds']} s")
        return "\n".join(lines)
    lines += [
        f"default data: {result['setup']['default_data']}; digits: {result['setup']['digits_data']}",
        f"backbones: {result['setup']['backbones']}, {result['setup']['weights']}",
        "",
        f"{'metric':<66} {'value':>8} {'goal':>8}  met",
    ]
    for g in result["goals"]:
        lines.append(f"{g['metric']:<66} {g['value']:>8.3f} {g['goal']:>8.3f}  {'yes' if g['met'] else 'NO'}")
    lines.append("")
    lines.append(
        "env episodes/s (N=256) vs raw: "
        + ", ".join(
            f"{k}: {v['env_episodes_per_s']:.0f} vs {v['raw_episodes_per_s']:.0f}" for k, v in result["env_vs_raw"].items()
        )
    )
    for d, per in result["sb3"].items():
        lines.append(
            f"SB3 PPO env-steps/s on {d}: "
            + ", ".join(
                f"{k}: native {v['native_steps_per_s']:.0f} vs dummy {v['dummy_steps_per_s']:.0f}" for k, v in per.items()
            )
        )
    if "export" in result:
        lines += format_export(result["export"])
    if "routed" in result:
        lines += ["routed models:", *format_routed(result["routed"])]
    lines.append(f"total {result['seconds']} s")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``dyncnn-gym perf`` options to ``parser``."""
    parser.add_argument("--out", type=str, default=None, help="write the results as JSON to this file")
    parser.add_argument("--device", type=str, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast, noisier smoke run: 3 repeats, fewer SB3 steps and batch-1 images, routers trained for 20000 steps",
    )
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repeats per measurement (median reported)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's setting; 1 on a busy shared machine)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="run only the export section (exported routed model vs full backbone, shipped backbones)",
    )
    parser.add_argument(
        "--routed-only",
        action="store_true",
        help="run only the routed-model table (trained PPO routers and ResNet-110 vs full, static and plain networks)",
    )
    parser.add_argument(
        "--routers",
        type=str,
        default=None,
        help="a `dyncnn-gym demo --out` folder to load the PPO routers from (its models/<env id>-PPO.zip; default: train"
        " them with the demo's recipe)",
    )
    parser.add_argument(
        "--setup",
        action="append",
        choices=list(ROUTED_SETUPS),
        default=None,
        help=f"a setup of the routed-model table (repeatable; default: {', '.join(DEFAULT_ROUTED_SETUPS)})",
    )
    parser.add_argument(
        "--router-steps",
        type=int,
        default=None,
        help="PPO steps per router when training them here (default: the recipe's 150000; --quick: 20000)",
    )
    parser.add_argument(
        "--table-out",
        type=str,
        default=None,
        help="also write the routed-model table as Markdown to this file (default: none)",
    )
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run :func:`run_perf` with the options :func:`add_arguments` defined; returns the exit code 0."""
    run_perf(
        out=args.out,
        device=args.device,
        repeats=args.repeats,
        quick=args.quick,
        threads=args.threads,
        progress=not getattr(args, "no_progress", False),
        export_only=getattr(args, "export_only", False),
        routed_only=getattr(args, "routed_only", False),
        routers=getattr(args, "routers", None),
        router_steps=getattr(args, "router_steps", None),
        table_out=getattr(args, "table_out", None),
        setups=getattr(args, "setup", None),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="dyncnn-gym perf", description=__doc__.split("\n\n")[0]))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
