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
                        "fast_vae": True, "fp8": False, "vae_compile": "default"}


def test_fp8_without_the_gpu_fast_path_is_refused(tiny_pro, monkeypatch):
    monkeypatch.setattr(FlashHeadModels, "random", classmethod(lambda cls, *a, **k: tiny_pro))
    opts = ModelOptions(random_weights=True, device="cpu", dtype="fp32", fp8=True)
    with pytest.raises(typer.BadParameter, match="--fp8"):
        opts.load()
    # on the CPU the fast path is skipped: nothing compiled, weights untouched
    models = dataclasses.replace(opts, fp8=False).load()
    assert not models.cuda_graphs and "forward" not in vars(models.transformer)


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
