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

Like-for-like pairs (``--ac``): for each activation-checkpointing mode and attention backend, our
step (one rank: autocast, blocks compiled) and the stock step with the same checkpointing (``all``:
diffusers' own gradient checkpointing; ``every_other`` / ``attention`` / ``save_matmuls``: our
wrapper applied to the stock blocks, ``attn1`` as the attention) and the same SDPA backend
(``torch.nn.attention.sdpa_kernel`` around its forward and backward), one after the other in this
process; a ``pair`` line gives stock ms / our ms and both peaks, a ``summary`` line each of our modes
against every stock mode that used no less memory::

    python benchmarks/train_step.py --ac none all every_other attention save_matmuls --attention auto cudnn \
        --steps 10 --out $OUT/train_step_pairs.jsonl
    python benchmarks/train_step.py --tiny --eager --ac none attention --attention auto math --steps 2  # CPU dry run

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

from vividhead.training.trainers.flops import H200_BF16_PEAK, dit_forward_flops, dit_tokens


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
    end, as the trainer runs them) after ``warmup`` calls, and peak GiB (0 without CUDA)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0


#: ``--tiny``: the DiT of ``tests/tiny_models.TINY_DIT`` at 64x64 px (CPU dry runs of the script).
TINY_MODEL = {"tiny_encoders": True, "height_px": 64, "width_px": 64, "transformer": {
    "dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 4, "in_dim": 8, "out_dim": 4, "text_dim": 16, "freq_dim": 32,
    "audio_layers": 2, "audio_channels": 16, "audio_intermediate_dim": 32, "audio_context_tokens": 4}}


def pro_inputs(device, batch: int = 1, tiny: bool = False):
    """A latent-cache batch of ``batch`` Pro windows: latents and reference latent float32
    ``[B, 16, 9, 64, 64]`` (``--tiny``: ``[B, 4, 9, 8, 8]``), Wav2Vec context ``[B, 33, 5, 12, 768]``
    (``[B, 33, 5, 2, 16]``), 2 motion latents."""
    from vividhead.training.trainers.conditioning import ChunkInputs

    c, hw, layers, ch = (4, 8, 2, 16) if tiny else (16, 64, 12, 768)
    g = torch.Generator(device=device).manual_seed(0)
    return ChunkInputs(
        latents=torch.randn(batch, c, 9, hw, hw, device=device, generator=g),
        ref_latent=torch.randn(batch, c, 9, hw, hw, device=device, generator=g),
        context=torch.randn(batch, 33, 5, layers, ch, device=device, generator=g),
        num_motion=torch.full((batch,), 2, device=device),
    )


def ours_trainer(args, parallel: dict):
    """Our stage-1 trainer on ``args.device`` with the ``parallel`` section ``parallel`` (random
    weights, EMA off, no data stream: the batch comes from :func:`pro_inputs`)."""
    from vividhead.training.trainers.config import SFTConfig, config_from_dict
    from vividhead.training.trainers.sft import SFTTrainer

    class BenchTrainer(SFTTrainer):
        def make_dataset(self, *a, **k):  # no shards: inputs are made here
            return None

    model = {"variant": "pro", "init": "random", **(TINY_MODEL if args.tiny else {})}
    cfg = config_from_dict({
        "model": model,
        "data": {"shards": "unused", "validation_clips": 0, "batch_size": args.batch},
        "optim": {"ema_decay": 0.0, "warmup_steps": 1},
        "parallel": {"precision": "fp32" if args.tiny else "bf16", **parallel},
        "log": {"progress": False},
        "run": {"output_dir": "/tmp/bench_sft", "device": args.device},
    }, SFTConfig)
    trainer = BenchTrainer(cfg)
    trainer.build()
    return trainer


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_ours(args, flops) -> None:
    from vividhead.training.trainers.latent_cache import CachedBatch

    modes = {
        "ours_fsdp1_compiled": {"strategy": "fsdp", "compile": True},
        "ours_autocast_compiled": {"strategy": "none", "compile": True},
        "ours_fsdp1_eager": {"strategy": "fsdp", "compile": False},
        "ours_fsdp1_compiled_ac": {"strategy": "fsdp", "compile": True, "activation_checkpointing": "all"},
        "ours_compiled_model": {"strategy": "none", "compile": False},  # whole-model compile, below
        # Under torchrun: FSDP2 over every rank, per-GPU batch 1 (scaling: compare with one rank).
        "ours_fsdp_compiled": {"strategy": "fsdp", "compile": True},
    }
    for name, par in modes.items():
        if args.modes and name not in args.modes:
            continue
        trainer = ours_trainer(args, par)
        if name == "ours_compiled_model":
            trainer.transformer.compile()
        batch = CachedBatch(pro_inputs(trainer.env.device, args.batch, args.tiny), [{}] * args.batch)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        step_s, peak = timed(lambda: trainer.train_step(batch), args.steps, 2)  # noqa: B023
        world = trainer.env.world_size
        emit(args.out, kind="ours", mode=name, world_size=world, batch=args.batch, step_ms=1000 * step_s,
             first_step_s=first, peak_gib=peak, tokens_per_s_per_gpu=args.tokens / step_s,
             mfu=flops / step_s / H200_BF16_PEAK)
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
        free_memory()


