"""Tests for inference/pipeline.py, audio_cache.py and color.py on tiny seeded models."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from vividhead.flow_matching import audio_frame_windows as frame_windows
from vividhead.flow_matching import shift_timestep
from vividhead.inference.pipeline import StreamingSession, advance, pcm_to_float, preprocess_reference, state_nbytes
from vividhead.streaming.audio_cache import AudioRingBuffer, TemporalAudioContextCache
from vividhead.streaming.color import lab_to_rgb, match_colors, reference_lab_stats, rgb_to_lab


def test_shifted_timesteps():
    got = [shift_timestep(t, 5.0) for t in (1000, 750, 500, 250, 0)]
    np.testing.assert_allclose(got, [1000.0, 937.5, 833.3333, 625.0, 0.0], rtol=1e-6)


def test_ring_buffer_keeps_last_samples_in_order():
    rb = AudioRingBuffer(10)
    assert np.all(rb.view() == 0)
    rb.push(np.arange(1, 8))
    rb.push(np.arange(8, 14))
    np.testing.assert_array_equal(rb.view(), np.arange(4, 14))
    rb.push(np.arange(100, 125))  # longer than capacity
    np.testing.assert_array_equal(rb.view(), np.arange(115, 125))
    assert rb.total_samples == 38


def test_audio_context_alignment():
    """The last window of the chunk is centred on the last frame of the buffer, future clamped."""

    def frame_index_encoder(audio, num_frames):  # feature of frame s = s, 1 layer, 1 channel
        return torch.arange(num_frames, dtype=torch.float32).view(1, -1, 1, 1)

    cache = TemporalAudioContextCache(frame_index_encoder, cache_seconds=8.0, frame_num=33, audio_window=5)
    assert cache.cache_frames == 200 and cache.buffer.capacity == 128000
    ctx = cache.context()
    assert ctx.shape == (1, 33, 5, 1, 1)
    centres = ctx[0, :, 2, 0, 0]
    np.testing.assert_array_equal(centres.numpy(), np.arange(167, 200))
    np.testing.assert_array_equal(ctx[0, -1, :, 0, 0].numpy(), [197, 198, 199, 199, 199])
    np.testing.assert_array_equal(ctx[0, 0, :, 0, 0].numpy(), [165, 166, 167, 168, 169])
    w = frame_windows(torch.arange(10.0).view(1, 10, 1, 1), 0, 3, 5)
    np.testing.assert_array_equal(w[0, 0, :, 0, 0].numpy(), [0, 0, 0, 1, 2])


def test_pcm_to_float_and_errors():
    np.testing.assert_allclose(pcm_to_float(np.array([-32768, 16384], np.int16)), [-1.0, 0.5])
    np.testing.assert_allclose(pcm_to_float(np.array([-32768, 16384], "<i2").tobytes()), [-1.0, 0.5])
    with pytest.raises(ValueError, match="even"):
        pcm_to_float(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="1-D"):
        pcm_to_float(np.zeros((2, 2), np.int16))
    with pytest.raises(ValueError, match="dtype"):
        pcm_to_float(np.array(["a"]))


def test_preprocess_reference_crops_to_size(ref_image):
    x = preprocess_reference(ref_image, 32, 32)
    assert x.shape == (1, 3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError):
        preprocess_reference(ref_image.astype(np.float32), 32, 32)


def test_color_roundtrip_and_matching():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 5, 3, generator=g) * 0.9 + 0.05
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=1e-4, atol=1e-4)
    ref = torch.rand(1, 3, 1, 16, 16, generator=g) * 2 - 1
    video = (ref.repeat(1, 1, 4, 1, 1) * 0.5 + 0.3).clamp(-1, 1)  # washed-out, shifted colours
    stats = reference_lab_stats(ref)
    fixed = match_colors(video, stats, 1.0)
    m_fixed = rgb_to_lab(((fixed + 1) / 2).permute(0, 2, 3, 4, 1)).mean(dim=(2, 3))
    m_video = rgb_to_lab(((video + 1) / 2).permute(0, 2, 3, 4, 1)).mean(dim=(2, 3))
    err_fixed = (m_fixed - stats[0][:, :, 0, 0]).abs().max()
    err_video = (m_video - stats[0][:, :, 0, 0]).abs().max()
    assert err_fixed < 0.25 * err_video
    assert torch.equal(match_colors(video, stats, 0.0), video)
    with pytest.raises(ValueError):
        match_colors(video, stats, 1.5)


def test_pro_session_real_tiny_wan_vae(tiny_pro, ref_image, speech):
    """One chunk through the real (tiny) diffusers Wan VAE: shapes and motion re-encode."""
    s = StreamingSession(tiny_pro, ref_image, seed=7)
    assert s.ref_latent.shape == (1, 4, 9, 4, 4)
    out = list(s.feed(speech[:17920]))
    assert [o.shape for o in out] == [(28, 32, 32, 3)] and out[0].dtype == np.uint8
    # the 5 motion frames are kept decoded and encoded when the next chunk starts
    assert s.state.motion_video.shape == (1, 3, 5, 32, 32)
    out = list(s.feed(speech[17920 : 2 * 17920]))
    assert [o.shape for o in out] == [(28, 32, 32, 3)]
    assert s.motion_latents.shape == (1, 4, 2, 4, 4)  # 5 motion frames -> 2 latent frames


def test_pro_session_chunks_cold_start_and_determinism(tiny_pro_fast_vae, ref_image, speech):
    tiny_pro = tiny_pro_fast_vae
    cfg = tiny_pro.variant.streaming
    assert (cfg.new_frames, cfg.samples_per_chunk) == (28, 17920)
    s = StreamingSession(tiny_pro, ref_image, seed=7)
    # cold start: one latent frame, the first frame of the reference latent
    assert s.motion_latents.shape[2] == 1
    assert torch.equal(s.motion_latents, s.ref_latent[:, :, :1])
    pcm = speech[: 2 * 17920 + 5000]
    out = []
    for piece in np.array_split(pcm, 7):  # odd-sized pieces
        out += list(s.feed(piece))
    assert [o.shape for o in out] == [(28, 32, 32, 3)] * 2 and out[0].dtype == np.uint8
    assert s.motion_latents.shape == (1, 4, 2, 4, 4)  # 5 motion frames -> 2 latent frames
    tail = list(s.flush())
    assert tail[0].shape[0] == -(-5000 // 640)
    assert s.frames_emitted == -(-len(pcm) // 640)

    # the server's path: split, then the padded tail as a chunk job batched with another session's chunk
    s3, other = StreamingSession(tiny_pro, ref_image, seed=7), StreamingSession(tiny_pro, ref_image, seed=8)
    jobs = s3.split(pcm)
    assert [i for _, i in jobs] == [0, 1]
    for samples, _ in jobs:
        advance([s3], [samples])
    samples, index, keep = s3.split_flush()
    assert (index, keep, s3.split_flush()) == (2, -(-5000 // 640), None)
    for chunk, _ in other.split(pcm[:2 * 17920]):
        advance([other], [chunk])
    frames, _ = advance([s3, other], [samples, pcm[2 * 17920 : 3 * 17920]])
    got = s3.trim_flush(frames, keep)  # batched: within one uint8 level of the lone flush
    assert got.shape == tail[0].shape and np.abs(got.astype(int) - tail[0]).max() <= 1
    assert s3.frames_emitted == s.frames_emitted

    s2 = StreamingSession(tiny_pro, ref_image, seed=7)
    again = list(s2.feed(pcm[: 2 * 17920]))
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    s2.reset()
    assert torch.equal(s2.motion_latents, s2.ref_latent[:, :, :1]) and s2.frames_emitted == 0


def test_motion_latents_overwrite_first_slots(tiny_pro_fast_vae, ref_image):
    s = StreamingSession(tiny_pro_fast_vae, ref_image)
    s.motion_latents = torch.randn(1, 4, 2, 4, 4)
    motion = s.motion_latents
    ctx = torch.randn(1, 33, 5, 2, 16)
    out = s.step([s.state], context=ctx, emit=False)
    assert out.latents.shape == (1, 4, 9, 4, 4)
    assert torch.equal(out.latents[:, :, :2], motion) and torch.equal(out.motion[0], motion)


def test_audio_changes_the_video(tiny_pro_fast_vae, ref_image, speech):
    m = tiny_pro_fast_vae
    a = list(StreamingSession(m, ref_image, seed=1).feed(speech[:17920]))[0]
    b = list(StreamingSession(m, ref_image, seed=1).feed(np.zeros(17920, np.int16)))[0]
    assert not np.array_equal(a, b)


def test_lite_session_emits_24_frames(tiny_lite, ref_image, speech):
    cfg = tiny_lite.variant.streaming
    assert (cfg.motion_frames, cfg.new_frames) == (9, 24)
    s = StreamingSession(tiny_lite, ref_image)
    out = list(s.feed(speech[: 2 * cfg.samples_per_chunk]))
    assert [o.shape for o in out] == [(24, 64, 64, 3)] * 2
    assert s.motion_latents.shape == (1, 8, 2, 2, 2)  # 9 motion frames -> 2 LTX latent frames


def test_unconsumed_iterator_loses_no_audio(tiny_pro_fast_vae, ref_image, speech):
    s = StreamingSession(tiny_pro_fast_vae, ref_image)
    s.feed(speech[:17920])  # dropped without iterating
    out = list(s.feed(speech[17920 : 2 * 17920]))
    assert len(out) == 2 and s.frames_emitted == 56


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_100_chunks_exact_alignment_constant_memory(tiny_pro_fast, ref_image):
    """Frames out == samples in / 640 after every chunk over 100 chunks fed in irregular pieces,
    with constant session state and bounded RSS growth."""
    streaming = dataclasses.replace(tiny_pro_fast.variant.streaming, color_correction_strength=0.0)
    s = StreamingSession(tiny_pro_fast, ref_image, seed=3, streaming=streaming)
    rng = np.random.RandomState(0)
    total = 100 * 17920
    pcm = (rng.randn(total) * 3000).astype(np.int16)
    sizes = rng.randint(1, 40000, size=200)
    cuts = np.unique(np.clip(np.cumsum(sizes), 0, total))
    fed = frames = 0
    state0 = None
    rss = []
    start = 0
    for end in [*cuts.tolist(), total]:
        if end <= start:
            continue
        for chunk in s.feed(pcm[start:end]):
            frames += chunk.shape[0]
            assert chunk.shape == (28, 32, 32, 3)
            # chunk 2 encodes chunk 1's motion frames: from then on the state has its steady size
            if s.chunks_done == 2:
                state0 = state_nbytes(s)
            if s.chunks_done >= 2:
                assert state_nbytes(s) == state0
            if s.chunks_done in (20, 100):
                rss.append(_rss_bytes())
        fed += end - start
        start = end
        assert frames == fed // 17920 * 28  # every complete chunk already emitted
    assert fed == total and frames == total // 640 == 2800 and s.chunks_done == 100
    assert s.audio_cache.buffer.total_samples == total
    assert rss[1] - rss[0] < 32 * 2**20, f"RSS grew by {(rss[1] - rss[0]) / 2**20:.1f} MiB"


def test_fast_start_short_first_chunk_keeps_alignment(tiny_pro_fast_vae, ref_image, speech):
    """fast_start: chunk 0 generates 5 frames (2 latent frames) and emits 4 for 2560 samples; its
    5 decoded frames are the next chunk's motion frames; frames out == ceil(samples / 640)."""
    cfg = dataclasses.replace(tiny_pro_fast_vae.variant.streaming, fast_start=True)
    assert cfg.chunk_frames(0) == (5, 4) and cfg.chunk_frames(1) == (33, 28)
    s = StreamingSession(tiny_pro_fast_vae, ref_image, seed=7, streaming=cfg)
    n = 2560 + 17920 + 1000
    out = []
    for piece in np.array_split(speech[:n], 5):
        out += list(s.feed(piece))
    assert [o.shape[0] for o in out] == [4, 28]
    assert s.audio_cache.buffer.total_samples == 2560 + 17920
    out += list(s.flush())
    assert sum(o.shape[0] for o in out) == -(-n // 640) == s.frames_emitted
    # the same stream without fast_start differs in chunking but not in total frame count
    plain = StreamingSession(tiny_pro_fast_vae, ref_image, seed=7)
    frames = sum(o.shape[0] for o in plain.feed(speech[:n])) + sum(o.shape[0] for o in plain.flush())
    assert frames == s.frames_emitted


def test_fast_start_first_chunk_runs_the_dit_on_two_latent_frames(tiny_pro_fast_vae, ref_image, speech):
    cfg = dataclasses.replace(tiny_pro_fast_vae.variant.streaming, fast_start=True)
    shapes = []
    s = StreamingSession(tiny_pro_fast_vae, ref_image, seed=7, streaming=cfg,
                         on_chunk=lambda out: shapes.append((out.frames[0].shape[0], out.latents.shape[2])))
    list(s.feed(speech[: 2560 + 17920]))
    assert shapes == [(4, 2), (28, 9)]  # frames emitted, latent frames the DiT ran on
    # chunk 1's motion latents are the encoded 5 frames of chunk 0 (2 latent frames)
    assert s.motion_latents.shape[2] == 2
