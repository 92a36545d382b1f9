"""Model definitions used by curation stages (architectures only; weights come from the registry)."""

from __future__ import annotations


def stage_device(num_gpus: float, section: str) -> str:
    """``cuda`` when the actor was given a GPU (``num_gpus > 0``), else ``cpu``.

    Raises:
        RuntimeError: a GPU was requested but CUDA is not available in the worker.
    """
    import torch

    if num_gpus > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"{section}.num_gpus > 0 but CUDA is not available in this worker")
        return "cuda"
    return "cpu"


