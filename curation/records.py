"""The row that flows through the pipeline (its columns: :data:`vividhead.shard_format.MANIFEST_SCHEMA`).

A row is a plain ``dict`` (a Ray Data row): one per input video until ``scene_split``, then one per
clip. It carries paths, metadata and, for clips, the encoded media as bytes (``video_bytes``:
H.264 MP4, ``audio_bytes``: 16 kHz mono WAV), never decoded frames. Every stage fills its own
columns; a rejected row keeps flowing (untouched) to the manifest with its ``stage`` and ``reason``.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from typing import Any, Optional

import pyarrow as pa

from vividhead.shard_format import KEPT, MANIFEST_SCHEMA, REJECTED, REQUIRED_MEMBERS

Row = dict[str, Any]

# Columns that hold media or routing state and never reach the manifest.
#: ``frame_size``: ``[width, height]`` of the source's decoded (display-rotated) frames, from the face stage.
TRANSIENT = ("video_bytes", "audio_bytes", "local_path", "rows_of_input", "extra_members", "frame_size")


def new_row(**values: Any) -> Row:
    """A row with every manifest column set to ``None`` except ``values``; status starts ``kept``."""
    row: Row = {name: None for name in MANIFEST_SCHEMA.names}
    row.update({name: None for name in TRANSIENT})
    row["status"] = KEPT
    row["timings"] = "{}"
    row["rows_of_input"] = 1
    row.update(values)
    return row


def reject(row: Row, stage: str, reason: str, detail: Optional[str] = None) -> Row:
    """Mark ``row`` rejected by ``stage`` with a short reason code; drops its media bytes."""
    row["status"] = REJECTED
    row["stage"] = stage
    row["reason"] = reason
    row["detail"] = (detail or "")[:500] or None
    row["video_bytes"] = None
    row["audio_bytes"] = None
    row["extra_members"] = None
    return row


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str, max_len: int = 80) -> str:
    """A WebDataset- and filesystem-safe key for an untrusted id.

    Keeps ``[A-Za-z0-9_-]``; anything else (dots, slashes, quotes, newlines, ``;``) becomes ``_``.
    When the id had to change, an 8-hex-digit hash of the original is appended so that distinct ids
    never collide. Never empty, never starts with ``-`` or ``.``.
    """
    cleaned = _UNSAFE.sub("_", text).strip("_")[:max_len]
    if cleaned != text or not cleaned:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}_{digest}" if cleaned else f"id_{digest}"
    if cleaned.startswith("-"):
        cleaned = "id" + cleaned
    return cleaned


def clip_id_for(source_id: str, clip_index: int) -> str:
    """Clip id (also the WebDataset key): ``<safe source id>-<index:04d>``."""
    return f"{safe_key(source_id)}-{clip_index:04d}"


def manifest_table(rows: list[Row]) -> pa.Table:
    """Rows -> Arrow table with exactly :data:`MANIFEST_SCHEMA` (missing columns are null)."""
    columns = {name: [r.get(name) for r in rows] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def add_member(row: Row, ext: str, data: bytes) -> None:
    """Attach an extra sample member ``<key>.<ext>`` (e.g. ``wav2vec.npy``) to a clip row.

    Members travel as one bytes column (an in-memory tar: no pickling, fixed Arrow type) and are
    written into the shard by the ``write`` stage.

    Raises:
        ValueError: ``ext`` is not made of ``[A-Za-z0-9_.-]`` or is a member the writer fills itself
            (:data:`vividhead.shard_format.REQUIRED_MEMBERS`: mp4/wav/json).
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", ext) or ext in REQUIRED_MEMBERS:
        raise ValueError(f"invalid sample member extension {ext!r}")
    members = members_of(row)
    members[ext] = bytes(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    row["extra_members"] = buf.getvalue()


def members_of(row: Row) -> dict[str, bytes]:
    """The extra members attached with :func:`add_member`, as ``{ext: bytes}``."""
    packed = row.get("extra_members")
    if not packed:
        return {}
    with tarfile.open(fileobj=io.BytesIO(bytes(packed)), mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def note_annotation_error(row: Row, annotator: str, reason: str) -> None:
    """Record that ``annotator`` failed on a kept clip: ``annotation_errors[annotator] = reason``.

    Annotations never reject a clip; the annotation stays null and the reason lands in the
    manifest column ``annotation_errors`` (a JSON object, null when nothing failed).
    """
    import json

    errors = json.loads(row.get("annotation_errors") or "{}")
    errors[annotator] = reason[:200]
    row["annotation_errors"] = json.dumps(errors, sort_keys=True)
