"""End-to-end streaming cycle with sequence parallelism (LiveTalk Fig. 6 style breakdown).

Every rank builds the same random-weight models (same seed, built directly on its GPU in bf16),
makes the DiT sequence-parallel (xfuser ``xFuserLongContextAttention``, Ulysses x Ring) and wraps the
Wan VAE in ``ParallelWanVAE``, and runs the same ``StreamingSession`` on the same reference image
and PCM; rank 0 reports. ``FlashHeadModels.optimize`` is applied as in production (DiT
``torch.compile``, accelerated Wan VAE; ``--no-compile`` / ``--stock-vae`` turn them off). Speed does
not depend on the weight values (shapes are the released ones)::

    torchrun --nproc-per-node 4 benchmarks/inference_sp.py --variant 14b --ulysses 4 --ring 1 \\
        --also 2x2 1x4 --out sp4.json
    torchrun --nproc-per-node 1 benchmarks/inference_sp.py --variant 14b --out sp1.json

``--also UxR ...`` measures further Ulysses x Ring degrees in the same processes after the first
(groups from ``inference.parallel.usp_groups``; the compiled DiT is reused, only the attention
processor changes). CPU dry run (gloo, plain Ulysses / PyTorch ring, tiny model)::

    torchrun --nproc-per-node 2 benchmarks/inference_sp.py --variant tiny-pro --device cpu \\
        --no-compile --ulysses 2 --also 1x2

Figures (one JSON line each on rank 0, all of them in ``--out``):

* ``device``: GPU, software, world size.
* ``dit_sp_check``: relative error of the sequence-parallel DiT output against the same model on one
  device (eager, same inputs), per configuration.
* ``e2e``: per configuration: per-chunk breakdown in ms (median over ``--profile-chunks`` chunks of
  the session's ``profile=True`` timings, device-synchronised between stages): ``audio`` (Temporal
  Audio Context Cache + Wav2Vec + windows), ``dit`` (4 steps), ``decode`` (VAE decode + colour
  correction), ``encode`` (VAE encode of the previous chunk's motion frames, which the session runs
  at the start of the next chunk), ``other`` (uint8 + copy to host), ``total``; unsynchronised sustained FPS over ``--chunks`` chunks; time to first frames (first PCM
  chunk -> its uint8 frames on the host); the DiT step alone (median of 5); warm-up time (includes
  compilation); peak GPU memory (max over ranks); whether all ranks returned identical frames;
  with ``--fast-start`` also the first frames of a ``fast_start`` session (one more compilation).
* ``vae_parallel``: ``ParallelWanVAE`` decode (one chunk) / encode (motion frames) against the plain
  VAE in the same process on the same GPU (ratio single / parallel, > 1 = parallel is faster) and
  the max abs difference of their outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from _common import find_variant, median_seconds, sync

from vividhead.inference.pipeline import FlashHeadModels, StreamingSession
from vividhead.models.configs import FlashHeadVariant


class Recorder:
    """Figure rows of this run. Rank 0 prints each row as a JSON line when logged and rewrites
    ``out`` (a JSON list) after every row, so a run killed by a timeout keeps what it measured."""

    def __init__(self, rank: int, out: Path | None) -> None:
        self.rank, self.out, self.rows = rank, out, []

    def log(self, **row) -> None:
        """Record one figure (rank 0 only prints / writes)."""
        self.rows.append(row)
        if self.rank == 0:
            print(json.dumps(row), flush=True)
            if self.out:
                self.out.write_text(json.dumps(self.rows, indent=1))


def say(msg: str) -> None:
    """Progress line on rank 0's stdout (not JSON), so a log shows where a killed run was."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_models(variant: FlashHeadVariant, dev: torch.device, dtype: torch.dtype, seed: int,
                 toy: bool = False) -> FlashHeadModels:
    """Random-weight models built directly on ``dev`` (:meth:`FlashHeadModels.random`: DiT and VAE
    in ``dtype``, Wav2Vec in float32). Same ``seed`` -> same weights on every rank. ``toy``: the
    few-channel VAE and Wav2Vec (CPU dry runs)."""
    return FlashHeadModels.random(variant, device=str(dev), dtype=dtype, seed=seed, tiny_encoders=toy)


