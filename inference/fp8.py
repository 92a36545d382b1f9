"""FP8 (e4m3) GEMMs for the DiT's linear layers at inference: an opt-in speed/precision trade.

Recipe (the "row-wise" scaling of torchao's float8 inference and of DeepSeek-V3's FP8 GEMMs, in
plain PyTorch on ``torch._scaled_mm``, so no extra package is needed):

* weights ``W [N, K]`` are quantised once, per output row: ``s_w[n] = max_k |W[n, k]| / 448``,
  ``W8 = fp8(W / s_w)``;
* activations ``X [M, K]`` are quantised at every call, per token (row): ``s_x[m] = max_k |X[m, k]| / 448``
  (one fused reduction + cast under ``torch.compile``);
* ``Y = (X8 @ W8^T) * s_x s_w^T + b``, accumulated by the tensor cores (cuBLASLt / CUTLASS row-wise
  kernels, Hopper ``QGMMA``), written in the activation dtype.

448 is the largest finite float8_e4m3fn. e4m3 keeps 3 mantissa bits (relative rounding up to 2^-4),
so each GEMM's output moves by about a percent against bf16; what this does to the whole DiT and the
frames is measured by ``benchmarks/inference.py --part fp8`` (docs/benchmarks.md), which is why the
streaming fast path leaves it off unless asked (``vividhead infer/serve --fp8``).

Which layers: every ``nn.Linear`` inside the transformer blocks (self-attention q/k/v/o, audio
cross-attention q/k/v/o, FFN) whose sizes the FP8 kernels take (multiples of 16); the patch, time,
audio-projection embeddings and the head stay in the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448.0


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation of a 2-D tensor.

    Args:
        x: ``[R, K]`` any float dtype.

    Returns:
        ``(q, scale)``: float8_e4m3fn ``[R, K]`` and float32 ``[R, 1]`` with ``x ~= q * scale``
        (all-zero rows get scale ``1e-12 / 448``).
    """
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Float8Linear(nn.Module):
    """Inference-only replacement of an ``nn.Linear`` with row-wise FP8 weights and activations.

    Args:
        linear: the layer to replace (``in_features``, ``out_features`` multiples of 16); its weight
            is quantised here and not kept.

    Buffers:
        weight_fp8: float8_e4m3fn ``[N, K]``; weight_scale: float32 ``[1, N]``; bias: ``[N]`` in the
        layer's dtype or ``None``.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"FP8 GEMMs need sizes divisible by 16, got {self.in_features}x{self.out_features}")
        q, scale = quantize_rowwise(linear.weight.detach())
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [..., K]`` (bf16 / fp16 / fp32) -> ``[..., N]`` in ``x``'s dtype."""
        lead = x.shape[:-1]
        xq, xs = quantize_rowwise(x.reshape(-1, self.in_features))  # [M, K] e4m3, [M, 1] float32
        if x.is_cuda:
            # mat2 must be column-major: the transpose of the row-major [N, K] weight is
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale,
                                 out_dtype=x.dtype, use_fast_accum=True)
        else:  # the same quantised math, dequantised (CPU tests)
            y = F.linear(xq.float() * xs, self.weight_fp8.float() * self.weight_scale.t()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def convert_linears_to_fp8(module: nn.Module) -> int:
    """Replace, in place, every FP8-sized ``nn.Linear`` inside ``module.blocks`` (or inside
    ``module`` when it has no ``blocks``) by :class:`Float8Linear`.

    Returns:
        the number of layers replaced.

    Raises:
        RuntimeError: on a CUDA device without FP8 tensor cores (compute capability < 8.9).
    """
    root = getattr(module, "blocks", module)
    p = next(module.parameters(), None)
    if p is not None and p.is_cuda and torch.cuda.get_device_capability(p.device) < (8, 9):
        raise RuntimeError("FP8 GEMMs need an Ada / Hopper or newer GPU")
    n = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                setattr(parent, name, Float8Linear(child))
                n += 1
    return n


__all__ = ["E4M3_MAX", "Float8Linear", "convert_linears_to_fp8", "quantize_rowwise"]
