"""A small registry of named model weights, resolved offline first.

The entries are a table, ``weights.yaml`` beside this module (name, file, URL, SHA-256, licence,
source; Hub revision), registered at import.

Resolution order for a name: an explicit path (from the stage config), the folder named by
``VIVIDHEAD_WEIGHTS_DIR``, the local cache (``$VIVIDHEAD_CACHE`` or ``~/.cache/vividhead/weights``),
then a download from the official URL, checked against its SHA-256. Hugging Face Hub entries
(``hf://``) also look in the local Hugging Face cache, at their pinned ``revision``, before the Hub.
``VIVIDHEAD_OFFLINE=1`` (or ``download=False``) stops every download, the Hub's included
(``local_files_only=True``; ``HF_HUB_OFFLINE`` need not be set as well). Offline with none of these,
:func:`resolve` raises :class:`WeightsNotFound` naming the file and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

log = logging.getLogger("vividhead.weights")


@dataclass(frozen=True)
class WeightSpec:
    """One registry entry (a row of ``weights.yaml``).

    Attributes:
        name: registry name used in code and configs.
        filename: file name looked up in ``VIVIDHEAD_WEIGHTS_DIR`` and the cache.
        url: official download URL.
        sha256: expected SHA-256 of the file (hex), or None when the publisher gives none.
        licence: licence of the weights.
        source: paper or upstream project.
        revision: for ``hf://`` entries, the Hub commit (40 hex digits) or tag that is downloaded
            and looked up in the local Hugging Face cache; ``None`` only where no commit could be
            checked (the Hub's ``main`` then, with a warning).
    """

    name: str
    filename: str
    url: str
    sha256: Optional[str]
    licence: str
    source: str
    revision: Optional[str] = None


class WeightsNotFound(RuntimeError):
    """Weights are not available locally and could not be downloaded."""


REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"weights {spec.name!r} registered twice with different specs")
    REGISTRY[spec.name] = spec
    return spec


#: The entries, one per name (``weights.yaml`` beside this module: a table, with where each value
#: comes from in comments).
TABLE = Path(__file__).with_name("weights.yaml")


def _load_table(path: Path) -> None:
    """Register every entry of ``path`` (``name: {filename, url, sha256, [revision], licence, source}``)."""
    for name, fields in yaml.safe_load(path.read_text()).items():
        register(WeightSpec(name=name, **fields))


_load_table(TABLE)

def offline() -> bool:
    """True when ``VIVIDHEAD_OFFLINE`` is set to anything but ``0`` or empty: no download of any kind."""
    return os.environ.get("VIVIDHEAD_OFFLINE", "0") not in ("", "0")


def _resolve_hub(spec: WeightSpec, explicit: Optional[str], download: bool) -> Path:
    """Folder of a ``hf://`` entry: explicit folder, weights dir, cache, local HF cache, then the Hub
    (only when ``download``), the last two at ``spec.revision``."""
    repo_id = spec.url[len("hf://") :]
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise WeightsNotFound(f"{spec.filename}: configured folder {path} does not exist")
        return path
    for root in ([Path(os.environ["VIVIDHEAD_WEIGHTS_DIR"])] if os.environ.get("VIVIDHEAD_WEIGHTS_DIR") else []) + [cache_dir()]:
        if (root / spec.filename / "config.json").is_file():
            return root / spec.filename
    where = (
        f"put the Hugging Face folder {spec.filename}/ (from {repo_id}) in $VIVIDHEAD_WEIGHTS_DIR "
        f"(now {os.environ.get('VIVIDHEAD_WEIGHTS_DIR') or 'unset'}) or {cache_dir()}, "
        f"or set the stage's *weights_path* to a local folder"
    )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=spec.revision, local_files_only=True))
    except Exception:
        if not download:
            raise WeightsNotFound(f"{spec.filename} not found offline: {where}") from None
    if spec.revision is None:
        log.warning("%s: no pinned revision in the registry, downloading the Hub's current main", repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=spec.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:
        raise WeightsNotFound(f"{spec.filename} not found and download failed ({type(exc).__name__}): {where}") from exc


def cache_dir() -> Path:
    """The weights cache folder."""
    root = os.environ.get("VIVIDHEAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vividhead")
    return Path(root) / "weights"


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str, explicit: Optional[str] = None, download: bool = True, timeout_s: float = 60.0) -> Path:
    """Local path of the weights ``name``.

    Args:
        name: registry name.
        explicit: a path given in the config; used as is when set (a folder for ``hf://`` entries,
            whose lookup goes weights dir, cache, local Hugging Face cache, then the Hub).
        download: try the official URL (or the Hub) when nothing is found locally (never when
            ``VIVIDHEAD_OFFLINE=1``, see :func:`offline`).

    Raises:
        KeyError: unknown registry name.
        WeightsNotFound: no local copy, and the download failed or its checksum did not match.
    """
    spec = REGISTRY[name]
    download = download and not offline()
    if spec.url.startswith("hf://"):
        return _resolve_hub(spec, explicit, download)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"{spec.filename}: configured path {path} does not exist")
        return path
    candidates = []
    if os.environ.get("VIVIDHEAD_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["VIVIDHEAD_WEIGHTS_DIR"]) / spec.filename)
    candidates.append(cache_dir() / spec.filename)
    for path in candidates:
        if path.is_file():
            return path
    where = (
        f"put {spec.filename} in $VIVIDHEAD_WEIGHTS_DIR (now {os.environ.get('VIVIDHEAD_WEIGHTS_DIR') or 'unset'}) "
        f"or {cache_dir()}, or set weights_path in the stage config; official URL: {spec.url}"
    )
    if not download:
        raise WeightsNotFound(f"{spec.filename} not found offline: {where}")
    dest = cache_dir() / spec.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if spec.sha256 and sha256_of(tmp) != spec.sha256:
            raise WeightsNotFound(f"{spec.filename}: checksum mismatch for {spec.url}; {where}")
        os.replace(tmp, dest)
    except WeightsNotFound:
        raise
    except Exception as exc:
        raise WeightsNotFound(f"{spec.filename} not found and download failed ({type(exc).__name__}): {where}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
