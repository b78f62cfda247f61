"""Issue 22.4: the README is tested. Every `robench …` command in its code blocks names a real
subcommand and only options that subcommand has (parsed against the CLI's own click tree, the
same thing `--help` prints), and every row of a measured table names the command behind it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from robench.cli.app import app as robench_app

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(text: str) -> list[str]:
    """Shell code blocks (fences with no language or bash/sh/console/shell)."""
    blocks, cur, lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if cur is None:
                cur, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh", "console", "shell"):
                    blocks.append("\n".join(cur) + "\n")
                cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def readme_commands() -> list[str]:
    cmds = []
    for block in _blocks(README.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|\|\||;|\|", line):
                part = part.strip()
                if part.startswith("robench ") or part == "robench":
                    cmds.append(part)
    return cmds


def _check(cmd: str) -> None:
    words = shlex.split(cmd)[1:]
    group = typer.main.get_command(robench_app)
    node, path = group, ["robench"]
    while hasattr(node, "get_command") and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = node.get_command(node.context_class(node), name)
        assert sub is not None, f"README: `{cmd}`: {' '.join(path)} has no subcommand {name!r}"
        node, path = sub, path + [name]
    known = {o for p in node.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for w in words:
        if w.startswith("--"):
            opt = w.split("=", 1)[0]
            assert opt in known, f"README: `{cmd}`: `{' '.join(path)}` has no option {opt} (it has {sorted(known)})"
    if not hasattr(node, "get_command"):  # the whole line parses as --help would see it
        node.parse_args(node.context_class(node, info_name=path[-1], resilient_parsing=True), list(words))
        # resilient parsing skips required options: a command missing one fails when a user types it
        given = {w.split("=", 1)[0] for w in words if w.startswith("-")}
        if "--help" not in given:
            for p in node.params:
                if getattr(p, "param_type_name", "") == "option" and p.required and not set(p.opts) & given:
                    raise AssertionError(f"README: `{cmd}`: `{' '.join(path)}` needs {p.opts[0]}")


COMMANDS = readme_commands()


def test_readme_has_commands():
    assert len(COMMANDS) >= 20 and any(c.startswith("robench run") for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_exists(cmd):
    _check(cmd)


def test_checker_catches_a_wrong_option_and_subcommand():
    with pytest.raises(AssertionError, match="no option --nope"):
        _check("robench run --nope 3")
    with pytest.raises(AssertionError, match="no subcommand"):
        _check("robench frobnicate")
    # a command that would fail with "Missing option": caught (the old `train --defense diffpure`
    # needed --model; now it does not, so a command with a required option stands in)
    required = [
        (name, p.opts[0])
        for name in ("eval", "train", "data", "weights")
        for p in getattr(typer.main.get_command(robench_app).get_command(None, name), "params", [])
        if getattr(p, "param_type_name", "") == "option" and p.required
    ]
    assert required, "no command has a required option to test the checker with"
    name, opt = required[0]
    with pytest.raises(AssertionError, match=f"needs {opt}"):
        _check(f"robench {name}")


def test_measured_tables_name_their_command():
    """Every row of a README table with a `command` column names one (`robench …`, a script, or
    'same' for the row above's)."""
    rows = 0
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or "command" not in line.lower() or not lines[i + 1].startswith("|---"):
            continue
        header = [c.strip().lower() for c in line.strip("|").split("|")]
        col = header.index("command")
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cell = row.strip("|").split("|")[col].strip()
            rows += 1
            assert re.search(r"`([A-Z_]+=\S* )*(robench|bash|python|make)[^`]*`|^same", cell), (
                f"README table row names no command: {row}"
            )
    assert rows >= 8
