"""Memory budget of fine-tuning: peak GPU memory and step time of one
``FinetuneTrainer.train_step`` (flow-matching loss, backward, clip, AdamW) for Lite and Pro at
512x512x33, batch 1, one process, LoRA (frozen bf16 base, float32 adapters) and full fine-tuning
(float32 master weights, bf16 autocast), each with and without activation checkpointing.

Random weights at the released shapes (memory and speed do not depend on values); the trainer
builds its frozen VAE and Wav2Vec as a real run does (they count in the peak), and the batch is a
latent-cache batch made here. One JSON line per case (``kind: "case"``), then one per variant and
checkpointing setting with the LoRA / full step-time ratio (``kind: "ratio"``; ``"lora only"``: LoRA
with checkpointing against full fine-tuning without, the issue's 24 GiB goal); also appended to
``--out``. A case that runs out of memory is a row with ``"error": "oom"``.

    python benchmarks/finetune_memory.py --out $OUT/finetune_memory.jsonl        # one GPU
    python benchmarks/finetune_memory.py --device cpu --tiny                      # dry run (toy DiT, CPU)

Peak: ``torch.cuda.max_memory_allocated`` over the timed steps (weights, optimiser state,
activations), and ``max_memory_reserved`` (what the caching allocator held: the figure to compare
with a 24 GiB card). Step time: median of ``--steps`` synchronised steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import find_variant, median_seconds  # noqa: E402

from vividhead.training.trainers.distributed import use_expandable_segments  # noqa: E402

CASES = [(method, ac) for method in ("lora", "full") for ac in (False, True)]


def emit(out: str | None, **row) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def model_section(variant_name: str, tiny: bool) -> dict:
    """The ``model`` section of a random-weights run at the variant's shapes (a toy variant: its
    released base name with the toy transformer and frame size)."""
    variant, toy = find_variant(variant_name)
    if not toy:
        return {"variant": variant_name, "init": "random"}
    base = "lite" if variant.vae.value == "ltx" else "pro"
    return {"variant": base, "init": "random", "tiny_encoders": True,
            "transformer": dataclasses.asdict(variant.transformer),
            "height_px": variant.streaming.height_px, "width_px": variant.streaming.width_px}


def batch_for(trainer, device: torch.device):
    """A latent-cache batch of one window at the trainer's geometry (33 frames, 2 motion latents)."""
    from vividhead.training.trainers.conditioning import ChunkInputs
    from vividhead.training.trainers.latent_cache import CachedBatch

    v = trainer.variant
    t, s = v.transformer, v.streaming
    st, sh, sw = t.vae_stride
    frames = trainer.cfg.data.num_frames
    shape = (1, t.out_dim, 1 + (frames - 1) // st, s.height_px // sh, s.width_px // sw)
    g = torch.Generator(device=device).manual_seed(0)
    inputs = ChunkInputs(
        latents=torch.randn(shape, device=device, generator=g),
        ref_latent=torch.randn(shape, device=device, generator=g),
        context=torch.randn(1, frames, t.audio_window, t.audio_layers, t.audio_channels, device=device, generator=g),
        num_motion=torch.tensor([2], device=device),
    )
    return CachedBatch(inputs, [{}])


def run_case(args, variant_name: str, method: str, ac: bool) -> dict:
    from vividhead.training.trainers.config import config_from_dict
    from vividhead.training.trainers.distributed import shutdown_distributed
    from vividhead.training.trainers.finetune import FinetuneConfig, FinetuneTrainer

    class BenchTrainer(FinetuneTrainer):
        def build_data(self):  # no shards: the batch is made here
            self.dataset = None
            self.val_keys = []
            self.val_batches = None

    cuda = args.device == "cuda"
    motion = 9 if "lite" in variant_name else 5
    cfg = config_from_dict({
        "model": model_section(variant_name, args.tiny),
        "data": {"shards": "unused", "validation_clips": 0, "num_frames": 33, "motion_frames": motion},
        "finetune": {"method": method, "rank": args.rank, "alpha": args.rank, "targets": args.targets},
        "optim": {"ema_decay": 0.0, "warmup_steps": 1},
        "parallel": {"strategy": "none", "precision": "bf16" if cuda else "fp32", "activation_checkpointing": ac,
                     "compile": args.compile},
        "log": {"progress": False},
        "run": {"output_dir": tempfile.mkdtemp(prefix="bench_ft_"), "device": args.device},
    }, FinetuneConfig)
    row = {"kind": "case", "variant": variant_name, "method": method, "activation_checkpointing": ac,
           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
           "rank": args.rank if method == "lora" else None, "compile": args.compile, "device": args.device}
    if cuda:
        row["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    try:
        trainer = BenchTrainer(cfg)
        trainer.build()
        trainable = sum(p.numel() for p in trainer.transformer.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.transformer.parameters())
        batch = batch_for(trainer, trainer.env.device)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t0

        def reset():
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        step_s = median_seconds(lambda: trainer.train_step(batch), args.steps, args.warmup,  # noqa: B023
                                device=trainer.env.device, after_warmup=reset)
        row.update(step_ms=round(1000 * step_s, 2), first_step_s=round(first, 2), trainable_params=trainable,
                   total_params=total, trainable_pct=round(100 * trainable / total, 3))
        if cuda:
            row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
        else:
            import resource

            row["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    except torch.OutOfMemoryError:
        row["error"] = "oom"
    finally:
        trainer = None
        shutdown_distributed()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="toy variants (tiny-lite, tiny-pro): the CPU dry run")
    ap.add_argument("--variants", nargs="+", default=None, help="default: lite pro (tiny-lite tiny-pro with --tiny)")
    ap.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--targets", nargs="+", default=["self_attn", "cross_attn", "ffn"])
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (as parallel.compile)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="also append the JSON lines here")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device (use --device cpu --tiny for the dry run)")
    if args.device == "cuda":
        use_expandable_segments()
    variants = args.variants or (["tiny-lite", "tiny-pro"] if args.tiny else ["lite", "pro"])
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    for v in variants:
        rows = {}
        for method, ac in CASES:
            if method not in args.methods:
                continue
            rows[(method, ac)] = row = run_case(args, v, method, ac)
            emit(args.out, **row)
        for ac in (False, True):
            lora, full = rows.get(("lora", ac), {}), rows.get(("full", ac), {})
            if "step_ms" in lora and "step_ms" in full:
                emit(args.out, kind="ratio", variant=v, activation_checkpointing=ac,
                     lora_over_full_step_time=round(lora["step_ms"] / full["step_ms"], 3),
                     lora_peak_gib=lora.get("peak_reserved_gib"), full_peak_gib=full.get("peak_reserved_gib"))
        # The goal: LoRA with checkpointing (the 24 GiB setting) against full fine-tuning without.
        lora_ac, full_plain = rows.get(("lora", True), {}), rows.get(("full", False), {})
        if "step_ms" in lora_ac and "step_ms" in full_plain:
            emit(args.out, kind="ratio", variant=v, activation_checkpointing="lora only",
                 lora_over_full_step_time=round(lora_ac["step_ms"] / full_plain["step_ms"], 3),
                 lora_peak_gib=lora_ac.get("peak_reserved_gib"), full_peak_gib=full_plain.get("peak_reserved_gib"))


if __name__ == "__main__":
    main()
