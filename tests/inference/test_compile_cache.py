"""Compile artifacts (PyTorch Mega-Cache) in a file: written by one process after compiling with
Inductor, loaded by a fresh one; unreadable files are a warning, not an error."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from vividhead.inference.compile_cache import load_compile_artifacts

COMPILE_AND_SAVE = textwrap.dedent("""
    import sys, torch
    from vividhead.inference.compile_cache import save_compile_artifacts
    f = torch.compile(lambda x: torch.nn.functional.gelu(x @ x.T) + 1)
    f(torch.randn(8, 8))
    print(save_compile_artifacts(sys.argv[1]))
""")

LOAD = textwrap.dedent("""
    import sys, torch
    from vividhead.inference.compile_cache import load_compile_artifacts
    print(load_compile_artifacts(sys.argv[1]))
""")


def _run(code: str, *args: str, env_dir) -> str:
    """Run ``code`` in a fresh Python with its own Inductor cache folder; its last stdout line."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(env_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="Inductor on the CPU needs a C compiler")
def test_artifacts_written_after_compiling_load_in_a_fresh_process(tmp_path):
    path = tmp_path / "deploy" / "flashhead.compile"
    written = int(_run(COMPILE_AND_SAVE, str(path), env_dir=tmp_path / "cache_a"))
    assert written > 0 and path.stat().st_size == written
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # another machine: an empty Inductor cache folder
    assert _run(LOAD, str(path), env_dir=tmp_path / "cache_b") == "True"


def test_missing_or_unreadable_artifacts_are_not_an_error(tmp_path, caplog):
    assert load_compile_artifacts(tmp_path / "absent.compile") is False
    bad = tmp_path / "truncated.compile"
    bad.write_bytes(b"\x80\x04not a cache")
    with caplog.at_level(logging.WARNING, logger="vividhead.inference.compile_cache"):
        assert load_compile_artifacts(bad) is False
    assert "not loaded" in caplog.text and str(bad) in caplog.text


def test_cli_writes_artifacts_only_on_the_gpu_fast_path(tmp_path, monkeypatch, capsys):
    import types

    import torch

    import vividhead.inference.compile_cache as cc
    from vividhead.inference.cli import ModelOptions

    written = []
    monkeypatch.setattr(cc, "save_compile_artifacts", lambda p: written.append(p) or 1)
    path = tmp_path / "a.compile"
    cuda, cpu = (types.SimpleNamespace(device=torch.device(d)) for d in ("cuda", "cpu"))
    ModelOptions(compile_artifacts=path).save_compile_artifacts(cpu)  # CPU: nothing compiled by the fast path
    ModelOptions(compile_artifacts=path, fast_path=False).save_compile_artifacts(cuda)  # --no-fast-path
    ModelOptions().save_compile_artifacts(cuda)  # no --compile-artifacts
    assert written == []
    ModelOptions(compile_artifacts=path).save_compile_artifacts(cuda)
    assert written == [path]

    def fail(p):
        raise PermissionError(13, "read-only file system", str(p))

    monkeypatch.setattr(cc, "save_compile_artifacts", fail)
    ModelOptions(compile_artifacts=path).save_compile_artifacts(cuda)  # a warning, not an error
    assert "--compile-artifacts not written" in capsys.readouterr().err
