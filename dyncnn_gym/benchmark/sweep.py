"""``dyncnn-gym sweep``: the learning figures of the package — PPO (recipe) over a sweep of compute
weights, frozen and co-trained, judged against static networks of the same cost.

For every env and compute weight it trains PPO with the recipe of :mod:`dyncnn_gym.recipes` on the
default (or given) frozen backbone, and — with ``cotrain`` — once more on a private copy of the
backbone that :class:`~dyncnn_gym.callbacks.BackboneFinetuneCallback` fine-tunes under the
policy's routes (RNP's alternating schedule). Every policy is evaluated on the whole test split
(with the backbone it was trained with) and each point is compared with

* ``uniform``: the static network of the same mean FLOPs, interpolated between the uniform static
  routes (the same width / skip decision everywhere) — the comparison the issue defines;
* ``greedy``: the front of per-decision static routes (a different static width per layer, chosen
  on train images) — a stricter static baseline, since it already beats uniform widths;
* ``random_matched``: random routes with the point's own per-decision action rates;
* ``cascade``: the confidence cascade's front (:func:`~dyncnn_gym.benchmark.baselines.cascade_front`),
  a hand-made adaptive router.

Where the data has a ``"val"`` split, every point is also measured on those held-out images
(five times the shapes test split) against the full network and static fronts measured there. With
``ensemble=K``, every K of a frozen setting's seeds are also routed as one policy (the mean of their
action log-probabilities, :class:`~dyncnn_gym.benchmark.calibrate.CostBiasedPolicy`).

Co-trained points are also compared with the uniform static routes of *their own* fine-tuned
backbone (does routing still beat static after fine-tuning, or did fine-tuning only improve the
network?).

Input adaptivity: per point, the Spearman correlation of difficulty and FLOPs over all test images
and over the images the full network classifies correctly, and FLOPs / accuracy per difficulty bin.
"""

from __future__ import annotations

import copy
import itertools
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: default compute weights per reward loss term and env: they span the FLOPs where each backbone
#: starts to lose accuracy (``"error"`` weights are in accuracy, ``"ce"`` ones in nats, per FLOPs ratio)
DEFAULT_WEIGHTS: dict[str, dict[str, tuple[float, ...]]] = {
    "error": {"DynChannel-v0": (0.02, 0.05, 0.1, 0.2), "DynSkip-v0": (0.1, 0.2, 0.25, 0.3, 0.5)},
    "ce": {"DynChannel-v0": (0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0), "DynSkip-v0": (0.5, 1.0, 2.0, 4.0)},
}


def _interp(points: list[dict[str, Any]], x: float) -> float:
    """Accuracy of the Pareto front of ``points`` at FLOPs ratio ``x`` (linear between points)."""
    from .baselines import interpolate, pareto

    return interpolate(pareto(points), x)


def _adaptivity(core, res: dict[str, Any], full_correct: np.ndarray) -> dict[str, Any]:
    from .protocol import spearman

    img = res["images"]
    out: dict[str, Any] = {}
    if core.has_difficulty:
        d = core.difficulty
        ratio = img["flops"] / core.full
        out["spearman_all"] = spearman(d, ratio)
        out["spearman_full_correct"] = spearman(d[full_correct], ratio[full_correct])
        out["spearman_full_wrong"] = (
            spearman(d[~full_correct], ratio[~full_correct]) if (~full_correct).sum() > 2 else float("nan")
        )
        out["flops_full_correct"] = float(ratio[full_correct].mean())
        out["flops_full_wrong"] = float(ratio[~full_correct].mean()) if (~full_correct).any() else float("nan")
    return out


