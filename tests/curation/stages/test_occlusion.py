"""occlusion: the hand-over-face rule, real YOLOX person boxes, and the full rtmlib path with small
ONNX models exported here with DWPose's signature (input ``input`` [1, 3, 384, 288], outputs
``simcc_x`` [1, 133, 576] and ``simcc_y`` [1, 133, 768]). The DWPose weights are not available
offline, so these models only prove the plumbing; the crafted ones put the keypoints where the
test needs them so that the decision itself is checked end to end."""

from __future__ import annotations

import numpy as np
import pytest

from vividhead import weights
from vividhead.curation.media import first_frame
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.records import new_row
from vividhead.curation.stages.occlusion import (
    FACE,
    HEAD_BODY,
    LEFT_HAND,
    RIGHT_HAND,
    OcclusionConfig,
    OcclusionStage,
    WholeBodyEstimator,
    frame_is_occluded,
    hand_over_face_share,
    main_face_box,
)
from vividhead.errors import MediaError

torch = pytest.importorskip("torch")

W, H = 288, 384  # DWPose-l 384 input (width, height)
CLIP = "talk_hdtf_katiehill_512.mp4"  # 512x512, 25 fps, face-centred: what occlusion sees


def _person(face_c=(256, 200), face_r=60, hand_xy=(256, 480), hand_score=0.9, face_score=0.9):
    """One person's [133, 2] keypoints and [133] scores: face points on a circle, hands at one spot."""
    k = np.zeros((133, 2), np.float32)
    s = np.full(133, 0.9, np.float32)
    ang = np.linspace(0, 2 * np.pi, len(FACE) + len(HEAD_BODY), endpoint=False)
    pts = np.stack([face_c[0] + face_r * np.cos(ang), face_c[1] + face_r * np.sin(ang)], 1)
    k[np.concatenate([HEAD_BODY, FACE])] = pts
    s[np.concatenate([HEAD_BODY, FACE])] = face_score
    k[5:23] = (face_c[0], face_c[1] + 200)
    k[np.concatenate([LEFT_HAND, RIGHT_HAND])] = hand_xy
    s[np.concatenate([LEFT_HAND, RIGHT_HAND])] = hand_score
    return k, s


def _batch(*people):
    return np.stack([p[0] for p in people]), np.stack([p[1] for p in people])


# --- the rule ------------------------------------------------------------------------------------


def test_hand_inside_face_box_is_occlusion():
    cfg = OcclusionConfig()
    k, s = _batch(_person(hand_xy=(256, 210)))
    assert frame_is_occluded(k, s, (512, 512), cfg)


def test_hand_outside_face_box_is_not_occlusion():
    cfg = OcclusionConfig()
    k, s = _batch(_person(hand_xy=(256, 330)))  # below the chin (face box ends at 200 + 60 + 12)
    assert not frame_is_occluded(k, s, (512, 512), cfg)


def test_low_confidence_hand_is_ignored():
    cfg = OcclusionConfig(hand_min_score=0.5)
    k, s = _batch(_person(hand_xy=(256, 210), hand_score=0.3))
    assert not frame_is_occluded(k, s, (512, 512), cfg)
    assert frame_is_occluded(k, s, (512, 512), OcclusionConfig(hand_min_score=0.2))


def test_min_hand_keypoints():
    k, s = _batch(_person(hand_xy=(256, 210)))
    s[0, RIGHT_HAND] = 0.0
    s[0, LEFT_HAND[1:]] = 0.0  # exactly one confident hand point on the face
    assert frame_is_occluded(k, s, (512, 512), OcclusionConfig(min_hand_keypoints=1))
    assert not frame_is_occluded(k, s, (512, 512), OcclusionConfig(min_hand_keypoints=2))


def test_no_face_keypoints_is_not_occlusion():
    k, s = _batch(_person(hand_xy=(256, 210), face_score=0.1))
    assert not frame_is_occluded(k, s, (512, 512), OcclusionConfig())
    assert not frame_is_occluded(np.zeros((0, 133, 2)), np.zeros((0, 133)), (512, 512), OcclusionConfig())


def test_main_face_is_the_central_one_and_other_hands_count():
    centre = _person(face_c=(256, 256), hand_xy=(256, 500))
    side = _person(face_c=(60, 60), face_r=30, hand_xy=(256, 256))  # a second person's hand on the main face
    k, s = _batch(side, centre)
    box = main_face_box(k, s, (512, 512), 0.5, 0.1)
    assert box[0] < 256 < box[2] and box[1] < 256 < box[3] and box[2] - box[0] > 100
    assert frame_is_occluded(k, s, (512, 512), OcclusionConfig())


# --- real person detector ------------------------------------------------------------------------


def _yolox(weights_dir):
    return weights.resolve("person_yolox_nano", str(weights_dir / "person_yolox_nano_416.onnx"))


def test_real_yolox_person_boxes(video_dir, weights_dir, tmp_path):
    est = WholeBodyEstimator(_yolox(weights_dir), _export(tmp_path / "pose.onnx", "random"))
    demo3 = first_frame(video_dir / "talk_vertical_gestures_demo3.mp4")[..., ::-1].copy()
    boxes = est.person_boxes(demo3)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert x1 - x0 > 300 and y1 - y0 > 800  # the standing presenter
    nature = first_frame(video_dir / "cuts_nature_3scenes.mp4")[..., ::-1].copy()
    assert len(est.person_boxes(nature)) == 0


