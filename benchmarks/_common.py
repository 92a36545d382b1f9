"""What the benchmarks share: device-synchronised median timing, and variant lookup by name that
also knows the toy variants of ``tests/tiny_models.py`` (CPU dry runs).

Imported as ``_common`` (a benchmark run as ``python benchmarks/X.py`` or under ``torchrun`` has
``benchmarks/`` first on ``sys.path``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from vividhead.models.configs import VARIANTS, FlashHeadVariant, get_variant

TESTS = Path(__file__).resolve().parents[1] / "tests"


def sync(device: Optional[torch.device | str] = None) -> None:
    """Wait for ``device`` (default: the current CUDA device); no-op on the CPU."""
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(dev)


def median_seconds(
    fn: Callable[[], object],
    iters: int,
    warmup: int,
    device: Optional[torch.device | str] = None,
    after_warmup: Optional[Callable[[], None]] = None,
) -> float:
    """Median seconds of ``fn()`` over ``iters`` device-synchronised calls after ``warmup`` calls.

    Args:
        device: what to synchronise (see :func:`sync`).
        after_warmup: called once between the warm-up and the timed calls (e.g.
            ``torch.cuda.reset_peak_memory_stats``).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    if after_warmup is not None:
        after_warmup()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def find_variant(name: str) -> tuple[FlashHeadVariant, bool]:
    """``(variant, toy)``: a variant of :data:`VARIANTS`, or a toy one of ``tests/tiny_models.py``
    (``toy`` True: build it with ``tiny_encoders``).

    Raises:
        ValueError: neither knows ``name``.
    """
    if name in VARIANTS:
        return get_variant(name), False
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from tiny_models import TINY_VARIANTS

    if name in TINY_VARIANTS:
        return TINY_VARIANTS[name], True
    raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)} and, for CPU dry runs, {sorted(TINY_VARIANTS)}")
