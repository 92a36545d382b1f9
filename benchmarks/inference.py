"""Streaming-inference speed of SoulX-FlashHead against stock diffusers parts, same process, same GPU.

Random weights (speed does not depend on values; shapes are the released ones).

Single GPU (Pro 1.3B 512x512, Lite 1.3B + LTX VAE, 14B DiT/VAE at 720x416)::

    python benchmarks/inference.py --suite single --out bench.json

Streaming pipeline in the default (fast) path with the stock baseline, plus the eager path
(``--no-fast-path``) and FP8 GEMMs with their drift against bf16, then the warm-up a restarted
server pays with the compile caches filled::

    python benchmarks/inference.py --suite single --part pipeline --variants pro --also-eager --also-fp8
    python benchmarks/inference.py --suite single --part warmup --variants pro

Sequence-parallel 14B DiT step (xfuser Ulysses x Ring when importable, else plain Ulysses)::

    torchrun --nproc-per-node 4 benchmarks/inference.py --suite sp --variant 14b

Each figure is printed with the matching stock-diffusers figure and the ratio stock / ours
(> 1 = we are faster). Stock parts: ``WanTransformer3DModel`` (Wan2.1-T2V-1.3B / 14B config, 512 text
tokens), ``AutoencoderKLWan``, ``AutoencoderKLLTXVideo``, all bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import find_variant, median_seconds, sync

from vividhead.models.configs import LIVETALK_14B
from vividhead.models.flashhead import FlashHeadTransformer

RESULTS: list[dict] = []


def log(**row) -> None:
    """Record one figure and print it as a JSON line."""
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def build_on(dev, dtype, fn):
    """Construct a module directly on ``dev`` in ``dtype`` (a 14B model would take minutes on CPU)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else old)
    try:
        with torch.device(dev):
            return fn().to(dev, dtype).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(old)


def stock_wan_dit(variant, dev, dtype):
    """Stock diffusers ``WanTransformer3DModel`` with the variant's backbone shapes (random init)."""
    from diffusers import WanTransformer3DModel

    c = variant.transformer
    return build_on(dev, dtype, lambda: WanTransformer3DModel(
        patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.dim // c.num_heads,
        in_channels=c.out_dim, out_channels=c.out_dim, text_dim=4096, freq_dim=256, ffn_dim=c.ffn_dim,
        num_layers=c.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ))


def dit_inputs(variant, dev, dtype):
    """Seeded ``(x, y, context, t)`` of one chunk: latents ``[1, C, F, H, W]``, audio windows
    ``[1, 33, 5, 12, 768]``, timestep ``[1]``."""
    c, s = variant.transformer, variant.streaming
    f = (s.frame_num - 1) // c.vae_stride[0] + 1
    h, w = s.height_px // c.vae_stride[1], s.width_px // c.vae_stride[2]
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, c.out_dim, f, h, w, device=dev, generator=g).to(dtype)
    y = torch.randn(1, c.out_dim, f, h, w, device=dev, generator=g).to(dtype)
    ctx = torch.randn(1, s.frame_num, c.audio_window, c.audio_layers, c.audio_channels, device=dev, generator=g).to(dtype)
    t = torch.tensor([937.5], device=dev)
    return x, y, ctx, t


