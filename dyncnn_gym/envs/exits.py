"""``DynExit-v1`` / ``DynExit-v0``: early exit (BranchyNet, MSDNet) as a Gymnasium env, and its native vector env."""

from __future__ import annotations

from typing import Any

from .exit_core import ExitCore
from .routing import RoutingEnv
from .vector import RoutingVectorEnv


class DynExitEnv(RoutingEnv):
    """
    ## Description

    Early exit (BranchyNet, Teerapittayanon et al. 2016; MSDNet, Huang et al. 2018) as a Gymnasium
    env. One image goes through a cascade of stages, each ending in a classifier (an *exit*). After
    each stage the agent sees that exit's prediction and decides whether it is final: exit now, or
    pay for the next stage and its exit. An image that exits is not computed any further. Two kinds
    of stages (`stages=`):

    * `"width"` (default): a cascade on the slimmable `DynChannel-v0` backbone. Stage `k` is a
      whole pass of the network at width `widths[k]` (default: the narrowest, then the full
      width), ending in the network's own head at that width. What every pass shares is computed
      once: the stem (always at full width) and, on the VGG, the channels of the first decision
      layer that narrower passes computed already (that layer reads the full stem and normalises
      with a full input's statistics in every pass); everything after it depends on the width and
      runs again.
    * `"depth"`: a ResNet with exit heads after chosen blocks (`resnet20-lite-exits+distill`:
      exits after blocks 1, 2, 4 and 5 of a ResNet-20 with a stride-2 stem, the middle and the
      last block of its first two stages; leaving there costs 30, 48, 71 and 85 % of the plain
      network's FLOPs, every head on the way included; its own head after block 8 is the last
      exit), trained with every exit's loss and distillation from the last exit. Stage `k` runs
      the blocks up to exit `k` and that exit's head (MSDNet-style: 3x3 convolutions of stride 2
      that double the channels down to a 4x4 map, at most two, batch-norm and ReLU each, then
      average pooling and a linear layer).

    ## Action Space

    `Discrete(2)`: 0 exits now (this exit's prediction is final and the episode ends), 1 runs the
    next stage and its exit. There is no decision at the last exit: continuing into the last stage
    ends the episode there.

    ## Observation Space

    `Box(-1, 1, (F + T + 4,), float32)`: `F` = the widest feature map any exit reads, `T` = number
    of decisions (stages - 1).

    | index | observation |
    |-------|-------------|
    | `0 .. F-1` | `tanh(pooled / scale)`: the feature map this exit reads, globally average-pooled per channel and divided by the channel's mean on training images; channels beyond its width are 0 |
    | `F .. F+T-1` | one-hot of the exit `t` the image stands at |
    | `F+T .. F+T+2` | this exit's softmax: top probability, margin between the two best classes, entropy / log(classes) |
    | last | FLOPs spent so far / FLOPs of the full network (clipped at 1) |

    ## Rewards

    The same forms as `DynChannel-v0` and `DynSkip-v0`, with stages in place of channel groups or
    blocks. `reward="flops"` (default): every decision to continue pays
    `-compute_weight * (FLOPs of the next stage and its exit) / FLOPs(full)`, and the episode's
    last step adds `compute_weight * (1 - F_0 / FLOPs(full))` (`F_0`: the FLOPs of the stem, the
    first stage and its exit, spent by every image before its first decision), so an episode's
    compute terms sum to `compute_weight * (1 - flops_ratio)` (default `compute_weight=0.02`: with
    `loss="error"` it is in accuracy per unit of FLOPs ratio, so continuing pays when it raises the
    chance of a right prediction by more than 2 % of the FLOPs ratio it costs; the recipe's weight).
    `reward="rnp"`: `compute_weight` (default 0.1) per stage not computed, paid on exiting;
    `reward="skipnet"`: that divided by `T`. The last step adds the classification term of the
    prediction the image leaves with: `-loss_weight` if it is wrong, else 0 (`loss="error"`,
    default), or `-loss_weight * min(CE, ce_clip)` (`loss="ce"`). FLOPs are those counted by
    `torch.utils.flop_counter`, the full network being the plain backbone without intermediate
    exits (a route through every stage can cost more than 1: narrower passes and exit heads).

    ## Starting State

    A new image (drawn with `np_random` from the `split`, or the next test image) has passed
    the stem, the first stage and its exit; the observation describes exit 0.

    ## Episode End

    Terminates when the image exits (action 0) or reaches the last exit: between 1 and `T` steps;
    never truncates. The final `info` holds `prediction`, `label`, `correct`, `flops`,
    `flops_ratio`, `cross_entropy`, `exit` (the exit the prediction came from), `actions` (int64
    `[T]`, 1 for every stage continued, 0 at the exit taken, -1 after), `index`, and for data with
    per-image difficulty `difficulty` and `difficulty_params`. Every `info` holds `decision` (the
    exit the image stands at), `flops` (so far), `action_mask`, `index` (and `difficulty`), and
    `cost` (this step's FLOPs as a fraction of the full network's: the first step's includes
    `F_0`, so an episode's costs sum to its `flops_ratio`); with a `budget`, `action_taken` and
    `action_forbidden`.

    The outcome of each action is available beside the RL interface (never in the observation):
    `env.unwrapped.teacher()` (see :meth:`dyncnn_gym.envs.exit_core.ExitCore.teacher`).

    ## Arguments

    ```python
    gymnasium.make("DynExit-v1", dataset="shapes", backbone=None, stages="width", widths=None,
                   groups=4, split="auto", reward="flops", compute_weight=None, loss_weight=1.0,
                   ce_clip=5.0, loss="error", budget=None, budget_strict=False, device="cpu",
                   obs="features", dtype="float32", flops_target=0.45, target_rate=2e-4,
                   render_mode=None)
    ```

    `DynExit-v0` takes the same arguments with `flops_target=None` as its default.

    * `dataset`, `device`, `dtype`, `render_mode`: as in `DynChannel-v1`.
    * `split`: as in `DynChannel-v1`; the default `"auto"` draws episodes from the held-out split
      where the data has one (the generated `"shapes"` do): on the images it trained on, a
      backbone is right almost always (the default VGG at full width: 100 % of shapes' train
      split, 91.85 % of its held-out split), which tells a router nothing about when continuing
      pays.
    * `backbone`: `None` (width stages: `"vgg+sandwich+distill"`, the `DynChannel-v0` default;
      depth stages: `"resnet20-lite-exits+distill"`), an arch name (a channel backbone for width
      stages, an `...-exits` ResNet for depth stages), a checkpoint path, or a `DynamicNet`.
    * `stages`: `"width"` or `"depth"` (see Description).
    * `widths`: width stages only: strictly increasing channel actions, one per stage (`0` =
      1/groups of every layer, `groups - 1` = full width); default `(0, groups - 1)`.
    * `groups`: channel groups of the width backbone (selects its checkpoint).
    * `reward`, `compute_weight`, `loss_weight`, `ce_clip`, `loss`: see Rewards. With a
      `flops_target`, `compute_weight` is only where the adaptation starts (default: half the
      slope, at the target, of the static exits' accuracy-FLOPs front on the episodes' split).
    * `flops_target`: a FLOPs ratio (at least the first exit's) that the env holds the mean of
      finished episodes at by adapting its compute weight after every one:
      `log(compute_weight) += target_rate * decisions * (flops_ratio - flops_target)`, with the
      episode's own number of decisions; `None` keeps the weight fixed. A seeded `reset` restarts the
      weight where it started. As in `DynChannel-v1`, `dyncnn_gym.evaluate` and `dyncnn_gym.export`
      dial a policy to the target on held-out images.
    * `target_rate`: how fast the weight moves (per decision, per unit of FLOPs-ratio error).
    * `budget`: optional FLOPs-ratio cap per image: continuing is masked where the next stage
      would pass it (`info["action_mask"]`, `action_masks()`); a masked continue exits instead
      (`info["action_taken"]`, `info["action_forbidden"]`).
    * `budget_strict`: with a budget, `True` makes a masked continue raise `ValueError` instead.
    * `obs`: `"features"`, the only mode: the exit's own confidence is always observed.

    ## Version History

    * v1: a FLOPs target (`flops_target=0.45`): the compute weight adapts to hold the mean FLOPs
      ratio there, on any data and backbone; evaluation dials to the target.
    * v0: initial version (a fixed compute weight, 0.02).
    """

    mode = "exit"

    def make_core(self, **kwargs: Any) -> ExitCore:
        return ExitCore(1, **kwargs)


class DynExitVectorEnv(RoutingVectorEnv):
    __doc__ = (
        "Native vector env of ``DynExit-v1`` and ``DynExit-v0``: episodes end at different steps; finished slots are"
        " restarted (NEXT_STEP or SAME_STEP autoreset) while the others go on, each exit's images"
        " as one batch.\n\n" + (RoutingVectorEnv.__doc__ or "") + (DynExitEnv.__doc__ or "")
    )
    mode = "exit"

    def make_core(self, num_envs: int, **kwargs: Any) -> ExitCore:
        return ExitCore(num_envs, **kwargs)
