"""FP8 (e4m3, row-wise scaled) linear layers for the DiT: quantisation bounds, the layer against
bf16/float32 ``nn.Linear``, the ``torch._scaled_mm`` argument convention, and the conversion of a
tiny DiT (CPU; one CUDA check runs only with a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import TINY_PRO

from vividhead.inference.fp8 import E4M3_MAX, Float8Linear, convert_linears_to_fp8, quantize_rowwise
from vividhead.models.flashhead import FlashHeadTransformer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_rowwise_bounds():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 64)[:, None]
    x[5] = 0.0
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1) and s.dtype == torch.float32
    back = q.float() * s
    # each row's max maps to 448; e4m3 keeps 3 mantissa bits: relative error <= 2^-4 above the
    # subnormal range, absolute error <= half the smallest subnormal step times the scale below it
    assert torch.equal(q.float().abs().amax(1)[torch.arange(64) != 5], torch.full((63,), E4M3_MAX))
    err = (back - x).abs()
    assert (err <= x.abs() * 2**-4 + s * 2**-10).all()
    assert torch.equal(back[5], torch.zeros(128))


def test_float8_linear_close_to_linear_and_keeps_shapes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    f8 = Float8Linear(lin)
    x = torch.randn(2, 7, 64)
    y, ref = f8(x), lin(x)
    assert y.shape == (2, 7, 48) and y.dtype == x.dtype
    assert 1e-3 < rel(y, ref) < 5e-2  # quantised (not exact), within e4m3 rounding
    yb = f8(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and rel(yb, ref) < 6e-2
    with pytest.raises(ValueError, match="divisible by 16"):
        Float8Linear(torch.nn.Linear(64, 40))


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="no torch._scaled_mm")
def test_scaled_mm_convention_matches_dequantised_math():
    """The CUDA path calls ``_scaled_mm(xq, wq.t(), scale_a=[M, 1], scale_b=[1, N])``; where this
    torch has a CPU kernel, check that it computes the dequantised product the CPU path uses."""
    torch.manual_seed(1)
    x, w = torch.randn(32, 64) * 3, torch.randn(48, 64) * 0.1
    xq, xs = quantize_rowwise(x)
    wq, ws = quantize_rowwise(w)
    try:
        y = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.reshape(1, -1), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as exc:  # no CPU kernel in this build
        pytest.skip(f"_scaled_mm on CPU: {exc}")
    ref = (xq.float() * xs) @ (wq.float() * ws).t()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_convert_tiny_dit():
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    f8 = copy.deepcopy(model)
    n = convert_linears_to_fp8(f8)
    per_block = 4 + 4 + 2  # self-attn q/k/v/o, cross-attn q/k/v/o, FFN in/out
    assert n == per_block * TINY_PRO.transformer.num_layers
    assert isinstance(f8.blocks[0].ffn[0], Float8Linear) and isinstance(f8.head.head, torch.nn.Linear)
    c = TINY_PRO.transformer
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(1, c.out_dim, 9, 4, 4, generator=g), torch.randn(1, c.out_dim, 9, 4, 4, generator=g)
    ctx = torch.randn(1, 33, 5, c.audio_layers, c.audio_channels, generator=g)
    t = torch.tensor([936.0])
    with torch.no_grad():
        ref, out = model(x, t, ctx, y), f8(x, t, ctx, y)
    assert out.shape == ref.shape and 0 < rel(out, ref) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float8_linear_cuda_matches_dequantised_math():
    """The CUDA ``_scaled_mm`` path (eager and compiled) equals the CPU path's dequantised math up
    to the accumulation order and the bf16 output."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need sm_89+")
    torch.manual_seed(0)
    lin = torch.nn.Linear(1536, 8960).cuda().bfloat16()
    f8 = Float8Linear(lin)
    x = torch.randn(3, 1024, 1536, device="cuda", dtype=torch.bfloat16)
    cpu = copy.deepcopy(f8).cpu()
    ref = cpu(x.cpu().float()).cuda()
    y = f8(x)
    assert rel(y, ref) < 1e-2
    assert rel(torch.compile(f8)(x), ref) < 1e-2
    assert rel(y, lin(x)) < 6e-2
