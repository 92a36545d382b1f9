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

Prints one JSON object: per lever ``before_cpu_s``, ``after_cpu_s``, ``ratio`` (after / before),
``calls`` and ``identical``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
