"""torch.compile artifacts in one portable file, so a fresh machine starts with filled compile caches.

The fast path compiles the DiT and the VAE coders on first use of each shape: on an H200, Pro's
warm-up took 89.9 s on a fresh machine and 17.8 s on a restart that found the compile caches of an
earlier run (docs/benchmarks.md). The caches live on the machine's disk
(``TORCHINDUCTOR_CACHE_DIR``); a new machine of an autoscaling group has none. PyTorch's "Mega-Cache"
(``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``, PyTorch >= 2.7) packs the
Inductor FX-graph, AOT-autograd, Triton and autotuning caches of everything compiled in this process
into bytes that can be loaded elsewhere before compiling: this module stores them in a file.

A file from another PyTorch, Triton or GPU model does not match the cache keys and is simply not
used (compilation happens as without it).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_compile_artifacts(path: str | Path) -> bool:
    """Load a file written by :func:`save_compile_artifacts` into this process's compile caches;
    call before the first compiled call.

    Returns:
        True when artifacts were loaded; False when the file does not exist or cannot be read or
        loaded (a one-line warning; compilation then starts cold, nothing else changes).
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
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
    atomically (a temporary file in the same folder, then a rename).

    Returns:
        Bytes written; 0 when nothing was compiled (no file is written then).

    Raises:
        OSError: the folder cannot be created or written.
    """
    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        return 0
    data = saved[0]
    path = Path(path)
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
