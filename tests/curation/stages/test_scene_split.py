from __future__ import annotations

import json

import pytest

from vividhead.curation.stages.scene_split import SceneSplitConfig, detect_shots, plan_clips


def test_plan_windows_short_shots_and_4k_plus_1():
    cfg = SceneSplitConfig()
    plans = plan_clips([(0.0, 4.0), (4.0, 16.0), (16.0, 136.0)], cfg, fps=25.0)
    assert plans[0].too_short and plans[0].num_frames == 100
    assert not plans[1].too_short and plans[1].num_frames == 297  # 300 -> 4k+1
    long = [p for p in plans[2:]]
    assert len(long) == 3  # 120 s -> 3 windows of 40 s
    assert all(not p.too_short and p.num_frames == 997 and (p.num_frames - 1) % 4 == 0 for p in long)
    assert long[1].start_s == pytest.approx(56.0)
    assert all(cfg.min_clip_s <= p.end_s - p.start_s <= cfg.max_clip_s for p in plans[1:])


def test_plan_exact_boundary_and_no_snapping():
    plans = plan_clips([(0.0, 5.0)], SceneSplitConfig(), fps=25.0)
    assert not plans[0].too_short and plans[0].num_frames == 125
    plans = plan_clips([(0.0, 6.0)], SceneSplitConfig(frames_4k_plus_1=False), fps=25.0)
    assert plans[0].num_frames == 150


def test_adaptive_detector_finds_the_talking_head_cut(video_dir):
    golden = json.loads((video_dir / "cut_talk_derived_face2_face3.golden_cuts.json").read_text())["cuts"]
    shots = detect_shots(video_dir / "cut_talk_derived_face2_face3.mp4", SceneSplitConfig())
    assert len(shots) == 2
    assert abs(shots[0][1] * 25 - golden[0]) <= 2 and abs(shots[1][0] * 25 - golden[0]) <= 2


def test_adaptive_detector_matches_pyscenedetect_golden(video_dir):
    golden = json.loads((video_dir / "cuts_nature_3scenes.golden_AdaptiveDetector.json").read_text())
    cuts = golden["cuts"] if isinstance(golden, dict) else golden
    shots = detect_shots(video_dir / "cuts_nature_3scenes.mp4", SceneSplitConfig())
    fps = 30000 / 1001
    found = [round(s * fps) for s, _ in shots[1:]]
    assert len(found) == len(cuts)
    assert all(abs(a - b) <= 1 for a, b in zip(found, cuts))


def test_no_cut_on_single_shot_talk(video_dir):
    shots = detect_shots(video_dir / "talk_hdtf_aoc_512.mp4", SceneSplitConfig())
    assert len(shots) == 1 and shots[0][1] == pytest.approx(8.0, abs=0.1)
