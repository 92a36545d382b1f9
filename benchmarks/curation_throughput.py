"""Curation throughput on the fixture videos against a plain FFmpeg decode of the same inputs.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/curation_throughput.py \
        [--inputs ../shared/fixtures/media/video] [--config examples/curate_offline.yaml] [--cpus 2]

Prints input video-seconds processed per CPU-second (wall time x CPUs given to Ray) for both, and
the ratio pipeline time / decode time. The decode baseline runs in the same process, one FFmpeg
process per CPU, so both use the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ffprobe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60)
    return float(out.stdout.strip() or 0)


def decode_all(paths: list[Path], cpus: int) -> float:
    """Wall seconds to decode every input's video and audio with FFmpeg (null muxer), ``cpus`` at a time."""
    def one(p: Path) -> None:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(p), "-f", "null", "-"], check=False, timeout=600)

    start = time.perf_counter()
    with ThreadPoolExecutor(cpus) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default=str(REPO / ".." / "shared" / "fixtures" / "media" / "video"))
    ap.add_argument("--config", default=str(REPO / "examples" / "curate_offline.yaml"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    import ray

    from vividhead.curation.config import load_config
    from vividhead.curation.pipeline import run_curation

    paths = sorted(p for p in Path(args.inputs).rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".mov", ".webm"))
    video_s = sum(ffprobe_duration(p) for p in paths)
    decode_s = decode_all(paths, args.cpus)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_curation([args.inputs], out, load_config(args.config))
        pipe_s = time.perf_counter() - start
    ray.shutdown()
    report = {
        "inputs": len(paths),
        "input_video_s": round(video_s, 2),
        "cpus": args.cpus,
        "clips_kept": result.stats["clips_kept"],
        "decode_wall_s": round(decode_s, 2),
        "pipeline_wall_s": round(pipe_s, 2),
        "decode_video_s_per_cpu_s": round(video_s / (decode_s * args.cpus), 3),
        "pipeline_video_s_per_cpu_s": round(video_s / (pipe_s * args.cpus), 3),
        "ratio_pipeline_over_decode": round(pipe_s / decode_s, 2),
        "stage_seconds": {k: v["seconds"] for k, v in result.stats["stages"].items() if v["enabled"]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
