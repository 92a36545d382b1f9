"""Spatially sliced parallel Wan VAE on CPU over gloo: a 2-rank subgroup (even split) and 3 ranks
(uneven split, full 9-latent-frame streaming chunk) reproduce the single-process tiny Wan VAE
decode/encode, and every rank gets the same full output.

Tolerances come from measurements with this tiny VAE (seed 0, latent 32x8, 2 ranks): with exact
attention the max |diff| is 1.8e-4 (decode) / 0 (encode) at halo 8 and exactly 0 once the halo
covers the whole frame; with local attention it stays at ~8e-2 (decode) for halo 8.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import finish_rank, init_rank, spawn_ranks

# name -> (ranks, latent rows h, latent cols w, latent frames, [(exact_attention, halo), ...])
CASES = {
    # 16 + 16 rows; halo 24 makes every window the whole frame
    "even": ((0, 1), 32, 8, 2, [(True, 8), (True, 24), (False, 8)]),
    # 7 + 6 + 6 rows, a full streaming chunk (9 latent frames)
    "uneven": ((0, 1, 2), 19, 4, 9, [(True, 8)]),
}
TOL = {(True, 8): 2e-3, (True, 24): 1e-5}


def _tiny_vae():
    from vividhead.models.configs import VAEKind
    from vividhead.models.vae import build_vae

    torch.manual_seed(0)
    return build_vae(VAEKind.WAN, tiny=True).eval()


def _inputs(h: int, w: int, t_lat: int, frames: int = 5):
    """Normalised latents ``[1, 4, t_lat, h, w]`` and a smooth video ``[1, 3, frames, 8h, 8w]`` in [-1, 1]."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, t_lat, h, w, generator=g)
    video = torch.nn.functional.interpolate(torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1,
                                            size=(frames, 8 * h, 8 * w), mode="trilinear")
    return z, (0.8 * video + 0.2 * (torch.rand(video.shape, generator=g) * 2 - 1)).clamp(-1, 1)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_rank(rank, world, port)
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock

    from vividhead.inference.parallel_vae import ParallelWanVAE

    vae = _tiny_vae()
    out = {"res": {}, "ref": {}}
    for name, (ranks, h, w, t_lat, cases) in CASES.items():
        group = dist.new_group(list(ranks))  # collective over the world: every rank calls it
        if rank not in ranks:
            continue
        z, video = _inputs(h, w, t_lat)
        for exact, halo in cases:
            p = ParallelWanVAE(vae, group=group, halo=halo, exact_attention=exact)
            out["res"][name, exact, halo] = (p.decode(z), p.encode(video))
        if rank == 0:
            out["ref"][name] = (vae.decode(z), vae.encode(video))
    out["errors"] = []
    p = ParallelWanVAE(vae)
    z, video = _inputs(world - 1, 4, 2)  # fewer latent rows than ranks; then height not a multiple of 8
    for call in (lambda: p.decode(z), lambda: p.encode(_inputs(4, 4, 2)[1][:, :, :, :-4])):
        try:
            call()
        except ValueError as e:
            out["errors"].append(str(e))
    out["restored"] = all(isinstance(m.mid_block.attentions[0], WanAttentionBlock)
                          for m in (vae.model.encoder, vae.model.decoder))
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finish_rank()


def test_parallel_vae_matches_single_process(tmp_path):
    spawn_ranks(_worker, 3, tmp_path)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]
    for o in outs:
        assert o["restored"]
        assert len(o["errors"]) == 2
    for name, (ranks, h, w, t_lat, cases) in CASES.items():
        ref_dec, ref_enc = outs[0]["ref"][name]
        assert ref_dec.shape == (1, 3, 1 + 4 * (t_lat - 1), 8 * h, 8 * w) and ref_enc.shape == (1, 4, 2, h, w)
        for exact, halo in cases:
            dec, enc = outs[0]["res"][name, exact, halo]
            for r in ranks[1:]:  # all-gathered: bitwise the same on every rank
                assert torch.equal(outs[r]["res"][name, exact, halo][0], dec)
                assert torch.equal(outs[r]["res"][name, exact, halo][1], enc)
            assert dec.shape == ref_dec.shape and enc.shape == ref_enc.shape
            if exact:
                torch.testing.assert_close(dec, ref_dec, rtol=0, atol=TOL[exact, halo])
                torch.testing.assert_close(enc, ref_enc, rtol=0, atol=TOL[exact, halo])
            else:  # attention limited to the window: clearly worse than the exact mode at the same halo
                exact_err = (outs[0]["res"][name, True, halo][0] - ref_dec).abs().max()
                assert (dec - ref_dec).abs().max() > 10 * exact_err


def test_single_process_passthrough():
    from vividhead.inference.parallel_vae import ParallelWanVAE

    vae = _tiny_vae()
    z, video = _inputs(4, 4, 2)
    p = ParallelWanVAE(vae)
    assert (p.latent_channels, p.temporal_stride, p.spatial_stride) == (4, 4, 8)
    assert torch.equal(p.decode(z), vae.decode(z)) and torch.equal(p.encode(video), vae.encode(video))
    with pytest.raises(ValueError):
        ParallelWanVAE(vae, halo=-1)