# --- full rtmlib path with exported models -------------------------------------------------------


class _TinyPose(torch.nn.Module):
    """DWPose signature, few parameters: conv -> 4x2 pool -> linear to both SimCC heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 16, stride=16)
        self.pool = torch.nn.AdaptiveAvgPool2d((4, 2))
        self.x = torch.nn.Linear(16, 133 * 2 * W)
        self.y = torch.nn.Linear(16, 133 * 2 * H)

    def forward(self, img):
        f = self.pool(torch.relu(self.conv(img))).flatten(1)  # [1, 16]
        return self.x(f).view(-1, 133, 2 * W), self.y(f).view(-1, 133, 2 * H)


def _craft(model: _TinyPose, hands_on_face: bool) -> None:
    """Zero the weights and put one peak per keypoint (pose-input pixels, SimCC split ratio 2)."""
    with torch.no_grad():
        model.x.weight.zero_()
        model.y.weight.zero_()
        bx = torch.zeros(133, 2 * W)
        by = torch.zeros(133, 2 * H)
        pos = np.tile([W / 2, H * 0.75], (133, 1))  # body, feet: low in the crop
        ang = np.linspace(0, 2 * np.pi, len(FACE) + len(HEAD_BODY), endpoint=False)
        pos[np.concatenate([HEAD_BODY, FACE])] = np.stack([W / 2 + 40 * np.cos(ang), H / 3 + 40 * np.sin(ang)], 1)
        pos[np.concatenate([LEFT_HAND, RIGHT_HAND])] = (W / 2, H / 3) if hands_on_face else (W / 2, H * 0.9)
        for j, (x, y) in enumerate(pos):
            bx[j, int(round(2 * x))] = 1.0
            by[j, int(round(2 * y))] = 1.0
        model.x.bias.copy_(bx.flatten())
        model.y.bias.copy_(by.flatten())


def _export(path, kind: str) -> str:
    torch.manual_seed(0)
    model = _TinyPose().eval()
    if kind != "random":
        _craft(model, hands_on_face=(kind == "on_face"))
    torch.onnx.export(
        model, torch.zeros(1, 3, H, W), str(path), input_names=["input"], output_names=["simcc_x", "simcc_y"], dynamo=False
    )
    return str(path)


def test_exported_model_has_dwpose_signature(tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(_export(tmp_path / "p.onnx", "random"))
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [("input", [1, 3, 384, 288])]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("simcc_x", [1, 133, 576]), ("simcc_y", [1, 133, 768])]


def test_random_pose_model_runs_through_rtmlib(video_dir, weights_dir, tmp_path):
    est = WholeBodyEstimator(_yolox(weights_dir), _export(tmp_path / "p.onnx", "random"))
    kpts, scores = est(first_frame(video_dir / CLIP))
    assert kpts.shape[1:] == (133, 2) and scores.shape[1:] == (133,) and len(kpts) >= 1
    cfg = OcclusionConfig(sample_fps=1.0)
    result = hand_over_face_share((video_dir / CLIP).read_bytes(), est, 25.0, cfg)
    assert result.sampled == 8  # 200 frames, every 25th
    assert 0.0 <= result.share <= 1.0


@pytest.mark.parametrize("kind, rejected", [("on_face", True), ("off_face", False)])
def test_stage_decision_with_crafted_pose_model(video_dir, weights_dir, tmp_path, kind, rejected):
    cfg = OcclusionConfig(
        det_weights_path=str(weights_dir / "person_yolox_nano_416.onnx"),
        pose_weights_path=_export(tmp_path / f"{kind}.onnx", kind),
        sample_fps=1.0,
    )
    stage = OcclusionStage(cfg)
    stage.setup()
    row = new_row(video_bytes=(video_dir / CLIP).read_bytes())
    out = run_stage(stage, row)[0]
    if rejected:
        assert (out["status"], out["stage"], out["reason"]) == ("rejected", "occlusion", "hand_over_face")
    else:
        assert out["status"] == "kept" and out["hand_over_face_share"] == 0.0
    assert out["hand_over_face_share"] == (1.0 if rejected else 0.0)


def test_stage_reports_undecodable_clip(weights_dir, tmp_path):
    cfg = OcclusionConfig(
        det_weights_path=str(weights_dir / "person_yolox_nano_416.onnx"),
        pose_weights_path=_export(tmp_path / "r.onnx", "random"),
    )
    stage = OcclusionStage(cfg)
    stage.setup()
    with pytest.raises(MediaError) as err:
        stage.process(new_row(video_bytes=b"not a video"))
    assert err.value.reason == "decode_failed"


def test_dwpose_registered_and_missing_offline_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    spec = weights.REGISTRY["dwpose_ll_ucoco_384"]
    assert spec.url.endswith("/dw-ll_ucoco_384.onnx")
    stage = OcclusionStage(OcclusionConfig())
    assert [n for n, _ in stage.weights()] == ["person_yolox_nano", "dwpose_ll_ucoco_384"]
    with pytest.raises(weights.WeightsNotFound, match="dw-ll_ucoco_384.onnx"):
        weights.resolve("dwpose_ll_ucoco_384", download=False)


def test_config_rejects_bad_values():
    from vividhead.curation.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="occlusion.max_hand_over_face_share"):
        config_from_dict({"occlusion": {"max_hand_over_face_share": 1.5}})
