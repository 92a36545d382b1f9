"""dedup: remove duplicate inputs by source id and by MD5 of the file bytes (FlashHead section 2.1.1).

The first input in input order is kept; later copies are rejected ``duplicate_source_id`` or
``duplicate_md5`` with ``duplicate_of`` set to the kept copy's ``input_id``. Inputs kept by earlier
runs of the same job (``previous``) count as first.
"""

from __future__ import annotations

from dataclasses import dataclass

from vividhead.curation.records import KEPT, Row, reject
from vividhead.curation.stage import GlobalStage, StageConfig


@dataclass(frozen=True)
class DedupConfig(StageConfig):
    """Duplicate removal by source id and by MD5 of the file bytes (FlashHead section 2.1.1)."""

    by_source_id: bool = True
    by_md5: bool = True


def find_duplicates(rows: list[Row], previous: list[Row], cfg: DedupConfig) -> dict[int, tuple[str, str]]:
    """Indices of ``rows`` that duplicate an earlier row.

    Args:
        rows: input rows in input order, each with ``input_id``, ``source_id``, ``md5``, ``status``.
        previous: rows kept by earlier runs (same keys); they always win.

    Returns:
        ``{index in rows: (reason, input_id of the kept copy)}``.
    """
    seen_id: dict[str, str] = {}
    seen_md5: dict[str, str] = {}
    for r in previous:
        seen_id.setdefault(r["source_id"], r["input_id"])
        if r.get("md5"):
            seen_md5.setdefault(r["md5"], r["input_id"])
    out: dict[int, tuple[str, str]] = {}
    for i, r in enumerate(rows):
        if r["status"] != KEPT:
            continue
        if cfg.by_source_id and seen_id.get(r["source_id"], r["input_id"]) != r["input_id"]:
            out[i] = ("duplicate_source_id", seen_id[r["source_id"]])
            continue
        if cfg.by_md5 and r.get("md5") and seen_md5.get(r["md5"], r["input_id"]) != r["input_id"]:
            out[i] = ("duplicate_md5", seen_md5[r["md5"]])
            continue
        seen_id.setdefault(r["source_id"], r["input_id"])
        if r.get("md5"):
            seen_md5.setdefault(r["md5"], r["input_id"])
    return out


class DedupStage(GlobalStage):
    """Driver-side dedup over the probed rows (metadata only)."""

    name = "dedup"
    config_class = DedupConfig
    writes_columns = ("duplicate_of",)

    def process_all(self, rows: list[Row], previous: list[Row]) -> list[Row]:
        """Reject each row that duplicates an earlier row or one of ``previous`` (rows of earlier
        runs into the same output); returns ``rows``, updated in place."""
        for i, (reason, kept_id) in find_duplicates(rows, previous, self.cfg).items():
            reject(rows[i], self.name, reason, f"duplicate of input {kept_id}")
            rows[i]["duplicate_of"] = kept_id
        return rows
