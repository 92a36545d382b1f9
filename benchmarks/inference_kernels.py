"""Kernel-level choices for streaming inference, each timed against the stock path in the same process.

* Wan2.1 VAE decode (9 latent frames -> 33 frames) and encode (5 frames) at 512x512 and 720x416:
  stock diffusers ``AutoencoderKLWan`` vs stock + ``cudnn.benchmark`` vs stock in channels_last_3d
  vs :func:`vividhead.models.wan_vae_fast.accelerate_wan_vae` (channels-last, time-only causal
  padding, fused RMS norm + SiLU);
  max abs difference of the outputs against stock.
* LTX-Video VAE decode/encode: stock vs channels_last_3d vs ``torch.compile``.
* ``--parts vae_profile``: where the accelerated Wan VAE decode spends its GPU time (kernel classes).
* ``--parts wan_levers --wan-lever L``: one execution lever on the accelerated Wan VAE (cuDNN engine
  search, whole-decoder ``torch.compile``), time, first-call (compile) time, error against stock and
  a kernel-class profile of one decode; one lever per process.
* Scaled-dot-product attention at the DiT's shapes: PyTorch's default choice vs each backend.
* DiT step: ``torch.compile`` default vs cuDNN attention vs CUDA graphs
  (``reduce-overhead``). (``max-autotune`` was tried: its GEMM autotuning alone took
  minutes per shape on an H100, so it is not offered.)

Usage (one GPU)::

    python benchmarks/inference_kernels.py --out kernels.json [--parts vae ltx sdpa dit]

Prints one JSON line per figure, with ``ratio`` = stock time / this time (> 1 = faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from functools import partial
from pathlib import Path

import torch
from _common import median_seconds

RESULTS: list[dict] = []
OUT: list[Path] = []  # where to rewrite RESULTS after every figure (a run cut short keeps its figures)


def log(**row) -> None:
    """Record one figure, print it as a JSON line and rewrite ``--out``."""
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    for path in OUT:
        path.write_text(json.dumps(RESULTS, indent=1))


def bench(fn, warmup: int = 2, iters: int = 5) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls (CUDA-synchronised)."""
    return median_seconds(fn, iters=iters, warmup=warmup)