def run_sweep(
    out: str | Path = "sweep_out",
    *,
    envs: tuple[str, ...] = ("DynChannel-v0", "DynSkip-v0"),
    dataset: str = "shapes",
    backbone: str | None = None,
    weights: dict[str, tuple[float, ...]] | None = None,
    timesteps: int | None = None,
    cotrain: bool = True,
    frozen: bool = True,
    seed: int | tuple[int, ...] = 0,
    finetune_kwargs: dict[str, Any] | None = None,
    loss: str | None = None,
    targets: dict[str, tuple[float, ...]] | None = None,
    target_measure: str = "train",
    calibrate: tuple[float, ...] = (),
    shaping: str | None = None,
    ensemble: int = 0,
    progress: bool = True,
    ray: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the sweep and write ``out/results.json``, ``out/summary.md`` and a fronts plot per env.

    Args:
        envs: env ids.
        dataset: data name (the default backbones of that data are used, frozen unless co-trained).
        backbone: instead of each env's default backbone, this one (a backbone name, see
            :func:`~dyncnn_gym.pretraining.parse_backbone`, or a checkpoint path) for every env.
        weights: per env id, the compute weights (default :data:`DEFAULT_WEIGHTS`).
        timesteps: PPO steps per point, a positive integer (default ``None``: the recipe's).
        cotrain / frozen: which variants to run.
        seed: seeds PPO, the envs and the fine-tuning batches; several seeds train every point once
            per seed and the summary adds mean ± std over seeds.
        finetune_kwargs: arguments of :class:`~dyncnn_gym.callbacks.BackboneFinetuneCallback`
            (with ``cotrain`` only); kept in the results under ``"finetune"``.
        loss: the reward's classification term, ``"error"`` or ``"ce"`` (see :mod:`dyncnn_gym.envs.rewards`;
            default: the recipe's, ``"error"``).
        targets: per env id, FLOPs ratios to steer to instead of fixed weights: each such point
            starts at the recipe's weight and adapts it with
            :class:`~dyncnn_gym.callbacks.FlopsTargetCallback` (``measure=target_measure``). An env
            with targets runs only the weights given for it in ``weights`` (none by default).
        target_measure: ``"train"`` (the training episodes) or ``"eval"`` (deterministic routing of
            held-out images); see :class:`~dyncnn_gym.callbacks.FlopsTargetCallback`.
        calibrate: FLOPs ratios to dial every trained policy to after training, with a cost bias
            chosen on held-out images (:func:`~dyncnn_gym.benchmark.calibrate.calibrate`); each is
            evaluated on the test split like the point itself, under ``point["calibrated"]``.
        shaping: the envs' reward shaping (``"none"`` or ``"continuation"``; default: the recipe's).
        ensemble: 0 (off) or ``K`` in ``[2, len(seed)]``: after training, every combination of K
            seeds of each frozen setting is routed as one ensemble policy and evaluated (and dialed to
            every ``calibrate`` target) like a point, under ``entry["ensembles"]``.
        ray: ``None`` (points trained here, one after the other), ``"local"`` (a local Ray) or a Ray
            cluster address: each (env, weight or target, variant, seed) point is a Ray task
            (:mod:`~dyncnn_gym.benchmark.runner`); the results equal the serial run's.
        workers: CPUs of a local Ray (default: all).
    """
    from ..callbacks import BackboneFinetuneCallback, FlopsTargetCallback, check_augment
    from ..envs.core import RoutingCore
    from ..envs.routing import mode_of
    from ..fileio import check_writable_dir, write_json, write_text
    from ..pretraining import DEFAULT_ARCH
    from ..recipes import check_timesteps, recipe
    from ..recipes import env_kwargs as recipe_env_kwargs
    from .baselines import cascade_front, static_baselines
    from .demo import _jsonable
    from .runner import run_jobs

    if not (cotrain or frozen):
        raise ValueError("cotrain=False and frozen=False leave nothing to run; enable at least one")
    timesteps = check_timesteps(timesteps)
    from ..envs.rewards import Reward

    loss = loss or recipe(envs[0])["env"]["loss"]
    Reward.make(loss=loss)  # a bad loss term raises here, naming the choices, before DEFAULT_WEIGHTS[loss]
    targets = {e: tuple(ts) for e, ts in (targets or {}).items() if ts}
    for t in (t for ts in targets.values() for t in ts):
        FlopsTargetCallback(t, measure=target_measure)  # bad values raise here, before any training
    if cotrain:
        BackboneFinetuneCallback(**(finetune_kwargs or {}))  # bad arguments raise here, before any training
    elif finetune_kwargs:
        raise ValueError(f"finetune_kwargs={finetune_kwargs!r} configure co-training, but cotrain=False runs none")
    calibrate = tuple(calibrate)
    for t in calibrate:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 < t <= 1:
            raise ValueError(f"calibrate target {t!r} is not a FLOPs ratio; use values in (0, 1]")
    settings = {
        e: [("weight", w) for w in (weights or {}).get(e, ())] + [("target", t) for t in targets[e]]
        if e in targets
        else [("weight", w) for w in {**DEFAULT_WEIGHTS[loss], **(weights or {})}[e]]
        for e in envs
    }
    from .runner import check_executor

    check_executor(ray, workers)  # before any training: bad --workers, or Ray missing
    out = check_writable_dir(out, "out")  # before any training: a run is not lost to an unwritable --out
    log = print if progress else (lambda *a, **k: None)
    start = time.perf_counter()
    seeds = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not seeds:
        raise ValueError("seed=() gives nothing to run; pass at least one seed")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seed={seed!r}: seeds are integers >= 0")
    if ensemble:
        if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or not 2 <= ensemble <= len(seeds):
            raise ValueError(
                f"ensemble={ensemble!r} must be 0 (off) or a number of seeds in [2, {len(seeds)}] (the seeds given)"
            )
        if not frozen:
            raise ValueError("ensemble needs the frozen variant: co-trained seeds fine-tune different backbones")
    results: dict[str, Any] = {
        "dataset": dataset,
        "seeds": list(seeds),
        "loss": loss,
        "timesteps": {},
        "envs": {},
        **({"finetune": dict(finetune_kwargs or {})} if cotrain else {}),
    }
    for env_id in envs:
        mode = mode_of(env_id)
        kwargs = recipe_env_kwargs(
            env_id,
            dataset=dataset,
            backbone=backbone or DEFAULT_ARCH[mode],
            groups=4,
            loss=loss,
            **({"shaping": shaping} if shaping else {}),
        )
        start_weight = kwargs.pop("compute_weight")  # set per point; where a FLOPs target steers it, its start
        core = RoutingCore(mode, 1, split="test", **kwargs)
        if cotrain and (finetune_kwargs or {}).get("augment"):
            check_augment(core.data)  # before the static baselines, which take minutes
        for t in calibrate:  # before any training: a target no route reaches would fail after it
            try:
                core.check_flops_ratio(t, "calibrate")
            except ValueError as e:
                raise ValueError(f"{env_id}: {e}") from None
        static = static_baselines(core)
        cascade = cascade_front(core)["front"]
        fronts = {**static, "cascade": cascade}  # what every point is compared with on the test split
        # a second opinion on more images than the test split holds: the held-out "val" split
        held_static = static_baselines(core, split="val") if core.data.has_val else None
        steps = timesteps or recipe(env_id)["total_timesteps"]
        results["timesteps"][env_id] = steps
        entry: dict[str, Any] = {
            "env_kwargs": kwargs,
            "full": static["full"],
            "uniform": static["uniform"],
            "greedy_front": static["front"],
            "cascade_front": cascade,
            "points": [],
        }
        if held_static is not None:
            entry["held_out"] = {
                "split": "val",
                "n_images": held_static["full"]["n_images"],
                "full": held_static["full"],
                "uniform": held_static["uniform"],
                "greedy_front": held_static["front"],
            }
        variants = (["frozen"] if frozen else []) + (["cotrained"] if cotrain else [])
        jobs = [
            SweepJob(
                env_id=env_id,
                kwargs=kwargs,
                start_weight=start_weight,
                how=how,
                value=value,
                variant=variant,
                seed=seed,
                steps=steps,
                finetune_kwargs=dict(finetune_kwargs or {}),
                target_measure=target_measure,
                calibrate=calibrate,
                fronts=fronts,
                held_static=held_static,
                keep_model=bool(ensemble) and variant == "frozen",
            )
            for seed, (how, value), variant in ((sd, s, v) for sd in seeds for s in settings[env_id] for v in variants)
        ]
        outputs = run_jobs(sweep_job, jobs, ray_address=ray, workers=workers, log=log, describe=_describe_job)
        members: dict[tuple[str, float], list[tuple[int, Any, Any]]] = {}  # frozen (how, value) -> (seed, model, test core)
        for job, o in zip(jobs, outputs):
            point = o["point"]
            entry["points"].append(point)
            log(
                f"[sweep] {env_id} {'compute_weight' if job.how == 'weight' else 'flops_target'}={job.value} {job.variant}"
                f" seed {job.seed}: accuracy {point['accuracy']:.4f} at FLOPs {point['flops_ratio']:.3f}: vs uniform static"
                f" {point['vs_uniform_static_points']:+.2f}, vs greedy static {point['vs_greedy_static_points']:+.2f} points"
                f" ({point['train_seconds']:.0f} s)"
            )
            for c in point.get("calibrated", []):
                log(
                    f"[sweep]   calibrated to {c['target']} (bias {c['bias']:+.3f}): accuracy {c['accuracy']:.4f} at FLOPs"
                    f" {c['flops_ratio']:.3f}, vs greedy static {c['vs_greedy_static_points']:+.2f}"
                )
            if o.get("model") is not None:
                test_core = RoutingCore(mode, 500, split="test", **{**kwargs, "backbone": core.net, "shaping": "none"})
                members.setdefault((job.how, job.value), []).append((job.seed, _model_from_bytes(o["model"]), test_core))
        if ensemble:
            entry["ensembles"] = [
                _ensemble_point(env_id, how, value, group, fronts, held_static, calibrate, log)
                for (how, value), ms in members.items()
                for group in itertools.combinations(ms, int(ensemble))
            ]
        results["envs"][env_id] = entry
        plot_sweep(out, results, env_id)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", _jsonable(results), indent=2)
    text = format_summary(results)
    write_text(out / "summary.md", text)
    log(text)
    return results


@dataclass(frozen=True)
class SweepJob:
    """One point of a sweep: PPO trained at one compute weight (or FLOPs target) on a frozen or a
    co-trained backbone with one seed, then evaluated (the unit ``run_jobs`` runs, serially or on Ray)."""

    env_id: str
    kwargs: dict
    start_weight: float
    how: str
    value: float
    variant: str
    seed: int
    steps: int
    finetune_kwargs: dict
    target_measure: str
    calibrate: tuple
    fronts: dict
    held_static: dict | None
    keep_model: bool = False


def _model_from_bytes(data: bytes) -> Any:
    """An SB3 model from the bytes of its saved zip, read by the safe loader."""
    import tempfile

    from ..sb3_files import load_sb3_model

    with tempfile.TemporaryDirectory(prefix="dyncnn_gym-model-") as tmp:
        path = Path(tmp) / "model.zip"
        path.write_bytes(data)
        return load_sb3_model(path)


def _describe_job(job: SweepJob) -> str:
    key = "compute_weight" if job.how == "weight" else "flops_target"
    return f"{job.env_id} {key}={job.value} {job.variant} seed {job.seed}"


def sweep_job(job: SweepJob) -> dict[str, Any]:
    """Train and evaluate one sweep point (deterministic given the job, see
    :func:`~dyncnn_gym.benchmark.runner.job_context`). Returns ``{"point"}``, and with ``keep_model``
    the trained model as SB3 zip bytes under ``"model"`` (for ensembles)."""
    import io

    from ..callbacks import BackboneFinetuneCallback, FlopsTargetCallback
    from ..envs.core import RoutingCore
    from ..envs.routing import mode_of
    from ..recipes import train_ppo
    from .baselines import random_policy_eval, route_outcomes, static_baselines, uniform_routes
    from .calibrate import held_out_accuracy
    from .protocol import evaluate
    from .runner import job_context

    mode = mode_of(job.env_id)
    kwargs, fronts, held_static = job.kwargs, job.fronts, job.held_static
    core = RoutingCore(mode, 1, split="test", **kwargs)  # memoised probes and scales: before the seeding
    full_correct = route_outcomes(core, uniform_routes(core)[-1:])[0][0]
    with job_context(job.seed):
        net = core.net if job.variant == "frozen" else copy.deepcopy(core.net)
        w = job.value if job.how == "weight" else job.start_weight
        env_kwargs = {**kwargs, "backbone": net, "compute_weight": w}
        callbacks: list[Any] = []
        if job.variant == "cotrained":
            callbacks.append(BackboneFinetuneCallback(seed=job.seed, **job.finetune_kwargs))
        if job.how == "target":
            callbacks.append(FlopsTargetCallback(job.value, measure=job.target_measure, seed=job.seed))
        t0 = time.perf_counter()
        # the test core is built before training so that it shares the observation scales
        # and probes the policy was trained with (memoised per backbone object); evaluation
        # reads no rewards, so it skips the shaping's full-width passes
        test_core = RoutingCore(mode, 500, split="test", **{**env_kwargs, "shaping": "none"})
        model = train_ppo(
            job.env_id, total_timesteps=job.steps, seed=job.seed, progress=False, callback=callbacks or None, **env_kwargs
        )
        secs = time.perf_counter() - t0
        res = evaluate(model, job.env_id, per_image=True, core=test_core)
        x, acc = res["flops_ratio"], res["accuracy"]
        point: dict[str, Any] = {
            "variant": job.variant,
            "compute_weight": w if job.how == "weight" else callbacks[-1].weight,
            **(
                {
                    "flops_target": job.value,
                    "flops_target_measure": job.target_measure,
                    "start_weight": w,
                    "flops_target_history": callbacks[-1].history,
                }
                if job.how == "target"
                else {}
            ),
            "seed": job.seed,
            "accuracy": acc,
            "flops_ratio": x,
            "flops_saved": 1.0 - x,
            **_comparisons(acc, x, fronts),
            "random_matched": random_policy_eval(core, res["action_rates"], seed=job.seed),
            "train_seconds": round(secs, 1),
            **{k: res[k] for k in ("action_rates", "by_difficulty", "difficulty_flops_spearman") if k in res},
            **_adaptivity(core, res, full_correct),
        }
        if held_static is not None:
            point["held_out"] = _held_out_comparison(*held_out_accuracy(test_core, model), held_static)
        if job.calibrate:
            point["calibrated"] = [
                _calibrated(model, job.env_id, test_core, t, job.seed, fronts, held_static) for t in job.calibrate
            ]
        if job.variant == "cotrained":
            tuned = RoutingCore(mode, 1, split="test", **{**kwargs, "backbone": net})
            own = static_baselines(tuned, greedy=False)["uniform"]
            point["own_uniform"] = own
            point["vs_own_uniform_static_points"] = 100 * (acc - _interp(own, x))
            point["finetune"] = callbacks[0].history[-1] if callbacks[0].history else {}
    out: dict[str, Any] = {"point": point}
    if job.keep_model:
        buf = io.BytesIO()
        model.save(buf)
        out["model"] = buf.getvalue()
    return out


def _comparisons(acc: float, x: float, fronts: dict[str, Any]) -> dict[str, float]:
    """Accuracy points of a policy at FLOPs ratio ``x`` against the ``full`` network and the
    ``uniform``, greedy static (``front``) and, where given, ``cascade`` fronts of the same images."""
    return {
        "gap_to_full_points": 100 * (fronts["full"]["accuracy"] - acc),
        "vs_uniform_static_points": 100 * (acc - _interp(fronts["uniform"], x)),
        "vs_greedy_static_points": 100 * (acc - _interp(fronts["front"], x)),
        **({"vs_cascade_points": 100 * (acc - _interp(fronts["cascade"], x))} if "cascade" in fronts else {}),
    }


def _held_out_comparison(acc: float, x: float, held_static: dict[str, Any]) -> dict[str, float]:
    """A policy's accuracy and FLOPs ratio on the held-out images against the full network and the
    static fronts measured on the same images (accuracy points)."""
    return {"accuracy": acc, "flops_ratio": x, "flops_saved": 1.0 - x, **_comparisons(acc, x, held_static)}


def _ensemble_point(
    env_id: str,
    how: str,
    value: float,
    group: tuple,
    fronts: dict[str, Any],
    held_static: dict[str, Any] | None,
    calibrate: tuple[float, ...],
    log: Any,
) -> dict[str, Any]:
    """One ensemble of frozen seeds (``group``: ``(seed, model, test core)`` triples of one setting)
    evaluated on the test split like a point, on the held-out images, and dialed to each target."""
    from .calibrate import CostBiasedPolicy, held_out_accuracy
    from .protocol import evaluate

    seeds = [sd for sd, _, _ in group]
    models = [m for _, m, _ in group]
    test_core = group[0][2]  # the seeds share the frozen backbone, so their test cores are alike
    policy = CostBiasedPolicy(models)
    res = evaluate(policy, env_id, core=test_core)
    acc, x = res["accuracy"], res["flops_ratio"]
    e: dict[str, Any] = {
        "variant": "frozen",
        "seeds": seeds,
        **({"compute_weight": value} if how == "weight" else {"flops_target": value}),
        "accuracy": acc,
        "flops_ratio": x,
        "flops_saved": 1.0 - x,
        **_comparisons(acc, x, fronts),
    }
    if held_static is not None:
        e["held_out"] = _held_out_comparison(*held_out_accuracy(test_core, policy), held_static)
    if calibrate:
        e["calibrated"] = [_calibrated(models, env_id, test_core, t, seeds[0], fronts, held_static) for t in calibrate]
    log(
        f"[sweep] ensemble of seeds {seeds} ({how} {value}): accuracy {acc:.4f} at FLOPs {x:.3f},"
        f" vs greedy static {e['vs_greedy_static_points']:+.2f}"
        + "".join(f"; dialed to {c['target']}: {c['accuracy']:.4f} at {c['flops_ratio']:.3f}" for c in e.get("calibrated", []))
    )
    return e


def _calibrated(
    model: Any,
    env_id: str,
    test_core: Any,
    target: float,
    seed: int,
    fronts: dict[str, Any],
    held_static: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``model`` dialed to ``target`` on held-out images, then evaluated on the test split against
    ``fronts`` (see :func:`_comparisons`) and, with ``held_static``, on all held-out images too."""
    from .calibrate import calibrate, held_out_accuracy
    from .protocol import evaluate

    biased = calibrate(model, target, test_core, seed=seed)
    res = evaluate(biased, env_id, core=test_core)
    acc, x = res["accuracy"], res["flops_ratio"]
    held_acc, held_flops = held_out_accuracy(test_core, biased)
    return {
        "target": target,
        "bias": biased.bias,
        "val_flops_ratio": biased.val_flops_ratio,
        "held_out_accuracy": held_acc,
        "held_out_flops_ratio": held_flops,
        **({"held_out": _held_out_comparison(held_acc, held_flops, held_static)} if held_static else {}),
        "accuracy": acc,
        "flops_ratio": x,
        "flops_saved": 1.0 - x,
        **_comparisons(acc, x, fronts),
    }


