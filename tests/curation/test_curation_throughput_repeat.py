"""``benchmarks/curation_throughput.py --repeat``: the repeated inputs (names, order, links to the
fixture videos), the config with dedup off, the per-copy decision check and the fixed / marginal split.
No pipeline run."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vividhead.curation.config import config_from_dict
from vividhead.curation.inputs import expand_inputs

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
VIDEOS = ROOT.parent / "shared" / "fixtures" / "media" / "video"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # curate_gpu_node imports curation_throughput from its own folder
    try:
        yield load("curation_throughput"), load("curate_gpu_node")
    finally:
        sys.path.remove(str(BENCH))


def fixture_videos() -> list[Path]:
    paths = sorted(VIDEOS.glob("*.mp4"))
    if not paths:
        pytest.skip(f"no fixture videos in {VIDEOS}")
    return paths


def test_repeat_inputs_links_every_fixture_video_n_times(bench, tmp_path):
    ct, _ = bench
    paths = fixture_videos()
    out = ct.repeat_inputs(paths, 3, tmp_path / "in")
    assert len(out) == 3 * len(paths)
    assert out == sorted(out)
    assert len({p.name for p in out}) == len(out)
    assert {p.name for p in out if p.name.startswith("r2_")} == {"r2_" + p.name for p in paths}
    for p in out:
        src = VIDEOS / ct.source_name(p.name)
        assert os.path.samefile(p, src)
    # the pipeline lists the folder itself: every copy once, in the same order
    rows = expand_inputs([str(tmp_path / "in")])
    assert [Path(r["url"]).name for r in rows] == [p.name for p in out]
    assert len({r["input_id"] for r in rows}) == len(out)


def test_copy_names_round_trip_and_pad_like_seq_w(bench):
    ct, node = bench
    assert ct.copy_name("a.mp4", 3, 4) == "r3_a.mp4"
    assert ct.copy_name("a.mp4", 3, 40) == "r03_a.mp4"  # as run_curate_gpu_node.sh's `seq -w`
    for name in ("a.mp4", "r1_x.mp4"):
        assert ct.source_name(ct.copy_name(name, 7, 12)) == name
        assert ct.copy_tag(ct.copy_name(name, 7, 12)) == "r07_"
    assert ct.source_name("talk_retalking_face1.mp4") == "talk_retalking_face1.mp4"
    assert ct.copy_tag("talk_retalking_face1.mp4") == ""
    # the GPU node run maps its copies back to the fixture's seconds with the same helper
    assert node.video_seconds("/in/r03_a.mp4", None, {"a.mp4": 11.5}) == 11.5


def test_without_dedup_copies_the_config_and_keeps_the_rest(bench):
    ct, node = bench
    raw = yaml.safe_load((ROOT / "examples" / "curate_offline.yaml").read_text())
    before = json.dumps(raw, sort_keys=True)
    cfg = ct.without_dedup(raw)
    assert json.dumps(raw, sort_keys=True) == before
    assert cfg["dedup"] == {"enabled": False}
    assert {k: v for k, v in cfg.items() if k != "dedup"} == raw
    parsed = config_from_dict(cfg)
    assert parsed.dedup.enabled is False and parsed.occlusion.enabled is False
    assert ct.without_dedup({"dedup": {"enabled": True, "x": 1}})["dedup"] == {"enabled": False, "x": 1}
    merged = node.merged_config({"dedup": {"enabled": True}}, None, 8, keep_dedup=False)
    assert merged["dedup"]["enabled"] is False and merged["write"]["samples_per_shard"] == 8


def row(url: str, clip: int | None, status: str = "kept", stage: str | None = None, reason: str | None = None):
    return {"input_id": "h" + url, "url": url, "clip_index": clip, "status": status, "stage": stage, "reason": reason}


def test_every_copy_is_checked_against_its_source(bench, tmp_path):
    ct, _ = bench

    base = [row("/v/a.mp4", 0), row("/v/a.mp4", 1, "rejected", "face", "no_face"), row("/v/b.mp4", None, "rejected", "probe", "no_audio")]
    pq.write_table(pa.Table.from_pylist(base), tmp_path / "base.parquet")
    same = [row(f"/t/r{k}_{Path(r['url']).name}", r["clip_index"], r["status"], r["stage"], r["reason"])
            for k in (1, 2) for r in base]
    assert ct.decision_changes(pa.Table.from_pylist(same), str(tmp_path / "base.parquet")) == []
    # N = 1 against N = 1 (another folder): keyed by file name, as before
    assert ct.decision_changes(pa.Table.from_pylist(base), str(tmp_path / "base.parquet")) == []
    changed = same[:4] + [row("/t/r2_a.mp4", 1, "kept")]  # r2_: clip 1 kept, b.mp4 missing
    out = ct.decision_changes(pa.Table.from_pylist(changed), str(tmp_path / "base.parquet"))
    assert {c["clip"] for c in out} == {("r2_a.mp4", 1), ("r2_b.mp4", None)}


def test_marginal_split_of_two_runs(bench):
    ct, _ = bench
    one = {"input_video_s": 180.0, "pipeline_cpu_s": 80.0, "decode_cpu_s": 8.0, "stage_cpu_s_total": 56.0,
           "outside_stages_cpu_s": 24.0, "stage_cpu_s": {"asd": 18.0, "probe": 1.0}}
    four = {"input_video_s": 720.0, "pipeline_cpu_s": 260.0, "decode_cpu_s": 32.0, "stage_cpu_s_total": 212.0,
            "outside_stages_cpu_s": 48.0, "stage_cpu_s": {"asd": 72.0, "probe": 4.0}}
    for a, b in ((four, one), (one, four)):  # either run may be the baseline report
        out = ct.marginal(a, b)
        assert out["cpu_s_per_input_s"]["pipeline_cpu_s"] == pytest.approx(180 / 540, abs=1e-4)
        assert out["fixed_cpu_s"]["pipeline_cpu_s"] == pytest.approx(80 - 180 / 3, abs=0.05)
        assert out["fixed_cpu_s"]["decode_cpu_s"] == pytest.approx(0.0, abs=0.05)
        assert out["ratio_cpu"] == pytest.approx(180 / 24, abs=0.01)
        assert out["stage_cpu_s_per_input_s"]["asd"] == pytest.approx(0.1, abs=1e-4)
        assert out["stage_fixed_cpu_s"]["probe"] == pytest.approx(0.0, abs=0.01)
    assert ct.marginal(one, dict(one)) is None
