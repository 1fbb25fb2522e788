"""Pruning- and skipping-robust pretraining of backbones, and the checkpoint cache.

A backbone that a routing agent will later prune or skip must stay accurate under any route.
After a first phase (30 % of the steps) that trains the full network alone, each training step
computes the cross-entropy of two routes through the same batch (three with ``+sandwich``, below):

* the full network (every decision at its largest action), and
* a random route, drawn as in slimmable networks (channel mode: one random width per decision
  point for the whole batch) or stochastic depth (skip mode: every sample skips every skippable
  block independently with a rate drawn uniformly from ``[0, max_skip]`` per batch). ResNets,
  which serve both envs, alternate the two kinds step by step, unless the backbone is named
  ``"arch@mode"`` (e.g. ``"resnet32-lite@skip"``): then every step trains that kind of decision
  only, and the backbone serves only that env. The default DynSkip backbone is trained so: the
  capacity it does not spend on width-switching goes into robustness to skipped blocks.
  ``"arch@route"`` trains both kinds at once (route mode, ``DynRoute-v0``): every sample skips
  blocks as in skip mode and the blocks that run take one random width each per batch; such a
  backbone serves all three envs (channel and skip routes are route-mode routes).

Backbones with early exits (``"resnetD[-lite]-exits"``, ``DynExit-v0``'s depth stages) train
every exit on every step: the last exit on the labels, the others on the labels too or, with
``+distill``, on the last exit's predicted probabilities (detached).

Two options of universally slimmable networks (Yu & Huang, 2019), named by ``+option`` after the
arch or by the arguments of :func:`pretrain`:

* ``+sandwich``: every step also trains the cheapest route (every decision at action 0: the
  narrowest widths, or every skippable block skipped; in route mode the cheapest of each kind: every
  block but the first skipped, and every block at the narrowest width), so the bottom of the
  accuracy-FLOPs range
  is trained every step rather than one step in ``k``;
* ``+distill`` (in-place distillation): the random and cheapest routes learn the full network's
  predicted probabilities (detached) instead of the labels.

The default DynChannel backbone, ``"vgg+sandwich+distill"``, is trained with both: on the embedded
data every static width is more accurate than the plain ``"vgg"``'s (by 7.85 points at width 1/4).

A third option, ``+augment``, shifts the training images by up to 2 pixels (images of at least
16x16; smaller ones are not shifted). On the embedded data it makes ``"vgg+sandwich+distill"``
3.5 points more accurate at full width; it is not the default (docs/results.md).

Images are drawn with a curriculum when the data rate each image's difficulty (the embedded
``"shapes"``): the first batches come from the easiest quarter of the train split, and the pool
grows linearly to the whole split by 40 % of training (Bengio et al., 2009). On ``"shapes"`` a CNN
otherwise sits at chance for several epochs before it finds the shapes. Optimiser: Adam with a
cosine learning-rate decay.

Batch-norm under varying widths: every layer whose input width varies keeps one set of statistics
per input width (switchable batch-norm), so each width is normalised with its own statistics.
Under skipping, the statistics average over the routes seen in training (full and random).

Checkpoints are cached in ``cache_dir("checkpoints")`` with metadata (arch, data set name and
fingerprint, groups, training config, accuracies at every static width / skip rate) that is
checked on load. Backbones shipped with the package (``dyncnn_gym/checkpoints/``) are found the
same way; ``dyncnn-gym pretrain`` reproduces them. Files are written atomically and read with
``weights_only=True``; a cached file that is damaged or holds another backbone than its name says
is moved aside with a warning and trained again (docs/files.md).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from .cache import ENV_VAR, cache_dir
from .data.base import DataSplits
from .device import check_device
from .fileio import (
    CorruptFileError,
    UnsafeFileError,
    check_writable_dir,
    check_writable_file,
    load_torch,
    move_aside,
    rescue_path,
    save_torch,
)
from .models import ARCHS, DynamicNet, build
from .walk import run_routes

CHECKPOINT_VERSION = 1
SHIPPED_DIR = Path(__file__).parent / "checkpoints"

#: default backbone of each mode, a backbone name (see :func:`parse_backbone`): the VGG trained with
#: the sandwich rule and in-place distillation for DynChannel, the ResNet trained for skipping only
#: for DynSkip, a ResNet-20 trained for width and skipping at once for DynRoute, and a ResNet-20
#: with early-exit heads trained with distillation from its last exit for the depth stages of
#: DynExit (its width stages run on the DynChannel default)
DEFAULT_ARCH = {
    "channel": "vgg+sandwich+distill",
    "skip": "resnet32-lite@skip",
    "route": "resnet20-lite@route+sandwich+distill",
    "exit": "resnet20-lite-exits+distill",
}

#: backbones shipped (on the embedded shapes data) beyond the defaults and the benchmark suites' ones:
#: a ResNet-56 with early exits, large enough for a trained early-exit router to pay in wall-clock
#: time at every batch size (``dyncnn-gym perf --routed-only --setup "DynExit-v1 resnet56"``)
SHIPPED_EXTRA = ("resnet56-exits+distill",)


#: training options a backbone name may add after ``+`` (see :func:`pretrain`)
TRAINING_OPTIONS = ("augment", "distill", "sandwich")


class BackboneSpec(NamedTuple):
    """A parsed backbone name ``arch[@mode][+option...]``."""

    arch: str
    #: the decision kinds it is trained for (``None``: every mode of the arch)
    modes: tuple[str, ...] | None = None
    #: in-place distillation (``+distill``)
    distill: bool = False
    #: the sandwich rule (``+sandwich``)
    sandwich: bool = False
    #: random 2-pixel shifts of the training images (``+augment``; images of at least 16x16 only)
    augment: bool = False


def parse_backbone(spec: str) -> BackboneSpec:
    """Parse a backbone name ``arch[@mode][+option...]``: ``"resnet20-lite"`` (trained for every
    mode the arch supports), ``"resnet32-lite@skip"`` (skip decisions only),
    ``"vgg+sandwich+distill"`` (trained with the sandwich rule and in-place distillation; options
    in any order, from :data:`TRAINING_OPTIONS`; ``+augment`` shifts the training images).

    Raises:
        ValueError: an unknown arch, a mode the arch does not support, or an unknown or repeated
            option (the choices are named).
    """
    arch, mode, options = _name_parts(spec)
    if arch not in ARCHS:
        raise ValueError(
            f"backbone {spec!r}: {arch!r} is not a known arch; choose one of {sorted(ARCHS)}"
            " (optionally as 'arch@mode', e.g. 'resnet32-lite@skip', and with '+option's from"
            f" {list(TRAINING_OPTIONS)})"
        )
    if mode is not None and mode not in ARCHS[arch]:
        raise ValueError(f"backbone {spec!r}: {mode!r} is not a mode of {arch!r}; choose one of {list(ARCHS[arch])}")
    for option in options:
        if option not in TRAINING_OPTIONS:
            raise ValueError(f"backbone {spec!r}: {option!r} is not a training option; choose from {list(TRAINING_OPTIONS)}")
    if len(set(options)) != len(options):
        raise ValueError(f"backbone {spec!r} repeats an option; give each of {list(TRAINING_OPTIONS)} at most once")
    return BackboneSpec(
        arch, None if mode is None else (mode,), "distill" in options, "sandwich" in options, "augment" in options
    )


def _name_parts(spec: str) -> tuple[str, str | None, list[str]]:
    """The unchecked parts of a backbone name ``arch[@mode][+option...]``: arch, mode (``None``
    without ``@``) and options."""
    head, *options = str(spec).split("+")
    arch, at, mode = head.partition("@")
    return arch, mode if at else None, options


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`pretrain` (all are recorded in the checkpoint)."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_skip: float = 0.6
    augment: bool = False
    curriculum_start: float = 0.25
    curriculum_end: float = 0.4
    full_only: float = 0.3
    seed: int = 0
    #: the decision kinds the random routes train (``None``: every mode of the arch)
    modes: tuple[str, ...] | None = None
    #: in-place distillation: routes learn the full network's soft predictions instead of the labels
    distill: bool = False
    #: sandwich rule: every step also trains the cheapest route (narrowest widths / every block skipped)
    sandwich: bool = False

    def key(self) -> str:
        d = asdict(self)
        for name, off in (("modes", None), ("distill", False), ("sandwich", False)):
            if d[name] == off:
                del d[name]  # configs without it keep the names their checkpoints were saved under
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def default_epochs(data: DataSplits) -> int:
    """Epochs that fit the data set: about 200k images' worth, between 8 and 60 epochs."""
    return int(np.clip(round(200_000 / max(len(data.train), 1)), 8, 60))


