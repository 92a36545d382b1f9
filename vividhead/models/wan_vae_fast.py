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
  shape-dynamic function; eager fallback with the same math where compilation is off);
* **one pass** (``one_pass=True``): diffusers decodes one latent frame per decoder call (encodes
  frame 0, then 4 frames per call) and carries a causal feature cache between calls, cloning the last
  2 frames of every convolution input and concatenating them in front of the next call's input
  (25% of the accelerated decode's GPU time on an H100 went to these copies). A causal convolution
  over the whole sequence computes the same outputs, so here the whole chunk goes through the
  decoder (encoder) in one call without a cache. The only place the per-call scheme is not a plain
  causal convolution is the temporal resampling, which treats the first frame apart: ``upsample3d``
  passes frame 0 through without its time convolution and runs that convolution over frames 1..
  with zero causal padding; ``downsample3d`` keeps frame 0 and runs its stride-2 time convolution
  over the whole sequence (windows 0-2, 2-4, ...). :func:`_resample_forward` does exactly that.
  The causal time padding is done inside cuDNN: symmetric padding of ``k - 1`` frames and the
  last ``k - 1`` output frames dropped (a slice of the outermost non-batch dim of a channels-last
  tensor: no copy);
* nearest-exact 2x upsampling runs in the input dtype (stock upcasts to float32 and back: two
  extra passes over the largest tensors); nearest interpolation copies values, so it is exact.

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
    """``WanCausalConv3d.forward`` with the spatial padding inside the conv.

    ``x: [B, C_in, T, H, W]``, ``cache_x``: optional ``[B, C_in, T_c, H, W]`` preceding frames
    -> ``[B, C_out, T', H', W']`` (channels_last_3d memory; without a cache and with stride 1 in
    time, a slice of a ``T + pad_t``-frame output: same memory layout when ``B == 1``).
    """
    pad_w, _, pad_h, _, pad_t, _ = self._padding
    if cache_x is not None and pad_t > 0:
        x = torch.cat([cache_x.to(x.device, x.dtype), x], dim=2)
        pad_t -= cache_x.shape[2]
    x = x.contiguous(memory_format=torch.channels_last_3d)
    if pad_t > 0 and cache_x is None and self.stride[0] == 1 and pad_t == self.kernel_size[0] - 1:
        # causal padding without a copy: pad both ends inside cuDNN, drop the pad_t outputs that
        # saw the trailing zeros (output t of the causal conv = output t of the symmetric one)
        y = F.conv3d(x, self.weight, self.bias, self.stride, (pad_t, pad_h, pad_w), self.dilation, self.groups)
        return y[:, :, : y.shape[2] - pad_t]
    if pad_t > 0:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    return F.conv3d(x, self.weight, self.bias, self.stride, (0, pad_h, pad_w), self.dilation, self.groups)


def _resample_forward(self: nn.Module, x: torch.Tensor, feat_cache=None, feat_idx=(0,)) -> torch.Tensor:
    """``WanResample.forward``; without a feature cache the whole sequence in one call, with the
    first-frame rules of the cached per-call scheme (module docstring). With a cache: stock.

    ``x: [B, C, T, H, W]`` -> upsample3d ``[B, C', 1 + 2 (T - 1), 2H, 2W]``, upsample2d
    ``[B, C', T, 2H, 2W]``, downsample3d ``[B, C, 1 + (T - 3) // 2 + 1, H/2, W/2]`` (``T >= 3``; ``T = 1``
    keeps one frame), downsample2d ``[B, C, T, H/2, W/2]``.
    """
    if feat_cache is not None:
        return type(self).forward(self, x, feat_cache=feat_cache, feat_idx=feat_idx)
    b, c, t, h, w = x.shape
    if self.mode == "upsample3d" and t > 1:
        # frame 0 has no temporal upsampling; frames 1.. through the causal time conv (zero padding)
        rest = self.time_conv(x[:, :, 1:])  # [B, 2C, T-1, H, W]: channel k*C + c is output frame 2t+k
        rest = rest.unflatten(1, (2, c)).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * (t - 1), h, w)
        x = torch.cat([x[:, :, :1], rest], dim=2)
        t = x.shape[2]
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # [B*T, C, H, W]
    x = self.resample(x)
    x = x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)  # [B, C', T, H', W']
    if self.mode == "downsample3d" and t > 1:
        # frame 0 kept; stride-2 time conv over windows (0, 1, 2), (2, 3, 4), ...
        x = torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
    return x


