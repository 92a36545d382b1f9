"""The default fast path: ``infer``/``serve`` options (one flag turns it off; FP8 opt-in and only
with it on a GPU), ``FlashHeadModels.warm_up`` (every chunk shape, no effect on later sessions) and
the ``optimize()`` defaults (CPU: compile, CUDA graphs, FP8 and the Wan VAE checked elsewhere)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from vividhead.inference.cli import ModelOptions, register
from vividhead.inference.pipeline import FlashHeadModels, StreamingSession


def _dit_inputs(c, b: int, size: int, g, frames: int = 3):
    """DiT call arguments for a batch of ``b`` (transformer config ``c``): latents and the motion
    latents ``[b, C, frames, size, size]``, one timestep ``[1]`` (as ``sample_chunk`` passes it) and
    audio context ``[b, 1 + (frames - 1) * stride, 5, layers, channels]``."""
    import torch

    x, y = (torch.randn(b, c.out_dim, frames, size, size, generator=g) for _ in range(2))
    ctx = torch.randn(b, 1 + (frames - 1) * c.vae_stride[0], 5, c.audio_layers, c.audio_channels, generator=g)
    return x, torch.full((1,), 500.0), ctx, y


def test_fast_path_is_the_default_and_one_flag_turns_it_off():
    assert ModelOptions().fast_path is True and ModelOptions().fp8 is False
    app = typer.Typer()
    register(app)
    for command in ("infer", "serve"):  # both commands take the same switch
        text = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert "--no-fast-path" in text and "--fp8" in text
        assert re.search(r"--compile(?![\w-])", text) is None  # no switch of its own (--compile-artifacts is a file)


def test_optimize_defaults_are_the_fast_path():
    defaults = {k: p.default for k, p in inspect.signature(FlashHeadModels.optimize).parameters.items()}
    assert defaults == {"self": inspect.Parameter.empty, "compile_dit": True, "cuda_graphs": True,
                        "fast_vae": True, "fp8": False, "vae_compile": "default", "dynamic_batch": False}


def test_fp8_without_the_gpu_fast_path_is_refused(tiny_pro, monkeypatch):
    monkeypatch.setattr(FlashHeadModels, "random", classmethod(lambda cls, *a, **k: tiny_pro))
    opts = ModelOptions(random_weights=True, device="cpu", dtype="fp32", fp8=True)
    with pytest.raises(typer.BadParameter, match="--fp8"):
        opts.load()
    # on the CPU the fast path is skipped: nothing compiled, weights untouched
    models = dataclasses.replace(opts, fp8=False).load()
    assert not models.cuda_graphs and "forward" not in vars(models.transformer)


@pytest.mark.parametrize("frames", [3, 2])
@pytest.mark.parametrize("variant", ["tiny_lite", "tiny_pro"])
def test_batch_dynamic_dit_compiles_one_graph_for_every_batch_size(variant, frames, request):
    """The tiny DiT compiled static, wrapped by ``batch_dynamic`` as ``optimize(dynamic_batch=True)``
    does: batches of 1, 2 and 3 (a timestep of one value, as ``sample_chunk`` passes it) run through
    the graphs built for the first (a static compile makes new ones per size; without the scoped
    size-oblivious setting batch 1 gets its own), and every output equals the eager forward's. Two
    latent frames is the cold-start chunk of ``fast_start``: one later latent frame, whose audio
    windows a reshape would regroup by asking whether batch 1 is contiguous."""
    import torch
    from torch._dynamo.testing import CompileCounterWithBackend

    from vividhead.models.compiling import batch_dynamic

    m = request.getfixturevalue(variant)
    c = m.variant.transformer
    eager = m.transformer.forward
    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager")
    compiled = batch_dynamic(torch.compile(eager, backend=backend, dynamic=False))
    g = torch.Generator().manual_seed(0)
    graphs = []
    for b in (1, 2, 3):
        x, t, ctx, y = _dit_inputs(c, b, 4, g, frames)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, t, ctx, y), eager(x, t, ctx, y), rtol=1e-5, atol=1e-6)
        graphs.append(backend.frame_count)
    torch._dynamo.reset()
    # the forward is two graphs (the eager RoPE tables split it), built at batch 1, reused at 2 and 3
    assert graphs == [2, 2, 2], graphs


def test_batch_dynamic_ltx_decode_and_encode_compile_one_graph_for_every_batch_size(tiny_lite):
    """The LTX VAE coders as ``optimize(dynamic_batch=True)`` wraps them (the tiny diffusers LTX VAE,
    ``aot_eager``): parts of 1, 2 and 3 streams (a decode in parts of 8 meets 1 inside a batch of 9)
    decode and encode through the graph each built for the first, with the eager coders' outputs."""
    import torch
    from torch._dynamo.testing import CompileCounterWithBackend

    from vividhead.models.compiling import batch_dynamic, compile_no_grad

    vae = tiny_lite.vae
    torch._dynamo.reset()
    counts = {"decode": CompileCounterWithBackend("aot_eager"), "encode": CompileCounterWithBackend("aot_eager")}
    decode = batch_dynamic(compile_no_grad(vae.decode, backend=counts["decode"]))
    encode = batch_dynamic(compile_no_grad(vae.encode_moments, backend=counts["encode"]))
    g = torch.Generator().manual_seed(0)
    graphs = []
    for b in (1, 2, 3):
        z = torch.randn(b, vae.latent_channels, 2, 2, 2, generator=g)
        with torch.no_grad():
            video = decode(z)
            torch.testing.assert_close(video, vae.decode(z), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(encode(video), vae.encode_moments(video), rtol=1e-5, atol=1e-6)
        graphs.append((counts["decode"].frame_count, counts["encode"].frame_count))
    torch._dynamo.reset()
    assert graphs == [(1, 1)] * 3, graphs


@pytest.mark.slow
def test_dynamic_batch_optimize_compiles_one_graph_for_every_batch_size():
    """``optimize(dynamic_batch=True)`` on the CPU (Inductor, no CUDA graphs; ~40 s with cold
    caches): the DiT and the LTX coders run batches of 1, 2 and 3 through the graphs built at batch 1,
    with the eager models' outputs. Inductor rewrites views as reshapes and indexes them itself, so a
    reshape that only ``aot_eager`` accepts for every batch size shows here."""
    import torch
    from tiny_models import TINY_LITE, tiny_models
    from torch._dynamo.utils import counters

    eager, m = (tiny_models(TINY_LITE, seed=0) for _ in range(2))
    torch._dynamo.reset()
    counters.clear()
    assert m.optimize(cuda_graphs=False, dynamic_batch=True) == {
        "dit": "compiled, dynamic batch", "vae": "ltx-compiled, dynamic batch"}
    c = m.variant.transformer
    g = torch.Generator().manual_seed(0)
    graphs = []
    for b in (1, 2, 3):
        x, t, ctx, y = _dit_inputs(c, b, 2, g)
        z = torch.randn(b, m.vae.latent_channels, 2, 2, 2, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(m.transformer(x, t, ctx, y), eager.transformer(x, t, ctx, y),
                                       rtol=1e-4, atol=1e-5)
            video = m.vae.decode(z)
            torch.testing.assert_close(video, eager.vae.decode(z), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.vae.encode_moments(video), eager.vae.encode_moments(video),
                                       rtol=1e-4, atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs == [4] * 3, graphs  # the DiT's two (split by the eager RoPE call), decode, encode


@pytest.mark.parametrize("fast_start", [False, True])
def test_warm_up_covers_the_chunk_shapes_and_leaves_sessions_alone(tiny_pro_fast_vae, ref_image, speech, fast_start):
    m = tiny_pro_fast_vae
    cfg = dataclasses.replace(m.variant.streaming, fast_start=fast_start)
    calls = []
    forward = m.transformer.forward
    m.transformer.forward = lambda x, *a: calls.append(tuple(x.shape)) or forward(x, *a)
    try:
        before = list(StreamingSession(m, ref_image, seed=3, streaming=cfg).feed(speech[: 2 * 17920]))
        calls.clear()
        assert m.warm_up(cfg) > 0
        warm_calls = list(calls)
        after = list(StreamingSession(m, ref_image, seed=3, streaming=cfg).feed(speech[: 2 * 17920]))
    finally:
        del m.transformer.forward
    n_lat = {s[2] for s in warm_calls}
    assert n_lat == ({2, 9} if fast_start else {9})  # the fast-start chunk's 2 latent frames, the standard 9
    assert len(warm_calls) == 4 * 2  # 4 steps per chunk, 2 chunks (fast start: the short one, then a standard one)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
