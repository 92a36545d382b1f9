"""``torch.compile`` wrappers shared by inference's fast path and the trainers' frozen VAE:
entered without autograd (one graph whatever the caller's grad mode) and with a symbolic batch
dimension (one graph for every batch size >= 2)."""

from __future__ import annotations

import torch


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
    """Wrap a ``torch.compile(..., dynamic=False)`` function so that the batch dimension (dim 0 of
    every tensor argument) is symbolic and every other size stays specialised: one graph serves all
    batch sizes >= 2 (Dynamo still specialises size 1, so a batch of one gets its own graph), where a
    static compile builds one per batch bucket (each a full Inductor compile: Lite's buckets
    1 / 4 / 8 / 16 took longer than 290 s to warm up on an H100). With CUDA graphs each batch size is
    still captured once, which is quick. ``torch._dynamo.maybe_mark_dynamic`` leaves size-1 and
    already specialised dimensions alone, so scalar-like arguments pass through unchanged.
    """

    def call(*args, **kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and a.dim():
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args, **kwargs)

    return call