def dit_inputs(models: FlashHeadModels, seed: int = 0):
    """Seeded DiT inputs of one chunk with the session's shapes and dtypes: ``x, y [1, C, F, h, w]``
    (model dtype), audio windows ``[1, frame_num, W, L, D]`` (model dtype), timestep float32 ``[1]``."""
    v, dev, dt = models.variant, models.device, models.dtype
    c, s = v.transformer, v.streaming
    vae = models.vae
    f = (s.frame_num - 1) // vae.temporal_stride + 1
    h, w = s.height_px // vae.spatial_stride, s.width_px // vae.spatial_stride
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(1, c.out_dim, f, h, w, device=dev, generator=g).to(dt)
    y = torch.randn(1, c.out_dim, f, h, w, device=dev, generator=g).to(dt)
    ctx = torch.randn(1, s.frame_num, c.audio_window, c.audio_layers, c.audio_channels, device=dev, generator=g).to(dt)
    t = torch.tensor([937.5], device=dev)
    return x, t, ctx, y


def eager_forward(model, *args) -> torch.Tensor:
    """``model(*args)`` without torch.compile (``set_stance("force_eager")`` when it is compiled)."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None:
        return model(*args)
    with stance("force_eager"):
        return model(*args)


def ranks_max(value: float, dev: torch.device, world: int) -> float:
    """Maximum of ``value`` over all ranks (``value`` itself without a process group)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def ranks_agree(frames: np.ndarray, dev: torch.device, world: int) -> bool:
    """Whether every rank holds byte-identical ``frames`` (CRC32 all-gathered)."""
    if world == 1:
        return True
    t = torch.tensor([zlib.crc32(frames.tobytes())], dtype=torch.int64, device=dev)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return all(p.item() == parts[0].item() for p in parts)


@torch.no_grad()
def measure_e2e(models: FlashHeadModels, ref: np.ndarray, pcm: np.ndarray, args, world: int,
                ref_out: torch.Tensor) -> dict:
    """Warm-up session, then a fresh session: first frames, sustained FPS, profiled breakdown, and the
    DiT step alone (plus its relative error against ``ref_out``, the eager one-device output on
    :func:`dit_inputs`). Collective when ``world > 1`` (every rank runs the same calls)."""
    dev, cfg = models.device, models.variant.streaming
    spc = cfg.samples_per_chunk
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    warm = StreamingSession(models, ref, profile=False)
    for _ in warm.feed(pcm[: spc * args.warmup_chunks]):
        pass
    sync(dev)
    warmup_s = time.perf_counter() - t0
    del warm
    say(f"warm-up ({args.warmup_chunks} chunks, compilation included) {warmup_s:.1f} s")

    t0 = time.perf_counter()
    session = StreamingSession(models, ref, profile=False)
    sync(dev)
    init_s = time.perf_counter() - t0
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    first = next(iter(session.feed(pcm[:spc])))
    sync(dev)
    first_s = time.perf_counter() - t0
    say(f"first frames {first_s:.3f} s")
    assert first.shape == (cfg.new_frames, cfg.height_px, cfg.width_px, 3), first.shape

    t0 = time.perf_counter()
    frames = 0
    for i in range(1, args.chunks + 1):
        for out in session.feed(pcm[i * spc : (i + 1) * spc]):
            frames += out.shape[0]
    sync(dev)
    sustained_s = time.perf_counter() - t0

    say(f"sustained {frames / sustained_s:.2f} fps")
    session.profile = True
    stages, last = [], first
    for i in range(args.chunks + 1, args.chunks + 1 + args.profile_chunks):
        for chunk in session.feed(pcm[i * spc : (i + 1) * spc]):
            last = chunk
            stages.append(dataclasses.asdict(session.timings))
    breakdown = {k: statistics.median(s[k] for s in stages) * 1e3 for k in ("audio", "dit", "decode", "encode", "other", "total")}
    agree = ranks_agree(last, dev, world)

    x, t, ctx, y = dit_inputs(models)
    dit_s = median_seconds(lambda: models.transformer(x, t, ctx, y), warmup=1, iters=5, device=dev)
    out = models.transformer(x, t, ctx, y).float()
    rel = ((out - ref_out).norm() / ref_out.norm()).item()
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    fast = {}
    if args.fast_start:  # first chunk of motion_frames frames: its own DiT shape, so its own warm-up
        fcfg = dataclasses.replace(cfg, fast_start=True)
        t0 = time.perf_counter()
        for _ in StreamingSession(models, ref, streaming=fcfg).feed(pcm[: spc * 2]):
            pass
        sync(dev)
        fast["fast_start_warmup_s"] = time.perf_counter() - t0
        session = StreamingSession(models, ref, streaming=fcfg)
        sync(dev)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        out = next(iter(session.feed(pcm[:spc])))
        sync(dev)
        fast["first_frames_fast_start_s"] = time.perf_counter() - t0
        fast["first_frames_fast_start_n"] = out.shape[0]
    return dict(**fast,
        breakdown_ms=breakdown,
        sustained_fps=frames / sustained_s,
        sustained_chunk_ms=sustained_s / args.chunks * 1e3,
        first_frames_s=first_s,
        session_init_s=init_s,
        warmup_s=warmup_s,
        dit_step_ms=dit_s * 1e3,
        dit_4_steps_ms=4 * dit_s * 1e3,
        dit_rel_err_vs_eager_1gpu=rel,
        fps_from_breakdown=cfg.new_frames / (breakdown["total"] / 1e3),
        new_frames_per_chunk=cfg.new_frames,
        chunks_sustained=args.chunks,
        chunks_profiled=len(stages),
        peak_mem_gib=ranks_max(peak, dev, world) if peak is not None else None,
        ranks_identical_frames=agree,
    )


