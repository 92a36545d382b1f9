"""The accelerated Wan VAE execution (channels-last, time-only causal padding, fused RMS norm +
SiLU, one-pass decode / encode without the causal feature cache) computes the same function as
stock diffusers ``AutoencoderKLWan`` (tiny real-architecture VAE, float32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from vividhead.models.vae import accelerate_vae, build_vae
from vividhead.models.wan_vae_fast import rms_norm_act


@pytest.fixture(scope="module")
def vaes():
    """Stock and accelerated as :func:`accelerate_vae` does it on the CPU (what the trainers' frozen
    VAE gets with ``parallel.fast_vae``; ``FlashHeadModels.optimize`` on a GPU adds compilation)."""
    torch.manual_seed(0)
    stock = build_vae("wan", tiny=True).eval()
    fast = copy.deepcopy(stock)
    assert accelerate_vae(fast, on_gpu=False) == "wan-accelerated"
    counts = copy.deepcopy(stock).accelerate(compile_norms=False)
    return stock, fast, counts


@pytest.fixture(scope="module")
def per_call_vae(vaes):
    """Accelerated, but with diffusers' per-call causal feature cache (``one_pass=False``)."""
    fast = copy.deepcopy(vaes[0])
    assert fast.accelerate(compile_norms=False, one_pass=False)["one_pass"] == 0
    return fast


def test_counts_cover_every_causal_conv_and_norm(vaes):
    stock, fast, counts = vaes
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    n_conv = sum(isinstance(m, WanCausalConv3d) for m in stock.model.modules())
    n_norm = sum(isinstance(m, WanRMS_norm) for m in stock.model.modules())
    assert counts["conv"] == n_conv > 0
    assert counts["norm_silu"] + counts["norm"] == n_norm and counts["norm_silu"] > counts["norm"] > 0
    assert counts["upsample"] > 0 and counts["one_pass"] == 1


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_decode_matches_stock(vaes, per_call_vae, frames):
    """One pass (whole chunk, no cache) and per call (cache) both equal stock, for 1, 2, 3 and 5
    latent frames (the first-frame rules of both temporal upsamplers are exercised from 2 on)."""
    stock, fast, _ = vaes
    z = torch.randn(2, stock.latent_channels, (frames - 1) // 4 + 1, 6, 5, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        a, b, c = stock.decode(z), fast.decode(z), per_call_vae.decode(z)
    assert a.shape == b.shape == c.shape == (2, 3, frames, 48, 40)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    assert a.std() > 0.01  # not a degenerate output


@pytest.mark.parametrize("frames", [1, 5, 9, 33])
def test_encode_matches_stock(vaes, per_call_vae, frames):
    """Motion frames (5), the reference clip (33) and the edge cases 1 and 9 frames (both temporal
    downsamplers' first-frame rules)."""
    stock, fast, _ = vaes
    video = torch.rand(1, 3, frames, 48, 40, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        ref = stock.encode(video)
        torch.testing.assert_close(fast.encode(video), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(per_call_vae.encode(video), ref, rtol=1e-5, atol=1e-5)
    assert ref.shape == (1, stock.latent_channels, (frames - 1) // 4 + 1, 6, 5)


def test_one_pass_encode_rejects_frame_counts_off_the_grid(vaes):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vaes[1].encode(torch.zeros(1, 3, 4, 48, 40))


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


def test_compiled_coders_trace_and_match_stock(vaes, monkeypatch):
    """``compile_coders``: the whole one-pass decoder / encoder under ``torch.compile`` computes the
    same function. On the CPU dynamo traces the patched modules with the ``eager`` backend (no C++
    build); inductor's kernels are checked by the GPU test and the pipeline benchmark."""
    import functools

    stock = vaes[0]
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    fast = copy.deepcopy(stock)
    counts = fast.accelerate(compile_norms=True, compile_coders="default")
    assert counts["compiled_coders"] == 2 and counts["one_pass"] == 1
    torch._dynamo.reset()
    z = torch.randn(1, stock.latent_channels, 3, 6, 5, generator=torch.Generator().manual_seed(7))
    video = torch.rand(1, 3, 5, 48, 40, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(z), stock.decode(z), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.encode(video), stock.encode(video), rtol=1e-5, atol=1e-5)


def test_compiled_coders_reject_unknown_mode(vaes):
    with pytest.raises(ValueError, match="compile_coders"):
        copy.deepcopy(vaes[0]).accelerate(compile_coders="reduce-overhead")
