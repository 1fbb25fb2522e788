"""``ExitCore``: N early-exit episodes over one cascade of stages, the engine behind ``DynExit-v1`` and ``DynExit-v0``.

The early-exit counterpart of :class:`~dyncnn_gym.envs.core.RoutingCore`, with the same interface
for the env faces (single env, native Gymnasium vector env, SB3 VecEnv, evaluation). Slots that
stand at the same exit form a *cohort* that moves as one :class:`~dyncnn_gym.exit_walk.ExitWalk`.
Episodes have different lengths (an image ends when it exits), so a step usually finishes some
slots of a cohort: their rows leave the walk, and the vector envs start new images in those slots,
which form a new cohort at exit 0 (merged with any other cohort standing there).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from ..device import check_device
from ..exit_walk import ExitWalk, RoutedExits, run_exits
from ..models.exits import STAGE_KINDS, Stages, make_stages
from ..policies import as_policy
from ..pretraining import DEFAULT_ARCH, resolve_backbone
from .core import (
    DTYPES,
    SPLITS,
    EpisodeSlots,
    _Cohort,
    _put,
    _put_taken,
    _shared_data,
    at_precision,
    weight_below_front,
)
from .probes import confidence, fit_threads
from .rewards import DEFAULT_TARGET_RATE, FlopsTarget, Reward

#: the default backbone of each kind of stages
DEFAULT_EXIT_ARCH = {"width": DEFAULT_ARCH["channel"], "depth": DEFAULT_ARCH["exit"]}

#: the default compute weight of each reward form. With ``loss="error"`` (the default) the
#: ``"flops"`` weight is in accuracy per unit of FLOPs ratio: 0.02 continues when that raises the
#: chance of a right prediction by more than 2 % of the FLOPs ratio it costs (the recipe's weight,
#: at which PPO reaches the full network's accuracy at 44 % of its FLOPs on the embedded data, where
#: the one-pass envs' 0.5 asks a stage of the width cascade to gain 46 points of accuracy)
EXIT_DEFAULT_WEIGHT = {"flops": 0.02, "rnp": 0.1, "skipnet": 0.1}

_SCALES: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_START: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


@torch.no_grad()
def exit_curve(stages: Stages, data, split: str, n: int = 1000, seed: int = 0) -> np.ndarray:
    """float64 ``[S, 2]``: (FLOPs ratio, accuracy) of leaving every image at exit ``k``, for each exit,
    on up to ``n`` images of ``split`` drawn with ``seed`` (the static exits)."""
    part = data.split(split)
    idx = np.random.default_rng(seed).permutation(len(part))[:n]
    p = next(stages.net.parameters())
    y = torch.as_tensor(np.asarray(part.labels)[idx], device=p.device)
    was_training = stages.net.training
    stages.net.eval()
    walk = ExitWalk(stages, torch.as_tensor(part.images[idx]).to(p.device, p.dtype))
    acc = [float((walk.logits.argmax(1) == y).double().mean())]
    while not walk.done:
        walk.step(np.ones(len(walk), dtype=np.int64))
        acc.append(float((walk.logits.argmax(1) == y).double().mean()))
    stages.net.train(was_training)
    return np.stack([stages.costs.all_exit_flops() / stages.costs.full, np.array(acc)], 1).astype(np.float64)


def exit_starting_weight(stages: Stages, data, split: str, target: float) -> float:
    """The compute weight a FLOPs target of the early-exit envs starts from when none is given: half
    the slope, at ``target``, of the accuracy-FLOPs front of the static exits on the episodes' split
    (:func:`exit_curve`), clipped to :data:`~dyncnn_gym.envs.core.START_WEIGHT_RANGE`, as
    :func:`~dyncnn_gym.envs.core.starting_weight` does for the per-decision envs. Computed once per
    cascade, data, split and target in a process."""
    per_net = _START.setdefault(stages.net, {})
    key = (repr(stages.describe()), data.fingerprint, split, round(float(target), 6))
    if key not in per_net:
        per_net[key] = weight_below_front(exit_curve(stages, data, split), target)
    return per_net[key]


@torch.no_grad()
def exit_feature_scale(stages: Stages, data, n: int = 256) -> list[torch.Tensor]:
    """Per exit, per channel scale of the pooled features: their mean absolute value over the first
    ``n`` train images (floored at 1 % of the largest). Observations are ``tanh(pooled / scale)``.
    Computed with :data:`~dyncnn_gym.envs.probes.FIT_THREADS` threads."""
    per_net = _SCALES.setdefault(stages.net, {})
    key = (repr(stages.describe()), data.fingerprint)
    if key not in per_net:
        was_training = stages.net.training
        stages.net.eval()
        x = torch.as_tensor(data.train.images[:n]).to(next(stages.net.parameters()).device)
        scales = []
        with fit_threads():
            walk = ExitWalk(stages, x)
            while True:
                m = walk.pooled.float().abs().mean(0)
                scales.append(torch.clamp(m, min=max(float(m.max()) * 0.01, 1e-6)))
                if walk.done:
                    break
                walk.step(np.ones(len(walk), dtype=np.int64))
        stages.net.train(was_training)
        per_net[key] = scales
    return per_net[key]


class ExitCore(EpisodeSlots):
    """Early-exit episodes for ``num_slots`` images at once (see ``DynExit-v1``'s docstring for the arguments)."""

    mode = "exit"
    #: episodes end when the image exits: between 1 and ``T`` steps
    fixed_length = False

    def __init__(
        self,
        num_slots: int = 1,
        dataset: Any = "shapes",
        backbone: Any = None,
        stages: str = "width",
        widths: tuple[int, ...] | None = None,
        groups: int = 4,
        split: str = "train",
        reward: str = "flops",
        compute_weight: float | None = None,
        loss_weight: float = 1.0,
        ce_clip: float = 5.0,
        loss: str = "error",
        budget: float | None = None,
        device: str | torch.device = "cpu",
        obs: str = "features",
        dtype: str = "float32",
        budget_strict: bool = False,
        flops_target: float | None = None,
        target_rate: float = DEFAULT_TARGET_RATE,
    ) -> None:
        if not isinstance(num_slots, (int, np.integer)) or num_slots < 1:
            raise ValueError(f"num_envs={num_slots!r} must be a positive integer")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not a valid split; choose one of {list(SPLITS)}")
        if stages not in STAGE_KINDS:
            raise ValueError(f"stages={stages!r} is not a kind of stages; choose one of {list(STAGE_KINDS)}")
        if obs != "features":
            raise ValueError(
                f"obs={obs!r} is not an observation mode of the early-exit envs; choose one of ['features'] (the exit's own"
                " confidence is always part of the observation, so there is no 'probe' mode)"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not a backbone precision; choose one of {list(DTYPES)}")
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 2:
            raise ValueError(f"groups={groups!r} must be an integer >= 2 (e.g. 2, 4 or 8)")
        if not isinstance(budget_strict, (bool, np.bool_)):
            raise ValueError(f"budget_strict={budget_strict!r} must be True or False")
        if widths is not None and stages != "width":
            raise ValueError(f"widths={widths!r} applies to stages='width' only; depth stages are set by the backbone's exits")
        self.n, self.obs_mode, self.kind = int(num_slots), obs, stages
        self.device = check_device(device)
        self.reward = Reward.make(
            reward,
            compute_weight if compute_weight is not None else EXIT_DEFAULT_WEIGHT.get(reward),
            loss_weight,
            ce_clip,
            loss,
        )
        self.data = _shared_data(dataset)
        if split == "auto":
            split = "val" if self.data.has_val else "train"
        #: the split episodes draw their images from (``"auto"`` resolved)
        self.split_name = split
        backbone_mode = "channel" if stages == "width" else "exit"
        if backbone is None:
            backbone = DEFAULT_EXIT_ARCH[stages]
        if stages == "width" and _has_exits(backbone):
            raise ValueError(
                f"backbone={backbone!r} is a ResNet with early exits, which width stages cannot use; pass"
                f" stages='depth' for its exits, or a channel backbone (e.g. {DEFAULT_EXIT_ARCH['width']!r}) for width stages"
            )
        net = resolve_backbone(backbone, self.data, backbone_mode, int(groups), self.device)
        self.net = at_precision(net, DTYPES[dtype])
        self.net.eval()
        self.dtype = dtype
        self.stages = make_stages(self.net, stages, None if widths is None else tuple(widths))
        self.costs = self.stages.costs
        self.S = self.stages.num_exits
        self.T, self.A = self.S - 1, 2
        self.full = int(self.costs.full)
        self.exit_flops = self.costs.all_exit_flops()
        self.first_flops = int(self.exit_flops[0])
        self.budget = self._check_budget(budget)
        #: with a budget: ``True`` raises on a forbidden continue, ``False`` exits instead
        self.budget_strict = bool(budget_strict)
        #: holds the mean FLOPs ratio of finished episodes at ``flops_target`` (``None``: a fixed weight)
        self.target: FlopsTarget | None = None
        self._hold_target(
            flops_target,
            compute_weight,
            target_rate,
            lambda: exit_starting_weight(self.stages, self.data, split, float(flops_target)),
        )

        split_data = self.data.split(split)
        if len(split_data) == 0:
            raise ValueError(f"the {split!r} split of data {self.data.name!r} is empty")
        self.images = torch.as_tensor(split_data.images).to(self.device, DTYPES[dtype])
        self.labels = np.asarray(split_data.labels, dtype=np.int64)
        self.difficulty = np.asarray(split_data.difficulty, dtype=np.float32)
        self.has_difficulty = bool(np.isfinite(self.difficulty).any())
        self.difficulty_params = {k: np.asarray(v, dtype=np.float32) for k, v in split_data.difficulty_params.items()}
        self.scale = exit_feature_scale(self.stages, self.data)
        self.feat_dim = max(self.stages.feature_widths)
        dim = self.feat_dim + self.T + 3 + 1
        low = np.concatenate([-np.ones(self.feat_dim), np.zeros(self.T + 4)]).astype(np.float32)
        self.observation_space = spaces.Box(low, np.ones(dim, dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.probes = None

        self.info_format = "dicts"
        self.rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(self.n)]
        self.cursor = 0
        self.cohorts: list[_Cohort] = []
        self.index = np.zeros(self.n, dtype=np.int64)
        self.active = np.zeros(self.n, dtype=bool)

    # -- backbone weights and reward ----------------------------------------------------------------
    @property
    def min_flops_ratio(self) -> float:
        """FLOPs of an image that leaves at the first exit, as a ratio of the full network's."""
        return self.first_flops / self.full

    def check_flops_ratio(self, value: Any, name: str = "target", none_hint: str = "") -> float:
        """``value`` as a float if it is a FLOPs ratio of at least :attr:`min_flops_ratio`; else ``ValueError``."""
        lo = self.min_flops_ratio
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not lo <= value < np.inf:
            raise ValueError(f"{name}={value!r} must be a FLOPs ratio >= {lo:.4f} (the first exit's){none_hint}")
        return float(value)

    # -- episodes -------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_slots(self, slots: np.ndarray) -> tuple[np.ndarray, Any]:
        """Start new episodes in ``slots``; returns their observations ``[len(slots), D]`` and infos."""
        slots = np.asarray(slots, dtype=np.int64)
        self._drop(slots)
        for s in slots:
            self.index[s] = self._pick(int(s))
        walk = ExitWalk(self.stages, self.images[torch.as_tensor(self.index[slots], device=self.device)])
        self.cohorts.append(_Cohort(walk, slots.copy()))
        self.active[slots] = True
        self._merge()
        obs = self._observe(walk)
        masks = self._masks(walk)
        if self.info_format == "arrays":
            return obs, _put({}, self._info_arrays(slots, walk, masks), slots, self.n)
        return obs, [self._info(int(s), walk, r, masks[r]) for r, s in enumerate(slots)]

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Apply one action per slot (0 exits, 1 continues) to every slot in an episode.

        Returns observations ``[N, D]`` float32, rewards ``[N]`` float64, terminated ``[N]`` bool and
        infos; slots not in an episode get zeros and ``{}`` (their actions are ignored but must be
        valid). A slot terminates when its image exits or reaches the last exit; it must be reset
        before it can step again.
        """
        actions = self._check_actions(actions)
        chosen = actions
        if self.budget is not None:  # check every cohort before any episode advances
            stepped = np.concatenate([c.slots for c in self.cohorts]) if self.cohorts else np.zeros(0, dtype=np.int64)
            actions = actions.copy()
            for c in self.cohorts:
                masks = self._masks(c.walk)
                a = actions[c.slots]
                bad = ~masks[np.arange(len(c.slots)), a]
                if bad.any():
                    if self.budget_strict:
                        r = int(np.flatnonzero(bad)[0])
                        raise ValueError(
                            f"action {int(a[r])} in slot {int(c.slots[r])} breaks the compute budget {self.budget}; "
                            f"valid actions there: {np.flatnonzero(masks[r]).tolist()} (see action_masks())"
                        )
                    actions[c.slots] = np.where(bad, 0, a)  # exiting is always allowed
        obs = np.zeros((self.n, self.observation_space.shape[0]), dtype=np.float32)
        rew = np.zeros(self.n, dtype=np.float64)
        term = np.zeros(self.n, dtype=bool)
        arrays = self.info_format == "arrays"
        infos: Any = {} if arrays else [{} for _ in range(self.n)]
        kept: list[_Cohort] = []
        step_costs: list[tuple[np.ndarray, np.ndarray]] = []
        for c in self.cohorts:
            walk, slots = c.walk, c.slots
            a = actions[slots]
            t = walk.t
            actions_before = walk.actions
            gone = walk.step(a)
            stay = np.flatnonzero(a == 1)
            cost = np.where(a == 1, int(self.costs.stages[t + 1] + self.costs.heads[t + 1]), 0)
            last = (a == 0) | walk.done
            rew[slots] = self.reward.exit_step(t, a, cost, last, self.first_flops, self.full, self.T)
            step_costs.append((slots, (cost + (self.first_flops if t == 0 else 0)) / self.full))
            if len(gone.rows):  # images that exited now
                s_out = slots[gone.rows]
                self._finish(s_out, gone.logits, gone.flops, actions_before[gone.rows], t, rew, term, obs, infos)
            s_stay = slots[stay]
            if walk.done:
                if len(walk):
                    self._finish(s_stay, walk.logits, walk.flops, walk.actions, walk.t, rew, term, obs, infos)
                continue
            if not len(walk):
                continue
            obs[s_stay] = self._observe(walk)
            masks = self._masks(walk)
            if arrays:
                _put(infos, self._info_arrays(s_stay, walk, masks), s_stay, self.n)
            else:
                for r, s in enumerate(s_stay):
                    infos[s] = self._info(int(s), walk, r, masks[r])
            kept.append(_Cohort(walk, s_stay))
        self.cohorts = kept
        self._merge()
        for slots, step_cost in step_costs:  # FLOPs of the step as a fraction of the full network's
            if arrays:
                _put(infos, {"cost": step_cost}, slots, self.n)
            else:
                for r, s in enumerate(slots):
                    infos[s]["cost"] = float(step_cost[r])
        if self.budget is not None:
            _put_taken(infos, actions[stepped], chosen[stepped], stepped, self.n, arrays)
        return obs, rew, term, infos

    def _finish(self, slots, logits, flops, actions, exit_at, rew, term, obs, infos) -> None:
        """Close the episodes of ``slots`` whose images left at exit ``exit_at``."""
        labels = torch.as_tensor(self.labels[self.index[slots]], device=logits.device)
        ce = F.cross_entropy(logits.float(), labels, reduction="none").double().cpu().numpy()
        pred = logits.argmax(1).cpu().numpy()
        correct = pred == labels.cpu().numpy()
        rew[slots] += self.reward.final(ce, correct)
        if self.target is not None:  # an episode that left at exit t made t + 1 decisions (T at the last exit)
            self.reward = self.reward.with_weight(self.target.update(flops / self.full, min(exit_at + 1, self.T)))
        term[slots] = True
        obs[slots] = 0.0
        obs[slots, -1] = np.minimum(flops / self.full, 1.0)
        if isinstance(infos, dict):
            _put(infos, self._final_info_arrays(slots, flops, actions, exit_at, pred, ce), slots, self.n)
        else:
            for r, s in enumerate(slots):
                infos[s] = self._final_info(int(s), int(flops[r]), actions[r], exit_at, int(pred[r]), float(ce[r]))
        self.active[slots] = False

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.dtype.kind not in "iu":
            if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                a = a.astype(np.int64)
            else:
                raise TypeError(f"action {actions!r} is not an integer action of {self.action_space}")
        a = a.astype(np.int64).reshape(-1)
        if a.shape[0] != self.n:
            raise ValueError(f"expected {self.n} actions (one per env), got {a.shape[0]}: {actions!r}")
        bad = (a < 0) | (a >= 2)
        if bad.any():
            raise ValueError(f"action {int(a[bad][0])} is outside the action space {self.action_space} (0 exits, 1 continues)")
        return a

    # -- routing images with a policy (outside episodes) ---------------------------------------------
    @torch.no_grad()
    def route(self, policy: Any, images: torch.Tensor) -> tuple[torch.Tensor, RoutedExits]:
        """Route ``images [B, C, H, W]`` through the stages with ``policy`` choosing every action from
        this core's observations (deterministic; anything :func:`~dyncnn_gym.policies.as_policy`
        accepts, an SB3 model used live). Images that exit stop computing. The policy sees the
        observations of all ``B`` images at every exit (those of exited images frozen), so a recurrent
        policy keeps one state per image. Returns the logits ``[B, K]`` and the :class:`RoutedExits`."""
        choose = as_policy(policy, copy=False)
        B = images.shape[0]
        obs = np.zeros((B, self.observation_space.shape[0]), dtype=np.float32)
        masks = np.ones((B, 2), dtype=bool)
        rows = [np.arange(B)]  # the images still in the walk, in its row order
        first = [True]

        def pick(walk: ExitWalk) -> np.ndarray:
            r = rows[0]
            obs[r], masks[r] = self._observe(walk), self._masks(walk)
            a = np.asarray(choose(obs, masks, first[0]), dtype=np.int64).reshape(-1)
            if a.shape[0] != B:
                raise ValueError(f"the policy gave {a.shape[0]} actions for {B} observations; expected one per observation")
            first[0] = False
            a = a[r]
            rows[0] = r[a == 1]
            return a

        logits, flops, exits, actions = run_exits(self.stages, images, pick)
        f = torch.from_numpy(flops)
        return logits, RoutedExits(logits, torch.from_numpy(exits), torch.from_numpy(actions), f, f.double() / self.full)

    # -- the teacher -------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher(self, policy: Any = None) -> dict[str, np.ndarray]:
        """The outcome of each action at every slot's current decision (beside the RL interface: it
        knows the label, so it never enters the observation, and computing it changes nothing in
        the episodes).

        Continuations: action 0 ends the episode with this exit's prediction; action 1 is followed
        by the continuation "leave at exit ``j``", for every later exit ``j`` (the family is indexed
        by the exit the image would leave at, so both actions' outcomes live in one ``[S]`` axis:
        ``j = t`` is exiting now). The *full* continuation is leaving at the last exit. Computing it
        costs one pass of the remaining stages per slot. With ``policy`` (anything
        :func:`~dyncnn_gym.policies.as_policy` accepts, e.g. the agent being trained), the continuation that follows it at every
        later exit is computed too (no extra pass: it picks among the exits already computed).

        Returns arrays over the ``N`` slots (rows of slots not in an episode: ``active`` false,
        zeros elsewhere):

        * ``active`` bool ``[N]``; ``decision`` int64 ``[N]``: the exit ``t`` each slot stands at;
        * ``correct`` bool ``[N, S]``, ``loss`` float64 ``[N, S]`` (cross-entropy, nats) and
          ``flops`` int64 ``[N, S]``: the prediction, its loss and the image's FLOPs if it leaves
          at exit ``j`` (for ``j >= t``; ``False`` / ``0`` before ``t``);
        * ``returns`` float64 ``[N, S]``: the env's (unshaped) return from this decision on if the
          image leaves at exit ``j`` (``-inf`` for ``j < t`` and for exits past the ``budget``);
        * ``q`` float64 ``[N, 2]``: each action's return under its best continuation
          (``returns[t]`` for exiting, the best later exit for continuing), ``q_full`` under the
          full continuation (the last exit);
        * ``best_action`` int64 ``[N]``: the argmax of ``q``, ties going to exiting (the cheaper
          action): with ``loss="error"`` and a small compute weight, exit when this prediction is
          right, continue when a later one is, exit when none is;
        * with ``policy``: ``q_policy`` float64 ``[N, 2]``, ``correct_policy`` bool ``[N, 2]``,
          ``loss_policy`` float64 ``[N, 2]`` and ``flops_policy`` int64 ``[N, 2]``: return,
          correctness, loss and FLOPs of each action followed by the policy's continuation.
        """
        n, S = self.n, self.S
        out = {
            "active": self.active.copy(),
            "decision": np.zeros(n, dtype=np.int64),
            "correct": np.zeros((n, S), dtype=bool),
            "loss": np.zeros((n, S), dtype=np.float64),
            "flops": np.zeros((n, S), dtype=np.int64),
            "returns": np.full((n, S), -np.inf),
            "q": np.zeros((n, 2), dtype=np.float64),
            "q_full": np.zeros((n, 2), dtype=np.float64),
            "best_action": np.zeros(n, dtype=np.int64),
        }
        r = self.reward
        choose = None if policy is None else as_policy(policy, copy=False)
        if policy is not None:
            for key, dtype in (
                ("q_policy", np.float64),
                ("correct_policy", bool),
                ("loss_policy", np.float64),
                ("flops_policy", np.int64),
            ):
                out[key] = np.zeros((n, 2), dtype=dtype)
        for c in self.cohorts:
            walk, slots, t = c.walk, c.slots, c.walk.t
            labels = torch.as_tensor(self.labels[self.index[slots]], device=walk.logits.device)
            rest = walk.select(np.arange(len(walk)))  # the episodes themselves are not touched
            out["decision"][slots] = t
            chooses = np.ones((len(slots), S), dtype=np.int64)  # the policy's action at every later exit
            for j in range(t, S):
                if policy is not None and t < j < S - 1:
                    chooses[:, j] = np.asarray(choose(self._observe(rest), self._masks(rest), False), dtype=np.int64).reshape(
                        -1
                    )
                ce = F.cross_entropy(rest.logits.float(), labels, reduction="none").double().cpu().numpy()
                ok = (rest.logits.argmax(1) == labels).cpu().numpy()
                flops = rest.flops.copy()
                out["correct"][slots, j], out["loss"][slots, j], out["flops"][slots, j] = ok, ce, flops
                if r.kind == "flops":
                    comp = -r.compute_weight * (flops - walk.flops) / self.full + r.compute_weight * (
                        1 - self.first_flops / self.full
                    )
                else:
                    comp = np.full(len(slots), r.compute_weight * (self.T - j) / (1 if r.kind == "rnp" else self.T))
                ret = comp + r.final(ce, ok)
                if self.budget is not None:
                    ret = np.where(flops <= self.budget * self.full + 1e-9, ret, -np.inf)
                out["returns"][slots, j] = ret
                if j < S - 1:
                    rest.step(np.ones(len(rest), dtype=np.int64))
            q = out["q"][slots]
            q[:, 0] = out["returns"][slots, t]
            q[:, 1] = out["returns"][slots, t + 1 :].max(1) if t < S - 1 else -np.inf
            out["q"][slots] = q
            out["q_full"][slots] = np.stack([out["returns"][slots, t], out["returns"][slots, S - 1]], 1)
            out["best_action"][slots] = (q[:, 1] > q[:, 0]).astype(np.int64)
            if policy is not None:
                after = np.full(len(slots), S - 1)  # the exit the policy leaves at, having continued at t
                for j in range(S - 2, t, -1):
                    after = np.where(chooses[:, j] == 0, j, after)
                for a, leave in ((0, np.full(len(slots), t)), (1, after)):
                    out["q_policy"][slots, a] = out["returns"][slots, leave]
                    out["correct_policy"][slots, a] = out["correct"][slots, leave]
                    out["loss_policy"][slots, a] = out["loss"][slots, leave]
                    out["flops_policy"][slots, a] = out["flops"][slots, leave]
        return out

    # -- observations, masks, infos -------------------------------------------------------------------
    def observe(self, walk: ExitWalk) -> np.ndarray:
        """Observations ``[b, D]`` of the images of ``walk`` (any walk on this core's stages)."""
        return self._observe(walk)

    def _observe(self, walk: ExitWalk) -> np.ndarray:
        b = len(walk)
        out = np.zeros((b, self.observation_space.shape[0]), dtype=np.float32)
        if b and not walk.done:
            f = torch.tanh(walk.pooled.float() / self.scale[walk.t]).cpu().numpy()
            out[:, : f.shape[1]] = f
            out[:, self.feat_dim + walk.t] = 1.0
            c0 = self.feat_dim + self.T
            out[:, c0 : c0 + 3] = confidence(walk.logits).cpu().numpy()
        out[:, -1] = np.minimum(walk.flops / self.full, 1.0)
        return out

    def _masks(self, walk: ExitWalk) -> np.ndarray:
        """bool ``[b, 2]``: exiting is always allowed; continuing unless the budget forbids the next stage."""
        m = np.ones((len(walk), 2), dtype=bool)
        if self.budget is not None and not walk.done:
            k = walk.t + 1
            m[:, 1] = walk.flops + self.costs.stages[k] + self.costs.heads[k] <= self.budget * self.full + 1e-9
        return m

    def _info_arrays(self, slots: np.ndarray, walk: ExitWalk, masks: np.ndarray) -> dict:
        idx = self.index[slots]
        d = {
            "decision": np.full(len(slots), walk.t, dtype=np.int64),
            "flops": walk.flops.copy(),
            "action_mask": masks.copy(),
            "index": idx.copy(),
        }
        if self.has_difficulty:
            d["difficulty"] = self.difficulty[idx].astype(np.float64)
        return d

    def _final_info_arrays(self, slots, flops, actions, exit_at, pred, ce) -> dict:
        idx = self.index[slots]
        labels = self.labels[idx]
        pred = pred.astype(np.int64)
        d = {
            "decision": np.full(len(slots), exit_at, dtype=np.int64),
            "flops": np.asarray(flops, dtype=np.int64).copy(),
            "action_mask": np.ones((len(slots), 2), dtype=bool),
            "index": idx.copy(),
            "prediction": pred,
            "label": labels.copy(),
            "correct": pred == labels,
            "flops_ratio": np.asarray(flops) / self.full,
            "cross_entropy": np.asarray(ce, dtype=np.float64),
            "actions": np.asarray(actions, dtype=np.int64).copy(),
            "exit": np.full(len(slots), exit_at, dtype=np.int64),
        }
        if self.has_difficulty:
            d["difficulty"] = self.difficulty[idx].astype(np.float64)
            d["difficulty_params"] = {k: v[idx].astype(np.float64) for k, v in self.difficulty_params.items()}
        return d

    def _info(self, slot: int, walk: ExitWalk, row: int, mask: np.ndarray) -> dict:
        i = int(self.index[slot])
        info = {"decision": int(walk.t), "flops": int(walk.flops[row]), "action_mask": mask.copy(), "index": i}
        if self.has_difficulty:
            info["difficulty"] = float(self.difficulty[i])
        return info

    def _final_info(self, slot: int, flops: int, actions: np.ndarray, exit_at: int, pred: int, ce: float) -> dict:
        i = int(self.index[slot])
        label = int(self.labels[i])
        info = {
            "decision": int(exit_at),
            "flops": flops,
            "action_mask": np.ones(2, dtype=bool),
            "index": i,
            "prediction": pred,
            "label": label,
            "correct": bool(pred == label),
            "flops_ratio": flops / self.full,
            "cross_entropy": ce,
            "actions": np.asarray(actions, dtype=np.int64).copy(),
            "exit": int(exit_at),
        }
        if self.has_difficulty:
            info["difficulty"] = float(self.difficulty[i])
            info["difficulty_params"] = {k: float(v[i]) for k, v in self.difficulty_params.items()}
        return info


def _has_exits(backbone: Any) -> bool:
    """Whether ``backbone`` (a name, a checkpoint path or a network) is a ResNet with early exits."""
    from ..models.exits import ExitResNet

    if isinstance(backbone, ExitResNet):
        return True
    if isinstance(backbone, str) and not backbone.endswith(".pt") and "/" not in backbone:
        return backbone.split("@")[0].split("+")[0].endswith("-exits")
    return False
