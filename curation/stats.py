"""Per-stage counts from the manifest: rows in, rows out, rows dropped by reason, seconds of work."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Sequence

import pyarrow as pa

from vividhead.curation.records import KEPT

#: Stages that see one row per input; later stages see one row per clip.
INPUT_LEVEL = ("probe", "dedup", "scene_split")


def stage_stats(manifest: pa.Table, order: Sequence[str]) -> dict[str, dict]:
    """Counts for each stage in pipeline ``order``.

    ``in`` counts inputs for input-level stages (``probe``, ``dedup``, ``scene_split``) and clips for
    the others; ``scene_split``'s ``out`` counts the clips it produced that were long enough.
    ``seconds`` sums the stage's wall time over rows (from the ``timings`` column).

    Returns:
        ``{stage: {"in": int, "out": int, "dropped": {reason: int}, "seconds": float}}``.
    """
    rows = manifest.select(["input_id", "clip_id", "status", "stage", "reason", "timings"]).to_pylist()
    pos = {name: i for i, name in enumerate(order)}
    seconds: dict[str, float] = defaultdict(float)
    for r in rows:
        for name, sec in json.loads(r["timings"] or "{}").items():
            seconds[name] += sec
    out: dict[str, dict] = {}
    for name in order:
        p = pos[name]
        reached = [r for r in rows if r["status"] == KEPT or pos.get(r["stage"], len(order)) >= p]
        dropped = Counter(r["reason"] for r in reached if r["status"] != KEPT and r["stage"] == name)
        if name in INPUT_LEVEL:
            n_in = len({r["input_id"] for r in reached})
        else:
            n_in = sum(r["clip_id"] is not None for r in reached)
        if name == "scene_split":
            n_out = sum(r["clip_id"] is not None and (r["status"] == KEPT or pos.get(r["stage"], len(order)) > p) for r in reached)
        else:
            n_out = n_in - sum(dropped.values())
        out[name] = {"in": n_in, "out": n_out, "dropped": dict(sorted(dropped.items())), "seconds": round(seconds.get(name, 0.0), 3)}
    return out
