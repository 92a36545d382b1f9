"""One chunk step for ``infer``, ``serve`` and the stage-2 rollout
(:class:`vividhead.streaming.step.ChunkStep`): the three paths, on the same tiny weights, seeds,
reference and audio, give the same frames.

* infer: one :class:`StreamingSession` fed the whole track;
* serve: :func:`run_chunks` rounds of that session batched with a second one (other seed, reference);
* stage 2: :meth:`DistillTrainer.rollout` over a window holding the same audio, conditioned on the
  cold-start motion latent, with the trainer's own generator network and frozen encoders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vividhead.inference.batching import BatchingConfig, ChunkJob, run_chunks
from vividhead.inference.pipeline import FlashHeadModels, StreamingSession, pcm_to_float

CHUNKS = 3
SEED = 5


@pytest.fixture(scope="module")
def trainer(curated_shards, tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from test_distill import built, distill_config

    from vividhead.training.trainers.distributed import shutdown_distributed

    t = built(distill_config(curated_shards, tmp_path_factory.mktemp("distill")))
    yield t
    shutdown_distributed()


def test_infer_serve_and_rollout_give_the_same_frames(trainer, ref_image, speech):
    models = FlashHeadModels(trainer.variant, trainer.raw["generator"], trainer.encoders.vae, trainer.encoders.audio,
                             torch.device("cpu"), torch.float32)
    cfg = models.variant.streaming
    pcm = speech[: CHUNKS * cfg.samples_per_chunk]

    # infer: a batch of one
    session = StreamingSession(models, ref_image, seed=SEED)
    alone = list(session.feed(pcm))
    assert [f.shape[0] for f in alone] == [cfg.new_frames] * CHUNKS

    # serve: the same stream batched with another one, round by round
    a = StreamingSession(models, ref_image, seed=SEED)
    other = StreamingSession(models, np.flipud(ref_image).copy(), seed=SEED + 1)
    jobs_a, jobs_b = a.split(pcm), other.split(speech[-len(pcm):])
    served = [run_chunks([ChunkJob(a, *ja), ChunkJob(other, *jb)], BatchingConfig(batch_buckets=(4,)))[0]
              for ja, jb in zip(jobs_a, jobs_b)]

    # stage 2: the trainer's rollout over a window of the same audio (silence before it, as the cache)
    from vividhead.training.trainers.distill import RolloutWindow

    state = StreamingSession(models, ref_image, seed=SEED).state
    audio = np.concatenate([np.zeros(cfg.cache_samples, np.float32), pcm_to_float(pcm)])
    window = RolloutWindow(frames=torch.zeros(1, 1, 3, 1, 1, dtype=torch.uint8), audio=torch.from_numpy(audio)[None],
                           num_chunks=CHUNKS, num_motion_frames=1, ref_latent=state.ref_latent,
                           ref_stats=state.ref_stats, first_motion=state.ref_latent[:, :, :1], trainer=trainer)
    rng = torch.Generator().manual_seed(SEED)
    rolled = trainer.rollout(window, CHUNKS, exit_step=None, grad=False, rng=rng, keep_chunks=True)
    rollout = [f.numpy() for f in rolled.frames]

    for name, frames in (("serve", served), ("stage-2 rollout", rollout)):
        assert [f.shape for f in frames] == [f.shape for f in alone], name
        for j, (got, want) in enumerate(zip(frames, alone)):
            diff = np.abs(got.astype(int) - want.astype(int)).max()
            assert diff <= 1, f"{name} chunk {j}: frames differ from infer by {diff} levels"
    # the rollout is not trivially equal to anything: its chunks differ from one another
    assert not np.array_equal(rollout[0], rollout[1])


def test_truncated_step_returns_x0_and_leaves_the_stream_where_it_was(trainer, ref_image, speech):
    models = FlashHeadModels(trainer.variant, trainer.raw["generator"], trainer.encoders.vae, trainer.encoders.audio,
                             torch.device("cpu"), torch.float32)
    s = StreamingSession(models, ref_image, seed=SEED)
    motion = s.motion_latents.clone()
    ctx = torch.randn(1, models.variant.streaming.frame_num, models.variant.transformer.audio_window, 2, 16)
    out = s.step([s.state], context=ctx, exit_step=1)
    assert out.frames is None and out.latents.dtype == torch.float32
    assert torch.equal(out.latents[:, :, :1], motion.float())
    assert s.state.chunk_index == 0 and torch.equal(s.motion_latents, motion)
    with pytest.raises(ValueError, match="either samples or an audio context"):
        s.step([s.state])
