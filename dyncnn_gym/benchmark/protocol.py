"""The evaluation protocol: a policy routes the whole test split, deterministically and batched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..envs.core import RoutingCore
from ..envs.routing import make_core, mode_of
from ..policies import Policy
from ..policies import as_policy as _as_policy
from ..routed import check_plan, check_spaces

#: ``policy(obs [B, D] float32, masks [B, A] bool, first: bool) -> actions [B] int``
BatchPolicy = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


def as_policy(policy: Any) -> Policy:
    """``policy`` as a deterministic batch policy: :func:`dyncnn_gym.policies.as_policy` (the one
    adapter every face uses), whose result is also callable as a :data:`BatchPolicy`."""
    return _as_policy(policy)


def load_model(path: str, algorithm: str | None = None, **kwargs: Any):
    """Load an SB3 / sb3-contrib model saved with ``model.save(path)``, without unpickling anything
    the file holds (:func:`dyncnn_gym.sb3_files.load_sb3_model`, which takes the same ``kwargs``).

    The algorithm is read from the saved policy class (Maskable / Recurrent / QR-DQN / DQN /
    actor-critic with PPO's or A2C's hyper-parameters) unless ``algorithm`` names it.

    Raises:
        FileNotFoundError / IsADirectoryError: nothing, or a directory, at ``path``.
        ValueError: not an SB3 model zip, a damaged one, or one holding pickled objects (named).
    """
    from ..sb3_files import load_sb3_model

    return load_sb3_model(path, algorithm, **kwargs)


def evaluate(
    policy: Any,
    env_id: str = "DynChannel-v0",
    *,
    batch_size: int = 500,
    bins: int = 5,
    per_image: bool = False,
    core: RoutingCore | None = None,
    dial: bool | None = None,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """Route the **whole test split** with ``policy`` (deterministic, batched) and summarise.

    Args:
        policy: anything :func:`dyncnn_gym.policies.as_policy` accepts (SB3 models of any algorithm, their
            ``.policy``, ensembles, cost-biased policies, torch modules, callables).
        env_id: a registered routing env id (``"DynChannel-v1"``, ``"DynSkip-v0"``, ``"DynRoute-v0"``,
            ``"DynExit-v0"``, ...); a ``DynBlockDrop`` id routes a one-shot policy through its ``DynSkip``
            core (:func:`~dyncnn_gym.envs.blockdrop.as_skip_env`).
        batch_size: images routed at once.
        bins: difficulty bins (equal-count) for the per-difficulty breakdown.
        per_image: also return per-image arrays under ``"images"``.
        core: an existing test-split core to reuse (its env arguments win).
        dial: route with the policy dialed to the env's ``flops_target``: a cost bias on its action
            scores chosen by bisection so that its deterministic routing of held-out images (the
            ``"val"`` split, else ``"train"``; never the test split) costs at most the target
            (:func:`~dyncnn_gym.benchmark.calibrate.calibrate`). A policy trained on an env that holds
            a FLOPs target spends the target on average with *sampled* actions; its argmax may land
            well away from it, since at the constrained optimum the best policy mixes routes. ``None``
            (default): dial when the env has a ``flops_target`` (the ``-v1`` ids) and the policy has
            action scores (SB3 / sb3-contrib actor-critic and DQN models, not recurrent ones).
            ``False``: route the plain argmax.
        env_kwargs: the env's arguments (``dataset``, ``backbone``, ``groups``, ``budget``, ...);
            ``split`` is always ``"test"``. Under a ``budget`` a policy must respect the action masks
            (a maskable policy, or :func:`dyncnn_gym.export`, which masks): a forbidden action raises
            (``budget_strict=True`` by default here; pass ``budget_strict=False`` to score the env's
            replacement by the nearest allowed action instead).

    Returns:
        ``accuracy``, ``flops_ratio`` (mean FLOPs used / full network), ``n_images``,
        ``action_rates`` (``[T][A]`` frequency of each action at each decision), ``mean_action``
        (``[T]``, in units of ``A - 1``), ``routes`` (distinct action sequences and the most
        frequent ones), and, for data with per-image difficulty, ``by_difficulty`` (accuracy and
        FLOPs ratio per bin) and ``difficulty_flops_spearman`` (rank correlation of difficulty and
        FLOPs over all test images); ``dialed``: ``None``, or the ``target``, ``bias`` and held-out
        ``val_flops_ratio`` of the dial.
    """
    for name, value in (("batch_size", batch_size), ("bins", bins)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    from ..envs.blockdrop import as_skip_env

    env_id, env_kwargs = as_skip_env(env_id, env_kwargs)  # a DynBlockDrop id routes through its DynSkip core
    if env_kwargs.get("split", "test") != "test":
        raise ValueError(f"split={env_kwargs['split']!r}: evaluation always uses the test split")
    env_kwargs.pop("split", None)
    if core is None:
        from ..envs.core import _shared_data

        data = _shared_data(env_kwargs.pop("dataset", "shapes"))
        n_test = len(data.test)
        mode_of(env_id)  # an unknown id raises here, naming the envs
        env_kwargs.setdefault("budget_strict", True)  # evaluation holds a policy to the budget
        core = make_core(env_id, min(batch_size, n_test), dataset=data, split="test", **env_kwargs)
    from .calibrate import dial_to_target

    check_spaces(policy, core)
    policy, dialed = dial_to_target(policy, core, dial)
    choose = as_policy(policy)
    if choose.one_shot:  # keep logits for exactly the backbone's T blocks (no more, which routing would ignore)
        device = next(choose.head.parameters(), torch.empty(0)).device
        with torch.no_grad():
            check_plan(choose.head.plan(torch.zeros((1, core.observation_space.shape[0]), device=device)), core.T)
    n = len(core.labels)
    core.cursor = 0
    T = core.T
    preds = np.zeros(n, dtype=np.int64)
    flops = np.zeros(n, dtype=np.int64)
    actions = np.zeros((n, T), dtype=np.int64)
    ce = np.zeros(n, dtype=np.float64)
    exits = np.zeros(n, dtype=np.int64) if getattr(core, "mode", "") == "exit" else None
    for start in range(0, n, core.n):
        b = min(core.n, n - start)
        slots = np.arange(b)
        obs, _ = core.reset_slots(slots)
        full_obs = np.zeros((core.n, obs.shape[1]), dtype=np.float32)
        full_obs[:b] = obs
        first = True
        finished = np.zeros(core.n, dtype=bool)  # episodes may end at different steps (early exits)
        while not finished[:b].all():
            masks = core.action_masks()
            a = np.zeros(core.n, dtype=np.int64)
            chosen = np.asarray(choose(full_obs[:b], masks[:b], first)).reshape(-1)  # finished slots' are ignored
            if chosen.shape[0] != b:
                raise ValueError(
                    f"the policy gave {chosen.shape[0]} actions for {b} observations; expected one per observation"
                )
            if chosen.dtype.kind not in "iub" and not (chosen.dtype.kind == "f" and np.all(chosen == np.round(chosen))):
                raise TypeError(f"the policy gave actions {chosen[:5]!r} of dtype {chosen.dtype}; expected integer actions")
            a[:b] = chosen
            first = False
            full_obs, _, term, infos = core.step(a)
            for s in np.flatnonzero(term[:b] & ~finished[:b]):
                info = infos[s]
                i = info["index"]
                preds[i], flops[i], actions[i] = info["prediction"], info["flops"], info["actions"]
                ce[i] = info["cross_entropy"]
                if exits is not None:
                    exits[i] = info["exit"]
            finished |= term
    return {**summarize(core, preds, flops, actions, ce, bins=bins, per_image=per_image, exits=exits), "dialed": dialed}


def summarize(
    core: RoutingCore,
    preds: np.ndarray,
    flops: np.ndarray,
    actions: np.ndarray,
    ce: np.ndarray | None = None,
    bins: int = 5,
    per_image: bool = False,
    exits: np.ndarray | None = None,
) -> dict[str, Any]:
    """The result dict of :func:`evaluate` from per-image predictions, FLOPs and actions.

    ``actions`` ``[N, T]`` holds ``-1`` where an image took no decision (after an early exit);
    ``action_rates`` and ``mean_action`` at decision ``t`` are over the images that took it (NaN
    where none did). ``exits`` (int64 ``[N]``, early-exit envs) adds ``exit_rates``: the share of
    images leaving at each exit.
    """
    labels = core.labels
    correct = preds == labels
    T, A = core.T, core.A
    ratio = flops / core.full
    took = actions >= 0
    out: dict[str, Any] = {
        "n_images": int(len(labels)),
        "accuracy": float(correct.mean()),
        "flops_ratio": float(ratio.mean()),
        "full_flops": int(core.full),
        "action_rates": [
            [float((actions[took[:, t], t] == a).mean()) if took[:, t].any() else float("nan") for a in range(A)]
            for t in range(T)
        ],
        "mean_action": [
            float(actions[took[:, t], t].mean() / max(A - 1, 1)) if took[:, t].any() else float("nan") for t in range(T)
        ],
    }
    if exits is not None:
        out["exit_rates"] = [float((exits == k).mean()) for k in range(T + 1)]
    keys, counts = np.unique(actions, axis=0, return_counts=True)
    order = np.argsort(-counts)
    out["routes"] = {
        "distinct": int(len(keys)),
        "top": [{"actions": keys[i].tolist(), "share": float(counts[i] / len(labels))} for i in order[:10]],
    }
    if core.has_difficulty:
        d = core.difficulty
        edges = np.quantile(d, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, bins - 1)
        out["by_difficulty"] = [
            {
                "bin": b,
                "difficulty_lo": float(edges[b]),
                "difficulty_hi": float(edges[b + 1]),
                "n": int((which == b).sum()),
                "accuracy": float(correct[which == b].mean()) if (which == b).any() else float("nan"),
                "flops_ratio": float(ratio[which == b].mean()) if (which == b).any() else float("nan"),
            }
            for b in range(bins)
        ]
        out["difficulty_flops_spearman"] = spearman(d, ratio)
    if per_image:
        out["images"] = {
            "prediction": preds,
            "label": labels.copy(),
            "correct": correct,
            "flops": flops,
            "actions": actions,
            "cross_entropy": ce,
        }
        if exits is not None:
            out["images"]["exit"] = exits
        if core.has_difficulty:
            out["images"]["difficulty"] = core.difficulty.copy()
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)
