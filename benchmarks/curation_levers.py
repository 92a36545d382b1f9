"""CPU seconds of three per-call levers of the curation CPU path, each against its former code.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights VIVIDHEAD_OFFLINE=1 .venv/bin/python \
        benchmarks/curation_levers.py --run OUT_DIR [--inputs ../shared/fixtures/media/video] [--repeats 3]

``OUT_DIR`` is a finished run of the same inputs (``benchmarks/curation_throughput.py --keep OUT_DIR``):
its manifest gives the clip starts, its shards the encoded clips. In one process, one call after
the other (so both sides see the same machine load; the smallest of ``--repeats`` alternating
rounds is kept), CPU seconds of this process and its FFmpeg children:

* ``frame_at``: the face stage's first clip frame, :func:`vividhead.curation.media.frame_at`
  (one decoder thread, PPM on the pipe) against the former command (FFmpeg's default threads, PNG),
  on the start of every clip that reached the face stage; ``identical``: every pixel equal.
* ``count_frames``: :func:`vividhead.curation.media.count_video_frames` (PyAV demux in process)
  against the former ``ffprobe -count_packets`` process, on every kept clip; ``identical``: counts equal.
* ``scene_detection``: :func:`vividhead.curation.stages.scene_split.detect_shots` at ``num_cpus: 1``
  (one decoder thread) against PyAV's default threads, on every input; ``identical``: shots equal.
* ``normalize_audio_input``: normalize's FFmpeg command on every kept clip with the audio read
  through a second input of the same file (so the video input's only output could end its decode at
  the clip's last frame) against the one shared input; ``identical``: MP4 and WAV bytes equal.

``normalize_parts`` then splits the CPU seconds of normalize's FFmpeg command (the smallest of
``--repeats``) on the kept clips by leaving parts out: ``decode`` (the source window and the fps
filter, null output), ``decode_crop_scale`` (plus the crop and the lanczos scale), ``video`` (plus
x264), ``all`` (plus the audio: the stage's command).

Prints one JSON object: per lever ``before_cpu_s``, ``after_cpu_s``, ``ratio`` (after / before),
``calls`` and ``identical``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], list]) -> tuple[float, list]:
    start = cpu_s()
    out = fn()
    return cpu_s() - start, out


def compare(before: Callable[[], list], after: Callable[[], list], same: Callable[[list, list], bool],
            repeats: int) -> dict:
    """Smallest CPU seconds of ``repeats`` alternating rounds of each side, their ratio and whether
    the results are the same."""
    b_cpu, a_cpu, b_out, a_out = [], [], None, None
    for _ in range(repeats):
        seconds, b_out = timed(before)
        b_cpu.append(seconds)
        seconds, a_out = timed(after)
        a_cpu.append(seconds)
    return {"before_cpu_s": round(min(b_cpu), 3), "after_cpu_s": round(min(a_cpu), 3),
            "ratio": round(min(a_cpu) / min(b_cpu), 3), "calls": len(a_out), "identical": same(b_out, a_out)}


def frame_at_before(src: str, start_s: float, fps: float):
    """The face stage's frame before the change: FFmpeg's default decoder threads, PNG on the pipe."""
    import cv2
    import ffmpeg
    import numpy as np

    from vividhead.curation.media import ffmpeg_args, run_tool

    graph = (ffmpeg.input(src, ss=f"{start_s:.6f}").video.filter("fps", fps=f"{fps:g}")
             .output("pipe:", vframes=1, format="image2pipe", vcodec="png", pix_fmt="rgb24"))
    png = run_tool(ffmpeg_args(graph), 60)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def count_before(path: Path) -> int:
    """The clip's frame count before the change: an ``ffprobe -count_packets`` process."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                         capture_output=True, check=True, timeout=60)
    return int(out.stdout.decode().strip().split(",")[0] or 0)


