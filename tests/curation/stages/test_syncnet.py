"""SyncNet stage: checkpoint layout, score arithmetic, offset search, and the real code path.

The released ``syncnet_v2.model`` cannot be downloaded here, so nothing in this file presents a
lip-sync score: the end-to-end test runs seeded random weights and only checks the plumbing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from avclips import WEIGHTS_DIR, clip_row, pcm_of, wav_bytes

from vividhead import weights
from vividhead.curation.models.syncnet import SyncNet, load_syncnet
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.stages.syncnet import (
    SyncNetConfig,
    SyncNetStage,
    lipsync_from_crops,
    offset_distances,
    sync_scores,
)
from vividhead.errors import MediaError

DETECTOR = str(WEIGHTS_DIR / "face_mediapipe_detector.tflite")


def _expected_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``syncnet_v2.model``, written out from the published layer list
    (joonson/syncnet_python SyncNetModel.py, ``S(num_layers_in_fc_layers=1024)``)."""
    layers = {
        # nn.Sequential index: (kind, weight shape)
        "netcnnaud": {0: ("conv", (64, 1, 3, 3)), 1: ("bn", 64), 4: ("conv", (192, 64, 3, 3)), 5: ("bn", 192),
                      8: ("conv", (384, 192, 3, 3)), 9: ("bn", 384), 11: ("conv", (256, 384, 3, 3)), 12: ("bn", 256),
                      14: ("conv", (256, 256, 3, 3)), 15: ("bn", 256), 18: ("conv", (512, 256, 5, 4)), 19: ("bn", 512)},
        "netfcaud": {0: ("conv", (512, 512)), 1: ("bn", 512), 3: ("conv", (1024, 512))},
        "netfclip": {0: ("conv", (512, 512)), 1: ("bn", 512), 3: ("conv", (1024, 512))},
        "netcnnlip": {0: ("conv", (96, 3, 5, 7, 7)), 1: ("bn", 96), 4: ("conv", (256, 96, 1, 5, 5)), 5: ("bn", 256),
                      8: ("conv", (256, 256, 1, 3, 3)), 9: ("bn", 256), 11: ("conv", (256, 256, 1, 3, 3)), 12: ("bn", 256),
                      14: ("conv", (256, 256, 1, 3, 3)), 15: ("bn", 256), 18: ("conv", (512, 256, 1, 6, 6)), 19: ("bn", 512)},
    }
    out = {}
    for seq, items in layers.items():
        for i, (kind, shape) in items.items():
            if kind == "conv":  # conv or linear: weight + bias
                out[f"{seq}.{i}.weight"], out[f"{seq}.{i}.bias"] = shape, (shape[0],)
            else:
                for k in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{seq}.{i}.{k}"] = (shape,)
                out[f"{seq}.{i}.num_batches_tracked"] = ()
    return out


def test_state_dict_layout_matches_released_checkpoint():
    state = SyncNet().state_dict()
    expected = _expected_layout()
    assert len(expected) == 102
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # Learnable parameters, summed by hand from the layer list: audio CNN 4,875,712 + two heads
    # 2 x 788,992 + lip CNN 7,177,920.
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 13_631_616


def test_forward_shapes():
    model = SyncNet().eval()
    with torch.no_grad():
        assert model.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert model.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


def test_strict_loading(tmp_path):
    torch.manual_seed(0)
    state = SyncNet().state_dict()
    good = tmp_path / "syncnet_v2.model"
    torch.save(state, good)
    loaded = load_syncnet(good)
    assert torch.equal(loaded.netcnnlip[0].weight, state["netcnnlip.0.weight"])
    missing = dict(state)
    missing.pop("netfcaud.3.bias")
    renamed = {k.replace("netcnnaud", "audio"): v for k, v in state.items()}
    reshaped = dict(state, **{"netfclip.3.weight": torch.zeros(512, 512)})
    for i, bad in enumerate((missing, renamed, reshaped)):
        torch.save(bad, tmp_path / f"bad{i}.model")
        with pytest.raises(RuntimeError):
            load_syncnet(tmp_path / f"bad{i}.model")


def test_weights_registry_names_the_file_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path))
    spec = weights.REGISTRY["syncnet_v2"]
    assert spec.url == "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
    with pytest.raises(weights.WeightsNotFound, match="syncnet_v2.model"):
        weights.resolve("syncnet_v2", None, download=False)
    assert SyncNetStage(SyncNetConfig()).weights()[0] == ("syncnet_v2", None)


def test_score_arithmetic_on_a_known_distance_matrix():
    # 3 windows x 5 offsets (vshift 2). Column means: [3, 2, 3, 6, 8].
    d = np.array([[2, 1, 4, 6, 8], [4, 1, 3, 6, 9], [3, 4, 2, 6, 7]], np.float32)
    s = sync_scores(d, vshift=2)
    assert s.lse_d == pytest.approx(2.0)            # min over offsets of the mean over windows
    assert s.lse_c == pytest.approx(3.0 - 2.0)      # median [2, 3, 3, 6, 8] = 3, minus the minimum
    assert s.av_offset_frames == 2 - 1              # vshift - argmin
    assert s.num_windows == 3
    np.testing.assert_allclose(s.mean_dists, [3, 2, 3, 6, 8])


