"""``DynBlockDrop-v0``: BlockDrop (Wu et al., CVPR 2018) as a one-step Gymnasium env, and its native
vector env. Built on :class:`~dyncnn_gym.envs.core.RoutingCore` in skip mode: the T decisions of an
action are applied one after the other through the same batched :class:`~dyncnn_gym.walk.Walk`
``DynSkip-v0`` uses, so dropped blocks are never computed and FLOPs are those ``DynSkip-v0``
counts for the same actions.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from gymnasium.utils import EzPickle
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..walk import Walk, run
from .core import CheckedArguments, RoutingCore
from .rewards import DEFAULT_TARGET_RATE, REWARD_KINDS
from .routing import BackboneAccess, check_render_mode, image_rgb, reset_single
from .vector import check_max_episode_steps, slot_seeds, vector_autoreset_mode

#: ``reward=`` forms of DynBlockDrop-v0: BlockDrop's own, or a DynSkip-v0 episode return
BLOCKDROP_REWARDS = ("blockdrop", *REWARD_KINDS)
USAGE_KINDS = ("blocks", "flops")

#: the per-decision env each one-step id is evaluated and exported through: the same skip-mode core
#: (registered with the same defaults), whose first observation is the one-step env's observation
SKIP_ID_OF = {"DynBlockDrop-v1": "DynSkip-v1", "DynBlockDrop-v0": "DynSkip-v0"}


def as_skip_env(env_id: str, env_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(env id, env arguments)`` that route like ``env_id(**env_kwargs)``: a ``DynBlockDrop`` id
    becomes its ``DynSkip`` id (:data:`SKIP_ID_OF`) with the one-step env's reward arguments left out
    (``reward="blockdrop"``, ``penalty``, ``usage``: routing and its evaluation pay no reward); any
    other id is returned as it is. A one-shot policy (:class:`~dyncnn_gym.policies.OneShotHead`)
    then makes the same ``T`` decisions from the same first observation, so
    :func:`~dyncnn_gym.evaluate` and :func:`~dyncnn_gym.export` take the ``DynBlockDrop`` ids."""
    name = env_id.split(":", 1)[-1] if isinstance(env_id, str) else env_id
    if name not in SKIP_ID_OF:
        return env_id, env_kwargs
    kw = dict(env_kwargs)
    reward = kw.get("reward")
    if reward is not None and reward not in BLOCKDROP_REWARDS:
        raise ValueError(f"reward={reward!r} is not a DynBlockDrop reward; choose one of {list(BLOCKDROP_REWARDS)}")
    if reward == "blockdrop":
        del kw["reward"]
    for name_ in ("penalty", "usage"):
        kw.pop(name_, None)
    return SKIP_ID_OF[name], kw