@torch.no_grad()
def part_vae(dev, dtype) -> None:
    """Wan VAE variants (decode 9 latent frames, encode 5 frames)."""
    from vividhead.models.vae import build_vae
    from vividhead.models.wan_vae_fast import accelerate_wan_vae

    torch.manual_seed(0)
    base = build_vae("wan").to(dev, dtype).eval()
    for h, w in ((512, 512), (416, 720)):
        z = torch.randn(1, 16, 9, h // 8, w // 8, device=dev, dtype=dtype)
        video = torch.rand(1, 3, 5, h, w, device=dev, dtype=dtype) * 2 - 1
        torch.backends.cudnn.benchmark = False
        ref_dec = base.decode(z)
        ref_enc = base.encode(video)
        t_dec = bench(partial(base.decode, z))
        t_enc = bench(partial(base.encode, video))
        log(part="wan_vae", variant="stock", hw=[h, w], decode_ms=t_dec * 1e3, encode_ms=t_enc * 1e3)
        torch.backends.cudnn.benchmark = True
        for name in ("cudnn_benchmark", "channels_last_3d", "accelerated"):
            vae = base
            zz, vv = z, video
            if name != "cudnn_benchmark":
                vae = copy.deepcopy(base)
                if name == "channels_last_3d":
                    for m in vae.model.modules():
                        if isinstance(m, torch.nn.Conv3d):
                            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
                else:
                    accelerate_wan_vae(vae.model)
                zz = z.contiguous(memory_format=torch.channels_last_3d)
                vv = video.contiguous(memory_format=torch.channels_last_3d)
            try:
                d = bench(partial(vae.decode, zz))
                e = bench(partial(vae.encode, vv))
                err_d = (vae.decode(zz).float() - ref_dec.float()).abs().max().item()
                err_e = (vae.encode(vv).float() - ref_enc.float()).abs().max().item()
                log(part="wan_vae", variant=name, hw=[h, w], decode_ms=d * 1e3, encode_ms=e * 1e3,
                    ratio_decode=t_dec / d, ratio_encode=t_enc / e, max_abs_err_decode=err_d, max_abs_err_encode=err_e)
            except Exception as exc:  # report and go on: this is a probe
                log(part="wan_vae", variant=name, hw=[h, w], error=f"{type(exc).__name__}: {exc}"[:300])
            if vae is not base:
                del vae
            torch.cuda.empty_cache()


@torch.no_grad()
def part_vae_profile(dev, dtype) -> None:
    """Where the accelerated Wan VAE decode (512x512x33) spends its GPU time: kernel classes from
    ``torch.profiler`` (convolution / elementwise+norm / copy+cat+pad / other), top kernels."""
    from vividhead.models.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("wan").to(dev, dtype).eval()
    vae.accelerate(compile_norms=True)
    torch.backends.cudnn.benchmark = True
    z = torch.randn(1, 16, 9, 64, 64, device=dev, dtype=dtype)
    for _ in range(3):
        vae.decode(z)
    torch.cuda.synchronize()
    log(part="vae_profile", **_profile_classes(lambda: vae.decode(z)))


def _profile_classes(fn) -> dict:
    """GPU time of one ``fn()`` call by kernel class (``torch.profiler``): total ms, shares of
    convolution / copy+cat+pad / Triton (fused) / other elementwise, and the top 12 kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total, e.count) for e in prof.key_averages()
            if e.device_time_total > 0 and not e.key.startswith(("cudaLaunch", "cudaDevice"))]
    total = sum(r[1] for r in rows)
    classes: dict[str, float] = {}
    for key, t, _ in rows:
        k = key.lower()
        cls = ("conv" if any(w in k for w in ("conv", "cudnn", "implicit", "xmma", "sm90", "gemm", "wgrad", "dgrad"))
               else "copy/cat/pad" if any(w in k for w in ("copy", "cat", "pad", "memcpy", "memset"))
               else "triton (fused)" if "triton" in k
               else "elementwise/other")
        classes[cls] = classes.get(cls, 0.0) + t
    return dict(total_gpu_ms=total / 1e3,
                share={k: round(v / total, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
                top=[{"kernel": k[:90], "ms": round(t / 1e3, 2), "calls": c}
                     for k, t, c in sorted(rows, key=lambda r: -r[1])[:12]])


@torch.no_grad()
def part_wan_levers(dev, dtype, lever: str, profile_decode: bool = True, iters: int = 7) -> None:
    """One Wan VAE execution lever on top of the default accelerated one-pass VAE, 512x512 decode of
    9 latent frames (33 frames) and encode of 5 frames, against stock in the same process (max / mean
    abs difference, bf16) and against the default accelerated VAE. Run each lever in its own process
    (cuDNN's autotuning cache and the compile caches are per process).

    Levers: ``base`` (the default), ``cudnn_limit0`` (``cudnn.benchmark_limit = 0``: cuDNN tries every
    engine, not the first 10), ``compile_default`` / ``compile_autotune`` (whole decoder and encoder
    under ``torch.compile``, mode default / ``max-autotune-no-cudagraphs``).
    """
    from vividhead.models.vae import build_vae

    torch.backends.cudnn.benchmark = True
    if lever == "cudnn_limit0":
        torch.backends.cudnn.benchmark_limit = 0
    torch.manual_seed(0)
    stock = build_vae("wan").to(dev, dtype).eval()
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(1, 16, 9, 64, 64, device=dev, generator=g).to(dtype)
    video = (torch.rand(1, 3, 5, 512, 512, device=dev, generator=g) * 2 - 1).to(dtype)
    ref_dec, ref_enc = stock.decode(z).float(), stock.encode(video).float()
    fast = copy.deepcopy(stock)
    del stock
    torch.cuda.empty_cache()
    mode = {"compile_default": "default", "compile_autotune": "max-autotune-no-cudagraphs"}.get(lever)
    counts = fast.accelerate(compile_norms=True, compile_coders=mode)
    t0 = time.perf_counter()
    dec = fast.decode(z).float()
    torch.cuda.synchronize()
    first_decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = fast.encode(video).float()
    torch.cuda.synchronize()
    first_encode_s = time.perf_counter() - t0
    ddec, denc = (dec - ref_dec).abs(), (enc - ref_enc).abs()
    row = dict(part="wan_lever", lever=lever, counts=counts, first_decode_s=first_decode_s,
               first_encode_s=first_encode_s,
               decode_ms=bench(partial(fast.decode, z), warmup=2, iters=iters) * 1e3,
               encode_ms=bench(partial(fast.encode, video), warmup=2, iters=iters) * 1e3,
               decode_max_abs_vs_stock=ddec.max().item(), decode_mean_abs_vs_stock=ddec.mean().item(),
               encode_max_abs_vs_stock=denc.max().item(), encode_mean_abs_vs_stock=denc.mean().item(),
               )
    row["decode_tflop_per_s"] = 73.9 / (row["decode_ms"] / 1e3)  # 73.9 TFLOP per decode (flop_counter, docs)
    row["decode_ms_repeat"] = bench(partial(fast.decode, z), warmup=0, iters=iters) * 1e3
    log(**row)
    if profile_decode:
        log(part="wan_lever_profile", lever=lever, **_profile_classes(partial(fast.decode, z)))


@torch.no_grad()
def part_ltx(dev, dtype) -> None:
    """LTX VAE decode (5 latent frames -> 33) / encode (9 frames) variants at 512x512."""
    from vividhead.models.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("ltx").to(dev, dtype).eval()
    z = torch.randn(1, 128, 5, 16, 16, device=dev, dtype=dtype)
    video = torch.rand(1, 3, 9, 512, 512, device=dev, dtype=dtype) * 2 - 1
    torch.backends.cudnn.benchmark = True
    t_dec, t_enc = bench(partial(vae.decode, z)), bench(partial(vae.encode, video))
    log(part="ltx_vae", variant="stock_cudnn_benchmark", decode_ms=t_dec * 1e3, encode_ms=t_enc * 1e3)
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    zc, vc = z.contiguous(memory_format=torch.channels_last_3d), video.contiguous(memory_format=torch.channels_last_3d)
    d, e = bench(partial(vae.decode, zc)), bench(partial(vae.encode, vc))
    log(part="ltx_vae", variant="channels_last_3d", decode_ms=d * 1e3, encode_ms=e * 1e3,
        ratio_decode=t_dec / d, ratio_encode=t_enc / e)
    for mode in ("default",):
        try:
            dec = torch.compile(vae.decode, mode=None if mode == "default" else mode, dynamic=False)
            enc = torch.compile(vae.encode, mode=None if mode == "default" else mode, dynamic=False)
            t0 = time.perf_counter()
            dec(z), enc(video)
            torch.cuda.synchronize()
            comp = time.perf_counter() - t0
            d, e = bench(partial(dec, z)), bench(partial(enc, video))
            log(part="ltx_vae", variant=f"compile_{mode}", decode_ms=d * 1e3, encode_ms=e * 1e3,
                ratio_decode=t_dec / d, ratio_encode=t_enc / e, compile_s=comp)
        except Exception as exc:
            log(part="ltx_vae", variant=f"compile_{mode}", error=f"{type(exc).__name__}: {exc}"[:300])


@torch.no_grad()
def part_sdpa(dev, dtype) -> None:
    """Self-attention at the DiT shapes: default dispatch vs each backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, heads, seq in (("pro_1.3b", 12, 9216), ("lite_1.3b", 12, 1280), ("14b_1gpu", 40, 10530),
                             ("14b_ulysses4", 10, 10532)):
        q, k, v = (torch.randn(1, heads, seq, 128, device=dev, dtype=dtype) for _ in range(3))
        base = bench(partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), iters=10)
        flops = 4 * heads * seq * seq * 128
        log(part="sdpa", shape=name, backend="default", ms=base * 1e3, tflops=flops / base / 1e12)
        for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([be]):
                    t = bench(partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), iters=10)
                log(part="sdpa", shape=name, backend=be.name, ms=t * 1e3, ratio=base / t, tflops=flops / t / 1e12)
            except Exception as exc:
                log(part="sdpa", shape=name, backend=be.name, error=f"{type(exc).__name__}: {exc}"[:200])