# -- checkpoints --------------------------------------------------------------------------------
def checkpoint_name(arch: str, groups: int, data: DataSplits, cfg: TrainConfig) -> str:
    return f"{arch}-g{groups}-{data.name}-{data.fingerprint}-{cfg.key()}.pt"


def default_checkpoint_name(spec: str, groups: int, data: DataSplits) -> str:
    """The file name :func:`pretrain` gives backbone ``spec`` (any name :func:`parse_backbone` takes) by default."""
    b = parse_backbone(spec)
    cfg = TrainConfig(
        epochs=default_epochs(data),
        modes=b.modes,
        distill=b.distill,
        sandwich=b.sandwich,
        augment=b.augment and can_augment(data),
    )
    return checkpoint_name(b.arch, groups, data, cfg)


def can_augment(data: DataSplits) -> bool:
    """Whether ``augment`` applies to ``data``: images of at least 16x16 (smaller ones are not shifted)."""
    return min(data.image_shape[1:]) >= 16


#: the classes the package's checkpoint files may hold besides tensors and plain containers: files
#: written before the torch version was stored as a string hold a ``TorchVersion`` in ``meta["torch"]``
CHECKPOINT_GLOBALS: tuple[type, ...] = (TorchVersion,)


class CheckpointMismatchError(ValueError):
    """A readable checkpoint holds another backbone than the one asked for (both are named)."""


