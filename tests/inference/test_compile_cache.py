"""Compile artifacts (PyTorch Mega-Cache) in a file: written by one process after compiling with
Inductor, loaded by a fresh one; unreadable files are a warning, not an error."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS chain's variables for a local S3 endpoint (fake credentials)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="Inductor on the CPU needs a C compiler")
def test_artifacts_shared_through_s3_between_fresh_processes(tmp_path, monkeypatch):
    """One machine compiles and uploads; another, with empty compile caches, loads from the URL."""
    import fsspec

    sys.path.insert(0, str(Path(__file__).parents[1] / "curation"))
    from netutil import moto_server

    with moto_server() as endpoint:
        for name, value in _s3_env(endpoint).items():
            monkeypatch.setenv(name, value)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("vh-cache")
        url = "s3://vh-cache/deploy/flashhead.compile"
        written = int(_run(COMPILE_AND_SAVE, url, env_dir=tmp_path / "cache_a"))
        assert written > 0 and fs.size("vh-cache/deploy/flashhead.compile") == written
        assert _run(LOAD, url, env_dir=tmp_path / "cache_b") == "True"
        assert _run(LOAD, "s3://vh-cache/deploy/absent.compile", env_dir=tmp_path / "cache_c") == "False"


def test_unreachable_artifact_storage_loads_nothing_and_refuses_the_write(tmp_path, monkeypatch, caplog):
    """Storage that cannot be reached: the load is a one-line warning (compilation starts cold);
    the write raises OSError naming the URL (the CLI turns it into a warning)."""
    import s3fs
    import torch

    import vividhead.inference.compile_cache as cc

    sys.path.insert(0, str(Path(__file__).parents[1] / "curation"))
    from netutil import free_port

    for name, value in _s3_env(f"http://127.0.0.1:{free_port()}").items():  # nothing listens there
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    url = "s3://vh-cache/flashhead.compile"
    with caplog.at_level(logging.WARNING, logger="vividhead.inference.compile_cache"):
        assert cc.load_compile_artifacts(url) is False
    (record,) = [r for r in caplog.records if url in r.getMessage()]
    assert "not read" in record.getMessage() and "\n" not in record.getMessage()
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"compiled", None))
    with pytest.raises(OSError, match="s3://vh-cache/flashhead.compile"):
        cc.save_compile_artifacts(url)
    s3fs.S3FileSystem.clear_instance_cache()
