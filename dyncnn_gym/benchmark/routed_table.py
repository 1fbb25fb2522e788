"""The routed-model table of ``dyncnn-gym perf --routed-only``: what a user ships (trained routers,
exported with their backbones) against the networks it replaces: the full network, the same routes
without the router, the static networks of the same FLOPs and of the same test accuracy, and the
full network written as a plain ``nn.Module``. See :func:`bench_routed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .timing import fresh_backbone, interleaved, load_bench_data, median, paired_range, paired_ratio

#: the routed-model table's setups: name -> (mode, backbone, router); mode ``exit-width`` / ``exit-depth``:
#: ``DynExit-v1`` with that kind of stages; "ppo": the demo's PPO recipe (:func:`dyncnn_gym.recipes.train_ppo`
#: on the embedded shapes data; on a ``-v1`` id the policy is dialed to the env's FLOPs target, as
#: ``evaluate`` and ``export`` do), "ppo-one-shot": the same recipe on ``DynBlockDrop-v1`` (every block
#: planned from the first observation; evaluated and exported through the ``DynSkip-v1`` core),
#: "random": :class:`RandomGates`, "random-one-shot": :class:`RandomPlans` (BlockDrop's form: every block from
#: the first observation)
ROUTED_SETUPS: dict[str, tuple[str, str, str]] = {
    "DynChannel-v1": ("channel", "vgg+sandwich+distill", "ppo"),
    "DynSkip-v1": ("skip", "resnet32-lite@skip", "ppo"),
    "DynChannel-v0": ("channel", "vgg+sandwich+distill", "ppo"),
    "DynSkip-v0": ("skip", "resnet32-lite@skip", "ppo"),
    "DynSkip-v0 resnet110": ("skip", "resnet110", "random"),
    "DynBlockDrop-v0 resnet110": ("skip", "resnet110", "random-one-shot"),
    "DynExit-v1": ("exit-width", "vgg+sandwich+distill", "ppo"),
    "DynExit-v1 depth": ("exit-depth", "resnet20-lite-exits+distill", "ppo"),
    "DynExit-v0 resnet110": ("exit-depth", "resnet110-exits", "random"),
    "DynExit-v0 resnet56": ("exit-depth", "resnet56-exits", "random"),
    "DynExit-v1 resnet56": ("exit-depth", "resnet56-exits+distill", "ppo"),
    "DynBlockDrop-v1": ("skip", "resnet32-lite@skip", "ppo-one-shot"),
    "DynExit-v0 resnet32": ("exit-depth", "resnet32-exits", "random"),
}
#: the setups measured by default: the routers ``dyncnn-gym demo`` trains and ships (``-v1``), PPO on the
#: depth-stage early exits of the default ResNet-20 and of the shipped ResNet-56 (trained here: 1 minute
#: each), PPO on DynBlockDrop-v1 (one observation per image; trained here: about a minute), and
#: ResNet-110 (blocks skipped, per block or planned at once, or exits) with random routers
DEFAULT_ROUTED_SETUPS = (
    "DynChannel-v1",
    "DynSkip-v1",
    "DynExit-v1",
    "DynExit-v1 depth",
    "DynExit-v1 resnet56",
    "DynBlockDrop-v1",
    "DynSkip-v0 resnet110",
    "DynBlockDrop-v0 resnet110",
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


class RandomPlans(nn.Sequential):
    """:class:`RandomGates` in BlockDrop's form, for timing: a PPO-sized MLP ``obs -> 64 -> 64 -> T``
    (tanh) with random weights whose keep logits are ``sin(50 x)``, so that a
    :class:`~dyncnn_gym.policies.OneShotHead` around it plans per-image pseudo-random routes that run
    about half of the ``T`` blocks, from one observation per image."""

    def __init__(self, obs_dim: int, T: int, seed: int = 0) -> None:
        from ..policies import Sine

        super().__init__(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, T), Sine(50.0))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                    m.bias.zero_()


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


def load_router(routers: str | Path, env_id: str) -> tuple[Any, str]:
    """The PPO router for ``env_id`` that ``dyncnn-gym demo --out ROUTERS`` saved (its
    ``models/<env id>-PPO.zip``, or ``<env id>-PPO.zip`` in the folder itself), and its path."""
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
        model: the exported routed model (a :class:`~dyncnn_gym.routed.RoutedNet`) where the setup
            routes channels or blocks; ``None`` for early exits.
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
    model: Any = None


def routed_setup(
    env_id: str, device: torch.device, routers: str | Path | None, steps: int | None, progress: bool
) -> TimedSetup:
    """One setup of the routed-model table: the exported model, its test-split accuracy and routes, and the
    static front (or a FLOPs-matched static route where there is no front). See :func:`bench_routed`."""
    from ..envs.core import RoutingCore
    from ..envs.routing import make_core
    from ..recipes import env_kwargs as recipe_env_kwargs

    mode, arch, router = ROUTED_SETUPS[env_id]
    base_id = env_id.split()[0]
    info: dict[str, Any] = {"env_id": env_id, "mode": mode, "backbone": arch}
    if mode.startswith("exit-"):
        return _exit_setup(env_id, device, routers, steps, progress, info)
    if router.startswith("ppo"):
        from ..envs.blockdrop import as_skip_env

        kw = recipe_env_kwargs(base_id, dataset="shapes", backbone=arch, groups=4, device=str(device))
        route_id, route_kw = as_skip_env(base_id, kw)  # DynBlockDrop-v1 routes through the DynSkip-v1 core
        core = make_core(route_id, 1, split="test", **route_kw)  # the id's registered defaults (a -v1 FLOPs target)
        one_shot = router == "ppo-one-shot"  # trained here: the default demo trains no one-shot router
        model = _ppo_router(base_id, kw, None if one_shot else routers, steps, progress, info)
        return route_timed_setup(model, core, base_id, info)
    data, _note = load_bench_data("shapes", (3, 32, 32))
    core = RoutingCore(mode, 1, dataset=data, backbone=fresh_backbone(arch, data, 4, device), split="test", device=str(device))
    if router == "random-one-shot":
        from ..policies import OneShotHead

        policy: Any = OneShotHead(RandomPlans(core.observation_space.shape[0], core.T))
        info["router"] = "RandomPlans (one look: a random PPO-sized MLP, sin(50 x) keep logits: ~50 % of blocks per image)"
    else:
        policy = RandomGates(core.observation_space.shape[0])
        info["router"] = "RandomGates (a random PPO-sized MLP, sin(50 x) execute score: ~50 % of blocks per image)"
    return route_timed_setup(policy, core, base_id, info, trained=False)


def route_timed_setup(
    policy: Any,
    core: Any,
    env_id: str,
    info: dict | None = None,
    trained: bool = True,
    evaluated: dict | None = None,
    select_on: int = 1000,
) -> TimedSetup:
    """What :func:`time_setup` times for a router of channel or skip decisions: ``policy`` (anything
    :func:`dyncnn_gym.export` accepts) exported on ``core`` (a :class:`~dyncnn_gym.envs.core.RoutingCore`
    on the test split; for a ``DynBlockDrop`` id, the ``DynSkip`` core it routes through; a ``-v1``
    policy is dialed to its target as ``evaluate`` dials it), against the full network and the static
    routes of the same backbone (uniform and greedy, the static front on the test split).
    ``trained=False`` (an untrained backbone): no accuracies, and an evenly spaced static skip route
    of the routes' FLOPs in place of the front. ``evaluated``: :func:`~dyncnn_gym.evaluate`'s result
    for ``policy`` on ``env_id``, when the caller has it (otherwise it is evaluated here).
    ``select_on``: images the greedy static routes are chosen on, of the held-out and of the train
    split (:func:`~dyncnn_gym.benchmark.baselines.static_baselines`; fewer for deep backbones)."""
    from ..walk import run_routes
    from .baselines import static_baselines
    from .plain import plain_copy
    from .protocol import evaluate

    mode = core.mode
    info = {"env_id": env_id, "mode": mode, "backbone": core.net.arch} if info is None else info
    if trained:
        res = evaluate(policy, env_id, core=core) if evaluated is None else evaluated  # dialed to a -v1 target
        info.update(accuracy=res["accuracy"], test_flops_ratio=res["flops_ratio"], dialed=res["dialed"])
        points = _route_front(static_baselines(core, select_on=select_on)["front"], info)
    else:
        info["static_front"], points = None, None
    rn = _export(policy, core)  # export dials as evaluate does
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
        static=lambda x, key: net.static_forward(x, mode, key),
        front=points,
        spaced=None if points else (lambda ratio: tuple(spaced_route(table, ratio))),
        distinct=lambda acts: int(torch.cat(acts).unique(dim=0).shape[0]),
        model=rn,
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
        model, where = load_router(routers, env_id)
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
            return net.static_forward(x, "channel", key)

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
    ResNet-56 with exits), on ``DynBlockDrop-v1`` and on the ``-v0`` ids
    (trained here), and ResNet-110 with :class:`RandomGates`. Batch 1 is a loop over ``singles`` test images; batch ``N``
    one call on ``N`` test images. Measured interleaved, per row:

    * ``full``: the package's full network; ``plain``: the same network as a plain ``nn.Module``
      (:func:`~dyncnn_gym.benchmark.plain.plain_copy`);
    * ``routed``: the exported routed model (router included); ``raw``: the same routes without the
      router (:func:`~dyncnn_gym.walk.run_routes`; :func:`~dyncnn_gym.exit_walk.run_fixed_exits`);
    * the static networks of the static front (uniform + greedy routes on the test split; for depth
      exits, the truncated networks) that bracket the router's test accuracy and its FLOPs ratio;
      their times are interpolated (per repeat) by accuracy and by FLOPs. Without a front
      (ResNet-110, untrained), an evenly spaced skip route of the routes' FLOPs (:func:`spaced_route`).

    Ratios (medians over repeats of per-repeat ratios): ``routed_vs_full``,
    ``static_same_flops_vs_full`` (full / static of the routes' FLOPs: where the FLOPs-based goal
    ``goal_routed_vs_full`` sits against what a static network of those FLOPs runs at), ``raw_vs_full``,
    ``router_overhead`` (routed / raw - 1), ``routes_vs_static_same_flops`` (static / raw),
    ``routed_vs_static_same_accuracy`` (static / routed), ``full_vs_plain`` (plain / full); ``ranges``:
    ``[min, max]`` over the repeats of ``routed_vs_full`` and ``routed_vs_static_same_accuracy``.
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
                    "static_same_flops_vs_full": round(paired_ratio(times, "full", "static_flops"), 3),
                    "raw_vs_full": round(paired_ratio(times, "full", "raw"), 3),
                    "router_overhead": round(paired_ratio(times, "routed", "raw") - 1.0, 3),
                    "routes_vs_static_same_flops": round(paired_ratio(times, "static_flops", "raw"), 3),
                    "routed_vs_static_same_accuracy": (
                        round(paired_ratio(times, "static_accuracy", "routed"), 3) if "accuracy" in plan else None
                    ),
                    "full_vs_plain": round(paired_ratio(times, "plain", "full"), 3),
                    "ranges": {  # [min, max] over the repeats of the two headline ratios
                        "routed_vs_full": paired_range(times, "full", "routed"),
                        "routed_vs_static_same_accuracy": (
                            paired_range(times, "static_accuracy", "routed") if "accuracy" in plan else None
                        ),
                    },
                    "static_routes": {k: [[list(key), round(w, 3)] for key, w in v] for k, v in plan.items()},
                    "ms_per_image": {
                        k: round(1000 * median(v) / n, 4)
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
        "| setup | router | batch | threads | FLOPs | routed vs full (goal) | static of same FLOPs vs full |"
        " same routes, no router, vs full | router overhead | per-image routes vs static of same FLOPs |"
        " routed vs static of same accuracy | full vs plain torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in routed["rows"]:
        st = routed["setups"][r["env_id"]]
        router = "PPO" if st["router"].startswith("PPO") else "random"
        acc = r["routed_vs_static_same_accuracy"]
        ceiling = r.get("static_same_flops_vs_full")  # absent from tables written before it was measured
        lines.append(
            f"| {r['env_id'].split()[0]} ({r['backbone']}) | {router} | {r['batch']} | {r['threads']} | {r['flops_ratio']:.3f} |"
            f" {r['routed_vs_full']:.2f} ({r['goal_routed_vs_full']:.2f}) | {'n/a' if ceiling is None else f'{ceiling:.2f}'} |"
            f" {r['raw_vs_full']:.2f} |"
            f" {100 * r['router_overhead']:+.0f} % | {r['routes_vs_static_same_flops']:.2f} |"
            f" {'n/a' if acc is None else f'{acc:.2f}'} | {r['full_vs_plain']:.2f} |"
        )
    return lines
