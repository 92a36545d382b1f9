from __future__ import annotations

import pytest

from vividhead.curation.stages.face_visibility import missing_face_share
from vividhead.curation.stages.transition import TransitionConfig, clip_transition_score
from vividhead.models.face_detector import FaceDetector


def test_transition_fires_on_the_hard_cut(video_dir):
    result = clip_transition_score(str(video_dir / "cut_talk_derived_face2_face3.mp4"), TransitionConfig())
    assert result.is_transition and abs(result.frame - 125) <= 1


@pytest.mark.parametrize("name", ["fades_synthetic.mp4", "talk_retalking_face1.mp4", "talk_hdtf_aoc_512.mp4", "talk_livep_outdoor_d20.mp4"])
def test_transition_ignores_fades_and_head_motion(video_dir, name):
    result = clip_transition_score(str(video_dir / name), TransitionConfig())
    assert not result.is_transition, (name, result.score, result.spike_ratios.max())


def test_face_visibility_at_1fps(video_dir, weights_dir):
    with FaceDetector(weights_dir / "face_mediapipe_detector.tflite", 0.5) as det:
        assert missing_face_share(str(video_dir / "talk_hdtf_aoc_512.mp4"), det, 25.0, 1.0) == 0.0
        assert missing_face_share(str(video_dir / "fades_synthetic.mp4"), det, 25.0, 1.0) == 1.0
