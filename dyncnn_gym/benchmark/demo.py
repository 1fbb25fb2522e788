"""``dyncnn-gym demo``: the whole idea in one command on the embedded default data.

Loads (or pretrains and caches) the default backbones, trains PPO routers on ``DynChannel-v1``,
``DynSkip-v1`` and ``DynExit-v1`` (the width cascade) with the recipe of :mod:`dyncnn_gym.recipes`,
evaluates them on the whole test split against the full network, static routes (static exits for
``DynExit-v1``), a confidence cascade (:func:`~dyncnn_gym.benchmark.baselines.cascade_front`; on
``DynExit-v1`` the threshold cascade), random routes at the learned rates and a label-aware
oracle, prints a table, times the exported ``DynExit-v1`` router against the full network and the
static network of its accuracy (:func:`wall_clock`), and writes ``results.json``, PNG plots and
the trained SB3 models. ``envs=("DynBlockDrop-v1",)`` (``--env DynBlockDrop-v1``) does the
same for a router that plans every block of the skip backbone from one look, timed alike.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..envs.blockdrop import as_skip_env
from ..envs.core import RoutingCore, _shared_data
from ..envs.routing import make_core, mode_of
from ..fileio import check_writable_dir, save_sb3, write_json
from ..pretraining import DEFAULT_ARCH
from ..recipes import check_timesteps, recipe, train_ppo
from ..recipes import env_kwargs as recipe_env_kwargs
from . import plots
from .baselines import cascade_front, interpolate, oracle, random_policy_eval, static_baselines
from .protocol import evaluate

#: the envs the demo trains routers for: the newest one-pass width and depth envs and the early-exit env
DEMO_IDS = ("DynChannel-v1", "DynSkip-v1", "DynExit-v1")
#: the envs ``dyncnn-gym demo --env`` offers
DEMO_CHOICES = (*DEMO_IDS, "DynBlockDrop-v1", "DynExit-v0", "DynChannel-v0", "DynSkip-v0")
#: the modes :func:`run_demo`'s ``backbones`` may name
BACKBONE_MODES = ("channel", "skip", "exit")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k != "images"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def run_demo(
    out: str | Path = "demo_out",
    *,
    envs: tuple[str, ...] = DEMO_IDS,
    timesteps: int | None = None,
    dataset: Any = "shapes",
    backbones: dict[str, str] | None = None,
    seed: int = 0,
    progress: bool = True,
    decision_costs: str = "flops",
) -> dict[str, Any]:
    """Run the demo and write its outputs into ``out`` (see the module docstring). Returns the results.

    Args:
        out: output directory (checked to be writable before anything is trained).
        envs: env ids to train routers for (e.g. of :data:`DEMO_CHOICES`).
        timesteps: PPO steps per env, a positive integer (default ``None``: the recipe's).
        dataset: data set name (default: the embedded ``"shapes"``), or a loaded data set
            (:func:`dyncnn_gym.load_dataset`).
        backbones: per mode (``"channel"``, ``"skip"``, ``"exit"``), an arch name or checkpoint path to
            use instead of the default arch. ``DynExit-v1``'s width stages run on the ``"channel"`` one;
            an ``"exit"`` backbone (a ResNet with exits, e.g. the shipped ``"resnet56-exits+distill"``)
            makes it run depth stages on that backbone instead.
        seed: seeds PPO and the environments.
        progress: show progress bars.
        decision_costs: the routing envs' ``decision_costs`` (``"flops"`` or ``"time"``); ``"time"``
            only with ``envs`` of DynChannel, DynSkip and DynBlockDrop (the early exits price FLOPs only).
    """
    start = time.perf_counter()
    timesteps = check_timesteps(timesteps)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    backbones = dict(backbones or {})
    unknown = sorted(set(backbones) - set(BACKBONE_MODES))
    if unknown:
        raise ValueError(f"backbones has modes {unknown}; choose from {list(BACKBONE_MODES)}")
    if decision_costs not in ("flops", "time"):
        raise ValueError(f"decision_costs={decision_costs!r} is not a cost; choose 'flops' or 'time'")
    flops_only = [e for e in envs if mode_of(as_skip_env(e, {})[0]) == "exit"]
    if decision_costs != "flops" and flops_only:
        raise ValueError(
            f"decision_costs={decision_costs!r} prices the decisions of DynChannel, DynSkip and DynBlockDrop;"
            f" {flops_only} price FLOPs only: leave them out of envs (--env)"
        )
    out = check_writable_dir(out, "out")  # before any training: a run is not lost to an unwritable --out
    torch.manual_seed(seed)
    data = _shared_data(dataset)
    results: dict[str, Any] = {
        "command": _command(out, envs, timesteps, data.name, backbones, seed, decision_costs),
        "data": {
            "name": data.name,
            "fingerprint": data.fingerprint,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "n_val": len(data.split("val")) if data.has_val else 0,
        },
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "full": {},
        "static": {},
        "learned": [],
        "baselines": {},
    }
    for env_id in envs:
        route_id = as_skip_env(env_id, {})[0]  # DynBlockDrop routes through its DynSkip core
        mode = mode_of(route_id)
        if mode == "exit":
            _demo_exit(out, results, env_id, data, dataset, backbones, timesteps, seed, progress)
            continue
        env_kwargs = recipe_env_kwargs(env_id, dataset=dataset, backbone=backbones.get(mode, DEFAULT_ARCH[mode]), groups=4)
        if decision_costs != "flops":
            env_kwargs["decision_costs"] = decision_costs
        core, model, res, entry = _train_ppo(out, env_id, env_kwargs, timesteps, seed, progress)
        static = static_baselines(core)
        rnd = random_policy_eval(core, res["action_rates"], seed=seed)
        pool = static.get("exhaustive") or (static["uniform"] + static.get("greedy", []))
        orc = oracle(core, np.array([r["actions"] for r in pool], dtype=np.int64))
        cascade = cascade_front(core)
        results["full"][env_id] = {k: static["full"][k] for k in ("accuracy", "flops_ratio")}
        results["static"][env_id] = static
        results["baselines"][env_id] = {"random_matched": rnd, "oracle": orc, "cascade": cascade["points"]}
        results["learned"].append(
            {
                **entry,
                "static_front_accuracy_at_same_flops": interpolate(static["front"], res["flops_ratio"]),
                "cascade_accuracy_at_same_flops": interpolate(cascade["front"], res["flops_ratio"]),
                **{
                    k: res[k]
                    for k in ("action_rates", "mean_action", "routes", "by_difficulty", "difficulty_flops_spearman")
                    if k in res
                },
            }
        )
        name = env_id.split("-v")[0]
        plots.plot_fronts(
            out / f"{name}_front.png",
            f"{env_id} on {data.name} ({env_kwargs['backbone']})",
            static,
            [results["learned"][-1], *({**p, "algorithm": "confidence cascade", "baseline": True} for p in cascade["front"])],
            {"random (matched rates)": rnd, "oracle (knows label)": orc},
        )
        plots.plot_usage(
            out / f"{name}_usage.png",
            f"{env_id}: action frequency per decision",
            res["action_rates"],
            [f"{a + 1} groups" for a in range(core.A)] if mode == "channel" else ["skip", "execute"],
        )
        if "by_difficulty" in res:
            full_rows = _full_by_difficulty(core, res)
            plots.plot_difficulty(
                out / f"{name}_difficulty.png",
                f"{env_id}: compute and accuracy by difficulty",
                {"PPO": res["by_difficulty"], "full network": full_rows},
            )
        _plot_images(out / f"{name}_images.png", env_id, data, res, core.full)
        if route_id != env_id:  # one look per image, the lean router: timed as the early-exit one is
            results.setdefault("wall_clock", {})[env_id] = wall_clock(model, core, env_id, evaluated=res)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", _jsonable(results), indent=2)
    print(format_table(results))
    if results.get("wall_clock"):
        print("\n" + format_wall_clock(results))
    print(f"\nwrote {out / 'results.json'}, plots and models in {out}/ ({results['seconds']} s)")
    return results


def _demo_exit(
    out: Path, results: dict[str, Any], env_id: str, data, dataset: str, backbones: dict, timesteps, seed: int, progress: bool
) -> None:
    """The demo of an early-exit env (width stages on the channel backbone, by default the DynChannel
    default; depth stages on ``backbones["exit"]`` where given): PPO with the recipe against static
    exits, the confidence-threshold cascade, random exits at PPO's rates and the oracle."""
    from .exit_baselines import exit_oracle, random_exits, static_exits, threshold_cascade

    if "exit" in backbones:
        stages = "depth"
        env_kwargs = recipe_env_kwargs(env_id, dataset=dataset, backbone=backbones["exit"], stages="depth")
    else:
        stages = "width"
        env_kwargs = recipe_env_kwargs(env_id, dataset=dataset, backbone=backbones.get("channel", DEFAULT_ARCH["channel"]))
    core, model, res, entry = _train_ppo(out, env_id, env_kwargs, timesteps, seed, progress)
    static = static_exits(core)
    cascade = threshold_cascade(core)
    rnd = random_exits(core, res["exit_rates"], seed=seed)
    orc = exit_oracle(core)
    results["full"][env_id] = {k: static["full"][k] for k in ("accuracy", "flops_ratio")}
    results["static"][env_id] = {"exits": static["points"], "front": static["front"], "full": static["full"]}
    results["baselines"][env_id] = {"random_matched": rnd, "oracle": orc, "cascade": cascade["points"]}
    results["learned"].append(
        {
            **entry,
            "static_front_accuracy_at_same_flops": interpolate(static["front"], res["flops_ratio"]),
            "cascade_accuracy_at_same_flops": interpolate(cascade["front"], res["flops_ratio"]),
            **{k: res[k] for k in ("exit_rates", "by_difficulty", "difficulty_flops_spearman") if k in res},
        }
    )
    name = env_id.split("-v")[0]
    plots.plot_fronts(
        out / f"{name}_front.png",
        f"{env_id} on {data.name} ({stages} stages, {env_kwargs['backbone']})",
        results["static"][env_id],
        [results["learned"][-1], *({**p, "algorithm": "confidence cascade", "baseline": True} for p in cascade["front"])],
        {"random (matched rates)": rnd, "oracle (knows label)": orc},
    )
    if "by_difficulty" in res:
        plots.plot_difficulty(
            out / f"{name}_difficulty.png", f"{env_id}: compute and accuracy by difficulty", {"PPO": res["by_difficulty"]}
        )
    _plot_images(out / f"{name}_images.png", env_id, data, res, core.full)
    results.setdefault("wall_clock", {})[env_id] = wall_clock(model, core, env_id, evaluated=res)


def wall_clock(model: Any, core: Any, env_id: str, repeats: int = 5, evaluated: dict | None = None) -> dict[str, Any]:
    """The exported router's wall-clock on this machine: one batch of (up to) 256 test images, one
    thread, medians of ``repeats`` interleaved repeats, against the full network and the static network
    of the router's test accuracy (a row of ``dyncnn-gym perf``'s routed-model table,
    :func:`~dyncnn_gym.benchmark.routed_table.time_setup`). ``core``: the test-split core ``env_id``
    routes through (an ``ExitCore`` for the early exits, the ``DynSkip`` core for ``DynBlockDrop``);
    ``evaluated``: the model's :func:`evaluate` result on this env, if the caller has it."""
    from ..envs.exit_core import ExitCore
    from .routed_table import exit_timed_setup, route_timed_setup, time_setup

    timed = exit_timed_setup if isinstance(core, ExitCore) else route_timed_setup
    st = timed(model, core, env_id, evaluated=evaluated)
    batch = min(256, len(st.images))
    (row,) = time_setup(st, env_id, torch.device(core.device), repeats, threads=[1], batches=[batch])
    row["accuracy"] = st.info["accuracy"]
    row["repeats"] = repeats
    return row


def format_wall_clock(results: dict[str, Any]) -> str:
    """One line per timed router (see :func:`exit_wall_clock`)."""
    lines = []
    for env_id, r in results.get("wall_clock", {}).items():
        acc = r["routed_vs_static_same_accuracy"]
        lines.append(
            f"{env_id}, PPO exported as one model (batch {r['batch']}, {r['threads']} thread, medians of {r['repeats']}"
            f" interleaved repeats on this machine): {r['routed_vs_full']:.2f}x the full network's speed at"
            f" {r['flops_ratio']:.3f} of its FLOPs"
            + ("" if acc is None else f", {acc:.2f}x the static network of the same accuracy")
            + " (`dyncnn-gym perf --routed-only` times every router)"
        )
    return "\n".join(lines)


def _command(
    out: Path, envs: tuple[str, ...], timesteps: int | None, data: str, backbones: dict, seed: int, costs: str
) -> str:
    """The ``dyncnn-gym demo`` command line that runs the demo with these settings."""
    parts = ["dyncnn-gym demo", f"--out {out}"]
    if tuple(envs) != DEMO_IDS:
        parts += [f"--env {e}" for e in envs]
    if timesteps is not None:
        parts.append(f"--timesteps {timesteps}")
    if seed != 0:
        parts.append(f"--seed {seed}")
    if data != "shapes":
        parts.append(f"--data {data}")
    parts += [f"--backbone {mode}={name}" for mode, name in backbones.items()]
    if costs != "flops":
        parts.append(f"--decision-costs {costs}")
    return " ".join(parts)


def _train_ppo(
    out: Path, env_id: str, env_kwargs: dict[str, Any], timesteps: int | None, seed: int, progress: bool
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """Load (or pretrain) the backbone, train PPO with the recipe, save it under ``out/models`` and
    evaluate it on the test split: ``(core on the test split, the model, evaluate's result, the result
    entry's common part)``."""
    t0 = time.perf_counter()
    route_id, route_kwargs = as_skip_env(env_id, env_kwargs)  # DynBlockDrop routes through its DynSkip core
    core = make_core(route_id, 1, split="test", **route_kwargs)  # loads or pretrains the backbone
    t_backbone = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps = timesteps or recipe(env_id)["total_timesteps"]
    model = train_ppo(env_id, total_timesteps=steps, seed=seed, progress=progress, **env_kwargs)
    t_train = time.perf_counter() - t0
    rel = f"models/{env_id}-PPO.zip"
    save_sb3(model, out / rel)
    res = evaluate(model, env_id, per_image=True, **env_kwargs)
    entry = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "algorithm": type(model).__name__,
        "model_path": rel,
        "total_timesteps": steps,
        "train_seconds": round(t_train, 1),
        "backbone_seconds": round(t_backbone, 1),
        "accuracy": res["accuracy"],
        "flops_ratio": res["flops_ratio"],
        "dialed": res["dialed"],
    }
    return core, model, res, entry


def _plot_images(path: Path, env_id: str, data, res: dict[str, Any], full_flops: int) -> None:
    """A grid of test images ordered by the FLOPs each spent (``res``: :func:`evaluate` with ``per_image``)."""
    raw = data.test.images * data.std[None, :, None, None] + data.mean[None, :, None, None]
    img = res["images"]
    plots.plot_image_grid(path, f"{env_id}: test images by compute spent", raw, img["flops"] / full_flops, img["correct"])


def _full_by_difficulty(core: RoutingCore, res: dict[str, Any]) -> list[dict[str, Any]]:
    from .baselines import route_outcomes, uniform_routes

    correct, _ = route_outcomes(core, uniform_routes(core)[-1:])
    rows = []
    for r in res["by_difficulty"]:
        lo, hi = r["difficulty_lo"], r["difficulty_hi"]
        sel = (core.difficulty >= lo) & (
            (core.difficulty < hi) if r is not res["by_difficulty"][-1] else (core.difficulty <= hi)
        )
        rows.append({**r, "accuracy": float(correct[0, sel].mean()), "flops_ratio": 1.0})
    return rows


def _percent(accuracy: float | None) -> str:
    """An accuracy in percent with two decimals; ``n/a`` for a front that does not reach the FLOPs."""
    return "n/a" if accuracy is None or not np.isfinite(accuracy) else f"{100 * accuracy:.2f}"


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the demo's results."""
    lines = [
        "| env | policy | accuracy (%) | FLOPs ratio | static front at same FLOPs (%) |",
        "|---|---|---:|---:|---:|",
    ]
    for entry in results["learned"]:
        env_id = entry["env_id"]
        full = results["full"][env_id]
        exits = "exits" in results["static"][env_id]
        lines.append(
            f"| {env_id} | full network{' (last exit)' if exits else ''} | {100 * full['accuracy']:.2f} | {full['flops_ratio']:.3f} | |"
        )
        if exits:
            for row in results["static"][env_id]["exits"][:-1]:
                lines.append(
                    f"| {env_id} | every image at exit {row['exit']} | {100 * row['accuracy']:.2f} | {row['flops_ratio']:.3f} | |"
                )
        front = results["baselines"][env_id].get("cascade")
        if front:  # the cascade's point nearest PPO's FLOPs, and its front there
            best = min(front, key=lambda p: abs(p["flops_ratio"] - entry["flops_ratio"]))
            how = "" if exits else f" {best['cheap']}->{best['rich']}"
            lines.append(
                f"| {env_id} | confidence cascade{how}, threshold {best['threshold']} | {100 * best['accuracy']:.2f} |"
                f" {best['flops_ratio']:.3f} | {_percent(entry['cascade_accuracy_at_same_flops'])} (cascade front at PPO's FLOPs) |"
            )
        for row in results["static"][env_id].get("uniform", [])[:-1]:
            lines.append(f"| {env_id} | static {row['actions']} | {100 * row['accuracy']:.2f} | {row['flops_ratio']:.3f} | |")
        rnd = results["baselines"][env_id]["random_matched"]
        lines.append(f"| {env_id} | random at PPO's rates | {100 * rnd['accuracy']:.2f} | {rnd['flops_ratio']:.3f} | |")
        lines.append(
            f"| {env_id} | **{entry['algorithm']}** | **{100 * entry['accuracy']:.2f}** | **{entry['flops_ratio']:.3f}** |"
            f" {_percent(entry['static_front_accuracy_at_same_flops'])} |"
        )
        orc = results["baselines"][env_id]["oracle"]
        lines.append(
            f"| {env_id} | oracle (knows the label; upper bound) | {100 * orc['accuracy']:.2f} | {orc['flops_ratio']:.3f} | |"
        )
    return "\n".join(lines)
