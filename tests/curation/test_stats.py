"""stats.json's per-stage funnel: counts by the stage's units, disabled stages reported ``off``."""

from __future__ import annotations

from vividhead.curation.config import config_from_dict
from vividhead.curation.pipeline import build_stages
from vividhead.curation.records import manifest_table
from vividhead.curation.stats import stage_stats


def _row(input_id, clip=None, stage=None, reason=None, timings="{}"):
    return {"input_id": input_id, "source_id": input_id, "clip_id": clip, "status": "rejected" if reason else "kept",
            "stage": stage, "reason": reason, "timings": timings}


def test_funnel_counts_and_disabled_stages():
    manifest = manifest_table([
        _row("a", "a-0000", timings='{"probe": 0.5, "face": 1.0}'),
        _row("a", "a-0001", "face", "no_face"),
        _row("b", None, "probe", "no_audio"),
        _row("c", None, "dedup", "duplicate_md5"),
        _row("d", "d-0000", "scene_split", "too_short"),
    ])
    cfg = config_from_dict({"occlusion": {"enabled": False}, "attributes": {"enabled": False}})
    stats = stage_stats(manifest, build_stages(cfg))
    assert list(stats) == [s.name for s in build_stages(cfg)]
    assert stats["occlusion"] == {"enabled": False} and stats["attributes"] == {"enabled": False}
    assert stats["probe"] == {"enabled": True, "in": 4, "out": 3, "dropped": {"no_audio": 1}, "seconds": 0.5}
    assert (stats["dedup"]["in"], stats["dedup"]["out"]) == (3, 2)
    # inputs in, clips out: inputs a and d reach it, a's two clips get past it
    assert (stats["scene_split"]["in"], stats["scene_split"]["out"], stats["scene_split"]["dropped"]) == (2, 2, {"too_short": 1})
    assert stats["face"] == {"enabled": True, "in": 2, "out": 1, "dropped": {"no_face": 1}, "seconds": 1.0}
    assert (stats["transition"]["in"], stats["transition"]["out"]) == (1, 1)
