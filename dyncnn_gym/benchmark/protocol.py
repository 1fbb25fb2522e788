"""The evaluation protocol: a policy routes the whole test split, deterministically and batched."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..envs.core import RoutingCore
from ..envs.routing import make_core, mode_of

#: ``policy(obs [B, D] float32, masks [B, A] bool, first: bool) -> actions [B] int``
BatchPolicy = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


def as_policy(policy: Any) -> BatchPolicy:
    """Adapt ``policy`` to a deterministic batch policy.

    Accepts an SB3 / sb3-contrib model (``predict(obs, deterministic=True)``; MaskablePPO gets the
    action masks, RecurrentPPO keeps its state across the decisions of an episode), a torch module
    mapping observations ``[B, D]`` to action scores ``[B, A]`` (argmax over allowed actions) or to
    integer actions ``[B]``, or a callable ``obs_batch -> actions``.
    """
    if hasattr(policy, "predict") and hasattr(policy, "policy"):
        params = inspect.signature(policy.predict).parameters
        masked = "action_masks" in params
        state: dict[str, Any] = {"s": None}

        def sb3(obs: np.ndarray, masks: np.ndarray, first: bool) -> np.ndarray:
            kw: dict[str, Any] = {"deterministic": True}
            if masked:
                kw["action_masks"] = masks
            if "episode_start" in params:
                if first:
                    state["s"] = None
                kw["state"] = state["s"]
                kw["episode_start"] = np.full(len(obs), first)
            actions, state["s"] = policy.predict(obs, **kw)
            return np.asarray(actions).reshape(-1)

        return sb3
    if isinstance(policy, nn.Module):

        def module(obs: np.ndarray, masks: np.ndarray, first: bool) -> np.ndarray:
            dev = next(policy.parameters(), torch.empty(0)).device
            with torch.no_grad():
                out = policy(torch.as_tensor(obs, device=dev))
            if out.dtype.is_floating_point:
                if out.dim() != 2 or out.shape[1] != masks.shape[1]:
                    raise ValueError(
                        f"the policy module returned scores of shape {tuple(out.shape)}; expected [B, {masks.shape[1]}]"
                    )
                out = out.masked_fill(~torch.as_tensor(masks, device=out.device), float("-inf")).argmax(1)
            return out.cpu().numpy().reshape(-1)

        return module
    if callable(policy):
        return lambda obs, masks, first: np.asarray(policy(obs)).reshape(-1)
    raise TypeError(f"policy={policy!r} is neither an SB3 model, a torch module nor a callable")


def load_model(path: str, algorithm: str | None = None):
    """Load an SB3 / sb3-contrib model saved with ``model.save(path)``.

    The algorithm is read from the saved policy class (Maskable / Recurrent / QR-DQN / DQN /
    actor-critic with PPO's or A2C's hyper-parameters) unless ``algorithm`` names it.
    """
    import json
    import zipfile

    from stable_baselines3 import A2C, DQN, PPO

    algos: dict[str, Any] = {"PPO": PPO, "A2C": A2C, "DQN": DQN}
    try:
        from sb3_contrib import QRDQN, MaskablePPO, RecurrentPPO

        algos.update({"MaskablePPO": MaskablePPO, "RecurrentPPO": RecurrentPPO, "QRDQN": QRDQN})
    except ImportError:  # pragma: no cover
        pass
    if algorithm is None:
        with zipfile.ZipFile(path) as z:
            blob = json.loads(z.read("data").decode())
        pc = blob.get("policy_class", {})
        # ":type:" is the metaclass (abc.ABCMeta) for every policy; the class shows in its module and methods
        kind = " ".join(str(pc.get(k, "")) for k in ("__module__", "__init__", "__doc__")).lower()
        if "maskable" in kind:
            algorithm = "MaskablePPO"
        elif "recurrent" in kind:
            algorithm = "RecurrentPPO"
        elif "qrdqn" in kind:
            algorithm = "QRDQN"
        elif "dqn" in kind:
            algorithm = "DQN"
        else:
            algorithm = "PPO" if "clip_range" in blob else "A2C"
    if algorithm not in algos:
        raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {sorted(algos)}")
    return algos[algorithm].load(path, device="cpu")


def evaluate(
    policy: Any,
    env_id: str = "DynChannel-v0",
    *,
    batch_size: int = 500,
    bins: int = 5,
    per_image: bool = False,
    core: RoutingCore | None = None,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """Route the **whole test split** with ``policy`` (deterministic, batched) and summarise.

    Args:
        policy: see :func:`as_policy`.
        env_id: ``"DynChannel-v0"``, ``"DynSkip-v0"`` or ``"DynExit-v0"``.
        batch_size: images routed at once.
        bins: difficulty bins (equal-count) for the per-difficulty breakdown.
        per_image: also return per-image arrays under ``"images"``.
        core: an existing test-split core to reuse (its env arguments win).
        env_kwargs: the env's arguments (``dataset``, ``backbone``, ``groups``, ``budget``, ...);
            ``split`` is always ``"test"``.

    Returns:
        ``accuracy``, ``flops_ratio`` (mean FLOPs used / full network), ``n_images``,
        ``action_rates`` (``[T][A]`` frequency of each action at each decision), ``mean_action``
        (``[T]``, in units of ``A - 1``), ``routes`` (distinct action sequences and the most
        frequent ones), and, for data with per-image difficulty, ``by_difficulty`` (accuracy and
        FLOPs ratio per bin) and ``difficulty_flops_spearman`` (rank correlation of difficulty and
        FLOPs over all test images).
    """
    if env_kwargs.get("split", "test") != "test":
        raise ValueError(f"split={env_kwargs['split']!r}: evaluation always uses the test split")
    env_kwargs.pop("split", None)
    choose = as_policy(policy)
    if core is None:
        from ..envs.core import _shared_data

        data = _shared_data(env_kwargs.pop("dataset", "shapes"))
        n_test = len(data.test)
        mode_of(env_id)  # an unknown id raises here, naming the envs
        core = make_core(env_id, min(batch_size, n_test), dataset=data, split="test", **env_kwargs)
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
            a[:b] = choose(full_obs[:b], masks[:b], first)  # finished slots' actions are ignored
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
    return summarize(core, preds, flops, actions, ce, bins=bins, per_image=per_image, exits=exits)


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