class CheckpointSaveError(OSError):
    """A trained backbone could not be written where asked; the message names where it was saved instead."""


class ChanceLevelError(ValueError):
    """Pretraining ended with a backbone no better than always answering the most frequent class."""


def plain_meta(meta: dict) -> dict:
    """``meta`` with the torch version as a plain string (what new files store)."""
    out = dict(meta)
    if "torch" in out:
        out["torch"] = str(out["torch"])
    return out


def save_checkpoint(net: DynamicNet, path: str | Path) -> Path:
    """Write ``net``'s weights and ``net.meta`` to ``path`` atomically (see :mod:`dyncnn_gym.fileio`):
    a reader sees the old file or the complete new one, and concurrent writers both succeed."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return save_torch({"version": CHECKPOINT_VERSION, "meta": plain_meta(net.meta), "state_dict": state}, path)


_META_TYPES = {"arch": str, "config": dict, "in_shape": (list, tuple), "num_classes": int, "groups": int}


def _checked_blob(blob: Any, path: Path) -> tuple[dict, dict]:
    """``(meta, state_dict)`` of a loaded checkpoint, or :class:`CorruptFileError` saying what is wrong."""
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) or not isinstance(blob.get("state_dict"), dict):
        raise CorruptFileError(f"{str(path)!r} is not a dyncnn_gym checkpoint (no 'meta'/'state_dict')")
    meta, state = blob["meta"], blob["state_dict"]
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CorruptFileError(
                f"{str(path)!r} is not a dyncnn_gym checkpoint: meta[{key!r}] is {meta.get(key)!r}, expected {kind}"
            )
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptFileError(f"{str(path)!r} is not a dyncnn_gym checkpoint: its state_dict holds more than named tensors")
    return meta, state


def load_checkpoint(
    path: str | Path,
    data: DataSplits | None = None,
    groups: int | None = None,
    device: str | torch.device = "cpu",
    *,
    expect: tuple[str, TrainConfig] | None = None,
) -> DynamicNet:
    """Load a backbone, checking its metadata against ``data`` and ``groups`` when given.

    The file is read with ``weights_only=True``: only tensors, plain containers and
    :data:`CHECKPOINT_GLOBALS` can be rebuilt, so no file can run code when loaded.

    Args:
        expect: ``(arch, train config)`` the checkpoint must have been trained with (the cache
            checks every file it finds against the request that named it).

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptFileError: (a ValueError) the file is empty, truncated, not a torch file, not a
            checkpoint, or its weights do not fit its own metadata.
        UnsafeFileError: (a ValueError) the file needs a Python global beyond the allow-list (named).
        CheckpointMismatchError: (a ValueError) the checkpoint was trained on other data, with other
            groups, or (``expect``) is another arch or training config (both named).
    """
    path = Path(path)
    dev = check_device(device)
    if not path.exists():
        raise FileNotFoundError(f"no backbone checkpoint at {str(path)!r}")
    meta, state = _checked_blob(load_torch(path, CHECKPOINT_GLOBALS, "backbone checkpoint"), path)
    meta = plain_meta(meta)
    if data is not None and meta.get("data_fingerprint") != data.fingerprint:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} was trained on data {meta.get('data')!r} (fingerprint {meta.get('data_fingerprint')}),"
            f" but the env uses data {data.name!r} (fingerprint {data.fingerprint})"
        )
    if groups is not None and meta["groups"] != groups:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} has groups={meta['groups']}, but groups={groups} was asked for"
        )
    if data is not None and (tuple(meta["in_shape"]) != tuple(data.image_shape) or meta["num_classes"] != data.num_classes):
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} takes images {tuple(meta['in_shape'])} with {meta['num_classes']} classes, but the"
            f" data {data.name!r} has {tuple(data.image_shape)} with {data.num_classes}"
        )
    if expect is not None:
        _check_expected(path, meta, *expect)
    try:
        net = build(meta["arch"], tuple(meta["in_shape"]), meta["num_classes"], meta["groups"], **meta["config"])
        net.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise CorruptFileError(
            f"{str(path)!r}: the weights do not fit the checkpoint's own description ({str(e).splitlines()[0][:200]})"
        ) from None
    net.meta = meta
    if meta.get("train_config", {}).get("modes"):
        net.modes = served_modes(tuple(meta["train_config"]["modes"]))  # trained for these decisions only
    return net.to(dev).eval()


def _check_expected(path: Path, meta: dict, arch: str, cfg: TrainConfig) -> None:
    if meta["arch"] != arch:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} holds a {meta['arch']!r} backbone, but {arch!r} was asked for"
        )
    try:
        found = TrainConfig(**meta["train_config"])
    except (TypeError, KeyError) as e:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} records no usable training config ({e}); {cfg.key()} was asked for"
        ) from None
    if found.key() != cfg.key():
        diff = {k: (v, getattr(cfg, k)) for k, v in asdict(found).items() if _norm(v) != _norm(getattr(cfg, k))}
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} was trained with config {found.key()}, but {cfg.key()} was asked for"
            f" (found vs asked: {diff})"
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def find_checkpoint(name: str, data: DataSplits, groups: int, device: Any, arch: str, cfg: TrainConfig) -> DynamicNet | None:
    """The cached or shipped checkpoint ``name`` for this request, loaded; ``None`` if there is none.

    A cached file that cannot be read or holds another backbone is moved aside
    (``<name>.corrupt-<time>``) with a warning, so the caller rebuilds it. A shipped file that is
    damaged cannot be re-copied from anywhere: :class:`CorruptFileError` says how to reinstall.
    """
    for folder, shipped in ((cache_dir("checkpoints", create=False), False), (SHIPPED_DIR, True)):
        path = folder / name
        if not path.exists():
            continue
        try:
            return load_checkpoint(path, data, groups, device, expect=(arch, cfg))
        except (CorruptFileError, UnsafeFileError, CheckpointMismatchError, IsADirectoryError) as e:
            if shipped:
                raise CorruptFileError(
                    f"the checkpoint shipped with dyncnn_gym is damaged: {e}. Reinstall the package"
                    " (pip install --force-reinstall --no-deps dyncnn_gym, or git checkout the file in a source tree)"
                ) from None
            move_aside(path, f"cached backbone checkpoint {str(path)!r} is unusable ({e})")
    return None


# -- training -----------------------------------------------------------------------------------
def shift_images(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Shift every image of ``x`` ``[B, C, H, W]`` by its own random offset of up to ``pad`` pixels in
    each direction (zero padding); returns a new tensor of the same shape. Pretraining's and
    :class:`~dyncnn_gym.callbacks.BackboneFinetuneCallback`'s ``augment``."""
    B, _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = dy[:, None] + torch.arange(H)[None, :]  # [B, H]
    cols = dx[:, None] + torch.arange(W)[None, :]  # [B, W]
    b = torch.arange(B)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _random_route(net: DynamicNet, mode: str, B: int, gen: torch.Generator, max_skip: float) -> torch.Tensor:
    T, A = net.num_decisions(mode), net.num_actions(mode)
    if mode == "channel":
        return torch.randint(0, A, (1, T), generator=gen).expand(B, T)
    rate = float(torch.rand((), generator=gen)) * max_skip
    run = (torch.rand((B, T), generator=gen) >= rate).long()
    if mode == "route":  # skipping as in skip mode, the blocks that run at one random width each
        return run * torch.randint(1, A, (1, T), generator=gen)
    return run


