"""Stage-2 distillation step of FlashHead Pro on one GPU: the real trainer, random weights.

Three 1.3B networks (generator, real_score, fake_score: fp32 master weights, bf16 autocast; one
rank trains unsharded, see ``wrap_model``), the real-shaped random-initialised Wan VAE and
Wav2Vec, 512x512x33 chunks, K = 5, one synthetic window of 5 chunks (random frames and audio:
speed does not depend on values). Phases, in one process::

    truncated      the trainer as it trains: --steps trainer steps (k ~ U(1, 5), t' ~ U(1, 4), a
                   generator update after every 5th fake-score update); the first --warmup steps are
                   not timed. Time per fake-score update, per generator update, per step (with the
                   window's encoding), peak memory, and the extrapolated time of 1000 steps
                   (= 1000 fake-score + 200 generator updates, LiveTalk's convergence point).
    truncated_stock_vae  (``--stock-vae``) the truncated phase again, same process, same draws (the
                   trainer's RNG state restored, so the same k, t' and noise), with the stock
                   diffusers VAE swapped in for the trainer's (``parallel.fast_vae``: inference's
                   accelerated, on CUDA compiled, VAE): the old path like for like, and the ratio.
    truncated_kmax generator updates with k = K forced (worst-case memory of the truncated method).
    full_backprop  baseline: generator updates with k = K whose rollout keeps the graph of every
                   denoising step of every chunk (no truncation; motion latents passed on directly,
                   with their graph, since the VAE re-encode has none); time and peak memory, or
                   "oom" when it does not fit.

Every figure is printed as one JSON line (and all of them written to --json-out). The exact command
the measurements in docs/benchmarks.md come from::

    .venv/bin/python benchmarks/distill_step.py --steps 110 --warmup 10 --compile \\
        --json-out out/bench/distill_step.json

(one H200; a few minutes, most of it building three 1.3B networks on the CPU and compiling.)
The frozen VAE is built by the trainer (``build_encoders`` with ``parallel.fast_vae``, default
``auto``: inference's VAE speed-up, compiled, on CUDA), as training runs it; ``--fast-vae`` and
``--vae-compile`` set ``parallel.fast_vae`` / ``vae_compile`` (``none``: fused norms only),
``--stock-vae`` adds the stock-VAE phase above. The VAE A/B on one GPU::

    python3 benchmarks/distill_step.py --steps 35 --warmup 5 --kmax-updates 2 --baseline-updates 2 \\
        --compile --stock-vae --json-out $OUT/distill_step.json

(``--tiny --device cpu --height 64 --width 64 --steps 8 --warmup 2 --fast-vae on --stock-vae``:
a dry run of the A/B.)
``--activation-checkpointing [MODE]`` recomputes in backward (both phases; a mode of
``parallel.activation_checkpointing``, alone ``all``); ``--attention-backend`` picks the SDPA kernel
(``parallel.attention_backend``); ``--no-reencode`` takes
motion latents directly in the trainer's rollout; ``--tiny --device cpu`` smoke-tests the script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: the device scripts build the full namespace there

from vividhead.flow_matching import NUM_TRAIN_TIMESTEPS, motion_latent_count, overwrite_motion  # noqa: E402
from vividhead.training.data import ClipWindowBatch  # noqa: E402
from vividhead.training.trainers.config import (  # noqa: E402
    ATTENTION_BACKENDS,
    CHECKPOINTING_MODES,
    VAE_COMPILE_MODES,
    config_from_dict,
)
from vividhead.training.trainers.distill import DistillTrainer, RolloutOutput  # noqa: E402
from vividhead.training.trainers.distill_config import DistillConfig  # noqa: E402

RESULTS: list[dict] = []


def log(**row) -> None:
    """Record one figure and print it as a JSON line."""
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args):
    """``(fn(*args), seconds)``, device-synchronised."""
    sync()
    t0 = time.perf_counter()
    out = fn(*args)
    sync()
    return out, time.perf_counter() - t0


def gib(n: int) -> float:
    return round(n / 2**30, 2)


class BenchTrainer(DistillTrainer):
    """The stage-2 trainer without a dataset (the benchmark feeds a synthetic window)."""

    def build_data(self) -> None:
        self.val_keys = []
        self.dataset = None


def synthetic_batch(trainer: DistillTrainer, chunks: int, seed: int = 0) -> ClipWindowBatch:
    """A window of ``chunks`` chunks: uint8 frames ``[1, 5 + 28 chunks, 3, H, W]``, reference, audio
    of 8 s plus the extra chunks, as :class:`RolloutWindowDataset` yields them."""
    s = trainer.variant.streaming
    g = torch.Generator().manual_seed(seed)
    n = s.motion_frames + chunks * s.new_frames
    frames = torch.randint(0, 256, (1, n, 3, s.height_px, s.width_px), generator=g, dtype=torch.uint8)
    reference = torch.randint(0, 256, (1, 3, s.height_px, s.width_px), generator=g, dtype=torch.uint8)
    audio = 0.1 * torch.randn(1, s.cache_samples + (chunks - 1) * s.samples_per_chunk, generator=g)
    return ClipWindowBatch(frames=frames, num_motion_frames=torch.tensor([s.motion_frames]), reference=reference,
                           audio=audio, wav2vec=None, meta=[{"key": "synthetic"}])


def full_graph_rollout(trainer: DistillTrainer, window, k: int) -> RolloutOutput:
    """The no-truncation baseline: k chunks, every denoising step of every chunk keeps its graph
    (x0 is re-noised without detaching), motion latents passed on as the previous chunk's last
    latent slots (with their graph). Same schedule and re-noising as the shared sampler."""
    sigmas = trainer.schedule.sigmas()
    n = len(sigmas) - 1
    dev = trainer.env.device
    m = motion_latent_count(trainer.variant.streaming.motion_frames, trainer.encoders.vae.temporal_stride)
    motion = window.first_motion
    x0 = motion
    for j in range(k):
        vel = trainer.velocity("generator", window.context(j), window.ref_latent)
        x = torch.randn(window.ref_latent.shape, generator=trainer.generator, device=dev)
        for i in range(n):
            x = overwrite_motion(x, motion)
            t = torch.tensor([sigmas[i] * NUM_TRAIN_TIMESTEPS], device=dev)
            x0 = x.float() - vel(x.to(trainer.compute_dtype), t).float() * sigmas[i]
            if i < n - 1:
                eps = torch.randn(x.shape, generator=trainer.generator, device=dev)
                x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * eps
        x0 = overwrite_motion(x0, motion)
        if j < k - 1:
            motion = x0[:, :, -m:]
    return RolloutOutput(x0=x0, motion=motion, chunk=k - 1, exit_step=None)


#: ``--tiny``: the tiny CPU DiT and encoders (a smoke test of this script, not a figure).
TINY_MODEL = {"tiny_encoders": True, "transformer": {
    "dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2, "in_dim": 8, "out_dim": 4, "text_dim": 16, "freq_dim": 32,
    "audio_layers": 2, "audio_channels": 16, "audio_intermediate_dim": 32, "audio_context_tokens": 4}}


def full_backprop_update(trainer: DistillTrainer, window, k: int) -> torch.Tensor:
    """One generator update of the baseline: :func:`full_graph_rollout`, the trainer's loss and step."""
    out = full_graph_rollout(trainer, window, k)
    losses = trainer.generator_loss(window, out)
    return trainer.update("generator", losses["loss"])


