"""Usage errors (a wrong value type, a missing argument, an unknown option or command) are one line
``error: <command path>: <click's message> (see '<command path> --help')`` on stderr, exit code 2;
help, ``--version``, a bare group's help, ``--debug`` and click's Exit / Abort keep their behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

import vividhead.cli as cli

USAGE_ROWS = [
    # (id, argv, words the one line must hold)
    ("serve_port_not_an_int", ["serve", "--port", "abc"], ["vividhead serve:", "--port", "'vividhead serve --help'"]),
    ("curate_without_inputs", ["curate"], ["vividhead curate:", "Missing argument", "'vividhead curate --help'"]),
    ("unknown_command", ["nosuch"], ["vividhead:", "No such command 'nosuch'", "'vividhead --help'"]),
    ("unknown_train_command", ["train", "nosuch"], ["vividhead train:", "'nosuch'", "'vividhead train --help'"]),
    ("unknown_eval_command", ["eval", "nosuch"], ["vividhead eval:", "'nosuch'", "'vividhead eval --help'"]),
    ("unknown_root_option", ["--bogus"], ["vividhead:", "--bogus", "'vividhead --help'"]),
    ("infer_unknown_option", ["infer", "--unknown-flag"], ["vividhead infer:", "--unknown-flag", "'vividhead infer --help'"]),
    ("eval_drift_window_not_a_float", ["eval", "drift", "v.mp4", "--reference", "r.png", "--window-s", "ten"],
     ["vividhead eval drift:", "--window-s", "'vividhead eval drift --help'"]),
    ("eval_split_num_clips_not_an_int", ["eval", "split", "--num-clips", "many"],
     ["vividhead eval split:", "--num-clips", "'vividhead eval split --help'"]),
    ("train_sft_option_without_value", ["train", "sft", "--config"],
     ["vividhead train sft:", "--config", "'vividhead train sft --help'"]),
    # A typer.BadParameter raised inside the command body (before any weights load).
    ("serve_negative_encode_workers", ["serve", "--image", "missing.png", "--encode-workers", "-1", "--device", "cpu",
                                       "--random-weights"], ["vividhead serve:", "--encode-workers", ">= 0"]),
]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vividhead ARGV`` run through :func:`vividhead.cli.main`."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _assert_one_line(err: str, words: list[str]) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    line = err.rstrip("\n")
    assert line.startswith("error: ") and line.strip() == line, repr(err)
    assert not any(ch in line for ch in "╭╮╰╯│─"), line
    assert all(word in line for word in words), line


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)


@pytest.mark.parametrize("row", USAGE_ROWS, ids=[r[0] for r in USAGE_ROWS])
def test_usage_error_is_one_line_exit_2(row, capsys):
    _, argv, words = row
    code, out, err = _run(argv, capsys)
    assert code == 2, err
    assert out == "", out
    _assert_one_line(err, words)


@pytest.mark.parametrize("argv, words", [
    (["serve", "--port", "abc"], ["vividhead serve:", "--port", "'vividhead serve --help'"]),
    (["train", "nosuch"], ["vividhead train:", "'nosuch'", "'vividhead train --help'"]),
])
def test_usage_error_through_the_real_script(argv, words):
    proc = subprocess.run([sys.executable, "-m", "vividhead", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "40", "VIVIDHEAD_DEBUG": "0"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "", proc.stdout
    _assert_one_line(proc.stderr, words)  # one line even at 40 columns: no wrapping


@pytest.mark.parametrize("module, argv, words", [
    ("vividhead.curation", ["in/", "--output", "out/", "--workers", "abc"],  # what `ray job submit` runs
     ["python -m vividhead.curation:", "--workers", "'python -m vividhead.curation --help'"]),
    ("vividhead.curation", ["--output", "out/"], ["python -m vividhead.curation:", "Missing argument"]),
    ("vividhead.datasets_card", ["--bogus"], ["python -m vividhead.datasets_card:", "--bogus"]),
], ids=["curation_unknown_option", "curation_without_inputs", "datasets_card_unknown_option"])
def test_module_entry_points_give_the_same_one_line(module, argv, words, capsys, monkeypatch):
    """``python -m vividhead.curation`` (the Ray job's entry) and ``python -m vividhead.datasets_card``
    end usage errors as ``vividhead`` does, not with Typer's boxed panel."""
    import importlib

    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)
    entry = {"vividhead.curation": ("vividhead.curation.cli", "curate_main"),
             "vividhead.datasets_card": ("vividhead.datasets_card.cli", "main")}[module]
    with pytest.raises(SystemExit) as info:
        getattr(importlib.import_module(entry[0]), entry[1])(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == "", captured
    _assert_one_line(captured.err, words)


def test_curation_module_entry_keeps_its_config_errors_one_line(tmp_path, video_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("asd: {precision: fp7}\n")
    proc = subprocess.run([sys.executable, "-m", "vividhead.curation", str(video_dir), "--output", str(tmp_path / "o"),
                           "--config", str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VIVIDHEAD_DEBUG": "0"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: asd.precision: must be one of ['auto', 'fp32', 'bf16'], got 'fp7'"], proc.stderr


def test_debug_keeps_clicks_full_usage_output(capsys, monkeypatch):
    code, _, err = _run(["--debug", "serve", "--port", "abc"], capsys)
    assert code == 2 and "Usage: vividhead serve" in err and "--port" in err and len(err.splitlines()) > 1, err
    monkeypatch.setenv("VIVIDHEAD_DEBUG", "1")
    code, _, err = _run(["nosuch"], capsys)
    assert code == 2 and "Usage: vividhead" in err and "nosuch" in err, err


def test_root_help_still_lists_the_commands(capsys):
    code, out, err = _run(["--help"], capsys)
    assert code == 0 and err == ""
    assert "Usage: vividhead" in out and all(name in out for name in ("curate", "infer", "serve", "train", "eval"))


def test_version_unchanged(capsys):
    code, out, err = _run(["--version"], capsys)
    assert code == 0 and out.startswith("vividhead ") and err == ""


@pytest.mark.parametrize("argv, names", [([], ["curate", "train", "eval"]), (["train"], ["sft", "distill"]),
                                         (["eval"], ["score", "drift"])])
def test_bare_group_still_prints_its_help(argv, names, capsys):
    """No arguments is help (click's exit code 2), on stdout, with no error line."""
    code, out, err = _run(argv, capsys)
    assert code == 2 and err == "", err
    assert "Usage: vividhead" in out and all(name in out for name in names), out


def _exit3() -> None:
    raise typer.Exit(3)


def _abort() -> None:
    raise typer.Abort()


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _ok() -> None:
    typer.echo("done")


@pytest.fixture
def app_with_exits(cli_with_commands):
    """The real app plus commands that end by typer.Exit, click.Abort, Ctrl-C, or return normally."""
    cli_with_commands(exit3=_exit3, abort=_abort, ctrl_c=_ctrl_c, ok=_ok)


def test_exit_abort_and_success_keep_their_codes(app_with_exits, capsys):
    assert _run(["exit3"], capsys)[0] == 3
    code, _, err = _run(["abort"], capsys)
    assert code == 1 and "Abort" in err and len(err.strip().splitlines()) == 1, err
    assert _run(["ctrl-c"], capsys)[0] == 130
    code, out, err = _run(["ok"], capsys)
    assert code in (0, None) and out == "done\n" and err == ""
