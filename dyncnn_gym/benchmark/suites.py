"""Named, versioned benchmark suites: fixed task sets whose backbones are pinned by checkpoint hash.

A :class:`Task` is one env configuration (env id + data + backbone + reward + observation), a step
budget for training and the compute weights swept to trace an accuracy–FLOPs front. A
:class:`Suite` is a versioned tuple of tasks plus ``backbone_sha256``: per task name, the sha256 of
the backbone checkpoint file the results were produced with (``None`` = not pinned).

Suites:

* ``"cpu-v0"``: the embedded ``shapes`` data with the package's first default backbones (``vgg``
  for DynChannel, ``resnet20-lite`` for DynSkip), 4 groups,
  ``reward="flops"`` with the env's default cross-entropy term, ``obs="probe"``, 150k steps,
  compute weights (0.25, 0.5, 1.0). Pinned to the two shapes checkpoints shipped in
  ``dyncnn_gym/checkpoints/``; kept so that its leaderboard stays reproducible.
* ``"cpu-v1"``: the protocol of the package's learning figures (docs/results.md):
  the embedded ``shapes`` data with today's default backbones (``vgg+sandwich+distill`` for
  DynChannel, ``resnet32-lite@skip`` for DynSkip), the recipe's env settings of
  :mod:`dyncnn_gym.recipes` (``loss="error"``, ``obs="probe"``), 150k steps; compute weights
  (0.005, 0.02, 0.05, 0.1, 0.2) for DynChannel and (0.05, 0.2, 0.3, 0.5, 1.0) for DynSkip, which
  put PPO's seed-0 points at FLOPs ratios 0.14-0.81 and 0.42-0.81 (on DynChannel there is a gap
  from 0.47 at weight 0.1 to 0.14 at 0.2; at 0.15 it fell to 0.17). Pinned to the shipped
  checkpoints. The stronger ``+augment`` backbones are not in it: on the VGG one PPO does not
  beat the greedy static front at 40 % saved or more and scores what random routes at its own
  action rates score, so whether per-image routing pays there at all is still open.
* ``"cpu-v2"``: ``cpu-v1``'s two tasks, unchanged, and the early-exit and width-and-depth tasks:
  ``DynExit-v0`` with width stages on ``vgg+sandwich+distill`` (the narrowest network, then the
  full one) and with depth stages on ``resnet20-lite-exits+distill``, both trained on the held-out
  ``"val"`` split (:attr:`Task.train_split`; see :mod:`dyncnn_gym.recipes`), compute weights
  (0.005, 0.01, 0.02, 0.04, 0.08) and (0.005, 0.02, 0.08, 0.16, 0.32) (PPO's seed-0 points at
  0.35-0.48 and 0.51-0.70 of the FLOPs with the first four of each); and ``DynRoute-v0``, ``DynChannel-v0`` and ``DynSkip-v0`` on one
  ResNet trained for route decisions (``resnet20-lite@route+sandwich+distill``), whose fronts are
  comparable, with the recipe's env settings and weights (0.05, 0.1, 0.13, 0.16, 0.2) (DynSkip:
  (0.1, 0.2, 0.4, 0.8, 1.6), skipping being costlier on this backbone). 150k steps each.
  Pinned to the shipped checkpoints.
* ``"cpu-v3"``: the ``-v1`` protocol on ``cpu-v2``'s backbones: ``DynChannel-v1``, ``DynSkip-v1``,
  ``DynExit-v1`` (width and depth stages) and ``DynRoute-v1`` with their registered defaults (the
  routers train on the held-out ``"val"`` split, ``split="auto"``), three FLOPs targets per task
  around the registered one, each scored over the FLOPs its targets span; every policy is
  evaluated dialed to its target. 150k steps per point. Pinned to the shipped checkpoints.
* ``"cpu-v4"``: ``cpu-v3``'s tasks, pins and seeds, scored against a fair static front: its greedy
  static routes are chosen on held-out images and on train images, the better of both
  (``static_selection="held-out"``). Chosen on train images only (``cpu-v3`` and earlier), where
  the backbones are right on nearly every image, the routes on ``DynChannel`` lie up to 0.9 points
  below those chosen on held-out images, which credits every agent with a gain static routes
  already had.
* ``"paper-v0"``: GPU-sized, as in the papers: CIFAR-10 ResNet-110 DynSkip (SkipNet) and CIFAR-10
  VGG-16 DynChannel (RNP), ``device="cuda"``. Needs the user's CIFAR-10 files (see
  :mod:`dyncnn_gym.data`); the backbones are pretrained on first use, so they are **not pinned**
  (``None``) until reference checkpoints are published.
* ``"tiny-v0"``: scikit-learn's ``digits`` with the shipped digits checkpoints, tiny budgets, for
  tests and smoke runs. Unpinned (``None``): it is not for comparing results.
* ``"tiny-v1"``: ``tiny-v0``'s data and backbones on the ``-v1`` ids with two FLOPs targets per
  task: the operating points of a task may be FLOPs targets instead of compute weights
  (:attr:`Task.flops_targets`). Unpinned.

A suite's ``seeds`` are those ``dyncnn-gym bench`` runs when none are given: five on the CPU and
GPU suites (the aggregates' confidence intervals need several runs per task), one on the tiny ones.

A task is one place: a :class:`Task` and its pin, listed together in a suite's definition
(:func:`_suite`), so a new env's task is one more line there (and a new suite version when an
existing suite would change).

:func:`check_pins` resolves every pinned task's checkpoint and raises :class:`ValueError` naming the
expected and the found hash when they differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..envs.routing import mode_of

#: the FLOPs-ratio range a task is scored over unless it names its own
FLOPS_RANGE: tuple[float, float] = (0.2, 0.8)


@dataclass(frozen=True)
class Task:
    """One benchmark task: an env configuration and its operating points.

    The operating points are either ``compute_weights`` (the reward's fixed compute weight, the
    ``cpu-v0`` / ``cpu-v1`` protocol) or ``flops_targets`` (FLOPs ratios the env holds by adapting its
    compute weight, ``flops_target=``; the ``-v1`` ids), never both. ``env_kwargs`` excludes both.
    ``flops_range`` is the FLOPs-ratio range the task's score integrates over (``None``:
    :data:`FLOPS_RANGE`).
    """

    name: str
    env_id: str
    env_kwargs: dict[str, Any] = field(hash=False)
    step_budget: int
    compute_weights: tuple[float, ...] = ()
    flops_targets: tuple[float, ...] = ()
    flops_range: tuple[float, float] | None = None
    #: the split agents train on (``"val"``: held-out images the backbone never trained on)
    train_split: str = "train"

    def __post_init__(self) -> None:
        if bool(self.compute_weights) == bool(self.flops_targets):
            raise ValueError(
                f"task {self.name!r}: give its operating points as compute_weights or as flops_targets (one of the two);"
                f" got compute_weights={self.compute_weights!r}, flops_targets={self.flops_targets!r}"
            )
        for key in ("compute_weight", "flops_target"):
            if key in self.env_kwargs:
                raise ValueError(f"task {self.name!r}: env_kwargs holds {key!r}, which the operating points set")
        if any(not 0 < t <= 1 for t in self.flops_targets):
            raise ValueError(f"task {self.name!r}: flops_targets={self.flops_targets!r} must be FLOPs ratios in (0, 1]")
        lo, hi = self.score_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"task {self.name!r}: flops_range={self.flops_range!r} must satisfy 0 <= lo < hi <= 1")

    @property
    def point_key(self) -> str:
        """``"flops_target"`` or ``"compute_weight"``: the env argument each operating point sets."""
        return "flops_target" if self.flops_targets else "compute_weight"

    @property
    def points(self) -> tuple[float, ...]:
        """The operating points' values (FLOPs targets or compute weights), in order."""
        return self.flops_targets or self.compute_weights

    @property
    def score_range(self) -> tuple[float, float]:
        """The FLOPs-ratio range the score integrates over."""
        return tuple(self.flops_range) if self.flops_range is not None else FLOPS_RANGE

    def point_kwargs(self, value: float) -> dict[str, float]:
        """The env arguments of the operating point ``value`` (``{"flops_target": t}`` or ``{"compute_weight": w}``)."""
        return {self.point_key: float(value)}


