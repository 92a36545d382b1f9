"""Cost of ``vividhead eval`` per minute of video, part by part, on CPU or one GPU.

Runs each part of the evaluation on ``--seconds`` of one fixture clip (512x512, 25 fps) and prints
seconds per minute of video:

* ``decode``: PyAV decode to RGB (OpenCV when PyAV is missing, e.g. on the GPU image);
* ``face_track``: MediaPipe detection on every frame + smoothing + 224 crops (CPU always; skipped
  where MediaPipe is missing);
* ``sync``: SyncNet on the crops (``syncnet_v2.model`` if found, else seeded random weights: cost
  does not depend on the values);
* ``asd``: Light-ASD (fixture weights, or random);
* ``i3d``: FVD features, 16-frame clips at 224 px (random weights);
* ``inception``: FID/KID features, every frame (torch-fidelity, random weights; skipped without it).

``score`` per minute of generated video = decode x 2 + face_track x 2 + sync x 2 + asd x 2 (generated
and real, ``--score-real``) + i3d x 2 + inception x 2; the script prints that total too.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/eval_cost.py --device cpu
    python benchmarks/eval_cost.py --device cuda --out $OUT/eval_cost.json          # GPU machine

On machines without PyAV, soundfile or MediaPipe those modules are stubbed (only decoding and the
face track need them; the face-track part is then skipped and crops are cut from the frame centre).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of video per part.")
parser.add_argument("--video", default=str(FIXTURES / "media" / "video" / "talk_hdtf_aoc_512.mp4"))
parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
parser.add_argument("--repeats", type=int, default=1, help="Timed runs per part (median) after one warm-up.")
parser.add_argument("--parts", default="decode,face_track,sync,asd,i3d,inception")
parser.add_argument("--out", default=None, help="Write the figures as JSON here.")
args = parser.parse_args()

missing = []
for name in ("av", "soundfile", "mediapipe"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
        sys.modules[name] = types.ModuleType(name)
os.environ.setdefault("VIVIDHEAD_WEIGHTS_DIR", str(FIXTURES / "weights"))
os.environ.setdefault("VIVIDHEAD_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

if args.threads:
    torch.set_num_threads(args.threads)
DEV = args.device
N = int(round(args.seconds * 25))
PARTS = set(args.parts.split(","))


def sync() -> None:
    if DEV.startswith("cuda"):
        torch.cuda.synchronize()


def clock(fn, repeats: int = args.repeats):
    fn()
    sync()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def decode_cv2(path: str, n: int) -> np.ndarray:
    import cv2

    cap, frames = cv2.VideoCapture(path), []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


results: dict[str, float] = {}
notes: dict[str, str] = {}
if "av" in missing:
    frames, t = clock(lambda: decode_cv2(args.video, N))
    notes["decode"] = "OpenCV (no PyAV here)"
    audio = (np.random.default_rng(0).normal(size=N * 640) * 0.1).astype(np.float32)
else:
    from vividhead.evaluation.frames import read_video

    v, t = clock(lambda: read_video(args.video, max_frames=N))
    frames, audio = v.frames, v.audio[: N * 640]
results["decode"] = t
n = len(frames)
secs = n / 25
print(f"torch {torch.__version__}, device {DEV}"
      + (f" ({torch.cuda.get_device_name(0)})" if DEV.startswith("cuda") else f", {torch.get_num_threads()} threads")
      + f"; {n} frames ({secs:.1f} s) of {Path(args.video).name} at {frames.shape[2]}x{frames.shape[1]}"
      + (f"; stubbed: {missing}" if missing else ""))

crops = gray = None
if "face_track" in PARTS and "mediapipe" not in missing:
    from vividhead.evaluation import loaders
    from vividhead.evaluation.faces import face_crops

    det, _ = loaders.face_detector()
    fc, results["face_track"] = clock(lambda: face_crops(frames, det))
    det.close()
    crops, gray = fc.bgr224, fc.gray112
else:
    notes["face_track"] = "not measured (no MediaPipe here)" if "mediapipe" in missing else "not asked"
if crops is None:  # centre crops stand in for the face crops (model cost does not depend on content)
    import cv2

    h, w = frames.shape[1:3]
    s = min(h, w) // 2
    crops = np.stack([cv2.resize(f[h // 2 - s // 2 : h // 2 + s // 2, w // 2 - s // 2 : w // 2 + s // 2], (224, 224))[..., ::-1]
                      for f in frames])
    gray = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)[56:168, 56:168] for c in crops])

if "sync" in PARTS:
    from vividhead.evaluation import loaders
    from vividhead.evaluation.sync import sync_metrics

    try:
        net, rec = loaders.load_syncnet(device=DEV)
    except loaders.MissingEvalWeights:
        net, rec = loaders.load_syncnet(device=DEV, random_seed=0)
        notes["sync"] = "random SyncNet weights (cost only)"
    _, results["sync"] = clock(lambda: sync_metrics(crops, audio, net, device=DEV))

if "asd" in PARTS:
    from vividhead.evaluation import loaders
    from vividhead.evaluation.asd_score import asd_metric, asd_visual

    model, _ = loaders.load_asd(device=DEV)
    _, results["asd"] = clock(lambda: asd_metric(asd_visual(gray, model, DEV), audio, model, DEV))

if "i3d" in PARTS:
    from vividhead.evaluation.fvd import i3d_features, video_clips
    from vividhead.evaluation.i3d import random_i3d

    i3d = random_i3d(0, DEV)
    clips = video_clips(frames)
    notes["i3d"] = f"{len(clips)} clips of 16 frames at 224 px, random weights (cost only)"
    _, results["i3d"] = clock(lambda: i3d_features(clips, i3d, device=DEV, batch_size=4))

if "inception" in PARTS:
    try:
        import unittest.mock

        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        from vividhead.evaluation.fid import InceptionFeatures

        with unittest.mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), \
                unittest.mock.patch("torch.load", return_value={}):
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
        path = Path(os.environ.get("TMPDIR", "/tmp")) / "eval_cost_inception_random.pth"
        torch.save(net.state_dict(), path)
        feats = InceptionFeatures(path, DEV, batch_size=50)
        _, results["inception"] = clock(lambda: feats(frames))
        notes["inception"] = "every frame, random weights (cost only)"
    except Exception as exc:  # no torch-fidelity / torchvision here
        notes["inception"] = f"not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"

per_min = {k: v / secs * 60 for k, v in results.items()}
print(f"\n| part | s per {secs:.0f} s clip | s per minute of video | note |\n|---|---:|---:|---|")
for k in ("decode", "face_track", "sync", "asd", "i3d", "inception"):
    if k in results:
        print(f"| {k} | {results[k]:.2f} | {per_min[k]:.1f} | {notes.get(k, '')} |")
    elif k in notes:
        print(f"| {k} | - | - | {notes[k]} |")
total = 2 * sum(per_min.values())
print(f"\n`eval score` per minute of generated video (generated + real, every measured part): {total:.1f} s"
      + ("" if {"face_track", "inception"} <= set(results) else " (parts not measured here are not in the total)"))
if args.out:
    Path(args.out).write_text(json.dumps({"device": DEV, "torch": torch.__version__, "frames": n, "seconds": secs,
                                          "seconds_per_clip": results, "seconds_per_minute": per_min,
                                          "score_total_per_minute": total, "notes": notes, "stubbed": missing},
                                         indent=2))
