"""Where one batched serving round goes: B streams advanced together by the one chunk step
(:class:`vividhead.streaming.step.ChunkStep`), broken into the step's parts (motion encode, audio,
DiT, decode + colour, synchronised), the host copy of the frames and the per-stream MP4 encode the
server does before sending; and whether anything recompiled while serving
(``torch._dynamo.utils.counters``). Random weights at the released shapes (speed does not depend on
them), the default fast path (``FlashHeadModels.optimize``), one process.

    python benchmarks/batch_round.py --variant lite --batch 1 8 16 --buckets 1 4 8 16 --vae-batch 16
    python benchmarks/batch_round.py --variant tiny-lite --device cpu --batch 1 2   # CPU dry run

Prints one JSON line per figure (``figure``: ``round`` per batch size, ``recompiles``), each as soon
as it is measured. Real time for B streams: ``round_s <= chunk_s`` (0.96 s for Lite, 1.12 s for Pro).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def log(**row) -> None:
    """One figure as a JSON line on stdout, flushed at once (a killed run keeps what it measured)."""
    print(json.dumps(row, default=str), flush=True)


def build(name: str, device: str, dynamic_batch: bool = False):
    """``(FlashHeadModels, what optimize() applied)``: random weights at the variant's released shapes
    in bf16 with the default fast path, or a tiny float32 variant (``tiny-pro`` / ``tiny-lite``) as is.

    Raises:
        KeyError: an unknown variant name.
    """
    from vividhead.inference.pipeline import FlashHeadModels
    from vividhead.models.configs import get_variant

    if name.startswith("tiny"):
        from tiny_models import TINY_LITE, TINY_PRO

        variant = TINY_LITE if name == "tiny-lite" else TINY_PRO
        return FlashHeadModels.random(variant, device=device, dtype=torch.float32, tiny_encoders=True), {}
    models = FlashHeadModels.random(get_variant(name), device=device, dtype=torch.bfloat16)
    return models, models.optimize(dynamic_batch=dynamic_batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="lite")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--buckets", type=int, nargs="*", default=None)
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--dynamic-batch", action="store_true", help="optimize(dynamic_batch=True): one graph for every batch size")
    p.add_argument("--rounds", type=int, default=4, help="measured rounds per batch size")
    args = p.parse_args()

    from torch._dynamo.utils import counters

    from vividhead.inference.pipeline import StreamingSession, advance
    from vividhead.media import encode_mp4_bytes
    from vividhead.streaming.step import BatchingConfig

    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    models, applied = build(args.variant, args.device, args.dynamic_batch)
    cfg = models.variant.streaming
    batching = BatchingConfig(max_batch=max(args.batch), vae_batch=args.vae_batch,
                              batch_buckets=tuple(args.buckets) if args.buckets else None)
    log(figure="device", name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        torch=torch.__version__, variant=args.variant, optimize=applied, batching=dataclasses.asdict(batching),
        date=time.strftime("%Y-%m-%d"))
    t0 = time.perf_counter()
    models.warm_up(cfg, tuple(args.batch), batching)
    log(figure="warm_up", seconds=time.perf_counter() - t0, batch_sizes=args.batch)
    rng = np.random.default_rng(0)
    ref = (rng.random((cfg.height_px, cfg.width_px, 3)) * 255).astype(np.uint8)
    frames_before = dict(counters["stats"])
    for b in args.batch:
        sessions = [StreamingSession(models, ref, seed=i, streaming=cfg) for i in range(b)]
        spc = cfg.samples_per_chunk
        rows = []
        for r in range(2 + args.rounds):  # a cold-start round, one with the motion encode, then measured
            pcm = [(rng.standard_normal(spc) * 0.1).astype(np.float32) for _ in sessions]
            sync()
            t1 = time.perf_counter()
            out = advance(sessions, pcm, batching)  # includes the host copy
            sync()
            t2 = time.perf_counter()
            for f in out:
                encode_mp4_bytes(f, cfg.fps)
            t3 = time.perf_counter()
            if r >= 2:
                rows.append({"round_s": t2 - t1, "mp4_s": t3 - t2})
        # the parts, synchronised (profile), over two more rounds
        models.step.profile = True
        for s in sessions:
            s.profile = True
        parts = []
        for _ in range(2):
            pcm = [(rng.standard_normal(spc) * 0.1).astype(np.float32) for _ in sessions]
            advance(sessions, pcm, batching)
            parts.append(dataclasses.asdict(sessions[0].timings))
        for s in sessions:
            s.profile = False
        models.step.profile = False
        med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
        brk = {k: statistics.median(x[k] for x in parts) * 1e3 for k in ("encode", "audio", "dit", "decode", "other")}
        chunk_s = cfg.new_frames / cfg.fps
        log(figure="round", batch=b, padded=batching.padded(b), round_s=med["round_s"],
            mp4_encode_s_per_stream=med["mp4_s"] / b, chunk_s=chunk_s, realtime=med["round_s"] <= chunk_s,
            stream_fps=cfg.new_frames * b / med["round_s"], breakdown_ms_profiled=brk)
    new = {k: v - frames_before.get(k, 0) for k, v in counters["stats"].items() if v != frames_before.get(k, 0)}
    log(figure="recompiles", dynamo_stats_delta=new, recompiled=bool(new.get("unique_graphs", 0)))


if __name__ == "__main__":
    main()
