from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest

from vividhead.curation.media import frame_at
from vividhead.curation.stages.face import CropBox, FaceConfig, plan_crop, select_face
from vividhead.curation.stages.normalize import NormalizeConfig, normalize_clip
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceBox, FaceDetector


@pytest.fixture(scope="module")
def detector(weights_dir):
    with FaceDetector(weights_dir / "face_mediapipe_detector.tflite", 0.5) as det:
        yield det


def test_detector_on_real_images(detector, image_dir):
    img = cv2.cvtColor(cv2.imread(str(image_dir / "face_frontal_people0.png")), cv2.COLOR_BGR2RGB)
    faces = detector.detect(img)
    assert len(faces) == 1 and faces[0].score > 0.8 and 100 < faces[0].size < 300
    tiny = cv2.cvtColor(cv2.imread(str(image_dir / "face_single_podium_128.png")), cv2.COLOR_BGR2RGB)
    with pytest.raises(MediaError) as err:
        select_face(detector.detect(tiny), FaceConfig())
    assert err.value.reason in ("no_face", "face_too_small")


def test_select_face_rules():
    big, small, rival = FaceBox(0, 0, 200, 200, 0.9), FaceBox(300, 0, 330, 30, 0.9), FaceBox(300, 0, 450, 150, 0.9)
    assert select_face([big, small], FaceConfig()) is big
    for faces, reason in [([], "no_face"), ([big, rival], "multiple_faces"), ([small], "face_too_small")]:
        with pytest.raises(MediaError) as err:
            select_face(faces, FaceConfig())
        assert err.value.reason == reason


def test_plan_crop_centres_shifts_pads_and_rejects():
    cfg = FaceConfig(face_share=0.5)
    box = plan_crop(FaceBox(400, 300, 600, 500, 0.9), 1920, 1080, cfg)
    assert (box.size, box.pad_px) == (400, 0) and box.as_list() == [300, 200, 700, 600]
    shifted = plan_crop(FaceBox(0, 300, 200, 500, 0.9), 1920, 1080, cfg)
    assert shifted.x0 == 0 and shifted.pad_px == 0
    padded = plan_crop(FaceBox(10, 10, 230, 230, 0.9), 420, 420, cfg)  # 440 px crop in a 420 px frame
    assert padded.pad_px == 10 and padded.size == 440 and padded.as_list() == [-10, -10, 430, 430]
    with pytest.raises(MediaError) as err:
        plan_crop(FaceBox(10, 10, 230, 230, 0.9), 420, 420, FaceConfig(face_share=0.5, allow_pad=False))
    assert err.value.reason == "crop_out_of_frame"
    with pytest.raises(MediaError):
        plan_crop(FaceBox(0, 0, 300, 300, 0.9), 320, 320, cfg)  # would need 140 px of padding


def test_face_then_normalize_is_one_512_encode_with_the_face_centred(detector, video_dir):
    src = video_dir / "talk_vertical_fullbody_demo1.mp4"
    frame = frame_at(src, 0.0, 25.0)
    assert frame.shape == (1920, 1080, 3)  # display-rotated portrait frame
    face = select_face(detector.detect(frame), FaceConfig())
    box = plan_crop(face, frame.shape[1], frame.shape[0], FaceConfig())
    clip = normalize_clip(src, 0.0, 25, NormalizeConfig(), box, (frame.shape[1], frame.shape[0]))
    out = clip.video
    with av.open(io.BytesIO(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (512, 512, 3)
    cx, cy = detector.detect(frames[0])[0].center
    assert abs(cx - 256) < 40 and abs(cy - 256) < 40
    # The frame the face stage looked at is the clip's first frame, cropped.
    x0, y0, x1, y1 = box.as_list()
    ref = cv2.resize(frame[y0:y1, x0:x1], (512, 512), interpolation=cv2.INTER_LANCZOS4).astype(float)
    assert np.abs(frames[0].astype(float) - ref).mean() < 6.0


def test_normalize_pads_a_crop_that_leaves_the_frame(video_dir):
    box = CropBox(-20, -20, 440, 20)  # 20 px of black on the top and left of a 420 px frame
    clip = normalize_clip(video_dir / "talk_livep_outdoor_d20.mp4", 0.0, 5, NormalizeConfig(), box, (480, 480))
    with av.open(io.BytesIO(clip.video)) as c:
        frame = next(iter(c.decode(video=0))).to_ndarray(format="rgb24")
    assert frame.shape == (512, 512, 3)
    assert frame[:15, :15].max() < 30 and frame[200:300, 200:300].mean() > 30
