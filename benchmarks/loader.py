"""Benchmark the training data loader (training/data.py) against the raw decode bound.

Measures, on the same shards:
  * decode bound (seek): one process, clip bytes already in memory, PyAV seek + decode of only the
    window's 33 frames and the reference frame to RGB uint8 (``decode_frames``) -> windows/s;
  * decode from start: the same frames decoded from frame 0 (what a loader without seeking does);
  * ClipWindowDataset in the main process (num_workers=0) and through a DataLoader with 1 and 2
    workers (batch size 1, resampled endless stream, float32 [33, 3, 512, 512] frames + audio).

Shards come from ``--out`` (any curation output) or are curated here from fixture videos by the real
pipeline (``run_curation``: the first ``--max-frames`` frames of each video, face crop with a key
frame every ``--gop`` frames, optional filters off).

Usage (from the repo root):
    .venv/bin/python benchmarks/loader.py                       # curates shards from ../shared/fixtures
    .venv/bin/python benchmarks/loader.py --out OUT --samples 60 --workers 0 1 2 4
    .venv/bin/python benchmarks/loader.py --build-only DIR      # just curate the benchmark shards

Prints one JSON object (also written with --json PATH).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from vividhead.shard_format import FPS, JSON, KEPT, MP4, SHARD_GLOB, WAV2VEC, is_valid_frame_count  # noqa: E402
from vividhead.training.data import ClipWindowDataset, collate_clip_windows, decode_frames, plan_window  # noqa: E402

FIXTURE_VIDEOS = ("talk_retalking_face2.mp4", "talk_retalking_face3.mp4", "talk_retalking_face5.mp4",
                  "talk_hdtf_aoc_512.mp4", "talk_hdtf_katiehill_512.mp4", "talk_retalking_face1.mp4")


def build(out: Path, fixtures: Path, max_frames: int, gop: int, wav2vec: str | None,
          videos: tuple[str, ...] = FIXTURE_VIDEOS) -> Path:
    """Curate fixture talking-head videos into ``out`` with the real pipeline (shards of 2 clips).

    Each video's first ``max_frames`` frames (4k+1) become one clip: ``probe``, ``dedup``,
    ``scene_split`` (the given span), ``normalize``, ``face`` (512x512 crop, a key frame every
    ``gop`` frames) and ``write``; the filters and other annotations are off. ``wav2vec``: a local
    transformers Wav2Vec2 folder for ``audio_features``, ``"random"`` for a randomly initialised
    wav2vec2-base (the real feature shape [N, 12, 768], meaningless values), or None for no features.
    """
    from vividhead.curation.config import SECTIONS, config_from_dict
    from vividhead.curation.pipeline import run_curation

    if not is_valid_frame_count(max_frames):
        raise SystemExit(f"--max-frames must be 4k+1, got {max_frames}")
    out.mkdir(parents=True, exist_ok=True)
    seconds = max_frames / FPS
    inputs = out.parent / f"{out.name}-inputs.csv"
    with inputs.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "source_id", "start_s", "end_s"])
        for name in videos:
            writer.writerow([str(fixtures / "media" / "video" / name), name.removesuffix(".mp4"), 0.0, seconds])
    run = ("run", "probe", "dedup", "scene_split", "normalize", "face", "audio_features", "write")
    raw: dict = {name: {"enabled": False} for name in SECTIONS if name not in run}
    raw["scene_split"] = {"detector": "none", "min_clip_s": min(1.0, seconds), "max_clip_s": seconds + 1.0}
    raw["normalize"] = {"keyframe_interval_frames": gop}
    raw["write"] = {"samples_per_shard": 2}
    if wav2vec is None:
        raw["audio_features"] = {"enabled": False}
    else:
        if wav2vec == "random":
            from transformers import Wav2Vec2Config, Wav2Vec2Model

            torch.manual_seed(0)
            wav2vec = str(out.parent / f"{out.name}-wav2vec-random")
            Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(wav2vec)
        raw["audio_features"] = {"weights_path": wav2vec}
    result = run_curation([str(inputs)], str(out), config_from_dict(raw))
    rejected = [(r["source_id"], r["stage"], r["reason"]) for r in result.manifest.to_pylist() if r["status"] != KEPT]
    if rejected:
        print(f"rejected: {rejected}", file=sys.stderr)
    return out


def raw_samples(urls: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def bench_decode(samples: list[dict], n: int, seek: bool, num_frames: int = 33) -> float:
    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(n):
        s = samples[i % len(samples)]
        clip_frames = json.loads(s[JSON])["num_frames"]
        p = plan_window(clip_frames, rng, num_frames=num_frames)
        wanted = [*range(p.start, p.start + num_frames), p.reference]
        if seek:
            decode_frames(s[MP4], wanted)
        else:
            _decode_from_start(s[MP4], set(wanted))
    return n / (time.perf_counter() - t0)


def _decode_from_start(mp4: bytes, wanted: set[int]) -> None:
    import io

    import av

    with av.open(io.BytesIO(mp4)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted:
                f.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break


def bench_loader(urls: list[str], workers: int, n: int, warmup: int, dtype: torch.dtype, threads: int) -> float:
    ds = ClipWindowDataset(urls, resampled=True, shuffle_buffer=4, seed=0, dtype=dtype, decode_threads=threads)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=collate_clip_windows,
                                         prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        b = next(it)
        assert b.frames.shape[1:] == (33, 3, 512, 512) and b.frames.dtype == dtype
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="existing curation output (default: build one from fixtures)")
    ap.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared" / "fixtures")
    ap.add_argument("--max-frames", type=int, default=121, help="frames per built clip (4k+1)")
    ap.add_argument("--gop", type=int, default=25, help="key-frame interval of built clips")
    ap.add_argument("--wav2vec", default="random",
                    help="Wav2Vec2 folder for the stored features of built clips, or 'random' "
                         "(randomly initialised wav2vec2-base: real shape, meaningless values)")
    ap.add_argument("--no-wav2vec", action="store_true", help="build clips without stored features")
    ap.add_argument("--samples", type=int, default=40, help="timed samples per measurement")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--build-only", type=Path, help="write the benchmark output here and exit")
    ap.add_argument("--videos", nargs="+", default=list(FIXTURE_VIDEOS), help="fixture videos to build from")
    ap.add_argument("--decode-threads", type=int, default=1, help="PyAV threads per loader worker")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "uint8"], default="float32", help="frames dtype")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    w2v = None if args.no_wav2vec else args.wav2vec
    if args.build_only:
        build(args.build_only, args.fixtures, args.max_frames, args.gop, w2v, tuple(args.videos))
        print(f"wrote {args.build_only}")
        return
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory()
        out = build(Path(tmp.name) / "out", args.fixtures, args.max_frames, args.gop, w2v, tuple(args.videos))
    urls = sorted(str(p) for p in out.glob(SHARD_GLOB))
    samples = raw_samples(urls)
    torch.set_num_threads(1)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                 "loadavg_1m_before": os.getloadavg()[0]},
        "clips": len(samples),
        "dtype": args.dtype,
        "decode_threads": args.decode_threads,
        "out": str(out),
        "wav2vec": WAV2VEC in samples[0],
        "frames_per_clip": sorted({json.loads(s[JSON])["num_frames"] for s in samples}),
        "decode_bound_seek_per_s": round(bench_decode(samples, args.samples, seek=True), 2),
        "decode_from_start_per_s": round(bench_decode(samples, args.samples, seek=False), 2),
    }
    for w in args.workers:
        rate = bench_loader(urls, w, args.samples, args.warmup, getattr(torch, args.dtype), args.decode_threads)
        result[f"loader_{w}_workers_per_s"] = round(rate, 2)
    result["host"]["loadavg_1m_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