@torch.no_grad()
def compare_vae(plain, parallel, models: FlashHeadModels, world: int) -> dict:
    """Decode of one chunk's latents and encode of the motion frames: plain VAE vs ``ParallelWanVAE``
    on the same rank (collective for the parallel one)."""
    dev, cfg = models.device, models.variant.streaming
    f = (cfg.frame_num - 1) // plain.temporal_stride + 1
    g = torch.Generator(device=dev).manual_seed(3)
    z = torch.randn(1, plain.latent_channels, f, cfg.height_px // plain.spatial_stride,
                    cfg.width_px // plain.spatial_stride, device=dev, generator=g).to(models.dtype)
    video = (torch.rand(1, 3, cfg.motion_frames, cfg.height_px, cfg.width_px, device=dev, generator=g) * 2 - 1).to(models.dtype)
    dec_1 = median_seconds(lambda: plain.decode(z), warmup=1, iters=3, device=dev)
    dec_p = median_seconds(lambda: parallel.decode(z), warmup=1, iters=3, device=dev)
    enc_1 = median_seconds(lambda: plain.encode(video), warmup=1, iters=3, device=dev)
    enc_p = median_seconds(lambda: parallel.encode(video), warmup=1, iters=3, device=dev)
    d_err = (plain.decode(z).float() - parallel.decode(z).float()).abs().max().item()
    e_err = (plain.encode(video).float() - parallel.encode(video).float()).abs().max().item()
    return {
        "decode_frames": cfg.frame_num, "encode_frames": cfg.motion_frames, "halo": getattr(parallel, "halo", None),
        "single_decode_ms": dec_1 * 1e3, "parallel_decode_ms": dec_p * 1e3,
        "decode_ratio_single_over_parallel": dec_1 / dec_p,
        "single_encode_ms": enc_1 * 1e3, "parallel_encode_ms": enc_p * 1e3,
        "encode_ratio_single_over_parallel": enc_1 / enc_p,
        "decode_max_abs_diff": ranks_max(d_err, dev, world),
        "encode_max_abs_diff_latent": ranks_max(e_err, dev, world),
    }


def parse_degrees(text: str) -> tuple[int, int]:
    """``"2x2"`` -> ``(2, 2)`` (Ulysses, Ring).

    Raises:
        argparse.ArgumentTypeError: not ``UxR`` with positive integers.
    """
    try:
        u, r = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected UxR, e.g. 2x2, got {text!r}") from None
    if u < 1 or r < 1:
        raise argparse.ArgumentTypeError(f"degrees must be >= 1: {text!r}")
    return u, r


def run(args) -> None:
    """Set up the process group and models, then measure every configuration (see module doc)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rec = Recorder(rank, args.out)
    start = time.perf_counter()
    cuda = args.device == "cuda"
    backend = "none"
    first = (args.ulysses or world // args.ring, args.ring)
    configs = [first] + list(args.also)
    if world > 1:
        for u, r in configs:
            if u * r != world:
                raise SystemExit(f"ulysses {u} x ring {r} != {world} ranks")
        if cuda:
            from vividhead.inference.parallel import init_distributed

            backend = init_distributed(ulysses_degree=first[0], ring_degree=first[1], use_xfuser=not args.no_xfuser)
        else:
            dist.init_process_group("gloo")
            backend = "ulysses"
    elif cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.backends.cudnn.benchmark = True
    variant, toy = find_variant(args.variant)
    if args.size:
        h, w = args.size
        variant = dataclasses.replace(variant, streaming=dataclasses.replace(variant.streaming, height_px=h, width_px=w))
    scfg = variant.streaming
    rec.log(figure="device", name=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
            gpus=world, variant=variant.name, height=scfg.height_px, width=scfg.width_px, frame_num=scfg.frame_num,
            compile_dit=not args.no_compile, parallel_vae=world > 1 and not args.no_parallel_vae,
            init_backend=backend, date=time.strftime("%Y-%m-%d"))

    t0 = time.perf_counter()
    models = build_models(variant, dev, dtype, args.seed, toy)
    sync(dev)
    build_s = time.perf_counter() - t0
    say(f"models built in {build_s:.1f} s")
    rng = np.random.RandomState(args.seed + 1)
    ref = (rng.rand(scfg.height_px, scfg.width_px, 3) * 255).astype(np.uint8)
    n_chunks = max(args.warmup_chunks, 1 + args.chunks + args.profile_chunks)
    pcm = (rng.randn(scfg.samples_per_chunk * n_chunks) * 3000).astype(np.int16)

    x, t, ctx, y = dit_inputs(models)
    with torch.no_grad():
        ref_out = models.transformer(x, t, ctx, y).float()  # one device, eager: the reference
    if world == 1:
        applied = models.optimize(compile_dit=not args.no_compile, cuda_graphs=False, fast_vae=not args.stock_vae)
        res = measure_e2e(models, ref, pcm, args, world, ref_out)
        rec.log(figure="e2e", variant=variant.name, gpus=1, backend="sdpa", ulysses=1, ring=1, vae="single",
                optimize=applied, build_s=build_s, **res)
        return

    from vividhead.inference.parallel import make_parallel_models, sp_backend_name, usp_groups

    plain_vae = models.vae
    applied = None
    vae_done = False
    for i, (u, r) in enumerate(configs):
        if i > 0:
            late = ranks_max(time.perf_counter() - start, dev, world) > args.time_budget
            if late:
                rec.log(figure="skipped", ulysses=u, ring=r, reason=f"time budget {args.time_budget} s spent")
                continue
        try:
            # xfuser's own groups (initialize_model_parallel) for the first configuration; new ones after
            own = (backend == "xfuser" and i == 0) or (backend == "ulysses" and r == 1 and u == world)
            groups = None if own else usp_groups(u, r)
            par = make_parallel_models(models, backend, groups, parallel_vae=not args.no_parallel_vae, halo=args.vae_halo)
            used = sp_backend_name(par.transformer)
            with torch.no_grad():
                try:
                    sp_out = eager_forward(par.transformer, x, t, ctx, y).float()
                except Exception as exc:  # noqa: BLE001 -- xfuser failing at run time: say so, use the PyTorch USP
                    print(f"[rank {rank}] {used} attention failed ({type(exc).__name__}: {exc}); torch-usp", flush=True)
                    par = make_parallel_models(models, "torch-usp", groups or usp_groups(u, r),
                                               parallel_vae=not args.no_parallel_vae, halo=args.vae_halo)
                    used = sp_backend_name(par.transformer)
                    sp_out = eager_forward(par.transformer, x, t, ctx, y).float()
            rel = ((sp_out - ref_out).norm() / ref_out.norm()).item()
            del sp_out
            proc = par.transformer.blocks[0].self_attn.processor
            tag = {"variant": variant.name, "gpus": world, "backend": used, "ulysses": u, "ring": r,
                   "attn": getattr(proc, "attn_type", type(proc).__name__), "vae": type(par.vae).__name__}
            rec.log(figure="dit_sp_check", **tag, rel_err_vs_1gpu=rel)
            if applied is None:  # once: compiles the shared DiT forward (on first use), accelerates the Wan VAE
                applied = par.optimize(compile_dit=not args.no_compile, cuda_graphs=False, fast_vae=not args.stock_vae)
            res = measure_e2e(par, ref, pcm, args, world, ref_out)
            rec.log(figure="e2e", **tag, optimize=applied, build_s=build_s if i == 0 else None, **res)
            if not vae_done and par.vae is not plain_vae:  # once, after the first configuration that ran
                vae_done = True
                rec.log(figure="vae_parallel", variant=variant.name, gpus=world, optimize=applied,
                        **compare_vae(plain_vae, par.vae, models, world))
        except Exception as exc:  # noqa: BLE001 -- report and go on with the next configuration
            rec.log(figure="error", ulysses=u, ring=r, error=f"{type(exc).__name__}: {exc}"[:500])
            print(f"[rank {rank}] configuration {u}x{r} failed", flush=True)
            import traceback

            traceback.print_exc()
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="14b", help="14b, pro, or tiny-pro for a CPU dry run")
    p.add_argument("--ulysses", type=int, default=None, help="Ulysses degree of the first configuration (default world / ring)")
    p.add_argument("--ring", type=int, default=1, help="Ring degree of the first configuration")
    p.add_argument("--also", nargs="*", type=parse_degrees, default=[], metavar="UxR",
                   help="further Ulysses x Ring configurations measured in the same processes")
    p.add_argument("--no-compile", action="store_true", help="eager DiT")
    p.add_argument("--stock-vae", action="store_true", help="run the Wan VAE as stock diffusers does (no accelerate)")
    p.add_argument("--fast-start", action="store_true",
                   help="also time the first frames of a fast_start session (one more DiT compile for the short chunk)")
    p.add_argument("--no-xfuser", action="store_true", help="plain Ulysses / PyTorch ring instead of xfuser")
    p.add_argument("--no-parallel-vae", action="store_true", help="every rank decodes the whole frame")
    p.add_argument("--vae-halo", type=int, default=None, help="ParallelWanVAE halo in latent rows (default: its own)")
    p.add_argument("--chunks", type=int, default=6, help="chunks of the unsynchronised sustained-FPS loop")
    p.add_argument("--profile-chunks", type=int, default=3, help="synchronised chunks for the breakdown (median)")
    p.add_argument("--warmup-chunks", type=int, default=2, help="chunks of the warm-up session")
    p.add_argument("--time-budget", type=float, default=float("inf"),
                   help="seconds after start beyond which no further --also configuration is started")
    p.add_argument("--size", type=lambda s: tuple(int(v) for v in s.lower().split("x")), default=None,
                   metavar="HxW", help="override the variant's frame size in pixels (e.g. 48x48 for a padded CPU dry run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.profile_chunks < 1 or args.chunks < 1 or args.warmup_chunks < 1:
        p.error("--chunks, --profile-chunks and --warmup-chunks must be >= 1")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    run(args)


if __name__ == "__main__":
    main()
