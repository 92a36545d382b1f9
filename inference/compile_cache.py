"""torch.compile artifacts in one portable file, so a fresh machine starts with filled compile caches.

The fast path compiles the DiT and the VAE coders on first use of each shape: on an H200, Pro's
warm-up took 89.9 s on a fresh machine and 17.8 s on a restart that found the compile caches of an
earlier run (docs/benchmarks.md). The caches live on the machine's disk
(``TORCHINDUCTOR_CACHE_DIR``); a new machine of an autoscaling group has none. PyTorch's "Mega-Cache"
(``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``, PyTorch >= 2.7) packs the
Inductor FX-graph, AOT-autograd, Triton and autotuning caches of everything compiled in this process
into bytes that can be loaded elsewhere before compiling: this module stores them in a file.

A file from another PyTorch, Triton or GPU model does not match the cache keys and is simply not
used (compilation happens as without it). The file may be a local path or an fsspec URL
(``s3://bucket/flashhead-lite.compile``), so the machines of an autoscaling group can share one;
credentials and endpoints come from fsspec's and botocore's standard configuration.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def _url_of(path: str | Path) -> str | None:
    """``path`` when it is a URL with a scheme (``s3://...``), else None (a local path)."""
    text = str(path)
    return text if "://" in text and not text.startswith("file://") else None


def _read(path: str | Path) -> bytes | None:
    """The file's bytes, None when it does not exist. Raises OSError (or fsspec's errors) otherwise."""
    url = _url_of(path)
    if url is None:
        local = Path(str(path).removeprefix("file://"))
        return local.read_bytes() if local.is_file() else None
    import fsspec

    fs, key = fsspec.core.url_to_fs(url)
    try:  # not fs.exists(): s3fs answers False for storage it cannot reach
        return fs.cat_file(key)
    except FileNotFoundError:
        return None


def load_compile_artifacts(path: str | Path) -> bool:
    """Load a file written by :func:`save_compile_artifacts` into this process's compile caches;
    call before the first compiled call.

    Args:
        path: a local path or an fsspec URL.

    Returns:
        True when artifacts were loaded; False when the file does not exist or cannot be read
        (storage unreachable, no permission) or loaded (a one-line warning; compilation then
        starts cold, nothing else changes).
    """
    try:
        data = _read(path)
    except Exception as exc:  # unreachable storage must not stop the server: it compiles cold
        logger.warning("compile artifacts %s not read: %s: %s", path, type(exc).__name__, str(exc)[:200])
        return False
    if data is None:
        return False
    try:
        info = torch.compiler.load_cache_artifacts(data)
    except Exception as exc:  # a truncated or foreign file must not stop the server
        logger.warning("compile artifacts %s not loaded: %s: %s", path, type(exc).__name__, str(exc)[:200])
        return False
    if info is None:  # torch logged why (e.g. a checksum mismatch of a truncated file)
        logger.warning("compile artifacts %s not loaded: not a readable artifact file", path)
        return False
    logger.info("compile artifacts loaded from %s: %s", path,
                {k: len(v) for k, v in getattr(info, "artifacts", {}).items()})
    return True


def save_compile_artifacts(path: str | Path) -> int:
    """Write the compile caches of everything compiled in this process so far to ``path``,
    atomically: locally a temporary file in the same folder, then a rename; on an object store
    (an fsspec URL) one upload, which appears only once complete.

    Returns:
        Bytes written; 0 when nothing was compiled (no file is written then).

    Raises:
        OSError: the folder cannot be created or written, or the storage refuses or cannot be
            reached (fsspec's errors for a URL are raised as OSError with the URL).
    """
    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        return 0
    data = saved[0]
    url = _url_of(path)
    if url is not None:
        import fsspec

        try:
            fs, key = fsspec.core.url_to_fs(url)
            fs.pipe_file(key, data)
        except OSError:
            raise
        except Exception as exc:  # botocore / aiohttp errors are not OSError
            raise OSError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        logger.info("compile artifacts: %d bytes written to %s", len(data), url)
        return len(data)
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("compile artifacts: %d bytes written to %s", len(data), path)
    return len(data)


__all__ = ["load_compile_artifacts", "save_compile_artifacts"]
