"""The README's code runs: every ``python`` block, in order, in one namespace, as a reader would
paste them into one session.

A line whose comment contains ``test: name=value[, name=value]`` runs with those keyword
arguments instead (``name=...`` replaced, or added to the line's last call when absent), so that
a block that trains for minutes runs in seconds here. Code comments claim no figures: a number a
reader could compare with the output belongs to a results table and its command, not to a
comment this test cannot check at small settings.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT

_DIRECTIVE = re.compile(r"#.*?\btest:\s*(?P<args>.+)$")
_FIGURE = re.compile(r"\d+\.\d+|\d+ ?%")


def python_blocks(text: str) -> list[str]:
    """The ``python`` fenced blocks of a Markdown text, in order."""
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def apply_test_settings(line: str) -> str:
    """``line`` with its ``# test: name=value, ...`` settings applied (the comment is kept)."""
    m = _DIRECTIVE.search(line)
    if not m:
        return line
    code, comment = line[: line.index("#")], line[line.index("#") :]
    for pair in m.group("args").split(","):
        name, _, value = (s.strip() for s in pair.partition("="))
        assert name.isidentifier() and value, f"bad test setting {pair!r} in {line!r}"
        pattern = re.compile(rf"\b{name}=[^,()]+")
        if pattern.search(code):
            code = pattern.sub(f"{name}={value}", code, count=1)
        else:  # add it to the line's last call
            end = code.rindex(")")
            opened = code[:end].rstrip().endswith("(")
            code = f"{code[:end]}{'' if opened else ', '}{name}={value}{code[end:]}"
    return code + comment


def comments(block: str) -> list[str]:
    return [line[line.index("#") :] for line in block.splitlines() if "#" in line and not line.lstrip().startswith('"')]


BLOCKS = python_blocks((REPO_ROOT / "README.md").read_text())


def test_the_readme_has_python_blocks_and_settings_apply():
    assert len(BLOCKS) >= 3
    assert apply_test_settings("m.learn(total_timesteps=100_000)  # test: total_timesteps=64") == (
        "m.learn(total_timesteps=64)  # test: total_timesteps=64"
    )
    assert apply_test_settings("b = pretrain('vgg', data)  # cached; test: epochs=1, seed=3") == (
        "b = pretrain('vgg', data, epochs=1, seed=3)  # cached; test: epochs=1, seed=3"
    )
    assert apply_test_settings("f()  # test: n=2") == "f(n=2)  # test: n=2"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_comments_claim_no_figures(index):
    claims = [c for c in comments(BLOCKS[index]) if _FIGURE.search(_DIRECTIVE.sub("", c))]
    assert not claims, f"README python block {index + 1} claims figures in comments: {claims}"


def test_every_readme_python_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(BLOCKS, 1):
        code = "\n".join(apply_test_settings(line) for line in block.splitlines())
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