def _decode_one_pass(self: nn.Module, z: torch.Tensor, return_dict: bool = True):
    """``AutoencoderKLWan._decode`` in one decoder call: ``z [B, C, T', h, w]`` (post-quant input)
    -> video ``[B, 3, 1 + 4 (T' - 1), 8h, 8w]`` clamped to [-1, 1]."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    if self.use_tiling or self.config.patch_size is not None:
        return type(self)._decode(self, z, return_dict=return_dict)
    out = self.decoder(self.post_quant_conv(z), first_chunk=True).clamp(-1.0, 1.0)
    return DecoderOutput(sample=out) if return_dict else (out,)


def _encode_one_pass(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan._encode`` in one encoder call: ``x [B, 3, 1 + 4k, H, W]`` ->
    moments ``[B, 2 z_dim, 1 + k, H/8, W/8]``."""
    if self.use_tiling or self.config.patch_size is not None:
        return type(self)._encode(self, x)
    if (x.shape[2] - 1) % 4:
        raise ValueError(f"the Wan encoder takes 1 + 4k frames, got {x.shape[2]}")
    return self.quant_conv(self.encoder(x))


def _upsample_forward(self: nn.Upsample, x: torch.Tensor) -> torch.Tensor:
    """``WanUpsample.forward`` in the input dtype (nearest modes copy values: exact)."""
    return nn.Upsample.forward(self, x)


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


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def accelerate_wan_vae(model: nn.Module, compile_norms: bool = True, one_pass: bool = True,
                       compile_coders: str | None = None) -> dict[str, int]:
    """Speed up an ``AutoencoderKLWan`` in place (see the module docstring). Weights are unchanged
    (only their memory format), so checkpoints load before or after.

    Args:
        model: a diffusers ``AutoencoderKLWan`` (or a module holding its blocks).
        compile_norms: fuse RMS norm + SiLU with ``torch.compile`` (needs a working inductor
            backend: Triton on CUDA, a C++ compiler on CPU); ``False`` uses the same math eagerly.
        one_pass: decode / encode a whole chunk in one decoder / encoder call without the causal
            feature cache (Wan2.1 layout; a Wan2.2 residual VAE, tiling or patching keep the
            per-call scheme).
        compile_coders: ``torch.compile`` mode (one of :data:`COMPILE_MODES`) for the whole
            decoder and encoder (with ``one_pass``: one static graph per input shape, so inductor
            fuses the norms, residual adds, bias adds and resampling copies around the cuDNN
            convolutions); ``None``: not compiled. The norms then run the plain
            :func:`rms_norm_act` math inside that graph (``compile_norms`` is ignored).

    Returns:
        counts of rewritten modules: ``{"conv": ..., "norm_silu": ..., "norm": ..., "upsample": ...,
        "one_pass": 0 or 1, "compiled_coders": 0, 1 or 2}``.

    Raises:
        ValueError: an unknown ``compile_coders`` mode.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        AutoencoderKLWan,
        WanCausalConv3d,
        WanDecoder3d,
        WanEncoder3d,
        WanResample,
        WanResidualBlock,
        WanRMS_norm,
        WanUpsample,
    )

    if compile_coders is not None and compile_coders not in COMPILE_MODES:
        raise ValueError(f"compile_coders must be one of {COMPILE_MODES} or None, got {compile_coders!r}")
    fused = _compiled_rms_norm_act() if compile_norms and compile_coders is None else rms_norm_act
    counts = {"conv": 0, "norm_silu": 0, "norm": 0, "upsample": 0, "one_pass": 0, "compiled_coders": 0}
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
        elif isinstance(mod, WanUpsample) and mod.mode.startswith("nearest"):
            mod.forward = types.MethodType(_upsample_forward, mod)
            counts["upsample"] += 1
    residual = getattr(getattr(model, "config", None), "is_residual", False)
    if one_pass and isinstance(model, AutoencoderKLWan) and not residual:
        for mod in model.modules():
            if isinstance(mod, WanResample):
                mod.forward = types.MethodType(_resample_forward, mod)
        model._decode = types.MethodType(_decode_one_pass, model)
        model._encode = types.MethodType(_encode_one_pass, model)
        counts["one_pass"] = 1
    if compile_coders is not None:
        mode = None if compile_coders == "default" else compile_coders
        for name in ("decoder", "encoder"):
            coder = getattr(model, name, None)
            if isinstance(coder, nn.Module):
                # static shapes: one graph per chunk length and batch size (few in streaming)
                coder.forward = torch.compile(coder.forward, mode=mode, dynamic=False)
                counts["compiled_coders"] += 1
    return counts
