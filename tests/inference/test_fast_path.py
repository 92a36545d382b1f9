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


def test_batch_dynamic_compiles_one_graph_for_every_batch_above_one(tiny_pro):
    """The tiny DiT compiled static, wrapped by ``batch_dynamic``: batches of 2, 3 and 5 run through
    the same graphs (a static compile makes new ones per size), batch 1 gets its own, and every output
    equals the eager forward's."""
    import torch
    from torch._dynamo.utils import counters

    from vividhead.models.compiling import batch_dynamic

    dit = tiny_pro.transformer
    c = tiny_pro.variant.transformer
    eager = dit.forward
    torch._dynamo.reset()
    counters.clear()
    compiled = batch_dynamic(torch.compile(eager, backend="aot_eager", dynamic=False))
    g = torch.Generator().manual_seed(0)
    graphs = []
    for b in (2, 3, 5, 1):
        x, y = (torch.randn(b, c.out_dim, 3, 4, 4, generator=g) for _ in range(2))
        ctx = torch.randn(b, 9, 5, c.audio_layers, c.audio_channels, generator=g)
        t = torch.full((b,), 500.0)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, t, ctx, y), eager(x, t, ctx, y), rtol=1e-4, atol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    # the forward is two graphs (the eager RoPE tables split it): built for batch 2, reused for 3 and 5
    assert graphs[0] == graphs[1] == graphs[2] and graphs[3] > graphs[2], graphs


def test_batch_dynamic_ltx_decode_and_encode_reuse_their_graphs(tiny_lite):
    """The LTX VAE coders as ``optimize(dynamic_batch=True)`` wraps them (the tiny diffusers LTX VAE,
    ``aot_eager``): parts of 2, 3 and 4 streams decode and encode through the graphs built for 2."""
    import torch
    from torch._dynamo.utils import counters

    from vividhead.models.compiling import batch_dynamic, compile_no_grad

    vae = tiny_lite.vae
    decode = batch_dynamic(compile_no_grad(vae.decode, backend="aot_eager"))
    encode = batch_dynamic(compile_no_grad(vae.encode_moments, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    graphs = []
    for b in (2, 3, 4):
        z = torch.randn(b, vae.latent_channels, 2, 2, 2, generator=g)
        with torch.no_grad():
            video = decode(z)
            torch.testing.assert_close(video, vae.decode(z), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(encode(video), vae.encode_moments(video), rtol=1e-4, atol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[0] == graphs[1] == graphs[2], graphs


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