def stock_step(args, compile_: bool, ac: str, attention: str = "auto"):
    """A training step of a stock diffusers ``WanTransformer3DModel`` (Wan2.1-T2V-1.3B config; with
    ``--tiny`` the tiny DiT's widths) on ``args.device``: bf16 autocast (fp32 with ``--tiny``), MSE,
    grad clip 1.0, AdamW (fused on CUDA), with activation checkpointing ``ac`` (``all``: diffusers'
    ``enable_gradient_checkpointing``; other modes: :func:`apply_activation_checkpointing` on the
    stock blocks, ``attn1`` as the self-attention) and the SDPA backend ``attention`` around forward
    and backward.

    Returns:
        the step function (no arguments; it holds the model and the optimiser).
    """
    from contextlib import nullcontext

    from diffusers import WanTransformer3DModel
    from torch.nn.attention import sdpa_kernel

    from vividhead.training.trainers.distributed import apply_activation_checkpointing, sdpa_backend

    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.tiny:
        shape = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=16,
                     freq_dim=32, ffn_dim=64, num_layers=4)
    else:  # Wan2.1-T2V-1.3B
        shape = dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                     freq_dim=256, ffn_dim=8960, num_layers=30)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), **shape).to(dev).train()
    if ac == "all":
        model.enable_gradient_checkpointing()
    else:
        apply_activation_checkpointing(model.blocks, ac, attention="attn1")
    if compile_:
        for blk in model.blocks:
            blk.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda" or None)
    c, hw = (4, 8) if args.tiny else (16, 64)
    x = torch.randn(args.batch, c, 9, hw, hw, device=dev)
    text = torch.randn(args.batch, 512, shape["text_dim"], device=dev)
    target = torch.randn_like(x)
    backend = sdpa_backend(attention)

    def step(model=model, opt=opt, x=x, text=text, target=target):
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not args.tiny):
                out = model(x, torch.full((args.batch,), 500.0, device=dev), text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_stock(args, flops) -> None:
    for name, compile_, gc_ in (("stock_eager_gc", False, True), ("stock_compiled_gc", True, True),
                                ("stock_eager", False, False), ("stock_compiled", True, False)):
        if args.modes and name not in args.modes:
            continue
        step = stock_step(args, compile_, "all" if gc_ else "none")
        step_s, peak = timed(step, args.steps, 3)
        emit(args.out, kind="stock", mode=name, batch=args.batch, step_ms=1000 * step_s, peak_gib=peak,
             tokens_per_s=args.tokens / step_s, mfu=flops / step_s / H200_BF16_PEAK)
        step = None  # free before the next mode
        free_memory()


def bench_pairs(args, flops) -> None:
    """Our step and the stock step at the same activation checkpointing and SDPA backend, for each
    ``--ac`` x ``--attention``; then each of our steps against every stock step of no less memory."""
    from vividhead.training.trainers.latent_cache import CachedBatch

    compile_ = not args.eager
    rows = []
    trainer = batch = step = None
    for attention in args.attention:
        for ac in args.ac:
            torch._dynamo.reset()  # a new backend or wrapper compiles afresh
            side = "ours"
            try:
                trainer = ours_trainer(args, {"strategy": "none", "compile": compile_,
                                              "activation_checkpointing": ac, "attention_backend": attention})
                batch = CachedBatch(pro_inputs(trainer.env.device, args.batch, args.tiny), [{}] * args.batch)
                ours_s, ours_peak = timed(lambda: trainer.train_step(batch), args.steps, 2)  # noqa: B023
                trainer = batch = None
                free_memory()
                torch._dynamo.reset()
                side = "stock"
                step = stock_step(args, compile_, ac, attention)
                stock_s, stock_peak = timed(step, args.steps, 3)
            except torch.OutOfMemoryError as exc:
                emit(args.out, kind="pair", ac=ac, attention=attention, batch=args.batch,
                     oom=side, message=str(exc).splitlines()[0])
                trainer = batch = step = None
                free_memory()
                continue
            step = None
            free_memory()
            row = dict(kind="pair", ac=ac, attention=attention, compiled=compile_, batch=args.batch,
                       ours_step_ms=1000 * ours_s, stock_step_ms=1000 * stock_s, speedup_vs_stock=stock_s / ours_s,
                       ours_peak_gib=ours_peak, stock_peak_gib=stock_peak, ours_mfu=flops / ours_s / H200_BF16_PEAK,
                       stock_mfu=flops / stock_s / H200_BF16_PEAK,
                       ours_tokens_per_s=args.tokens / ours_s)
            emit(args.out, **row)
            rows.append(row)
    for r in rows:
        against = {f"{s['ac']}/{s['attention']}": round(s["stock_step_ms"] / r["ours_step_ms"], 3)
                   for s in rows if s["stock_peak_gib"] >= r["ours_peak_gib"]}
        emit(args.out, kind="summary", ac=r["ac"], attention=r["attention"], ours_step_ms=r["ours_step_ms"],
             ours_mfu=r["ours_mfu"], ours_peak_gib=r["ours_peak_gib"], speedup_vs_stock_same_ac=r["speedup_vs_stock"],
             speedup_vs_stock_with_no_less_memory=against)


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
    from vividhead.training.trainers.config import ATTENTION_BACKENDS, CHECKPOINTING_MODES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", choices=["ours", "stock", "data"], action="append")
    ap.add_argument("--modes", nargs="*", default=None)
    ap.add_argument("--profile", action="store_true", help="also profile the CUDA kernels of our modes")
    ap.add_argument("--ac", nargs="+", choices=CHECKPOINTING_MODES, default=None,
                    help="measure like-for-like pairs (ours and stock) at these activation-checkpointing modes "
                         "instead of the named modes")
    ap.add_argument("--attention", nargs="+", choices=ATTENTION_BACKENDS, default=["auto"],
                    help="SDPA backends of the pairs (with --ac)")
    ap.add_argument("--batch", type=int, default=1, help="windows per step")
    ap.add_argument("--eager", action="store_true", help="pairs without torch.compile")
    ap.add_argument("--tiny", action="store_true", help="tiny DiT and stock model on the CPU (dry run of the script)")
    args = ap.parse_args()
    args.device = "cpu" if args.tiny else "cuda"
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("needs CUDA (or --tiny for a CPU dry run)")
    if args.tiny and args.ac is None:
        raise SystemExit("--tiny runs the pairs only (give --ac)")
    torch.backends.cuda.matmul.allow_tf32 = True
    from vividhead.models.configs import get_variant

    tcfg = get_variant("pro").transformer
    if args.tiny:
        import dataclasses

        tcfg = dataclasses.replace(tcfg, **TINY_MODEL["transformer"])
    grid = (9, 8, 8) if args.tiny else (9, 64, 64)
    flops = 3 * dit_forward_flops(tcfg, grid, args.batch)
    args.tokens = args.batch * dit_tokens(tcfg, grid)
    emit(args.out, kind="meta", device=torch.cuda.get_device_name() if not args.tiny else "cpu",
         torch=torch.__version__, train_flops_per_step=flops, batch=args.batch, date=time.strftime("%Y-%m-%d"))
    if args.ac is not None:
        bench_pairs(args, flops)
        return
    only = args.only or ["ours", "stock", "data"]
    if "ours" in only:
        bench_ours(args, flops)
    if "stock" in only:
        bench_stock(args, flops)
    if "data" in only:
        bench_data(args)


if __name__ == "__main__":
    main()
