"""The ``vividhead`` entry point: ``--version``, one-line expected errors, ``--debug`` tracebacks."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import vividhead.cli as cli
from vividhead.errors import UserError


def _user_error() -> None:
    raise UserError("data/shards: no shards here\nrun `vividhead curate` first")


def _bug() -> None:
    raise RuntimeError("an unexpected bug")


@pytest.fixture
def app_with_failures(cli_with_commands, monkeypatch):
    """The real app plus ``user-error`` (raises a two-line UserError) and ``bug`` (a RuntimeError)."""
    cli_with_commands(user_error=_user_error, bug=_bug)
    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


def test_version_prints_package_metadata(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vividhead {version('vividhead')}"


def test_user_error_is_one_line_exit_2(app_with_failures, capsys):
    assert _exit_code(["user-error"]) == 2
    err = capsys.readouterr().err
    assert err == "error: data/shards: no shards here; run `vividhead curate` first\n"


def test_debug_flag_and_env_show_the_traceback(app_with_failures, monkeypatch):
    with pytest.raises(UserError, match="no shards here"):
        cli.main(["--debug", "user-error"])
    monkeypatch.setenv("VIVIDHEAD_DEBUG", "1")
    with pytest.raises(UserError, match="no shards here"):
        cli.main(["user-error"])
    monkeypatch.setenv("VIVIDHEAD_DEBUG", "0")
    assert _exit_code(["user-error"]) == 2


def test_unexpected_exception_keeps_its_traceback(app_with_failures):
    with pytest.raises(RuntimeError, match="an unexpected bug"):
        cli.main(["bug"])


def test_config_error_through_the_real_script(tmp_path):
    """A real command and process: a missing config is one line on stderr and exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "vividhead", "train", "sft", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.yaml" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["serve"], ["infer"], ["eval", "rollout"], ["train", "rollout"]])
def test_help_texts_are_whole_at_80_columns(command, monkeypatch):
    """At 80 columns no option's help text is cut with an ellipsis (long paths, Hub ids and API
    names stay out of the narrow help column; fidelity flags state their default in words).
    The option-name column may still shorten the longest flag pairs: that is Typer's table."""
    from typer.testing import CliRunner

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERMINAL_WIDTH", "80")
    text = CliRunner().invoke(cli.build_app(), [*command, "--help"], terminal_width=80).output
    lines = text.splitlines()
    start = next(line.index("Show this message") for line in lines if "Show this message" in line)
    cut = [line for line in lines if "…" in line[start:]]
    assert not cut, "\n".join(cut)
    assert len(max(lines, key=len)) <= 80


def test_every_command_summary_is_one_sentence_on_one_line():
    """A command's summary (the first paragraph of its docstring, which the group's command list
    shows) is one line ending in a period, so no list breaks it mid-sentence."""
    import typer.main

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield (*path, name), sub
            yield from walk(sub, (*path, name))

    bad = []
    for path, cmd in walk(typer.main.get_command(cli.build_app()), ()):
        first = (cmd.help or "").strip().split("\n\n")[0]
        if getattr(cmd, "commands", None) is None and ("\n" in first or not first.endswith(".")):
            bad.append(f"{' '.join(path)}: {first!r}")
    assert not bad, "\n".join(bad)


CACHE_LATENTS_ROWS = [
    # (id, extra argv, words the one line must hold)
    ("windows_per_clip_zero", ["--windows-per-clip", "0"], ["--windows-per-clip 0", ">= 1"]),
    ("windows_per_clip_negative", ["--windows-per-clip", "-1"], ["--windows-per-clip -1", ">= 1"]),
    ("samples_per_shard_zero", ["--samples-per-shard", "0"], ["--samples-per-shard 0", ">= 1"]),
    ("out_is_a_file", ["--out", "{notes}"], ["--out", "notes.txt", "is a file"]),
]


@pytest.mark.parametrize("row", CACHE_LATENTS_ROWS, ids=[r[0] for r in CACHE_LATENTS_ROWS])
def test_cache_latents_bad_option_is_one_line_before_the_config(row, tmp_path, monkeypatch, capsys):
    """``train cache-latents`` refuses a bad option value before it reads the config or builds an encoder."""
    from pathlib import Path

    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    config = Path(__file__).resolve().parents[1] / "examples" / "sft_tiny_cpu.yaml"
    _, extra, words = row
    extra = [x.format(notes=notes) for x in extra]
    argv = ["train", "cache-latents", "--config", str(config), *extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "cache")]
    assert _exit_code(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert notes.read_text() == "not a folder\n" and not (tmp_path / "cache").exists()
