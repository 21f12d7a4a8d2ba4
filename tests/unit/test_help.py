"""Every command explains itself: each command and group of the CLI (walked from the root group, nested
groups included) has help text with an `Example:` block showing it run, and is named in README.md or
docs/*.md (as sqlite-utils checks its own commands)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import octbatch.cli

ROOT = Path(__file__).resolve().parents[2]


def _root_group() -> click.Group:
    """The group the `octbatch` console script runs: the module's group that holds `run`."""
    groups = [v for v in vars(octbatch.cli).values() if isinstance(v, click.Group) and "run" in v.commands]
    assert groups, "octbatch.cli defines no click group holding `run`"
    return groups[0]


def _walk(cmd: click.Command, path: tuple[str, ...]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], (*path, name))


COMMANDS = {" ".join(path): cmd for path, cmd in _walk(_root_group(), ("octbatch",)) if not cmd.hidden}


def _docs() -> str:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def _examples(help_text: str) -> list[str]:
    """The lines of the `Example:` block(s) of a help text (indented lines after an `Example:` line)."""
    lines = help_text.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() in ("Example:", "Examples:"):
            for follow in lines[i + 1 :]:
                if follow.strip() and not follow.startswith((" ", "\t")):
                    break
                if follow.strip():
                    out.append(follow.strip())
    return out


def test_the_tree_is_walked():
    assert {"octbatch", "octbatch run", "octbatch merge", "octbatch report"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_has_help_with_an_example(name):
    cmd = COMMANDS[name]
    assert (cmd.help or "").strip(), f"`{name}` has no help text"
    examples = _examples(cmd.help or "")
    assert examples, f"`{name}` has no `Example:` block in its help (add one under a \\b line)"
    assert any(re.match(re.escape(name) + r"(?![\w-])", e) for e in examples), (
        f"the `Example:` block of `{name}` does not run `{name}`: {examples}"
    )
    # ... and it survives Click's rewrapping into what `--help` prints.
    args = name.split()[1:] + ["--help"]
    result = CliRunner().invoke(_root_group(), args, prog_name="octbatch")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and examples[0] in result.output, result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_is_documented(name):
    mentioned = re.search(re.escape(name) + r"(?![\w-])", _docs()) is not None
    assert mentioned, f"`{name}` is not mentioned in README.md or docs/*.md"