@torch.no_grad()
def bench_dit(variant, dev, dtype, compile_modes=("eager", "compiled"), stock=True, iters=10):
    """One denoising step of our DiT and of stock WanTransformer3DModel, eager and compiled."""
    x, y, ctx, t = dit_inputs(variant, dev, dtype)
    out = {}
    ours = build_on(dev, dtype, lambda: FlashHeadTransformer.from_config_dataclass(variant.transformer))
    for mode in compile_modes:
        fn = torch.compile(ours) if mode == "compiled" else ours
        t0 = time.perf_counter()
        sec = median_seconds(partial(fn, x, t, ctx, y), warmup=3, iters=iters)
        out[("ours", mode)] = sec
        log(figure=f"dit_step_{mode}", variant=variant.name, who="ours", ms=sec * 1e3,
            setup_s=time.perf_counter() - t0 - sec * (iters + 3))
    del ours
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if stock:
        model = stock_wan_dit(variant, dev, dtype)
        text = torch.randn(1, 512, 4096, device=dev, dtype=dtype)
        for mode in compile_modes:
            fn = torch.compile(model) if mode == "compiled" else model
            sec = median_seconds(partial(fn, hidden_states=x, timestep=t, encoder_hidden_states=text,
                                         return_dict=False), warmup=3, iters=iters)
            out[("stock", mode)] = sec
            log(figure=f"dit_step_{mode}", variant=variant.name, who="stock", ms=sec * 1e3,
                ratio_stock_over_ours=sec / out[("ours", mode)])
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


@torch.no_grad()
def bench_vae(variant, dev, dtype, iters=5, accelerated=True, toy=False):
    """Stock diffusers VAE decode of one chunk and encode of the motion frames and, for the Wan VAE
    (``accelerated``), the same through :meth:`WanVAE.accelerate` in the same process, with its max
    and mean absolute difference to stock. ``toy``: the few-channel VAE (CPU dry runs)."""
    from vividhead.models.vae import build_vae

    s = variant.streaming
    vae = build_on(dev, dtype, lambda: build_vae(variant.vae, tiny=toy))
    f = (s.frame_num - 1) // vae.temporal_stride + 1
    z = torch.randn(1, vae.latent_channels, f, s.height_px // vae.spatial_stride, s.width_px // vae.spatial_stride,
                    device=dev, dtype=dtype)
    motion = torch.rand(1, 3, s.motion_frames, s.height_px, s.width_px, device=dev, dtype=dtype) * 2 - 1
    res = {}
    dec = median_seconds(lambda: vae.decode(z), warmup=2, iters=iters)
    enc = median_seconds(lambda: vae.encode(motion), warmup=2, iters=iters)
    log(figure="vae_decode_chunk", variant=variant.name, who="stock", ms=dec * 1e3, frames=s.frame_num)
    log(figure="vae_encode_motion", variant=variant.name, who="stock", ms=enc * 1e3, frames=s.motion_frames)
    res["stock_decode"], res["stock_encode"] = dec, enc
    if accelerated and hasattr(vae, "accelerate"):  # Wan: our accelerated execution, same process
        import copy

        ref_dec, ref_enc = vae.decode(z).float(), vae.encode(motion).float()
        torch.backends.cudnn.benchmark = True
        for one_pass in (False, True):
            who = "ours (accelerated, one pass)" if one_pass else "ours (accelerated, per-frame cache)"
            fast = copy.deepcopy(vae)
            fast.accelerate(compile_norms=dev.type == "cuda", one_pass=one_pass)
            fdec = median_seconds(partial(fast.decode, z), warmup=3, iters=iters)
            fenc = median_seconds(partial(fast.encode, motion), warmup=3, iters=iters)
            err = (fast.decode(z).float() - ref_dec).abs()
            eerr = (fast.encode(motion).float() - ref_enc).abs()
            log(figure="vae_decode_chunk", variant=variant.name, who=who, ms=fdec * 1e3,
                ratio_stock_over_ours=dec / fdec, max_abs_diff=err.max().item(), mean_abs_diff=err.mean().item())
            log(figure="vae_encode_motion", variant=variant.name, who=who, ms=fenc * 1e3,
                ratio_stock_over_ours=enc / fenc, max_abs_diff=eerr.max().item(), mean_abs_diff=eerr.mean().item())
            del fast
    return res


