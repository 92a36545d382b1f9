"""Per-stage counts from the manifest: rows in, rows out, rows dropped by reason, seconds of work."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Sequence

import pyarrow as pa

from vividhead.curation.records import KEPT
from vividhead.curation.stage import BaseStage


def stage_stats(manifest: pa.Table, stages: Sequence[BaseStage]) -> dict[str, dict]:
    """Counts for each stage, in pipeline order.

    What is counted follows the stage's ``funnel_units``: ``in`` counts inputs for stages that see
    one row per input (``probe``, ``dedup``, ``scene_split``) and clips for the others; a stage
    that turns inputs into clips (``scene_split``) counts as ``out`` the clips it produced that were
    long enough. ``seconds`` sums the stage's wall time over rows (from the ``timings`` column).
    A disabled stage did not run: it is ``{"enabled": false}`` with no counts, never a stage
    that kept everything.

    Returns:
        ``{stage: {"enabled": True, "in": int, "out": int, "dropped": {reason: int}, "seconds": float}}``
        for enabled stages, ``{stage: {"enabled": False}}`` for disabled ones.
    """
    rows = manifest.select(["input_id", "clip_id", "status", "stage", "reason", "timings"]).to_pylist()
    pos = {stage.name: i for i, stage in enumerate(stages)}
    seconds: dict[str, float] = defaultdict(float)
    for r in rows:
        for name, sec in json.loads(r["timings"] or "{}").items():
            seconds[name] += sec
    out: dict[str, dict] = {}
    for stage in stages:
        name, (unit_in, unit_out) = stage.name, stage.funnel_units
        if not stage.cfg.enabled:
            out[name] = {"enabled": False}
            continue
        p = pos[name]
        reached = [r for r in rows if r["status"] == KEPT or pos.get(r["stage"], len(pos)) >= p]
        dropped = Counter(r["reason"] for r in reached if r["status"] != KEPT and r["stage"] == name)
        if unit_in == "input":
            n_in = len({r["input_id"] for r in reached})
        else:
            n_in = sum(r["clip_id"] is not None for r in reached)
        if unit_in != unit_out:  # inputs in, clips out: the clips that got past the stage
            n_out = sum(r["clip_id"] is not None and (r["status"] == KEPT or pos.get(r["stage"], len(pos)) > p) for r in reached)
        else:
            n_out = n_in - sum(dropped.values())
        out[name] = {"enabled": True, "in": n_in, "out": n_out, "dropped": dict(sorted(dropped.items())),
                     "seconds": round(seconds.get(name, 0.0), 3)}
    return out