def served_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """The decision kinds a backbone trained for ``modes`` serves: route decisions (width and
    skipping at once) include every channel and every skip route, so a backbone trained for them
    serves ``DynChannel-v0`` and ``DynSkip-v0`` too."""
    return tuple(modes) + tuple(m for m in ("channel", "skip") if "route" in modes and m not in modes)


def route_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of a route's logits ``[B, classes]`` against the labels ``[B]``, or against
    ``target`` probabilities ``[B, classes]`` (the full network's, for in-place distillation)."""
    if target is None:
        return F.cross_entropy(logits, labels)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def evaluate_static(
    net: DynamicNet, data: DataSplits, split: str = "test", batch_size: int = 500, seed: int = 0
) -> dict[str, list[dict[str, float]]]:
    """Accuracy and FLOPs ratio of static routes on a split.

    Returns ``{"channel": [{"action", "accuracy", "flops_ratio"} per static width],
    "skip": [{"rate", "accuracy", "flops_ratio"} for random skipping at rates 0, .25, .5, .75, 1]}``
    for the modes ``net`` supports (``"exit"``: ``[{"exit", "accuracy", "flops_ratio"}]`` per
    static exit; route decisions have no rows of their own: their uniform routes are the channel
    widths and every block skipped). Random skipping is seeded with ``seed``.
    """
    net.eval()
    s = data.split(split)
    dev = next(net.parameters()).device
    X = torch.as_tensor(s.images)
    y = torch.as_tensor(s.labels)
    out: dict[str, list[dict[str, float]]] = {}
    for mode in net.modes:
        if mode == "route":  # its uniform routes are the channel widths (and every block skipped)
            continue
        if mode == "exit":
            out[mode] = _evaluate_exits(net, X, y, dev, batch_size)
            continue
        T, A = net.num_decisions(mode), net.num_actions(mode)
        full = net.cost_table(mode).full
        gen = torch.Generator().manual_seed(seed)
        settings = (
            [("action", a) for a in range(A)]
            if mode in ("channel", "route")
            else [("rate", r) for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
        )
        rows = []
        for name, v in settings:
            correct, flops = 0, 0
            for i in range(0, len(s), batch_size):
                xb = X[i : i + batch_size].to(dev)
                B = xb.shape[0]
                acts = torch.full((B, T), v) if name == "action" else (torch.rand((B, T), generator=gen) >= v).long()
                logits, route_flops = run_routes(net, mode, xb, acts)
                correct += int((logits.argmax(1).cpu() == y[i : i + B]).sum())
                flops += int(route_flops.sum())
            rows.append({name: v, "accuracy": correct / len(s), "flops_ratio": flops / (len(s) * full)})
        out[mode] = rows
    return out


def _evaluate_exits(net: DynamicNet, X: torch.Tensor, y: torch.Tensor, dev, batch_size: int) -> list[dict[str, float]]:
    """Accuracy and FLOPs ratio of every static exit of an exit backbone (every image leaves at exit ``k``)."""
    from .models.exits import DepthStages

    stages = DepthStages(net)  # type: ignore[arg-type]
    S = stages.num_exits
    correct = np.zeros(S, dtype=np.int64)
    for i in range(0, len(y), batch_size):
        carry = stages.begin(X[i : i + batch_size].to(dev))
        for k in range(S):
            carry, logits, _ = stages.advance(k, carry)
            correct[k] += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    ratios = stages.costs.all_exit_flops() / stages.costs.full
    return [{"exit": k, "accuracy": float(correct[k] / len(y)), "flops_ratio": float(ratios[k])} for k in range(S)]


def pretrain(
    arch: str,
    dataset: Any = "shapes",
    *,
    groups: int = 4,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache: bool = True,
    progress: bool = True,
    out: str | Path | None = None,
    augment: bool = False,
    distill: bool = False,
    sandwich: bool = False,
    allow_chance: bool = False,
    **arch_kwargs: Any,
) -> DynamicNet:
    """Train a backbone that stays accurate when pruned or skipped, and cache it.

    Args:
        arch: a name in :data:`dyncnn_gym.models.ARCHS` (``"vgg"``, ``"resnet20"``, ...), or
            ``"arch@mode"`` to train that kind of decision only (``"resnet32-lite@skip"``; the
            backbone then serves only that env), optionally followed by ``+distill``, ``+sandwich``
            and/or ``+augment`` (the same as the arguments of those names).
        dataset: anything :func:`dyncnn_gym.data.load_dataset` takes (a name, arrays, a dict, a
            torch ``Dataset``) or a loaded :class:`~dyncnn_gym.data.DataSplits`.
        groups: channel groups per layer (channel mode actions).
        epochs: passes over the train split; ``None`` picks :func:`default_epochs`.
        batch_size, lr: Adam (weight decay 1e-4) with a cosine schedule.
        seed: seeds initialisation, batch order, augmentation and random routes.
        device: where to train.
        cache: look for / store the checkpoint in the cache (and the shipped checkpoints). A cached
            file that is damaged or holds another backbone is moved aside with a warning and rebuilt.
        progress: show a tqdm progress bar.
        out: also save the checkpoint to this path.
        augment: random translations by up to 2 pixels. Images smaller than 16x16 are not shifted
            (the checkpoint's ``train_config`` then records ``augment: false``).
        distill: in-place distillation (Yu & Huang, 2019): the random routes learn the full
            network's predicted probabilities (detached) instead of the labels.
        sandwich: the sandwich rule: every step also trains the cheapest route (every decision at
            action 0: narrowest widths, or every skippable block skipped).
        allow_chance: keep a backbone whose full-network test accuracy is no better than always
            answering the most frequent test class (by default that raises :class:`ChanceLevelError`:
            the training diverged or learnt nothing). Such a backbone is returned and written to
            ``out``, but never cached, so no later call picks it up.
        arch_kwargs: override the arch's configuration (e.g. ``widths=``).

    Every argument and the write targets (the cache directory when ``cache``, ``out``) are checked
    before training starts. If a save still fails at the end, the backbone is written to a fresh
    file under the system's temporary directory instead, and the error (for ``out``) or a warning
    (for the cache) names it: a finished run is never lost.

    Raises:
        ValueError: a bad argument (named with its valid range), ``out`` empty or a directory, or
            :class:`ChanceLevelError` (see ``allow_chance``).
        PermissionError: the cache directory or ``out`` cannot be written (checked before training).
        CheckpointSaveError: (an OSError) ``out`` failed at the end; the message names where the
            backbone was saved instead.

    Returns:
        The backbone in eval mode, with ``.meta`` holding the metadata saved in the checkpoint:
        ``arch``, ``data``, ``data_fingerprint``, ``groups``, ``train_config``, ``train_seconds``
        and ``static`` (see :func:`evaluate_static`, on the test split).
    """
    spec = parse_backbone(arch)
    arch, modes = spec.arch, spec.modes
    dev = check_device(device)
    epochs = _check_int(epochs, "epochs", 1, none_ok=True)
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    groups = _check_int(groups, "groups", 2)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not np.isfinite(lr) or not 0 < lr < 1e3:
        raise ValueError(f"lr={lr!r} must be a finite learning rate in (0, 1000), e.g. 2e-3")
    lr = float(lr)
    if isinstance(dataset, DataSplits):
        data = dataset
    else:
        from .data import load_dataset

        data = load_dataset(dataset)
    cfg = TrainConfig(
        epochs=epochs if epochs is not None else default_epochs(data),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        augment=(bool(augment) or spec.augment) and can_augment(data),
        modes=modes,
        distill=bool(distill) or spec.distill,
        sandwich=bool(sandwich) or spec.sandwich,
    )
    if cfg.sandwich and "exit" in ARCHS[arch]:
        raise ValueError(
            f"backbone {arch!r} has early exits: every exit is trained on every step, so there is no cheapest"
            " route for '+sandwich' to add; drop it (use '+distill' to train the exits on the last exit's predictions)"
        )
    name = checkpoint_name(arch, groups, data, cfg)
    use_cache = bool(cache) and not arch_kwargs
    # every write target is checked before training, so a run is not lost to a path found bad at the end
    out_path = None if out is None else check_writable_file(out, "out")
    if use_cache:
        found = find_checkpoint(name, data, groups, dev, arch, cfg)
        if found is not None:
            if out_path is not None:
                _save_all(found, [out_path], out_path)
            return found
        try:
            check_writable_dir(cache_dir("checkpoints", create=False), "the checkpoint cache")
        except (PermissionError, ValueError) as e:
            raise PermissionError(
                f"{e}. Set ${ENV_VAR} to a writable directory, or pass cache=False (--no-cache) with out= (--out)"
            ) from None
    device = dev

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build(arch, data.image_shape, data.num_classes, groups, **arch_kwargs).to(device)
    X = torch.as_tensor(data.train.images)
    y = torch.as_tensor(data.train.labels)
    n = len(y)
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    difficulty = np.asarray(data.train.difficulty, dtype=np.float64)
    easy_first = torch.as_tensor(np.argsort(difficulty, kind="stable")) if np.isfinite(difficulty).all() else None
    modes = cfg.modes or getattr(net, "default_training_modes", net.modes)
    bar = _progress(total, f"pretrain {arch} on {data.name}", progress)
    start = time.perf_counter()
    net.train()
    step = 0
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            progress_frac = step / total
            if easy_first is not None and progress_frac < cfg.curriculum_end:
                frac = cfg.curriculum_start + (1 - cfg.curriculum_start) * progress_frac / cfg.curriculum_end
                pool = easy_first[: max(batch_size, int(frac * n))]
                idx = pool[torch.randint(0, len(pool), (batch_size,), generator=gen)]
            else:
                idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = X[idx], y[idx]
            if cfg.augment:
                xb = shift_images(xb, gen)
            xb, yb = xb.to(device), yb.to(device)
            mode = modes[step % len(modes)]
            exits = net.all_exits(xb) if mode == "exit" else None
            logits_full = exits[-1] if exits is not None else net.full_forward(xb, mode)
            loss_full = F.cross_entropy(logits_full, yb)
            loss = loss_full
            if exits is not None and step >= cfg.full_only * total:
                target = F.softmax(logits_full.detach(), dim=1) if cfg.distill else None
                loss_route = sum(route_loss(logits, yb, target) for logits in exits[:-1])
                loss = loss_full + loss_route
            elif exits is None and step >= cfg.full_only * total:
                routes = [_random_route(net, mode, xb.shape[0], gen, cfg.max_skip)]
                if cfg.sandwich and mode == "route":  # the cheapest route of each kind (as in skip and in channel mode)
                    skip_all = torch.zeros_like(routes[0])
                    skip_all[:, 0] = net.num_actions(mode) - 1  # the first block runs, at full width
                    routes += [skip_all, torch.ones_like(routes[0])]
                elif cfg.sandwich:
                    routes.append(torch.zeros_like(routes[0]))
                target = F.softmax(logits_full.detach(), dim=1) if cfg.distill else None
                loss_route = sum(route_loss(run_routes(net, mode, xb, acts)[0], yb, target) for acts in routes)
                loss = loss_full + loss_route
            else:
                loss_route = torch.zeros(())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss_full.item():.3f}", route=f"{loss_route.item():.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    net.eval()
    if cfg.modes:
        net.modes = served_modes(cfg.modes)  # the other decisions were never trained: refuse them
    static = evaluate_static(net, data)
    net.meta = {
        "arch": arch,
        "config": net.config(),
        "in_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "groups": groups,
        "data": data.name,
        "data_fingerprint": data.fingerprint,
        "train_config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "static": static,
        "torch": str(torch.__version__),
    }
    chance = _chance_problem(net, data)
    if chance and not allow_chance:
        try:
            kept = f"it is saved at {str(save_checkpoint(net, rescue_path(name)))!r}"
        except OSError as e:
            kept = f"it could not be saved ({e.strerror or e})"
        raise ChanceLevelError(
            f"pretraining {arch!r} on {data.name!r} ended at chance level: {chance}. It was not cached; lower lr"
            f" (now {lr:g}) or train longer, or pass allow_chance=True (--allow-chance) to keep it ({kept})"
        )
    targets = ([out_path] if out_path is not None else []) + (
        [cache_dir("checkpoints", create=False) / name] if use_cache and not chance else []
    )
    _save_all(net, targets, out_path)
    return net


def _check_int(value: Any, name: str, lowest: int, none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(
            f"{name}={value!r} must be an integer >= {lowest}" + (" (or None for the default)" if none_ok else "")
        )
    return int(value)


def _chance_problem(net: DynamicNet, data: DataSplits) -> str:
    """Why ``net`` is at chance level on the test split ("" if it is not): its full network is no
    more accurate than always answering the most frequent test class, or its weights are not finite."""
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        return "the weights are not finite (the loss diverged)"
    mode = next(m for m in net.modes if m in net.meta["static"])  # route backbones report channel and skip rows
    rows = net.meta["static"][mode]
    full = rows[0]["accuracy"] if mode == "skip" else rows[-1]["accuracy"]  # full width / no block skipped / last exit
    labels = np.asarray(data.test.labels)
    chance = float(np.bincount(labels, minlength=data.num_classes).max() / len(labels))
    if full <= chance:
        return (
            f"the full network's test accuracy is {full:.4f}, no better than {chance:.4f} (always answering the most"
            " frequent test class)"
        )
    return ""


def _save_all(net: DynamicNet, targets: list[Path], out_path: Path | None) -> None:
    """Save ``net`` to every target; if any fails, save it once to a rescue file and say where: an
    exception for ``out``, a warning for the cache (the backbone is returned either way)."""
    failed = []
    for path in targets:
        try:
            save_checkpoint(net, path)
        except OSError as e:
            failed.append((path, e))
    if not failed:
        return
    what = "; ".join(f"{str(p)!r} ({e.strerror or e})" for p, e in failed)
    try:
        rescued = save_checkpoint(net, rescue_path(failed[0][0].name))
        where = (
            f"it was saved to {str(rescued)!r} instead (load it with dyncnn_gym.load_checkpoint({str(rescued)!r}),"
            " or copy it into place)"
        )
    except OSError as e:
        where = f"nor could it be saved to the temporary directory ({e.strerror or e})"
    message = f"could not write the trained backbone to {what}; {where}"
    if any(p == out_path for p, _ in failed):
        raise CheckpointSaveError(message)
    warnings.warn(message)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True)


# -- resolving the `backbone=` argument of the envs --------------------------------------------
_RESOLVED: dict[tuple, DynamicNet] = {}


def resolve_backbone(
    backbone: Any,
    data: DataSplits,
    mode: str,
    groups: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> DynamicNet:
    """Turn an env's ``backbone=`` argument into a loaded network for ``data`` and ``mode``.

    ``backbone`` may be ``None`` (the mode's default arch), an arch name (its cached or shipped
    checkpoint for this data and ``groups``; pretrained on first use, with a progress bar, and
    cached), a path to a checkpoint, or a :class:`~dyncnn_gym.models.DynamicNet`. Loaded networks are
    shared within a process, so many envs on the same backbone hold one copy (and all see the
    weights a fine-tuning callback changes).
    """
    if backbone is None:
        backbone = DEFAULT_ARCH[mode]
    if isinstance(backbone, DynamicNet):
        _check_compatible(backbone, data, mode, groups)
        return backbone
    if isinstance(backbone, nn.Module):
        raise TypeError(
            f"backbone={type(backbone).__name__} is a torch module but not a dyncnn_gym DynamicNet;"
            " build one with dyncnn_gym.models.build(...) or dyncnn_gym.pretrain(...)"
        )
    if isinstance(backbone, Path) or (isinstance(backbone, str) and (backbone.endswith(".pt") or "/" in backbone)):
        key = ("path", str(Path(backbone).resolve()), data.fingerprint, groups, str(device))
        if key not in _RESOLVED:
            net = load_checkpoint(backbone, data, groups, device)
            _check_compatible(net, data, mode, groups)
            _RESOLVED[key] = net
        return _RESOLVED[key]
    if isinstance(backbone, str):
        if _name_parts(backbone)[0] not in ARCHS:
            raise ValueError(
                f"backbone={backbone!r} is not a known arch or a checkpoint path; choose an arch from"
                f" {sorted(ARCHS)} (optionally as 'arch@mode', with '+option's from {list(TRAINING_OPTIONS)}),"
                f" a path to a .pt checkpoint, or a DynamicNet"
            )
        arch, modes = parse_backbone(backbone)[:2]
        if mode not in (served_modes(modes) if modes else ARCHS[arch]):
            valid = sorted(a for a, m in ARCHS.items() if mode in m)
            raise ValueError(
                f"backbone={backbone!r} has no {mode!r} decisions; for this env choose one of {valid} (or 'arch@{mode}')"
            )
        key = ("arch", backbone, data.fingerprint, groups, str(device))
        if key not in _RESOLVED:
            _RESOLVED[key] = pretrain(backbone, data, groups=groups, device=device, progress=progress)
        return _RESOLVED[key]
    raise TypeError(f"backbone={backbone!r} must be None, an arch name {sorted(ARCHS)}, a checkpoint path, or a DynamicNet")


def _check_compatible(net: DynamicNet, data: DataSplits, mode: str, groups: int) -> None:
    net.check_mode(mode)
    if tuple(net.in_shape) != tuple(data.image_shape):
        raise ValueError(f"backbone expects images {tuple(net.in_shape)}, but the data has {data.image_shape}")
    if net.num_classes != data.num_classes:
        raise ValueError(f"backbone has {net.num_classes} classes, but the data has {data.num_classes}")
    if mode in ("channel", "route") and net.groups != groups:
        raise ValueError(f"backbone has groups={net.groups}, but groups={groups} was asked for")
    meta = getattr(net, "meta", None)
    if meta and meta.get("data_fingerprint") not in (None, data.fingerprint):
        raise ValueError(
            f"backbone was trained on data {meta.get('data')!r} (fingerprint {meta['data_fingerprint']}),"
            f" but the env uses data {data.name!r} (fingerprint {data.fingerprint})"
        )