@torch.no_grad()
def bench_fp8_dit(variant, dev, iters=10):
    """FP8 GEMMs (:mod:`vividhead.inference.fp8`) against bf16 on the same random weights and inputs:
    relative L2 error of one DiT step against a float32 (TF32 off) reference for bf16 and for FP8,
    FP8 against bf16, and the eager step time of both."""
    import copy

    from vividhead.inference.fp8 import convert_linears_to_fp8

    torch.manual_seed(0)
    model = build_on(dev, torch.float32, lambda: FlashHeadTransformer.from_config_dataclass(variant.transformer))
    x, y, ctx, _ = dit_inputs(variant, dev, torch.float32)
    t = torch.tensor([936.0], device=dev)  # exact in bf16 (the model casts t to its dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = model(x, t, ctx, y).float()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    bf = model.to(torch.bfloat16)
    del model
    args = (x.bfloat16(), t, ctx.bfloat16(), y.bfloat16())
    out_bf = bf(*args).float()
    f8 = copy.deepcopy(bf)
    n = convert_linears_to_fp8(f8)
    out_f8 = f8(*args).float()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    row = dict(figure="dit_fp8_drift", variant=variant.name, fp8_linears=n, rel_bf16_vs_fp32=rel(out_bf, ref),
               rel_fp8_vs_fp32=rel(out_f8, ref), rel_fp8_vs_bf16=rel(out_f8, out_bf))
    for name, m in (("bf16", bf), ("fp8", f8)):  # eager step times (compiled: the pipeline breakdowns)
        row[f"eager_step_ms_{name}"] = median_seconds(partial(m, *args), warmup=2, iters=iters) * 1e3
    log(**row)
    del bf, f8
    torch.cuda.empty_cache()


@torch.no_grad()
def bench_pipeline(variant, dev, dtype, stock_chunk_s: float | None, n_chunks: int = 12, compile_models=True,
                   fast_vae=True, cuda_graphs=True, fp8=False, toy=False, who="ours", keep_chunks=3,
                   fast_start_figure=True, vae_compile: str | None = None) -> list:
    """Sustained FPS and first-frame latency of the streaming session (random weights), with
    :meth:`FlashHeadModels.optimize` applied (nothing when ``compile_models``, ``fast_vae`` and ``fp8``
    are all off: the eager path); first frames also with ``fast_start``. ``toy``: the few-channel VAE
    and Wav2Vec (CPU dry runs); ``vae_compile``: see :meth:`FlashHeadModels.optimize`.

    Returns:
        the first ``keep_chunks`` chunks of the standard session, uint8 ``[28, H, W, 3]`` each (same
        seed, reference and audio in every call: the drift between paths).
    """
    from vividhead.inference.pipeline import FlashHeadModels, StreamingSession

    torch.backends.cudnn.benchmark = True
    models = FlashHeadModels.random(variant, device=str(dev), dtype=dtype, tiny_encoders=toy)
    applied = {}
    if compile_models or fast_vae or fp8:
        kw = {} if vae_compile is None else {"vae_compile": vae_compile or None}  # "": explicitly off
        applied = models.optimize(compile_dit=compile_models, cuda_graphs=cuda_graphs, fast_vae=fast_vae, fp8=fp8, **kw)
    cfg = variant.streaming
    fast_cfg = dataclasses.replace(cfg, fast_start=True)
    ref = (np.random.RandomState(0).rand(cfg.height_px, cfg.width_px, 3) * 255).astype(np.uint8)
    rng = np.random.RandomState(1)
    spc = cfg.samples_per_chunk
    pcm = (rng.randn(spc * (n_chunks + 4)) * 3000).astype(np.int16)
    # warm-up (what `vividhead serve` does at start; then the fast-start shapes): compilation,
    # CUDA-graph recording, cuDNN autotuning stay out of the figures
    warm_s = models.warm_up(cfg)
    warm_fast_start_s = models.warm_up(fast_cfg) if fast_start_figure else None
    first = {"fast_start": None}
    for name, streaming in (("fast_start", fast_cfg), ("standard", cfg))[0 if fast_start_figure else 1 :]:
        session = StreamingSession(models, ref, profile=False, streaming=streaming)
        sync()
        t0 = time.perf_counter()
        out = next(iter(session.feed(pcm[:spc])))
        sync()
        first[name] = time.perf_counter() - t0
        assert out.shape == (streaming.chunk_frames(0)[1], cfg.height_px, cfg.width_px, 3)
    # `session` is the standard one, one chunk in
    kept = [out]
    t0 = time.perf_counter()
    frames = 0
    for i in range(1, n_chunks):
        for out in session.feed(pcm[i * spc : (i + 1) * spc]):
            frames += out.shape[0]
            if len(kept) < keep_chunks:
                kept.append(out)
    sync()
    sustained = frames / (time.perf_counter() - t0)
    # per-stage breakdown (synchronised) over a few more chunks
    session.profile = True
    stages = []
    for i in range(n_chunks, n_chunks + 3):
        for _ in session.feed(pcm[i * spc : (i + 1) * spc]):
            stages.append(dataclasses.asdict(session.timings))
    brk = {k: statistics.median(s[k] for s in stages) * 1e3 for k in ("audio", "dit", "decode", "encode", "other", "total")}
    stock_fps = cfg.new_frames / stock_chunk_s if stock_chunk_s else None
    log(figure="pipeline", variant=variant.name, who=who, optimize=applied,
        sustained_fps=sustained, first_frames_s=first["standard"], first_frames_fast_start_s=first["fast_start"],
        warmup_s=warm_s, warmup_fast_start_extra_s=warm_fast_start_s, breakdown_ms=brk, stock_fps=stock_fps,
        ratio_ours_over_stock_fps=(sustained / stock_fps) if stock_fps else None,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None)
    del models, session
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return kept


