"""The row that flows through the pipeline, and the manifest schema.

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

KEPT = "kept"
REJECTED = "rejected"

Row = dict[str, Any]

# Columns of the manifest, with Arrow types. Stages of later issues add theirs here so that every
# row has every column (null when the stage did not run).
MANIFEST_SCHEMA = pa.schema(
    [
        ("input_id", pa.string()),
        ("source_id", pa.string()),
        ("url", pa.string()),
        ("md5", pa.string()),
        ("clip_id", pa.string()),
        ("clip_index", pa.int32()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("num_frames", pa.int32()),
        ("source_duration_s", pa.float64()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("source_fps", pa.float64()),
        ("crop_box", pa.list_(pa.int32())),
        ("face_px", pa.float64()),
        ("face_score", pa.float64()),
        ("num_faces", pa.int32()),
        ("pad_px", pa.int32()),
        ("audio_peak_dbfs", pa.float64()),
        ("missing_face_share", pa.float64()),
        ("transition_score", pa.float64()),
        ("transition_frame", pa.int32()),
        ("lse_c", pa.float64()),
        ("lse_d", pa.float64()),
        ("av_offset_frames", pa.int32()),
        ("asd_score", pa.float64()),
        ("speech_share", pa.float64()),
        ("hand_over_face_share", pa.float64()),
        ("language", pa.string()),
        ("gender", pa.string()),
        ("age_band", pa.string()),
        ("ethnicity", pa.string()),
        # Share of frames in which FaceLandmarker found a face (face_mask stage).
        ("face_mask_share", pa.float64()),
        # JSON object {annotator: reason code} for annotations that failed on a kept clip
        # (``face_mask``, ``audio_features``, ``language``, ``gender``, ``age``, ``ethnicity``).
        ("annotation_errors", pa.string()),
        ("shard", pa.int32()),
        ("key", pa.string()),
        ("timings", pa.string()),
    ]
)

# Columns that hold media or routing state and never reach the manifest.
TRANSIENT = ("video_bytes", "audio_bytes", "local_path", "rows_of_input", "extra_members")

# Manifest columns copied into each sample's ``.json``.
SAMPLE_JSON_EXCLUDE = ("status", "stage", "reason", "detail", "duplicate_of", "timings")


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
        ValueError: ``ext`` is not made of ``[A-Za-z0-9_.-]`` or is a reserved member (mp4/wav/json).
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", ext) or ext in ("mp4", "wav", "json"):
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