def plot_sweep(out: str | Path, results: dict[str, Any], env_id: str) -> Path:
    """``out/<env>_sweep.png``: each variant's points against the static fronts and the confidence
    cascade's; with several seeds, the mean per compute weight as a line and every seed's point
    (and dialed point) as a faint marker."""
    from . import plots

    e = results["envs"][env_id]
    static = {"uniform": e["uniform"], "greedy": e["greedy_front"], "front": e["greedy_front"]}
    seeds = results.get("seeds", [0])
    learned: list[dict[str, Any]] = []
    for (variant, w), ps in _by_variant_and_weight(e["points"]).items():
        if len(seeds) > 1:
            learned.append(
                {
                    "algorithm": f"PPO {variant} (mean of {len(ps)} seeds)",
                    "compute_weight": w,
                    "accuracy": float(np.mean([p["accuracy"] for p in ps])),
                    "flops_ratio": float(np.mean([p["flops_ratio"] for p in ps])),
                }
            )
            learned += [{**p, "algorithm": f"PPO {variant} (single seeds)", "scatter": True} for p in ps]
        else:
            learned += [{**p, "algorithm": f"PPO {variant}"} for p in ps]
    for p in e["points"]:
        learned += [
            {**c, "algorithm": f"PPO {p['variant']}, dialed to {c['target']}", "scatter": True}
            for c in p.get("calibrated", [])
        ]
    learned += [
        {**c, "algorithm": "confidence cascade (front)", "baseline": True, "color": "black"}
        for c in e.get("cascade_front", [])
    ]
    title = f"{env_id} on {results['dataset']}: PPO sweep vs static"
    return plots.plot_fronts(Path(out) / f"{env_id.replace('-v0', '')}_sweep.png", title, static, learned, {})


