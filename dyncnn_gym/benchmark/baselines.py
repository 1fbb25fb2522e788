"""Baselines on the test split: the full network, static routes, random routes, a confidence
cascade, and a label-aware oracle.

All of them route images through the same :class:`~dyncnn_gym.walk.Walk` the envs use, so their
accuracy and FLOPs are measured exactly like a learned policy's.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np
import torch

from ..envs.core import RoutingCore
from ..models.layers import tensor_version
from ..walk import Walk, run_routes

#: per backbone: (data fingerprint, split, limit, weights version, route) -> correct bool [N]
_OUTCOMES: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def _weights_version(net: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever any parameter or buffer of ``net`` is modified in place (optimiser steps,
    ``load_state_dict``, batch-norm statistics), so cached outcomes never outlive the weights."""
    return tuple(tensor_version(t) for t in net.state_dict(keep_vars=True).values())


@torch.no_grad()
def route_outcomes(
    core: RoutingCore, routes: np.ndarray, split: str = "test", limit: int | None = None, batch: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness and FLOPs of every image under every static route.

    Args:
        routes: int64 ``[R, T]`` action sequences.
        split: ``"test"`` (the core's images), ``"train"`` (for selecting routes without
            touching the test split) or ``"val"`` (held-out images, where the data has them).
        limit: use only the first ``limit`` images of the split.
        batch: images walked at once.

    Returns:
        ``correct`` bool ``[R, N]`` and ``flops`` int64 ``[R]`` (a static route costs the same on every image).

    Routes that share a prefix share its computation: the routes are walked as a prefix tree
    (:func:`_walk_tree`), so a prefix is computed once, whichever routes continue it. What that
    saves depends on where the routes differ: a front's greedy routes that lower late decisions
    share most of their work, routes that differ in their first decision share none. Each route's
    outcome is bit for bit what walking it alone gives. Per-route outcomes are
    memoised per backbone and weights version, so the static baselines, the oracle and the
    per-difficulty tables that share routes evaluate each route once.
    """
    routes = np.asarray(routes, dtype=np.int64)
    X, y = _split_arrays(core, split, limit)
    correct = np.zeros((len(routes), len(y)), dtype=bool)
    flops = np.array([core.table.path_flops(r) for r in routes], dtype=np.int64)
    memo, version = _memo(core, split, limit, len(y))
    keys = [(version, tuple(int(a) for a in route)) for route in routes]
    todo: dict[tuple, list[int]] = {}  # route -> its rows in ``routes``, for the routes not memoised
    for r, key in enumerate(keys):
        if key in memo:
            correct[r] = memo[key]
        else:
            todo.setdefault(key[1], []).append(r)
    if todo:
        unique = np.array(list(todo), dtype=np.int64).reshape(len(todo), -1)
        rows_of = list(todo.values())  # rows_of[u]: the rows of ``routes`` that are route ``unique[u]``
        for i in range(0, len(y), batch):
            labels = y[i : i + batch]
            walk = Walk(core.net, core.mode, X[i : i + batch])
            for u, logits in _walk_tree(walk, unique, np.arange(len(unique))):
                correct[rows_of[u], i : i + batch] = logits.argmax(1).cpu().numpy() == labels
        for key, rows in todo.items():
            memo[(version, key)] = correct[rows[0]].copy()
    return correct, flops


def _walk_tree(walk: Walk, routes: np.ndarray, members: np.ndarray):
    """Yield ``(index, logits)`` for every route ``routes[index]`` (int64 ``[R, T]``, distinct) in
    ``members``, all of which agree with the decisions ``walk`` has taken so far.

    A depth-first walk of the routes' prefix tree: at each decision the routes are split by their
    action; every branch but the largest continues a shallow copy of the walk (:meth:`Walk.select`
    of all its rows: no tensor is copied, and the shared feature maps are never changed in place),
    the largest continues the walk itself. So every distinct prefix is computed once, and besides
    the current walk at most log2(R) walks wait for their largest branch.
    """
    T = routes.shape[1]
    while walk.t < T:
        acts = routes[members, walk.t]
        values, counts = np.unique(acts, return_counts=True)
        last = int(np.argmax(counts))  # the largest branch continues this walk, in place
        for k, a in enumerate(values.tolist()):
            if k != last:
                branch = walk.select(np.arange(len(walk)))
                branch.advance(a)
                yield from _walk_tree(branch, routes, members[acts == a])
        if len(values) > 1:
            members = members[acts == values[last]]
        walk.advance(int(values[last]))
    logits = walk.logits()
    for m in members.tolist():
        yield m, logits


def _memo(core: RoutingCore, split: str, limit: int | None, n: int) -> tuple[dict, tuple]:
    """The outcome memo of ``core``'s backbone and the key prefix of ``split``'s first ``n`` images."""
    return _OUTCOMES.setdefault(core.net, {}), (core.data.fingerprint, core.mode, split, limit, n, _weights_version(core.net))


def lowered_outcomes(
    core: RoutingCore, route: np.ndarray, split: str = "test", limit: int | None = None, batch: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`route_outcomes` of the routes one step cheaper than ``route`` (int64 ``[T]``): for every
    decision ``t`` with ``route[t] > 0``, ``route`` with ``route[t] - 1``.

    Returns the candidates int64 ``[R, T]`` (in the order of ``t``), ``correct`` bool ``[R, N]``
    and ``flops`` int64 ``[R]``. The candidates share ``route``'s prefix up to their decision, which
    :func:`route_outcomes` computes once.
    """
    route = np.asarray(route, dtype=np.int64)
    ts = np.flatnonzero(route > 0)
    cands = np.repeat(route[None], len(ts), axis=0)
    cands[np.arange(len(ts)), ts] -= 1
    correct, flops = route_outcomes(core, cands, split=split, limit=limit, batch=batch)
    return cands, correct, flops


def _split_arrays(core: RoutingCore, split: str, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Images ``[N, C, H, W]`` (on the core's device) and labels ``[N]`` of ``split``, the first ``limit`` of them."""
    if split == "test":
        X, y = core.images, core.labels
    else:
        s = core.data.split(split)
        X, y = torch.as_tensor(s.images).to(core.device), np.asarray(s.labels)
    if limit is not None:
        X, y = X[:limit], y[:limit]
    return X, y


def selection_split(core: RoutingCore) -> str:
    """Where baselines choose their settings: the held-out ``"val"`` split where the data has one,
    else ``"train"``."""
    return "val" if core.data.has_val else "train"


def uniform_routes(core: RoutingCore) -> np.ndarray:
    """The same action at every decision: ``A`` routes (static widths; skip none / skip all)."""
    return np.repeat(np.arange(core.A)[:, None], core.T, axis=1).astype(np.int64)


def greedy_routes(core: RoutingCore, select_on: int = 1000, split: str | None = None) -> np.ndarray:
    """A nested family of static routes found greedily on the first ``select_on`` images of ``split``:
    by default the held-out ``"val"`` split where the data has one, else ``"train"`` (never the test
    split).

    Starting from the full network, repeatedly lower one decision by one step (one group less, or
    skip one more block), choosing the change that loses the fewest correct images per FLOP saved,
    until every decision is at its smallest action. Returns int64 ``[K, T]`` routes, full first.
    """
    split = selection_split(core) if split is None else split
    if split == "test":
        raise ValueError("greedy_routes selects routes on 'val' or 'train' images, not on the test split they are scored on")
    route = np.full(core.T, core.A - 1, dtype=np.int64)
    out = [route.copy()]
    base_correct, _ = route_outcomes(core, route[None], split=split, limit=select_on)
    base_acc, base_flops = base_correct.mean(), core.table.path_flops(route)
    while (route > 0).any():
        cands, correct, flops = lowered_outcomes(core, route, split=split, limit=select_on)
        acc = correct.mean(1)
        cost = (base_acc - acc) / np.maximum(base_flops - flops, 1)
        best = int(np.argmin(cost))
        route = cands[best]
        base_acc, base_flops = acc[best], flops[best]
        out.append(route.copy())
    return np.stack(out)


def all_routes(core: RoutingCore, max_routes: int = 256) -> np.ndarray | None:
    """Every route (``A ** T`` of them) when there are at most ``max_routes``, else ``None``."""
    if core.A**core.T > max_routes:
        return None
    return np.array(list(itertools.product(range(core.A), repeat=core.T)), dtype=np.int64)


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points not dominated in (higher accuracy, lower flops_ratio), sorted by flops_ratio."""
    pts = sorted(points, key=lambda p: (p["flops_ratio"], -p["accuracy"]))
    front, best = [], -1.0
    for p in pts:
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def interpolate(front: list[dict[str, Any]], flops_ratio: float) -> float:
    """Accuracy of a front (sorted by flops_ratio) at ``flops_ratio``, linear between its points.

    Outside the front's FLOPs range: NaN below its cheapest point, its best accuracy above.
    """
    xs = np.array([p["flops_ratio"] for p in front])
    ys = np.array([p["accuracy"] for p in front])
    if flops_ratio < xs[0] - 1e-12:
        return float("nan")
    return float(np.interp(flops_ratio, xs, ys))


def static_baselines(
    core: RoutingCore, greedy: bool = True, select_on: int = 1000, split: str = "test", select_split: str | None = None
) -> dict[str, Any]:
    """``full``, ``uniform`` (same action everywhere), ``greedy`` (per-decision static routes chosen
    greedily, :func:`greedy_routes`) or, when there are few, ``exhaustive`` routes, and their Pareto
    ``front`` — all on the whole ``split`` (the test split, or e.g. the held-out ``"val"`` images
    for a second opinion).

    The greedy routes are chosen on the first ``select_on`` images of ``select_split`` (``"val"`` or
    ``"train"``), or by default of both where the data has a held-out ``"val"`` split (two families,
    each row's ``selected_on`` says which; else ``"train"`` alone), never of ``split``, the images
    they are evaluated on unless ``select_split`` says so (with ``split="val"``, train images alone);
    ``selected_on`` lists the splits.
    Held-out images matter: a backbone is right on nearly every train image it was fitted to, so
    train images barely tell which layer's width costs accuracy (on the embedded data's default VGG
    the routes chosen there lie up to 0.9 points below those chosen on held-out images at half the
    FLOPs), while on other backbones the train family can be the better one; the front takes the
    better of both, so the static baseline is never weakened by the choice."""
    out: dict[str, Any] = {}

    def rows(routes: np.ndarray, **extra: Any) -> list[dict[str, Any]]:
        correct, flops = route_outcomes(core, routes, split=split)
        return [
            {
                "actions": r.tolist(),
                "accuracy": float(c.mean()),
                "flops_ratio": float(f / core.full),
                "n_images": len(c),
                **extra,
            }
            for r, c, f in zip(routes, correct, flops)
        ]

    out["uniform"] = rows(uniform_routes(core))
    out["full"] = out["uniform"][-1]
    exhaustive = all_routes(core, max_routes=64)
    if exhaustive is not None:
        out["exhaustive"] = rows(exhaustive)
    elif greedy:
        if select_split is None:  # never chosen on the images they are scored on (a held-out second opinion)
            families = ["val", "train"] if selection_split(core) == "val" else ["train"]
            out["selected_on"] = [s for s in families if s != split]
            if not out["selected_on"]:
                raise ValueError(
                    f"the greedy routes are chosen off split={split!r}, and the data has no 'val' split to choose them"
                    f" on; pass select_split={split!r} to choose them on the images they are evaluated on, or greedy=False"
                )
        else:
            out["selected_on"] = [select_split]
        out["greedy"] = [
            row for s in out["selected_on"] for row in rows(greedy_routes(core, select_on=select_on, split=s), selected_on=s)
        ]
    pool = out["uniform"] + out.get("exhaustive", []) + out.get("greedy", [])
    out["front"] = pareto(pool)
    return out


@torch.no_grad()
def random_policy_eval(core: RoutingCore, action_rates: list[list[float]], seed: int = 0) -> dict[str, float]:
    """Accuracy and FLOPs ratio of routes drawn at random with the given per-decision action rates
    (e.g. a learned policy's ``action_rates``), over the whole test split."""
    rng = np.random.default_rng(seed)
    n = len(core.labels)
    probs = np.asarray(action_rates, dtype=np.float64)
    acts = np.stack([rng.choice(core.A, size=n, p=p / p.sum()) for p in probs], axis=1)
    correct = np.zeros(n, dtype=bool)
    flops = np.zeros(n, dtype=np.int64)
    for i in range(0, n, 500):
        logits, f = run_routes(core.net, core.mode, core.images[i : i + 500], torch.as_tensor(acts[i : i + 500]))
        correct[i : i + 500] = logits.argmax(1).cpu().numpy() == core.labels[i : i + 500]
        flops[i : i + 500] = f.numpy()
    return {"accuracy": float(correct.mean()), "flops_ratio": float(flops.mean() / core.full)}


def oracle(core: RoutingCore, routes: np.ndarray | None = None) -> dict[str, Any]:
    """Label-aware upper bound (for analysis only): each image takes the cheapest route among
    ``routes`` (default: uniform + greedy / exhaustive) that classifies it correctly, or the full
    network when none does."""
    if routes is None:
        routes = all_routes(core, max_routes=64)
        if routes is None:
            routes = np.concatenate([uniform_routes(core), greedy_routes(core)])
    correct, flops = route_outcomes(core, routes)
    order = np.argsort(flops)
    n = correct.shape[1]
    chosen = np.full(n, -1)
    for r in order[::-1]:  # the cheapest correct route wins (assigned last)
        chosen[correct[r]] = r
    full_idx = int(np.argmax(flops))
    used = np.where(chosen >= 0, flops[np.maximum(chosen, 0)], flops[full_idx])
    ok = chosen >= 0
    return {
        "accuracy": float(ok.mean()),
        "flops_ratio": float(used.mean() / core.full),
        "upper_bound": True,
        "note": "knows the label: an upper bound for analysis, not a policy",
    }


#: probe top-probability thresholds :func:`cascade_front` searches
CASCADE_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995)


@torch.no_grad()
def cascade_outcomes(
    core: RoutingCore, cheap: int, rich: int, threshold: float, split: str = "test", limit: int | None = None, batch: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness (bool ``[N]``) and FLOPs (int64 ``[N]``) of a confidence cascade on ``split``.

    At every decision the cascade reads the probe (the linear early classifier of the ``"probe"``
    observation, :mod:`dyncnn_gym.envs.probes`) on the features entering it and takes action
    ``rich`` where the probe's top probability is below ``threshold``, else ``cheap``: a hand-made
    input-adaptive router with no learning beyond the probes, the yardstick a learned policy should
    beat. Action indices as in the envs (channel groups - 1; skip 0 / execute 1).
    """
    from ..envs.probes import confidence, fit_probes
    from ..walk import run_policy

    if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and 0 <= a < core.A for a in (cheap, rich)):
        raise ValueError(f"cheap={cheap!r} and rich={rich!r} must be actions in [0, {core.A - 1}]")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must be a probability in [0, 1]")
    probes = core.probes or fit_probes(core)
    X, y = _split_arrays(core, split, limit)
    correct = np.zeros(len(y), dtype=bool)
    flops = np.zeros(len(y), dtype=np.int64)

    def escalate_unsure(walk: Walk) -> np.ndarray:
        w, b = probes[walk.t]
        top = confidence(core.scaled_features(walk) @ w + b)[:, 0].cpu().numpy()
        return np.where(top < threshold, rich, cheap)

    for i in range(0, len(y), batch):
        walk = run_policy(core.net, core.mode, X[i : i + batch], escalate_unsure)
        correct[i : i + batch] = walk.logits().argmax(1).cpu().numpy() == y[i : i + batch]
        flops[i : i + batch] = walk.flops.numpy()
    return correct, flops


def cascade_front(
    core: RoutingCore, thresholds: tuple[float, ...] = CASCADE_THRESHOLDS, select_on: int = 2000, split: str = "test"
) -> dict[str, Any]:
    """The accuracy-FLOPs front of confidence cascades (:func:`cascade_outcomes`) on ``split``.

    Every ``cheap < rich`` action pair and every threshold is tried on the first ``select_on``
    held-out images (the ``"val"`` split where the data has one, else ``"train"``); the cascades on
    that selection's Pareto front are then measured on ``split`` (the test split by default), like
    the greedy static routes. Returns ``selected_on``, ``points`` (``cheap``, ``rich``,
    ``threshold``, ``accuracy``, ``flops_ratio``, ``n_images``) and their Pareto ``front``.
    """
    select = selection_split(core)
    tried = []
    for cheap, rich in itertools.combinations(range(core.A), 2):
        for th in thresholds:
            c, f = cascade_outcomes(core, cheap, rich, th, split=select, limit=select_on)
            tried.append(
                {
                    "cheap": cheap,
                    "rich": rich,
                    "threshold": th,
                    "accuracy": float(c.mean()),
                    "flops_ratio": float(f.mean() / core.full),
                }
            )
    points = []
    for p in pareto(tried):
        c, f = cascade_outcomes(core, p["cheap"], p["rich"], p["threshold"], split=split)
        points.append(
            {
                **{k: p[k] for k in ("cheap", "rich", "threshold")},
                "accuracy": float(c.mean()),
                "flops_ratio": float(f.mean() / core.full),
                "n_images": len(c),
            }
        )
    return {"selected_on": select, "points": points, "front": pareto(points)}
