"""Tests for vividhead/models: FlashHead DiT key compatibility, strict loading, forward semantics."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.utils import logging as dlog
from safetensors.torch import save_file
from tiny_models import TINY_LITE, TINY_PRO

from vividhead.models.audio_encoder import Wav2VecFeatures
from vividhead.models.audio_proj import select_latent_audio_windows
from vividhead.models.configs import LITE_1_3B, LIVETALK_14B, PRO_1_3B, get_variant
from vividhead.models.flashhead import (
    DiTAudioBlock,
    FlashHeadTransformer,
    apply_rope,
    rope_freqs_3d,
)
from vividhead.models.loading import load_flashhead_transformer

dlog.set_verbosity_error()
torch.set_num_threads(2)


def upstream_keys(num_layers: int) -> set[str]:
    """Checkpoint keys implied by the public ``WanModelAudioProject`` module definitions
    (Soul-AILab/SoulX-FlashHead ``flash_head/src/modules/flash_head_model.py``), written out by hand
    from that code: Conv3d patch embedding, text/time embeddings, 30 ``DiTAudioBlock`` (SelfAttention /
    CrossAttention with q,k,v,o + RMSNorm norm_q/norm_k, affine-free norm1/norm2, affine norm3,
    ffn.0/ffn.2, modulation), ``Head`` (head + modulation), ``audio_emb`` MLP, ``AudioProjModel``."""
    wb = ("weight", "bias")
    keys = {f"patch_embedding.{p}" for p in wb}
    keys |= {f"{m}.{i}.{p}" for m in ("text_embedding", "time_embedding") for i in (0, 2) for p in wb}
    keys |= {f"time_projection.1.{p}" for p in wb}
    for b in range(num_layers):
        pre = f"blocks.{b}"
        keys.add(f"{pre}.modulation")
        for a in ("self_attn", "cross_attn"):
            keys |= {f"{pre}.{a}.{proj}.{p}" for proj in "qkvo" for p in wb}
            keys |= {f"{pre}.{a}.norm_q.weight", f"{pre}.{a}.norm_k.weight"}
        keys |= {f"{pre}.norm3.{p}" for p in wb} | {f"{pre}.ffn.{i}.{p}" for i in (0, 2) for p in wb}
    keys |= {"head.modulation", "head.head.weight", "head.head.bias"}
    keys |= {f"audio_emb.proj.{i}.{p}" for i in (0, 1, 3, 4) for p in wb}
    keys |= {f"audio_proj.{m}.{p}" for m in ("proj1", "proj1_vf", "proj2", "proj3", "norm") for p in wb}
    return keys


@pytest.mark.parametrize(
    "variant, shapes",
    [
        (PRO_1_3B, {"patch_embedding.weight": (1536, 32, 1, 2, 2), "head.head.weight": (64, 1536),
                    "audio_proj.proj1.weight": (512, 5 * 12 * 768), "audio_proj.proj1_vf.weight": (512, 8 * 12 * 768),
                    "audio_proj.proj3.weight": (32 * 1536, 512), "blocks.29.ffn.0.weight": (8960, 1536),
                    "blocks.0.modulation": (1, 6, 1536), "text_embedding.0.weight": (1536, 4096)}),
        (LITE_1_3B, {"patch_embedding.weight": (1536, 256, 1, 1, 1), "head.head.weight": (128, 1536),
                     "audio_proj.proj1_vf.weight": (512, 12 * 12 * 768)}),
        (LIVETALK_14B, {"patch_embedding.weight": (5120, 32, 1, 2, 2), "blocks.39.ffn.0.weight": (13824, 5120)}),
    ],
)
def test_key_set_and_shapes_match_upstream(variant, shapes):
    with torch.device("meta"):
        model = FlashHeadTransformer.from_config_dataclass(variant.transformer)
    sd = model.state_dict()
    assert set(sd) == upstream_keys(variant.transformer.num_layers)
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k


def test_get_variant_rejects_unknown():
    assert get_variant("pro") is PRO_1_3B
    with pytest.raises(ValueError, match="unknown variant"):
        get_variant("prro")


def _tiny_inputs(variant, seed=0):
    c = variant.transformer
    g = torch.Generator().manual_seed(seed)
    h = variant.streaming.height_px // c.vae_stride[1]
    w = variant.streaming.width_px // c.vae_stride[2]
    f = (33 - 1) // c.vae_stride[0] + 1
    x = torch.randn(1, c.out_dim, f, h, w, generator=g)
    y = torch.randn(1, c.out_dim, f, h, w, generator=g)
    ctx = torch.randn(1, 33, c.audio_window, c.audio_layers, c.audio_channels, generator=g)
    return x, y, ctx


@pytest.mark.parametrize("variant", [TINY_PRO, TINY_LITE])
def test_forward_shape_determinism_and_conditioning(variant):
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(variant.transformer).eval()
    x, y, ctx = _tiny_inputs(variant)
    t = torch.tensor([937.5])
    with torch.no_grad():
        out = model(x, t, ctx, y)
        again = model(x, t, ctx, y)
        other_audio = model(x, t, ctx + 1.0, y)
        other_ref = model(x, t, ctx, y + 1.0)
        other_t = model(x, torch.tensor([625.0]), ctx, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, again)
    for changed in (other_audio, other_ref, other_t):
        assert (changed - out).abs().max() > 1e-4


def test_forward_rejects_bad_shapes():
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    x, y, ctx = _tiny_inputs(TINY_PRO)
    with pytest.raises(ValueError, match="video frames"):
        model(x, torch.tensor([1000.0]), ctx[:, :29], y)
    with pytest.raises(ValueError, match="differ"):
        model(x, torch.tensor([1000.0]), ctx, y[:, :, :2])


def test_strict_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    cfg = dict(model.config)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModelAudioProject", **cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = load_flashhead_transformer(tmp_path, dtype=torch.float32)
    x, y, ctx = _tiny_inputs(TINY_PRO)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([1000.0]), ctx, y), loaded(x, torch.tensor([1000.0]), ctx, y))

    # a missing and an unexpected key both fail loudly
    sd = dict(model.state_dict())
    sd["blocks.0.self_attn.q_proj.weight"] = sd.pop("blocks.0.self_attn.q.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(KeyError, match="1 missing .*q.weight.*1 unexpected .*q_proj"):
        load_flashhead_transformer(tmp_path, dtype=torch.float32)


def test_torch_file_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_LITE.transformer)
    (tmp_path / "config.json").write_text(json.dumps({k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in model.config.items() if not k.startswith("_")}))
    torch.save(model.state_dict(), tmp_path / "model.pth")
    loaded = load_flashhead_transformer(tmp_path, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_rope_matches_complex_reference():
    """Wan2.1 ``rope_apply``: view pairs as complex numbers and multiply by polar(1, pos * freq)."""
    d, grid = 16, (3, 2, 4)
    cos, sin = rope_freqs_3d(d, grid, torch.device("cpu"))
    x = torch.randn(1, 24, 2, d, dtype=torch.float64)
    c = d // 2
    split = [c - 2 * (c // 3), c // 3, c // 3]

    def freqs(n, dim_pairs):
        inv = 1.0 / (10000 ** (torch.arange(0, 2 * dim_pairs, 2, dtype=torch.float64) / (2 * dim_pairs)))
        return torch.polar(torch.ones(n, dim_pairs, dtype=torch.float64), torch.outer(torch.arange(n, dtype=torch.float64), inv))

    f, h, w = grid
    fr = [freqs(n, p) for n, p in zip(grid, split)]
    table = torch.cat([fr[0].view(f, 1, 1, -1).expand(f, h, w, -1), fr[1].view(1, h, 1, -1).expand(f, h, w, -1),
                       fr[2].view(1, 1, w, -1).expand(f, h, w, -1)], -1).reshape(f * h * w, 1, -1)
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(1, 24, 2, -1, 2)) * table).flatten(3)
    torch.testing.assert_close(apply_rope(x, cos, sin), ref, rtol=1e-5, atol=1e-5)


def test_audio_window_selection_matches_upstream_rule():
    # encode (frame, window slot) into the value so the selection can be read back
    vae_scale, win = 4, 5
    ctx = torch.zeros(1, 9, win, 1, 2)
    for fr in range(9):
        for s in range(win):
            ctx[0, fr, s, 0] = torch.tensor([fr, s], dtype=torch.float32)
    first, later = select_latent_audio_windows(ctx, vae_scale, win)
    assert first.shape == (1, 1, 5, 1, 2) and later.shape == (1, 2, 8, 1, 2)
    got = [tuple(int(v) for v in later[0, 0, i, 0]) for i in range(8)]
    # latent 1 = video frames 1..4: frame 1 slots 0..2, frames 2,3 slot 2, frame 4 slots 2..4
    assert got == [(1, 0), (1, 1), (1, 2), (2, 2), (3, 2), (4, 2), (4, 3), (4, 4)]
    with pytest.raises(ValueError):
        select_latent_audio_windows(ctx[:, :8], vae_scale, win)


def test_masked_cross_attention_equals_per_frame_reshape():
    """The sequence-parallel path (block-diagonal mask over arbitrary shards) computes the same
    per-frame audio cross-attention as the reshape path."""
    torch.manual_seed(0)
    blk = DiTAudioBlock(dim=16, num_heads=2, ffn_dim=32).eval()
    f, per, n_a = 3, 8, 4
    x = torch.randn(1, f * per, 16)
    audio = torch.randn(1, f, n_a, 16)
    t_mod = torch.randn(1, 6, 16)
    rope = rope_freqs_3d(8, (f, 2, 4), torch.device("cpu"))
    with torch.no_grad():
        a = blk(x, audio, t_mod, rope)
        b = blk(x, audio, t_mod, rope, frame_ids=torch.arange(f * per) // per)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_wav2vec_features_match_transformers_hidden_states():
    """At the native 50 Hz length the interpolation is the identity, so our layer stack must equal
    transformers' ``hidden_states[1:]``."""
    torch.manual_seed(0)
    enc = Wav2VecFeatures.tiny()
    audio = torch.randn(1, 16000)
    native = enc.model._get_feat_extract_output_lengths(torch.tensor(16000)).item()
    ours = enc(audio, native)
    x = (audio - audio.mean()) / torch.sqrt(audio.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        ref = enc.model(x, output_hidden_states=True).hidden_states[1:]
    torch.testing.assert_close(ours, torch.stack(ref, dim=2), rtol=1e-4, atol=1e-4)
    assert enc(audio, 25).shape == (1, 25, enc.num_layers, enc.channels)
