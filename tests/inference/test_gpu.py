"""GPU checks (``pytest -m gpu``): bf16 streaming on CUDA matches the float32 path closely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_PRO, TINY_VARIANTS, tiny_models

from vividhead.inference.pipeline import StreamingSession
from vividhead.models.flashhead import FlashHeadTransformer

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def test_dit_bf16_cuda_close_to_fp32_cpu():
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    c = TINY_PRO.transformer
    x, y = torch.randn(1, c.out_dim, 9, 4, 4), torch.randn(1, c.out_dim, 9, 4, 4)
    ctx = torch.randn(1, 33, 5, c.audio_layers, c.audio_channels)
    # exactly representable in bf16: the model casts t to its dtype before the sinusoid (as
    # upstream), so 937.5 would become 936 in bf16 and differ from float32 by far more than rounding
    t = torch.tensor([936.0])
    with torch.no_grad():
        ref = model(x, t, ctx, y)
        gpu = model.to("cuda", torch.bfloat16)(x.cuda().bfloat16(), t.cuda(), ctx.cuda(), y.cuda().bfloat16())
    rel = (gpu.float().cpu() - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


def test_streaming_on_cuda():
    models = tiny_models(TINY_PRO, device="cuda", dtype=torch.bfloat16)
    ref = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    s = StreamingSession(models, ref)
    out = list(s.feed(np.zeros(2 * 17920, np.int16)))
    assert [o.shape for o in out] == [(28, 32, 32, 3)] * 2


def test_round_frames_reach_the_host_intact():
    """The pinned, asynchronous host copy of a round gives each stream's exact frames, and arrays of
    an earlier round are not overwritten by a later one (the server still encodes them)."""
    from vividhead.inference.pipeline import _to_host

    g = torch.Generator("cuda").manual_seed(0)
    rounds = [[torch.randint(0, 256, (n, 16, 24, 3), dtype=torch.uint8, device="cuda", generator=g)
               for n in sizes] for sizes in [(28, 24, 24), (24, 28)]]
    first = _to_host(rounds[0])
    kept = [a.copy() for a in first]
    second = _to_host(rounds[1])
    for arrays, tensors in [(first, rounds[0]), (second, rounds[1])]:
        assert [a.shape for a in arrays] == [tuple(t.shape) for t in tensors]
        for a, t in zip(arrays, tensors):
            np.testing.assert_array_equal(a, t.cpu().numpy())
    for a, k in zip(first, kept):
        np.testing.assert_array_equal(a, k)


@pytest.mark.parametrize("compile_coders", [None, "default"])
def test_accelerated_wan_vae_on_cuda_matches_stock(compile_coders):
    """Channels-last + Triton-fused RMS norm/SiLU (torch.compile) and, with ``compile_coders``, the
    whole decoder / encoder under inductor (the fast path's default), against stock diffusers, real
    Wan config at 128x128, float32 (tight) and bf16 (rounding-level)."""
    import copy

    from vividhead.models.vae import build_vae

    torch.manual_seed(0)
    stock = build_vae("wan").cuda().eval()
    fast = copy.deepcopy(stock)
    fast.accelerate(compile_norms=True, compile_coders=compile_coders)
    z = torch.randn(1, 16, 3, 16, 16, device="cuda")
    video = torch.rand(1, 3, 5, 128, 128, device="cuda") * 2 - 1
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(z), stock.decode(z), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(fast.encode(video), stock.encode(video), rtol=1e-3, atol=1e-3)
        stock, fast = stock.bfloat16(), fast.bfloat16()
        a, b = stock.decode(z.bfloat16()).float(), fast.decode(z.bfloat16()).float()
    assert (a - b).abs().mean() < 1e-2, (a - b).abs().mean()


@pytest.mark.parametrize("variant", ["tiny-pro", "tiny-lite"])
def test_optimized_fast_start_session_on_cuda(variant):
    """optimize() (compiled DiT with CUDA graphs, fast VAE) + fast_start: same chunking, and frames
    close to the unoptimised session with the same seed."""
    import dataclasses

    v = TINY_VARIANTS[variant]
    cfg = dataclasses.replace(v.streaming, fast_start=True)
    ref = (np.random.RandomState(0).rand(cfg.height_px, cfg.width_px, 3) * 255).astype(np.uint8)
    pcm = (np.random.RandomState(1).randn(cfg.samples_per_chunk * 2) * 3000).astype(np.int16)
    outs = []
    for optimize in (False, True):
        models = tiny_models(v, device="cuda", dtype=torch.bfloat16, seed=0)
        if optimize:
            models.optimize(compile_dit=True, cuda_graphs=True, fast_vae=True)
        s = StreamingSession(models, ref, seed=5, streaming=cfg)
        outs.append(list(s.feed(pcm)) + list(s.flush()))
    plain, fast = outs
    n0 = cfg.motion_frames - 1
    assert [o.shape[0] for o in fast] == [o.shape[0] for o in plain]
    assert fast[0].shape[0] == n0 and sum(o.shape[0] for o in fast) == len(pcm) // 640
    diff = np.abs(np.concatenate(fast).astype(int) - np.concatenate(plain).astype(int))
    assert diff.mean() < 8, diff.mean()  # bf16 compiled vs eager, random weights
