"""Scene detection's NVDEC stream: its thumbnails against PySceneDetect's own frames, its shots, and the
stage's fall-back to the CPU on machines without a CUDA device (this one in CI).

The GPU itself is not reachable here: the thumbnail arithmetic runs on the CPU's planes of the same
decoded frames (``device="cpu"``), which is the code NVDEC's frames go through on the GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vividhead.curation.stages.scene_split import SceneSplitConfig, SceneSplitStage, detect_shots
from vividhead.errors import MediaError

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")


def _frames(path, every: int):
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "NONE"
        for i, frame in enumerate(c.decode(video=0)):
            if i % every == 0:
                yield frame


@pytest.mark.parametrize(
    ("name", "every"),
    [
        ("talk_hdtf_aoc_512.mp4", 20),  # 512 x 512, colorspace unspecified: BT.601, OpenCV's 2x area path
        ("cuts_nature_3scenes.mp4", 60),  # 1280 x 720: OpenCV's fixed-point bilinear path
        ("talk_vertical_fullbody_demo1.mp4", 50),  # 1080 x 1920 portrait, BT.709 limited range
    ],
)
def test_thumbnails_equal_pyscenedetects_frames_bit_for_bit(video_dir, name, every):
    from vividhead.curation.nvdec import bgr_thumbnail, thumbnail_size

    checked = 0
    for frame in _frames(video_dir / name, every):
        size = thumbnail_size(frame.width, frame.height)
        ref = cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_LINEAR)
        y, u, v = (torch.from_dlpack(p) for p in frame.planes)
        out = bgr_thumbnail(y, u, v, size, frame.colorspace, frame.color_range).numpy()
        assert out.shape == ref.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, ref)
        checked += 1
    assert checked >= 4


def test_stream_splits_nv12_into_the_same_thumbnail(video_dir):
    """NVDEC hands out NV12 (interleaved chroma); the stream's own split of it gives the frame's
    thumbnail. A 4:4:4 frame is refused with a clear error rather than converted wrongly."""
    from vividhead.curation.nvdec import NvdecVideoStream, bgr_thumbnail

    path = video_dir / "talk_retalking_face3.mp4"  # 590 x 590: an odd chroma width (295)
    frame = next(_frames(path, 1))
    stream = NvdecVideoStream(path, device="cpu")
    y, u, v = (torch.from_dlpack(p) for p in frame.planes)
    want = bgr_thumbnail(y, u, v, stream.frame_size, frame.colorspace, frame.color_range).numpy()
    nv12 = frame.reformat(format="nv12")
    assert len(nv12.planes) == 2
    np.testing.assert_array_equal(stream._thumbnail(nv12), want)
    with pytest.raises(ValueError, match="4:2:0 chroma expected"):
        bgr_thumbnail(y, y, y, stream.frame_size)


def test_odd_thumbnail_rows_stay_within_one_level_of_opencv():
    """Outside the fixtures' sizes (a row of ``w * 3`` values not a multiple of 8) OpenCV's SIMD
    blocks are not reproduced exactly: at most 1 level apart, in under 1% of the values."""
    from vividhead.curation.nvdec import _cv_resize_linear

    img = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    ref = cv2.resize(img, (171, 101), interpolation=cv2.INTER_LINEAR)
    out = _cv_resize_linear(torch.from_numpy(img).to(torch.int32), (171, 101)).to(torch.uint8).numpy()
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_stream_thumbnails_give_the_cpu_shots(video_dir):
    path = video_dir / "cut_talk_derived_face2_face3.mp4"
    assert detect_shots(path, SceneSplitConfig(num_cpus=1), device="cpu") == detect_shots(path, SceneSplitConfig(num_cpus=1)) == [
        (0.0, 5.0), (5.0, 10.0)]


def test_corrupt_file_is_a_decode_failed_rejection_on_the_stream_too(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4000)
    with pytest.raises(MediaError, match="decode_failed"):
        detect_shots(corrupt, SceneSplitConfig(), device="cpu")


@pytest.fixture
def no_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the fall-back is not reachable here")


def test_no_cuda_device_is_the_machines_fault_not_the_files(video_dir, no_cuda):
    from vividhead.curation.nvdec import NvdecUnavailable

    with pytest.raises(NvdecUnavailable):
        detect_shots(video_dir / "talk_retalking_face5.mp4", SceneSplitConfig(), device="cuda")


def test_stage_falls_back_to_the_cpu_once_per_worker_with_the_same_shots(video_dir, caplog, no_cuda):
    path = str(video_dir / "cut_talk_derived_face2_face3.mp4")
    stage = SceneSplitStage(SceneSplitConfig(nvdec=True))
    with caplog.at_level(logging.WARNING, logger="vividhead.curation.stages.scene_split"):
        first, second = stage._detect(path), stage._detect(path)
    assert first == second == [(0.0, 5.0), (5.0, 10.0)]
    warnings = [r for r in caplog.records if "nvdec" in r.getMessage()]
    assert len(warnings) == 1 and "decoding on the CPU" in warnings[0].getMessage()
    stage.teardown()
    assert stage._nvdec is None  # a worker set up again tries NVDEC again
