"""occlusion: reject clips where a hand covers the face, from DWPose whole-body keypoints (FlashHead 2.1.2).

On frames sampled at ``sample_fps``, a YOLOX person detector and a whole-body pose model (DWPose,
133 COCO-WholeBody keypoints with SimCC heads) run through ``rtmlib``. The face box of the main
person is the bounding box of its confident face keypoints (68 face points plus nose, eyes and
ears), grown by ``face_box_margin``. A frame is occluded when at least ``min_hand_keypoints`` hand
keypoints (of any detected person) with a score above ``hand_min_score`` fall inside that box.

Reason: ``hand_over_face`` when the share of occluded sampled frames exceeds
``max_hand_over_face_share``. The share is kept in the manifest (``hand_over_face_share``).

Source: Yang et al., "Effective Whole-body Pose Estimation with Two-stages Distillation" (DWPose),
ICCV 2023 workshops; rtmlib (Tau-J/rtmlib) for the ONNX pre/post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vividhead import weights
from vividhead.config import bounded
from vividhead.curation.decoded_clip import DecodedClip, as_decoded
from vividhead.curation.records import Row
from vividhead.curation.stage import DeviceError, FrameStage, StageConfig, check
from vividhead.errors import MediaError
from vividhead.shard_format import FPS


@dataclass(frozen=True)
class OcclusionConfig(StageConfig):
    """Hand-over-face filter from DWPose whole-body keypoints via rtmlib (FlashHead section 2.1.2).

    Attributes:
        det_weights_path / pose_weights_path: explicit ONNX paths of the person detector (registry
            ``person_yolox_nano``) and the whole-body pose model (registry ``dwpose_ll_ucoco_384``).
        det_input_px: square YOLOX input side in pixels (416 for YOLOX-nano).
        pose_input_w_px / pose_input_h_px: pose model input (288x384 for DWPose-l 384).
        person_min_score: YOLOX person score threshold; with no person found the whole frame is
            used as the person box (the clip is a face-centred crop).
        sample_fps: frames analysed per second of video.
        hand_min_score: a hand keypoint counts when its SimCC score is above this.
        face_min_score: face keypoints used for the face box need at least this score.
        min_hand_keypoints: hand keypoints inside the face box that make a frame occluded.
        face_box_margin: the face box (bounds of the confident face keypoints) is grown by this
            share of its side on every side.
        max_hand_over_face_share: reject ``hand_over_face`` when the share of occluded sampled
            frames exceeds this.
    """

    memory_gib: float = 2.5  # a decoded 50 s clip (1 GiB at 512x512) and two ONNX models

    det_weights_path: Optional[str] = None
    pose_weights_path: Optional[str] = None
    det_input_px: int = bounded(416, ">= 32")
    pose_input_w_px: int = 288
    pose_input_h_px: int = 384
    person_min_score: float = bounded(0.5, "in [0, 1]")
    sample_fps: float = bounded(2.0, "> 0")
    hand_min_score: float = 0.5
    face_min_score: float = 0.5
    min_hand_keypoints: int = bounded(1, ">= 1")
    face_box_margin: float = bounded(0.1, ">= 0")
    max_hand_over_face_share: float = bounded(0.1, "in [0, 1]")

    def validate(self, section: str) -> None:
        check(self.pose_input_w_px >= 16 and self.pose_input_h_px >= 16, f"{section}.pose_input_w_px", "pose input must be >= 16 px")


# COCO-WholeBody keypoint layout (133 points), as DWPose and RTMW output it.
NUM_KEYPOINTS = 133
HEAD_BODY = np.arange(0, 5)  # nose, left/right eye, left/right ear
FACE = np.arange(23, 91)  # 68 face points
LEFT_HAND = np.arange(91, 112)
RIGHT_HAND = np.arange(112, 133)
HANDS = np.concatenate([LEFT_HAND, RIGHT_HAND])
FACE_BOX_POINTS = np.concatenate([HEAD_BODY, FACE])


def face_box(keypoints: np.ndarray, scores: np.ndarray, min_score: float, margin: float) -> Optional[np.ndarray]:
    """Face box of one person from its head and face keypoints.

    Args:
        keypoints: float [133, 2] keypoint (x, y) in pixels.
        scores: float [133] keypoint scores (SimCC maxima; roughly 0-1, not probabilities).
        min_score: points at or below this score are ignored.
        margin: grow the box by this share of its width/height on each side.

    Returns:
        float32 [4] ``(x0, y0, x1, y1)`` in pixels, or None with fewer than 3 confident points.
    """
    pts = keypoints[FACE_BOX_POINTS]
    ok = scores[FACE_BOX_POINTS] > min_score
    if ok.sum() < 3:
        return None
    pts = pts[ok]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    w, h = x1 - x0, y1 - y0
    return np.array([x0 - margin * w, y0 - margin * h, x1 + margin * w, y1 + margin * h], np.float32)


def main_face_box(
    keypoints: np.ndarray, scores: np.ndarray, frame_size: tuple[int, int], min_score: float, margin: float
) -> Optional[np.ndarray]:
    """Face box of the person whose face is closest to the frame centre (the crop is face-centred).

    Args:
        keypoints: float [N, 133, 2] in pixels; scores: float [N, 133].
        frame_size: (width, height) in pixels.

    Returns:
        float32 [4] ``(x0, y0, x1, y1)`` or None when no person has a usable face.
    """
    cx, cy = frame_size[0] / 2.0, frame_size[1] / 2.0
    best, best_d = None, np.inf
    for kpts, sc in zip(keypoints, scores):
        box = face_box(kpts, sc, min_score, margin)
        if box is None:
            continue
        d = np.hypot((box[0] + box[2]) / 2 - cx, (box[1] + box[3]) / 2 - cy)
        if d < best_d:
            best, best_d = box, d
    return best


def hands_in_box(keypoints: np.ndarray, scores: np.ndarray, box: np.ndarray, min_score: float) -> int:
    """Number of confident hand keypoints (all persons) inside ``box``.

    Args:
        keypoints: float [N, 133, 2] in pixels; scores: float [N, 133].
        box: ``(x0, y0, x1, y1)`` in pixels.
        min_score: hand keypoints at or below this score are ignored.
    """
    pts = keypoints[:, HANDS].reshape(-1, 2)
    ok = scores[:, HANDS].reshape(-1) > min_score
    inside = (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])
    return int((ok & inside).sum())


def frame_is_occluded(
    keypoints: np.ndarray, scores: np.ndarray, frame_size: tuple[int, int], cfg: OcclusionConfig
) -> bool:
    """The hand-over-face rule on one frame's whole-body keypoints.

    Args:
        keypoints: float [N, 133, 2] pixels; scores: float [N, 133] (N persons, N may be 0).
        frame_size: (width, height) in pixels.

    Returns:
        True when at least ``cfg.min_hand_keypoints`` confident hand keypoints lie in the main
        face box. A frame without a usable face box is not occluded (face visibility is another
        stage's job).
    """
    if len(keypoints) == 0:
        return False
    box = main_face_box(keypoints, scores, frame_size, cfg.face_min_score, cfg.face_box_margin)
    if box is None:
        return False
    return hands_in_box(keypoints, scores, box, cfg.hand_min_score) >= cfg.min_hand_keypoints


class WholeBodyEstimator:
    """YOLOX person detector + whole-body SimCC pose model, both ONNX, through rtmlib.

    Args:
        det_path: YOLOX ONNX (raw head, e.g. ``person_yolox_nano_416.onnx``), input
            ``[1, 3, det_input_px, det_input_px]``.
        pose_path: whole-body pose ONNX with DWPose's signature: input ``[1, 3, H, W]`` float32
            (ImageNet-normalised BGR as rtmlib feeds it), outputs ``simcc_x [1, 133, 2W]`` and
            ``simcc_y [1, 133, 2H]``.
        pose_input_size: (W, H) in pixels, (288, 384) for ``dw-ll_ucoco_384``.
        device: ``cpu`` or ``cuda`` (onnxruntime provider).

    Raises:
        onnxruntime errors for a file that is not a valid ONNX model.
    """

    def __init__(
        self,
        det_path: str,
        pose_path: str,
        det_input_px: int = 416,
        pose_input_size: tuple[int, int] = (288, 384),
        person_min_score: float = 0.5,
        device: str = "cpu",
    ) -> None:
        from rtmlib import Wholebody

        wb = Wholebody(
            det=str(det_path), det_input_size=(det_input_px, det_input_px),
            pose=str(pose_path), pose_input_size=tuple(pose_input_size),
            backend="onnxruntime", device=device,
        )
        self.det = wb.det_model
        self.det.det_mode = "multiclass"  # 'human' mode returns boxes of every class
        self.det.score_thr = person_min_score
        self.pose = wb.pose_model

    def person_boxes(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Person boxes: float [P, 4] ``(x0, y0, x1, y1)`` pixels (COCO class 0 only)."""
        boxes, classes = self.det(frame_bgr)
        boxes, classes = np.asarray(boxes), np.asarray(classes)
        if boxes.size == 0:
            return np.zeros((0, 4), np.float32)
        return boxes[classes == 0].reshape(-1, 4).astype(np.float32)

    def __call__(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-body keypoints of every person in one frame.

        Args:
            frame_rgb: uint8 [H, W, 3] RGB.

        Returns:
            keypoints float32 [N, 133, 2] (pixels) and scores float32 [N, 133]. With no person
            detected the whole frame is the person box, so N >= 1.
        """
        bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
        boxes = self.person_boxes(bgr)
        if len(boxes) == 0:
            boxes = np.array([[0, 0, bgr.shape[1], bgr.shape[0]]], np.float32)
        kpts, scores = self.pose(bgr, bboxes=list(boxes))
        return np.asarray(kpts, np.float32).reshape(-1, NUM_KEYPOINTS, 2), np.asarray(scores, np.float32).reshape(-1, NUM_KEYPOINTS)


@dataclass(frozen=True)
class OcclusionResult:
    """Result of :func:`hand_over_face_share`.

    Attributes:
        share: occluded sampled frames / sampled frames, in [0, 1].
        sampled: number of frames analysed.
        occluded_frames: indices (video frame numbers) of the occluded frames.
    """

    share: float
    sampled: int
    occluded_frames: tuple[int, ...]


def hand_over_face_share(clip: DecodedClip | bytes | str, estimator, fps: float, cfg: OcclusionConfig) -> OcclusionResult:
    """Share of sampled frames with a hand over the face.

    Args:
        clip: the decoded clip, or encoded bytes or a path (the 512x512 face crop) at ``fps``
            frames per second; frames 0, n, 2n, ... are sampled, ``n = fps / cfg.sample_fps``.
        estimator: callable ``frame_rgb -> (keypoints [N, 133, 2], scores [N, 133])``, e.g.
            :class:`WholeBodyEstimator`.

    Raises:
        MediaError: ``decode_failed`` (also when no frame decodes).
    """
    frames = as_decoded(clip).frames
    every = max(1, int(round(fps / cfg.sample_fps)))
    sampled, occluded = 0, []
    for index in range(0, len(frames), every):
        frame = frames[index]
        sampled += 1
        kpts, scores = estimator(frame)
        if frame_is_occluded(kpts, scores, (frame.shape[1], frame.shape[0]), cfg):
            occluded.append(index)
    return OcclusionResult(len(occluded) / sampled, sampled, tuple(occluded))


class OcclusionStage(FrameStage):
    """Rejects clips with a hand over the face in too many sampled frames."""

    name = "occlusion"
    config_class = OcclusionConfig
    writes_columns = ("hand_over_face_share",)
    resources = {"_estimator": None}  # a WholeBodyEstimator after setup

    def weights(self):
        """YOLOX-nano person detector and the DWPose whole-body model."""
        return [("person_yolox_nano", self.cfg.det_weights_path), ("dwpose_ll_ucoco_384", self.cfg.pose_weights_path)]

    def setup(self) -> None:
        """Load both ONNX models (onnxruntime's CUDA provider when ``num_gpus > 0``, else CPU).

        Raises:
            DeviceError: ``num_gpus > 0`` without CUDA, or an onnxruntime build without CUDA.
        """
        import onnxruntime as ort

        device = self.device()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceError(f"{self.name}.num_gpus: onnxruntime has no CUDAExecutionProvider here "
                              f"(install onnxruntime-gpu, or set {self.name}.num_gpus: 0)")
        self._estimator = WholeBodyEstimator(
            str(weights.resolve("person_yolox_nano", self.cfg.det_weights_path)),
            str(weights.resolve("dwpose_ll_ucoco_384", self.cfg.pose_weights_path)),
            det_input_px=self.cfg.det_input_px,
            pose_input_size=(self.cfg.pose_input_w_px, self.cfg.pose_input_h_px),
            person_min_score=self.cfg.person_min_score,
            device=device,
        )

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        """Fill ``hand_over_face_share``; raise ``MediaError('hand_over_face')`` over the threshold."""
        result = hand_over_face_share(clip, self._estimator, FPS, self.cfg)
        row["hand_over_face_share"] = round(result.share, 4)
        if result.share > self.cfg.max_hand_over_face_share:
            first = result.occluded_frames[0] if result.occluded_frames else -1
            raise MediaError("hand_over_face", f"hand over face in {result.share:.0%} of {result.sampled} samples (first at frame {first})")
        return [row]
