"""Tests for vividhead/models/loading.py: the released FlashHead layout, and the Wan2.1-T2V (diffusers)
initialisation checked key by key and numerically against a tiny random diffusers
``WanTransformer3DModel`` on CPU in float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.utils import logging as dlog
from safetensors.torch import save_file
from tiny_models import TINY_PRO

from vividhead.models.configs import FlashHeadTransformerConfig
from vividhead.models.flashhead import FlashHeadTransformer, rope_freqs_3d, sinusoidal_embedding
from vividhead.models.loading import (
    check_wan_t2v_config,
    flashhead_from_wan_t2v,
    load_flashhead_transformer,
    wan_t2v_key_map,
)

dlog.set_verbosity_error()
torch.set_num_threads(2)

OFFICIAL = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "reference" / "flashhead_official_state_dict.json"
C = TINY_PRO.transformer


def tiny_wan(seed: int = 0, zero_cross_out: bool = False) -> WanTransformer3DModel:
    """Diffusers Wan2.1-T2V transformer with the tiny FlashHead config's sizes; every parameter random
    (diffusers' own init leaves norms at 1, biases at 0, which would hide mapping mistakes)."""
    model = WanTransformer3DModel(
        patch_size=C.patch_size, num_attention_heads=C.num_heads, attention_head_dim=C.dim // C.num_heads,
        in_channels=C.out_dim, out_channels=C.out_dim, text_dim=C.text_dim, freq_dim=C.freq_dim,
        ffn_dim=C.ffn_dim, num_layers=C.num_layers, eps=C.eps,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "norm" in name else 0.0))
        if zero_cross_out:
            for blk in model.blocks:
                blk.attn2.to_out[0].weight.zero_()
                blk.attn2.to_out[0].bias.zero_()
    return model


def test_released_layout_matches_reference_key_list():
    """The FlashHead module tree has exactly the released checkpoint's keys and shapes (Pro, Lite),
    so ``load_flashhead_transformer`` keeps loading those files strictly."""
    if not OFFICIAL.is_file():
        pytest.skip(f"reference key list missing at {OFFICIAL}")
    ref = json.loads(OFFICIAL.read_text())["variants"]
    for name in ("pro", "lite"):
        with torch.device("meta"):
            model = FlashHeadTransformer(**ref[name]["config"])
        got = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert got == ref[name]["state_dict"], name


