"""Lower bound of the curation pipeline's wall time on N CPUs, from the work it cannot skip.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights VIVIDHEAD_OFFLINE=1 .venv/bin/python \
        benchmarks/curation_floor.py --run OUT_DIR [--inputs ../shared/fixtures/media/video] [--cpus 2]

``OUT_DIR`` is a finished run of the same inputs (``benchmarks/curation_throughput.py --keep OUT_DIR``).
In one process, one thread each, this times the per-frame work the default filters do on the clips
that run was left with, with the pipeline's own code and weights:

* one decode of every source (FFmpeg, one thread: scene detection must see every source frame, and
  the clip encode decodes its window of the source again; counted once here, so the floor is low);
* the clips' decode (:class:`~vividhead.curation.decoded_clip.DecodedClip`);
* MediaPipe face detection on every frame (the face track of ``asd``);
* MediaPipe FaceLandmarker on every frame (``face_mask``);
* Light-ASD at the stage's defaults (``asd``: front-end once, chunk lengths 2/4/6 s, ``precision: auto``).

The clips are the kept ones only (rejected clips also reach some of these stages), and the encode,
optical flow, speech detection and Ray are left out, so the sum is below what any run can take.
Floor wall time = that CPU time / ``cpus`` (perfect packing, no overhead); floor ratio = floor wall
/ the FFmpeg decode baseline of ``curation_throughput.py`` (median of three, ``cpus`` at a time),
measured in the same process. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from curation_throughput import decode_all, ffprobe_duration  # noqa: E402


def child_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes of this process."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def source_decode_cpu_s(paths: list[Path]) -> float:
    """CPU seconds of one single-threaded FFmpeg decode (video and audio, null muxer) of every input."""
    before = child_cpu_s()
    for p in paths:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"],
                       check=False, timeout=600)
    return child_cpu_s() - before


def kept_clips(run_dir: Path, workdir: Path) -> list[tuple[Path, bytes]]:
    """The (mp4 path, wav bytes) of every clip in the run's shards."""
    clips = []
    for shard in sorted((run_dir / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if not name.endswith(".mp4"):
                    continue
                key = name[: -len(".mp4")]
                path = workdir / Path(name).name
                path.write_bytes(tar.extractfile(members[name]).read())
                clips.append((path, tar.extractfile(members[key + ".wav"]).read()))
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="output folder of a finished run on the same inputs")
    ap.add_argument("--inputs", type=Path, default=REPO.parent / "shared" / "fixtures" / "media" / "video")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from vividhead import weights
    from vividhead.curation.audio_io import mfcc_100hz
    from vividhead.curation.decoded_clip import DecodedClip
    from vividhead.curation.models.lightasd import load_lightasd
    from vividhead.curation.stages.asd import ASDConfig, asd_scores, centre_112, use_bf16, visual_embeddings
    from vividhead.curation.stages.face_mask import FaceLandmarks
    from vividhead.models.face_detector import FaceDetector

    paths = sorted(args.inputs.glob("*.mp4"))
    input_s = sum(ffprobe_duration(p) for p in paths)
    decode_wall = statistics.median(decode_all(paths, args.cpus) for _ in range(3))
    cpu = {"source_decode": source_decode_cpu_s(paths)}

    cfg = ASDConfig()
    model = load_lightasd(weights.resolve(cfg.weights, None), "cpu")
    detector = FaceDetector.load(None, cfg.min_confidence)
    landmarker = FaceLandmarks(weights.resolve("face_mediapipe_landmarker", None))
    bf16 = use_bf16(cfg.precision, "cpu")
    for k in ("clip_decode", "face_detection", "landmarks", "asd_model"):
        cpu[k] = 0.0
    clip_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        clips = kept_clips(args.run, Path(tmp))
        for path, wav in clips:
            clip = DecodedClip(path, wav)
            t = time.process_time()
            frames = clip.frames
            cpu["clip_decode"] += time.process_time() - t
            clip_s += len(frames) / 25
            t = time.process_time()
            faces = centre_112(clip.gray_face_crops(detector, cfg.crop_scale, 224, cfg.min_face_share))
            cpu["face_detection"] += time.process_time() - t  # detection, track and crops
            t = time.process_time()
            landmarker.track(frames)
            cpu["landmarks"] += time.process_time() - t
            pcm, sr = clip.pcm
            t = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                asd_scores(visual_embeddings(faces, model, "cpu", cfg.durations_s), mfcc_100hz(pcm, sr), model)
            cpu["asd_model"] += time.process_time() - t
    detector.close()

    total = sum(cpu.values())
    floor_wall = total / args.cpus
    print(json.dumps({
        "inputs": len(paths), "input_video_s": round(input_s, 1), "kept_clips": len(clips),
        "kept_clip_video_s": round(clip_s, 1), "cpus": args.cpus, "asd_bf16": bf16,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()}, "cpu_s_total": round(total, 2),
        "decode_baseline_wall_s": round(decode_wall, 2), "floor_wall_s": round(floor_wall, 2),
        "floor_ratio": round(floor_wall / decode_wall, 2),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))


if __name__ == "__main__":
    main()