def make_config(args) -> DistillConfig:
    model = {"variant": "pro", "init": "random", "height_px": args.height, "width_px": args.width}
    if args.tiny:
        model.update(TINY_MODEL)
    raw = {
        "model": model,
        "data": {"shards": "unused", "num_frames": 33, "motion_frames": 5, "batch_size": 1, "num_workers": 0},
        "optim": {"betas": [0.0, 0.999], "warmup_steps": 0, "grad_clip": 10.0},
        "distill": {"mode": args.mode, "max_chunks": args.max_chunks, "reencode_motion": not args.no_reencode,
                    "generator_ema_decay": 0.998},
        "parallel": {"strategy": "fsdp", "precision": "fp32" if args.tiny else "bf16", "compile": args.compile,
                     "activation_checkpointing": args.activation_checkpointing,
                     "attention_backend": args.attention_backend,
                     "fast_vae": {"auto": "auto", "on": True, "off": False}[args.fast_vae],
                     "vae_compile": None if args.vae_compile == "none" else args.vae_compile},
        "log": {"progress": False},
        "run": {"output_dir": "out/bench/distill_step", "max_steps": args.steps, "device": args.device},
    }
    return config_from_dict(raw, DistillConfig)


def truncated_phase(trainer: DistillTrainer, batch: ClipWindowBatch, args, phase: str) -> dict:
    """The trainer as it trains: ``args.steps`` trainer steps, the first ``args.warmup`` untimed; logs
    and returns the phase's figures (``step_s``: window preparation + fake-score update + a fifth of
    a generator update, seconds, means)."""
    dev = trainer.env.device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    prep, fake, gen, gen_k, fake_k = [], [], [], {}, {}
    for step in range(args.steps):
        window, t_prep = timed(trainer.prepare_window, batch)
        _, t_fake = timed(trainer.fake_score_step, window)
        k_fake = trainer.draws[-1][1]
        t_gen = None
        if trainer.is_generator_step(step):
            _, t_gen = timed(trainer.generator_step, window)
        trainer.step += 1
        for ema in trainer.emas.values():
            ema.update()
        if step < args.warmup:
            continue
        prep.append(t_prep)
        fake.append(t_fake)
        fake_k.setdefault(k_fake, []).append(t_fake)
        if t_gen is not None:
            gen.append(t_gen)
            gen_k.setdefault(trainer.draws[-1][1], []).append(t_gen)
    ratio = trainer.cfg.distill.fake_updates_per_generator_update
    step_s = statistics.mean(prep) + statistics.mean(fake) + statistics.mean(gen) / ratio
    total = 1000 * (statistics.mean(prep) + statistics.mean(fake)) + 200 * statistics.mean(gen)
    row = dict(phase=phase, vae=trainer.encoders.vae_speedup or "stock", steps_timed=len(fake),
               generator_updates_timed=len(gen), prepare_window_s=round(statistics.mean(prep), 4),
               fake_update_s=round(statistics.mean(fake), 4), generator_update_s=round(statistics.mean(gen), 4),
               step_s=round(step_s, 4),
               fake_update_s_by_k={k: round(statistics.mean(v), 4) for k, v in sorted(fake_k.items())},
               generator_update_s_by_k={k: round(statistics.mean(v), 4) for k, v in sorted(gen_k.items())},
               peak_mem_gib=gib(torch.cuda.max_memory_allocated(dev)) if cuda else None,
               extrapolated_1000_fake_200_generator_updates_s=round(total, 1), within_one_hour=total <= 3600)
    log(**row)
    return row


