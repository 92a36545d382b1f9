"""Scene detection's source decode on NVDEC, frames kept on the GPU, against the CPU: CPU-s per input-second, shots, pixels.

    python3 benchmarks/scene_decode_gpu.py --videos DIR --out OUT.jsonl [--repeats 3] [--parallel 16]

On a machine with an NVIDIA GPU (the device tool's; ``benchmarks/run_scene_decode_gpu.sh`` sets it up),
over every ``*.mp4`` in ``DIR``, with ``scene_split``'s defaults at ``num_cpus: 1`` (one decoder thread, as
in the chain actors; OpenCV at one thread, as ``ray_adapter.size_threads`` sizes it there):

* ``per_video`` lines: :func:`vividhead.curation.stages.scene_split.detect_shots` on the CPU
  (PySceneDetect's own PyAV stream) and on NVDEC (``device="cuda"``: the thumbnails made on the GPU,
  :class:`vividhead.curation.nvdec.NvdecVideoStream`), alternating, the smallest of ``--repeats`` rounds of this process's CPU time
  (``time.process_time``: every thread of the process, FFmpeg's and NVDEC's host side included) and wall
  time; ``shots_equal``: the same shot list; ``frames``: every frame both ways as the detectors read
  it (PySceneDetect's BGR frame and ``cv2.resize`` to the thumbnail size, against the NVDEC stream's
  thumbnail), ``frames_differing`` and ``max_abs_diff`` (uint8 levels).
* ``parallel`` lines (``--parallel P``): P processes each run scene detection over all videos at once,
  first on the CPU, then on NVDEC: wall seconds and the processes' CPU seconds, i.e. a node's rate
  when P chain actors decode together (NVDEC engines are shared; H100: 7).
* a ``summary`` line: CPU-s per input-second both ways, their ratio, all shots equal, first NVDEC open
  (the CUDA context) in seconds.

The baseline (CPU decode) runs in the same process and on the same videos.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np


def _emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


def _duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        return float(c.duration or 0) / 1e6


def _timed(fn, *args, **kwargs):
    c0, w0 = time.process_time(), time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.process_time() - c0, time.perf_counter() - w0


def _frame_diff(path: Path) -> dict:
    """Every frame as the detectors read it: the CPU decode's BGR frame resized as ``SceneManager``
    does, against the NVDEC stream's thumbnail."""
    import cv2
    from scenedetect.backends.pyav import VideoStreamAv

    from vividhead.curation.nvdec import NvdecVideoStream

    soft, hard = VideoStreamAv(str(path), threading_mode="NONE"), NvdecVideoStream(path, threading_mode="NONE")
    n = differing = worst = 0
    while True:
        a, b = soft.read(), hard.read()
        if a is not False and (a.shape[1], a.shape[0]) != hard.frame_size:
            a = cv2.resize(a, hard.frame_size, interpolation=cv2.INTER_LINEAR)
        if a is False or b is False:
            ended_together = a is False and b is False
            break
        n += 1
        d = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
        differing += d > 0
        worst = max(worst, d)
    return {"frames": n, "frames_differing": differing, "max_abs_diff": worst, "ended_together": ended_together}


def _one_opencv_thread() -> None:
    """OpenCV at one thread, as ``ray_adapter.size_threads`` sizes it in a one-CPU actor (importing that
    module needs Ray, which the device call does not carry)."""
    import cv2

    cv2.setNumThreads(1)


