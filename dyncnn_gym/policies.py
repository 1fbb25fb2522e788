"""Anything a user hands over as a routing policy, as one thing: observations -> actions.

:func:`as_policy` turns what a user has into a :class:`Policy`; evaluation, calibration, the
co-training callbacks and :func:`dyncnn_gym.export` all route through it, so a policy decides
alike in every face. Accepted:

* an SB3 / sb3-contrib model with ``Discrete`` actions, or its ``.policy``: actor-critics (PPO, A2C,
  TRPO, MaskablePPO: the argmax of the categorical probabilities, as ``predict(deterministic=True)``
  computes it; RecurrentPPO: its LSTM state carried from decision to decision of an image), DQN
  (argmax of Q), QR-DQN (argmax of the mean quantile), ARS (argmax of its action scores). Their
  networks are copied into plain torch modules (:class:`ScoreHead`, :class:`RecurrentHead`); an
  SB3-like model whose network is not one of these is called through its ``predict``;
* a torch module mapping observations ``[B, D]`` to action scores ``[B, A]`` (argmax over the
  allowed actions) or to integer actions ``[B]`` (:class:`ModuleHead`);
* a list or tuple of SB3 models trained on the same env arguments: an ensemble, routed by the mean
  of the members' action scores (log-probabilities or Q-values; :class:`CostBiasedPolicy`);
* a :class:`CostBiasedPolicy` (a model or ensemble whose scores pay ``bias`` per unit of action cost);
* a Python callable ``obs [B, D] (NumPy) -> actions [B]``;
* a head of this module (:class:`ScoreHead`, :class:`RecurrentHead`, :class:`ModuleHead`,
  :class:`OneShotHead`), e.g. a routed model's ``.head``;
* one-shot (BlockDrop) policies, which choose every skip decision of an image from its first
  observation: an SB3 actor-critic trained on ``DynBlockDrop`` (``MultiBinary(T)`` actions: PPO,
  A2C), or a torch module mapping observations to keep logits ``[B, T]`` wrapped as
  :class:`OneShotHead`. They route the skip envs' decisions (``DynSkip``; ``DynBlockDrop`` is
  evaluated and exported through it).

The torch form (:attr:`Policy.head`) is what :class:`~dyncnn_gym.routed.RoutedNet` runs: a routed
model's actions are those of :func:`~dyncnn_gym.evaluate` by construction. The heads run their
layers as direct functional calls (no module dispatch per layer), which keeps a decision at batch 1
down to a few tens of microseconds.

Shapes: ``B`` observations of ``D`` entries, ``A`` actions.
"""

from __future__ import annotations

import copy as copying
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: what :func:`as_policy` accepts (for error messages)
ACCEPTED = (
    "an SB3 / sb3-contrib model (PPO, A2C, TRPO, MaskablePPO, RecurrentPPO, DQN, QRDQN, ARS, ...) or its .policy,"
    " a list of SB3 models (an ensemble), a CostBiasedPolicy, a torch nn.Module mapping observations [B, D] to"
    " action scores [B, A] or integer actions [B], or a Python callable obs -> actions"
)

#: ``state`` of a recurrent head: ``(h, c)``, each ``[layers, B, hidden]``
State = Any


