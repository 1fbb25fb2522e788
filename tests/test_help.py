"""Every option of the ``dyncnn-gym`` commands, the example scripts and the reference agents has
help text, and the help shows the option's default where it has one."""

from __future__ import annotations

import argparse
import runpy
import sys

import pytest
from conftest import REPO_ROOT

SCRIPTS = sorted(p for d in ("examples", "agents") for p in (REPO_ROOT / d).glob("*.py") if p.name != "__init__.py")


class _Parsed(BaseException):
    """Raised instead of parsing, carrying the parser a script built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def script_parser(path, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script builds, taken when it calls ``parse_args`` (nothing after that runs)."""

    def stop(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [str(path)])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except _Parsed as parsed:
        return parsed.parser
    raise AssertionError(f"{path.name} never parsed its arguments")


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options (of ``parser`` and its subcommands) without help text, or with a default their help
    does not show. On/off flags are off unless given; a default of ``None`` is explained in the help."""
    problems = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                problems += undocumented(sub)
            continue
        name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{name}: no help text")
            continue
        flag = action.nargs == 0 and isinstance(action.const, bool)
        if action.default not in (None, argparse.SUPPRESS) and not flag:
            if "(default" not in formatter._get_help_string(action).lower():
                problems.append(f"{name}: the help does not show the default {action.default!r}")
    return problems


def test_every_cli_option_has_help_and_shows_its_default():
    from dyncnn_gym.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"pretrain", "info", "demo", "evaluate", "bench", "sweep", "perf"} <= set(commands)
    assert undocumented(parser) == []
    for name, sub in commands.items():  # --help renders (a bare "%" in a help text breaks it)
        assert sub.format_help().startswith(f"usage: {parser.prog} {name}"), name


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_option_has_help_and_shows_its_default(path, monkeypatch):
    parser = script_parser(path, monkeypatch)
    assert len(parser._actions) > 1
    assert undocumented(parser) == []
    assert parser.format_help().startswith("usage:")


def test_the_check_catches_a_missing_help_and_a_hidden_default():
    from dyncnn_gym.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--a", type=int, default=3)
    p.add_argument("--b", type=int, default=3, help="shown by the formatter")
    p.add_argument("--c", action="store_true", help="a flag")
    raw = argparse.ArgumentParser(prog="y")
    raw.add_argument("--d", type=int, default=3, help="no default shown")
    assert undocumented(p) == ["x --a: no help text"]
    assert undocumented(raw) == ["y --d: the help does not show the default 3"]
    assert "(default: 3)" in p.format_help()
