"""x264 settings for ``normalize``: encode CPU seconds against quality (PSNR, SSIM), on the real clips.

    .venv/bin/python benchmarks/curation_encode_settings.py --run OUT_DIR \
        [--settings veryfast:18 superfast:18 ultrafast:18 ...] [--threads 1]

``OUT_DIR`` is a finished run (``benchmarks/curation_throughput.py --keep OUT_DIR``). For each kept
clip of its manifest, the clip's own filter graph (:func:`vividhead.curation.stages.normalize.crop_filters`:
the source window, 25 fps, crop, lanczos scale to 512 x 512) is rendered once to raw yuv420p, the
reference. Each ``preset:crf`` setting then encodes that reference with the pipeline's other x264
options (GOP, yuv420p) and is scored against it with FFmpeg's ``psnr`` and ``ssim`` filters (the
average over frames of Y, U and V as FFmpeg prints it; and the worst frame's PSNR). Encode CPU
seconds are the encoder process's user + system time (``RUSAGE_CHILDREN``), so the load of other
jobs on the machine does not inflate them. The setting ``current`` is :class:`NormalizeConfig`'s
default. Prints one JSON object: per setting, totals over the clips and the per-clip worst.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def render_reference(row: dict, out: Path) -> int:
    """The clip's frames after normalize's filters, raw yuv420p 512 x 512; returns the frame count."""
    import ffmpeg

    from vividhead.curation.media import ffmpeg_args, frame_at, run_tool
    from vividhead.curation.stages.face import CropBox
    from vividhead.curation.stages.normalize import crop_filters
    from vividhead.shard_format import FPS, FRAME_SIZE_PX

    n, src = row["num_frames"], row["url"].removeprefix("file://")
    height, width = frame_at(src, row["start_s"], FPS).shape[:2]  # the face stage's frame_size
    source = ffmpeg.input(src, ss=f"{row['start_s']:.6f}", t=f"{n / FPS + 1.0:.6f}")
    video = source.video.filter("fps", fps=f"{FPS:g}")
    video = crop_filters(video, CropBox.from_list(row["crop_box"], row["pad_px"] or 0), width, height, FRAME_SIZE_PX)
    run_tool(ffmpeg_args(ffmpeg.output(video, str(out), f="rawvideo", pix_fmt="yuv420p", **{"frames:v": n})), 600)
    return n


RAW = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "512x512", "-r", "25"]


def encode(ref: Path, out: Path, preset: str, crf: int, gop: int, threads: int | None) -> float:
    """Encode the raw reference with libx264; returns the encoder's CPU seconds."""
    before = child_cpu_s()
    thread_args = ["-threads", str(threads)] if threads else []
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *thread_args, *RAW, "-i", str(ref), *thread_args,
                    "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p", "-g", str(gop),
                    str(out)], check=True)
    return child_cpu_s() - before


def quality(ref: Path, enc: Path) -> dict:
    """PSNR (average and worst frame, dB) and SSIM (average) of ``enc`` against the raw reference."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-i", str(enc), *RAW, "-i", str(ref),
                           "-lavfi", "[0:v][1:v]psnr=stats_file=-;[0:v][1:v]ssim", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    text = proc.stdout + proc.stderr
    frame_psnr = [float(m) for m in re.findall(r"psnr_avg:([0-9.]+|inf)", text) if m != "inf"]
    psnr = re.search(r"PSNR y:[0-9.inf]+ u:[0-9.inf]+ v:[0-9.inf]+ average:([0-9.inf]+)", text)
    ssim = re.search(r"SSIM Y:([0-9.]+).* All:([0-9.]+)", text)
    return {"psnr_db": float(psnr.group(1)), "psnr_worst_frame_db": min(frame_psnr) if frame_psnr else None,
            "ssim_y": float(ssim.group(1)), "ssim": float(ssim.group(2))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--settings", nargs="+", default=["current", "veryfast:18", "superfast:18", "ultrafast:18",
                                                      "superfast:16", "ultrafast:14"])
    ap.add_argument("--threads", type=int, default=None, help="FFmpeg -threads for the encodes (default: FFmpeg's auto)")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from vividhead.curation.stages.normalize import NormalizeConfig

    cfg = NormalizeConfig()
    rows = [r for r in pq.read_table(args.run / "manifest.parquet").to_pylist() if r["status"] == "kept" and r["crop_box"]]
    settings = [(s, cfg.preset, cfg.crf) if s == "current" else (s, s.split(":")[0], int(s.split(":")[1]))
                for s in args.settings]
    results = {name: {"cpu_s": 0.0, "bytes": 0, "psnr_db": [], "psnr_worst_frame_db": [], "ssim": [], "ssim_y": []}
               for name, _, _ in settings}
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            ref = Path(tmp) / f"ref{i}.yuv"
            frames += render_reference(row, ref)
            for name, preset, crf in settings:
                enc = Path(tmp) / f"enc{i}.mp4"
                rec = results[name]
                rec["cpu_s"] += encode(ref, enc, preset, crf, cfg.keyframe_interval_frames, args.threads)
                rec["bytes"] += enc.stat().st_size
                for k, v in quality(ref, enc).items():
                    rec[k].append(v)
            ref.unlink()
    report = {"clips": len(rows), "frames": frames, "threads": args.threads or "auto",
              "current": f"{cfg.preset}:{cfg.crf}", "settings": {}}
    for name, rec in results.items():
        report["settings"][name] = {
            "encode_cpu_s": round(rec["cpu_s"], 2),
            "ms_per_frame": round(1000 * rec["cpu_s"] / frames, 2),
            "kbit_s": round(rec["bytes"] * 8 / (frames / 25) / 1000, 1),
            "psnr_db_mean": round(sum(rec["psnr_db"]) / len(rows), 2),
            "psnr_db_min_clip": round(min(rec["psnr_db"]), 2),
            "psnr_worst_frame_db": round(min(rec["psnr_worst_frame_db"]), 2),
            "ssim_mean": round(sum(rec["ssim"]) / len(rows), 5),
            "ssim_min_clip": round(min(rec["ssim"]), 5),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
