"""Stage-1 training step of the 1.3B Pro DiT at 512x512x33, batch 1, one GPU: our trainer's step
(``SFTTrainer.train_step``: flow-matching loss, backward, grad clip, fused AdamW, EMA off) in
several execution modes, against a stock diffusers ``WanTransformer3DModel`` training step run in
the same process, plus the cost of the on-the-fly data path (VAE encode of window and reference,
Wav2Vec of the 8 s cache) against reading a latent-cache sample.

Random weights (speed does not depend on values). Prints one JSON line per figure and appends them
to ``--out`` (e.g. ``$OUT/train_step.jsonl`` on the device machine). Step times are means over
steps queued back to back, synchronised once at the end.

    python benchmarks/train_step.py --out $OUT/train_step.jsonl [--steps 10] [--only ours|stock|data]
    torchrun --nproc-per-node 2 benchmarks/train_step.py --only ours --modes ours_fsdp_compiled --out ...

MFU = 3 x forward matmul + attention FLOPs (``vividhead.training.trainers.flops``) / step time /
989 TFLOP/s (H100/H200 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import time

import numpy as np
import torch

from vividhead.training.trainers.flops import H200_BF16_PEAK, dit_forward_flops


def emit(out: str | None, **row) -> None:
    import os

    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def timed(fn, steps: int, warmup: int) -> tuple[float, float]:
    """Mean seconds per call over ``steps`` calls queued back to back (one synchronisation at the
    end, as the trainer runs them) after ``warmup`` calls, and peak GiB."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated() / 2**30


def pro_inputs(device):
    from vividhead.training.trainers.conditioning import ChunkInputs

    g = torch.Generator(device=device).manual_seed(0)
    return ChunkInputs(
        latents=torch.randn(1, 16, 9, 64, 64, device=device, generator=g),
        ref_latent=torch.randn(1, 16, 9, 64, 64, device=device, generator=g),
        context=torch.randn(1, 33, 5, 12, 768, device=device, generator=g),
        num_motion=torch.tensor([2], device=device),
    )


def bench_ours(args, flops) -> None:
    from vividhead.training.trainers.config import SFTConfig, config_from_dict
    from vividhead.training.trainers.latent_cache import CachedBatch
    from vividhead.training.trainers.sft import SFTTrainer

    class BenchTrainer(SFTTrainer):
        def make_dataset(self, *a, **k):  # no shards: inputs are made here
            return None

    modes = {
        "ours_fsdp1_compiled": {"strategy": "fsdp", "compile": True},
        "ours_autocast_compiled": {"strategy": "none", "compile": True},
        "ours_fsdp1_eager": {"strategy": "fsdp", "compile": False},
        "ours_fsdp1_compiled_ac": {"strategy": "fsdp", "compile": True, "activation_checkpointing": True},
        "ours_compiled_model": {"strategy": "none", "compile": False},  # whole-model compile, below
        # Under torchrun: FSDP2 over every rank, per-GPU batch 1 (scaling: compare with one rank).
        "ours_fsdp_compiled": {"strategy": "fsdp", "compile": True},
    }
    for name, par in modes.items():
        if args.modes and name not in args.modes:
            continue
        cfg = config_from_dict({
            "model": {"variant": "pro", "init": "random"},
            "data": {"shards": "unused", "validation_clips": 0},
            "optim": {"ema_decay": 0.0, "warmup_steps": 1},
            "parallel": {"precision": "bf16", **par},
            "log": {"progress": False},
            "run": {"output_dir": "/tmp/bench_sft", "device": "cuda"},
        }, SFTConfig)
        trainer = BenchTrainer(cfg)
        trainer.build()
        if name == "ours_compiled_model":
            trainer.transformer.compile()
        batch = CachedBatch(pro_inputs(trainer.env.device), [{}])
        t0 = time.perf_counter()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        step_s, peak = timed(lambda: trainer.train_step(batch), args.steps, 2)  # noqa: B023
        world = trainer.env.world_size
        emit(args.out, kind="ours", mode=name, world_size=world, step_ms=1000 * step_s, first_step_s=first,
             peak_gib=peak, tokens_per_s_per_gpu=9216 / step_s, mfu=flops / step_s / H200_BF16_PEAK)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    trainer.train_step(batch)
                torch.cuda.synchronize()
            rows = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:25]
            total = sum(e.self_device_time_total for e in prof.key_averages()) / 2
            emit(args.out, kind="profile", mode=name, cuda_ms_per_step=total / 1000,
                 top=[(e.key[:80], round(e.self_device_time_total / 2000, 2)) for e in rows])
        trainer = batch = None  # free before the next mode
        gc.collect()
        torch.cuda.empty_cache()


