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

from ..envs.core import RoutingCore


class CostBiasedPolicy:
    """An SB3 model or a torch policy module (or an ensemble of them) whose deterministic action is
    ``argmax(score - bias * a / (A - 1))``.

    ``score`` is the log-probability of an actor-critic policy (PPO, A2C, MaskablePPO), the Q-value
    of a DQN / QR-DQN, or what a torch module maps observations ``[B, D]`` to (action scores
    ``[B, A]``, e.g. the reference agents' Q-values or gate logits; a module that keeps a recurrent
    state across an episode's decisions keeps it, since it is called once per decision as when
    routed without a bias); for an ensemble, the mean of its members' scores (a product of the
    members' action distributions, or their mean Q-values). It exposes ``predict`` and ``policy`` as
    SB3 models do, so :func:`~dyncnn_gym.benchmark.protocol.evaluate` and
    :func:`~dyncnn_gym.callbacks.routed_logits` route with it unchanged. Recurrent SB3 policies are
    refused (their scores need the LSTM state).

    Args:
        model: a trained SB3 / sb3-contrib model on a routing env (``Discrete(A)`` actions) or a
            torch module giving action scores, or a list of them trained on the same env arguments
            (e.g. several seeds) to route as one.
        bias: score units per unit of normalised action cost (``a / (A - 1)``).
    """

    def __init__(self, model: Any, bias: float = 0.0) -> None:
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("model=[] holds no model; pass a trained SB3 model or a list of them")
        kinds, sizes = set(), set()
        for m in models:
            if isinstance(m, torch.nn.Module):
                kinds.add("module scores")  # the action count is read from the scores
                continue
            policy = getattr(m, "policy", None)
            if (
                policy is None
                or getattr(policy, "lstm_actor", None) is not None
                or not (hasattr(policy, "get_distribution") or hasattr(policy, "q_net") or hasattr(policy, "quantile_net"))
            ):
                raise TypeError(
                    f"{type(m).__name__} is not supported; CostBiasedPolicy takes a non-recurrent SB3 actor-critic"
                    " (PPO, A2C, MaskablePPO) or a DQN / QR-DQN model"
                )
            n = getattr(m.action_space, "n", None)
            if n is None or int(n) < 2:
                raise TypeError(f"the model's action space {m.action_space} is not Discrete(A >= 2)")
            kinds.add("log-probabilities" if hasattr(policy, "get_distribution") else "Q-values")
            sizes.add(int(n))
        if len(kinds) > 1 or len(sizes) > 1:
            raise ValueError(f"an ensemble's members must score alike; got {sorted(kinds)} over action counts {sorted(sizes)}")
        self.models = models
        self.model, self.policy = models[0], getattr(models[0], "policy", models[0])
        self.bias = float(bias)
        self.cost = _cost(sizes.pop()) if sizes else None

    @torch.no_grad()
    def scores(self, obs: np.ndarray) -> torch.Tensor:
        """Unbiased action scores ``[B, A]`` for observations ``[B, D]`` (the members' mean)."""
        s = torch.stack(
            [_module_scores(m, obs) if isinstance(m, torch.nn.Module) else _scores(m.policy, obs) for m in self.models]
        )
        return s.mean(0)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """Actions ``[B]`` (always the biased argmax; ``deterministic`` is accepted for SB3's signature)."""
        s = self.scores(observation)
        s = s - self.bias * (self.cost if self.cost is not None else _cost(s.shape[1]))
        if action_masks is not None:
            s = s.masked_fill(~torch.as_tensor(np.asarray(action_masks, dtype=bool)).reshape(s.shape), float("-inf"))
        return s.argmax(dim=1).numpy(), None


def _cost(n: int) -> torch.Tensor:
    """Normalised cost ``a / (A - 1)`` of each of ``n`` actions."""
    return torch.arange(n, dtype=torch.float32) / max(n - 1, 1)


def _module_scores(module: torch.nn.Module, obs: np.ndarray) -> torch.Tensor:
    """A torch policy module's action scores ``[B, A]``; ``TypeError`` if it gives anything else."""
    dev = next(module.parameters(), torch.empty(0)).device
    out = module(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=dev))
    if not out.dtype.is_floating_point or out.dim() != 2 or out.shape[0] != len(obs) or out.shape[1] < 2:
        raise TypeError(
            f"the policy module gave {out.dtype} of shape {tuple(out.shape)}; a cost bias needs action scores [B, A >= 2]"
        )
    return out.float().cpu()


def _scores(policy: Any, obs: np.ndarray) -> torch.Tensor:
    """One SB3 policy's action scores ``[B, A]``: log-probabilities, or (QR-)DQN Q-values."""
    x, _ = policy.obs_to_tensor(np.asarray(obs, dtype=np.float32))
    if hasattr(policy, "get_distribution"):
        return policy.get_distribution(x).distribution.logits.float().cpu()  # normalised: log-probabilities
    if hasattr(policy, "quantile_net"):
        return policy.quantile_net(x).mean(dim=1).float().cpu()
    return policy.q_net(x).float().cpu()


def held_out_images(core: RoutingCore, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images (fewer if the split is smaller) of ``core``'s data that the test split does not hold:
    the ``"val"`` split where there is one, else ``"train"``; drawn once with ``seed``, on ``core``'s device."""
    split, idx = _held_out_rows(core, n, seed)
    return torch.as_tensor(split.images[idx]).to(core.device, core.images.dtype)


def _held_out_rows(core: RoutingCore, n: int | None, seed: int) -> tuple[Any, np.ndarray]:
    """The held-out split of ``core``'s data and ``n`` of its row indices drawn with ``seed`` (all rows, in order, if ``n`` is None)."""
    data = core.data
    split = data.split("val" if data.has_val else "train")
    idx = np.random.default_rng(seed).permutation(len(split))[:n] if n is not None else np.arange(len(split))
    return split, idx


def held_out_accuracy(
    core: RoutingCore, policy: Any, n_images: int | None = None, seed: int = 0, batch_size: int = 1000
) -> tuple[float, float]:
    """Accuracy and mean FLOPs ratio of ``policy`` routing held-out images deterministically (the
    ``"val"`` split where the data has one, else ``"train"``; all of them, or ``n_images`` drawn
    with ``seed``): a score to choose between trained policies without looking at the test split."""
    from ..callbacks import routed_logits

    split, idx = _held_out_rows(core, n_images or None, seed)
    correct = flops = 0.0
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            x = torch.as_tensor(split.images[rows]).to(core.device, core.images.dtype)
            logits, walk = routed_logits(core, policy, x, deterministic=True)
            correct += float((logits.argmax(1).cpu().numpy() == np.asarray(split.labels)[rows]).sum())
            flops += float(walk.flops.double().sum())
    return correct / len(idx), flops / len(idx) / core.full


def flops_ratio(core: RoutingCore, policy: Any, images: torch.Tensor) -> float:
    """Mean FLOPs ratio of ``policy`` routing ``images`` deterministically through ``core``'s backbone."""
    from ..callbacks import routed_logits

    with torch.no_grad():
        _, walk = routed_logits(core, policy, images, deterministic=True)
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
    from ..callbacks import training_core

    if isinstance(model, (list, tuple)) and model:
        model = model[0]  # an ensemble: its members share the env arguments
    env = model.get_env() if hasattr(model, "get_env") else None
    if env is None:
        raise ValueError(
            f"{type(model).__name__} has no training env (a loaded model?); pass core=RoutingCore(...)"
            " built with the env arguments it was trained with"
        )
    return training_core(env)[0]