def _setting(p: dict[str, Any]) -> float | str:
    """What a point fixed: its compute weight, or ``"target <f>"`` where a FLOPs target steered it."""
    return f"target {p['flops_target']}" if "flops_target" in p else p["compute_weight"]


def _by_variant_and_weight(points: list[dict[str, Any]]) -> dict[tuple[str, float | str], list[dict[str, Any]]]:
    groups: dict[tuple[str, float | str], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["variant"], _setting(p)), []).append(p)
    return groups


def format_summary(results: dict[str, Any]) -> str:
    """A Markdown table per env: every point against full, uniform static and greedy static, and,
    with several seeds, the mean ± std over seeds per variant and weight."""
    seeds = results.get("seeds", [results.get("seed", 0)])
    shaping = {e["env_kwargs"].get("shaping", "none") for e in results["envs"].values()} - {"none"}
    lines = [
        f"Data `{results['dataset']}`, seeds {seeds}; PPO recipe, steps {results['timesteps']};"
        f" reward loss term `{results.get('loss', 'ce')}`"
        + (f"; reward shaping `{', '.join(sorted(shaping))}`" if shaping else "")
        + (
            f"; co-trained with `BackboneFinetuneCallback({_kwargs_repr(results['finetune'])})`"
            if results.get("finetune")
            else ""
        )
        + ".",
        "",
    ]
    for env_id, e in results["envs"].items():
        full = e["full"]["accuracy"]
        casc = "cascade_front" in e  # results.json written before the cascade baseline existed lack it
        lines += [
            f"**{env_id}** (full network {100 * full:.2f} %)",
            "",
            "| variant | weight | seed | FLOPs saved | accuracy | vs full | vs uniform static | vs greedy static |"
            + (" vs cascade |" if casc else "")
            + " vs matched random | Spearman diff./FLOPs (all / full-correct) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if casc else ""),
        ]
        for p in e["points"]:
            own = f" ({p['vs_own_uniform_static_points']:+.2f} own)" if "vs_own_uniform_static_points" in p else ""
            sp = " / ".join(_fmt(p.get(k)) for k in ("spearman_all", "spearman_full_correct"))
            setting = f"{_setting(p)} (w {p['compute_weight']:.3g})" if "flops_target" in p else p["compute_weight"]
            lines.append(
                f"| {p['variant']} | {setting} | {p.get('seed', seeds[0])} | {100 * p['flops_saved']:.1f} % | {100 * p['accuracy']:.2f} |"
                f" {-p['gap_to_full_points']:+.2f} | {p['vs_uniform_static_points']:+.2f}{own} | {p['vs_greedy_static_points']:+.2f} |"
                + (f" {_fmt(p.get('vs_cascade_points'))} |" if casc else "")
                + f" {100 * (p['accuracy'] - p['random_matched']['accuracy']):+.2f} | {sp} |"
            )
        lines.append("")
        if casc:
            cf = ", ".join(f"{100 * c['accuracy']:.2f} % at {c['flops_ratio']:.3f}" for c in e["cascade_front"])
            lines += [
                f"Confidence cascade front (probe thresholds chosen on held-out images, measured on the test split): {cf}.",
                "",
            ]
        lines += _calibrated_table(e["points"], seeds, casc)
        if len(seeds) > 1:
            lines += [
                f"Mean ± std over seeds {seeds}:",
                "",
                "| variant | weight | FLOPs saved | accuracy | vs full | vs uniform static | vs greedy static |"
                + (" vs cascade |" if casc else ""),
                "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if casc else ""),
            ]
            for (variant, w), ps in _by_variant_and_weight(e["points"]).items():

                def ms(key: str, scale: float = 1.0, sign: str = "", ps=ps) -> str:
                    return _mean_std(ps, key, scale, sign)

                lines.append(
                    f"| {variant} | {w} | {ms('flops_saved', 100)} % | {ms('accuracy', 100)} | {ms('gap_to_full_points', -1, '+')} |"
                    f" {ms('vs_uniform_static_points', 1, '+')} | {ms('vs_greedy_static_points', 1, '+')} |"
                    + (f" {ms('vs_cascade_points', 1, '+')} |" if casc else "")
                )
            lines.append("")
        lines += _held_out_table(e, seeds)
        lines += _ensemble_table(e)
    return "\n".join(lines)


