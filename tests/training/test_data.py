"""Tests for training/data.py: ClipWindowDataset on shards written by the real curation pipeline."""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from vividhead.shard_format import (
    KEPT,
    MANIFEST_FILE,
    MP4,
    SAMPLES_PER_FRAME,
    SHARD_DIR,
    WAV,
    WAV2VEC,
    shard_index,
    shard_path,
    split_member,
)
from vividhead.training.data import (
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

#: Scores of stages the offline pipeline does not run (SyncNet, Whisper), written into the manifest
#: copy the filter tests read. talk_hdtf_aoc_512-0000 (81 frames) keeps null scores.
SCORES = {
    "talk_retalking_face2-0000": {"lse_c": 7.5, "lse_d": 7.0, "language": "en"},
    "talk_retalking_face2-0001": {"lse_c": 6.5, "lse_d": 7.4, "language": "en"},
    "talk_retalking_face3-0000": {"lse_c": 5.0, "lse_d": 8.5, "language": "en"},
    "talk_retalking_face5-0000": {"lse_c": 8.1, "lse_d": 6.9, "language": "de"},
}


@pytest.fixture(scope="module")
def out_dir(copy_curated) -> Path:
    """The session's curation output (5 kept clips of 41 to 81 frames in 2 or 3 shards, with stored
    wav2vec features), its manifest carrying :data:`SCORES`."""
    return copy_curated(SCORES)


@pytest.fixture(scope="module")
def kept(out_dir) -> dict[str, dict]:
    """{key: manifest row} of the kept clips."""
    rows = pq.read_table(out_dir / MANIFEST_FILE).to_pylist()
    return {r["key"]: r for r in rows if r["status"] == KEPT}


@pytest.fixture(scope="module")
def members(out_dir) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}}: what the writer put into the shards, read with tarfile."""
    out: dict[str, dict[str, bytes]] = {}
    for path in shard_urls(out_dir):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = split_member(m.name)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def shard_urls(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / SHARD_DIR).glob("*.tar"))


def keys_by_shard(kept: dict[str, dict], keys=None) -> dict[int, frozenset[str]]:
    by: dict[int, set[str]] = {}
    for k, r in kept.items():
        if keys is None or k in keys:
            by.setdefault(r["shard"], set()).add(k)
    return {s: frozenset(v) for s, v in sorted(by.items())}


def all_frames(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def key_frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as c:
        return sum(f.key_frame for f in c.decode(video=0))


# ---------------------------------------------------------------------------------------------


def test_sample_fields_shapes_dtypes_and_ranges(out_dir, kept, members):
    ds = ClipWindowDataset(shard_urls(out_dir), seed=1)
    samples = list(ds)
    assert sorted(s.meta["key"] for s in samples) == sorted(kept) and len(samples) == 5
    for s in samples:
        key = s.meta["key"]
        assert isinstance(s, ClipWindow)
        assert s.frames.shape == (33, 3, 512, 512) and s.frames.dtype == torch.float32
        assert s.reference.shape == (3, 512, 512) and s.reference.dtype == torch.float32
        assert -1.0 <= float(s.frames.min()) and float(s.frames.max()) <= 1.0
        assert s.audio.shape == (128000,) and s.audio.dtype == torch.float32
        assert s.num_motion_frames in (1, 5)
        stored = np.load(io.BytesIO(members[key][WAV2VEC]), allow_pickle=False)  # [N, L, D]
        assert s.wav2vec is not None and s.wav2vec.dtype == torch.float16
        assert s.wav2vec.shape == (33, *stored.shape[1:])
        start = s.meta["window_start_frame"]
        # The window's feature rows are exactly the stored rows of its frames (and a shift would differ).
        assert np.array_equal(s.wav2vec.numpy(), stored[start:start + 33])
        assert not np.array_equal(stored[start:start + 33], stored[start + 1:start + 34])
        assert not start <= s.meta["reference_frame"] < start + 33
        assert s.meta["num_frames"] == kept[key]["num_frames"] and s.meta["shard_url"].endswith(".tar")


def test_window_frames_equal_a_full_sequential_decode(members, tmp_path):
    # The writer's clips have a key frame every 25 frames; a re-encode of one with a single key frame
    # (GOP 250 > N) tests seeking when the only key frame is frame 0.
    clip = members["talk_retalking_face2-0000"][MP4]
    (tmp_path / "in.mp4").write_bytes(clip)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "in.mp4"), "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "250", "-pix_fmt", "yuv420p", str(tmp_path / "gop250.mp4")], check=True)
    single = (tmp_path / "gop250.mp4").read_bytes()
    assert key_frames(clip) > 1 and key_frames(single) == 1
    for mp4 in (clip, single, members["talk_hdtf_aoc_512-0000"][MP4]):
        ref = all_frames(mp4)
        n = len(ref)
        for wanted in ([0, 1, 2], [30, 31, 40], [n - 1, 3], [26, n - 1]):
            got = decode_frames(mp4, wanted, max_gap_frames=10)
            assert sorted(got) == sorted(set(wanted))
            for i in wanted:
                np.testing.assert_array_equal(got[i], ref[i])


def test_sample_pixels_and_audio_match_the_clip(out_dir, members):
    ds = ClipWindowDataset(shard_urls(out_dir), manifest=out_dir / MANIFEST_FILE,
                           clip_filter=ClipFilter(languages=("en",)), seed=3, shuffle_buffer=0)
    seen = set()
    for s in ds:
        key = s.meta["key"]
        seen.add(key)
        ref = all_frames(members[key][MP4])
        start = s.meta["window_start_frame"]
        # x / 127.5 - 1 is exactly invertible for uint8 x.
        frames_u8 = ((s.frames + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(frames_u8, np.stack(ref[start:start + 33]))
        ref_u8 = ((s.reference + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ref_u8, ref[s.meta["reference_frame"]])
        assert float(s.frames[0, 0, 0, 0]) == np.float32(ref[start][0, 0, 0]) / np.float32(127.5) - np.float32(1)
        wav = soundfile.read(io.BytesIO(members[key][WAV]), dtype="float32")[0]
        end = SAMPLES_PER_FRAME * (start + 33)
        pad = 128000 - end  # all curated clips are shorter than 8 s
        assert s.meta["audio_pad_samples"] == pad
        assert torch.count_nonzero(s.audio[:pad]) == 0
        np.testing.assert_array_equal(s.audio[pad:].numpy(), wav[:end])
    assert seen == {k for k, v in SCORES.items() if v["language"] == "en"}


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


def test_manifest_filter_selects_clips_and_skips_shards(out_dir, kept):
    manifest = out_dir / MANIFEST_FILE
    sel = select_clips(manifest, ClipFilter(min_lse_c=7.0))
    assert sel == keys_by_shard(kept, {"talk_retalking_face2-0000", "talk_retalking_face5-0000"})
    sel = select_clips(manifest, ClipFilter(languages=("de",)))
    german = kept["talk_retalking_face5-0000"]["shard"]
    assert sel == {german: frozenset({"talk_retalking_face5-0000"})}
    # Shards without a German clip are never opened: their URLs point at missing files.
    urls = [u if shard_index(u) == german else str(Path(u).parent / "does-not-exist" / Path(u).name)
            for u in shard_urls(out_dir)]
    assert len(urls) >= 2
    ds = ClipWindowDataset(urls, manifest=manifest, clip_filter=ClipFilter(languages=("de",)))
    assert ds.num_clips == 1 and ds.urls == [u for u in urls if shard_index(u) == german]
    assert [s.meta["key"] for s in ds] == ["talk_retalking_face5-0000"]
    # Null scores fail a check on that score; rejected rows are never selected.
    sel = select_clips(manifest, ClipFilter(max_lse_d=100.0))
    assert sel == keys_by_shard(kept, set(SCORES))
    with pytest.raises(ValueError, match="selects no clip"):
        ClipWindowDataset(shard_urls(out_dir), manifest=manifest, clip_filter=ClipFilter(min_duration_s=100.0))
    with pytest.raises(ValueError, match="needs a manifest"):
        ClipWindowDataset(shard_urls(out_dir), clip_filter=ClipFilter(min_lse_c=1.0))


def test_window_longer_than_clip_drops_it_via_manifest(out_dir, kept):
    # face2's two clips have 41 frames: a 41-frame window leaves no reference frame, so they are not selected.
    ds = ClipWindowDataset.from_output_dir(str(out_dir), num_frames=41, num_motion_frames=5, shuffle_buffer=0)
    keys = sorted(s.meta["key"] for s in ds)
    assert keys == sorted(k for k, r in kept.items() if r["num_frames"] > 41)
    assert keys == ["talk_hdtf_aoc_512-0000", "talk_retalking_face3-0000", "talk_retalking_face5-0000"]


def test_split_by_rank_is_disjoint_and_complete(out_dir, kept):
    urls = shard_urls(out_dir)
    seen = []
    for rank in range(2):
        ds = ClipWindowDataset(urls, rank=rank, world_size=2, seed=5)
        seen.append({s["__key__"] for s in ds.pipeline()})  # raw samples: no decoding needed
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(kept)


def test_dataloader_two_workers_yield_each_clip_once(out_dir, kept, members):
    ds = ClipWindowDataset(shard_urls(out_dir), num_frames=9, num_motion_frames=5, seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clip_windows)
    batches = list(loader)
    keys = [m["key"] for b in batches for m in b.meta]
    assert sorted(keys) == sorted(kept)
    b = batches[0]  # worker 0's shards hold at least 2 clips
    features = np.load(io.BytesIO(members[keys[0]][WAV2VEC]), allow_pickle=False).shape[1:]
    assert b.frames.shape == (2, 9, 3, 512, 512) and b.num_motion_frames.dtype == torch.int64
    assert b.audio.shape == (2, 128000) and b.wav2vec.shape == (2, 9, *features)


def _dataset(out_dir, seed, epoch):
    ds = ClipWindowDataset(shard_urls(out_dir), num_frames=5, num_motion_frames=1, seed=seed, shuffle_buffer=4)
    ds.set_epoch(epoch)
    return ds


def test_shuffle_order_is_deterministic_per_seed_and_epoch(out_dir):
    def order(seed, epoch):
        return [s["__key__"] for s in _dataset(out_dir, seed, epoch).pipeline()]

    a = order(0, 0)
    assert a == order(0, 0) and len(a) == 5
    others = [order(0, e) for e in range(1, 4)] + [order(s, 0) for s in range(1, 4)]
    assert all(sorted(o) == sorted(a) for o in others)
    assert any(o != a for o in others)


def test_windows_are_deterministic_per_seed(out_dir):
    def windows(seed):
        return [(s.meta["key"], s.meta["window_start_frame"], s.meta["reference_frame"], s.num_motion_frames)
                for s in _dataset(out_dir, seed, 0)]

    assert windows(0) == windows(0)


def test_resampled_stream_is_endless(out_dir, kept):
    ds = ClipWindowDataset(shard_urls(out_dir), resampled=True, num_frames=5, num_motion_frames=1, shuffle_buffer=0)
    it = iter(ds.pipeline())
    keys = [next(it)["__key__"] for _ in range(100)]  # 20 passes over the 5 clips, still going
    assert set(keys) == set(kept)
    assert next(iter(ds)).frames.shape == (5, 3, 512, 512)


def test_brace_pattern_and_dtype(out_dir):
    pattern = str(out_dir / SHARD_DIR / "{00000..00001}.tar")
    ds = ClipWindowDataset(pattern, num_frames=5, num_motion_frames=1, dtype=torch.bfloat16, shuffle_buffer=0)
    assert len(ds.urls) == 2
    s = next(iter(ds))
    assert s.frames.dtype == torch.bfloat16 and s.reference.dtype == torch.bfloat16


def test_uint8_frames_convert_like_the_float_output(out_dir):
    from vividhead.training.data import to_unit_range

    kw = dict(num_frames=5, num_motion_frames=1, shuffle_buffer=0, seed=4)
    url = [str(out_dir / SHARD_DIR / "00001.tar")]
    as_u8 = next(iter(ClipWindowDataset(url, dtype=torch.uint8, **kw)))
    as_f32 = next(iter(ClipWindowDataset(url, **kw)))
    assert as_u8.frames.dtype == torch.uint8 and as_u8.frames.shape == (5, 3, 512, 512)
    assert torch.equal(to_unit_range(as_u8.frames), as_f32.frames)
    assert torch.equal(to_unit_range(as_u8.reference), as_f32.reference)


def test_missing_wav2vec_gives_none(members, tmp_path):
    from vividhead.curation.stages.write import write_tar

    key = "talk_retalking_face3-0000"
    write_tar(str(tmp_path / "00000.tar"), [(key, {e: b for e, b in members[key].items() if e != WAV2VEC})])
    s = next(iter(ClipWindowDataset([str(tmp_path / "00000.tar")], num_frames=5, num_motion_frames=1)))
    assert s.meta["key"] == key and s.wav2vec is None
    assert collate_clip_windows([s, s]).wav2vec is None


def test_hf_datasets_loads_the_same_shards(out_dir, kept, members, tmp_path):
    import datasets

    ds = load_hf_dataset(shard_urls(out_dir), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 5
    key = "talk_retalking_face2-0000"
    row = next(r for r in ds if r["__key__"] == key)
    assert row["json"]["num_frames"] == 41 and row["json"]["crop_box"] == kept[key]["crop_box"]
    assert row["json"]["lse_c"] is None  # SyncNet did not run: null in <key>.json
    # Keys that are null in every sample get their manifest column's type.
    assert ds.features["json"]["language"] == datasets.Value("string")
    assert ds.features["json"]["lse_c"] == datasets.Value("float64")
    assert isinstance(row["wav"], bytes) and row["mp4"]["bytes"][4:8] == b"ftyp"
    stored = np.load(io.BytesIO(members[key][WAV2VEC]), allow_pickle=False)
    np.testing.assert_array_equal(np.asarray(row["wav2vec.npy"], dtype=np.float16), stored)


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


def test_streams_from_s3(out_dir, kept, s3_endpoint, monkeypatch):
    import s3fs

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "test", "secret": "test"}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("vivid-test")
    fs.put(str(out_dir / SHARD_DIR) + "/", f"vivid-test/out/{SHARD_DIR}/", recursive=True)
    fs.put(str(out_dir / MANIFEST_FILE), f"vivid-test/out/{MANIFEST_FILE}")
    ds = ClipWindowDataset.from_output_dir("s3://vivid-test/out", storage_options=opts,
                                           clip_filter=ClipFilter(min_lse_c=6.0), num_frames=9, num_motion_frames=5)
    want = {"talk_retalking_face2-0000", "talk_retalking_face2-0001", "talk_retalking_face5-0000"}
    assert ds.urls == [f"s3://vivid-test/out/{shard_path(s)}" for s in keys_by_shard(kept, want)]
    assert sorted(s.meta["key"] for s in ds) == sorted(want)


def test_memory_filesystem_goes_through_fsspec(out_dir, kept):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/vivid/shards/00001.tar", (out_dir / shard_path(1)).read_bytes())
    ds = ClipWindowDataset("memory://vivid/shards/00001.tar", num_frames=5, num_motion_frames=1, shuffle_buffer=0)
    assert sorted(s.meta["key"] for s in ds) == sorted(keys_by_shard(kept)[1])


def test_streams_from_hub_when_online():
    repo = os.environ.get("VIVIDHEAD_HUB_TEST_DATASET")
    if not repo:
        pytest.skip("set VIVIDHEAD_HUB_TEST_DATASET=ORG/NAME (a published vividhead dataset) to test hf:// streaming")
    ds = ClipWindowDataset(f"hf://datasets/{repo}/shards/00000.tar", num_frames=9, num_motion_frames=5)
    assert next(iter(ds)).frames.shape[0] == 9


@pytest.mark.parametrize(("field", "value", "want"), [("fps", 20.0, "25"), ("sample_rate", 22050, "16000")])
def test_sample_json_off_the_contract_is_one_line_naming_sample_and_values(members, tmp_path, field, value, want):
    """A shard whose <key>.json records another frame or sample rate than the shard contract fails
    with one line naming the sample and both values, even with a skipping handler."""
    import json

    import webdataset as wds

    from vividhead.curation.stages.write import write_tar
    from vividhead.errors import UserError
    from vividhead.shard_format import JSON
    from vividhead.training.data import ShardContractError

    key = "talk_retalking_face3-0000"
    meta = json.loads(members[key][JSON])
    assert meta["fps"] == 25 and meta["sample_rate"] == 16000  # what the writer records
    meta[field] = value
    tar = str(tmp_path / "00000.tar")
    write_tar(tar, [(key, {**members[key], JSON: json.dumps(meta).encode()})])
    ds = ClipWindowDataset([tar], num_frames=5, num_motion_frames=1, handler=wds.warn_and_continue)
    with pytest.raises(ShardContractError) as exc:
        next(iter(ds))
    msg = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in msg and len(exc.value.args) == 1
    assert key in msg and f"{field} {value:g}" in msg and want in msg