def log_drift(variant, a: list, b: list, name: str) -> None:
    """Frame drift between two pipeline paths on the same inputs: mean / max absolute uint8
    difference and PSNR over the kept chunks."""
    x = np.concatenate(a).astype(np.float32)
    y = np.concatenate(b).astype(np.float32)
    mse = float(((x - y) ** 2).mean())
    log(figure="frame_drift", variant=variant.name, compare=name, chunks=len(a),
        mean_abs_uint8=float(np.abs(x - y).mean()), max_abs_uint8=float(np.abs(x - y).max()),
        psnr_db=10 * np.log10(255**2 / mse) if mse > 0 else float("inf"))


def bench_warmup(variant, dev, dtype, fp8=False, toy=False, artifacts: Path | None = None) -> None:
    """`vividhead serve`'s start in a fresh process: load (random weights), the default fast path,
    :meth:`FlashHeadModels.warm_up` for the standard chunk (compile caches as this machine has them).
    With ``artifacts`` (``--compile-artifacts``): loaded first if the file exists, written after,
    as ``vividhead serve --compile-artifacts`` does; run twice with two empty
    ``TORCHINDUCTOR_CACHE_DIR`` folders to time a fresh machine with and without the file."""
    from vividhead.inference.compile_cache import load_compile_artifacts, save_compile_artifacts
    from vividhead.inference.pipeline import FlashHeadModels

    t0 = time.perf_counter()
    models = FlashHeadModels.random(variant, device=str(dev), dtype=dtype, tiny_encoders=toy)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = load_compile_artifacts(artifacts) if artifacts is not None else None
    artifacts_load_s = time.perf_counter() - t0
    applied = models.optimize(fp8=fp8)
    warmup_s = models.warm_up()
    t0 = time.perf_counter()
    written = save_compile_artifacts(artifacts) if artifacts is not None else None
    log(figure="server_warmup", variant=variant.name, optimize=applied, load_random_s=load_s,
        warmup_s=warmup_s, cache_dir=os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
        compile_artifacts=None if artifacts is None else {
            "path": str(artifacts), "loaded": loaded, "load_s": artifacts_load_s,
            "written_bytes": written, "save_s": time.perf_counter() - t0})