# -- running a small network without module dispatch -----------------------------------------------------
def _plan(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of ``module`` as ``(kind, layer)`` steps for :func:`_run`: nested ``nn.Sequential``
    (and a one-member :class:`MeanScores`) flattened; ``Linear``, ``Tanh``, ``ReLU``, ``Flatten``,
    :class:`LogProbabilities` and :class:`Sine` run as functional calls, anything else as itself."""
    if isinstance(module, nn.Sequential):
        return [step for m in module for step in _plan(m)]
    if type(module) is nn.Linear:
        return [("linear", module)]
    if type(module) is nn.Tanh:
        return [("tanh", module)]
    if type(module) is nn.ReLU:
        return [("relu", module)]
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return [("flatten", module)]
    if type(module) is MeanScores and len(module.members) == 1:
        return _plan(module.members[0])
    if type(module) is LogProbabilities:
        return [("logprob", module)]
    if type(module) is Sine:
        return [("sin", module)]
    return [("call", module)]


def _run(plan: list[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for the module :func:`_plan` described (the same operations, the same values)."""
    for kind, m in plan:
        if kind == "linear":
            x = F.linear(x, m.weight, m.bias)
        elif kind == "tanh":
            x = torch.tanh(x)
        elif kind == "relu":
            x = torch.relu(x)
        elif kind == "flatten":
            if x.dim() != 2:
                x = x.flatten(1)
        elif kind == "logprob":
            x = x - x.logsumexp(-1, keepdim=True)
        elif kind == "sin":
            x = torch.sin(m.frequency * x)
        else:
            x = m(x)
    return x


class _Planned(nn.Module):
    """A module whose ``body`` can run as a cached :func:`_plan` (rebuilt when copied or loaded)."""

    def _body_plan(self) -> list[tuple[str, nn.Module]]:
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = _plan(self.body)
            self.__dict__["_plan_cache"] = plan
        return plan

    def __getstate__(self) -> dict:  # pickling and deepcopy: the plan refers to the layers, rebuild it
        state = dict(self.__dict__)
        state.pop("_plan_cache", None)
        return state


# -- heads: observations [B, D] float and allowed actions [B, A] bool -> actions int64 [B] ----------------
class ScoreHead(_Planned):
    """Argmax of the scores ``body(obs) [B, A]`` over the allowed actions.

    ``kind``: ``"categorical"`` (SB3's ``Categorical(logits)``: forbidden actions at -1e8, logits
    normalised, argmax of the probabilities), ``"maskable"`` (sb3-contrib's ``MaskableCategorical``:
    normalised, masked to -1e8, normalised again) or ``"argmax"`` (forbidden actions at -inf).
    ``cost`` (float ``[A]``, optional): the scores pay ``bias * cost`` (see :class:`CostBiasedPolicy`).
    """

    def __init__(self, body: nn.Module, kind: str = "argmax", cost: torch.Tensor | None = None, bias: float = 0.0) -> None:
        super().__init__()
        if kind not in ("categorical", "maskable", "argmax"):
            raise ValueError(f"kind={kind!r} is not a head kind; choose one of ['argmax', 'categorical', 'maskable']")
        self.body = body
        self.kind = kind
        self.probabilities = kind != "argmax"
        self.normalise_first = kind == "maskable"
        self.biased = cost is not None
        self.register_buffer("cost", torch.zeros(0) if cost is None else torch.as_tensor(cost, dtype=torch.float32))
        self.bias = float(bias)

    def __setstate__(self, state: dict) -> None:  # heads pickled before the cost bias existed
        super().__setstate__(state)
        if "biased" not in self.__dict__:
            self.biased, self.bias = False, 0.0
        if "cost" not in self._buffers:
            self.register_buffer("cost", torch.zeros(0))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.body(obs)
        if self.biased:
            scores = scores - self.bias * self.cost
        return _choose(scores, mask, self.probabilities, self.normalise_first)

    @torch.jit.unused
    def act(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` without module dispatch (the same values); ``mask=None``: every action allowed."""
        scores = _run(self._body_plan(), obs)
        if self.biased:
            scores = scores - self.bias * self.cost
        return _choose_any(scores, mask, self.probabilities, self.normalise_first)


def _choose(scores: torch.Tensor, mask: torch.Tensor, probabilities: bool, normalise_first: bool) -> torch.Tensor:
    if not probabilities:
        return scores.masked_fill(~mask, float("-inf")).argmax(1)
    if normalise_first:
        scores = scores - scores.logsumexp(-1, keepdim=True)
    scores = torch.where(mask, scores, torch.full_like(scores, -1e8))
    logits = scores - scores.logsumexp(-1, keepdim=True)
    return torch.softmax(logits, -1).argmax(1)


def _choose_any(scores: torch.Tensor, mask: torch.Tensor | None, probabilities: bool, normalise_first: bool) -> torch.Tensor:
    """:func:`_choose` where ``mask=None`` allows every action (the masking then changes nothing, so it is skipped).

    For one observation on the CPU, the argmax of the probabilities is read off the scores when the
    best score leads the second by more than float32 rounding of the normalisation and the
    exponential could close (:func:`_clear_lead`); otherwise the probabilities are computed."""
    if mask is not None:
        return _choose(scores, mask, probabilities, normalise_first)
    if not probabilities:
        return scores.argmax(1)
    if scores.shape[0] == 1 and scores.shape[1] > 1 and scores.device.type == "cpu":
        top = scores.topk(2, dim=1)
        if _clear_lead(top.values[0].tolist(), scores.shape[1]):
            return top.indices[:, 0]
    if normalise_first:
        scores = scores - scores.logsumexp(-1, keepdim=True)
    return torch.softmax(scores - scores.logsumexp(-1, keepdim=True), -1).argmax(1)


def _clear_lead(top2: list[float], num_actions: int) -> bool:
    """Whether scores whose two largest are ``top2`` keep that order in ``softmax(s - logsumexp(s))``
    computed in float32: the lead exceeds ``1e-5 * (1 + 2|s| + 2 |logsumexp|)`` (the subtraction's
    rounding is 2**-24 of those magnitudes, the exponential's and the division's a few ulps)."""
    a, b = top2
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    m = max(abs(a), abs(b))
    return a - b > 1e-5 * (1.0 + 2.0 * m + 2.0 * (abs(a) + math.log(num_actions)))


class QuantileMean(nn.Module):
    """``[B, n * A]`` quantiles -> ``[B, A]`` mean over the ``n`` quantiles (QR-DQN's Q-values)."""

    def __init__(self, n_quantiles: int, num_actions: int) -> None:
        super().__init__()
        self.n_quantiles, self.num_actions = int(n_quantiles), int(num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.n_quantiles, self.num_actions).mean(1)


class LogProbabilities(nn.Module):
    """Action logits ``[B, A]`` -> log-probabilities, as ``Categorical(logits=...).logits`` normalises them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.logsumexp(-1, keepdim=True)


class Sine(nn.Module):
    """``sin(frequency * x)``, elementwise: a periodic activation (e.g. pseudo-random routes for timing)."""

    def __init__(self, frequency: float = 1.0) -> None:
        super().__init__()
        self.frequency = float(frequency)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.frequency * x)

    def extra_repr(self) -> str:
        return f"frequency={self.frequency}"


class MeanScores(nn.Module):
    """The mean of the members' scores ``[B, A]`` (an ensemble: a product of action distributions when the
    members give log-probabilities, mean Q-values when they give Q-values)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](obs)
        return torch.stack([m(obs) for m in self.members]).mean(0)


class RecurrentHead(nn.Module):
    """RecurrentPPO's actor: ``features -> LSTM (state carried across decisions) -> policy_net ->
    action_net``, the action being the argmax of the categorical probabilities.

    ``forward(obs, mask, h, c) -> (actions, h, c)``; states are ``[layers, B, hidden]``, zeros at
    the first decision (:meth:`initial_state`).
    """

    def __init__(self, features: nn.Module, lstm: nn.LSTM, policy_net: nn.Module, action_net: nn.Module) -> None:
        super().__init__()
        self.features, self.lstm, self.policy_net, self.action_net = features, lstm, policy_net, action_net

    def initial_state(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros((self.lstm.num_layers, batch, self.lstm.hidden_size), device=device)
        return z, z.clone()

    def forward(
        self, obs: torch.Tensor, mask: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(obs)
        out, (h, c) = self.lstm(f.unsqueeze(0), (h, c))
        scores = self.action_net(self.policy_net(out.squeeze(0)))
        return _choose(scores, mask, True, False), h, c


class ModuleHead(nn.Module):
    """A user's torch module: scores ``[B, A]`` (argmax over the allowed actions, forbidden ones at
    -inf) or integer actions ``[B]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _module_actions(self.module(obs), mask)


def _module_actions(out: Any, mask: torch.Tensor | None) -> torch.Tensor:
    """A policy module's output as actions ``[B]``: the argmax of scores ``[B, A]`` over the allowed actions
    (``mask``, bool ``[B, A]``; ``None``: all), or integer actions as they are."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the policy module returned {type(out).__name__}; expected a tensor of scores [B, A] or actions [B]")
    if out.dtype.is_floating_point:
        if out.dim() != 2 or (mask is not None and out.shape[1] != mask.shape[1]):
            expected = "A" if mask is None else mask.shape[1]
            raise ValueError(f"the policy module returned scores of shape {tuple(out.shape)}; expected [B, {expected}]")
        return out.argmax(1) if mask is None else out.masked_fill(~mask, float("-inf")).argmax(1)
    if out.dtype == torch.bool or out.dtype.is_complex:
        raise TypeError(f"the policy module returned dtype {out.dtype}; expected float scores or integer actions")
    return out.reshape(-1)


class OneShotHead(_Planned):
    """Every skip decision of an image from its first observation (BlockDrop, Wu et al. 2018).

    ``body(obs [B, D]) -> keep logits [B, T]``, one per residual block, from the observation at the
    image's first decision (``DynBlockDrop``'s observation). Decision ``t`` runs its block where
    ``sigmoid(logit_t - bias) > 0.5`` (at ``bias=0`` SB3's deterministic ``MultiBinary`` action:
    the rounded Bernoulli probability) and skips it otherwise; where a budget allows only one of
    the two, that one. ``bias`` (keep-logit units) is the cost bias :class:`CostBiasedPolicy` and
    the FLOPs-target dial set. The plan is the :class:`Policy`'s state, so later observations are
    never read: a routed model computes one observation per image.
    """

    kind = "one-shot"

    def __init__(self, body: nn.Module, bias: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.bias = float(bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Keep logits ``[B, T]`` (``bias`` not applied)."""
        return self.body(obs)

    @torch.jit.unused
    def plan(self, obs: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without module dispatch (the same values): the keep logits ``[B, T]``."""
        logits = _run(self._body_plan(), obs)
        if logits.dim() != 2 or logits.shape[0] != obs.shape[0] or not logits.dtype.is_floating_point:
            raise ValueError(
                f"a one-shot policy must map observations [B, D] to keep logits [B, T]; got {tuple(logits.shape)}"
                f" ({logits.dtype}) for {obs.shape[0]} observations"
            )
        return logits

    def keeps(self, logits: torch.Tensor) -> torch.Tensor:
        """bool, the shape of ``logits``: whether each block runs (before any budget)."""
        return torch.sigmoid(logits - self.bias) > 0.5

    def choose(self, plan: torch.Tensor, t: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Actions ``[B]`` (1 runs block ``t``) from the keep logits ``plan [B, T]``; ``mask`` (bool
        ``[B, 2]``: skip, run allowed) forces the one allowed action."""
        if t >= plan.shape[1]:
            raise ValueError(
                f"the one-shot policy plans {plan.shape[1]} decisions but the env asks for decision {t}; it was"
                " trained on another backbone (a DynBlockDrop env's MultiBinary(T) must match the backbone's T blocks)"
            )
        keep = self.keeps(plan[:, t])
        if mask is not None:
            if mask.shape[1] != 2:
                raise ValueError(f"a one-shot policy makes skip decisions (2 actions); this env has {mask.shape[1]} actions")
            keep = within_budget(keep, mask)
        return keep.long()


def within_budget(keep: Any, allowed: Any) -> Any:
    """A one-shot plan's decision under a budget: ``keep`` (bool ``[B]``) where both actions are
    allowed (``allowed``: bool ``[B, 2]``, skip and run), else the one allowed action (1: run).
    NumPy arrays or torch tensors alike."""
    both = allowed[:, 0] & allowed[:, 1]
    return (keep & both) | (allowed[:, 1] & ~both)


# -- SB3 networks -> heads --------------------------------------------------------------------------------
def _copy(module: Any, copy: bool) -> Any:
    return copying.deepcopy(module) if copy else module


def _features_module(fe: nn.Module, copy: bool) -> nn.Module:
    """SB3's ``FlattenExtractor`` as a plain ``nn.Flatten``; any other extractor as is (copied if ``copy``)."""
    if type(fe).__name__ == "FlattenExtractor" and isinstance(getattr(fe, "flatten", None), nn.Flatten):
        return _copy(fe.flatten, copy)
    return _copy(fe, copy)


def _is_sb3(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in ("stable_baselines3", "sb3_contrib")


def _sb3_network(model: Any) -> nn.Module | None:
    """The policy network of an SB3 model (or the network itself)."""
    policy = getattr(model, "policy", None)
    if hasattr(model, "predict") and isinstance(policy, nn.Module):
        return policy
    return model if isinstance(model, nn.Module) else None


def _scores_body(net: nn.Module, name: str, copy: bool = True) -> tuple[nn.Module, str, str] | None:
    """``(body obs -> scores [B, A], head kind, what the scores are)`` of an SB3 policy network (copied if ``copy``);
    ``None`` when the network is not one this module knows (recurrent actors included)."""
    if hasattr(net, "action_net") and hasattr(net, "mlp_extractor"):
        if getattr(net, "lstm_actor", None) is not None:
            return None
        dist = type(getattr(net, "action_dist", None)).__name__
        bernoulli = dist == "BernoulliDistribution"
        if ("Categorical" not in dist or "Multi" in dist) and not bernoulli:
            raise TypeError(
                f"{name} has a {dist} action distribution; only Discrete action spaces (Categorical) and"
                " DynBlockDrop's MultiBinary (Bernoulli) are supported"
            )
        feats = _features_module(getattr(net, "pi_features_extractor", net.features_extractor), copy)
        body = nn.Sequential(feats, _copy(net.mlp_extractor.policy_net, copy), _copy(net.action_net, copy))
        if bernoulli:
            return body, "one-shot", "keep logits"
        return body, ("maskable" if dist.startswith("Maskable") else "categorical"), "log-probabilities"
    if hasattr(net, "quantile_net") and hasattr(net.quantile_net, "quantile_net"):
        qn = net.quantile_net
        body = nn.Sequential(
            _features_module(qn.features_extractor, copy),
            _copy(qn.quantile_net, copy),
            QuantileMean(qn.n_quantiles, int(qn.action_space.n)),
        )
        return body, "argmax", "Q-values"
    if hasattr(net, "q_net") and hasattr(net.q_net, "q_net"):
        qn = net.q_net
        return nn.Sequential(_features_module(qn.features_extractor, copy), _copy(qn.q_net, copy)), "argmax", "Q-values"
    if type(net).__name__.startswith("ARS") and isinstance(getattr(net, "action_net", None), nn.Module):
        space = getattr(net, "action_space", None)
        if getattr(space, "n", None) is None:
            raise TypeError(f"{name} has action space {space}; only Discrete action spaces are supported")
        body = nn.Sequential(_features_module(net.features_extractor, copy), _copy(net.action_net, copy))
        return body, "argmax", "action scores"
    return None


def _recurrent_head(net: nn.Module, copy: bool) -> RecurrentHead | None:
    if hasattr(net, "action_net") and getattr(net, "lstm_actor", None) is not None:
        feats = _features_module(getattr(net, "pi_features_extractor", net.features_extractor), copy)
        parts = (net.lstm_actor, net.mlp_extractor.policy_net, net.action_net)
        return RecurrentHead(feats, *(_copy(m, copy) for m in parts))
    return None


# -- the policy -------------------------------------------------------------------------------------------
class Policy:
    """One routing policy: ``act(obs [B, D], mask [B, A] | None, state) -> (actions int64 [B], state)``.

    Attributes:
        head: the torch form (:class:`ScoreHead`, :class:`RecurrentHead`, :class:`ModuleHead`,
            :class:`OneShotHead`), or ``None`` where there is none (a plain callable; an SB3-like model
            whose network this module does not know, which is then called through ``predict``).
        recurrent: whether a state is carried from decision to decision of an image (an LSTM's, or a
            one-shot policy's plan).
        one_shot: whether every decision is planned at the image's first (:class:`OneShotHead`).
        description: what the policy is, in words.
        source: what was handed to :func:`as_policy`.

    Also callable as ``policy(obs [B, D] NumPy, masks [B, A] NumPy, first: bool) -> actions [B] NumPy``
    (keeping a recurrent state between calls until ``first``).
    """

    def __init__(
        self, head: nn.Module | None, description: str, source: Any, call: Callable | None = None, own: bool = True
    ) -> None:
        if head is not None and own:  # a head that shares a live model's layers is left in that model's mode
            head.eval()
        self.head = head
        self.description = description
        self.source = source
        self.one_shot = isinstance(head, OneShotHead)
        self.recurrent = isinstance(head, (RecurrentHead, OneShotHead)) or (call is not None and _is_recurrent_predict(source))
        self._call = call
        self._state: State = None

    @property
    def exportable(self) -> bool:
        """Whether the policy has a torch form a routed model can ship."""
        return self.head is not None

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """The state before the first decision of ``batch`` images (``None`` if not recurrent, and for a
        one-shot policy, whose plan the first decision makes)."""
        if isinstance(self.head, RecurrentHead):
            return self.head.initial_state(batch, torch.device(device))
        return None

    def act(self, obs: torch.Tensor, mask: torch.Tensor | None = None, state: State = None) -> tuple[torch.Tensor, State]:
        """Deterministic actions ``[B]`` (int64, on ``obs``'s device) for observations ``obs [B, D]``;
        ``mask`` (bool ``[B, A]``) marks the allowed actions (``None``: all). ``state`` as returned by the
        previous call for the same images, :meth:`initial_state` before the first. Call it under
        ``torch.no_grad()`` (as every face does) unless gradients to the policy are wanted."""
        head = self.head
        if isinstance(head, ScoreHead):
            return head.act(obs, mask), None
        if isinstance(head, OneShotHead):  # state: (keep logits [B, T], the decision now)
            plan, t = (head.plan(obs), 0) if state is None else state
            return head.choose(plan, t, mask), (plan, t + 1)
        if isinstance(head, RecurrentHead):
            if state is None:
                state = head.initial_state(obs.shape[0], obs.device)
            if mask is None:
                mask = torch.ones((obs.shape[0], _num_actions(head)), dtype=torch.bool, device=obs.device)
            a, h, c = head(obs, mask, *state)
            return a, (h, c)
        if isinstance(head, ModuleHead):
            return _module_actions(head.module(obs), mask), None
        if head is not None:
            return head(obs, mask), None
        first = state is None
        masks = None if mask is None else mask.cpu().numpy()
        actions, new_state = self._call(obs.cpu().numpy(), masks, first, state)
        return torch.as_tensor(np.asarray(actions).reshape(-1), dtype=torch.int64, device=obs.device), new_state

    def sample(
        self, obs: np.ndarray, first: bool, state: State = None, masks: np.ndarray | None = None
    ) -> tuple[np.ndarray, State]:
        """Sampled actions ``[B]`` (NumPy) for ``obs [B, D]``: an SB3 model's ``predict(deterministic=False)``
        (same random draws as SB3); a policy without a distribution acts deterministically."""
        model = self.source
        sb3_predict = (
            callable(getattr(model, "predict", None))
            and not isinstance(model, CostBiasedPolicy)
            and (not isinstance(model, nn.Module) or _is_sb3(model))
        )
        if sb3_predict and self.one_shot:
            if state is None:  # the whole route drawn at the first decision, as the one-step env draws it
                bits = np.asarray(model.predict(obs, deterministic=False)[0]).reshape(len(obs), -1).astype(bool)
                state = (torch.where(torch.as_tensor(bits), math.inf, -math.inf), 0)
            plan, t = state
            allowed = None if masks is None else torch.as_tensor(np.asarray(masks, dtype=bool))
            return self.head.choose(plan, t, allowed).numpy(), (plan, t + 1)
        if sb3_predict:
            return _predict(model, obs, masks, first, state, deterministic=False)
        with torch.no_grad():
            a, state = self.act(torch.as_tensor(obs), None if masks is None else torch.as_tensor(masks), state)
        return a.cpu().numpy(), state

    def __call__(self, obs: np.ndarray, masks: np.ndarray, first: bool) -> np.ndarray:
        if first:
            self._state = None
        if self.head is None:
            actions, self._state = self._call(obs, masks, first, self._state)
            return np.asarray(actions).reshape(-1)
        dev = _device_of(self.head)
        o = torch.as_tensor(obs, device=dev)
        if self.recurrent and self._state is None:
            self._state = self.initial_state(o.shape[0], dev)
        with torch.no_grad():
            a, self._state = self.act(o, torch.as_tensor(np.asarray(masks, dtype=bool), device=dev), self._state)
        return a.cpu().numpy().reshape(-1)


def _num_actions(head: RecurrentHead) -> int:
    return (
        int(head.action_net.out_features) if isinstance(head.action_net, nn.Linear) else int(head.action_net[-1].out_features)
    )


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_sb3_like(obj: Any) -> bool:
    return hasattr(obj, "predict") and (_is_sb3(obj) or _is_sb3(getattr(obj, "policy", None)))


def _is_recurrent_predict(model: Any) -> bool:
    predict = getattr(model, "predict", None)
    return (
        predict is not None
        and "episode_start" in inspect.signature(predict).parameters
        and (getattr(getattr(model, "policy", None), "lstm_actor", None) is not None)
    )


def _predict(model: Any, obs: np.ndarray, masks: np.ndarray | None, first: bool, state: State, deterministic: bool):
    """``model.predict`` with what it takes of the action masks and the recurrent state."""
    params = inspect.signature(model.predict).parameters
    kw: dict[str, Any] = {"deterministic": deterministic}
    if "action_masks" in params and masks is not None:
        kw["action_masks"] = masks
    if "episode_start" in params:
        kw["state"] = None if first else state
        kw["episode_start"] = np.full(len(obs), first)
    actions, state = model.predict(obs, **kw)
    return np.asarray(actions).reshape(-1), state


class CostBiasedPolicy:
    """An SB3 model (or an ensemble of them) whose deterministic action is ``argmax(score - bias * a / (A - 1))``.

    ``score`` is the log-probability of an actor-critic policy (PPO, A2C, MaskablePPO) or the
    Q-value of a DQN / QR-DQN; for an ensemble, the mean of its members' scores (a product of the
    members' action distributions, or their mean Q-values). It exposes ``predict`` and ``policy`` as
    SB3 models do, and :func:`as_policy` turns it into one :class:`ScoreHead`, so evaluation,
    calibration, the callbacks and export route with it alike. Recurrent policies are refused
    (their scores need the LSTM state). A one-shot actor (trained on ``DynBlockDrop``,
    ``MultiBinary(T)``) runs block ``t`` where ``sigmoid(keep_logit_t - bias) > 0.5``
    (:class:`OneShotHead`; an ensemble averages the keep logits).

    Args:
        model: a trained SB3 / sb3-contrib model on a routing env (``Discrete(A)`` actions, or
            ``MultiBinary(T)`` for an actor-critic on ``DynBlockDrop``), or a list of them trained on
            the same env arguments (e.g. several seeds) to route as one.
        bias: score units per unit of normalised action cost (``a / (A - 1)``).
    """

    def __init__(self, model: Any, bias: float = 0.0) -> None:
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("model=[] holds no model; pass a trained SB3 model or a list of them")
        kinds, sizes, bodies = set(), set(), []
        for m in models:
            net = getattr(m, "policy", None)
            found = None
            if isinstance(net, nn.Module) and getattr(net, "lstm_actor", None) is None:
                try:
                    found = _scores_body(net, type(m).__name__)
                except TypeError:
                    found = None
            if found is None or found[2] == "action scores":
                raise TypeError(
                    f"{type(m).__name__} is not supported; CostBiasedPolicy takes a non-recurrent SB3 actor-critic"
                    " (PPO, A2C, MaskablePPO) or a DQN / QR-DQN model"
                )
            n = getattr(m.action_space, "n", None)
            if n is None or isinstance(n, (tuple, np.ndarray)) or int(n) < (1 if found[1] == "one-shot" else 2):
                raise TypeError(f"the model's action space {m.action_space} is not Discrete(A >= 2) or MultiBinary(T)")
            body, _kind, what = found
            kinds.add(what)
            sizes.add(int(n))
            bodies.append(nn.Sequential(body, LogProbabilities()) if what == "log-probabilities" else body)
        if len(kinds) > 1 or len(sizes) > 1:
            raise ValueError(f"an ensemble's members must score alike; got {sorted(kinds)} over action counts {sorted(sizes)}")
        self.models = models
        self.model, self.policy = models[0], models[0].policy
        n = sizes.pop()
        self.what = kinds.pop()
        self.head: ScoreHead | OneShotHead
        if self.what == "keep logits":
            self.cost = None
            self.head = OneShotHead(MeanScores(bodies), bias).eval()
        else:
            self.cost = torch.arange(n, dtype=torch.float32) / (n - 1)
            self.head = ScoreHead(MeanScores(bodies), "argmax", self.cost, bias).eval()

    @property
    def bias(self) -> float:
        return self.head.bias

    @bias.setter
    def bias(self, value: float) -> None:
        self.head.bias = float(value)

    @torch.no_grad()
    def scores(self, obs: np.ndarray) -> torch.Tensor:
        """Unbiased action scores ``[B, A]`` for observations ``[B, D]`` (the members' mean)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=_device_of(self.head))
        return self.head.body(x).float().cpu()

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """Actions ``[B]`` (always the biased argmax; ``deterministic`` is accepted for SB3's signature);
        a one-shot actor's are ``[B, T]``, every block's run (1) or skip (0)."""
        x = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=_device_of(self.head))
        if isinstance(self.head, OneShotHead):
            with torch.no_grad():
                return self.head.keeps(self.head.plan(x)).long().cpu().numpy(), None
        mask = None
        if action_masks is not None:
            mask = torch.as_tensor(np.asarray(action_masks, dtype=bool), device=x.device).reshape(x.shape[0], -1)
        with torch.no_grad():
            return self.head.act(x, mask).cpu().numpy(), None


def as_policy(policy: Any, copy: bool = True) -> Policy:
    """``policy`` (see the module docstring for what is accepted) as a :class:`Policy`; a :class:`Policy` is
    returned as is.

    ``copy=True``: the torch form holds copies of the networks (later training of ``policy`` does not
    change it; export). ``copy=False``: it shares the SB3 model's layers and follows its training (the
    co-training callbacks route with the current policy).

    Raises:
        TypeError: ``policy`` is none of the accepted kinds (the message lists them), or an SB3 model
            whose action space is not ``Discrete``.
    """
    if isinstance(policy, Policy):
        return policy
    return _as_policy(policy, bool(copy))


def _as_policy(policy: Any, copy: bool) -> Policy:
    name = type(policy).__name__
    if isinstance(policy, (ScoreHead, RecurrentHead, ModuleHead, OneShotHead)):  # already a torch form
        return Policy(_copy(policy, copy), f"{name} ({getattr(policy, 'kind', 'module')})", policy, own=copy)
    if isinstance(policy, CostBiasedPolicy):
        what = f"{len(policy.models)} models" if len(policy.models) > 1 else type(policy.model).__name__
        head = _copy(policy.head, copy)
        return Policy(head, f"CostBiasedPolicy({what}, {policy.what}, bias {policy.bias:g})", policy, own=copy)
    if isinstance(policy, (list, tuple)):
        if policy and all(_is_sb3_like(m) for m in policy):
            return _as_policy(CostBiasedPolicy(list(policy)), copy)
        raise TypeError(
            f"policy={name} of {[type(m).__name__ for m in policy]} is not a list of SB3 models; accepted: {ACCEPTED}"
        )
    net = _sb3_network(policy)
    sb3_like = _is_sb3_like(policy) or (net is not None and _is_sb3(net))
    if sb3_like and net is not None:
        found = _scores_body(net, name, copy)
        if found is not None:
            body, kind, what = found
            if kind == "one-shot":
                return Policy(
                    OneShotHead(body), f"{name} (one-shot actor: every block from the first observation)", policy, own=copy
                )
            described = f"{name} ({kind} actor)" if what == "log-probabilities" else f"{name} (argmax of {what})"
            return Policy(ScoreHead(body, kind), described, policy, own=copy)
        rec = _recurrent_head(net, copy)
        if rec is not None:
            return Policy(rec, f"{name} (recurrent actor, LSTM state carried across decisions)", policy, own=copy)
    if sb3_like and not hasattr(policy, "predict"):
        raise TypeError(f"policy={name} is an SB3-like network whose policy this package does not know; accepted: {ACCEPTED}")
    if isinstance(policy, nn.Module) and not sb3_like:
        return Policy(ModuleHead(_copy(policy, copy)), f"torch module {name}", policy, own=copy)
    if callable(getattr(policy, "predict", None)):  # SB3's predict API (any algorithm, or a stand-in)

        def call(obs: np.ndarray, masks: np.ndarray, first: bool, state: State) -> tuple[np.ndarray, State]:
            return _predict(policy, obs, masks, first, state, deterministic=True)

        return Policy(None, f"{name} (through its predict)", policy, call)
    if callable(policy):

        def call_plain(obs: np.ndarray, masks: np.ndarray, first: bool, state: State) -> tuple[np.ndarray, State]:
            return np.asarray(policy(obs)).reshape(-1), None

        return Policy(None, f"Python callable {getattr(policy, '__name__', name)}", policy, call_plain)
    raise TypeError(f"policy={policy!r} is not a policy; accepted: {ACCEPTED}")


__all__ = [
    "ACCEPTED",
    "CostBiasedPolicy",
    "LogProbabilities",
    "MeanScores",
    "ModuleHead",
    "OneShotHead",
    "Policy",
    "QuantileMean",
    "RecurrentHead",
    "ScoreHead",
    "as_policy",
]