def normalize_command(row: dict, frame_size: tuple[int, int], out_dir: Path, part: str = "all",
                      audio_input: bool = False) -> list[str]:
    """Normalize's FFmpeg arguments for a kept manifest ``row`` (the stage's defaults), or the part
    of them named by ``part`` (``decode``, ``decode_crop_scale``, ``video``, ``all``)."""
    import ffmpeg

    from vividhead.curation.media import ffmpeg_args
    from vividhead.curation.stages.face import CropBox
    from vividhead.curation.stages.normalize import NormalizeConfig, crop_filters
    from vividhead.shard_format import AUDIO_CHANNELS, FPS, SAMPLE_RATE_HZ

    cfg, n = NormalizeConfig(), row["num_frames"]
    window = {"ss": f"{row['start_s']:.6f}", "t": f"{n / FPS + 1.0:.6f}", "threads": 1}
    source = ffmpeg.input(row["url"], **window)
    video = source.video.filter("fps", fps=f"{FPS:g}")
    if part == "decode":
        return ffmpeg_args(ffmpeg.output(video, "-", format="null", **{"frames:v": n}))
    video = crop_filters(video, CropBox.from_list(row["crop_box"], row["pad_px"] or 0), *frame_size)
    if part == "decode_crop_scale":
        return ffmpeg_args(ffmpeg.output(video, "-", format="null", **{"frames:v": n}).global_args("-filter_threads", "1"))
    outputs = [ffmpeg.output(video, str(out_dir / "clip.mp4"), vcodec="libx264", preset=cfg.preset, crf=cfg.crf,
                             pix_fmt="yuv420p", g=cfg.keyframe_interval_frames, movflags="+faststart", threads=1,
                             **{"frames:v": n})]
    if part == "all":
        audio = (ffmpeg.input(row["url"], **window) if audio_input else source).audio
        outputs.append(ffmpeg.output(audio, str(out_dir / "clip.wav"), ac=AUDIO_CHANNELS, ar=SAMPLE_RATE_HZ,
                                     acodec="pcm_s16le"))
    return ffmpeg_args(ffmpeg.merge_outputs(*outputs).global_args("-filter_threads", "1"))


def run_normalize(rows: list[dict], sizes: dict, part: str = "all", audio_input: bool = False) -> list[tuple]:
    """Run the command on every row; the MP4 and WAV bytes (or ``()`` for null outputs) per row."""
    from vividhead.curation.media import run_tool, temp_dir

    out = []
    for row in rows:
        with temp_dir() as tmp:
            run_tool(normalize_command(row, sizes[row["url"]], tmp, part, audio_input), 600)
            out.append(tuple(p.read_bytes() for p in (tmp / "clip.mp4", tmp / "clip.wav") if p.exists()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="output folder of a finished run on the same inputs")
    ap.add_argument("--inputs", type=Path, default=REPO.parent / "shared" / "fixtures" / "media" / "video")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    cv2.setNumThreads(1)
    from vividhead.curation.media import count_video_frames, frame_at
    from vividhead.curation.stages.scene_split import SceneSplitConfig, detect_shots
    from vividhead.shard_format import FPS

    manifest = pq.read_table(args.run / "manifest.parquet").to_pylist()
    starts = [(r["url"], r["start_s"]) for r in manifest
              if r["start_s"] is not None and r["stage"] not in ("probe", "dedup", "scene_split")]
    report: dict = {"run": str(args.run), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    report["frame_at"] = compare(
        lambda: [frame_at_before(u, s, FPS) for u, s in starts],
        lambda: [frame_at(u, s, FPS) for u, s in starts],
        lambda b, a: all(np.array_equal(x, y) for x, y in zip(b, a)), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for shard in sorted((args.run / "shards").glob("*.tar")):
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".mp4"):
                        clips.append(Path(tmp) / Path(member.name).name)
                        clips[-1].write_bytes(tar.extractfile(member).read())
        report["count_frames"] = compare(lambda: [count_before(p) for p in clips],
                                         lambda: [count_video_frames(p) for p in clips],
                                         lambda b, a: b == a, args.repeats)

    sources = sorted(str(p) for p in args.inputs.glob("*.mp4"))
    one_cpu = SceneSplitConfig(num_cpus=1.0)
    default_threads = dataclasses.replace(one_cpu, num_cpus=2.0)  # PyAV's default threads
    report["scene_detection"] = compare(lambda: [detect_shots(p, default_threads) for p in sources],
                                        lambda: [detect_shots(p, one_cpu) for p in sources],
                                        lambda b, a: b == a, args.repeats)

    kept = [r for r in manifest if r["status"] == "kept" and r["crop_box"]]
    sizes = {r["url"]: frame_at(r["url"], r["start_s"], FPS).shape[1::-1] for r in kept}
    report["normalize_audio_input"] = compare(lambda: run_normalize(kept, sizes),
                                              lambda: run_normalize(kept, sizes, audio_input=True),
                                              lambda b, a: b == a, args.repeats)
    parts = {}
    for part in ("decode", "decode_crop_scale", "video", "all"):
        parts[part] = round(min(timed(functools.partial(run_normalize, kept, sizes, part))[0]
                                for _ in range(args.repeats)), 3)
    report["normalize_parts"] = {"clips": len(kept), "cpu_s": parts}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