def suite_single(args) -> None:
    """One GPU: DiT step, VAE, pipeline for each variant (``--part`` narrows it)."""
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    log(figure="device", name=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch=torch.__version__,
        date=time.strftime("%Y-%m-%d"))
    # several compiled DiT instances in one process (each a dynamo cache entry of the same code)
    torch._dynamo.config.recompile_limit = 64
    for name in args.variants:
        variant, toy = find_variant(name)
        if args.part == "warmup":
            bench_warmup(variant, dev, dtype, fp8=args.fp8, toy=toy, artifacts=args.compile_artifacts)
            continue
        if args.part == "pipeline":
            # stock parts eager only (no compile time), then the default (fast) pipeline
            dit = bench_dit(variant, dev, dtype, compile_modes=("eager",))
            vae = bench_vae(variant, dev, dtype, toy=toy)
            stock_chunk = 4 * dit[("stock", "eager")] + vae["stock_decode"] + vae["stock_encode"]
            fast = bench_pipeline(variant, dev, dtype, stock_chunk, compile_models=not args.no_compile,
                                  fast_vae=not args.stock_vae, cuda_graphs=not args.no_cuda_graphs, fp8=args.fp8,
                                  toy=toy, who="ours (fp8)" if args.fp8 else "ours")
            if args.also_vae_compile is not None:
                vc = bench_pipeline(variant, dev, dtype, stock_chunk, cuda_graphs=not args.no_cuda_graphs, toy=toy,
                                    who=f"ours (Wan VAE compile: {args.also_vae_compile or 'off'})",
                                    fast_start_figure=False, vae_compile=args.also_vae_compile)
                log_drift(variant, vc, fast, f"Wan VAE compile {args.also_vae_compile or 'off'} vs default")
            if args.also_eager:
                eager = bench_pipeline(variant, dev, dtype, stock_chunk, compile_models=False, fast_vae=False,
                                       toy=toy, who="ours (eager: --no-fast-path)", fast_start_figure=False)
                log_drift(variant, fast, eager, "default fast path vs eager (bf16)")
            if args.also_fp8 and dev.type == "cuda":
                bench_fp8_dit(variant, dev)
                f8 = bench_pipeline(variant, dev, dtype, stock_chunk, cuda_graphs=not args.no_cuda_graphs, fp8=True,
                                    toy=toy, who="ours (fp8)", fast_start_figure=False)
                log_drift(variant, f8, fast, "fp8 vs bf16 fast path")
                if args.also_eager:
                    log_drift(variant, f8, eager, "fp8 vs eager bf16")
            continue
        if args.part == "vae":
            bench_vae(variant, dev, dtype, iters=3, toy=toy)
            continue
        if variant is LIVETALK_14B:
            bench_dit(variant, dev, dtype, compile_modes=("eager", "compiled") if not args.no_compile else ("eager",),
                      stock=True, iters=5)
            bench_vae(variant, dev, dtype, iters=3, toy=toy)
            continue
        dit = bench_dit(variant, dev, dtype, compile_modes=("eager", "compiled") if not args.no_compile else ("eager",))
        vae = bench_vae(variant, dev, dtype, toy=toy)
        stock_chunk = 4 * dit[("stock", "eager")] + vae["stock_decode"] + vae["stock_encode"]
        log(figure="stock_pipeline_estimate", variant=name, chunk_ms=stock_chunk * 1e3,
            fps=variant.streaming.new_frames / stock_chunk, note="4 x stock DiT step (eager) + stock VAE decode + encode")
        bench_pipeline(variant, dev, dtype, stock_chunk, compile_models=not args.no_compile,
                       fast_vae=not args.stock_vae, cuda_graphs=not args.no_cuda_graphs, fp8=args.fp8, toy=toy)


