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
    assert (
        "--model and --defense take comma lists: the grid is every model × defence × attack. The settings form" in flat
    )


def test_error_messages_print_brackets_literally(capsys):
    @user_errors
    def boom():
        raise RobenchError("install it with: pip install 'robench[ray]' ([nc] and [esc] stay)")

    with pytest.raises(typer.Exit) as exc:
        boom()
    assert exc.value.exit_code == 2
    err = capsys.readouterr().err
    assert "robench[ray]" in err and "[nc]" in err and "[esc]" in err and err.startswith("error:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n must be ≥ 1 (or 'all'"),
        (["--n", "-1"], "--n must be ≥ 1 (or 'all'"),
        (["--n", "many"], "--n must be a whole number"),
        (["--eps", "0.031"], "is in /255 units"),
        (["--eps", "2", "--eps-units", "1"], "must be a fraction"),
        (["--attacks", "fgsm", "--attack-option", "pgd.stepz=3"], "not in this run's attacks (fgsm)"),
        (["--attacks", "pgd", "--attack-option", "pgd.stepz=3"], "did you mean 'steps'?"),
        (["--attacks", "foo"], "unknown attack 'foo' (known:"),
    ],
)
def test_bad_run_input_exits_2_with_one_clear_line(args, message, tmp_path):
    res = runner.invoke(app, ["run", "--model", "ssim", "--store", str(tmp_path / "s.sqlite"), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    assert "; (" not in lines[0]  # no stray punctuation where no suggestion was found
    assert not (tmp_path / "s.sqlite").exists()  # refused before anything was written


def test_eps_units_1_converts_fractions():
    from robench.cli.run import parse_eps, parse_n

    assert parse_eps("0.03137254901960784", "1") == repr(0.03137254901960784 * 255)
    assert parse_eps("2,8", "255") == "2,8" and parse_n("all") == 0 and parse_n("32") == 32


def test_every_flag_shows_in_run_summary_and_is_accepted_by_check(capsys):
    """One flag registry (core.flags) for the run summary, the report and `check --fail-on-flag`:
    every code the engine can set is printed by `run` and accepted by `check`."""
    from robench.cli.run import print_summary
    from robench.core import flags as FL

    every = {
        "not_converged": True,
        "suspect_gradient_masking": True,
        "eot_required": True,
        "moves_target": False,
        "gain_monotone_in_eps": False,
        "iterative_ge_single_step": False,
        "bound_non_vacuous_fraction": 0.1,
        "untrained": True,
        "zero_grad": 3,
        "escalated": 1,
        "oom_halved": 1,
        "retried": 1,
        "scale": {"collapsed": True},
    }
    assert FL.active(every) == [c for c, _, _ in FL.FLAGS]  # the dict above sets every registered flag
    summary = {"eps": [8.0], "clean_srocc": 0.5, "attacked_srocc": [0.4], "mean_gain": [0.1], "mean_queries": [2.0]}
    print_summary(
        {
            "target": "t",
            "dataset": "d",
            "split": "test",
            "n": 8,
            "profile": "quick",
            "store": "s",
            "seconds": 1.0,
            "cells": [{"attack": "pgd", "status": "done", "summary": summary, "flags": every}],
        }
    )
    out = " ".join(capsys.readouterr().out.split())
    for code in FL.LEGEND:
        assert code in out, code
    res = runner.invoke(app, ["check", "--help"], env={"COLUMNS": "200"})
    assert all(code in " ".join(res.output.split()) for code in FL.LEGEND)


def test_run_shows_nc_for_an_unconverged_cell(tiny_mini, tmp_path):
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "ssim",
            "--attacks",
            "pgd",
            "--attack-option",
            "pgd.steps=2",
            "--eps",
            "8",
            "--n",
            "8",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--dataset-option",
            "size=32",
            "--dataset-option",
            "crops_per_source=1",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    from robench.engine.store import Store

    with Store(tmp_path / "s.sqlite") as st:
        flags = st.cells("done").iloc[0]["flags"]
    assert flags["not_converged"]  # 2 PGD steps gain more than 1 by > 5 %: stored as not converged …
    out = " ".join(res.output.split())
    assert "│ nc" in out and "[nc] not converged" in out  # … and shown, with its legend


def test_tables_written_to_a_pipe_keep_every_column():
    # rich assumes 80 columns off a terminal and squeezes a run summary's flags column away;
    # a pipe or file gets 160, and COLUMNS still decides when set
    piped = runner.invoke(app, ["ls", "attacks"], env={"COLUMNS": None})
    assert piped.exit_code == 0, piped.output
    assert max(len(line) for line in piped.output.splitlines()) == 160
    assert "suite" in piped.output  # the last column's header, whole
    narrow = runner.invoke(app, ["ls", "attacks"], env={"COLUMNS": "100"})
    assert max(len(line) for line in narrow.output.splitlines()) == 100
