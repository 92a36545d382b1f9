"""Cheaper Light-ASD settings against the authors' protocol: score change, decisions, time saved.

For each ``talk_*`` fixture, builds the pipeline clip (the first ``--seconds`` at 25 fps, face crop
by the ``face`` and ``normalize`` stages), decodes and tracks it once, and scores it with its own
audio, with digital silence and with a wrong speech track (JFK's address), under each setting:

* ``ref``: chunk lengths 1-6 s, fp32 (the authors' ``Columbia_test.py`` protocol, our default before);
* ``d6``: one chunk length (6 s), fp32;
* ``bf16``: 1-6 s under ``torch.autocast`` bfloat16;
* ``d6_bf16``, ``d246_bf16``: both.

Prints, per setting, the time of the visual front-end and one backend pass in ms per second of
video (one thread, median of ``--repeats``), the largest absolute score change against ``ref``, and whether every
keep/reject decision at ``--threshold`` (the stage's ``min_asd_score``) equals ``ref``'s.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/asd_defaults.py --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vividhead import weights
from vividhead.curation.audio_io import mfcc_100hz
from vividhead.curation.decoded_clip import DecodedClip
from vividhead.curation.models.lightasd import load_lightasd
from vividhead.curation.stages.asd import asd_scores, centre_112, visual_embeddings
from vividhead.models.face_detector import FaceDetector

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
sys.path.insert(0, str(REPO / "tests" / "curation" / "stages"))
from avclips import clip_row  # noqa: E402  (the tests' pipeline clip: face + normalize stages)

SETTINGS = {
    "ref": ((1, 2, 3, 4, 5, 6), False),
    "d6": ((6,), False),
    "bf16": ((1, 2, 3, 4, 5, 6), True),
    "d6_bf16": ((6,), True),
    "d246_bf16": ((2, 4, 6), True),
}


def wrong_speech(n: int) -> np.ndarray:
    """The first ``n`` samples of JFK's address (16 kHz mono int16), zero-padded."""
    import soundfile as sf

    pcm = sf.read(FIXTURES / "media" / "audio" / "speech_jfk_16k.wav", dtype="int16")[0][:n]
    return np.pad(pcm, (0, n - len(pcm)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=-2.0)
    args = ap.parse_args()
    os.environ.setdefault("VIVIDHEAD_WEIGHTS_DIR", str(FIXTURES / "weights"))
    torch.set_num_threads(1)
    model = load_lightasd(weights.resolve("lightasd_ava"), "cpu")
    scores: dict[str, dict[str, list[float]]] = {k: {"own": [], "silence": [], "wrong": []} for k in SETTINGS}
    ms_per_s: dict[str, list[float]] = {k: [] for k in SETTINGS}
    with FaceDetector.load() as detector:
        for src in sorted((FIXTURES / "media" / "video").glob("talk_*.mp4")):
            row = clip_row(src.name, args.seconds)
            clip = DecodedClip(row["video_bytes"], row["audio_bytes"])
            faces = centre_112(clip.gray_face_crops(detector))
            pcm, sr = clip.pcm
            audios = {"own": pcm, "silence": np.zeros_like(pcm), "wrong": wrong_speech(len(pcm))}
            mfccs = {k: mfcc_100hz(v, sr) for k, v in audios.items()}
            for name, (durations, bf16) in SETTINGS.items():
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        vis = visual_embeddings(faces, model, "cpu", durations)
                        result = {"own": asd_scores(vis, mfccs["own"], model, "cpu").score}
                    times.append(time.perf_counter() - start)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    result.update({k: asd_scores(vis, m, model, "cpu").score for k, m in mfccs.items() if k != "own"})
                ms_per_s[name].append(1000 * statistics.median(times) / (len(faces) / 25))
                for k, v in result.items():
                    scores[name][k].append(v)
            print(json.dumps({"clip": src.name, **{n: {k: round(v[-1], 3) for k, v in scores[n].items()} for n in SETTINGS}}), flush=True)
    ref = scores["ref"]
    report = {}
    for name in SETTINGS:
        s = scores[name]
        report[name] = {
            "ms_per_video_s": round(statistics.mean(ms_per_s[name]), 1),
            "max_abs_change": round(max(abs(a - b) for k in s for a, b in zip(s[k], ref[k])), 3),
            "own_range": [round(min(s["own"]), 2), round(max(s["own"]), 2)],
            "silence_range": [round(min(s["silence"]), 2), round(max(s["silence"]), 2)],
            "decisions_equal_ref": all((a >= args.threshold) == (b >= args.threshold) for k in s for a, b in zip(s[k], ref[k])),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