@torch.no_grad()
def part_dit(dev, dtype, variants) -> None:
    """DiT step: compile modes, and cuDNN attention inside the compiled graph."""
    import importlib.util

    from torch.nn.attention import SDPBackend, sdpa_kernel

    spec = importlib.util.spec_from_file_location("bench_inference", Path(__file__).resolve().parent / "inference.py")
    bi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bi)
    build_on, dit_inputs = bi.build_on, bi.dit_inputs
    from vividhead.models.configs import get_variant
    from vividhead.models.flashhead import FlashHeadTransformer

    for vname in variants:
        variant = get_variant(vname)
        x, y, ctx, t = dit_inputs(variant, dev, dtype)
        model = build_on(dev, dtype, partial(FlashHeadTransformer.from_config_dataclass, variant.transformer))
        eager = bench(partial(model, x, t, ctx, y), iters=5)
        log(part="dit", variant=vname, mode="eager", ms=eager * 1e3)
        for mode in ("default", "default+cudnn_attn", "reduce-overhead"):
            try:
                torch._dynamo.reset()
                cmode = {"default": None, "default+cudnn_attn": None}.get(mode, mode)
                fn = torch.compile(model, mode=cmode, dynamic=False)
                ctxm = sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]) if "cudnn" in mode else None
                if ctxm:
                    ctxm.__enter__()
                t0 = time.perf_counter()
                fn(x, t, ctx, y)
                torch.cuda.synchronize()
                comp = time.perf_counter() - t0
                sec = bench(partial(fn, x, t, ctx, y), warmup=3, iters=10)
                if ctxm:
                    ctxm.__exit__(None, None, None)
                log(part="dit", variant=vname, mode=mode, ms=sec * 1e3, ratio_vs_eager=eager / sec, compile_s=comp)
            except Exception as exc:
                log(part="dit", variant=vname, mode=mode, error=f"{type(exc).__name__}: {exc}"[:300])
        del model
        torch.cuda.empty_cache()


def main() -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["vae", "sdpa", "dit", "ltx"])
    p.add_argument("--dit-variants", nargs="+", default=["pro", "lite"])
    p.add_argument("--wan-lever", default="base",
                   choices=["base", "cudnn_limit0", "compile_default", "compile_autotune"],
                   help="--parts wan_levers: which lever (one per process)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    if args.out:
        OUT.append(args.out)
    log(part="device", name=torch.cuda.get_device_name(), torch=torch.__version__,
        cudnn=torch.backends.cudnn.version(), date=time.strftime("%Y-%m-%d"))
    for part in args.parts:
        t0 = time.perf_counter()
        {"vae": lambda: part_vae(dev, dtype), "ltx": lambda: part_ltx(dev, dtype),
         "vae_profile": lambda: part_vae_profile(dev, dtype),
         "wan_levers": lambda: part_wan_levers(dev, dtype, args.wan_lever),
         "sdpa": lambda: part_sdpa(dev, dtype), "dit": lambda: part_dit(dev, dtype, args.dit_variants)}[part]()
        log(part=f"{part}_done", seconds=time.perf_counter() - t0)


if __name__ == "__main__":
    main()
