"""Consecutive CPU stages with a model stage among them run as one chain: same rows, one operator."""

from __future__ import annotations

import json
from pathlib import Path

from vividhead.curation.config import load_config
from vividhead.curation.frame_group import FrameGroup, StageChain, chain_stages, group_frame_stages
from vividhead.curation.pipeline import build_stages
from vividhead.curation.ray_adapter import needs_actor, run_stage
from vividhead.curation.records import new_row
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError

REPO = Path(__file__).resolve().parents[2]


def per_row(path: Path) -> list[Stage]:
    stages = build_stages(load_config(path))
    return [s for s in stages if isinstance(s, Stage)]


def test_offline_example_runs_scene_split_to_face_mask_as_one_chain():
    stages = per_row(REPO / "examples" / "curate_offline.yaml")
    after_dedup = stages[stages.index(next(s for s in stages if s.name == "scene_split")):]
    (chain,) = chain_stages(group_frame_stages(after_dedup))
    assert isinstance(chain, StageChain) and needs_actor(chain)
    assert [s.name for s in chain.stages] == [
        "scene_split", "face", "normalize", "speech", "face_visibility+transition+asd+face_mask"]
    assert chain.cfg.memory_gib == max(s.cfg.memory_gib for s in chain.stages)
    assert chain.cfg.num_gpus == 0
    # probe alone (dedup, a global stage, comes next) has no model: left to Ray Data's own task fusion
    assert chain_stages([stages[0]]) == [stages[0]]


def test_gpu_stages_stay_out_of_chains():
    stages = per_row(REPO / "examples" / "curate_gpu.yaml")
    after_dedup = stages[stages.index(next(s for s in stages if s.name == "scene_split")):]
    out = chain_stages(group_frame_stages(after_dedup))
    gpu = [s for s in out if s.cfg.num_gpus > 0]
    assert any(isinstance(s, FrameGroup) for s in gpu) and not any(isinstance(s, StageChain) for s in gpu)
    chains = [s for s in out if isinstance(s, StageChain)]
    assert [s.name for s in chains[0].stages] == ["scene_split", "face", "normalize", "speech"]


class _Split(Stage):
    """One row in, two out (like scene_split)."""

    name = "split"

    def process(self, row):
        return [dict(row, clip_index=i, timings=row["timings"] if i == 0 else "{}") for i in range(2)]


class _RejectSecond(Stage):
    name = "reject_second"

    def setup(self) -> None:
        self.ready = True

    def process(self, row):
        if row["clip_index"] == 1:
            raise MediaError("second", "the second clip")
        return [row]


class _Mark(Stage):
    name = "mark"

    def process(self, row):
        row["detail"] = "marked"
        return [row]


def test_chain_gives_the_rows_of_stage_by_stage():
    stages = [_Split(StageConfig()), _RejectSecond(StageConfig()), _Mark(StageConfig())]
    (chain,) = chain_stages(stages)
    chain.setup()
    assert stages[1].ready
    row = new_row(input_id="in", source_id="s", url="/x.mp4")
    by_stage = [row]
    for stage in stages:
        by_stage = [o for r in by_stage for o in run_stage(stage, r)]
    chained = run_stage(chain, dict(row))
    strip = [(r["clip_index"], r["status"], r["stage"], r["reason"], r["detail"]) for r in chained]
    assert strip == [(r["clip_index"], r["status"], r["stage"], r["reason"], r["detail"]) for r in by_stage]
    assert strip == [(0, "kept", None, None, "marked"), (1, "rejected", "reject_second", "second", "the second clip")]
    assert set(json.loads(chained[0]["timings"])) >= {"split", "cpu:split", "reject_second", "mark"}


def test_a_chain_starts_the_largest_min_workers_of_its_stages():
    stages = [_Mark(StageConfig(min_workers=2)), _RejectSecond(StageConfig(min_workers=8)), _Mark(StageConfig())]
    (chain,) = chain_stages(stages)
    assert (chain.cfg.min_workers, chain.cfg.workers) == (8, None)
    (plain,) = chain_stages([_Mark(StageConfig()), _RejectSecond(StageConfig())])
    assert plain.cfg.min_workers is None
