"""Faster execution of diffusers' Wan2.1 VAE: same weights, same math, fewer memory passes.

Measured on one H100 (``benchmarks/inference_kernels.py``, docs/benchmarks.md), the stock
``AutoencoderKLWan`` decode of a 33-frame 512x512 chunk takes ~566 ms in bf16. Most of it is not
convolution arithmetic but memory traffic around it:

* cuDNN runs the 3x3x3 causal convolutions (``WanCausalConv3d``) much faster on channels-last
  (``torch.channels_last_3d``) activations and weights: 1.21x on the whole decode alone;
* ``WanCausalConv3d`` pads all three dims with ``F.pad`` (a full copy of every input) and then
  convolves with zero padding; here only time is padded (causally, with the feature cache or
  zeros) and the spatial zero padding is left to the convolution;
* ``WanRMS_norm`` + SiLU is seven elementwise passes in eager mode (upcast, normalise, downcast,
  scale, gamma, bias, SiLU); here it is one fused kernel (``torch.compile`` of a small
  shape-dynamic function; eager fallback with the same math where compilation is off).

(A prototype rewriting the 3D convolutions as sums of frame-batched 2D convolutions was measured
too: 1.12x on decode but 0.74x on encode, so it was dropped.)

:func:`accelerate_wan_vae` applies all of this in place, per module instance (no global patching).
Numerics: the RMS norm is applied in float32 before the cast (stock casts first), so bf16 outputs
differ from stock by bf16 rounding; float32 outputs match to ~1e-6.

Source of the layers: diffusers ``autoencoder_kl_wan`` (``WanCausalConv3d``, ``WanRMS_norm``,
``WanResidualBlock``, ``WanDecoder3d``), i.e. Wan2.1 ``wan/modules/vae.py``.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm_act(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | float, silu: bool) -> torch.Tensor:
    """Channel RMS norm (``F.normalize`` over dim 1 times ``sqrt(C)``), affine, optional SiLU.

    Args:
        x: ``[B, C, ...]`` any float dtype and memory format.
        gamma: ``[C, 1, ...]`` scale (broadcastable over ``x``'s trailing dims).
        bias: broadcastable bias or ``0.0``.
        silu: apply SiLU after the affine.

    Returns:
        ``x``'s shape and dtype; computed in float32.
    """
    y = F.normalize(x.float(), dim=1) * (x.shape[1] ** 0.5) * gamma.float() + bias
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def _causal_conv_forward(self: nn.Conv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """``WanCausalConv3d.forward`` with time-only padding (spatial padding inside the conv).

    ``x: [B, C_in, T, H, W]``, ``cache_x``: optional ``[B, C_in, T_c, H, W]`` preceding frames
    -> ``[B, C_out, T', H', W']`` (channels_last_3d memory).
    """
    pad_w, _, pad_h, _, pad_t, _ = self._padding
    if cache_x is not None and pad_t > 0:
        x = torch.cat([cache_x.to(x.device, x.dtype), x], dim=2)
        pad_t -= cache_x.shape[2]
    if pad_t > 0:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(x, self.weight, self.bias, self.stride, (0, pad_h, pad_w), self.dilation, self.groups)


def _compiled_rms_norm_act() -> Callable:
    """``torch.compile`` of :func:`rms_norm_act` with dynamic sizes. Channel counts, ranks, size-1
    dims and the SiLU flag still specialise (~15 variants over a Wan encoder + decoder), more
    than dynamo's default recompile limit of 8, so the limit is raised around the call only."""
    compiled = torch.compile(rms_norm_act, dynamic=True)

    def call(x, gamma, bias, silu):
        with torch._dynamo.config.patch(recompile_limit=64):
            return compiled(x, gamma, bias, silu)

    return call


def _norm_forward(fused: Callable, silu: bool):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused(x, self.gamma, self.bias, silu)

    return forward


def accelerate_wan_vae(model: nn.Module, compile_norms: bool = True) -> dict[str, int]:
    """Speed up an ``AutoencoderKLWan`` in place (see the module docstring). Weights are unchanged
    (only their memory format), so checkpoints load before or after.

    Args:
        model: a diffusers ``AutoencoderKLWan`` (or a module holding its blocks).
        compile_norms: fuse RMS norm + SiLU with ``torch.compile`` (needs a working inductor
            backend: Triton on CUDA, a C++ compiler on CPU); ``False`` uses the same math eagerly.

    Returns:
        counts of rewritten modules: ``{"conv": ..., "norm_silu": ..., "norm": ...}``.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanCausalConv3d,
        WanDecoder3d,
        WanEncoder3d,
        WanResidualBlock,
        WanRMS_norm,
    )

    fused = _compiled_rms_norm_act() if compile_norms else rms_norm_act
    counts = {"conv": 0, "norm_silu": 0, "norm": 0}
    for mod in model.modules():
        if isinstance(mod, nn.Conv3d):
            mod.weight.data = mod.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(mod, nn.Conv2d):  # spatial resampling and attention run on [B*T, C, H, W] views
            mod.weight.data = mod.weight.data.contiguous(memory_format=torch.channels_last)
        if isinstance(mod, WanCausalConv3d):
            mod.forward = types.MethodType(_causal_conv_forward, mod)
            counts["conv"] += 1
    # Norms followed by SiLU: both norms of a residual block, the encoder/decoder head norm.
    silu_norms: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, WanResidualBlock) and isinstance(mod.nonlinearity, nn.SiLU):
            silu_norms |= {id(mod.norm1), id(mod.norm2)}
            mod.nonlinearity = nn.Identity()
        elif isinstance(mod, (WanEncoder3d, WanDecoder3d)) and isinstance(mod.nonlinearity, nn.SiLU):
            # the encoder/decoder nonlinearity is used only right after norm_out
            silu_norms.add(id(mod.norm_out))
            mod.nonlinearity = nn.Identity()
    for mod in model.modules():
        if isinstance(mod, WanRMS_norm) and mod.channel_first:
            silu = id(mod) in silu_norms
            mod.forward = types.MethodType(_norm_forward(fused, silu), mod)
            counts["norm_silu" if silu else "norm"] += 1
    return counts
