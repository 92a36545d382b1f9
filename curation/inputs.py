"""Turn command-line INPUT arguments into input rows.

An INPUT is a media file, a directory (searched recursively for videos), a glob, a URL
(``file://``, ``s3://``, ``http(s)://``), or a URL list (``.csv``, ``.jsonl``, ``.parquet``) with a
``url`` column and optional ``source_id``, ``start_s``, ``end_s`` (``start``/``end`` also accepted).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional
from urllib.parse import urlparse

import fsspec
import pyarrow.parquet as pq

from vividhead.curation.media import is_remote
from vividhead.curation.records import Row, new_row
from vividhead.curation.storage import options_for

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
LIST_EXTENSIONS = (".csv", ".jsonl", ".parquet")


class InputError(ValueError):
    """An INPUT argument or URL list cannot be used (one-line message)."""


def source_id_from_url(url: str) -> str:
    """Default source id: the file name without extension (``.../abc123.mp4`` -> ``abc123``)."""
    path = urlparse(url).path if "://" in url else url
    stem = PurePosixPath(path).stem
    return stem or hashlib.sha1(url.encode()).hexdigest()[:12]


def _float_or_none(value, field: str, where: str) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {field} must be a number, got {value!r}") from exc


def read_url_list(path: str, storage_options: Optional[dict] = None) -> list[dict]:
    """Records of a URL list file (local or remote).

    Returns:
        ``[{"url", "source_id", "start_s", "end_s"}, ...]`` with missing fields as None.

    Raises:
        InputError: unreadable file, no ``url`` column, a non-numeric time.
    """
    suffix = Path(urlparse(path).path if "://" in path else path).suffix.lower()
    try:
        with fsspec.open(path, "rb", **options_for(path, storage_options)) as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read URL list ({exc})") from exc
    if suffix == ".parquet":
        records = pq.read_table(io.BytesIO(data)).to_pylist()
    elif suffix == ".jsonl":
        records = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc
    else:
        records = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    out = []
    for n, rec in enumerate(records, 1):
        if "url" not in rec:
            raise InputError(f"{path}: row {n} has no 'url' column")
        where = f"{path} row {n}"
        out.append(
            {
                "url": str(rec["url"] or "").strip(),
                "source_id": (str(rec["source_id"]).strip() or None) if rec.get("source_id") not in (None, "") else None,
                "start_s": _float_or_none(rec.get("start_s", rec.get("start")), "start_s", where),
                "end_s": _float_or_none(rec.get("end_s", rec.get("end")), "end_s", where),
            }
        )
    return out


def _expand_one(arg: str, storage_options: Optional[dict]) -> list[dict]:
    lower = arg.lower().split("?")[0]
    if lower.endswith(LIST_EXTENSIONS):
        return read_url_list(arg, storage_options)
    if is_remote(arg):
        if any(c in arg for c in "*?[") or arg.endswith("/"):
            fs, root = fsspec.core.url_to_fs(arg, **options_for(arg, storage_options))
            paths = fs.glob(root) if any(c in root for c in "*?[") else fs.find(root)
            proto = arg.split("://", 1)[0]
            return [{"url": f"{proto}://{p}"} for p in sorted(paths) if p.lower().endswith(VIDEO_EXTENSIONS)]
        return [{"url": arg}]
    local = arg[len("file://") :] if arg.startswith("file://") else arg
    if os.path.isdir(local):
        found = []
        for root, _, files in os.walk(local):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
        return [{"url": os.path.abspath(p)} for p in sorted(found)]
    if any(c in local for c in "*?["):
        return [{"url": os.path.abspath(p)} for p in sorted(glob.glob(local, recursive=True)) if os.path.isfile(p)]
    return [{"url": os.path.abspath(local)}]  # a missing file still gets a row (rejected not_found)


def expand_inputs(args: Iterable[str], storage_options: Optional[dict] = None) -> list[Row]:
    """Expand INPUT arguments into pipeline rows, in argument order.

    Each row has ``input_id`` (stable: a hash of url, times and occurrence), ``url``,
    ``source_id`` (given or :func:`source_id_from_url`), ``start_s``, ``end_s``.

    Raises:
        InputError: a URL list cannot be read or parsed.
    """
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for arg in args:
        for rec in _expand_one(arg, storage_options):
            url = rec["url"]
            base = f"{url}|{rec.get('start_s')}|{rec.get('end_s')}"
            seen[base] = seen.get(base, 0) + 1
            input_id = hashlib.sha1(f"{base}|{seen[base]}".encode()).hexdigest()[:16]
            rows.append(
                new_row(
                    input_id=input_id,
                    url=url,
                    source_id=rec.get("source_id") or source_id_from_url(url),
                    start_s=rec.get("start_s"),
                    end_s=rec.get("end_s"),
                )
            )
    return rows