def test_offset_distances_pad_with_zero_vectors():
    v = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    d = offset_distances(v, v, vshift=1)
    assert d.shape == (3, 3)
    # Row 1 (video [3, 4]): audio 0 ([0, 0]), audio 1 (itself), audio 2 ([6, 8]).
    np.testing.assert_allclose(d[1].numpy(), [5.0, 0.0, 5.0], atol=1e-4)
    # Row 0 at offset -1 and row 2 at offset +1 meet the zero padding.
    assert d[0, 0] == pytest.approx(0.0, abs=1e-4) and d[2, 2] == pytest.approx(10.0, abs=1e-4)


class _EnergyNet(torch.nn.Module):
    """Stand-in SyncNet whose two embeddings match by construction: the lip stream returns the
    mean pixel value of each of the 5 frames, the audio stream the mean MFCC c0 (log energy) of
    each group of 4 MFCC steps. Crops painted with an audio's per-frame c0 then embed exactly
    like that audio."""

    def forward_lip(self, x):  # [B, 3, 5, H, W] -> [B, 5]
        return x.mean(dim=(1, 3, 4))

    def forward_aud(self, x):  # [B, 1, 13, 20] -> [B, 5]
        return x[:, 0, 0, :].reshape(x.shape[0], 5, 4).mean(-1)


@pytest.mark.parametrize("shift", [-4, 0, 3])
def test_audio_shift_moves_the_argmin_offset(shift):
    from vividhead.curation.audio_io import mfcc_100hz

    row = clip_row("talk_hdtf_aoc_512.mp4", 3.0)
    pcm = pcm_of(row)[: 60 * 640]
    c0 = mfcc_100hz(pcm)[:, 0]
    per_frame = np.array([c0[4 * t : 4 * t + 4].mean() for t in range(60)], np.float32)
    crops = np.broadcast_to(per_frame[:, None, None, None], (60, 8, 8, 3)).astype(np.float32)
    n = 640 * abs(shift)
    # shift > 0: the audio is delayed by `shift` frames; shift < 0: it comes early.
    moved = np.concatenate([np.zeros(n, np.int16), pcm[: len(pcm) - n]]) if shift > 0 else np.concatenate([pcm[n:], np.zeros(n, np.int16)])
    base = lipsync_from_crops(crops, pcm, _EnergyNet(), vshift=15)
    assert base.av_offset_frames == 0 and base.lse_d == pytest.approx(0.0, abs=1e-3)
    s = lipsync_from_crops(crops, moved, _EnergyNet(), vshift=15)
    assert s.av_offset_frames == -shift
    assert s.lse_c > 0


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_random.model"
    torch.save(SyncNet().state_dict(), path)
    return str(path)


def test_stage_end_to_end_with_random_weights(random_weights):
    """Real decode, face track, crops, MFCC and SyncNet forward on a fixture clip. The weights are
    random, so the numbers mean nothing; only their presence, types and ranges are checked."""
    full = clip_row("talk_hdtf_aoc_512.mp4", 3.0)
    frames = 30
    import io

    import av

    # Re-encode the first 30 frames (1.2 s) so the test stays fast on 2 cores.
    src = av.open(io.BytesIO(full["video_bytes"]))
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    stream = out.add_stream("libx264", rate=25)
    stream.width = stream.height = 512
    stream.pix_fmt = "yuv420p"
    for i, frame in enumerate(src.decode(video=0)):
        if i == frames:
            break
        out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
    out.mux(stream.encode())
    out.close()
    row = dict(full, video_bytes=buf.getvalue(), audio_bytes=wav_bytes(pcm_of(full)[: frames * 640]), num_frames=frames)

    cfg = SyncNetConfig(weights_path=random_weights, detector_weights_path=DETECTOR,
                        min_lse_c=None, max_abs_av_offset_frames=None, batch_size=8)
    stage = SyncNetStage(cfg)
    stage.setup()
    kept = run_stage(stage, dict(row))[0]
    assert kept["status"] == "kept"
    assert math.isfinite(kept["lse_c"]) and kept["lse_c"] >= 0
    assert math.isfinite(kept["lse_d"]) and kept["lse_d"] > 0
    assert isinstance(kept["av_offset_frames"], int) and abs(kept["av_offset_frames"]) <= 15
    assert "syncnet" in kept["timings"]

    stage.teardown()
    strict = SyncNetStage(SyncNetConfig(weights_path=random_weights, detector_weights_path=DETECTOR, min_lse_c=1e9))
    strict.setup()
    rejected = run_stage(strict, dict(row))[0]
    strict.teardown()
    assert (rejected["status"], rejected["stage"], rejected["reason"]) == ("rejected", "syncnet", "low_sync_confidence")
    assert rejected["lse_c"] == kept["lse_c"]  # scores stay in the manifest of rejected rows


def test_too_short_clip_is_rejected():
    with pytest.raises(MediaError) as err:
        lipsync_from_crops(np.zeros((5, 8, 8, 3), np.float32), np.zeros(5 * 640, np.int16), _EnergyNet())
    assert err.value.reason == "too_short"
