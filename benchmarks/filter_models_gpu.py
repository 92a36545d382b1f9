"""Model-side cost of the lip-sync and speech stages on CPU and CUDA, and CPU/CUDA agreement.

Runs the parts of ``asd``, ``syncnet`` and ``speech`` after decoding and face tracking on 10 s of
input (250 random gray 112x112 and BGR 224x224 face crops, the first 10 s of a speech recording),
once on CPU and once on CUDA, and prints the times and the differences between the results.
SyncNet uses seeded random weights (only its cost and the CPU/CUDA agreement are meaningful).

Made for GPU machines without PyAV, soundfile or MediaPipe: those modules are stubbed (they are
only needed for decoding, which this script does not do). Pure-Python extras
(``python_speech_features``, ``silero_vad`` with its dist-info) can be put on ``--pylib``.

    python benchmarks/filter_models_gpu.py --weights ASD_MODEL --speech speech.npy [--pylib DIR]

``speech.npy``: int16 [>= 160000] mono samples at 16 kHz.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import types


def stub_missing_modules(pylib: str | None) -> None:
    """Put ``pylib`` on ``sys.path`` and stub the decoding-only modules this machine lacks."""
    if pylib:
        sys.path.insert(0, pylib)
    for name in ("av", "soundfile", "mediapipe"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    try:
        import scipy.signal  # noqa: F401
    except ImportError:
        sc, sig = types.ModuleType("scipy"), types.ModuleType("scipy.signal")
        sc.signal = sig
        sys.modules.update({"scipy": sc, "scipy.signal": sig})


def clock(fn, dev: str):
    """``(fn(), seconds)`` of the second call (the first one warms up), device-synchronised."""
    import torch

    fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True, help="asd_lightasd_pretrain_AVA.model")
    parser.add_argument("--speech", required=True, help="int16 16 kHz samples (.npy)")
    parser.add_argument("--pylib", default=None, help="extra folder for pure-Python packages")
    args = parser.parse_args()
    stub_missing_modules(args.pylib)

    import numpy as np
    import torch

    from vividhead.curation.audio_io import mfcc_100hz
    from vividhead.curation.models.lightasd import load_lightasd
    from vividhead.curation.models.syncnet import SyncNet
    from vividhead.curation.stages.asd import asd_scores, visual_embeddings
    from vividhead.curation.stages.speech import SpeechConfig, load_vad, speech_share
    from vividhead.curation.stages.syncnet import lipsync_from_crops

    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    rng = np.random.default_rng(0)
    T = 250  # 10 s at 25 fps
    pcm = np.load(args.speech)[: T * 640]
    gray = rng.integers(0, 255, (T, 112, 112), dtype=np.uint8)
    bgr = rng.integers(0, 255, (T, 224, 224, 3), dtype=np.uint8)
    mf = mfcc_100hz(pcm)

    res = {}
    torch.manual_seed(0)
    sn = SyncNet().eval()
    for dev in ("cpu", "cuda"):
        asd = load_lightasd(args.weights, dev)
        a, ta = clock(lambda asd=asd, dev=dev: asd_scores(visual_embeddings(gray, asd, dev), mf, asd, dev), dev)
        s, ts = clock(lambda dev=dev: lipsync_from_crops(bgr, pcm, sn.to(dev), 15, 20, dev), dev)
        vad = load_vad(None, dev)
        v, tv = clock(lambda vad=vad, dev=dev: speech_share(pcm, 16000, vad, SpeechConfig(), dev), dev)
        res[dev] = (a.score, s.lse_c, s.lse_d, s.av_offset_frames, v)
        print(f"{dev}: asd {a.score:.4f} ({ta*1000:.0f} ms) | syncnet(random) offset {s.av_offset_frames} "
              f"({ts*1000:.0f} ms) | speech {v:.4f} ({tv*1000:.0f} ms) per 10 s clip, model side only")
    c, g = res["cpu"], res["cuda"]
    print("asd |cpu-cuda|", abs(c[0] - g[0]), "lse_c diff", abs(c[1] - g[1]), "lse_d diff", abs(c[2] - g[2]),
          "offset equal", c[3] == g[3], "speech diff", abs(c[4] - g[4]))


if __name__ == "__main__":
    main()
