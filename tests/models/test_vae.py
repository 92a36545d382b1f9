"""Tests for vividhead/models/vae.py: strides, normalisation round trip, strict checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vividhead.models.configs import VAEKind
from vividhead.models.vae import build_vae, load_vae

torch.set_num_threads(2)


@pytest.mark.parametrize("kind, frames, size, latent", [
    (VAEKind.WAN, 5, 16, (1, 4, 2, 2, 2)),
    (VAEKind.LTX, 9, 32, (1, 8, 2, 1, 1)),
])
def test_tiny_vae_shapes(kind, frames, size, latent):
    torch.manual_seed(0)
    vae = build_vae(kind, tiny=True).eval()
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    z = vae.encode(video)
    assert z.shape == latent
    out = vae.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1


def test_wan_latent_normalisation_uses_config_stats():
    vae = build_vae(VAEKind.WAN, tiny=True, config={"latents_mean": [1.0, 2.0, 3.0, 4.0], "latents_std": [2.0] * 4})
    video = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    mu = vae.model.encode(video).latent_dist.mode()
    expected = (mu - torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, -1, 1, 1, 1)) / 2.0
    torch.testing.assert_close(vae.encode(video), expected)


def test_load_vae_strict(tmp_path):
    torch.manual_seed(0)
    vae = build_vae(VAEKind.WAN, tiny=True)
    sd = {k: v.contiguous() for k, v in vae.model.state_dict().items()}
    save_file(sd, str(tmp_path / "vae.safetensors"))
    from vividhead.models.vae import TINY_WAN_VAE_KWARGS

    loaded = load_vae(VAEKind.WAN, tmp_path / "vae.safetensors", config=TINY_WAN_VAE_KWARGS)
    assert all(torch.equal(a, b) for a, b in zip(vae.model.state_dict().values(), loaded.model.state_dict().values()))
    sd.pop("decoder.conv_out.bias")
    save_file(sd, str(tmp_path / "vae.safetensors"))
    with pytest.raises(KeyError, match="missing"):
        load_vae(VAEKind.WAN, tmp_path / "vae.safetensors", config=TINY_WAN_VAE_KWARGS)
