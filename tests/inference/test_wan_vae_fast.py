"""The accelerated Wan VAE execution (channels-last, time-only causal padding, fused RMS norm +
SiLU) computes the same function as stock diffusers ``AutoencoderKLWan`` (tiny real-architecture
VAE, float32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from vividhead.training.models.vae import build_vae
from vividhead.training.models.wan_vae_fast import rms_norm_act


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    stock = build_vae("wan", tiny=True).eval()
    fast = copy.deepcopy(stock)
    counts = fast.accelerate(compile_norms=False)
    return stock, fast, counts


def test_counts_cover_every_causal_conv_and_norm(vaes):
    stock, fast, counts = vaes
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    n_conv = sum(isinstance(m, WanCausalConv3d) for m in stock.model.modules())
    n_norm = sum(isinstance(m, WanRMS_norm) for m in stock.model.modules())
    assert counts["conv"] == n_conv > 0
    assert counts["norm_silu"] + counts["norm"] == n_norm and counts["norm_silu"] > counts["norm"] > 0


@pytest.mark.parametrize("frames", [1, 9])
def test_decode_matches_stock(vaes, frames):
    stock, fast, _ = vaes
    z = torch.randn(1, stock.latent_channels, (frames - 1) // 4 + 1, 6, 5, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        a, b = stock.decode(z), fast.decode(z)
    assert a.shape == b.shape == (1, 3, frames, 48, 40)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert a.std() > 0.01  # not a degenerate output


def test_encode_matches_stock(vaes):
    stock, fast, _ = vaes
    video = torch.rand(1, 3, 5, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(video), stock.encode(video), rtol=1e-5, atol=1e-5)


def test_weights_still_load_after_acceleration(vaes):
    stock, fast, _ = vaes
    target = copy.deepcopy(fast)
    for p in target.model.parameters():
        p.data.zero_()
    target.model.load_state_dict(stock.model.state_dict(), strict=True)
    z = torch.randn(1, stock.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(target.decode(z), stock.decode(z), rtol=1e-5, atol=1e-5)


def test_rms_norm_act_matches_stock_norm_then_silu():
    norm = WanRMS_norm(6, images=False)
    norm.gamma.data = torch.rand_like(norm.gamma) + 0.5
    x = torch.randn(2, 6, 3, 4, 5)
    torch.testing.assert_close(rms_norm_act(x, norm.gamma, norm.bias, True), torch.nn.functional.silu(norm(x)))
    torch.testing.assert_close(rms_norm_act(x, norm.gamma, norm.bias, False), norm(x))
