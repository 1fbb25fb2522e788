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

* ``routed`` — what a user ships (:func:`~dyncnn_gym.benchmark.routed_table.bench_routed`; ``--routed-only`` runs it alone, ``--table-out``
  writes its Markdown table): the demo's trained PPO routers on ``DynChannel-v1``, ``DynSkip-v1`` and
  ``DynExit-v1`` (width stages), dialed to their FLOPs targets (trained here with the recipe, or loaded
  with ``--routers DIR``; the ``-v0`` ids with ``--setup``), PPO on ``DynExit-v1`` with depth stages
  on the default ResNet-20 and the shipped ResNet-56 and on ``DynBlockDrop-v1`` (trained here), and
  ResNet-110 with random routers at about half of its blocks (per block, planned at once) or exits,
  at batch 1, 64 and 256, at 1 thread and at the default thread count: the routed model
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
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import check_device
from ..fileio import check_writable_file, write_text
from .routed_table import DEFAULT_ROUTED_SETUPS, ROUTED_BATCHES, ROUTED_SETUPS, bench_routed, format_routed
from .timing import fresh_backbone, interleaved, load_bench_data, machine_facts, median, paired_ratio

#: env id of each mode
ENV_OF_MODE = {"channel": "DynChannel-v0", "skip": "DynSkip-v0"}
#: FLOPs fractions the speedup table aims at
SPEEDUP_TARGETS = (0.25, 0.5, 0.75)

#: the archs every section measures (pinned, so that the committed figures stay reproducible)
PERF_ARCH = {"channel": "vgg", "skip": "resnet20-lite"}


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
        t_env, t_raw = median(times["env"]), median(times["raw"])
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
        "batched_images_per_s": batch / median(times["batched"]),
        "single_images_per_s": batch / median(times["single"]),
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
    t_native, t_dummy = median(times["native"]), median(times["dummy"])
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
                    "ms_per_image": {k: round(1000 * median(v) / n, 4) for k, v in times.items()},
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
        routed_only: run only the routed-model section (:func:`~dyncnn_gym.benchmark.routed_table.bench_routed`): the table of what a
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
        its goal), ``export`` (see :func:`bench_export`), ``routed`` (see :func:`~dyncnn_gym.benchmark.routed_table.bench_routed`) and
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
