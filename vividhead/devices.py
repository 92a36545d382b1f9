"""Where and in what precision a command runs: one table of dtype names, one ``--device auto`` rule.

``infer``, ``serve``, ``eval`` and ``train rollout`` take ``--device`` and ``--dtype`` through these.
"""

from __future__ import annotations

from vividhead.errors import UserError

#: ``--dtype`` names -> torch dtype attribute names.
DTYPE_NAMES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse_dtype(name: str):
    """``bf16`` / ``fp16`` / ``fp32`` -> ``torch.dtype``.

    Raises:
        UserError: an unknown name (one line listing the known ones).
    """
    import torch

    if name not in DTYPE_NAMES:
        raise UserError(f"--dtype {name!r}: use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[name])


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; other names are checked.

    Raises:
        UserError: ``cuda`` (or ``cuda:N``) asked for where torch has no CUDA device (or no device
            N), or a name torch does not know as a device (``gpu``, an empty string).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device; use --device cpu (or auto)")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"--device {device}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                        f"(cuda:0 to cuda:{n - 1})")
    return device


def default_dtype_name(device: str) -> str:
    """``bf16`` on CUDA, ``fp32`` elsewhere (CPU kernels for bf16 are slow and lose precision)."""
    return "bf16" if device.startswith("cuda") else "fp32"


__all__ = ["DTYPE_NAMES", "default_dtype_name", "parse_dtype", "resolve_device"]