def test_wan_t2v_every_key_mapped():
    wan = tiny_wan()
    src = wan.state_dict()
    key_map = wan_t2v_key_map(C.num_layers)
    assert set(key_map) == set(src) and len(key_map) == 27 * C.num_layers + 15
    fh = flashhead_from_wan_t2v(src, C)
    out = fh.state_dict()
    # the FlashHead keys not fed from Wan are exactly the fresh audio adapter
    assert set(out) - set(key_map.values()) == {k for k in out if k.startswith(("audio_proj.", "audio_emb."))}
    for s_key, d_key in key_map.items():
        if d_key == "patch_embedding.weight":
            assert out[d_key].shape[1] == 2 * src[s_key].shape[1]
            assert torch.equal(out[d_key][:, : C.out_dim], src[s_key])
            assert torch.count_nonzero(out[d_key][:, C.out_dim:]) == 0  # reference-latent channels
        else:
            assert torch.equal(out[d_key], src[s_key]), s_key
    assert fh.training and all(p.requires_grad for p in fh.parameters())

    # a key left over or missing is named
    extra = dict(src, **{"blocks.0.attn2.add_k_proj.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"0 missing .*1 left over .*add_k_proj"):
        flashhead_from_wan_t2v(extra, C)
    short = {k: v for k, v in src.items() if k != "blocks.1.norm2.bias"}
    with pytest.raises(KeyError, match=r"1 missing .*blocks\.1\.norm2\.bias"):
        flashhead_from_wan_t2v(short, C)
    # a backbone of other sizes fails on the first tensor that does not fit
    with pytest.raises(ValueError, match="does not fit|cannot widen"):
        flashhead_from_wan_t2v(src, FlashHeadTransformerConfig(**{**C.to_kwargs(), "ffn_dim": 48}))


def test_key_map_agrees_with_diffusers_converter():
    """Our diffusers -> original-Wan names, fed to diffusers' original -> diffusers converter, give
    back every diffusers key with its tensor; and an original-layout checkpoint initialises the same
    model as the diffusers one."""
    src = tiny_wan().state_dict()
    original = {d: src[s] for s, d in wan_t2v_key_map(C.num_layers).items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(src) and all(torch.equal(back[k], src[k]) for k in src)
    torch.manual_seed(0)
    a = flashhead_from_wan_t2v(src, C).state_dict()
    torch.manual_seed(0)
    b = flashhead_from_wan_t2v(original, C).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_block_equals_diffusers_block():
    """Self-attention, cross-attention and FFN of one block: FlashHead's per-latent-frame audio
    cross-attention equals diffusers' text cross-attention when every frame gets the same tokens."""
    wan = tiny_wan()
    fh = flashhead_from_wan_t2v(wan.state_dict(), C).eval()
    g = torch.Generator().manual_seed(2)
    grid = (3, 2, 4)
    s = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, s, C.dim, generator=g)
    ctx = torch.randn(1, 6, C.dim, generator=g)
    t_mod = torch.randn(1, 6, C.dim, generator=g)
    rope_d = wan.rope(torch.zeros(1, C.out_dim, grid[0], 2 * grid[1], 2 * grid[2]))
    rope_f = rope_freqs_3d(C.dim // C.num_heads, grid, torch.device("cpu"))
    # RoPE conventions agree: diffusers repeats each pair's angle, FlashHead stores it once
    torch.testing.assert_close(rope_d[0][0, :, :, 0::2], rope_f[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(rope_d[1][0, :, :, 1::2], rope_f[1], rtol=0, atol=1e-7)
    with torch.no_grad():
        for i in range(C.num_layers):
            ref = wan.blocks[i](x, ctx, t_mod, rope_d)
            out = fh.blocks[i](x, ctx[:, None].expand(1, grid[0], -1, -1), t_mod, rope_f)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_full_forward_equals_diffusers_with_cross_attention_neutralised():
    """Whole forward (patch embedding with the reference half, timestep embedding, blocks, head,
    unpatchify) with the cross-attention output projection zero in both models."""
    wan = tiny_wan(zero_cross_out=True)
    fh = flashhead_from_wan_t2v(wan.state_dict(), C).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, C.out_dim, 9, 6, 8, generator=g)
    ref_latent = torch.randn(1, C.out_dim, 9, 6, 8, generator=g)  # ignored: its input channels are zero
    audio = torch.randn(1, 33, C.audio_window, C.audio_layers, C.audio_channels, generator=g)
    text = torch.randn(1, 7, C.text_dim, generator=g)
    with torch.no_grad():
        # t = 0: both sinusoids are exact
        t = torch.tensor([0.0])
        torch.testing.assert_close(fh(x, t, audio, ref_latent), wan(x, t, text, return_dict=False)[0],
                                   rtol=1e-5, atol=1e-5)
        # diffusers' float32 sinusoid (get_timestep_embedding) vs Wan's float64 one: at t ~ 1000 the
        # angles differ by up to ~1e-4 rad, visible in the output; with Wan's sinusoid the two agree
        t = torch.tensor([937.5])
        gap = (fh(x, t, audio, ref_latent) - wan(x, t, text, return_dict=False)[0]).abs().max()
        assert 1e-6 < gap < 1e-3
        wan.condition_embedder.timesteps_proj.forward = lambda ts: sinusoidal_embedding(C.freq_dim, ts)
        for tv in (1.0, 500.0, 937.5, 999.0):
            t = torch.tensor([tv])
            torch.testing.assert_close(fh(x, t, audio, ref_latent), wan(x, t, text, return_dict=False)[0],
                                       rtol=1e-5, atol=1e-5)


def test_wan_t2v_from_folder_checks_config(tmp_path):
    wan = tiny_wan()
    pipe = tmp_path / "Wan2.1-T2V-tiny-Diffusers"
    wan.save_pretrained(pipe / "transformer", safe_serialization=True, max_shard_size="20KB")  # sharded + index
    assert list((pipe / "transformer").glob("*.safetensors.index.json"))
    torch.manual_seed(0)
    a = flashhead_from_wan_t2v(pipe, C, dtype=torch.bfloat16)
    torch.manual_seed(0)
    b = flashhead_from_wan_t2v(wan.state_dict(), C)
    assert a.dtype == torch.bfloat16
    assert all(torch.equal(v, b.state_dict()[k].to(torch.bfloat16)) for k, v in a.state_dict().items())
    # a head count the weights cannot reveal is caught by config.json
    with pytest.raises(ValueError, match="num_attention_heads=2 .want 4.*attention_head_dim=16 .want 8"):
        flashhead_from_wan_t2v(pipe, FlashHeadTransformerConfig(**{**C.to_kwargs(), "num_heads": 4}))
    with pytest.raises(ValueError, match="image_dim=1280"):
        check_wan_t2v_config({**dict(wan.config), "_class_name": "WanTransformer3DModel", "image_dim": 1280}, C)
    with pytest.raises(FileNotFoundError):
        flashhead_from_wan_t2v(tmp_path / "nowhere", C)


def test_released_layout_roundtrip_through_loader(tmp_path):
    """A FlashHead initialised from Wan, saved in the released layout, loads back strictly."""
    torch.manual_seed(0)
    fh = flashhead_from_wan_t2v(tiny_wan().state_dict(), C)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fh.config.items() if not k.startswith("_")}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in fh.state_dict().items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    back = load_flashhead_transformer(tmp_path, dtype=torch.float32)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in fh.state_dict().items())