def use_stock_vae(trainer: DistillTrainer) -> None:
    """Swap the trainer's frozen VAE for the stock one built the same way (``build_encoders``
    without ``parallel``: the diffusers VAE as the trainers ran it before ``parallel.fast_vae``), same
    device and dtype; the chunk step is rebuilt over it."""
    import dataclasses

    from vividhead.training.trainers.models import build_encoders

    dtype = next(trainer.encoders.vae.parameters()).dtype
    stock = build_encoders(trainer.cfg.model, trainer.variant, trainer.env.device, dtype).vae
    trainer.encoders = dataclasses.replace(trainer.encoders, vae=stock, vae_speedup=None)
    trainer.__dict__.pop("_chunk_step", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=110, help="trainer steps of the truncated phase (incl. warm-up)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation, autotuning)")
    ap.add_argument("--kmax-updates", type=int, default=4, help="generator updates with k = K (1 untimed)")
    ap.add_argument("--baseline-updates", type=int, default=3, help="full-backprop generator updates (1 untimed)")
    ap.add_argument("--max-chunks", type=int, default=5)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--mode", default="oracle", choices=["oracle", "self_correcting"])
    ap.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    ap.add_argument("--activation-checkpointing", nargs="?", const="all", default="none", choices=CHECKPOINTING_MODES,
                    help="parallel.activation_checkpointing of the trained networks (alone: all)")
    ap.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                    help="parallel.attention_backend (SDPA kernel) of the three networks")
    ap.add_argument("--no-reencode", action="store_true", help="motion latents taken directly (no VAE in the loop)")
    ap.add_argument("--fast-vae", default="auto", choices=["auto", "on", "off"],
                    help="parallel.fast_vae of the trainer's frozen VAE (auto: inference's speed-up on CUDA only; "
                         "on: also on the CPU, for --tiny dry runs; off: stock)")
    ap.add_argument("--vae-compile", default="default", choices=[*VAE_COMPILE_MODES, "none"],
                    help="parallel.vae_compile of the trainer's frozen Wan VAE on CUDA (none: fused norms only)")
    ap.add_argument("--stock-vae", action="store_true",
                    help="also run the truncated phase with the stock VAE (same process, same draws) and log the ratio")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny DiT/encoders (CPU smoke test of the script)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    cfg = make_config(args)
    t0 = time.perf_counter()
    trainer = BenchTrainer(cfg)
    trainer.build()
    dev = trainer.env.device
    cuda = dev.type == "cuda"
    batch = synthetic_batch(trainer, args.max_chunks)
    log(phase="setup", device=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
        build_s=round(time.perf_counter() - t0, 1), frames=f"{args.height}x{args.width}x33", max_chunks=args.max_chunks,
        mode=args.mode, reencode=not args.no_reencode, compile=args.compile, vae=trainer.encoders.vae_speedup,
        activation_checkpointing=args.activation_checkpointing, attention_backend=args.attention_backend,
        params_per_net=sum(p.numel() for p in trainer.raw["generator"].parameters()),
        static_mem_gib=gib(torch.cuda.memory_allocated(dev)) if cuda else None)

    # -- truncated: the trainer as it trains (and, with --stock-vae, again with the stock VAE) -------
    state, first = (trainer.generator.get_state(), trainer.step), len(trainer.draws)
    fast = truncated_phase(trainer, batch, args, "truncated")
    if args.stock_vae:
        draws = trainer.draws[first:]
        fast_vae = trainer.encoders
        use_stock_vae(trainer)
        trainer.generator.set_state(state[0])  # the same draws: k, t', noise
        trainer.step = state[1]
        stock = truncated_phase(trainer, batch, args, "truncated_stock_vae")
        log(phase="vae_ratio", vae=fast["vae"], stock_over_fast_step=round(stock["step_s"] / fast["step_s"], 3),
            step_s_saved=round(stock["step_s"] - fast["step_s"], 4),
            same_draws=trainer.draws[first + len(draws):] == draws)
        trainer.encoders = fast_vae
        trainer.__dict__.pop("_chunk_step", None)

    # -- truncated with k = K: worst-case memory ------------------------------------------------------
    K = args.max_chunks
    real_draw = trainer.draw_rollout
    trainer.draw_rollout = lambda role, available: (K, real_draw(role, available)[1])
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(args.kmax_updates):
        window = trainer.prepare_window(batch)
        _, t = timed(trainer.generator_step, window)
        if i:
            times.append(t)
    trainer.draw_rollout = real_draw
    log(phase="truncated_kmax", k=K, generator_updates_timed=len(times),
        generator_update_s=round(statistics.mean(times), 4) if times else None,
        peak_mem_gib=gib(torch.cuda.max_memory_allocated(dev)) if cuda else None)

    # -- baseline: backpropagate through the whole rollout --------------------------------------------
    if not args.skip_baseline:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        times, oom = [], None
        try:
            for i in range(args.baseline_updates):
                window = trainer.prepare_window(batch)

                _, t = timed(full_backprop_update, trainer, window, K)
                if i:
                    times.append(t)
        except torch.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0]
            for p in trainer.raw["generator"].parameters():
                p.grad = None
        log(phase="full_backprop", k=K, generator_updates_timed=len(times),
            generator_update_s=round(statistics.mean(times), 4) if times else None, oom=oom is not None,
            oom_message=oom, peak_mem_gib=gib(torch.cuda.max_memory_allocated(dev)) if cuda else None,
            device_mem_gib=gib(torch.cuda.get_device_properties(dev).total_memory) if cuda else None)

    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(RESULTS, indent=2))
    from vividhead.training.trainers.distributed import shutdown_distributed

    shutdown_distributed()


if __name__ == "__main__":
    main()