def _worker(args: tuple[list[str], bool]) -> float:
    from vividhead.curation.stages.scene_split import SceneSplitConfig, detect_shots

    paths, nvdec = args
    _one_opencv_thread()
    c0 = time.process_time()
    cfg = SceneSplitConfig(num_cpus=1)
    for p in paths:
        detect_shots(p, cfg, device="cuda" if nvdec else None)
    return time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=0, help="processes for the node-rate phase (0: skip)")
    ap.add_argument("--no-frames", action="store_true", help="skip the per-frame comparison")
    a = ap.parse_args(argv)

    from vividhead.curation.stages.scene_split import SceneSplitConfig, detect_shots

    _one_opencv_thread()
    videos = sorted(a.videos.glob("*.mp4"))
    if not videos:
        print(f"no *.mp4 in {a.videos}", file=sys.stderr)
        return 2
    from vividhead.curation.nvdec import NvdecUnavailable

    cfg = SceneSplitConfig(num_cpus=1)
    try:
        _, first_cpu, first_wall = _timed(detect_shots, videos[0], cfg, device="cuda")  # the CUDA context
    except NvdecUnavailable as exc:
        print(f"error: no NVDEC on this machine: {exc}", file=sys.stderr)
        return 3
    detect_shots(videos[0], cfg)
    totals = {"cpu": [0.0, 0.0], "nvdec": [0.0, 0.0]}
    input_s, all_equal = 0.0, True
    for path in videos:
        best = {"cpu": [float("inf")] * 2, "nvdec": [float("inf")] * 2}
        shots = {}
        for _ in range(a.repeats):
            for mode in ("cpu", "nvdec"):
                shots[mode], cpu_s, wall_s = _timed(detect_shots, path, cfg, device="cuda" if mode == "nvdec" else None)
                best[mode] = [min(best[mode][0], cpu_s), min(best[mode][1], wall_s)]
        dur = _duration_s(path)
        input_s += dur
        equal = shots["cpu"] == shots["nvdec"]
        all_equal &= equal
        rec = {"kind": "per_video", "video": path.name, "input_s": round(dur, 3), "shots_equal": equal,
               "shots_cpu": shots["cpu"], "shots_nvdec": None if equal else shots["nvdec"]}
        for mode in ("cpu", "nvdec"):
            totals[mode][0] += best[mode][0]
            totals[mode][1] += best[mode][1]
            rec[f"{mode}_cpu_s"], rec[f"{mode}_wall_s"] = round(best[mode][0], 4), round(best[mode][1], 4)
        if not a.no_frames:
            rec.update(_frame_diff(path))
        _emit(a.out, rec)

    summary = {
        "kind": "summary", "videos": len(videos), "input_s": round(input_s, 2), "repeats": a.repeats,
        "cpu_cpu_s": round(totals["cpu"][0], 3), "nvdec_cpu_s": round(totals["nvdec"][0], 3),
        "cpu_cpu_s_per_input_s": round(totals["cpu"][0] / input_s, 4),
        "nvdec_cpu_s_per_input_s": round(totals["nvdec"][0] / input_s, 4),
        "cpu_over_nvdec": round(totals["cpu"][0] / totals["nvdec"][0], 3),
        "cpu_wall_s": round(totals["cpu"][1], 3), "nvdec_wall_s": round(totals["nvdec"][1], 3),
        "all_shots_equal": all_equal, "first_nvdec_open_cpu_s": round(first_cpu, 3),
        "first_nvdec_open_wall_s": round(first_wall, 3),
    }
    _emit(a.out, summary)

    if a.parallel:
        ctx = mp.get_context("spawn")
        paths = [str(p) for p in videos]
        for mode in ("cpu", "nvdec"):
            t0 = time.perf_counter()
            with ctx.Pool(a.parallel) as pool:
                worker_cpu = pool.map(_worker, [(paths, mode == "nvdec")] * a.parallel)
            wall = time.perf_counter() - t0
            _emit(a.out, {"kind": "parallel", "mode": mode, "processes": a.parallel, "wall_s": round(wall, 3),
                          "input_s": round(input_s * a.parallel, 2),
                          "input_s_per_wall_s": round(input_s * a.parallel / wall, 2),
                          "detect_cpu_s": round(sum(worker_cpu), 3),
                          "detect_cpu_s_per_input_s": round(sum(worker_cpu) / (input_s * a.parallel), 4)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
