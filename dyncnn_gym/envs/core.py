"""``RoutingCore``: N routing episodes over one backbone, the engine behind every env face.

The single env is a core with one slot, the native Gymnasium and SB3 vector envs are cores with N
slots. Slots that stand at the same decision point form a *cohort* that moves as one batched
:class:`~dyncnn_gym.walk.Walk`; since every episode has the same length, all slots normally form one
cohort, and only partial resets (``reset_mask``) split them for a while.
"""

from __future__ import annotations

import inspect
import reprlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from ..data.base import DataSplits
from ..device import check_device
from ..models import DynamicNet
from ..policies import as_policy
from ..pretraining import resolve_backbone
from ..walk import Walk, cost_tensors, run, run_routes
from .probes import fit_threads
from .rewards import DEFAULT_TARGET_RATE, FlopsTarget, Reward

OBS_MODES = ("features", "probe")
#: ``shaping=`` choices: none, or potential-based shaping with the full-width continuation (see ``RoutingCore.potential``)
SHAPINGS = ("none", "continuation")
#: backbone precisions (``dtype=``): FLOPs are counted per operation, so the accounting is the same in each
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOW_PRECISION: weakref.WeakKeyDictionary[DynamicNet, dict[torch.dtype, DynamicNet]] = weakref.WeakKeyDictionary()


def at_precision(net: DynamicNet, dtype: torch.dtype) -> DynamicNet:
    """``net`` itself in float32, else one shared copy of it cast to ``dtype`` (per net and dtype,
    so the envs of one process share it; the original is never modified)."""
    if next(net.parameters()).dtype == dtype:
        return net
    per = _LOW_PRECISION.setdefault(net, {})
    if dtype not in per:
        import copy

        per[dtype] = copy.deepcopy(net).to(dtype).eval()
    return per[dtype]


@dataclass
class _Cohort:
    walk: Any  # a Walk (RoutingCore) or an ExitWalk (ExitCore): both have t, select and cat
    slots: np.ndarray  # int64 [b], the slots whose episodes this walk carries (row i <-> slots[i])


def _shared_data(dataset: Any) -> DataSplits:
    """Load a data set once per process for hashable specs (names), so many envs share one copy."""
    if isinstance(dataset, DataSplits):
        return dataset
    if isinstance(dataset, str):
        hit = _DATA.get(dataset)
        if hit is None:
            from ..data import load_dataset

            hit = _DATA[dataset] = load_dataset(dataset)
        return hit
    from ..data import load_dataset

    return load_dataset(dataset)


_DATA: dict[str, DataSplits] = {}
#: ``split=`` choices; ``"auto"``: ``"val"`` where the data has a held-out split, else ``"train"``
SPLITS = ("train", "val", "test", "auto")
_START: weakref.WeakKeyDictionary[DynamicNet, dict[tuple, float]] = weakref.WeakKeyDictionary()
#: bounds of the starting compute weight :func:`starting_weight` picks
START_WEIGHT_RANGE = (1e-3, 1.0)


