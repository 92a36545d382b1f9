"""Publish a curation output (shards, manifest, stats, card) to a Hugging Face Hub dataset repo.

The upload is ``HfApi.upload_folder`` with a fixed allow-list. With ``hf_xet`` installed (the
default) huggingface_hub streams it in several commits and an interrupted upload resumes by
re-running the same command (already-committed files are skipped, uploaded chunks deduplicated).
The token comes from the standard chain (``HF_TOKEN``, then the ``hf auth login`` cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from vividhead.shard_format import MANIFEST_FILE, SHARD_DIR, SHARD_GLOB, STATS_FILE

#: Files of a curation output that are published, relative to OUT (fnmatch patterns).
ALLOW_PATTERNS = ("README.md", MANIFEST_FILE, STATS_FILE, "card/*.png", SHARD_GLOB)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class UploadItem:
    """One file to upload.

    Attributes:
        local_path: absolute path on disk.
        path_in_repo: path in the dataset repo (POSIX).
        size: bytes.
    """

    local_path: Path
    path_in_repo: str
    size: int


def plan_upload(out: str | Path) -> list[UploadItem]:
    """List exactly the files ``publish`` uploads, in upload order (sorted like huggingface_hub does).

    Args:
        out: curation output directory.

    Returns:
        The files matching :data:`ALLOW_PATTERNS`.

    Raises:
        FileNotFoundError: if README.md (run ``vividhead card OUT`` first), manifest.parquet or
            every shard is missing.
    """
    out = Path(out).expanduser().resolve()
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a directory")
    files = {p.relative_to(out).as_posix(): p for p in sorted(out.glob("**/*")) if p.is_file()}
    chosen = list(filter_repo_objects(files.keys(), allow_patterns=list(ALLOW_PATTERNS)))
    if "README.md" not in chosen:
        raise FileNotFoundError(f"{out}/README.md is missing: run `vividhead card {out}` first")
    if MANIFEST_FILE not in chosen:
        raise FileNotFoundError(f"{out}/{MANIFEST_FILE} is missing")
    if not any(c.startswith(f"{SHARD_DIR}/") for c in chosen):
        raise FileNotFoundError(f"no shards under {out}/{SHARD_DIR}")
    return [UploadItem(files[c], c, files[c].stat().st_size) for c in chosen]


def publish(
    out: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    api: HfApi | Any | None = None,
    commit_message: str = "Publish vividhead dataset",
) -> list[UploadItem]:
    """Create the dataset repo if needed and upload the curation output.

    Operations (nothing when ``dry_run``):
    1. ``api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)``
       (an existing repo keeps its visibility);
    2. ``api.upload_folder(repo_id=repo_id, folder_path=OUT, repo_type="dataset",
       allow_patterns=list(ALLOW_PATTERNS), commit_message=...)``.

    Args:
        out: curation output directory (with README.md from ``vividhead card``).
        repo_id: "ORG/NAME".
        private: create the repo private.
        dry_run: only plan.
        api: an ``HfApi`` (default: a new one, token from the standard chain).
        commit_message: first line of the upload commits.

    Returns:
        The uploaded (or, for a dry run, planned) files.

    Raises:
        ValueError: malformed ``repo_id``.
        FileNotFoundError: see :func:`plan_upload`.
        huggingface_hub.errors.HfHubHTTPError: Hub errors (no token, no permission, ...).
    """
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo id must look like ORG/NAME, got {repo_id!r}")
    items = plan_upload(out)
    if dry_run:
        return items
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(Path(out).expanduser().resolve()),
        repo_type="dataset",
        allow_patterns=list(ALLOW_PATTERNS),
        commit_message=commit_message,
    )
    return items


def hub_url(repo_id: str, path_in_repo: str = "") -> str:
    """``hf://datasets/{repo_id}/{path}``: the fsspec URL of a file in the dataset repo."""
    return f"hf://datasets/{repo_id}/{path_in_repo}".rstrip("/")