def _ensemble_table(e: dict[str, Any]) -> list[str]:
    """Mean ± std over the seed ensembles of each setting, trained and dialed, on the test split and
    (where measured) the held-out images, with how many are within 1 point of the full network."""
    ens = e.get("ensembles")
    if not ens:
        return []
    held = "held_out" in ens[0]
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for g in ens:
        groups.setdefault((_setting(g), "trained"), []).append(g)
        for c in g.get("calibrated", []):
            groups.setdefault((_setting(g), f"dialed to {c['target']}"), []).append(c)
    k = len(ens[0]["seeds"])
    lines = [
        f"Ensembles of {k} frozen seeds (mean action log-probabilities), every combination of the seeds,"
        " mean ± std over the combinations; `within 1` counts those within 1 point of the full network:",
        "",
        "| trained at | point | ensembles | FLOPs saved | accuracy | vs full | within 1 | vs greedy static | vs cascade |"
        + (" held-out vs full | held-out within 1 | held-out vs greedy static |" if held else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if held else ""),
    ]
    for (setting, point), rows in groups.items():
        hs = [r["held_out"] for r in rows if "held_out" in r]
        line = (
            f"| {setting} | {point} | {len(rows)} | {_mean_std(rows, 'flops_saved', 100)} % | {_mean_std(rows, 'accuracy', 100)} |"
            f" {_mean_std(rows, 'gap_to_full_points', -1, '+')} | {sum(r['gap_to_full_points'] <= 1.0 + 1e-9 for r in rows)} |"
            f" {_mean_std(rows, 'vs_greedy_static_points', 1, '+')} | {_mean_std(rows, 'vs_cascade_points', 1, '+')} |"
        )
        if held:
            line += (
                f" {_mean_std(hs, 'gap_to_full_points', -1, '+')} | {sum(h['gap_to_full_points'] <= 1.0 + 1e-9 for h in hs)} |"
                f" {_mean_std(hs, 'vs_greedy_static_points', 1, '+')} |"
            )
        lines.append(line)
    lines.append("")
    return lines


