"""Output storage through fsspec: local folders and ``s3://`` (or any fsspec URL) alike.

Writes are atomic: locally a temp file in the same folder is renamed into place; on object stores
the object only appears once its upload completes (a single PUT or a completed multipart upload).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Storage:
    """A root folder (``/data/out`` or ``s3://bucket/prefix``) with atomic writes.

    Args:
        root: local path or fsspec URL.
        storage_options: passed to ``fsspec.core.url_to_fs`` (e.g. S3 ``client_kwargs``).

    Raises:
        OSError: the root cannot be created (permission, read-only file system, ...).
    """

    def __init__(self, root: str, storage_options: Optional[dict] = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.url = root
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, rel: str) -> str:
        """Full path of ``rel`` under the root."""
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def list(self, rel_dir: str) -> list[str]:
        """File names (not paths) directly under ``rel_dir``; empty when it does not exist."""
        try:
            return sorted(Path(p).name for p in self.fs.ls(self.path(rel_dir), detail=False))
        except FileNotFoundError:
            return []

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel))

    def put_file(self, local: str | Path, rel: str) -> None:
        """Move a finished local file to ``rel`` atomically (rename locally, upload remotely)."""
        dest = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.chmod(local, 0o644)  # mkstemp creates 0600
            os.replace(local, dest)
        else:
            self.fs.put_file(str(local), dest)
            os.unlink(local)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically."""
        fd, tmp = self.local_temp(rel)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.put_file(tmp, rel)

    def local_temp(self, rel: str) -> tuple[int, str]:
        """A temp file for building ``rel``: next to it locally (same file system, so the rename is
        atomic), in the system temp folder for remote roots. Returns ``(fd, path)``."""
        if self.is_local:
            folder = os.path.dirname(self.path(rel))
            os.makedirs(folder, exist_ok=True)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=Path(rel).suffix)
        return tempfile.mkstemp(prefix="vividhead-", suffix=Path(rel).suffix)

    def clean_temps(self, rel_dir: str) -> None:
        """Remove temp files left by a killed run under ``rel_dir`` (local roots only)."""
        if self.is_local:
            for name in self.list(rel_dir):
                if name.startswith(".tmp-"):
                    self.fs.rm(self.path(f"{rel_dir}/{name}"))
