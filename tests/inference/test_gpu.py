"""GPU checks (``pytest -m gpu``): bf16 streaming on CUDA matches the float32 path closely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.pipeline import FlashHeadModels, StreamingSession
from training.models.configs import TINY_PRO
from training.models.flashhead import FlashHeadTransformer

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def test_dit_bf16_cuda_close_to_fp32_cpu():
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    c = TINY_PRO.transformer
    x, y = torch.randn(1, c.out_dim, 9, 4, 4), torch.randn(1, c.out_dim, 9, 4, 4)
    ctx = torch.randn(1, 33, 5, c.audio_layers, c.audio_channels)
    t = torch.tensor([937.5])
    with torch.no_grad():
        ref = model(x, t, ctx, y)
        gpu = model.to("cuda", torch.bfloat16)(x.cuda().bfloat16(), t.cuda(), ctx.cuda(), y.cuda().bfloat16())
    rel = (gpu.float().cpu() - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


def test_streaming_on_cuda():
    models = FlashHeadModels.random(TINY_PRO, device="cuda", dtype=torch.bfloat16)
    ref = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    s = StreamingSession(models, ref)
    out = list(s.feed(np.zeros(2 * 17920, np.int16)))
    assert [o.shape for o in out] == [(28, 32, 32, 3)] * 2