def _held_out_table(e: dict[str, Any], seeds: list[int]) -> list[str]:
    """Mean ± std over seeds of every trained and dialed point on all held-out images, against the
    full network and the static fronts measured on those images."""
    held = e.get("held_out")
    if not held:
        return []
    groups: dict[tuple[str, Any, str], list[dict[str, Any]]] = {}
    for p in e["points"]:
        if "held_out" in p:
            groups.setdefault((p["variant"], _setting(p), "trained"), []).append(p["held_out"])
        for c in p.get("calibrated", []):
            if "held_out" in c:
                groups.setdefault((p["variant"], _setting(p), f"dialed to {c['target']}"), []).append(c["held_out"])
    if not groups:
        return []
    lines = [
        f"Second opinion on all {held['n_images']} held-out `{held['split']}` images (full network"
        f" {100 * held['full']['accuracy']:.2f} % there; static fronts measured on the same images), mean ± std over"
        f" seeds {seeds}. A dialed bias was chosen on 2 000 of these images, by FLOPs only:",
        "",
        "| variant | trained at | point | FLOPs saved | accuracy | vs full | vs uniform static | vs greedy static |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (variant, setting, point), hs in groups.items():
        lines.append(
            f"| {variant} | {setting} | {point} | {_mean_std(hs, 'flops_saved', 100)} % | {_mean_std(hs, 'accuracy', 100)} |"
            f" {_mean_std(hs, 'gap_to_full_points', -1, '+')} | {_mean_std(hs, 'vs_uniform_static_points', 1, '+')} |"
            f" {_mean_std(hs, 'vs_greedy_static_points', 1, '+')} |"
        )
    lines.append("")
    return lines


def _mean_std(rows: list[dict[str, Any]], key: str, scale: float = 1.0, sign: str = "") -> str:
    """``"mean ± std"`` (sample std; 0 for one value) of ``scale * row[key]`` over the rows where it
    is a finite number (a point below a front's cheapest end has none); ``"n/a"`` if there are none."""
    v = scale * np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    return f"{v.mean():{sign}.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def _dialed_cells(c: dict[str, Any], casc: bool = False) -> str:
    """FLOPs saved, accuracy and the comparisons of one dialed point, as Markdown cells."""
    return (
        f" {100 * c['flops_saved']:.1f} % | {100 * c['accuracy']:.2f} | {-c['gap_to_full_points']:+.2f} |"
        f" {c['vs_uniform_static_points']:+.2f} | {c['vs_greedy_static_points']:+.2f} |"
        + (f" {_fmt(c.get('vs_cascade_points'))} |" if casc else "")
    )


def _calibrated_table(points: list[dict[str, Any]], seeds: list[int], casc: bool = False) -> list[str]:
    rows = [(p, c) for p in points for c in p.get("calibrated", [])]
    if not rows:
        return []
    ch, cr = (" vs cascade |", "---:|") if casc else ("", "")
    lines = [
        "Dialed to a FLOPs target after training (cost bias chosen on held-out images, evaluated on the test split):",
        "",
        "| variant | trained at | seed | target | bias | FLOPs saved | accuracy | vs full | vs uniform static | vs greedy static |"
        + ch,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + cr,
    ]
    for p, c in rows:
        lines.append(
            f"| {p['variant']} | {_setting(p)} | {p.get('seed', seeds[0])} | {c['target']} | {c['bias']:+.3f} |"
            + _dialed_cells(c, casc)
        )
    lines.append("")
    if len(seeds) > 1:
        groups: dict[tuple[str, Any, float], list[tuple[Any, dict[str, Any]]]] = {}
        for p, c in rows:
            groups.setdefault((p["variant"], _setting(p), c["target"]), []).append((p.get("seed"), c))
        lines += [
            f"Dialed, mean ± std over seeds {seeds}:",
            "",
            "| variant | trained at | target | FLOPs saved | accuracy | vs full | vs uniform static | vs greedy static |" + ch,
            "|---|---|---:|---:|---:|---:|---:|---:|" + cr,
        ]
        for (variant, setting, t), sc in groups.items():
            cs = [c for _, c in sc]
            lines.append(
                f"| {variant} | {setting} | {t} | {_mean_std(cs, 'flops_saved', 100)} % | {_mean_std(cs, 'accuracy', 100)} |"
                f" {_mean_std(cs, 'gap_to_full_points', -1, '+')} | {_mean_std(cs, 'vs_uniform_static_points', 1, '+')} |"
                f" {_mean_std(cs, 'vs_greedy_static_points', 1, '+')} |"
                + (f" {_mean_std(cs, 'vs_cascade_points', 1, '+')} |" if casc else "")
            )
        lines.append("")
        lines += [
            "One policy per setting, the seed chosen by its accuracy on all held-out images (test split unseen):",
            "",
            "| variant | trained at | target | chosen seed | held-out accuracy | FLOPs saved | accuracy | vs full |"
            " vs uniform static | vs greedy static |" + ch,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + cr,
        ]
        for (variant, setting, t), sc in groups.items():
            scored = [
                (seed, c) for seed, c in sc if "held_out_accuracy" in c
            ]  # results.json written before it existed lack it
            if scored:
                seed, c = max(scored, key=lambda x: x[1]["held_out_accuracy"])  # the first seed on a tie
                lines.append(
                    f"| {variant} | {setting} | {t} | {seed} | {100 * c['held_out_accuracy']:.2f} |" + _dialed_cells(c, casc)
                )
        lines.append("")
    return lines


def _kwargs_repr(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.2f}"


def add_arguments(p) -> None:
    from .runner import add_executor_arguments

    p.add_argument("--out", default="sweep_out", help="output directory (default: sweep_out)")
    p.add_argument("--env", action="append", choices=list(DEFAULT_WEIGHTS["error"]), help="only this env (repeatable)")
    p.add_argument("--data", default="shapes", help="data set name (default: shapes)")
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone of every env: a backbone name ('arch[@mode][+sandwich][+distill][+augment]', e.g. vgg) or a"
        " checkpoint path (default: each env's own)",
    )
    p.add_argument(
        "--weight",
        type=float,
        action="append",
        default=None,
        help="compute weight (repeatable; default: per env, see dyncnn_gym.benchmark.sweep.DEFAULT_WEIGHTS)",
    )
    p.add_argument(
        "--flops-target",
        type=float,
        action="append",
        default=None,
        metavar="RATIO",
        help="steer the compute weight to this FLOPs ratio (repeatable; replaces the default weights,"
        " see dyncnn_gym.callbacks.FlopsTargetCallback)",
    )
    p.add_argument(
        "--target-measure",
        default="train",
        choices=["train", "eval"],
        help="how --flops-target measures FLOPs: the training episodes (default) or deterministic routing of held-out images",
    )
    p.add_argument(
        "--calibrate",
        type=float,
        action="append",
        default=None,
        metavar="RATIO",
        help="also dial every trained policy to this FLOPs ratio with a cost bias chosen on held-out"
        " images, and evaluate that (repeatable; see dyncnn_gym.benchmark.calibrate)",
    )
    p.add_argument("--timesteps", type=int, default=None, help="PPO steps per point (default: the recipe's)")
    p.add_argument("--no-cotrain", action="store_true", help="frozen backbones only")
    p.add_argument("--no-frozen", action="store_true", help="co-trained backbones only")
    p.add_argument(
        "--finetune-augment",
        action="store_true",
        help="co-training shifts the fine-tuning images by up to 2 pixels (BackboneFinetuneCallback(augment=True))",
    )
    p.add_argument(
        "--finetune-distill",
        action="store_true",
        help="co-training distils routes from the full network, which it trains on the labels"
        " (BackboneFinetuneCallback(distill=True))",
    )
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (several: mean ± std in the summary)")
    from ..envs.rewards import LOSS_KINDS

    p.add_argument(
        "--loss",
        default=None,
        choices=list(LOSS_KINDS),
        help="the reward's classification term: 0/1 error or clipped cross-entropy (default: the recipe's, error)",
    )
    from ..envs.core import SHAPINGS

    p.add_argument(
        "--shaping",
        default=None,
        choices=list(SHAPINGS),
        help="reward shaping of the envs (default: the recipe's, none; see the env docstrings)",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="also route every K of each frozen setting's seeds as one policy (mean action"
        " log-probabilities) and evaluate it like a point (default 0: off)",
    )
    add_executor_arguments(p, "(env, weight or target, variant, seed) point")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_from_args(args) -> int:
    envs = tuple(args.env or DEFAULT_WEIGHTS["error"])
    weights = {e: tuple(args.weight) for e in envs} if args.weight else None
    for w in args.weight or []:
        if not w > 0:
            raise ValueError(f"--weight {w!r} must be a positive compute weight")
    targets = {e: tuple(args.flops_target) for e in envs} if args.flops_target else None
    run_sweep(
        args.out,
        envs=envs,
        dataset=args.data,
        backbone=args.backbone,
        weights=weights,
        timesteps=args.timesteps,
        cotrain=not args.no_cotrain,
        frozen=not args.no_frozen,
        seed=tuple(args.seed),
        loss=args.loss,
        targets=targets,
        target_measure=args.target_measure,
        calibrate=tuple(args.calibrate or ()),
        shaping=args.shaping,
        ensemble=args.ensemble,
        progress=not args.quiet,
        ray=args.ray,
        workers=args.workers,
        finetune_kwargs={k: True for k, on in (("augment", args.finetune_augment), ("distill", args.finetune_distill)) if on},
    )
    return 0
