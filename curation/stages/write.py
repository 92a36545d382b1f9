"""write: kept clips into WebDataset shards, every row into the Parquet manifest, resumably.

The layout under ``OUT``, the sample members and the manifest schema are the shard contract,
:mod:`vividhead.shard_format`; this module is its one writer.

Inputs are written whole: an input's rows (all its clips) go into one part, and a part is written
only after its shard. On restart, inputs listed in finished parts are skipped, shards no part
refers to (a run killed between the two writes) are removed, and numbering continues.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vividhead.config import bounded
from vividhead.curation.records import Row, manifest_table, members_of
from vividhead.curation.stage import SinkStage, StageConfig
from vividhead.curation.storage import Storage, StorageError, describe
from vividhead.shard_format import (
    FPS,
    JSON,
    KEPT,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    MP4,
    PART_DIR,
    SAMPLE_JSON_EXCLUDE,
    SAMPLE_RATE_HZ,
    SHARD_DIR,
    WAV,
    part_index,
    part_path,
    shard_index,
    shard_path,
)


@dataclass(frozen=True)
class WriteConfig(StageConfig):
    """WebDataset shard writing. A shard closes once it holds ``samples_per_shard`` kept clips."""

    samples_per_shard: int = bounded(100, ">= 1")


def to_py(value: Any) -> Any:
    """numpy/Arrow scalars and arrays (as Ray Data returns them) -> plain Python values."""
    if isinstance(value, np.ndarray):
        return [to_py(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_py(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN from pandas-style nulls
        return None
    return value


def sample_json(row: Row) -> dict:
    """The ``<key>.json`` of a kept clip: every manifest column but routing state, plus ``fps`` and
    ``sample_rate`` (:func:`vividhead.shard_format.sample_json_keys`)."""
    meta = {k: to_py(row.get(k)) for k in MANIFEST_SCHEMA.names if k not in SAMPLE_JSON_EXCLUDE}
    meta.update(fps=float(FPS), sample_rate=SAMPLE_RATE_HZ)
    return meta


def write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write a WebDataset tar: for each ``(key, {ext: bytes})`` members ``<key>.<ext>`` in order.

    Member metadata is fixed (mtime 0, uid/gid 0) so identical inputs give identical shards.
    """
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Driver-side, streaming writer of shards and manifest parts.

    Args:
        storage: the output root.
        samples_per_shard: a shard is closed once it holds at least this many kept clips.

    Raises:
        OSError: the output is not writable (checked at start-up by :meth:`prepare`).
    """

    def __init__(self, storage: Storage, samples_per_shard: int) -> None:
        self.storage = storage
        self.samples_per_shard = samples_per_shard
        self._incomplete: dict[str, list[Row]] = defaultdict(list)
        self._pending: list[Row] = []
        self._pending_kept = 0
        self._next_part = 0
        self._next_shard = 0
        self.parts_written: list[str] = []

    # -- resume -----------------------------------------------------------------------------
    def prepare(self) -> pa.Table:
        """Check the output is writable, clean up after a killed run, and return finished rows.

        Returns:
            The manifest rows of every finished part (empty table on a fresh output).
        """
        probe = ".write-check"
        self.storage.write_bytes(probe, b"ok")
        self.storage.remove(probe)
        self.storage.clean_temps(PART_DIR)
        self.storage.clean_temps(SHARD_DIR)
        parts = [n for n in self.storage.list(PART_DIR) if part_index(n) is not None]
        tables = [pq.read_table(io.BytesIO(self.storage.read_bytes(f"{PART_DIR}/{n}"))) for n in parts]
        done = pa.concat_tables([t.cast(MANIFEST_SCHEMA) for t in tables]) if tables else MANIFEST_SCHEMA.empty_table()
        referenced = {int(s) for s in done.column("shard").to_pylist() if s is not None}
        for name in self.storage.list(SHARD_DIR):
            index = shard_index(name)
            if index is not None and index not in referenced:
                self.storage.remove(f"{SHARD_DIR}/{name}")  # written by a run killed before its part
        self._next_part = max((part_index(n) for n in parts), default=-1) + 1
        self._next_shard = max(referenced, default=-1) + 1
        return done

    # -- streaming ----------------------------------------------------------------------------
    def add(self, row: Row) -> bool:
        """Take one finished row; an input is queued for a shard once all its rows arrived.

        Returns:
            True when this row completed its input.
        """
        rows = self._incomplete[row["input_id"]]
        rows.append(row)
        if len(rows) >= int(row.get("rows_of_input") or 1):
            del self._incomplete[row["input_id"]]
            rows.sort(key=lambda r: to_py(r.get("clip_index")) if r.get("clip_index") is not None else -1)
            self._pending.extend(rows)
            self._pending_kept += sum(r["status"] == KEPT for r in rows)
            if self._pending_kept >= self.samples_per_shard:
                self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write the queued inputs: their shard (if any clip is kept), then their manifest part.

        Raises:
            StorageError: a write failed (disk full, permission, upload retries used up). Nothing
                half-written stays behind: the temp file is removed, and a shard whose part could
                not be written is removed too, so a rerun redoes those inputs.
        """
        if not self._pending:
            return
        kept = [r for r in self._pending if r["status"] == KEPT]
        if kept:
            shard = self._next_shard
            samples = []
            for r in kept:
                r["shard"], r["key"] = shard, r["clip_id"]
                members = {MP4: bytes(r["video_bytes"]), WAV: bytes(r["audio_bytes"])}
                for ext, data in sorted(members_of(r).items()):
                    members[ext] = bytes(data)
                members[JSON] = json.dumps(sample_json(r), sort_keys=True).encode()
                samples.append((r["clip_id"], members))
            shard_rel = shard_path(shard)
            fd, tmp = self.storage.local_temp(shard_rel)
            os.close(fd)
            try:
                write_tar(tmp, samples)
            except BaseException as exc:  # disk full, quota, interrupt: never leave a half tar
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                if isinstance(exc, OSError):
                    raise StorageError(exc.errno or errno.EIO, f"write {self.storage.url.rstrip('/')}/{shard_rel} failed: {describe(exc)}") from exc
                raise
            self.storage.put_file(tmp, shard_rel)  # removes tmp, raises StorageError
            self._next_shard += 1
        rows = [{k: to_py(r.get(k)) for k in MANIFEST_SCHEMA.names} for r in self._pending]
        buf = io.BytesIO()
        pq.write_table(manifest_table(rows), buf)
        rel = part_path(self._next_part)
        try:
            self.storage.write_bytes(rel, buf.getvalue())
        except BaseException:
            if kept:  # the shard has no part: remove it now (a rerun would, too) and redo the inputs
                with contextlib.suppress(Exception):
                    self.storage.remove(shard_rel)
                self._next_shard -= 1
            raise
        self.parts_written.append(rel)
        self._next_part += 1
        self._pending, self._pending_kept = [], 0

    def close(self) -> None:
        """Flush what is queued. Raises ``RuntimeError`` if an input never received all its rows."""
        if self._incomplete:
            missing = ", ".join(sorted(self._incomplete)[:5])
            raise RuntimeError(f"{len(self._incomplete)} inputs did not receive all their rows: {missing}")
        self.flush()

    # -- final outputs --------------------------------------------------------------------------
    def write_manifest(self) -> pa.Table:
        """Concatenate all parts into ``manifest.parquet`` (atomic) and return it."""
        parts = [n for n in self.storage.list(PART_DIR) if part_index(n) is not None]
        tables = [pq.read_table(io.BytesIO(self.storage.read_bytes(f"{PART_DIR}/{n}"))).cast(MANIFEST_SCHEMA) for n in parts]
        table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.storage.write_bytes(MANIFEST_FILE, buf.getvalue())
        return table


class WriteStage(SinkStage):
    """The pipeline's sink: opens the :class:`ShardWriter` the driver feeds with finished rows."""

    name = "write"
    config_class = WriteConfig
    writes_columns = ("shard", "key")
    required = True

    def open(self, storage: Storage) -> ShardWriter:
        """A writer for the output root ``storage`` (call :meth:`ShardWriter.prepare` before use)."""
        return ShardWriter(storage, self.cfg.samples_per_shard)
