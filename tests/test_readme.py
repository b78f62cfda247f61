"""The README and the docs pages are tested. Every `robench …` command in their code blocks names a real
subcommand and only options that subcommand has (parsed against the CLI's own click tree, the
same thing `--help` prints), and every row of a measured table names the command behind it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from robench.cli.app import app as robench_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: the README and every page it sends a reader to: their commands are checked the same way
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


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


def readme_commands(pages=PAGES) -> list[tuple[str, str]]:
    cmds = []
    for page in pages:
        cmds += [(page.relative_to(ROOT).as_posix(), c) for c in _page_commands(page.read_text())]
    return cmds


def _page_commands(text: str) -> list[str]:
    cmds = []
    for block in _blocks(text):
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
    readme = [c for p, c in COMMANDS if p == "README.md"]
    assert len(readme) >= 5 and any(c.startswith("robench run") for c in readme)
    assert len(COMMANDS) >= 40 and {p for p, _ in COMMANDS} > {"README.md"}


@pytest.mark.parametrize("page,cmd", COMMANDS)
def test_readme_command_exists(page, cmd):
    _check(cmd)


def test_readme_is_short_and_its_links_resolve():
    """The README is read in five minutes; every relative link of every page names a file that
    exists and, with an anchor, a heading of that file."""
    assert len(README.read_text().splitlines()) <= 200

    def anchors(path: Path) -> set[str]:
        heads = [m.group(1) for m in re.finditer(r"^#+ (.*)$", path.read_text(), re.M)]
        return {"".join(c for c in h.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-") for h in heads}

    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


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
    lines = [ln for page in PAGES for ln in page.read_text().splitlines() + [""]]
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
