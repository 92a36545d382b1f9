"""Tests for training/data.py: ClipWindowDataset on real fixture clips in curation shard format."""

from __future__ import annotations

import io
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from vividhead.training.data import (
    SAMPLES_PER_FRAME,
    ClipFilter,
    ClipWindow,
    ClipWindowDataset,
    collate_clip_windows,
    decode_frames,
    load_hf_dataset,
    plan_window,
    read_audio_context,
    select_clips,
)
from vividhead.training.shard_builder import EncodedClip, encode_clip, write_output

FIXTURES = Path(os.environ.get("VIVIDHEAD_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
VIDEO = FIXTURES / "media" / "video"

# (fixture video, max frames, GOP, scores). face3 uses a 10 s GOP (one key frame) to test seeking.
CLIPS = [
    ("talk_retalking_face2.mp4", 45, 25, {"lse_c": 7.5, "lse_d": 7.0, "language": "en", "speech_share": 0.8}),
    ("talk_retalking_face3.mp4", 45, 250, {"lse_c": 5.0, "lse_d": 8.5, "language": "en", "speech_share": 0.9}),
    ("talk_retalking_face5.mp4", 45, 25, {"lse_c": 8.1, "lse_d": 6.9, "language": "de", "speech_share": 0.7}),
    ("talk_hdtf_aoc_512.mp4", 37, 25, {"lse_c": None, "lse_d": None, "language": None, "speech_share": 0.6}),
]
REJECTED = [
    {"input_id": "cuts_nature_3scenes", "source_id": "cuts_nature_3scenes", "stage": "face", "reason": "no_face"},
    {"input_id": "talk_retalking_face4", "source_id": "talk_retalking_face4", "clip_id": "talk_retalking_face4-0000",
     "stage": "lipsync", "reason": "lse_c_below_min", "lse_c": 1.2, "duration_s": 6.6},
]


@pytest.fixture(scope="module")
def encoded() -> list[EncodedClip]:
    if shutil.which("ffmpeg") is None or not VIDEO.is_dir():
        pytest.skip(f"needs ffmpeg and the shared fixtures at {VIDEO}")
    out = []
    for name, max_frames, gop, scores in CLIPS:
        mp4, wav, n = encode_clip(VIDEO / name, max_frames=max_frames, gop=gop)
        out.append(EncodedClip(name.removesuffix(".mp4"), mp4, wav, n, scores))
    return out


@pytest.fixture(scope="module")
def out_dir(encoded, tmp_path_factory) -> Path:
    """Two shards of two clips each (shard 0: face2, face3; shard 1: face5, aoc) with wav2vec."""
    return write_output(tmp_path_factory.mktemp("out"), encoded, clips_per_shard=2, rejected=REJECTED)


def shard_urls(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / "shards").glob("*.tar"))


def all_frames(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# ---------------------------------------------------------------------------------------------


def test_encoded_clips_follow_the_contract(encoded):
    for clip in encoded:
        assert (clip.num_frames - 1) % 4 == 0
        with av.open(io.BytesIO(clip.mp4)) as c:
            s = c.streams.video[0]
            assert (s.width, s.height, s.average_rate) == (512, 512, 25)
        audio, sr = soundfile.read(io.BytesIO(clip.wav), dtype="int16")
        assert sr == 16000 and audio.ndim == 1 and len(audio) == 640 * clip.num_frames


def test_sample_fields_shapes_dtypes_and_ranges(out_dir):
    ds = ClipWindowDataset(shard_urls(out_dir), seed=1)
    samples = list(ds)
    assert sorted(s.meta["key"] for s in samples) == [
        "talk_hdtf_aoc_512-0000", "talk_retalking_face2-0000", "talk_retalking_face3-0000", "talk_retalking_face5-0000"]
    for s in samples:
        assert isinstance(s, ClipWindow)
        assert s.frames.shape == (33, 3, 512, 512) and s.frames.dtype == torch.float32
        assert s.reference.shape == (3, 512, 512) and s.reference.dtype == torch.float32
        assert -1.0 <= float(s.frames.min()) and float(s.frames.max()) <= 1.0
        assert s.audio.shape == (128000,) and s.audio.dtype == torch.float32
        assert s.num_motion_frames in (1, 5)
        assert s.wav2vec is not None and s.wav2vec.shape == (33, 2, 8) and s.wav2vec.dtype == torch.float16
        start = s.meta["window_start_frame"]
        # Row t of the stored features holds t: the window's rows are exactly its frames.
        assert s.wav2vec[:, 0, 0].tolist() == list(range(start, start + 33))
        assert not start <= s.meta["reference_frame"] < start + 33
        assert s.meta["num_frames"] in (37, 45) and s.meta["shard_url"].endswith(".tar")


def test_window_frames_equal_a_full_sequential_decode(encoded):
    # face3 has a single key frame (GOP 250 > N); face2 a key frame every 25 frames.
    for clip in encoded[:2]:
        ref = all_frames(clip.mp4)
        assert len(ref) == clip.num_frames
        for wanted in ([0, 1, 2], [30, 31, 40], [clip.num_frames - 1, 3], [26, 44]):
            got = decode_frames(clip.mp4, wanted, max_gap_frames=10)
            assert sorted(got) == sorted(wanted)
            for i in wanted:
                np.testing.assert_array_equal(got[i], ref[i])


def test_sample_pixels_and_audio_match_the_clip(encoded, out_dir):
    ds = ClipWindowDataset([str(out_dir / "shards" / "00000.tar")], manifest=out_dir / "manifest.parquet",
                           clip_filter=ClipFilter(languages=("en",)), seed=3, shuffle_buffer=0)
    by_key = {c.source_id + "-0000": c for c in encoded}
    for s in ds:
        clip = by_key[s.meta["key"]]
        ref = all_frames(clip.mp4)
        start = s.meta["window_start_frame"]
        # x / 127.5 - 1 is exactly invertible for uint8 x.
        frames_u8 = ((s.frames + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(frames_u8, np.stack(ref[start:start + 33]))
        ref_u8 = ((s.reference + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ref_u8, ref[s.meta["reference_frame"]])
        assert float(s.frames[0, 0, 0, 0]) == np.float32(ref[start][0, 0, 0]) / np.float32(127.5) - np.float32(1)
        wav = soundfile.read(io.BytesIO(clip.wav), dtype="float32")[0]
        end = SAMPLES_PER_FRAME * (start + 33)
        pad = 128000 - end  # all fixture clips are shorter than 8 s
        assert s.meta["audio_pad_samples"] == pad
        assert torch.count_nonzero(s.audio[:pad]) == 0
        np.testing.assert_array_equal(s.audio[pad:].numpy(), wav[:end])


def test_read_audio_context_without_padding():
    samples = (np.arange(200_000) % 30000).astype(np.int16)
    buf = io.BytesIO()
    soundfile.write(buf, samples, 16000, subtype="PCM_16", format="WAV")
    audio, pad = read_audio_context(buf.getvalue(), end_sample=190_000, num_samples=128_000)
    assert pad == 0
    np.testing.assert_array_equal(audio.numpy(), samples[62_000:190_000] / 32768.0)
    with pytest.raises(ValueError, match="window needs"):
        read_audio_context(buf.getvalue(), end_sample=200_001, num_samples=128_000)


def test_plan_window_bounds_and_cold_start_rate():
    rng = random.Random(0)
    plans = [plan_window(81, rng) for _ in range(4000)]
    assert all(0 <= p.start <= 81 - 33 for p in plans)
    assert all(0 <= p.reference < 81 and not p.start <= p.reference < p.start + 33 for p in plans)
    assert {p.start for p in plans} == set(range(49))
    counts = Counter(p.num_motion_frames for p in plans)
    assert set(counts) == {1, 5} and 0.08 < counts[1] / len(plans) < 0.12
    assert plan_window(34, random.Random(0), cold_start_prob=0.0).num_motion_frames == 5
    with pytest.raises(ValueError, match="more than the window"):
        plan_window(33, rng)


def test_manifest_filter_selects_clips_and_skips_shards(out_dir):
    sel = select_clips(out_dir / "manifest.parquet", ClipFilter(min_lse_c=7.0))
    assert sel == {0: frozenset({"talk_retalking_face2-0000"}), 1: frozenset({"talk_retalking_face5-0000"})}
    sel = select_clips(out_dir / "manifest.parquet", ClipFilter(languages=("de",)))
    assert sel == {1: frozenset({"talk_retalking_face5-0000"})}
    # Shard 0 selects nothing for German, so a missing shard-0 file is never opened.
    urls = [str(out_dir / "shards" / "does-not-exist" / "00000.tar"), str(out_dir / "shards" / "00001.tar")]
    ds = ClipWindowDataset(urls, manifest=out_dir / "manifest.parquet", clip_filter=ClipFilter(languages=("de",)))
    assert ds.num_clips == 1 and ds.urls == urls[1:]
    assert [s.meta["key"] for s in ds] == ["talk_retalking_face5-0000"]
    # Null scores fail a check on that score; rejected rows are never selected.
    sel = select_clips(out_dir / "manifest.parquet", ClipFilter(max_lse_d=100.0))
    assert "talk_hdtf_aoc_512-0000" not in sel.get(1, ()) and sum(map(len, sel.values())) == 3
    with pytest.raises(ValueError, match="selects no clip"):
        ClipWindowDataset(shard_urls(out_dir), manifest=out_dir / "manifest.parquet",
                          clip_filter=ClipFilter(min_duration_s=100.0))
    with pytest.raises(ValueError, match="needs a manifest"):
        ClipWindowDataset(shard_urls(out_dir), clip_filter=ClipFilter(min_lse_c=1.0))


def test_window_longer_than_clip_drops_it_via_manifest(out_dir):
    # aoc has 37 frames: a 37-frame window leaves no reference frame, so it is not selected.
    ds = ClipWindowDataset.from_output_dir(str(out_dir), num_frames=37, num_motion_frames=5, shuffle_buffer=0)
    keys = sorted(s.meta["key"] for s in ds)
    assert keys == ["talk_retalking_face2-0000", "talk_retalking_face3-0000", "talk_retalking_face5-0000"]


def test_split_by_rank_is_disjoint_and_complete(out_dir):
    urls = shard_urls(out_dir)
    seen = []
    for rank in range(2):
        ds = ClipWindowDataset(urls, rank=rank, world_size=2, seed=5)
        seen.append({s["__key__"] for s in ds.pipeline()})  # raw samples: no decoding needed
    assert len(seen[0]) == len(seen[1]) == 2 and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 4


def test_dataloader_two_workers_yield_each_clip_once(out_dir):
    ds = ClipWindowDataset(shard_urls(out_dir), num_frames=9, num_motion_frames=5, seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clip_windows)
    batches = list(loader)
    keys = [m["key"] for b in batches for m in b.meta]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 4
    b = batches[0]
    assert b.frames.shape == (2, 9, 3, 512, 512) and b.num_motion_frames.dtype == torch.int64
    assert b.audio.shape == (2, 128000) and b.wav2vec.shape == (2, 9, 2, 8)


def _dataset(out_dir, seed, epoch):
    ds = ClipWindowDataset(shard_urls(out_dir), num_frames=5, num_motion_frames=1, seed=seed, shuffle_buffer=4)
    ds.set_epoch(epoch)
    return ds


def test_shuffle_order_is_deterministic_per_seed_and_epoch(out_dir):
    def order(seed, epoch):
        return [s["__key__"] for s in _dataset(out_dir, seed, epoch).pipeline()]

    a = order(0, 0)
    assert a == order(0, 0) and len(a) == 4
    others = [order(0, e) for e in range(1, 4)] + [order(s, 0) for s in range(1, 4)]
    assert all(sorted(o) == sorted(a) for o in others)
    assert any(o != a for o in others)


def test_windows_are_deterministic_per_seed(out_dir):
    def windows(seed):
        return [(s.meta["key"], s.meta["window_start_frame"], s.meta["reference_frame"], s.num_motion_frames)
                for s in _dataset(out_dir, seed, 0)]

    assert windows(0) == windows(0)


def test_resampled_stream_is_endless(out_dir):
    ds = ClipWindowDataset(shard_urls(out_dir), resampled=True, num_frames=5, num_motion_frames=1, shuffle_buffer=0)
    it = iter(ds.pipeline())
    keys = [next(it)["__key__"] for _ in range(20)]  # 5 passes over the 4 clips, still going
    assert set(keys) == {c[0].removesuffix(".mp4") + "-0000" for c in CLIPS}
    assert next(iter(ds)).frames.shape == (5, 3, 512, 512)


def test_brace_pattern_and_dtype(out_dir):
    pattern = str(out_dir / "shards" / "{00000..00001}.tar")
    ds = ClipWindowDataset(pattern, num_frames=5, num_motion_frames=1, dtype=torch.bfloat16, shuffle_buffer=0)
    assert len(ds.urls) == 2
    s = next(iter(ds))
    assert s.frames.dtype == torch.bfloat16 and s.reference.dtype == torch.bfloat16


def test_uint8_frames_convert_like_the_float_output(out_dir):
    from vividhead.training.data import to_unit_range

    kw = dict(num_frames=5, num_motion_frames=1, shuffle_buffer=0, seed=4)
    url = [str(out_dir / "shards" / "00001.tar")]
    as_u8 = next(iter(ClipWindowDataset(url, dtype=torch.uint8, **kw)))
    as_f32 = next(iter(ClipWindowDataset(url, **kw)))
    assert as_u8.frames.dtype == torch.uint8 and as_u8.frames.shape == (5, 3, 512, 512)
    assert torch.equal(to_unit_range(as_u8.frames), as_f32.frames)
    assert torch.equal(to_unit_range(as_u8.reference), as_f32.reference)


def test_missing_wav2vec_gives_none(encoded, tmp_path):
    out = write_output(tmp_path / "out", encoded[:1], wav2vec_shape=None)
    s = next(iter(ClipWindowDataset(shard_urls(out), num_frames=5, num_motion_frames=1)))
    assert s.wav2vec is None
    assert collate_clip_windows([s, s]).wav2vec is None


def test_hf_datasets_loads_the_same_shards(out_dir, tmp_path):
    ds = load_hf_dataset(shard_urls(out_dir), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4
    row = next(r for r in ds if r["__key__"] == "talk_retalking_face2-0000")
    assert row["json"]["num_frames"] == 45 and row["json"]["lse_c"] == 7.5
    assert isinstance(row["wav"], bytes) and row["mp4"]["bytes"][4:8] == b"ftyp"
    assert np.asarray(row["wav2vec.npy"]).shape == (45, 2, 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_streams_from_s3(out_dir, s3_endpoint, monkeypatch):
    import s3fs

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "test", "secret": "test"}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("vivid-test")
    fs.put(str(out_dir / "shards") + "/", "vivid-test/out/shards/", recursive=True)
    fs.put(str(out_dir / "manifest.parquet"), "vivid-test/out/manifest.parquet")
    ds = ClipWindowDataset.from_output_dir("s3://vivid-test/out", storage_options=opts,
                                           clip_filter=ClipFilter(min_lse_c=6.0), num_frames=9, num_motion_frames=5)
    assert ds.urls == ["s3://vivid-test/out/shards/00000.tar", "s3://vivid-test/out/shards/00001.tar"]
    keys = sorted(s.meta["key"] for s in ds)
    assert keys == ["talk_retalking_face2-0000", "talk_retalking_face5-0000"]


def test_memory_filesystem_goes_through_fsspec(out_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/vivid/shards/00001.tar", (out_dir / "shards" / "00001.tar").read_bytes())
    ds = ClipWindowDataset("memory://vivid/shards/00001.tar", num_frames=5, num_motion_frames=1, shuffle_buffer=0)
    assert sorted(s.meta["key"] for s in ds) == ["talk_hdtf_aoc_512-0000", "talk_retalking_face5-0000"]


def test_streams_from_hub_when_online():
    repo = os.environ.get("VIVIDHEAD_HUB_TEST_DATASET")
    if not repo:
        pytest.skip("set VIVIDHEAD_HUB_TEST_DATASET=ORG/NAME (a published vividhead dataset) to test hf:// streaming")
    ds = ClipWindowDataset(f"hf://datasets/{repo}/shards/00000.tar", num_frames=9, num_motion_frames=5)
    assert next(iter(ds)).frames.shape[0] == 9
