"""Shared fixtures for inference tests: tiny seeded models, a fast stand-in VAE, fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.utils import logging as dlog
from tiny_models import TINY_LITE, TINY_PRO, tiny_models

from vividhead.inference.pipeline import FlashHeadModels
from vividhead.models.vae import VideoVAE

dlog.set_verbosity_error()
torch.set_num_threads(2)

FIXTURES = Path(os.environ.get("VIVIDHEAD_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))


class PoolVAE(VideoVAE):
    """Fast deterministic stand-in with the Wan VAE's strides and causal first frame: frame 0 alone,
    then groups of ``temporal_stride`` frames, average-pooled; decode repeats. Only for the long
    (100-chunk) alignment/memory test, where the real tiny Wan VAE would take minutes on 2 cores."""

    def __init__(self, channels: int, temporal_stride: int = 4, spatial_stride: int = 8) -> None:
        super().__init__()
        self.latent_channels, self.temporal_stride, self.spatial_stride = channels, temporal_stride, spatial_stride
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(channels, 3, generator=g))

    def encode(self, video):
        b, c, t, h, w = video.shape
        first = video[:, :, :1]
        rest = video[:, :, 1:].reshape(b, c, (t - 1) // self.temporal_stride, self.temporal_stride, h, w).mean(3)
        x = torch.cat([first, rest], 2)
        x = F.avg_pool3d(x, (1, self.spatial_stride, self.spatial_stride))
        return torch.einsum("oc,bcthw->bothw", self.w.to(x), x)

    def decode(self, z):
        x = torch.einsum("oc,bothw->bcthw", torch.linalg.pinv(self.w).T.to(z), z)
        x = F.interpolate(x, scale_factor=(1, self.spatial_stride, self.spatial_stride), mode="nearest")
        first, rest = x[:, :, :1], x[:, :, 1:].repeat_interleave(self.temporal_stride, dim=2)
        return torch.cat([first, rest], 2).clamp(-1, 1)


@pytest.fixture(scope="session")
def tiny_pro() -> FlashHeadModels:
    return tiny_models(TINY_PRO, seed=0)


@pytest.fixture(scope="session")
def tiny_lite() -> FlashHeadModels:
    return tiny_models(TINY_LITE, seed=0)


class FrameEnergyEncoder(torch.nn.Module):
    """Cheap stand-in for Wav2Vec with the same contract ``(audio [1, N], S) -> [1, S, L, D]``: per-frame
    RMS and mean of the waveform, tiled. Used only by the 100-chunk test."""

    def __init__(self, layers: int, channels: int) -> None:
        super().__init__()
        self.layers, self.channels = layers, channels

    def forward(self, audio, num_frames):
        frames = audio.reshape(1, num_frames, -1)
        feat = torch.stack([frames.pow(2).mean(-1).sqrt(), frames.mean(-1)], -1)  # [1, S, 2]
        return feat.repeat(1, 1, self.channels // 2)[:, :, None].expand(-1, -1, self.layers, -1).contiguous()


@pytest.fixture(scope="session")
def tiny_pro_fast_vae(tiny_pro) -> FlashHeadModels:
    return FlashHeadModels(
        tiny_pro.variant, tiny_pro.transformer, PoolVAE(TINY_PRO.transformer.out_dim), tiny_pro.audio_encoder,
        tiny_pro.device, tiny_pro.dtype,
    )


@pytest.fixture(scope="session")
def tiny_pro_fast(tiny_pro) -> FlashHeadModels:
    """Real tiny DiT with stand-in VAE and audio encoder (for the 100-chunk test)."""
    c = TINY_PRO.transformer
    return FlashHeadModels(
        tiny_pro.variant, tiny_pro.transformer, PoolVAE(c.out_dim), FrameEnergyEncoder(c.audio_layers, c.audio_channels),
        tiny_pro.device, tiny_pro.dtype,
    )


@pytest.fixture(scope="session")
def ref_image() -> np.ndarray:
    return (np.random.RandomState(0).rand(48, 40, 3) * 255).astype(np.uint8)


@pytest.fixture
def speech() -> np.ndarray:
    """Deterministic speech-like int16 PCM (AM-modulated harmonics + noise), 16 kHz."""
    rng = np.random.RandomState(1)
    t = np.arange(16000 * 12) / 16000
    x = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.randn(t.size)
    return (x * 8000).astype(np.int16)