#: how a suite chooses the per-decision static routes of its static front (see :class:`Suite`) -> the
#: images they are chosen on, in words (the leaderboard and ``bench --list`` say it)
STATIC_SELECTIONS: dict[str, str] = {
    "train": "train images",
    "held-out": "held-out images (where the data has them) and on train images, the better of both",
}


def check_static_selection(value: str, what: str = "static_selection") -> str:
    """``value`` if it is a key of :data:`STATIC_SELECTIONS`, else a ``ValueError`` naming the valid ones."""
    if value not in STATIC_SELECTIONS:
        raise ValueError(f"{what}={value!r} is not one of {list(STATIC_SELECTIONS)}")
    return value


@dataclass(frozen=True)
class Suite:
    """A named, versioned task set; ``backbone_sha256[task.name]`` pins the task's checkpoint (or ``None``);
    ``seeds`` are the seeds a bench runs when none are given.

    ``static_selection``: where the greedy per-decision static routes of the static front (the
    reference every score is measured from) are chosen: ``"train"``, on train images only (every
    suite but ``cpu-v4``), or ``"held-out"``, on the held-out ``"val"`` images where the task's
    data has them and on train images, the front taking the better of both
    (:func:`~dyncnn_gym.benchmark.baselines.static_baselines`). Never on the test split the scores
    are measured on."""

    name: str
    version: int
    tasks: tuple[Task, ...]
    backbone_sha256: dict[str, str | None] = field(hash=False, default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    static_selection: str = "train"

    def __post_init__(self) -> None:
        check_static_selection(self.static_selection, f"suite {self.name!r}: static_selection")

    def with_budget(self, step_budget: int) -> Suite:
        """The same suite with every task's step budget replaced (e.g. ``--timesteps``)."""
        return replace(self, tasks=tuple(replace(t, step_budget=int(step_budget)) for t in self.tasks))


def _suite(
    name: str,
    version: int,
    tasks: list[tuple[Task, str | None]],
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    static_selection: str = "train",
) -> Suite:
    """A suite from ``(task, pinned sha256 or None)`` pairs: a task and its pin are written together."""
    return Suite(name, version, tuple(t for t, _ in tasks), {t.name: pin for t, pin in tasks}, tuple(seeds), static_selection)


def _tasks(
    dataset: str, channel_arch: str, skip_arch: str, budget: int, weights: tuple[float, ...], **extra: Any
) -> tuple[Task, ...]:
    common = {"dataset": dataset, "groups": 4, "reward": "flops", "obs": "probe", **extra}
    return (
        Task(f"channel-{channel_arch}-{dataset}", "DynChannel-v0", {**common, "backbone": channel_arch}, budget, weights),
        Task(f"skip-{skip_arch}-{dataset}", "DynSkip-v0", {**common, "backbone": skip_arch}, budget, weights),
    )


_CPU = _tasks("shapes", "vgg", "resnet20-lite", 150_000, (0.25, 0.5, 1.0))
_CPU1_ENV = {"dataset": "shapes", "groups": 4, "reward": "flops", "loss": "error", "obs": "probe"}
_CPU1 = (
    Task(
        "channel-vgg+sandwich+distill-shapes",
        "DynChannel-v0",
        {**_CPU1_ENV, "backbone": "vgg+sandwich+distill"},
        150_000,
        (0.005, 0.02, 0.05, 0.1, 0.2),
    ),
    Task(
        "skip-resnet32-lite@skip-shapes",
        "DynSkip-v0",
        {**_CPU1_ENV, "backbone": "resnet32-lite@skip"},
        150_000,
        (0.05, 0.2, 0.3, 0.5, 1.0),
    ),
)
#: the ResNet trained for route decisions serves DynRoute-v0, DynChannel-v0 and DynSkip-v0 alike
_ROUTE_ARCH = "resnet20-lite@route+sandwich+distill"
_EXIT_ENV = {"dataset": "shapes", "reward": "flops", "loss": "error"}
#: PPO's points on this backbone jump from about 0.85 to 0.27-0.54 of the FLOPs between weights 0.14 and 0.16
_ROUTE_WEIGHTS = (0.05, 0.1, 0.13, 0.16, 0.2)
_CPU2 = (
    *_CPU1,
    Task(
        "exit-width-vgg+sandwich+distill-shapes",
        "DynExit-v0",
        {**_EXIT_ENV, "stages": "width", "backbone": "vgg+sandwich+distill"},
        150_000,
        (0.005, 0.01, 0.02, 0.04, 0.08),
        train_split="val",
    ),
    Task(
        "exit-depth-resnet20-lite-exits+distill-shapes",
        "DynExit-v0",
        {**_EXIT_ENV, "stages": "depth", "backbone": "resnet20-lite-exits+distill"},
        150_000,
        (0.005, 0.02, 0.08, 0.16, 0.32),
        train_split="val",
    ),
    Task(f"route-{_ROUTE_ARCH}-shapes", "DynRoute-v0", {**_CPU1_ENV, "backbone": _ROUTE_ARCH}, 150_000, _ROUTE_WEIGHTS),
    Task(
        f"channel-{_ROUTE_ARCH}-shapes",
        "DynChannel-v0",
        {**_CPU1_ENV, "backbone": _ROUTE_ARCH},
        150_000,
        _ROUTE_WEIGHTS,
    ),
    Task(
        f"skip-{_ROUTE_ARCH}-shapes", "DynSkip-v0", {**_CPU1_ENV, "backbone": _ROUTE_ARCH}, 150_000, (0.1, 0.2, 0.4, 0.8, 1.6)
    ),
)
_V1_ENV = {"dataset": "shapes"}  # the -v1 ids' registered defaults do the rest (reward, loss, obs, split)


def _v1_task(name: str, env_id: str, env: dict, budget: int, targets: tuple[float, ...]) -> Task:
    """A task of the ``-v1`` protocol: operating points are FLOPs targets, scored over the FLOPs they span."""
    return Task(name, env_id, env, budget, flops_targets=targets, flops_range=(min(targets), max(targets)))


_CPU3 = [
    (
        _v1_task(
            "channel-vgg+sandwich+distill-shapes",
            "DynChannel-v1",
            {**_V1_ENV, "groups": 4, "backbone": "vgg+sandwich+distill"},
            150_000,
            (0.35, 0.55, 0.75),
        ),
        "3ec67dc7fb2250c1156843610a0c2cf9648888f008f3d9981cc5cae8fa7b08c7",
    ),
    (
        _v1_task(
            "skip-resnet32-lite@skip-shapes",
            "DynSkip-v1",
            {**_V1_ENV, "groups": 4, "backbone": "resnet32-lite@skip"},
            150_000,
            (0.5, 0.68, 0.85),
        ),
        "9613094d1e46ffc03ef306306b33337ccda5887a0a8ad25f9477a7dc4d12c8b3",
    ),
    (
        _v1_task(
            "exit-width-vgg+sandwich+distill-shapes",
            "DynExit-v1",
            {**_V1_ENV, "stages": "width", "backbone": "vgg+sandwich+distill"},
            150_000,
            (0.3, 0.45, 0.6),
        ),
        "3ec67dc7fb2250c1156843610a0c2cf9648888f008f3d9981cc5cae8fa7b08c7",
    ),
    (
        _v1_task(
            "exit-depth-resnet20-lite-exits+distill-shapes",
            "DynExit-v1",
            {**_V1_ENV, "stages": "depth", "backbone": "resnet20-lite-exits+distill"},
            150_000,
            (0.35, 0.45, 0.6),
        ),
        "c5c77f9142956c12545ffc0b3b86ed886203e7cce9f1c0276f90a18264be438e",
    ),
    (
        _v1_task(
            f"route-{_ROUTE_ARCH}-shapes",
            "DynRoute-v1",
            {**_V1_ENV, "groups": 4, "backbone": _ROUTE_ARCH},
            150_000,
            (0.4, 0.55, 0.7),
        ),
        "0727581a708075d0a16c9622fda3e3685b624d711a01b6d2901653cd6246ae10",
    ),
]
_PAPER = _tasks("cifar10", "vgg16", "resnet110", 2_000_000, (0.1, 0.25, 0.5, 1.0), device="cuda")
_TINY = _tasks("digits", "vgg", "resnet20-lite", 512, (0.5, 1.0))


def _target_task(env_id: str, dataset: str, backbone: str, budget: int, targets: tuple[float, ...]) -> Task:
    """A :func:`_v1_task` named ``kind-backbone-dataset`` with the ``-v1`` reward spelled out."""
    kind = env_id.split("-v")[0].removeprefix("Dyn").lower()
    env = {"dataset": dataset, "groups": 4, "reward": "flops", "loss": "error", "obs": "probe", "backbone": backbone}
    return _v1_task(f"{kind}-{backbone}-{dataset}", env_id, env, budget, targets)


_TINY1 = [
    (_target_task("DynChannel-v1", "digits", "vgg", 512, (0.4, 0.7)), None),
    (_target_task("DynSkip-v1", "digits", "resnet20-lite", 512, (0.5, 0.8)), None),
]

SUITES: dict[str, Suite] = {
    "cpu-v0": Suite(
        "cpu-v0",
        0,
        _CPU,
        {
            _CPU[0].name: "f283b7ab1017c18a6b1c203dc3724458a4a160fcb46997f79b6b1d3db0522ef9",
            _CPU[1].name: "339bab5b0462ca35c61ae1cd5ee4a31a00b56c9b5c3f7946d7259e44050e4384",
        },
    ),
    "cpu-v1": Suite(
        "cpu-v1",
        1,
        _CPU1,
        {
            _CPU1[0].name: "3ec67dc7fb2250c1156843610a0c2cf9648888f008f3d9981cc5cae8fa7b08c7",
            _CPU1[1].name: "9613094d1e46ffc03ef306306b33337ccda5887a0a8ad25f9477a7dc4d12c8b3",
        },
    ),
    "cpu-v2": Suite(
        "cpu-v2",
        2,
        _CPU2,
        {
            _CPU1[0].name: "3ec67dc7fb2250c1156843610a0c2cf9648888f008f3d9981cc5cae8fa7b08c7",
            _CPU1[1].name: "9613094d1e46ffc03ef306306b33337ccda5887a0a8ad25f9477a7dc4d12c8b3",
            _CPU2[2].name: "3ec67dc7fb2250c1156843610a0c2cf9648888f008f3d9981cc5cae8fa7b08c7",
            _CPU2[3].name: "c5c77f9142956c12545ffc0b3b86ed886203e7cce9f1c0276f90a18264be438e",
            _CPU2[4].name: "0727581a708075d0a16c9622fda3e3685b624d711a01b6d2901653cd6246ae10",
            _CPU2[5].name: "0727581a708075d0a16c9622fda3e3685b624d711a01b6d2901653cd6246ae10",
            _CPU2[6].name: "0727581a708075d0a16c9622fda3e3685b624d711a01b6d2901653cd6246ae10",
        },
    ),
    "cpu-v3": _suite("cpu-v3", 3, _CPU3),
    "cpu-v4": _suite("cpu-v4", 4, _CPU3, static_selection="held-out"),
    "paper-v0": Suite("paper-v0", 0, _PAPER, {t.name: None for t in _PAPER}),
    "tiny-v0": Suite("tiny-v0", 0, _TINY, {t.name: None for t in _TINY}, seeds=(0,)),
    "tiny-v1": _suite("tiny-v1", 1, _TINY1, seeds=(0,)),
}


def get_suite(name: str | Suite) -> Suite:
    """The suite called ``name`` (a :class:`Suite` is returned as is)."""
    if isinstance(name, Suite):
        return name
    if name not in SUITES:
        raise ValueError(f"suite={name!r} is not a known suite; choose one of {sorted(SUITES)}")
    return SUITES[name]


def list_suites() -> str:
    """One line per suite: name, version, whether the backbones are pinned, seeds, where the static
    routes are chosen, and the tasks."""
    lines = []
    for s in SUITES.values():
        pinned = "pinned" if all(s.backbone_sha256.get(t.name) for t in s.tasks) else "unpinned"
        tasks = ", ".join(
            f"{t.name} ({t.env_id}, {t.step_budget} steps, {'FLOPs targets' if t.flops_targets else 'weights'} {list(t.points)})"
            for t in s.tasks
        )
        where = STATIC_SELECTIONS[s.static_selection]
        lines.append(f"{s.name} (v{s.version}, {pinned}, seeds {list(s.seeds)}, static routes chosen on {where}): {tasks}")
    return "\n".join(lines)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backbone_path(task: Task, pretrain_missing: bool = True) -> Path:
    """The checkpoint file of ``task``'s backbone.

    A path is used as is; an arch name is looked up in the cache and the shipped checkpoints under
    the name :func:`~dyncnn_gym.pretraining.pretrain` gives it by default; when it is missing and
    ``pretrain_missing``, it is trained (and cached) through
    :func:`~dyncnn_gym.pretraining.resolve_backbone` first.
    """
    from ..cache import cache_dir
    from ..envs.core import _shared_data
    from ..pretraining import SHIPPED_DIR, default_checkpoint_name, resolve_backbone

    backbone = task.env_kwargs.get("backbone")
    if backbone is not None and (isinstance(backbone, Path) or "/" in str(backbone) or str(backbone).endswith(".pt")):
        path = Path(backbone)
        if not path.is_file():
            raise FileNotFoundError(f"task {task.name!r}: no backbone checkpoint at {str(path)!r}")
        return path
    data = _shared_data(task.env_kwargs.get("dataset", "shapes"))
    mode = mode_of(task.env_id)
    if mode == "exit":  # width stages run on a channel backbone, depth stages on an exit ResNet
        mode = "channel" if task.env_kwargs.get("stages", "width") == "width" else "exit"
    if backbone is None:
        from ..pretraining import DEFAULT_ARCH

        backbone = DEFAULT_ARCH[mode]
    groups = int(task.env_kwargs.get("groups", 4))
    name = default_checkpoint_name(str(backbone), groups, data)
    for _ in range(2):
        for folder in (cache_dir("checkpoints", create=False), SHIPPED_DIR):
            if (folder / name).is_file():
                return folder / name
        if not pretrain_missing:
            break
        resolve_backbone(backbone, data, mode, groups, task.env_kwargs.get("device", "cpu"))
        pretrain_missing = False
    raise FileNotFoundError(f"task {task.name!r}: no checkpoint {name!r} in the cache or the shipped checkpoints")


def backbone_sha256(task: Task, pretrain_missing: bool = True) -> str:
    """sha256 of ``task``'s backbone checkpoint file."""
    return sha256_file(backbone_path(task, pretrain_missing))


def check_pins(suite: str | Suite) -> dict[str, str | None]:
    """Check every pinned backbone of ``suite``; returns the found hash per task (``None`` if unpinned
    and not computed).

    Raises:
        ValueError: a task's checkpoint hash differs from the pinned one (both named).
    """
    suite = get_suite(suite)
    found: dict[str, str | None] = {}
    for task in suite.tasks:
        expected = suite.backbone_sha256.get(task.name)
        if expected is None:
            found[task.name] = None
            continue
        got = backbone_sha256(task)
        if got != expected:
            raise ValueError(
                f"suite {suite.name!r} v{suite.version}, task {task.name!r}: the backbone checkpoint"
                f" {str(backbone_path(task, False))!r} has sha256 {got}, but the suite pins {expected};"
                " results would not be comparable"
            )
        found[task.name] = got
    return found
