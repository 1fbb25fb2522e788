"""The ``dyncnn-gym`` command.

A user error (a bad argument, a missing, unreadable or unsafe file, an unwritable output path) is
printed as one line, ``dyncnn-gym COMMAND: error: ...``, and the command exits with code 2 and no
traceback. ``--debug`` (or the environment variable ``DYNCNN_GYM_DEBUG=1``) shows the full
traceback instead; any other exception (a bug) always does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

#: exceptions the commands raise for a user's input or files: one line and exit code 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
DEBUG_VAR = "DYNCNN_GYM_DEBUG"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The help format of every ``dyncnn-gym`` command, example script and reference agent: the
    description as written, and every option's help ending in its default, ``(default: X)``, unless
    the help already says what the default is. On/off flags (``store_true``) are off unless given,
    and options whose default ``None`` means something say what in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0 and isinstance(action.const, bool)
        if flag or action.default is None or "%(default)" in text or "(default" in text.lower():
            return text
        return super()._get_help_string(action)


def arg(default: Any, help: str) -> Any:
    """A dataclass field with its ``--help`` text (the reference agents' ``Args``; see
    :func:`add_dataclass_arguments`)."""
    return dataclasses.field(default=default, metadata={"help": help})


def add_dataclass_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the dataclass ``cls`` (made with :func:`arg`): ``--field-name``, typed by
    the default's type; a bool default gives ``--flag`` / ``--no-flag``."""
    for f in dataclasses.fields(cls):
        flag, text = f"--{f.name.replace('_', '-')}", f.metadata["help"]
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=text)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretraining import pretrain

    net = pretrain(
        args.arch,
        args.data,
        groups=args.groups,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        cache=not args.no_cache,
        progress=not args.quiet,
        out=args.out,
        augment=args.augment,
        distill=args.distill,
        sandwich=args.sandwich,
        allow_chance=args.allow_chance,
    )
    meta = net.meta
    print(f"{meta['arch']} on {meta['data']} (groups={meta['groups']}): trained in {meta['train_seconds']} s")
    for mode, rows in meta["static"].items():
        for row in rows:
            key = next(k for k in ("action", "rate", "exit") if k in row)
            label = {
                "action": lambda v: f"width {v + 1}/{meta['groups']}",
                "rate": lambda v: f"skip rate {v:.2f}",
                "exit": lambda v: f"exit {v}",
            }[key](row[key])
            print(f"  {mode:8s} {label:16s} accuracy {row['accuracy']:.4f}  flops_ratio {row['flops_ratio']:.3f}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import ENV_IDS, EXIT_IDS, ONE_SHOT_IDS
    from .cache import cache_dir
    from .data import DATASET_NAMES
    from .models import ARCHS
    from .pretraining import DEFAULT_ARCH, SHIPPED_DIR, SHIPPED_EXTRA

    print("envs:      ", ", ".join(ENV_IDS + EXIT_IDS + ONE_SHOT_IDS))
    print("archs:     ", ", ".join(f"{a} ({'/'.join(m)})" for a, m in ARCHS.items()))
    print("defaults:  ", ", ".join(f"{m}: {a}" for m, a in DEFAULT_ARCH.items()))
    print(
        "shipped:   ",
        f"{len(list(SHIPPED_DIR.glob('*.pt')))} backbones in {SHIPPED_DIR}: the defaults (shapes, digits),"
        f" the benchmark suites', and {', '.join(SHIPPED_EXTRA)} (shapes)",
    )
    print("data sets: ", ", ".join(DATASET_NAMES))
    print("cache dir: ", cache_dir(create=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .benchmark.demo import run_demo

    envs = tuple(args.env) if args.env else None
    kwargs: dict[str, Any] = {"envs": envs} if envs else {}
    if args.backbone:
        backbones = {}
        for item in args.backbone:
            mode, sep, name = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--backbone {item!r} must be MODE=NAME, e.g. exit=resnet56-exits+distill")
            backbones[mode] = name
        kwargs["backbones"] = backbones
    if args.root is not None or args.val_fraction != "auto":
        from .data import load_dataset

        vf = args.val_fraction
        if vf != "auto":
            try:
                vf = float(vf)
            except ValueError:
                raise ValueError(f"--val-fraction {vf!r} must be 'auto' or a number in [0, 1)") from None
        kwargs["dataset"] = load_dataset(args.data, root=args.root, val_fraction=vf)
    else:
        kwargs["dataset"] = args.data
    run_demo(
        args.out,
        timesteps=args.timesteps,
        seed=args.seed,
        progress=not args.quiet,
        decision_costs=args.decision_costs,
        **kwargs,
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .benchmark.protocol import evaluate, load_model

    try:
        env_kwargs = json.loads(args.env_kwargs) if args.env_kwargs else {}
    except json.JSONDecodeError as e:
        raise ValueError(
            f'--env-kwargs {args.env_kwargs!r} is not JSON ({e}); give an object such as \'{{"dataset": "digits"}}\''
        ) from None
    if not isinstance(env_kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
    res = evaluate(load_model(args.model), args.env, **env_kwargs)
    print(json.dumps({k: v for k, v in res.items() if k != "images"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dyncnn-gym",
        formatter_class=HelpFormatter,
        description="Input-adaptive CNNs as Gymnasium environments (DynChannel, DynSkip, DynBlockDrop, DynRoute, DynExit).",
        epilog=f"Errors in the arguments or files print one line and exit with code 2; --debug (or {DEBUG_VAR}=1)"
        " shows the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help=f"show the full traceback of an error (also {DEBUG_VAR}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("pretrain", formatter_class=HelpFormatter, help="train a pruning/skipping-robust backbone and cache it")
    p.add_argument(
        "arch",
        help="backbone arch, e.g. vgg, resnet8, resnet20 (see `dyncnn-gym info`), or 'arch@mode' to"
        " train one kind of decision only (e.g. resnet32-lite@skip, the default DynSkip backbone), optionally"
        " with '+sandwich', '+distill' and/or '+augment' (e.g. vgg+sandwich+distill, the default DynChannel backbone)",
    )
    p.add_argument("--data", default="shapes", help="data set name (default: shapes, the embedded data)")
    p.add_argument("--groups", type=int, default=4, help="channel groups per layer (default: 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: chosen from the data size)")
    p.add_argument("--batch-size", type=int, default=128, help="training images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the batch order")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--out", default=None, help="also write the checkpoint to this file (default: the cache only)")
    p.add_argument("--augment", action="store_true", help="random 2-pixel translations (images of at least 16x16)")
    p.add_argument(
        "--distill",
        action="store_true",
        help="in-place distillation: random routes learn the full network's probabilities, not the labels",
    )
    p.add_argument(
        "--sandwich",
        action="store_true",
        help="sandwich rule: every step also trains the cheapest route (narrowest widths / all blocks skipped)",
    )
    p.add_argument(
        "--allow-chance",
        action="store_true",
        help="keep a backbone whose test accuracy is at chance level (refused by default; never cached)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the checkpoint cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the checkpoint metadata as JSON")
    p.set_defaults(func=_cmd_pretrain)

    from .benchmark.demo import DEMO_CHOICES

    p = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="the main job: pretrain, train PPO routers, evaluate, plot (minutes on 2 cores)",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument(
        "--env",
        action="append",
        choices=DEMO_CHOICES,
        help="only this env (repeatable; default: DynChannel-v1, DynSkip-v1 and DynExit-v1; DynBlockDrop-v1 plans"
        " every block of the skip backbone from one look and is timed like DynExit-v1)",
    )
    p.add_argument("--timesteps", type=int, default=None, help="PPO steps per env (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seeds PPO and the evaluation's random baselines")
    p.add_argument(
        "--data",
        default="shapes",
        help="data set name: shapes (the embedded data), digits, or cifar10 / cifar100 / svhn / mnist / fashionmnist"
        " from torchvision's files under --root; backbones for other data than shapes and digits are pretrained"
        " on first use (minutes to hours on a CPU)",
    )
    p.add_argument("--root", default=None, help="folder of torchvision's data files (default: the package cache)")
    p.add_argument(
        "--val-fraction",
        default="auto",
        help="share of the train split held out for the routers where the data bring no held-out split"
        " ('auto': 0.1 of a train split of at least 5000 images, else none; default: %(default)s)",
    )
    p.add_argument(
        "--backbone",
        action="append",
        metavar="MODE=NAME",
        help="use backbone NAME (an arch name or checkpoint path) for MODE: channel (DynChannel, and DynExit's"
        " width stages), skip (DynSkip) or exit (DynExit then runs depth stages on it, e.g."
        " exit=resnet56-exits+distill, which ships); repeatable (default: the env defaults)",
    )
    p.add_argument(
        "--decision-costs",
        choices=["flops", "time"],
        default="flops",
        help="what the reward charges each decision of DynChannel / DynSkip / DynBlockDrop: its FLOPs, or its"
        " time on this machine measured when the env is built (the env argument decision_costs); 'time'"
        " leaves DynExit out: give --env (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", formatter_class=HelpFormatter, help="evaluate a saved SB3 model on the whole test split")
    p.add_argument("model", help="path to an SB3 .zip (PPO, A2C, DQN, MaskablePPO, RecurrentPPO, QR-DQN)")
    p.add_argument(
        "--env",
        default="DynChannel-v1",
        choices=[
            "DynChannel-v1",
            "DynSkip-v1",
            "DynRoute-v1",
            "DynExit-v1",
            "DynChannel-v0",
            "DynSkip-v0",
            "DynRoute-v0",
            "DynExit-v0",
            "DynBlockDrop-v1",
            "DynBlockDrop-v0",
        ],
        help="env id the model was trained on",
    )
    p.add_argument(
        "--env-kwargs",
        default=None,
        help='JSON object of env arguments, e.g. \'{"dataset": "digits"}\' (default: none, the env\'s defaults)',
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("info", formatter_class=HelpFormatter, help="list envs, backbones, data sets and the cache directory")
    p.set_defaults(func=_cmd_info)

    from .benchmark import bench

    p = sub.add_parser(
        "bench",
        formatter_class=HelpFormatter,
        help="rank routing algorithms on a benchmark suite (leaderboard, fronts, plots)",
        description="Train and evaluate agents on every task and compute weight of a suite; write"
        " results.json, leaderboard.md and plots. Agents: ppo, a2c, dqn, static, random, oracle,"
        " or module:function (function(env_fn, task, seed, step_budget) -> policy).",
    )
    bench.add_arguments(p)
    p.set_defaults(func=bench.run_from_args)

    from .benchmark import validate

    p = sub.add_parser(
        "validate",
        formatter_class=HelpFormatter,
        help="re-evaluate a bench run's saved policies and check every reported figure (exit code 2 on a mismatch)",
        description="Re-derive every figure of a dyncnn-gym bench run from its saved policies: pins, baselines,"
        " every policy's accuracy, FLOPs ratio and action rates, the scores, the rliable aggregates and the"
        " leaderboard.md / summary.json files. Prints one line per mismatch; exits with code 2 if any.",
    )
    validate.add_arguments(p)
    p.set_defaults(func=validate.run_from_args)

    from .benchmark import sweep

    p = sub.add_parser(
        "sweep",
        formatter_class=HelpFormatter,
        help="PPO over compute weights, frozen and co-trained, against static networks of the same cost",
        description="Train PPO (the recipe) per env and compute weight on frozen and on co-trained"
        " (BackboneFinetuneCallback) backbones; evaluate on the whole test split against the full"
        " network, uniform and per-layer static routes and matched random routes; write results.json,"
        " summary.md and plots.",
    )
    sweep.add_arguments(p)
    p.set_defaults(func=sweep.run_from_args)

    try:
        from .benchmark import perf
    except ImportError:  # pragma: no cover - the perf module is optional while being built
        perf = None
    if perf is not None:
        p = sub.add_parser(
            "perf", formatter_class=HelpFormatter, help="measure env, SB3 and dynamic-forward speed (ratios, medians)"
        )
        perf.add_arguments(p)
        p.set_defaults(func=perf.run_from_args)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, recorded with results
    debug = args.debug or os.environ.get(DEBUG_VAR, "").strip() not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"dyncnn-gym {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an OSError without a message is named by its errno text)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
