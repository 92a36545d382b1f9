"""face_mask: real MediaPipe FaceLandmarker (fixture bundle) on a real 512x512 clip, compact member
round trip, and the never-reject failure paths."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest

from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.records import members_of, new_row
from vividhead.curation.stages.face_mask import (
    FACE_OVAL,
    MEMBER,
    FaceMaskConfig,
    FaceMaskStage,
    decode_masks,
    encode_masks,
    polygon_mask,
)

CLIP = "talk_hdtf_katiehill_512.mp4"  # 512x512, 25 fps, 200 frames, one frontal face


def _video(frames: list[np.ndarray], fps: int = 25) -> bytes:
    """Encode RGB frames as an H.264 MP4 in memory (PyAV)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stage(weights_dir):
    s = FaceMaskStage(FaceMaskConfig(weights_path=str(weights_dir / "face_mediapipe_landmarker.task")))
    s.setup()
    return s


@pytest.fixture(scope="module")
def annotated(stage, video_dir):
    row = new_row(video_bytes=(video_dir / CLIP).read_bytes())
    return run_stage(stage, row)[0]


def test_polygon_mask_fills_the_polygon():
    lm = np.zeros((478, 3), np.float32)
    square = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    idx = FACE_OVAL[:4]
    lm[idx, :2] = square
    mask = polygon_mask(lm, idx, (100, 200))
    assert mask.shape == (100, 200) and mask.dtype == bool
    assert mask[50, 100] and not mask[10, 10] and not mask[90, 190]
    assert abs(mask.mean() - 0.25) < 0.03


def test_masks_and_landmarks_on_a_real_clip(annotated):
    assert annotated["status"] == "kept" and annotated["annotation_errors"] is None
    assert annotated["face_mask_share"] == 1.0
    data = members_of(annotated)[MEMBER]
    m = decode_masks(data)
    t = 200
    assert m["face"].shape == (t, 512, 512) and m["lips"].shape == (t, 512, 512)
    assert m["landmarks"].shape == (t, 478, 3) and m["landmarks"].dtype == np.float16
    assert m["present"].all()
    face_area = m["face"].mean(axis=(1, 2))
    lip_area = m["lips"].mean(axis=(1, 2))
    assert ((face_area > 0.08) & (face_area < 0.6)).all(), face_area.min()  # face is ~0.6 of the crop side
    assert ((lip_area > 0.002) & (lip_area < face_area / 5)).all()
    outside = (m["lips"] & ~m["face"]).sum(axis=(1, 2)) / m["lips"].sum(axis=(1, 2))
    assert outside.max() < 0.05  # lips lie inside the face oval
    ys, xs = np.nonzero(m["face"][0])
    ly, lx = np.nonzero(m["lips"][0])
    assert ly.mean() > ys.mean() + 30 and abs(lx.mean() - xs.mean()) < 40  # mouth below the face centre
    assert abs(xs.mean() - 256) < 80  # the crop is face-centred
    assert len(data) < 1_500_000  # compact: 200 frames of two 512x512 masks + landmarks


def test_member_round_trip_is_exact():
    rng = np.random.default_rng(0)
    from vividhead.curation.stages.face_mask import FaceMasks

    face, lips = rng.random((3, 16, 20)) > 0.5, rng.random((3, 16, 20)) > 0.9
    masks = FaceMasks.from_masks(face, lips, rng.random((3, 478, 3)).astype(np.float32), np.array([True, False, True]))
    back = decode_masks(encode_masks(masks))
    assert (back["face"] == face).all() and (back["lips"] == lips).all()
    assert (back["present"] == masks.present).all()
    assert np.allclose(back["landmarks"], masks.landmarks, atol=1e-3)
    assert "landmarks" not in decode_masks(encode_masks(masks, store_landmarks=False))


def test_no_face_keeps_the_clip_with_a_reason(stage):
    frames = [np.full((128, 128, 3), 90 + 10 * i, np.uint8) for i in range(5)]
    out = run_stage(stage, new_row(video_bytes=_video(frames)))[0]
    assert out["status"] == "kept"
    assert json.loads(out["annotation_errors"]) == {"face_mask": "no_face_landmarks"}
    assert out["face_mask_share"] == 0.0 and MEMBER not in members_of(out)


def test_undecodable_clip_keeps_the_row_with_a_reason(stage):
    out = run_stage(stage, new_row(video_bytes=b"garbage"))[0]
    assert out["status"] == "kept" and out["face_mask_share"] is None
    assert json.loads(out["annotation_errors"]) == {"face_mask": "decode_failed"}