def suite_sp(args) -> None:
    """Under torchrun: the DiT step with sequence parallelism over all ranks, checked against the
    same model on one GPU (relative error logged)."""
    from vividhead.inference.parallel import enable_sequence_parallel, init_distributed

    backend = init_distributed(ulysses_degree=args.ulysses, ring_degree=args.ring, use_xfuser=not args.no_xfuser)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    dev, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
    variant, _ = find_variant(args.variants[0])
    torch.manual_seed(0)  # same random weights on every rank
    model = build_on(dev, dtype, lambda: FlashHeadTransformer.from_config_dataclass(variant.transformer))
    x, y, ctx, t = dit_inputs(variant, dev, dtype)
    rel_err = None
    if world > 1:
        from vividhead.inference.parallel import disable_sequence_parallel

        with torch.no_grad():
            ref = model(x, t, ctx, y).float()
            backend = enable_sequence_parallel(model, backend)
            try:
                sp_out = model(x, t, ctx, y).float()
            except Exception as exc:  # xfuser attention failing at run time: say so, fall back
                print(f"[rank {rank}] xfuser attention failed ({type(exc).__name__}: {exc}); plain Ulysses", flush=True)
                disable_sequence_parallel(model)
                backend = enable_sequence_parallel(model, "ulysses")
                sp_out = model(x, t, ctx, y).float()
            rel_err = ((sp_out - ref).norm() / ref.norm()).item()
            del ref, sp_out
    with torch.no_grad():
        for mode in ("eager",) if args.no_compile else ("eager", "compiled"):
            fn = torch.compile(model) if mode == "compiled" else model
            torch.distributed.barrier()
            sec = median_seconds(partial(fn, x, t, ctx, y), warmup=3, iters=5)
            if rank == 0:
                proc = model.blocks[0].self_attn.processor
                log(figure=f"dit_step_{mode}", variant=variant.name, who="ours", gpus=world, backend=backend,
                    ulysses=args.ulysses or world // args.ring if backend == "xfuser" else world,
                    ring=args.ring if backend == "xfuser" else 1,
                    attn=getattr(proc, "attn_type", type(proc).__name__),
                    ms=sec * 1e3, rel_err_vs_1gpu=rel_err, device=torch.cuda.get_device_name())
    torch.distributed.destroy_process_group()


def main() -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["single", "sp"], default="single")
    p.add_argument("--variants", nargs="+", default=["pro", "lite"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-xfuser", action="store_true")
    p.add_argument("--ulysses", type=int, default=None, help="sp suite: Ulysses degree (default world / ring)")
    p.add_argument("--ring", type=int, default=1, help="sp suite: Ring degree")
    p.add_argument("--part", choices=["all", "pipeline", "vae", "warmup"], default="all",
                   help="single suite: everything, only the streaming pipeline, only the VAE, or the "
                        "server warm-up in this (fresh) process")
    p.add_argument("--stock-vae", action="store_true", help="pipeline: run the VAE as stock diffusers does")
    p.add_argument("--no-cuda-graphs", action="store_true", help="pipeline: compiled DiT without CUDA graphs")
    p.add_argument("--fp8", action="store_true", help="pipeline / warmup: FP8 GEMMs in the DiT")
    p.add_argument("--also-eager", action="store_true",
                   help="pipeline: also the eager path (--no-fast-path) and its frame drift")
    p.add_argument("--also-fp8", action="store_true",
                   help="pipeline: also the DiT FP8 drift / step time and the FP8 pipeline")
    p.add_argument("--also-vae-compile", default=None, metavar="MODE",
                   help="pipeline: also the default path with the Wan VAE decoder/encoder compiled in this "
                        "torch.compile mode ('default', 'max-autotune-no-cudagraphs'; '' = not compiled), "
                        "and its frame drift against the default")
    p.add_argument("--compile-artifacts", type=Path, default=None, metavar="FILE",
                   help="warmup: load this torch.compile artifact file first if it exists, write it after")
    p.add_argument("--out", type=Path)
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run with tiny-pro / tiny-lite (tests/tiny_models.py)")
    args = p.parse_args()
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    try:
        suite_single(args) if args.suite == "single" else suite_sp(args)
    finally:
        if args.out and int(os.environ.get("RANK", 0)) == 0:
            args.out.write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
