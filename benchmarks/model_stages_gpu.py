"""GPU cost of the curation's torch model stages in ms per second of video, by batch size and precision.

Runs the model side of ``asd`` (Light-ASD visual front-end + backend, real AVA weights), ``syncnet``
(SyncNet lip and audio towers, seeded random weights: the cost does not depend on the values) and
``audio_features`` (transformers ``Wav2Vec2Model`` with the wav2vec2-base-960h configuration, random
weights) on 10 s clips (250 frames, 160,000 samples) of random crops and real speech, one call per
setting after a warm-up, CUDA-synchronised, median of ``--repeats``. Decoding, MediaPipe face
detection and landmarks are not here: MediaPipe's Python package runs them on CPU only.

One JSON line per figure is printed and appended to ``$OUT/model_stages_gpu.jsonl`` when ``$OUT``
is set (the device tool's output folder).

    PYTHONPATH=. python benchmarks/model_stages_gpu.py --asd-weights asd_lightasd_pretrain_AVA.model \
        --speech jfk.npy [--pylib PYLIB]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from filter_models_gpu import stub_missing_modules  # noqa: E402

FRAMES = 250  # 10 s at 25 fps
VIDEO_S = FRAMES / 25


def emit(record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / "model_stages_gpu.jsonl", "a") as f:
            f.write(line + "\n")


def median_ms(fn, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--asd-weights", required=True)
    ap.add_argument("--speech", required=True, help="int16 16 kHz samples (.npy), >= 160000")
    ap.add_argument("--pylib", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    stub_missing_modules(args.pylib)

    import numpy as np
    import torch

    from vividhead.curation.audio_io import mfcc_100hz
    from vividhead.curation.models.lightasd import load_lightasd
    from vividhead.curation.models.syncnet import SyncNet
    from vividhead.curation.stages.asd import asd_scores, visual_embeddings
    from vividhead.curation.stages.syncnet import lipsync_from_crops

    dev = "cuda"
    emit({"device": torch.cuda.get_device_name(0), "torch": torch.__version__})
    rng = np.random.default_rng(0)
    pcm = np.load(args.speech)[: FRAMES * 640]
    mf = mfcc_100hz(pcm)
    gray = rng.integers(0, 255, (FRAMES, 112, 112), dtype=np.uint8)
    bgr = rng.integers(0, 255, (FRAMES, 224, 224, 3), dtype=np.uint8)

    asd = load_lightasd(args.asd_weights, dev)
    for durations in ((1, 2, 3, 4, 5, 6), (6,)):
        for bf16 in (False, True):
            for segment in (150, FRAMES):
                def run(durations=durations, bf16=bf16, segment=segment):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                        return asd_scores(visual_embeddings(gray, asd, dev, durations, segment_frames=segment), mf, asd, dev)
                ms = median_ms(run, args.repeats)
                emit({"stage": "asd", "durations_s": list(durations), "bf16": bf16, "segment_frames": segment,
                      "ms_per_clip": round(ms, 1), "ms_per_video_s": round(ms / VIDEO_S, 2)})

    torch.manual_seed(0)
    sn = SyncNet().eval().to(dev)
    for batch in (20, 64, 245):
        for bf16 in (False, True):
            def run(batch=batch, bf16=bf16):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    return lipsync_from_crops(bgr, pcm, sn, 15, batch, dev)
            ms = median_ms(run, args.repeats)
            emit({"stage": "syncnet", "batch_windows": batch, "bf16": bf16, "ms_per_clip": round(ms, 1),
                  "ms_per_video_s": round(ms / VIDEO_S, 2)})

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    w2v = Wav2Vec2Model(Wav2Vec2Config()).eval().to(dev)  # the base configuration: 12 layers, 768 wide
    wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    for clips in (1, 8):
        for bf16 in (False, True):
            x = wav.repeat(clips, 1).to(dev)

            def run(x=x, bf16=bf16):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    return w2v(x, output_hidden_states=True).hidden_states
            ms = median_ms(run, args.repeats)
            emit({"stage": "audio_features", "clips_per_batch": clips, "bf16": bf16, "ms_per_batch": round(ms, 1),
                  "ms_per_video_s": round(ms / (clips * VIDEO_S), 2)})


if __name__ == "__main__":
    main()
