"""FLOPs of the FlashHead DiT, for tokens/s and MFU.

MFU = 3 x (matmul + attention FLOPs of one forward) / step time / peak (989 TFLOP/s dense bf16 on
an H100/H200 SXM). The 3x counts forward + backward (2x); activation recomputation is not counted,
so a checkpointed step shows a lower MFU for the same work, as in the PaLM definition.
"""

from __future__ import annotations

import math

from vividhead.models.configs import FlashHeadTransformerConfig

#: Dense bf16 peak of one H100/H200 SXM (FLOP/s).
H200_BF16_PEAK = 989e12


def dit_tokens(cfg: FlashHeadTransformerConfig, latent_shape: tuple[int, int, int]) -> int:
    """Video tokens of a latent grid ``(F, h, w)`` after patchify."""
    f, h, w = latent_shape
    pt, ph, pw = cfg.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def dit_forward_flops(cfg: FlashHeadTransformerConfig, latent_shape: tuple[int, int, int], batch: int = 1) -> float:
    """Matmul and attention FLOPs (2 per multiply-add) of one DiT forward.

    Counts per block: self-attention q/k/v/o projections and ``QK^T``/``AV``; cross-attention q/o
    on video tokens, k/v on the audio tokens, and per-latent-frame attention over its
    ``audio_context_tokens``; the FFN. Plus patch embedding and head. Norms, modulation, RoPE and
    the audio projection MLP are left out (< 1%).

    Args:
        cfg: transformer shape.
        latent_shape: ``(F, h, w)`` latent grid.
        batch: samples.
    """
    s = dit_tokens(cfg, latent_shape)
    d, ff, f = cfg.dim, cfg.ffn_dim, latent_shape[0]
    a = f * cfg.audio_context_tokens
    per_block = (
        4 * 2 * s * d * d  # self-attn q, k, v, o
        + 2 * 2 * s * s * d  # QK^T and AV
        + 2 * 2 * s * d * d  # cross-attn q, o
        + 2 * 2 * a * d * d  # cross-attn k, v on audio tokens
        + 2 * 2 * s * cfg.audio_context_tokens * d  # per-frame cross-attention
        + 2 * 2 * s * d * ff  # FFN
    )
    patch = math.prod(cfg.patch_size)
    io = 2 * s * cfg.in_dim * patch * d + 2 * s * d * cfg.out_dim * patch
    return float(batch * (cfg.num_layers * per_block + io))


#: Dense tensor-core peaks (FLOP/s) by GPU name fragment: (bf16/fp16, tf32 for fp32 precision).
_GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 494.5e12),
    ("H100", 989e12, 494.5e12),
    ("A100", 312e12, 156e12),
)


def peak_flops(device, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of ``device`` for ``precision`` when known (H100/H200/A100), else None
    (CPUs and other GPUs: no MFU is shown rather than a made-up one)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, half, tf32 in _GPU_PEAKS:
        if fragment in name:
            return half if precision in ("bf16", "fp16") else tf32
    return None


def mfu(train_flops_per_step: float, step_s: float, world_size: int = 1, peak: float = H200_BF16_PEAK) -> float:
    """Model FLOPs utilisation of one step (``train_flops_per_step`` summed over all ranks)."""
    return train_flops_per_step / max(step_s, 1e-12) / (peak * world_size)
