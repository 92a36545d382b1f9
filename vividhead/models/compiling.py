"""``torch.compile`` wrappers shared by inference's fast path and the trainers' frozen VAE:
entered without autograd (one graph whatever the caller's grad mode) and with a symbolic batch
dimension (one graph for every batch size, 1 included)."""

from __future__ import annotations

import torch
import torch.fx.experimental._config as shape_config


def compile_no_grad(fn, **compile_kwargs):
    """``torch.compile(fn, dynamic=False)`` always entered with autograd off.

    Dynamo guards every compiled frame on the caller's grad mode, so a compiled VAE entered from a
    thread or call site with autograd on after one with it off recompiles (seen on an H200 in
    ``vividhead serve``: a compiled LTX decode recompiled mid-stream, several seconds of stall);
    entering under ``torch.no_grad`` keeps one graph per shape.
    """
    compiled = torch.compile(fn, dynamic=False, **compile_kwargs)

    def call(*args, **kwargs):
        with torch.no_grad():
            return compiled(*args, **kwargs)

    return call


def batch_dynamic(compiled):
    """Wrap a ``torch.compile(..., dynamic=False)`` function so that the batch dimension is symbolic
    and every other size stays specialised: one graph serves every batch size, 1 included, where a
    static compile builds one per batch bucket (each a full Inductor compile: Lite's buckets
    1 / 4 / 8 / 16 took longer than 290 s to warm up on an H100). With CUDA graphs each batch size is
    still captured once, which is quick.

    The batch dimension is dim 0 of every tensor argument (``torch._dynamo.maybe_mark_dynamic``),
    except a one-dimensional argument of size 1 (the DiT's timestep: one value for every row, as
    ``sample_chunk`` passes it), which stays a constant. Dynamo specialises a size of 1 by default,
    so a batch of one would get its own graph (a second full compile at warm-up, about 200 s for
    Lite on an H100, and a size the LTX decode meets inside larger batches split in parts);
    compiling under ``backed_size_oblivious`` gives the batch symbol the range ``[0, inf)`` and
    reasons about it without assuming it is not 1. The setting is scoped to this call (a config
    patch, thread-local, read while Dynamo traces and Inductor compiles), so other compiled
    functions are unaffected. Code that branches on the batch size being 1 still splits the graph,
    e.g. a reshape (which checks contiguity) of a slice along a later dimension, contiguous only at
    batch 1: ``FlashHeadTransformer.forward`` and the LTX coders have none (Inductor on the CPU
    only: its oneDNN convolution choice looks at the batch size, so there a real-size LTX VAE still
    compiles twice). Inductor in torch 2.11 also guards on batch == 1 when it indexes a view that
    merges the batch into another dimension and the example batch is 1 (2.13 does not): compile at
    a larger batch first (``serve``'s warm-up runs its sizes largest first).
    """

    def call(*args, **kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and (a.dim() > 1 or (a.dim() == 1 and a.shape[0] != 1)):
                torch._dynamo.maybe_mark_dynamic(a, 0)
        with shape_config.patch(backed_size_oblivious=True):
            return compiled(*args, **kwargs)

    return call


def symbolic_batch() -> bool:
    """Whether the caller runs inside a :func:`batch_dynamic` call (traced with a symbolic batch
    size, possibly 1). Model code reads it to take, only there, a path that does not branch on a
    batch of 1 (``select_latent_audio_windows`` copies two slices), keeping the path it always had,
    and its rounding, everywhere else (eager, a static compile). In a traced function Dynamo reads it
    as a constant and guards on it.
    """
    return shape_config.backed_size_oblivious
