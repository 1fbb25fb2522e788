"""Dial a trained routing policy to a FLOPs budget after training: a cost bias calibrated on held-out images.

A policy trained at one compute weight spends whatever mean FLOPs that weight led it to (PPO seeds
at the same weight land up to ±12 points of FLOPs ratio apart). :class:`CostBiasedPolicy` shifts the
policy's action scores by ``-bias * a / (A - 1)`` (``a`` the action index: more channel groups, or
executing a block, costs more), and :func:`calibrate` finds by bisection the smallest ``bias`` whose
deterministic routing of held-out images (the ``"val"`` split where the data has one, else
``"train"``) costs at most ``target`` of the full network's FLOPs. The test split plays no part in
the choice, so the calibrated policy is evaluated on it like any other. A negative bias spends more.

    from dyncnn_gym.benchmark.calibrate import CostBiasedPolicy, calibrate
    dialed = calibrate(model, 0.6)                     # held-out images of the model's training env
    evaluate(dialed, "DynChannel-v0", core=test_core)  # about 0.6 of the full FLOPs on the test split
    evaluate(CostBiasedPolicy([m0, m1, m2]), ...)      # three seeds routed as one (mean log-probabilities)

Biases far from 0 move the policy away from what it learned: on frozen shapes DynChannel, a PPO
policy trained at weight 0.05 and dialed to its neighbourhood kept its margin over static networks,
while one trained at 0.1 and dialed up to 0.6 lost it (docs/results.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..callbacks import training_core
from ..envs.core import RoutingCore
from ..policies import CostBiasedPolicy


def held_out_images(core: RoutingCore, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images (fewer if the split is smaller) of ``core``'s data that the test split does not hold:
    the ``"val"`` split where there is one, else ``"train"``; drawn once with ``seed``, on ``core``'s device
    (:meth:`RoutingCore.held_out_images`)."""
    return core.held_out_images(n, seed)


def held_out_accuracy(
    core: RoutingCore, policy: Any, n_images: int | None = None, seed: int = 0, batch_size: int = 1000
) -> tuple[float, float]:
    """Accuracy and mean FLOPs ratio of ``policy`` routing held-out images deterministically (the
    ``"val"`` split where the data has one, else ``"train"``; all of them, or ``n_images`` drawn
    with ``seed``): a score to choose between trained policies without looking at the test split."""
    split, idx = core.held_out(n_images or None, seed)
    correct = flops = 0.0
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            x = torch.as_tensor(split.images[rows]).to(core.device, core.images.dtype)
            logits, walk = core.route(policy, x)
            correct += float((logits.argmax(1).cpu().numpy() == np.asarray(split.labels)[rows]).sum())
            flops += float(walk.flops.double().sum())
    return correct / len(idx), flops / len(idx) / core.full


def flops_ratio(core: RoutingCore, policy: Any, images: torch.Tensor) -> float:
    """Mean FLOPs ratio of ``policy`` routing ``images`` deterministically through ``core``'s backbone."""
    with torch.no_grad():
        _, walk = core.route(policy, images)
    return float(walk.flops.double().mean() / core.full)


def calibrate(
    model: Any,
    target: float,
    core: RoutingCore | None = None,
    *,
    n_images: int = 2000,
    iterations: int = 20,
    max_bias: float = 50.0,
    seed: int = 0,
) -> CostBiasedPolicy:
    """The :class:`CostBiasedPolicy` of ``model`` whose held-out FLOPs ratio is at most ``target``.

    Args:
        model: a trained SB3 model, or a list of them routed as one ensemble (:class:`CostBiasedPolicy`).
        target: FLOPs ratio in ``[core.min_flops_ratio, 1]``.
        core: a :class:`RoutingCore` with the env arguments the model was trained with (the
            observations must match), e.g. the test core it will be evaluated on. Default: the
            model's own training env (the native VecEnv's core, or a local mirror of env 0 of
            another VecEnv).
        n_images: held-out images routed per bisection step (see :func:`held_out_images`).
        iterations: bisection steps on ``bias`` in ``[-max_bias, max_bias]``.

    The returned policy carries ``val_flops_ratio``, its measured ratio on those images. Raises
    ``ValueError`` for a target outside the backbone's range or one no bias in range reaches.
    """
    if core is None:
        core = _training_core(model)
    core.check_flops_ratio(target, "target")
    for name, v in (("n_images", n_images), ("iterations", iterations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer")
    images = held_out_images(core, n_images, seed)
    biased = CostBiasedPolicy(model)

    def cost(b: float) -> float:
        biased.bias = b
        return flops_ratio(core, biased, images)

    lo, hi = -float(max_bias), float(max_bias)
    if cost(hi) > target:
        raise ValueError(f"even bias={hi} leaves the policy above target={target} on held-out images; raise max_bias")
    if cost(lo) <= target:
        hi = lo  # the most expensive routing the bias can reach already fits
    for _ in range(iterations if hi > lo else 0):
        mid = (lo + hi) / 2
        if cost(mid) > target:
            lo = mid
        else:
            hi = mid
    biased.val_flops_ratio = cost(hi)
    return biased


def _training_core(model: Any) -> RoutingCore:
    if isinstance(model, (list, tuple)) and model:
        model = model[0]  # an ensemble: its members share the env arguments
    env = model.get_env() if hasattr(model, "get_env") else None
    if env is None:
        raise ValueError(
            f"{type(model).__name__} has no training env (a loaded model?); pass core=RoutingCore(...)"
            " built with the env arguments it was trained with"
        )
    return training_core(env)[0]


def dial_to_target(policy: Any, core: RoutingCore, dial: bool | None = None) -> tuple[Any, dict[str, float] | None]:
    """``policy`` dialed to ``core``'s ``flops_target`` (:func:`calibrate` on held-out images), and what
    the dial did (``target``, ``bias``, held-out ``val_flops_ratio``; ``None`` when not dialed).

    ``dial=None``: dial when the env holds a FLOPs target (the ``-v1`` ids) and the policy has action
    scores a cost bias can shift (SB3 / sb3-contrib actor-critic and DQN models, not recurrent ones,
    and not a policy already biased). ``True``: dial or raise; ``False``: leave the policy as it is.
    :func:`~dyncnn_gym.benchmark.protocol.evaluate` and :func:`~dyncnn_gym.routed.export` both
    dial through here, so an exported model routes as the evaluation measured.
    """
    if dial is None:
        dial = core.target is not None and _has_scores(policy)
    if not dial:
        return policy, None
    if core.target is None:
        raise ValueError("dial=True needs an env with a flops_target (e.g. the -v1 ids); this one has none")
    dialed = calibrate(policy, core.target.target, core=core)
    return dialed, {"target": core.target.target, "bias": dialed.bias, "val_flops_ratio": dialed.val_flops_ratio}


def _has_scores(policy: Any) -> bool:
    """Whether ``policy`` has action scores a cost bias can shift (and is not one already biased)."""
    if isinstance(policy, CostBiasedPolicy):
        return False
    try:
        CostBiasedPolicy(policy)
    except (TypeError, ValueError):
        return False
    return True
