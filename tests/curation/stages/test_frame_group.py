"""Frame stages in one actor: one decode and one face track, the same rows as stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from avclips import WEIGHTS_DIR, clip_row

from vividhead.curation import decoded_clip
from vividhead.curation.config import config_from_dict, load_config
from vividhead.curation.frame_group import FrameGroup, group_frame_stages
from vividhead.curation.pipeline import build_stages
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.stage import FrameStage, Stage
from vividhead.models.face_detector import FaceDetector

REPO = Path(__file__).resolve().parents[3]
DETECTOR = str(WEIGHTS_DIR / "face_mediapipe_detector.tflite")
OFFLINE = {
    "face_visibility": {"weights_path": DETECTOR},
    "asd": {"detector_weights_path": DETECTOR, "weights_path": str(WEIGHTS_DIR / "asd_lightasd_pretrain_AVA.model")},
    "face_mask": {"weights_path": str(WEIGHTS_DIR / "face_mediapipe_landmarker.task")},
    "occlusion": {"enabled": False}, "syncnet": {"enabled": False},
    "audio_features": {"enabled": False}, "attributes": {"enabled": False},
}


def frame_stages(raw: dict) -> list[FrameStage]:
    return [s for s in build_stages(config_from_dict(raw)) if isinstance(s, FrameStage) and s.cfg.enabled]


def test_grouping_follows_the_device_of_consecutive_frame_stages():
    stages = [s for s in build_stages(config_from_dict(OFFLINE)) if isinstance(s, Stage)]
    grouped = group_frame_stages(stages)
    groups = [s for s in grouped if isinstance(s, FrameGroup)]
    assert [g.name for g in groups] == ["face_visibility+transition+asd+face_mask"]
    assert [s.name for s in grouped].index(groups[0].name) == [s.name for s in grouped].index("speech") + 1
    assert groups[0].cfg.memory_gib == max(s.cfg.memory_gib for s in groups[0].stages)
    # A GPU stage in the middle splits the run: CPU group, GPU stage, CPU stage (a run of one stays itself).
    split = group_frame_stages(frame_stages({**OFFLINE, "asd": {**OFFLINE["asd"], "num_gpus": 0.5}}))
    assert [s.name for s in split] == ["face_visibility+transition", "asd", "face_mask"]
    assert split[1].cfg.num_gpus == 0.5 and not isinstance(split[1], FrameGroup)


def test_the_gpu_example_puts_every_frame_stage_in_one_group():
    cfg = load_config(REPO / "examples" / "curate_gpu.yaml")
    stages = [s for s in build_stages(cfg) if isinstance(s, Stage)]
    (group,) = [s for s in group_frame_stages(stages) if isinstance(s, FrameGroup)]
    assert group.name == "face_visibility+transition+occlusion+syncnet+asd+face_mask"
    assert (group.cfg.num_gpus, group.cfg.num_cpus) == (0.125, 1)
    # Ray Data grows the pool from one actor: min_workers: 8 measured no faster on a GPU node
    assert (group.cfg.min_workers, group.cfg.workers) == (None, None)
    raw = {name: {**section, "min_workers": 2 if name == "asd" else 8} if name in ("asd", "face_mask") else section
           for name, section in yaml.safe_load((REPO / "examples" / "curate_gpu.yaml").read_text()).items()}
    (group,) = [s for s in group_frame_stages([s for s in build_stages(config_from_dict(raw)) if isinstance(s, Stage)])
                if isinstance(s, FrameGroup)]
    assert group.cfg.min_workers == 8  # the largest of its stages'


@pytest.fixture(scope="module")
def offline_stages():
    stages = frame_stages(OFFLINE)
    for s in stages:
        s.setup()
    yield stages
    for s in stages:
        s.teardown()


def test_group_decodes_once_tracks_once_and_matches_stage_by_stage(offline_stages, monkeypatch):
    row = clip_row("talk_retalking_face3.mp4", 3.0)
    one_by_one = dict(row)
    for stage in offline_stages:
        (one_by_one,) = run_stage(stage, one_by_one)

    decodes, detections = [], []
    real_iter, real_detect = decoded_clip.iter_frames, FaceDetector.detect
    monkeypatch.setattr(decoded_clip, "iter_frames", lambda *a, **k: decodes.append(1) or real_iter(*a, **k))
    monkeypatch.setattr(FaceDetector, "detect", lambda self, frame: detections.append(1) or real_detect(self, frame))
    (grouped,) = FrameGroup(offline_stages).process(dict(row))

    assert len(decodes) == 1  # face_visibility, transition, asd and face_mask share one decode
    assert len(detections) == row["num_frames"]  # one detection per frame: 1 fps samples and the track
    for column in ("status", "missing_face_share", "transition_score", "asd_score", "face_mask_share", "extra_members"):
        assert grouped[column] == one_by_one[column], column
    assert grouped["status"] == "kept" and grouped["asd_score"] is not None
    assert set(json.loads(grouped["timings"])) >= {s.name for s in offline_stages}


def test_a_rejection_inside_the_group_stops_the_rest(offline_stages):
    row = clip_row("cut_talk_derived_face2_face3.mp4", 9.0)  # hard cut at 5 s: transition rejects
    (out,) = FrameGroup(offline_stages).process(dict(row))
    assert (out["status"], out["stage"], out["reason"]) == ("rejected", "transition", "abrupt_transition")
    assert out["asd_score"] is None and out["face_mask_share"] is None and out["video_bytes"] is None
    assert "asd" not in json.loads(out["timings"])
