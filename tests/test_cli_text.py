"""Help and error text reach the user literally: bracketed words survive (rich markup would eat
"robench[ray]" and "[nc]"), sentences are not broken, every command's --help renders."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from robench.cli.app import app, user_errors
from robench.core.errors import RobenchError

runner = CliRunner()


def _commands(group, prefix=()):
    ctx = type(group).context_class(group) if hasattr(type(group), "context_class") else None
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,)
        if hasattr(cmd, "list_commands"):  # a command group (typer vendors its own click)
            yield from _commands(cmd, prefix + (name,))


ALL = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_help_renders_literally(path):
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output


def test_bracketed_words_survive_in_help():
    out = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "robench[ray]" in out and "[esc]" in out and "[nc]" in out
    # docstring line breaks are not kept mid-sentence: click rewraps each paragraph
    flat = " ".join(out.split())
    assert "--model and --defense take comma lists: the grid is every model × defence × attack. The settings form" in flat


def test_error_messages_print_brackets_literally(capsys):
    @user_errors
    def boom():
        raise RobenchError("install it with: pip install 'robench[ray]' ([nc] and [esc] stay)")

    with pytest.raises(typer.Exit) as exc:
        boom()
    assert exc.value.exit_code == 2
    err = capsys.readouterr().err
    assert "robench[ray]" in err and "[nc]" in err and "[esc]" in err and err.startswith("error:")