def bench_stock(args, flops) -> None:
    from diffusers import WanTransformer3DModel

    dev = torch.device("cuda")
    for name, compile_, gc_ in (("stock_eager_gc", False, True), ("stock_compiled_gc", True, True),
                                ("stock_eager", False, False), ("stock_compiled", True, False)):
        if args.modes and name not in args.modes:
            continue
        torch.manual_seed(0)
        model = WanTransformer3DModel(  # Wan2.1-T2V-1.3B
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
        ).to(dev).train()
        if gc_:
            model.enable_gradient_checkpointing()
        if compile_:
            for blk in model.blocks:
                blk.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        x = torch.randn(1, 16, 9, 64, 64, device=dev)
        text = torch.randn(1, 512, 4096, device=dev)
        target = torch.randn_like(x)

        def step(model=model, opt=opt, x=x, text=text, target=target):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x, torch.tensor([500.0], device=dev), text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_s, peak = timed(step, args.steps, 3)
        emit(args.out, kind="stock", mode=name, step_ms=1000 * step_s, peak_gib=peak, tokens_per_s=9216 / step_s,
             mfu=flops / step_s / H200_BF16_PEAK)
        model = opt = None  # free before the next mode
        gc.collect()
        torch.cuda.empty_cache()


def bench_data(args) -> None:
    """On-the-fly encode (GPU, bf16) of one window vs reading one latent-cache sample (CPU)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from vividhead.models.audio_encoder import Wav2VecFeatures
    from vividhead.models.vae import build_vae
    from vividhead.training.data import ClipWindowBatch
    from vividhead.training.trainers.conditioning import encode_batch
    from vividhead.training.trainers.latent_cache import LatentCacheDataset  # noqa: F401  (import cost)
    from vividhead.training.trainers.models import FrozenEncoders

    dev = torch.device("cuda")
    vae = build_vae("wan").to(dev, torch.bfloat16).eval()
    audio = Wav2VecFeatures(Wav2Vec2Model(Wav2Vec2Config())).to(dev).eval()
    enc = FrozenEncoders(vae, audio)
    batch = ClipWindowBatch(
        frames=torch.randint(0, 255, (1, 33, 3, 512, 512), dtype=torch.uint8),
        num_motion_frames=torch.tensor([5]), reference=torch.randint(0, 255, (1, 3, 512, 512), dtype=torch.uint8),
        audio=torch.randn(1, 128000), wav2vec=None, meta=[{}],
    )
    with torch.no_grad():
        step_s, peak = timed(lambda: encode_batch(batch, enc, 5, dev, size=(512, 512)), args.steps, 2)
    emit(args.out, kind="data", mode="on_the_fly_encode", ms_per_window=1000 * step_s, peak_gib=peak)
    # A latent-cache sample: float16 latents + reference latent + audio features, decoded on CPU.
    arrays = {"latents": np.zeros((16, 9, 64, 64), np.float16), "ref": np.zeros((16, 9, 64, 64), np.float16),
              "audio": np.zeros((35, 12, 768), np.float16)}
    blobs = {}
    for k, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, a)
        blobs[k] = buf.getvalue()
    t0 = time.perf_counter()
    for _ in range(50):
        for b in blobs.values():
            torch.from_numpy(np.load(io.BytesIO(b))).float()
    read_ms = 1000 * (time.perf_counter() - t0) / 50
    emit(args.out, kind="data", mode="latent_cache_read", ms_per_window=read_ms,
         bytes_per_window=sum(len(b) for b in blobs.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", choices=["ours", "stock", "data"], action="append")
    ap.add_argument("--modes", nargs="*", default=None)
    ap.add_argument("--profile", action="store_true", help="also profile the CUDA kernels of our modes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True
    from vividhead.models.configs import get_variant

    flops = 3 * dit_forward_flops(get_variant("pro").transformer, (9, 64, 64))
    emit(args.out, kind="meta", device=torch.cuda.get_device_name(), torch=torch.__version__,
         train_flops_per_step=flops, date=time.strftime("%Y-%m-%d"))
    only = args.only or ["ours", "stock", "data"]
    if "ours" in only:
        bench_ours(args, flops)
    if "stock" in only:
        bench_stock(args, flops)
    if "data" in only:
        bench_data(args)


if __name__ == "__main__":
    main()
