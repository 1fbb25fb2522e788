"""The single-image Gymnasium envs ``DynChannel-v0`` and ``DynSkip-v0``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import EzPickle

from .core import RoutingCore
from .exit_core import ExitCore

_ARGS_DOC = """
    ## Arguments

    ```python
    gymnasium.make("{id}-v1", dataset="shapes", backbone=None, groups=4, split="auto",
                   reward="flops", compute_weight=None, loss_weight=1.0, ce_clip=5.0, loss="error",
                   budget=None, budget_strict=False, device="cpu", obs="probe", dtype="float32",
                   shaping="none", flops_target={target}, target_rate=2e-4, decision_costs="flops",
                   render_mode=None)
    ```

    `{id}-v0` has the same arguments with `split="train"`, `loss="ce"`, `obs="features"` and
    `flops_target=None` as defaults.

    * `dataset`: a name (`"shapes"` — the embedded default, `"digits"`, `"cifar10"`, `"cifar100"`,
      `"svhn"`, `"mnist"`, `"fashionmnist"`), an `(images, labels)` pair, a
      `{{"train": pair, "test": pair}}` dict, a torch `Dataset`, or a loaded `DataSplits`.
    * `backbone`: `None` (default arch: {default}), an arch name (its cached checkpoint for this data,
      pretrained and cached on first use), a checkpoint path, or a `DynamicNet`.
    * `groups`: channel groups per layer (channel decisions; for skip envs it only selects the
      backbone checkpoint).
    * `split`: `"train"` draws each episode's image with `np_random`; `"val"` does the same on the
      held-out split (images the backbone never trained on: `"shapes"` generates one, user dicts
      may give one), where the backbone's outcomes are like the test split's rather than memorised;
      `"test"` sweeps the test split in order (restarting at image 0 on every seeded reset) so
      that evaluation covers it exactly; `"auto"` is `"val"` where the data has a held-out split,
      else `"train"`.
    * `reward`, `compute_weight`, `loss_weight`, `ce_clip`, `loss`: see Rewards.
    * `flops_target`: the operating point, a FLOPs ratio (of the full network's) that the mean of
      finished episodes is held at: after each episode of `T` decisions with FLOPs ratio `f` the env
      sets `log(compute_weight) += target_rate * T * (f - flops_target)` (dual ascent on the
      constraint's Lagrange multiplier; `compute_weight` is then the starting value; by default
      half the slope, at `flops_target`, of the accuracy-vs-FLOPs curve of static routes on the
      episodes' split, `dyncnn_gym.envs.core.starting_weight`: the price of FLOPs at which static
      routes near the target break even, approached from below because a weight too high early
      drives a policy onto the cheapest route, from which it does not come back). The weight that holds a FLOPs
      ratio differs by orders of magnitude between data sets; the ratio does not. `None`: a fixed
      `compute_weight`.
      The current weight is `env.unwrapped.compute_weight`.
    * `target_rate`: change of `log(compute_weight)` per decision per unit of FLOPs-ratio error.
    * `decision_costs`: what the reward's compute term charges each decision. `"flops"` (default):
      its FLOPs. `"time"`: its time on this machine, measured when the first such env on the
      backbone is built (a batch of 256 images of the episodes' split, repeated where it holds
      fewer; at torch's thread count then; once per backbone and thread count in a process, so
      envs on one backbone share it; `dyncnn_gym.time_costs.decision_times`),
      or an array `[T, A, A]` of such costs (decision `t`, previous action `p`, action `a`; any
      unit). The costs are rescaled so that the full route's decisions cost their FLOPs, so
      `compute_weight` keeps its meaning and only the price of each decision changes; the FLOPs in
      `info`, `flops_target` and `budget` stay FLOPs.
    * `budget`: optional FLOPs-ratio budget per image; actions that could not finish within it are
      masked (`info["action_mask"]`, `action_masks()`). A masked action is replaced by the nearest
      allowed one: the largest allowed action below it (fewer channel groups; skip instead of
      execute), else the smallest allowed one; every step's `info` then holds `action_taken` and
      `action_forbidden` (whether the given action was replaced), and the final `actions` are those
      taken. So any agent, and Gymnasium's and SB3's env checkers, can step a budget env.
    * `budget_strict`: with a budget, `True` makes a masked action raise `ValueError` instead (and
      no episode advances); default `False`.
    * `device`: torch device of the backbone and the walk (`"cpu"`, `"cuda"`, ...).
    * `dtype`: precision of the backbone and the walk: `"float32"` (default), `"bfloat16"` or
      `"float16"` (a shared cast copy of the backbone; the original is untouched). FLOPs are
      counted per operation, so the accounting is identical; predictions may differ slightly.
      Observations and rewards stay float32.
    * `obs`: observation mode: `"features"` (default) or `"probe"`, which adds the confidence of a
      linear probe (an early classifier fitted on the pooled features of each decision point):
      top probability, margin between the two best classes, normalised entropy.
    * `shaping`: `"none"` (default) or `"continuation"`: potential-based reward shaping whose
      potential is the classification term the image would get if the rest of the network ran at
      full width (see Rewards).
    * `render_mode`: `None`, `"ansi"` (`render()` returns a text line: image, decision, FLOPs so far,
      and at the end the actions, prediction and label), `"rgb_array"` (the image with a bar of the
      FLOPs spent) or `"human"` (the `"ansi"` line printed at every reset and step).
    * `max_episode_steps` (of `gymnasium.make`): leave it `None`. Every episode has exactly `T`
      steps; Gymnasium applies this argument as a `TimeLimit` wrapper outside the env, which the
      env cannot see, so a value below `T` truncates every episode before the classification
      (`truncated=True`, no classification term, no final `info`). `gymnasium.make_vec` refuses
      such a value.
"""

_COMMON_DOC = """
    ## Observation Space

    `Box(-1, 1, (F + T + 1,), float32)` (`F + T + 4` with `obs="probe"`): `F` = the widest feature
    map entering any decision point, `T` = number of decision points.

    | index | observation |
    |-------|-------------|
    | `0 .. F-1` | `tanh(pooled / scale)`: the feature map entering this decision, globally average-pooled per channel and divided by the channel's mean on training images; channels not computed (or beyond this layer's width) are 0 |
    | `F .. F+T-1` | one-hot of the decision point `t` |
    | `F+T .. F+T+2` | only with `obs="probe"`: the probe's top probability, top-two margin and entropy / log(classes) |
    | last | FLOPs spent so far / FLOPs of the full network |

    ## Rewards

    Each step pays a bonus for the computation its decision saved; the last step adds
    `-loss_weight * min(CE, ce_clip)`, the clipped cross-entropy (nats) of the true label
    (`loss="ce"`, default), or `-loss_weight` if the prediction is wrong and 0 if right
    (`loss="error"`, BlockDrop's correctness reward: it pays exactly the measured accuracy).
    `reward="flops"` (default): bonus `compute_weight * (FLOPs saved by this decision) / FLOPs(full)`
    (default `compute_weight=0.5`; the episode's bonuses sum to `compute_weight * (1 - flops_ratio)`).
    `reward="rnp"`: `compute_weight` (default 0.1) per group / block not computed.
    `reward="skipnet"`: `compute_weight * saved / ((A - 1) * T)` (default 0.1).
    FLOPs are those counted by `torch.utils.flop_counter` (2 per multiply-accumulate of every
    convolution and linear layer run; agent and observation not included).
    With `shaping="continuation"` every step also pays `phi(next) - phi(now)`, where `phi` is the
    classification term of the full-width continuation from that state (`-loss_weight * (1 - p)`
    with `p` its probability of the true label for `loss="error"`, the clipped CE for `"ce"`) and
    0 after the last decision: the return changes by `-phi(first state)` only, which no action
    affects, while a decision that hurts the image is charged when it is taken.

    Every `info` also holds `cost`, the FLOPs of this step (the stem's included in the first, the
    head's in the last) as a fraction of the full network's: an episode's costs sum to its
    `flops_ratio`, the per-step cost signal constrained-RL libraries read (with `flops_target` as
    the cost limit).

    ## Starting State

    A new image (drawn with `np_random` from the `split`, or the next test image) has passed
    the backbone's stem; the observation describes the feature map entering decision 0.

    ## Episode End

    Terminates after the last decision (every episode has exactly `T` steps); never truncates by
    itself (see `max_episode_steps` below).
    The final `info` holds `prediction`, `label`, `correct`, `flops`, `flops_ratio`,
    `cross_entropy`, `actions` (int64 `[T]`), `index` (image index in the split), and, for data
    with per-image difficulty (the embedded `"shapes"`), `difficulty` and `difficulty_params`.
    Every `info` holds `decision`, `flops` (so far), `action_mask`, `index` (and `difficulty`), and
    with a `budget` every step's `info` holds `action_taken` and `action_forbidden`.
"""


def check_render_mode(render_mode: str | None, modes: list[str]) -> None:
    """``ValueError`` naming the valid choices unless ``render_mode`` is ``None`` or in ``modes``."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode={render_mode!r} is not supported; choose one of {modes} or None")


def image_rgb(core: RoutingCore, info: dict) -> np.ndarray:
    """The ``"rgb_array"`` frame of an episode: its image (``info["index"]`` of the core's split,
    upscaled to about 128 pixels, uint8 ``[H, W, 3]``) over a bar filled to the FLOPs ratio spent."""
    d = core.data
    img = core.images[int(info.get("index", 0))].cpu().numpy() * d.std[:, None, None] + d.mean[:, None, None]
    img = np.clip(img, 0, 1)
    if img.shape[0] != 3:
        img = np.repeat(img[:1], 3, axis=0)
    img = (img.transpose(1, 2, 0) * 255).astype(np.uint8)
    k = max(1, 128 // img.shape[0])
    img = np.kron(img, np.ones((k, k, 1), dtype=np.uint8))
    bar = np.zeros((8, img.shape[1], 3), dtype=np.uint8)
    used = int(round(min(info.get("flops", 0) / core.full, 1.0) * img.shape[1]))
    bar[:, :used] = (230, 120, 30)
    return np.concatenate([img, bar], axis=0)


def reset_single(
    core: RoutingCore, np_random: np.random.Generator, seed: int | None, options: dict | None
) -> tuple[np.ndarray, dict]:
    """Start a single env's next episode in slot 0 of its ``core``: the image is drawn with the env's
    ``np_random`` (train / val splits); a seeded reset restarts the test split at image 0 and a FLOPs
    target at its starting weight (:meth:`RoutingCore.restart`).
    Returns the observation ``[D]`` and the reset info."""
    if options:
        raise ValueError(f"options={options!r}: this env takes no reset options")
    if seed is not None:
        core.restart()
    core.rngs[0] = np_random
    obs, infos = core.reset_slots(np.array([0]))
    return obs[0], infos[0]


class BackboneAccess:
    """The backbone of a single env's ``self.core`` (:class:`RoutingCore`), shared by every env face."""

    core: RoutingCore

    @property
    def backbone(self):
        """The :class:`~dyncnn_gym.models.DynamicNet` this env routes (shared, not a copy)."""
        return self.core.net

    def set_backbone_state(self, state_dict: dict) -> None:
        """Load new backbone weights (how a fine-tuning callback reaches envs in other processes)."""
        self.core.load_backbone_state(state_dict)

    def get_backbone_state(self) -> dict:
        """A detached CPU copy of the backbone's ``state_dict`` (name -> tensor), e.g. for
        ``SubprocVecEnv.env_method("get_backbone_state")`` to read the weights of an env in another process."""
        return self.core.backbone_state()


class RewardAccess:
    """The reward weight of a routing env's ``self.core``, readable and settable from any process."""

    core: RoutingCore

    @property
    def compute_weight(self) -> float:
        """The reward's current compute weight (``compute_weight=`` of the constructor, or as last set)."""
        return self.core.compute_weight

    def set_compute_weight(self, weight: float) -> None:
        """Change the reward's compute weight from the next step on; reachable in subprocesses with
        ``SubprocVecEnv.env_method("set_compute_weight", w)`` (how
        :class:`~dyncnn_gym.callbacks.FlopsTargetCallback` steers every env)."""
        self.core.set_compute_weight(weight)


class RoutingEnv(BackboneAccess, RewardAccess, gym.Env, EzPickle):
    """Base of the single-image routing envs (one image per episode, one step per decision point)."""

    metadata = {"render_modes": ["ansi", "rgb_array", "human"], "render_fps": 4}
    mode: str = ""

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        EzPickle.__init__(self, render_mode=render_mode, **kwargs)
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.core = self.make_core(**kwargs)
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self._last_info: dict = {}
        self._needs_reset = True

    def make_core(self, **kwargs: Any) -> RoutingCore:
        """The one-slot core of this env (a :class:`RoutingCore` in this env's mode)."""
        return RoutingCore(self.mode, 1, **kwargs)

    @property
    def num_decisions(self) -> int:
        return self.core.T

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        obs, info = reset_single(self.core, self.np_random, seed, options)
        self._last_info = info
        self._needs_reset = False
        if self.render_mode == "human":
            print(self._text())
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or not started")
        a = np.asarray(action)
        if a.size != 1:
            raise ValueError(f"action {action!r} is not a single action of {self.action_space}")
        obs, rew, term, infos = self.core.step(a.reshape(1))
        self._last_info = infos[0]
        self._needs_reset = bool(term[0])
        if self.render_mode == "human":
            print(self._text())
        return obs[0], float(rew[0]), bool(term[0]), False, infos[0]

    def action_masks(self) -> np.ndarray:
        """bool ``[A]``: actions allowed now (for sb3-contrib's MaskablePPO)."""
        return self.core.action_masks()[0]

    def teacher(self, policy: Any = None) -> dict[str, Any]:
        """The outcome of every action at the current decision under the documented continuations
        (``core.teacher(policy)``: :meth:`RoutingCore.teacher`, or :meth:`ExitCore.teacher` for
        ``DynExit-v0``), for this env's image: the arrays without the batch dimension. It knows the
        label: use it to train or analyse agents (imitation, DAgger), never as an observation.
        ``policy`` (anything :func:`~dyncnn_gym.policies.as_policy` accepts) adds the continuation that follows it."""
        if self._needs_reset:
            raise RuntimeError("call reset() before teacher(): the episode has ended or not started")
        return {k: v[0] for k, v in self.core.teacher(policy).items()}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi', 'rgb_array' or 'human'")
            return None
        if self.render_mode == "ansi":
            return self._text()
        if self.render_mode == "human":
            print(self._text())
            return None
        return image_rgb(self.core, self._last_info)

    def _text(self) -> str:
        info = self._last_info
        acts = info.get("actions")
        line = f"image {info.get('index')} decision {info.get('decision')}/{self.core.T} flops {info.get('flops', 0) / self.core.full:.3f} of full"
        if acts is not None:
            line += f" actions {acts.tolist()} pred {info['prediction']} label {info['label']}"
        return line


class DynChannelEnv(RoutingEnv):
    __doc__ = (
        """
    ## Description

    Runtime Neural Pruning (Lin et al., NIPS 2017) as a Gymnasium env. One image walks through a
    CNN whose every conv layer's output channels are split into `groups` equal groups. At each
    decision point the agent chooses how many groups of that layer to compute; pruned groups are
    not computed, and the next layer reads only the computed channels. Few groups save FLOPs; too
    few lose the image.

    ## Action Space

    `Discrete(groups)`: action `a` computes channel groups `0..a` (`a + 1` of `groups`).
    """
        + _COMMON_DOC
        + _ARGS_DOC.format(
            id="DynChannel",
            target=0.55,
            default="'vgg+sandwich+distill', a 6-layer VGG-style CNN trained with the sandwich rule and in-place distillation; plain 'vgg' and any ResNet arch work too (groups inside its blocks)",
        )
        + """
    ## Version History

    * v1: the settings that work are the defaults: `loss="error"`, `obs="probe"`, and the operating
      point `flops_target=0.55` held by adapting `compute_weight`, episodes drawn from the held-out
      split where the data has one (`split="auto"`); every `info` holds `cost`.
    * v0: initial version. Later changes, each only where v0 raised an error or rendered through a
      wrapper: with a `budget`, a masked action is replaced by the nearest allowed one (reported in
      `info`) instead of raising (`budget_strict=True` keeps the error); `render_mode="human"` prints
      the `"ansi"` line (Gymnasium's pygame wrapper is no longer applied). Every `info` gained
      `cost`. Observations, rewards and episodes are unchanged. Its default backbone was the plain `vgg` in the first releases (the `cpu-v0` benchmark suite pins it).
    """
    )
    mode = "channel"


class DynSkipEnv(RoutingEnv):
    __doc__ = (
        """
    ## Description

    SkipNet (Wang et al., ECCV 2018) as a Gymnasium env. One image walks through a CIFAR-style
    ResNet; before each residual block after the first the agent decides whether to execute it or
    skip it. A skipped block is not computed: the image passes through the block's shortcut
    (identity, or for the blocks that change shape, stride-2 subsampling with zero channels
    appended, which costs no FLOPs).

    ## Action Space

    `Discrete(2)`: 0 skips the block, 1 executes it.
    """
        + _COMMON_DOC
        + _ARGS_DOC.format(
            id="DynSkip",
            target=0.68,
            default="'resnet32-lite@skip', ResNet-32 with a stride-2 stem trained for skip decisions only",
        )
        + """
    ## Version History

    * v1: the settings that work are the defaults: `loss="error"`, `obs="probe"`, and the operating
      point `flops_target=0.68` held by adapting `compute_weight`, episodes drawn from the held-out
      split where the data has one (`split="auto"`); every `info` holds `cost`.
    * v0: initial version. Later changes, each only where v0 raised an error or rendered through a
      wrapper: with a `budget`, a masked action is replaced by the nearest allowed one (reported in
      `info`) instead of raising (`budget_strict=True` keeps the error); `render_mode="human"` prints
      the `"ansi"` line (Gymnasium's pygame wrapper is no longer applied). Every `info` gained
      `cost`. Observations, rewards and episodes are unchanged. Its default backbone was `resnet20-lite` in the first releases (the `cpu-v0` benchmark suite pins it).
    """
    )
    mode = "skip"


class DynRouteEnv(RoutingEnv):
    __doc__ = (
        """
    ## Description

    Width and depth at once (as LAUDNet combines layer skipping and channel width) as a Gymnasium
    env. One image walks through a CIFAR-style ResNet; before every residual block the agent
    chooses to skip it or to run it at one of `groups` widths. A skipped block is not computed (the
    image passes through its shortcut, as in `DynSkip-v0`); a block that runs computes only the
    chosen channel groups of its first convolution (as `DynChannel-v0` on a ResNet). Every route of
    `DynChannel-v0` and of `DynSkip-v0` on the same ResNet is a route here.

    ## Action Space

    `Discrete(groups + 1)`: 0 skips the block; `a >= 1` runs it with channel groups `0..a-1`
    (`a` of `groups`; `groups` = full width).
    """
        + _COMMON_DOC
        + _ARGS_DOC.format(
            id="DynRoute",
            target=0.55,
            default="'resnet20-lite@route+sandwich+distill', ResNet-20 with a stride-2 stem trained for route decisions (random skips and random widths at once; the sandwich rule over both: every block but the first skipped, and every block at the narrowest width; in-place distillation); it serves DynChannel-v0 and DynSkip-v0 too. Any ResNet trained for both kinds works",
        )
        + """
    ## Version History

    * v1: the settings that work are the defaults: `loss="error"`, `obs="probe"`, and the operating
      point `flops_target=0.55` held by adapting `compute_weight` (starting from half the slope of
      the static uniform-width and random-skip routes at the target), episodes drawn from the
      held-out split where the data has one (`split="auto"`).
    * v0: initial version (the `-v0` defaults: `loss="ce"`, `obs="features"`, `split="train"`, a
      fixed `compute_weight`).
    """
    )
    mode = "route"


#: registered env id -> the mode of its decisions
ENV_MODES: dict[str, str] = {
    **{f"{name}-v{v}": env.mode for name, env in (("DynChannel", DynChannelEnv), ("DynSkip", DynSkipEnv)) for v in (0, 1)},
    "DynRoute-v0": DynRouteEnv.mode,
    "DynRoute-v1": DynRouteEnv.mode,
    "DynExit-v0": "exit",
    "DynExit-v1": "exit",
}


def mode_of(env_id: str, problem: str = "is not a routing env") -> str:
    """The decision mode (``"channel"`` / ``"skip"`` / ``"route"`` / ``"exit"``) of ``env_id`` (optionally ``"dyncnn_gym:"``-prefixed)."""
    name = env_id.split(":", 1)[-1] if isinstance(env_id, str) else env_id
    if name not in ENV_MODES:
        raise ValueError(f"env_id={env_id!r} {problem}; choose one of {sorted(ENV_MODES)}")
    return ENV_MODES[name]


def registered_kwargs(env_id: str) -> dict[str, Any]:
    """The default arguments ``env_id`` is registered with (``{}`` for the ``-v0`` ids)."""
    import gymnasium

    mode_of(env_id)
    return dict(gymnasium.spec(env_id.split(":", 1)[-1]).kwargs)


def make_core(env_id: str, num_slots: int = 1, **overrides: Any) -> RoutingCore | ExitCore:
    """The core of ``num_slots`` episodes for ``env_id``: an :class:`~dyncnn_gym.envs.exit_core.ExitCore`
    for the early-exit env, else a :class:`RoutingCore` in the env's mode; its registered defaults
    (:func:`registered_kwargs`) updated by ``overrides``. Every face that builds episodes from an env
    id (the SB3 VecEnv, evaluation, export, the benchmark) builds them here, so ``-v0`` and ``-v1``
    differ only in these defaults."""
    mode = mode_of(env_id)
    kwargs = {**registered_kwargs(env_id), **overrides}
    if mode == "exit":
        return ExitCore(num_slots, **kwargs)
    return RoutingCore(mode, num_slots, **kwargs)