@torch.no_grad()
def static_curve(net: DynamicNet, mode: str, data: DataSplits, split: str, n: int = 1000, seed: int = 0) -> np.ndarray:
    """float64 ``[R, 2]``: (FLOPs ratio, accuracy) of static routes on up to ``n`` images of ``split``:
    every uniform width (channel mode), every block skipped at random at rates 0, 0.25, 0.5, 0.75
    and 1 (skip mode, drawn with ``seed``), or both (route mode: every uniform width, and blocks
    skipped at random at those rates, the others at full width)."""
    part = data.split(split)
    idx = np.random.default_rng(seed).permutation(len(part))[:n]
    dev = next(net.parameters()).device
    x = torch.as_tensor(part.images[idx]).to(dev, next(net.parameters()).dtype)
    y = np.asarray(part.labels)[idx]
    table = cost_tensors(net, mode)[0]
    T, A = table.num_decisions, table.num_actions
    gen = torch.Generator().manual_seed(seed)
    skips = [(torch.rand((len(idx), T), generator=gen) >= r).long() for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    if mode == "channel":
        routes = [torch.full((len(idx), T), a) for a in range(A)]
    elif mode == "route":  # action 0 skips a block, a >= 1 runs it at width a / (A - 1)
        routes = [torch.full((len(idx), T), a) for a in range(1, A)] + [s * (A - 1) for s in skips]
    else:
        routes = skips
    was_training = net.training
    net.eval()
    points = []
    for acts in routes:
        logits, flops = run_routes(net, mode, x, acts)
        points.append((float(flops.double().mean()) / table.full, float((logits.argmax(1).cpu().numpy() == y).mean())))
    net.train(was_training)
    return np.array(points, dtype=np.float64)


def held_out(data: DataSplits, n: int | None, seed: int = 0) -> tuple[Any, np.ndarray]:
    """Images the test split does not hold: the ``"val"`` split where the data has one, else
    ``"train"``, and ``n`` of its row indices drawn with ``seed`` (all rows, in order, if ``n`` is None)."""
    split = data.split("val" if data.has_val else "train")
    idx = np.random.default_rng(seed).permutation(len(split))[:n] if n is not None else np.arange(len(split))
    return split, idx


def hull_slope(points: np.ndarray, x: float) -> float:
    """Slope at ``x`` of the upper concave hull of ``points`` ``[R, 2]`` (0 outside their range)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0]) <= (p[1] - hull[-2][1]) * (
            hull[-1][0] - hull[-2][0]
        ):
            hull.pop()
        hull.append(p)
    for (x0, y0), (x1, y1) in zip(hull[:-1], hull[1:]):
        if x0 <= x <= x1 and x1 > x0:
            return (y1 - y0) / (x1 - x0)
    return 0.0


def starting_weight(net: DynamicNet, mode: str, data: DataSplits, split: str, target: float) -> float:
    """The compute weight a :class:`~dyncnn_gym.envs.rewards.FlopsTarget` starts from when none is given:
    half the slope, at ``target``, of the accuracy-FLOPs curve of static routes on the images the
    episodes draw from (:func:`static_curve`, :func:`hull_slope`), clipped to :data:`START_WEIGHT_RANGE`.

    The slope is the price of FLOPs at which the static routes around the target break even, so the
    right weight for a routing policy is of its order; half of it starts the adaptation below it,
    where policies spend more than the target and are pushed down smoothly (a weight too high early
    drives a policy onto the cheapest route, from which it does not come back). Where the backbone is right on nearly every image of the
    split at every width (a memorised train split), the slope is about 0 and the start is the floor.
    Computed once per backbone, mode, data, split and target in a process."""
    per_net = _START.setdefault(net, {})
    key = (mode, data.fingerprint, split, round(float(target), 6))
    if key not in per_net:
        per_net[key] = weight_below_front(static_curve(net, mode, data, split), target)
    return per_net[key]


def weight_below_front(points: np.ndarray, target: float) -> float:
    """Half the slope, at ``target``, of the upper hull of static routes' ``points`` ``[R, 2]`` (FLOPs
    ratio, accuracy), clipped to :data:`START_WEIGHT_RANGE`: where a FLOPs target's compute weight
    starts (see :func:`starting_weight`)."""
    return float(np.clip(0.5 * hull_slope(points, target), *START_WEIGHT_RANGE))


_OBS_SCALE: weakref.WeakKeyDictionary[DynamicNet, dict[tuple, list[torch.Tensor]]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def feature_scale(net: DynamicNet, mode: str, data: DataSplits, n: int = 256) -> list[torch.Tensor]:
    """Per decision point, per channel scale of the pooled features: their mean over the first ``n``
    train images on the full route (floored at 1 % of the largest). Observations are
    ``tanh(pooled / scale)``. Computed once per (net, mode, data) and process, with
    :data:`~dyncnn_gym.envs.probes.FIT_THREADS` threads."""
    per_net = _OBS_SCALE.setdefault(net, {})
    key = (mode, data.fingerprint)
    if key not in per_net:
        was_training = net.training
        net.eval()
        x = torch.as_tensor(data.train.images[:n]).to(next(net.parameters()).device)
        scales = []

        def full_width(walk: Walk) -> int:
            m = walk.pooled().abs().mean(0)
            scales.append(torch.clamp(m, min=max(float(m.max()) * 0.01, 1e-6)))
            return walk.A - 1

        with fit_threads():
            run(Walk(net, mode, x), full_width)
        net.train(was_training)
        per_net[key] = scales
    return per_net[key]


def check_arguments(cls: type, kwargs: dict) -> None:
    """A ``TypeError`` naming the unknown arguments and the valid ones, unless ``cls(**kwargs)`` takes
    every keyword (what a misspelt env argument, e.g. ``gym.make("DynChannel-v1", flop_target=0.5)``,
    meets before Python's own error, which names no valid choice)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        shown = ", ".join(f"{k}={reprlib.repr(kwargs[k])}" for k in unknown)
        valid = [n for n in params if n not in ("self", "mode", "num_slots", "n")]  # not those the env sets
        raise TypeError(f"unknown argument {shown}; the valid arguments are {valid}")


class CheckedArguments:
    """A class whose constructor names a misspelt keyword argument with the valid ones
    (:func:`check_arguments`) before Python's own ``TypeError``."""

    def __new__(cls, *args: Any, **kwargs: Any):
        check_arguments(cls, kwargs)
        return super().__new__(cls)


class EpisodeSlots(CheckedArguments):
    """What the per-decision :class:`RoutingCore` and the early-exit
    :class:`~dyncnn_gym.envs.exit_core.ExitCore` share: the backbone's weights, the compute weight
    (fixed, or held at a FLOPs target), the budget check, and how each slot draws its images.

    A core sets ``net``, ``reward``, ``target``, ``data``, ``device``, ``split_name``, ``images``,
    ``labels``, ``rngs`` and ``cursor``, and defines ``check_flops_ratio``."""

    def backbone_state(self) -> dict:
        """A detached CPU copy of the backbone's ``state_dict`` (name -> tensor)."""
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def load_backbone_state(self, state_dict: dict) -> None:
        """Load new backbone weights (kept in eval mode, as the routed network is evaluated)."""
        self.net.load_state_dict(state_dict)
        self.net.eval()

    @property
    def compute_weight(self) -> float:
        """The reward's compute weight (units of the reward form; see :mod:`dyncnn_gym.envs.rewards`)."""
        return self.reward.compute_weight

    def set_compute_weight(self, weight: float) -> None:
        """Change the reward's compute weight for every slot from the next step on (e.g. a controller
        steering the policy's FLOPs while it trains); ``ValueError`` unless a finite number >= 0
        (> 0 while a ``flops_target`` is held: the adaptation restarts from ``weight``)."""
        r = self.reward
        if self.target is not None:
            self.target.set_weight(weight)
        self.reward = Reward.make(r.kind, weight, r.loss_weight, r.ce_clip, r.loss)

    def _check_budget(self, budget: float | None) -> float | None:
        return None if budget is None else self.check_flops_ratio(budget, "budget", ", or None for no budget")

    def _hold_target(
        self, flops_target: float | None, start: float | None, rate: float, default_start: Callable[[], float]
    ) -> None:
        """With a ``flops_target`` (checked by ``check_flops_ratio``), hold it from the compute weight
        ``start``, or ``default_start()`` when that is ``None``; without one, leave the weight fixed."""
        if flops_target is None:
            return
        self.check_flops_ratio(flops_target, "flops_target", ", or None for a fixed compute_weight")
        self.target = FlopsTarget(flops_target, default_start() if start is None else start, rate)
        self.reward = self.reward.with_weight(self.target.weight)

    def restart(self) -> None:
        """What a seeded reset restarts, so that everything after it is reproducible: the test split
        from its first image, and a FLOPs target's compute weight from where it started."""
        self.cursor = 0
        if self.target is not None:
            self.target.restart()
            self.reward = self.reward.with_weight(self.target.weight)

    def seed_slots(self, seeds: list[int | None]) -> None:
        for i, s in enumerate(seeds):
            self.rngs[i] = np.random.default_rng(s)

    def _pick(self, slot: int) -> int:
        if self.split_name != "test":
            return int(self.rngs[slot].integers(len(self.labels)))
        i = self.cursor % len(self.labels)
        self.cursor += 1
        return i

    def held_out(self, n: int | None, seed: int = 0) -> tuple[Any, np.ndarray]:
        """Images the test split does not hold (see :func:`held_out`)."""
        return held_out(self.data, n, seed)

    def held_out_images(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` held-out images (fewer if the split is smaller; see :func:`held_out`) on this core's device."""
        split, idx = held_out(self.data, n, seed)
        return torch.as_tensor(split.images[idx]).to(self.device, self.images.dtype)

    # -- cohorts: the slots at the same decision share one walk ---------------------------------------
    def _drop(self, slots: np.ndarray) -> None:
        """Remove ``slots`` from the cohorts they are in."""
        kept = []
        for c in self.cohorts:
            keep = ~np.isin(c.slots, slots)
            if keep.all():
                kept.append(c)
            elif keep.any():
                kept.append(_Cohort(c.walk.select(np.flatnonzero(keep)), c.slots[keep]))
        self.cohorts = kept

    def _merge(self) -> None:
        """One cohort per decision point: the walks of cohorts at the same decision are concatenated."""
        by_t: dict[int, list[_Cohort]] = {}
        for c in self.cohorts:
            by_t.setdefault(c.walk.t, []).append(c)
        self.cohorts = [
            cs[0]
            if len(cs) == 1
            else _Cohort(type(cs[0].walk).cat([c.walk for c in cs]), np.concatenate([c.slots for c in cs]))
            for cs in by_t.values()
        ]

    def action_masks(self) -> np.ndarray:
        """bool ``[N, A]`` of allowed actions for every slot's current decision."""
        out = np.ones((self.n, self.A), dtype=bool)
        for c in self.cohorts:
            out[c.slots] = self._masks(c.walk)
        return out


class RoutingCore(EpisodeSlots):
    """Routing episodes for ``num_slots`` images at once (see the env docstrings for the arguments)."""

    def __init__(
        self,
        mode: str,
        num_slots: int = 1,
        dataset: Any = "shapes",
        backbone: Any = None,
        groups: int = 4,
        split: str = "train",
        reward: str = "flops",
        compute_weight: float | None = None,
        loss_weight: float = 1.0,
        ce_clip: float = 5.0,
        loss: str = "ce",
        budget: float | None = None,
        device: str | torch.device = "cpu",
        obs: str = "features",
        dtype: str = "float32",
        shaping: str = "none",
        budget_strict: bool = False,
        flops_target: float | None = None,
        target_rate: float = DEFAULT_TARGET_RATE,
        decision_costs: Any = "flops",
    ) -> None:
        if not isinstance(num_slots, (int, np.integer)) or num_slots < 1:
            raise ValueError(f"num_envs={num_slots!r} must be a positive integer")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not a valid split; choose one of {list(SPLITS)}")
        if obs not in OBS_MODES:
            raise ValueError(f"obs={obs!r} is not an observation mode; choose one of {list(OBS_MODES)}")
        if shaping not in SHAPINGS:
            raise ValueError(f"shaping={shaping!r} is not a reward shaping; choose one of {list(SHAPINGS)}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not a backbone precision; choose one of {list(DTYPES)}")
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 2:
            raise ValueError(f"groups={groups!r} must be an integer >= 2 (e.g. 2, 4 or 8)")
        if not isinstance(budget_strict, (bool, np.bool_)):
            raise ValueError(f"budget_strict={budget_strict!r} must be True or False")
        self.mode, self.n, self.obs_mode = mode, int(num_slots), obs
        self.device = check_device(device)
        self.reward = Reward.make(reward, compute_weight, loss_weight, ce_clip, loss)
        self.data = _shared_data(dataset)
        if split == "auto":
            split = "val" if self.data.has_val else "train"
        #: the split episodes draw their images from (``"auto"`` resolved)
        self.split_name = split
        self.net = at_precision(resolve_backbone(backbone, self.data, mode, int(groups), self.device), DTYPES[dtype])
        self.dtype = dtype
        self.shaping = shaping
        self.net.eval()
        self.table, self._steps, self._head = cost_tensors(self.net, mode)
        self.T, self.A = self.table.num_decisions, self.table.num_actions
        self.full = self.table.full
        a_max = self.A - 1
        split_data = self.data.split(split)
        if len(split_data) == 0:
            raise ValueError(f"the {split!r} split of data {self.data.name!r} is empty")
        #: whether the reward prices decisions by time (``decision_costs`` other than ``"flops"``)
        self.time_weighted = not (isinstance(decision_costs, str) and decision_costs == "flops")
        #: what the reward's compute term charges each decision, ``[T, A, A]`` (see ``decision_costs``)
        self.cost_steps = self._decision_costs(decision_costs, split_data)
        self._full_step = np.array([self.cost_steps[t, a_max, a_max] for t in range(self.T)], dtype=np.float64)
        self._full_step[-1] += int(self.table.head[a_max])
        self._min_to_go = self.table.min_to_go()
        self.budget = self._check_budget(budget)
        #: with a budget: ``True`` raises on a forbidden action, ``False`` takes the nearest allowed one
        self.budget_strict = bool(budget_strict)
        #: holds the mean FLOPs ratio of finished episodes at ``flops_target`` (``None``: a fixed weight)
        self.target: FlopsTarget | None = None
        self._hold_target(
            flops_target,
            compute_weight,
            target_rate,
            lambda: starting_weight(self.net, mode, self.data, split, float(flops_target)),
        )

        self.images = torch.as_tensor(split_data.images).to(self.device, DTYPES[dtype])
        self.labels = np.asarray(split_data.labels, dtype=np.int64)
        self.difficulty = np.asarray(split_data.difficulty, dtype=np.float32)
        self.has_difficulty = bool(np.isfinite(self.difficulty).any())
        self.difficulty_params = {k: np.asarray(v, dtype=np.float32) for k, v in split_data.difficulty_params.items()}
        self.scale = feature_scale(self.net, mode, self.data)
        self.feat_dim = max(self.net.feature_widths(mode))
        self.extra_dim = 3 if obs == "probe" else 0
        dim = self.feat_dim + self.T + self.extra_dim + 1
        low = np.concatenate([-np.ones(self.feat_dim), np.zeros(self.T + self.extra_dim + 1)]).astype(np.float32)
        self.probes = None
        if obs == "probe":
            from .probes import fit_probes

            self.probes = fit_probes(self)
        self.observation_space = spaces.Box(low, np.ones(dim, dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Discrete(self.A)

        #: "dicts": one info dict per slot (single env, SB3); "arrays": dict of per-slot arrays with
        #: ``_key`` masks, Gymnasium's vector form, built with array operations (native vector env)
        self.info_format = "dicts"
        self.rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(self.n)]
        self.cursor = 0
        self.cohorts: list[_Cohort] = []
        self.index = np.zeros(self.n, dtype=np.int64)
        self.active = np.zeros(self.n, dtype=bool)
        #: potential of each slot's current state (``shaping="continuation"``)
        self.phi = np.zeros(self.n, dtype=np.float64)

    # -- configuration ---------------------------------------------------------------------------
    def _decision_costs(self, spec: Any, split_data: Any) -> np.ndarray:
        """``cost_steps`` from the ``decision_costs`` argument: the FLOPs table itself for
        ``"flops"``, else time-weighted FLOPs (:func:`~dyncnn_gym.time_costs.time_weighted_steps`) of
        the given times or, for ``"time"``, of :func:`~dyncnn_gym.time_costs.decision_times`
        on a batch of ``TIME_BATCH`` images of the episodes' split (repeated where it holds fewer;
        measured once per backbone and thread count in a process:
        :func:`~dyncnn_gym.time_costs.measured_times`)."""
        from .. import time_costs

        steps = self.table.steps
        if not self.time_weighted:
            return steps.astype(np.float64)
        if self.reward.kind != "flops":
            raise ValueError(
                f"decision_costs={reprlib.repr(spec)} prices the reward='flops' form; reward={self.reward.kind!r}"
                " pays per group or block not computed, whatever it costs"
            )
        if isinstance(spec, str):
            if spec != "time":
                raise ValueError(
                    f"decision_costs={spec!r} is not a cost; choose 'flops', 'time' or an array of shape"
                    f" {list(steps.shape)} (e.g. from dyncnn_gym.time_costs.decision_times)"
                )
            rows = np.arange(time_costs.TIME_BATCH) % len(split_data.images)
            x = torch.as_tensor(split_data.images[rows]).to(self.device, DTYPES[self.dtype])
            spec = time_costs.measured_times(self.net, self.mode, x)
        return time_costs.time_weighted_steps(steps, time_costs.check_costs(spec, tuple(steps.shape)))

    @property
    def min_flops_ratio(self) -> float:
        """FLOPs of the cheapest route of this backbone, as a ratio of the full network's."""
        return float(self._min_to_go[0, self.A - 1] + self.table.stem) / self.full

    def check_flops_ratio(self, value: Any, name: str = "target", none_hint: str = "") -> float:
        """``value`` as a float if it is a FLOPs ratio some route of this backbone reaches, i.e. in
        ``[min_flops_ratio, 1]``; else a ``ValueError`` naming ``name``, the value and that range."""
        lo = self.min_flops_ratio
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not lo <= value <= 1.0:
            raise ValueError(
                f"{name}={value!r} must be a FLOPs ratio in [{lo:.4f}, 1] (the cheapest route of this"
                f" backbone up to the full network){none_hint}"
            )
        return float(value)

    # -- episodes --------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_slots(self, slots: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Start new episodes in ``slots``; returns their observations ``[len(slots), D]`` and infos."""
        slots = np.asarray(slots, dtype=np.int64)
        self._drop(slots)
        for s in slots:
            self.index[s] = self._pick(int(s))
        walk = Walk(self.net, self.mode, self.images[torch.as_tensor(self.index[slots], device=self.device)])
        self.cohorts.append(_Cohort(walk, slots.copy()))
        self.active[slots] = True
        if self.shaping != "none":
            self.phi[slots] = self.potential(walk, slots)
        self._merge()
        obs = self._observe(walk)
        masks = self._masks(walk)
        if self.info_format == "arrays":
            return obs, _put({}, self._info_arrays(slots, walk, masks), slots, self.n)
        return obs, [self._info(int(s), walk, r, masks[r]) for r, s in enumerate(slots)]

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Apply one action per slot to every slot that is in an episode (``self.active``).

        Returns observations ``[N, D]`` float32, rewards ``[N]`` float64, terminated ``[N]`` bool and
        one info dict per slot; slots not in an episode get zeros and ``{}`` (their actions are
        ignored, but must still be valid). A terminated slot's observation is the last one of its
        episode (zero features, the FLOPs used); the slot must be reset before it can step again.

        With a ``budget``, an action the budget forbids raises ``ValueError`` before any episode
        advances if ``budget_strict``; otherwise the slot takes the nearest allowed action
        (:func:`nearest_allowed`), and every stepped slot's info holds ``action_taken`` and
        ``action_forbidden`` (whether it differs from the action given).
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
                        r = int(np.nonzero(bad)[0][0])
                        raise ValueError(
                            f"action {int(a[r])} in slot {int(c.slots[r])} breaks the compute budget {self.budget}; "
                            f"valid actions there: {np.nonzero(masks[r])[0].tolist()} (see action_masks())"
                        )
                    actions[c.slots] = nearest_allowed(masks, a)
        obs = np.zeros((self.n, self.observation_space.shape[0]), dtype=np.float32)
        rew = np.zeros(self.n, dtype=np.float64)
        term = np.zeros(self.n, dtype=bool)
        arrays = self.info_format == "arrays"
        infos: list[dict] | dict = {} if arrays else [{} for _ in range(self.n)]
        for c in self.cohorts:
            walk, slots = c.walk, c.slots
            a = actions[slots]
            t = walk.t
            spent = walk.flops.numpy().copy() if t else np.zeros(len(slots), dtype=np.int64)
            prev = walk.prev.numpy().copy() if self.time_weighted else None
            cost = walk.step(torch.as_tensor(a)).numpy().copy()
            if prev is not None:
                cost = self.cost_steps[t][prev, a]
            if walk.done:
                logits = walk.logits()
                cost = cost + self._head.numpy()[a]
                labels = torch.as_tensor(self.labels[self.index[slots]], device=logits.device)
                ce = F.cross_entropy(logits.float(), labels, reduction="none").double().cpu().numpy()
                pred = logits.argmax(1).cpu().numpy()
                rew[slots] = self.reward.step(t, a, cost, float(self._full_step[t]), self.full, self.A, self.T)
                rew[slots] += self.reward.final(ce, pred == labels.cpu().numpy())
                if self.shaping != "none":  # the terminal state's potential is 0
                    rew[slots] -= self.phi[slots]
                    self.phi[slots] = 0.0
                term[slots] = True
                obs[slots] = self._observe(walk)
                step_cost = (walk.flops.numpy() - spent) / self.full
                if arrays:
                    _put(infos, {**self._final_info_arrays(slots, walk, pred, ce), "cost": step_cost}, slots, self.n)
                else:
                    for r, s in enumerate(slots):
                        infos[s] = self._final_info(int(s), walk, r, int(pred[r]), float(ce[r]))
                        infos[s]["cost"] = float(step_cost[r])
                self.active[slots] = False
                if self.target is not None:
                    self.reward = self.reward.with_weight(self.target.update(walk.flops.numpy() / self.full, self.T))
            else:
                rew[slots] = self.reward.step(t, a, cost, float(self._full_step[t]), self.full, self.A, self.T)
                if self.shaping != "none":
                    phi = self.potential(walk, slots)
                    rew[slots] += phi - self.phi[slots]
                    self.phi[slots] = phi
                obs[slots] = self._observe(walk)
                masks = self._masks(walk)
                step_cost = (walk.flops.numpy() - spent) / self.full
                if arrays:
                    _put(infos, {**self._info_arrays(slots, walk, masks), "cost": step_cost}, slots, self.n)
                else:
                    for r, s in enumerate(slots):
                        infos[s] = self._info(int(s), walk, r, masks[r])
                        infos[s]["cost"] = float(step_cost[r])
        if self.budget is not None:
            _put_taken(infos, actions[stepped], chosen[stepped], stepped, self.n, arrays)
        self.cohorts = [c for c in self.cohorts if not c.walk.done]
        return obs, rew, term, infos

    @torch.no_grad()
    def potential(self, walk: Walk, slots: np.ndarray) -> np.ndarray:
        """Shaping potential (float64 ``[len(slots)]``) of the images of ``walk`` (in ``slots``) where they stand.

        ``shaping="continuation"``: the classification term the image would get if every remaining
        decision took the full width (or executed every block), from the backbone itself: with
        ``loss="error"``, ``-loss_weight * (1 - p)`` with ``p`` that continuation's probability of
        the true label (a smooth stand-in for its 0/1 error); with ``loss="ce"``, ``-loss_weight *
        min(CE, ce_clip)``. Each step pays ``potential(after) - potential(before)`` on top of its
        reward, and the terminal state's potential is 0, so an episode's return changes only by
        ``-potential(first state)``, which no action can change: the optimal policy is the same
        (Ng et al., 1999), but a decision that harms the image is charged at once rather than at
        the end. It costs one full-width pass over the remaining layers per step.
        """
        rest = run(walk.select(np.arange(len(walk))), lambda w: self.A - 1)  # shares feature maps, never overwrites them
        logits = rest.logits().float()
        labels = torch.as_tensor(self.labels[self.index[slots]], device=logits.device)
        r = self.reward
        if r.loss == "error":
            p = F.softmax(logits, 1).gather(1, labels[:, None])[:, 0].double().cpu().numpy()
            return -r.loss_weight * (1.0 - p)
        ce = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
        return -r.loss_weight * np.minimum(ce, r.ce_clip)

    @torch.no_grad()
    def teacher(self, policy: Any = None) -> dict[str, np.ndarray]:
        """The outcome of each action at every slot's current decision (beside the RL interface: it
        knows the label, so it never enters the observation, and computing it changes nothing in
        the episodes).

        Continuations: after action ``a`` at decision ``t``, the *uniform* continuation ``c`` takes
        action ``c`` at every remaining decision (``c = A - 1``: the full continuation, every later
        layer at full width / every later block run; ``c = 0``: the cheapest). Computing all of
        them costs ``A`` steps and ``A * A`` passes over the remaining decisions per slot. With
        ``policy`` (anything :func:`~dyncnn_gym.policies.as_policy` accepts: an SB3 model, a torch
        module of observations ``[b, D]`` to scores ``[b, A]``, a callable of observations to actions
        ``[b]``; e.g. the agent being trained), the continuation that follows it is computed too (``A`` more passes, the policy choosing at
        every remaining decision from the observations the env would give).

        Returns arrays over the ``N`` slots (rows of slots not in an episode: ``active`` false,
        zeros elsewhere):

        * ``active`` bool ``[N]``; ``decision`` int64 ``[N]``: the decision ``t`` each slot is at;
        * ``correct`` bool ``[N, A, A]``, ``loss`` float64 ``[N, A, A]`` (cross-entropy, nats) and
          ``flops`` int64 ``[N, A, A]``: the final prediction, its loss and the image's FLOPs
          after action ``a`` and continuation ``c`` (index ``[slot, a, c]``);
        * ``returns`` float64 ``[N, A, A]``: the env's (unshaped) return from this decision on
          along that route (``-inf`` where it breaks the ``budget``);
        * ``q`` float64 ``[N, A]``: each action's return under its best uniform continuation;
          ``q_full`` under the full continuation;
        * ``best_action`` int64 ``[N]``: the argmax of ``q``, ties going to the cheaper action:
          with ``loss="error"`` and a small compute weight, the cheapest action after which some
          uniform continuation still classifies the image correctly;
        * with ``policy``: ``q_policy`` float64 ``[N, A]``, ``correct_policy`` bool ``[N, A]``,
          ``loss_policy`` float64 ``[N, A]`` and ``flops_policy`` int64 ``[N, A]``: return,
          correctness, loss and FLOPs of each action followed by the policy's continuation.
        """
        n, A, T = self.n, self.A, self.T
        out = {
            "active": self.active.copy(),
            "decision": np.zeros(n, dtype=np.int64),
            "correct": np.zeros((n, A, A), dtype=bool),
            "loss": np.zeros((n, A, A), dtype=np.float64),
            "flops": np.zeros((n, A, A), dtype=np.int64),
            "returns": np.full((n, A, A), -np.inf),
            "q": np.zeros((n, A), dtype=np.float64),
            "q_full": np.zeros((n, A), dtype=np.float64),
            "best_action": np.zeros(n, dtype=np.int64),
        }
        for c in self.cohorts:
            walk, slots, t = c.walk, c.slots, c.walk.t
            b = len(slots)
            rows = np.arange(b)
            labels = torch.as_tensor(self.labels[self.index[slots]], device=self.device)
            allowed = self._masks(walk)
            out["decision"][slots] = t
            for a in range(A):
                after = walk.select(rows)  # shares feature maps, never overwrites them
                after.step(np.full(b, a, dtype=np.int64))
                for cont in range(A):
                    # uniform continuation: the same action for every sample at every later decision
                    w = after if after.done else run(after.select(rows), lambda _, c=cont: c)
                    logits = w.logits().float()
                    ce = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
                    ok = (logits.argmax(1) == labels).cpu().numpy()
                    route = np.array([a] + [cont] * (T - t - 1), dtype=np.int64)
                    ret = self.route_return(t, walk.prev.numpy(), np.broadcast_to(route, (b, T - t)), ce, ok)
                    flops = w.flops.numpy().copy()
                    ok_budget = allowed[:, a] & (flops <= (np.inf if self.budget is None else self.budget * self.full + 1e-9))
                    out["correct"][slots, a, cont], out["loss"][slots, a, cont] = ok, ce
                    out["flops"][slots, a, cont], out["returns"][slots, a, cont] = flops, np.where(ok_budget, ret, -np.inf)
            if policy is not None:
                choose = as_policy(policy, copy=False)
                for key, value in self._follow(walk, slots, labels, allowed, choose).items():
                    out.setdefault(key, np.zeros((n, A), dtype=value.dtype))[slots] = value
            out["q"][slots] = out["returns"][slots].max(2)
            out["q_full"][slots] = out["returns"][slots, :, A - 1]
            # ties to the cheaper action: the first maximum, actions being ordered by cost
            out["best_action"][slots] = out["q"][slots].argmax(1)
        return out

    def route_return(self, t: int, prev: np.ndarray, routes: np.ndarray, ce: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """float64 ``[b]``: the env's (unshaped) return from decision ``t`` on of samples whose previous
        actions are ``prev`` (int64 ``[b]``) and who take ``routes`` (int64 ``[b, T - t]``) to a
        prediction with cross-entropy ``ce`` and correctness ``correct`` (``[b]`` each), at the
        compute weight now."""
        A, T = self.A, self.T
        head = self._head.numpy()
        total = np.zeros(routes.shape[0])
        for s in range(t, T):
            acts = routes[:, s - t]
            cost = self.cost_steps[s][prev, acts] + (head[acts] if s == T - 1 else 0)
            total += self.reward.step(s, acts, cost, float(self._full_step[s]), self.full, A, T)
            prev = acts
        return total + self.reward.final(ce, correct)

    def _follow(self, walk: Walk, slots: np.ndarray, labels: torch.Tensor, allowed: np.ndarray, policy) -> dict:
        """Each action of ``walk``'s decision followed by ``policy``'s continuation: ``q_policy``,
        ``correct_policy``, ``loss_policy``, ``flops_policy`` (``[b, A]`` each)."""
        b, A, T = len(slots), self.A, self.T
        head = self._head.numpy()
        out = {
            "q_policy": np.zeros((b, A)),
            "correct_policy": np.zeros((b, A), dtype=bool),
            "loss_policy": np.zeros((b, A)),
            "flops_policy": np.zeros((b, A), dtype=np.int64),
        }
        for a in range(A):
            w = walk.select(np.arange(b))
            acts = np.full(b, a, dtype=np.int64)
            comp = np.zeros(b)
            while True:
                s = w.t
                cost = self.cost_steps[s][w.prev.numpy(), acts] + (head[acts] if s == T - 1 else 0)
                comp += self.reward.step(s, acts, cost, float(self._full_step[s]), self.full, A, T)
                w.step(acts)
                if w.done:
                    break
                acts = np.asarray(policy(self._observe(w), self._masks(w), False), dtype=np.int64).reshape(-1)
            logits = w.logits().float()
            ce = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
            ok = (logits.argmax(1) == labels).cpu().numpy()
            flops = w.flops.numpy().copy()
            fits = allowed[:, a] & (flops <= (np.inf if self.budget is None else self.budget * self.full + 1e-9))
            out["q_policy"][:, a] = np.where(fits, comp + self.reward.final(ce, ok), -np.inf)
            out["correct_policy"][:, a], out["flops_policy"][:, a], out["loss_policy"][:, a] = ok, flops, ce
        return out

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.dtype.kind not in "iu":
            if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                a = a.astype(np.int64)  # e.g. a float array of whole numbers from a generic agent
            else:
                raise TypeError(f"action {actions!r} is not an integer action of {self.action_space}")
        a = a.astype(np.int64).reshape(-1)
        if a.shape[0] != self.n:
            raise ValueError(f"expected {self.n} actions (one per env), got {a.shape[0]}: {actions!r}")
        bad = (a < 0) | (a >= self.A)
        if bad.any():
            raise ValueError(
                f"action {int(a[bad][0])} is outside the action space {self.action_space} (valid: 0..{self.A - 1})"
            )
        return a

    # -- routing images with a policy (outside episodes) ----------------------------------------
    def route(self, policy: Any, images: torch.Tensor, deterministic: bool = True) -> tuple[torch.Tensor, Walk]:
        """Route ``images [B, C, H, W]`` through the backbone with ``policy`` choosing every action from
        this core's observations (any policy :func:`~dyncnn_gym.policies.as_policy` accepts; an SB3
        model is used live, not copied). ``deterministic=False`` samples an SB3 model's actions as its
        ``predict`` does. Runs with autograd as the caller has it (gradients reach the backbone only:
        the policy sees detached observations). Returns the logits ``[B, classes]`` and the finished walk."""
        adapted = as_policy(policy, copy=False)
        head = adapted.head
        dev = next(head.parameters(), torch.empty(0)).device if head is not None else torch.device("cpu")
        state: list = [adapted.initial_state(images.shape[0], dev)]
        first = [True]
        all_allowed = np.ones((images.shape[0], self.A), dtype=bool)

        def choose(walk: Walk) -> np.ndarray:
            obs = self._observe(walk)
            masks = self._masks(walk)
            if deterministic or head is None:
                with torch.no_grad():
                    a, state[0] = adapted.act(torch.as_tensor(obs, device=dev), torch.as_tensor(masks, device=dev), state[0])
                actions = a.cpu().numpy()
            else:
                actions, state[0] = adapted.sample(obs, first[0], state[0], masks if self.budget is not None else all_allowed)
            first[0] = False
            return np.asarray(actions, dtype=np.int64).reshape(-1)

        walk = run(Walk(self.net, self.mode, images), choose)
        return walk.logits(), walk

    # -- observations and infos ------------------------------------------------------------------
    def observe(self, walk: Walk) -> np.ndarray:
        """Observations ``[b, D]`` of the samples of ``walk`` (any walk on this core's backbone)."""
        return self._observe(walk)

    def scaled_features(self, walk: Walk) -> torch.Tensor:
        """``tanh(pooled / scale)`` of the feature map entering the walk's decision: ``[b, C_t]``."""
        return torch.tanh(walk.pooled().detach() / self.scale[walk.t]).float()

    def _observe(self, walk: Walk) -> np.ndarray:
        b = len(walk)
        out = np.zeros((b, self.observation_space.shape[0]), dtype=np.float32)
        if not walk.done:
            ft = self.scaled_features(walk)
            f = ft.cpu().numpy()
            out[:, : f.shape[1]] = f
            out[:, self.feat_dim + walk.t] = 1.0
            if self.probes is not None:
                from .probes import confidence

                w, bias = self.probes[walk.t]
                c0 = self.feat_dim + self.T
                out[:, c0 : c0 + 3] = confidence(ft @ w + bias).cpu().numpy()
        out[:, -1] = np.minimum(walk.flops.numpy() / self.full, 1.0)
        return out

    def _masks(self, walk: Walk) -> np.ndarray:
        """bool ``[b, A]``: actions allowed at the walk's decision point (all, unless a budget)."""
        b = len(walk)
        if self.budget is None or walk.done:
            return np.ones((b, self.A), dtype=bool)
        t = walk.t
        prev = walk.prev.numpy()
        limit = self.budget * self.full + 1e-9
        need = walk.flops.numpy()[:, None] + self.table.steps[t][prev] + self._min_to_go[t + 1][None, :]
        return need <= limit

    def _info_arrays(self, slots: np.ndarray, walk: Walk, masks: np.ndarray) -> dict:
        """The infos of ``_info`` for all ``slots`` of a cohort at once, as arrays (one row per slot)."""
        idx = self.index[slots]
        d = {
            "decision": np.full(len(slots), walk.t, dtype=np.int64),
            "flops": walk.flops.numpy().copy(),
            "action_mask": masks.copy(),
            "index": idx.copy(),
        }
        if self.has_difficulty:
            d["difficulty"] = self.difficulty[idx].astype(np.float64)
        return d

    def _final_info_arrays(self, slots: np.ndarray, walk: Walk, pred: np.ndarray, ce: np.ndarray) -> dict:
        """The infos of ``_final_info`` for all ``slots`` of a finished cohort at once, as arrays."""
        idx = self.index[slots]
        labels = self.labels[idx]
        flops = walk.flops.numpy().copy()
        pred = pred.astype(np.int64)
        d = {
            "decision": np.full(len(slots), walk.t, dtype=np.int64),
            "flops": flops,
            "action_mask": np.ones((len(slots), self.A), dtype=bool),
            "index": idx.copy(),
            "prediction": pred,
            "label": labels.copy(),
            "correct": pred == labels,
            "flops_ratio": flops / self.full,
            "cross_entropy": np.asarray(ce, dtype=np.float64),
            "actions": walk.actions.numpy().copy(),
        }
        if self.has_difficulty:
            d["difficulty"] = self.difficulty[idx].astype(np.float64)
            d["difficulty_params"] = {k: v[idx].astype(np.float64) for k, v in self.difficulty_params.items()}
        return d

    def _info(self, slot: int, walk: Walk, row: int, mask: np.ndarray) -> dict:
        i = int(self.index[slot])
        info = {"decision": int(walk.t), "flops": int(walk.flops[row]), "action_mask": mask.copy(), "index": i}
        if self.has_difficulty:
            info["difficulty"] = float(self.difficulty[i])
        return info

    def _final_info(self, slot: int, walk: Walk, row: int, pred: int, ce: float) -> dict:
        i = int(self.index[slot])
        label = int(self.labels[i])
        flops = int(walk.flops[row])
        info = {
            "decision": int(walk.t),
            "flops": flops,
            "action_mask": np.ones(self.A, dtype=bool),
            "index": i,
            "prediction": pred,
            "label": label,
            "correct": bool(pred == label),
            "flops_ratio": flops / self.full,
            "cross_entropy": ce,
            "actions": walk.actions[row].numpy().copy(),
        }
        if self.has_difficulty:
            info["difficulty"] = float(self.difficulty[i])
            info["difficulty_params"] = {k: float(v[i]) for k, v in self.difficulty_params.items()}
        return info


def nearest_allowed(masks: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The allowed action nearest to each of ``actions`` (int ``[b]``) under bool ``masks [b, A]``:
    the action itself if allowed, else the largest allowed action below it (fewer channel groups;
    skipping instead of executing), else the smallest allowed one. Every row allows some action."""
    A = masks.shape[1]
    idx = np.arange(A)[None, :]
    below = masks & (idx <= actions[:, None])
    largest_below = A - 1 - np.argmax(below[:, ::-1], axis=1)
    return np.where(below.any(1), largest_below, np.argmax(masks, axis=1)).astype(np.int64)


def _put_taken(infos: Any, taken: np.ndarray, chosen: np.ndarray, slots: np.ndarray, n: int, arrays: bool) -> None:
    """Record what a budget did to each stepped slot's action: ``action_taken`` and
    ``action_forbidden`` (whether ``chosen`` was replaced), into a dict of arrays or per-slot dicts."""
    if arrays:
        _put(infos, {"action_taken": taken, "action_forbidden": taken != chosen}, slots, n)
        return
    for r, s in enumerate(slots):
        infos[s]["action_taken"] = int(taken[r])
        infos[s]["action_forbidden"] = bool(taken[r] != chosen[r])


def _put(out: dict, arrays: dict, slots: np.ndarray, n: int) -> dict:
    """Scatter per-row ``arrays`` of ``slots`` into the dict-of-arrays ``out`` (``_key`` masks)."""
    for k, v in arrays.items():
        if isinstance(v, dict):
            out[k] = _put(out.get(k, {}), v, slots, n)
        else:
            a = out.get(k)
            if a is None:
                a = out[k] = np.zeros((n, *v.shape[1:]), dtype=v.dtype)
            a[slots] = v
        m = out.get(f"_{k}")
        if m is None:
            m = out[f"_{k}"] = np.zeros(n, dtype=bool)
        m[slots] = True
    return out
