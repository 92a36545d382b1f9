"""A small registry of named model weights, resolved offline first.

Resolution order for a name: an explicit path (from the stage config), the folder named by
``VIVIDHEAD_WEIGHTS_DIR``, the local cache (``$VIVIDHEAD_CACHE`` or ``~/.cache/vividhead/weights``),
then a download from the official URL, checked against its SHA-256. Offline with none of these,
:func:`resolve` raises :class:`WeightsNotFound` naming the file and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class WeightSpec:
    """One registry entry.

    Attributes:
        name: registry name used in code and configs.
        filename: file name looked up in ``VIVIDHEAD_WEIGHTS_DIR`` and the cache.
        url: official download URL.
        sha256: expected SHA-256 of the file (hex), or None when the publisher gives none.
        licence: licence of the weights.
        source: paper or upstream project.
    """

    name: str
    filename: str
    url: str
    sha256: Optional[str]
    licence: str
    source: str


class WeightsNotFound(RuntimeError):
    """Weights are not available locally and could not be downloaded."""


REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"weights {spec.name!r} registered twice with different specs")
    REGISTRY[spec.name] = spec
    return spec


register(
    WeightSpec(
        name="face_mediapipe_detector",
        filename="face_mediapipe_detector.tflite",
        url="https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/1/blaze_face_short_range.tflite",
        # SHA-256 of the BlazeFace short-range model as shipped inside MediaPipe's
        # face_landmarker.task bundle (the file our fixtures carry).
        sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
        licence="Apache-2.0",
        source="MediaPipe BlazeFace short-range (google-ai-edge/mediapipe)",
    )
)


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
        explicit: a path given in the config; used as is when set.
        download: try the official URL when nothing is found locally.

    Raises:
        KeyError: unknown registry name.
        WeightsNotFound: no local copy, and the download failed or its checksum did not match.
    """
    spec = REGISTRY[name]
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