class _OneShot(CheckedArguments):
    """``n`` one-step BlockDrop episodes over a skip-mode :class:`RoutingCore` (shared by both faces)."""

    def __init__(
        self,
        n: int,
        dataset: Any = "shapes",
        backbone: Any = None,
        groups: int = 4,
        split: str = "train",
        reward: str = "blockdrop",
        penalty: float = 1.0,
        usage: str = "blocks",
        compute_weight: float | None = None,
        loss_weight: float = 1.0,
        ce_clip: float = 5.0,
        loss: str = "ce",
        device: str = "cpu",
        obs: str = "features",
        flops_target: float | None = None,
        target_rate: float = DEFAULT_TARGET_RATE,
        decision_costs: Any = "flops",
    ) -> None:
        if reward not in BLOCKDROP_REWARDS:
            raise ValueError(f"reward={reward!r} is not a DynBlockDrop reward; choose one of {list(BLOCKDROP_REWARDS)}")
        if usage not in USAGE_KINDS:
            raise ValueError(f"usage={usage!r} is not a usage measure; choose one of {list(USAGE_KINDS)}")
        if (
            not isinstance(penalty, numbers.Real)
            or isinstance(penalty, (bool, np.bool_))
            or not np.isfinite(penalty)
            or penalty < 0
        ):
            raise ValueError(f"penalty={penalty!r} must be a finite number >= 0 (a wrong image pays -penalty)")
        if reward == "blockdrop" and (
            compute_weight is not None or loss_weight != 1.0 or ce_clip != 5.0 or loss != "ce" or flops_target is not None
        ):
            raise ValueError(
                "compute_weight / loss_weight / ce_clip / loss / flops_target apply to the DynSkip reward forms"
                f" {list(REWARD_KINDS)}; reward='blockdrop' is set by penalty= and usage="
            )
        if reward == "blockdrop" and not (isinstance(decision_costs, str) and decision_costs == "flops"):
            raise ValueError(
                f"decision_costs={reprlib.repr(decision_costs)} prices the DynSkip reward forms {list(REWARD_KINDS)};"
                " reward='blockdrop' pays 1 - u**2 with u the share of blocks or of FLOPs (usage=)"
            )
        self.kind, self.penalty, self.usage = reward, float(penalty), usage
        core_reward = "flops" if reward == "blockdrop" else reward
        self.core = RoutingCore(
            "skip",
            n,
            dataset=dataset,
            backbone=backbone,
            groups=groups,
            split=split,
            reward=core_reward,
            compute_weight=compute_weight,
            loss_weight=loss_weight,
            ce_clip=ce_clip,
            loss=loss,
            device=device,
            obs=obs,
            flops_target=flops_target,
            target_rate=target_rate,
            decision_costs=decision_costs,
        )
        self.T = self.core.T
        self.observation_space = self.core.observation_space
        self.action_space = spaces.MultiBinary(self.T)

    def check_actions(self, action: Any, n: int) -> np.ndarray:
        """``action`` as int64 ``[n, T]`` of 0/1, or a clear error."""
        a = np.asarray(action)
        if a.dtype.kind == "b":
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all()):
            raise TypeError(f"action {action!r} is not a binary action of MultiBinary({self.T}) (dtype {a.dtype})")
        a = a.astype(np.int64)
        want = (self.T,) if n == 1 and a.ndim == 1 else (n, self.T)
        if a.shape != want:
            raise ValueError(f"action of shape {a.shape} does not match MultiBinary({self.T}) x {n} env(s): expected {want}")
        if ((a != 0) & (a != 1)).any():
            raise ValueError(f"action {a.tolist()} has entries outside {{0, 1}} (1 executes a block, 0 drops it)")
        return a.reshape(n, self.T)

    def episode_return(
        self, walk: Walk, routes: np.ndarray, ce: np.ndarray, correct: np.ndarray, flops: np.ndarray
    ) -> np.ndarray:
        """float64 ``[b]``: the return :meth:`run` pays the images of ``walk`` (at decision 0) for
        ``routes`` (int64 ``[b, T]``) that end with cross-entropy ``ce``, correctness ``correct`` and
        ``flops`` (``[b]`` each)."""
        if self.kind == "blockdrop":
            return self.blockdrop_reward(routes, correct, flops / self.core.full)
        return self.core.route_return(0, walk.prev.numpy(), routes, ce, correct)

    def blockdrop_reward(self, routes: np.ndarray, correct: np.ndarray, flops_ratio: np.ndarray) -> np.ndarray:
        """``reward="blockdrop"``: ``1 - u**2`` for a right prediction, else ``-penalty``; ``u`` is the
        share of the ``T`` blocks ``routes`` (int64 ``[b, T]``) run, or ``flops_ratio`` (``usage``)."""
        u = routes.sum(1) / self.T if self.usage == "blocks" else flops_ratio
        return np.where(correct, 1.0 - u**2, -self.penalty)

    @torch.no_grad()
    def teacher(self, routes: Any = None) -> dict[str, np.ndarray]:
        """The outcome of routes for every slot's image (beside the RL interface: it knows the label,
        so it never enters the observation, and computing it changes nothing in the episodes).

        The action is a whole route (one of ``2**T``), so the teacher answers for a documented family
        of routes, each costing one pass over the network per slot:

        * the *full* route (every block run);
        * *drop one*: the full route with block ``t`` dropped, for every ``t`` (each block's value
          when the others run);
        * the *greedy* route: from the full route, drop the blocks one by one in order, keeping a
          drop when the return does not fall (ties go to dropping, the cheaper route): with a loss
          term of 0/1 error and a small compute weight, the prediction stays right while blocks go;
        * with ``routes`` (0/1 ``[N, T]`` or ``[N, R, T]``): those routes, e.g. the ones the agent
          sampled.

        Returns arrays over the ``N`` slots (rows of slots not in an episode: ``active`` false,
        zeros elsewhere): ``active`` bool ``[N]``; ``correct_full``, ``loss_full`` (cross-entropy,
        nats), ``flops_full``, ``return_full`` ``[N]``; ``correct``, ``loss``, ``flops``, ``returns``
        ``[N, T]`` (drop one); ``best_action`` int64 ``[N, T]`` (the greedy route) and
        ``best_correct``, ``best_loss``, ``best_flops``, ``best_return`` ``[N]``; with ``routes``,
        ``correct_routes``, ``loss_routes``, ``flops_routes``, ``returns_routes`` ``[N, R]``.
        Returns are the env's own for the route, at the compute weight now.
        """
        core, n, T = self.core, self.core.n, self.T
        given = None
        if routes is not None:
            r = np.asarray(routes)
            if r.ndim == 2:
                r = r[:, None, :]
            if r.ndim != 3 or r.shape[0] != n or r.shape[2] != T:
                raise ValueError(
                    f"routes of shape {np.shape(routes)} must be [N, T] or [N, R, T] with N = {n} envs and T = {T}"
                )
            given = np.stack([self.check_actions(r[:, k], n) for k in range(r.shape[1])], 1)
        out: dict[str, np.ndarray] = {"active": core.active.copy(), "best_action": np.zeros((n, T), dtype=np.int64)}
        fields = (("correct", bool), ("loss", np.float64), ("flops", np.int64), ("return", np.float64))
        for name, dtype in fields:
            out[f"{name}_full"] = np.zeros(n, dtype=dtype)
            out["returns" if name == "return" else name] = np.zeros((n, T), dtype=dtype)
            out[f"best_{name}"] = np.zeros(n, dtype=dtype)
            if given is not None:
                out["returns_routes" if name == "return" else f"{name}_routes"] = np.zeros((n, given.shape[1]), dtype=dtype)
        for c in core.cohorts:
            walk, slots = c.walk, c.slots
            labels = torch.as_tensor(core.labels[core.index[slots]], device=core.device)

            full = np.ones((len(slots), T), dtype=np.int64)
            best, best_out = full, self._outcome(walk, labels, full)
            for (name, _), v in zip(fields, best_out):
                out[f"{name}_full"][slots] = v
            for t in range(T):
                drop = full.copy()
                drop[:, t] = 0
                for (name, _), v in zip(fields, self._outcome(walk, labels, drop)):
                    out["returns" if name == "return" else name][slots, t] = v
                cand = best.copy()
                cand[:, t] = 0
                cand_out = self._outcome(walk, labels, cand)
                take = cand_out[3] >= best_out[3]
                best = np.where(take[:, None], cand, best)
                best_out = tuple(np.where(take, new, old) for new, old in zip(cand_out, best_out))
            out["best_action"][slots] = best
            for (name, _), v in zip(fields, best_out):
                out[f"best_{name}"][slots] = v
            if given is not None:
                for k in range(given.shape[1]):
                    for (name, _), v in zip(fields, self._outcome(walk, labels, given[slots, k])):
                        out["returns_routes" if name == "return" else f"{name}_routes"][slots, k] = v
        return out

    def _outcome(self, walk: Walk, labels: torch.Tensor, route: np.ndarray) -> tuple[np.ndarray, ...]:
        """Correctness, cross-entropy, FLOPs and return of the images of ``walk`` (at decision 0)
        taking ``route`` (int64 ``[b, T]``); the walk itself is not touched."""
        w = run(walk.select(np.arange(len(walk))), lambda w: route[:, w.t])  # shares feature maps, never overwrites them
        logits = w.logits().float()
        ce = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
        ok = (logits.argmax(1) == labels).cpu().numpy()
        flops = w.flops.numpy().copy()
        return ok, ce, flops, self.episode_return(walk, route, ce, ok, flops)

    def run(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        """Route every slot's image with its ``T`` decisions; returns last observations, rewards, infos."""
        total = np.zeros(self.core.n)
        for t in range(self.T):
            obs, rew, term, infos = self.core.step(a[:, t])
            total += rew
        assert term.all()
        arrays = isinstance(infos, dict)
        correct = np.asarray(infos["correct"]) if arrays else np.array([d["correct"] for d in infos])
        ratio = np.asarray(infos["flops_ratio"]) if arrays else np.array([d["flops_ratio"] for d in infos])
        used = a.sum(1) / self.T
        if self.kind == "blockdrop":
            total = self.blockdrop_reward(a, correct, ratio)
        if arrays:
            n = self.core.n
            infos.pop("action_mask", None)
            infos.pop("_action_mask", None)
            infos["blocks_used"], infos["_blocks_used"] = used, np.ones(n, dtype=bool)
            infos["cost"] = ratio.copy()  # the one step's cost is the whole episode's
        else:
            for d, b, r in zip(infos, used, ratio):
                d.pop("action_mask", None)
                d["blocks_used"] = float(b)
                d["cost"] = float(r)
        return obs, total, infos


class DynBlockDropEnv(BackboneAccess, gym.Env, EzPickle):
    """
    ## Description

    BlockDrop (Wu et al., CVPR 2018) as a Gymnasium env. A policy looks once at a cheap view of
    the image and decides, all at once, which residual blocks of a CIFAR-style ResNet to run. An
    episode is **one step**: the image enters the network, the agent sees the observation
    `DynSkip-v0` gives at its first decision (after the stem and the first block), and its
    `MultiBinary(T)` action keeps or drops every later block. Dropped blocks are not computed (the
    image passes through the block's shortcut), exactly as in `DynSkip-v0`: the same actions give
    the same prediction and the same FLOPs there.

    ## Action Space

    `MultiBinary(T)`, `T` = residual blocks after the first (14 for the default `resnet32-lite@skip`, 8 for `resnet20-lite`): entry `t` is
    1 to execute block `t + 1`, 0 to drop it.

    ## Observation Space

    `Box(-1, 1, (F + T + 1,), float32)` (`F + T + 4` with `obs="probe"`), the first observation of
    `DynSkip-v0`: `tanh(pooled / scale)` of the feature map entering the first decision (`F`
    channels), the one-hot of decision 0 (`T`), with `obs="probe"` the linear probe's top
    probability, margin and normalised entropy (3), and the FLOPs spent so far (stem and first
    block) / FLOPs of the full network (1). The observation returned by `step` is the final one
    of `DynSkip-v0` (zero features, FLOPs used).

    ## Rewards

    `reward="blockdrop"` (default): `1 - u**2` if the prediction is correct, else `-penalty`
    (default `penalty=1.0`, BlockDrop's `-gamma`); `u` is the fraction of the `T` blocks executed
    (`usage="blocks"`, BlockDrop's) or the FLOPs ratio (`usage="flops"`).
    `reward="flops"`, `"rnp"` or `"skipnet"`: the return `DynSkip-v0` pays for the same actions
    with that reward form (`compute_weight`, `loss_weight`, `ce_clip`, `loss` as there), so returns are
    comparable across the two envs.

    ## Starting State

    A new image (drawn with `np_random` from the `split`, or the next test image) has passed
    the stem and the first residual block.

    ## Episode End

    Terminates after its single step; never truncates. The final `info` holds `prediction`,
    `label`, `correct`, `flops`, `flops_ratio` (used / full network), `cross_entropy`, `actions`
    (int64 `[T]`), `blocks_used` (fraction of the `T` blocks executed), `index` (image index in the
    split), and on data with per-image difficulty `difficulty` and `difficulty_params`. The reset
    `info` holds `decision`, `flops`, `index` (and `difficulty`).

    ## Arguments

    ```python
    gymnasium.make("DynBlockDrop-v1", dataset="shapes", backbone=None, groups=4, split="auto",
                   reward="flops", penalty=1.0, usage="blocks", compute_weight=None,
                   loss_weight=1.0, ce_clip=5.0, loss="error", device="cpu", obs="probe",
                   flops_target=0.68, target_rate=2e-4, decision_costs="flops", render_mode=None)
    ```

    `DynBlockDrop-v0` has the same arguments with `split="train"`, `reward="blockdrop"`, `loss="ce"`,
    `obs="features"` and `flops_target=None` as defaults.

    * `dataset`, `backbone` (default `'resnet32-lite@skip'`; any ResNet arch), `groups`, `split`,
      `device`, `obs`: as for `DynSkip-v0`.
    * `reward`: `"blockdrop"` or a `DynSkip-v0` reward form (`"flops"`, `"rnp"`, `"skipnet"`).
    * `penalty`: reward of a wrong image under `reward="blockdrop"` is `-penalty` (>= 0).
    * `usage`: `"blocks"` or `"flops"`, the `u` of `reward="blockdrop"`.
    * `compute_weight`, `loss_weight`, `ce_clip`, `loss`, `flops_target`, `target_rate`: only with a
      `DynSkip` reward form, as there (`flops_target` holds the mean FLOPs ratio of finished
      episodes by adapting `compute_weight`).
    * `decision_costs`: with a `DynSkip` reward form, what its compute term charges each block, as
      for `DynSkip-v0` (`"flops"`, `"time"` or an array `[T, 2, 2]`); `reward="blockdrop"` takes
      `"flops"` only.
    * `render_mode`: `None`, `"ansi"` (a line: the image, the FLOPs ratio and, after the step, the
      blocks run, prediction and label), `"rgb_array"` (the image over a bar of the FLOPs spent, as
      `DynSkip` draws it) or `"human"` (the `"ansi"` line printed at every reset and step).

    `gymnasium.make_vec("DynBlockDrop-v0", num_envs=N)` routes `N` images as one batch
    (:class:`DynBlockDropVectorEnv`).

    The outcome of routes is available beside the RL interface (never in the observation):
    `env.unwrapped.teacher(routes=None)` gives the full route's, every block dropped from it, a
    greedy route's (`best_action`) and those of the given routes (see `_OneShot.teacher`).

    ## Version History

    * v1: the return of `DynSkip-v1` is the default reward (`reward="flops"`, `loss="error"`,
      `obs="probe"`, `flops_target=0.68`, `split="auto"`); every `info` holds `cost` (the episode's FLOPs ratio).
    * v0: initial version (`info` gained `cost`; nothing else changed).
    """

    metadata = {"render_modes": ["ansi", "rgb_array", "human"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        EzPickle.__init__(self, render_mode=render_mode, **kwargs)
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self._shot = _OneShot(1, **kwargs)
        self.core = self._shot.core
        self.observation_space = self._shot.observation_space
        self.action_space = self._shot.action_space
        self._needs_reset = True
        self._last_info: dict = {}

    @property
    def num_decisions(self) -> int:
        return self.core.T

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        obs, info = reset_single(self.core, self.np_random, seed, options)
        info.pop("action_mask", None)
        self._needs_reset, self._last_info = False, info
        if self.render_mode == "human":
            print(self._text())
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or not started")
        a = self._shot.check_actions(action, 1)
        obs, rew, infos = self._shot.run(a)
        self._needs_reset, self._last_info = True, infos[0]
        if self.render_mode == "human":
            print(self._text())
        return obs[0], float(rew[0]), True, False, infos[0]

    def teacher(self, routes: Any = None) -> dict[str, Any]:
        """The outcome of the full route, of every block dropped from it, of the greedy route and of
        ``routes`` (0/1 ``[T]`` or ``[R, T]``) for this env's image (:meth:`_OneShot.teacher`; the
        arrays without the batch dimension). It knows the label: for training or analysing agents,
        never as an observation."""
        if self._needs_reset:
            raise RuntimeError("call reset() before teacher(): the episode has ended or not started")
        batched = None
        if routes is not None:
            batched = np.asarray(routes)
            if batched.ndim not in (1, 2) or batched.shape[-1] != self.core.T:
                raise ValueError(f"routes of shape {batched.shape} must be [T] or [R, T] with T = {self.core.T}")
            batched = batched[None]
        return {k: v[0] for k, v in self._shot.teacher(batched).items()}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi', 'rgb_array' or 'human'")
            return None
        if self.render_mode == "rgb_array":
            return image_rgb(self.core, self._last_info)
        if self.render_mode == "human":
            print(self._text())
            return None
        return self._text()

    def _text(self) -> str:
        info = self._last_info
        line = f"image {info.get('index')} flops {info.get('flops', 0) / self.core.full:.3f} of full"
        if "actions" in info:
            line += f" blocks {info['actions'].tolist()} pred {info['prediction']} label {info['label']}"
        return line


class DynBlockDropVectorEnv(VectorEnv):
    """Native vector env of ``DynBlockDrop-v0``: ``num_envs`` images per step, one batched walk.

    Arguments are those of :class:`DynBlockDropEnv`, plus ``num_envs``, ``autoreset_mode``
    (``AutoresetMode.NEXT_STEP``, default, as Gymnasium's; or ``AutoresetMode.SAME_STEP``, where the
    next images' observations come back at once, the last ones in ``info["final_obs"]`` and their
    infos in ``info["final_info"]``: with one-step episodes this halves the calls) and
    ``max_episode_steps`` (``None`` or ``>= 1``; changes nothing). Every episode lasts one step,
    so all envs are always in lockstep; ``reset`` takes no options. Infos are dict-of-arrays.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        mode = vector_autoreset_mode(autoreset_mode, render_mode)
        check_max_episode_steps(max_episode_steps, 1)
        self._shot = _OneShot(num_envs, **kwargs)
        self.core = self._shot.core
        self.core.info_format = "arrays"
        self.num_envs = int(num_envs)
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.render_mode = None
        self.single_observation_space = self._shot.observation_space
        self.single_action_space = self._shot.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._needs_reset = True
        self._started = False

    @property
    def backbone(self):
        return self.core.net

    def _reset_all(self) -> tuple[np.ndarray, dict]:
        obs, info = self.core.reset_slots(np.arange(self.num_envs))
        info.pop("action_mask", None)
        info.pop("_action_mask", None)
        self._needs_reset = False
        return obs, info

    def reset(self, *, seed: int | list | None = None, options: dict | None = None):
        if isinstance(seed, np.integer):
            seed = int(seed)
        super().reset(seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
        if options:
            raise ValueError(
                f"options={options!r}: DynBlockDrop-v0's vector env takes no reset options (episodes last one step)"
            )
        seeds = slot_seeds(seed, self.num_envs)
        if seeds is not None:
            self.core.seed_slots(seeds)
            self.core.restart()
        elif not self._started:
            self.core.seed_slots([int(self.np_random.integers(2**63)) for _ in range(self.num_envs)])
        self._started = True
        return self._reset_all()

    def teacher(self, routes: Any = None) -> dict[str, np.ndarray]:
        """The outcome of the documented routes for every env's image, batched
        (:meth:`_OneShot.teacher`; ``routes``: 0/1 ``[num_envs, T]`` or ``[num_envs, R, T]``). It
        knows the labels: for training or analysing agents, never as an observation."""
        if not self._started or self._needs_reset:
            raise RuntimeError("call reset() before teacher(): the episodes have ended or not started")
        return self._shot.teacher(routes)

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        zeros = np.zeros(n, dtype=bool)
        if self._needs_reset:  # NEXT_STEP: the episodes that ended last step restart now
            obs, info = self._reset_all()
            return obs, np.zeros(n), zeros.copy(), zeros.copy(), info
        a = self._shot.check_actions(actions, n)
        obs, rew, info = self._shot.run(a)
        term = np.ones(n, dtype=bool)
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            self._needs_reset = True
            return obs, rew, term, zeros.copy(), info
        final_obs = np.empty(n, dtype=object)
        for i in range(n):
            final_obs[i] = obs[i]
        new_obs, new_info = self._reset_all()
        new_info["final_obs"], new_info["_final_obs"] = final_obs, np.ones(n, dtype=bool)
        new_info["final_info"], new_info["_final_info"] = info, np.ones(n, dtype=bool)
        return new_obs, rew, term, zeros.copy(), new_info
