"""Sequence parallelism on CPU: the plain Ulysses processor over 2 gloo ranks reproduces the
single-process DiT output (tiny model, also with a padded, non-frame-aligned shard boundary, and for
two chunk lengths in a row); the plan's hooks leave the state dict alone and come off cleanly."""

from __future__ import annotations

import os

import torch
from gloo_ranks import finish_rank, init_rank, spawn_ranks
from tiny_models import TINY_PRO


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_rank(rank, world, port)
    from vividhead.inference.parallel import disable_sequence_parallel, enable_sequence_parallel
    from vividhead.models.flashhead import FlashHeadTransformer

    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_PRO.transformer).eval()
    c = TINY_PRO.transformer
    g = torch.Generator().manual_seed(1)
    # 9 latent frames x 3 x 4 tokens = 108 tokens; 2 ranks -> 54 each, frame boundaries inside shards
    x = torch.randn(1, c.out_dim, 9, 6, 8, generator=g)
    y = torch.randn(1, c.out_dim, 9, 6, 8, generator=g)
    ctx = torch.randn(1, 33, 5, c.audio_layers, c.audio_channels, generator=g)
    t = torch.tensor([833.3])
    # a second chunk length (5 latent frames x 3 x 3 = 45 tokens -> 23 + 22 real on 2 ranks)
    x5, y5 = x[:, :, :5, :, :6], y[:, :, :5, :, :6]
    ctx5 = ctx[:, :17]
    keys = {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref, ref5 = model(x, t, ctx, y), model(x5, t, ctx5, y5)
        assert enable_sequence_parallel(model, "ulysses") == "ulysses"
        out, out5 = model(x, t, ctx, y), model(x5, t, ctx5, y5)
        # the plan lives in hooks: module tree and state dict untouched, and it comes off cleanly
        assert {k: v.shape for k, v in model.state_dict().items()} == keys
        disable_sequence_parallel(model)
        assert torch.equal(model(x, t, ctx, y), ref)
    hooks = [model._forward_pre_hooks, model.head._forward_hooks, *(b._forward_pre_hooks for b in model.blocks)]
    assert not any(hooks)
    torch.save({"ref": ref, "out": out, "ref5": ref5, "out5": out5}, os.path.join(out_dir, f"rank{rank}.pt"))
    finish_rank()


def test_ulysses_matches_single_process(tmp_path):
    spawn_ranks(_worker, 2, tmp_path)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(r["out"], r["ref"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r["out5"], r["ref5"], rtol=1e-4, atol=1e-4)
