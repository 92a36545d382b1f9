"""FVD: the I3D definition loads pytorch-i3d state dicts strictly and safely, and the distance behaves.

The behaviour tests run the real I3D architecture at seeded RANDOM weights (``random_i3d``) on real
fixture clips at 64 x 64, four clips per set (the protocol is 224; smaller inputs keep the test fast on CPU). The FVD
values printed are NOT real figures: only their order is checked (a set against itself ~0, growing
with added noise and with blur).
"""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from vividhead.evaluation.fvd import (
    clips_to_i3d_input,
    frechet_distance,
    i3d_features,
    video_clips,
)
from vividhead.evaluation.i3d import InceptionI3d, load_i3d, random_i3d

SIZE = 64


def test_state_dict_layout_is_pytorch_i3d():
    state = InceptionI3d().state_dict()
    assert len(state) == 344
    # Key names and shapes of piergiaj/pytorch-i3d's InceptionI3d (spot checks across the network).
    assert tuple(state["Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 3, 7, 7, 7)
    assert tuple(state["Conv3d_2c_3x3.bn.running_var"].shape) == (192,)
    assert tuple(state["Mixed_3b.b1b.conv3d.weight"].shape) == (128, 96, 3, 3, 3)
    assert tuple(state["Mixed_4f.b3b.conv3d.weight"].shape) == (128, 528, 1, 1, 1)
    assert tuple(state["Mixed_5c.b0.conv3d.weight"].shape) == (384, 832, 1, 1, 1)
    assert tuple(state["logits.conv3d.weight"].shape) == (400, 1024, 1, 1, 1)
    assert tuple(state["logits.conv3d.bias"].shape) == (400,)
    assert not any(k.startswith("logits.bn") for k in state)
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 12_697_264  # pytorch-i3d's RGB model


def test_load_is_strict_and_runs_no_pickled_code(tmp_path):
    src = random_i3d(1)
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "rgb_imagenet.pt")
    loaded = load_i3d(tmp_path / "rgb_imagenet.pt")
    assert torch.equal(loaded.logits.conv3d.weight, src.logits.conv3d.weight)
    torch.save({k: v for k, v in src.state_dict().items() if k != "logits.conv3d.bias"}, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError):
        load_i3d(tmp_path / "missing.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_i3d(tmp_path / "evil.pt")


def test_input_scaling_and_shapes():
    clips = np.full((2, 16, 40, 30, 3), 255, np.uint8)
    clips[1] = 0
    x = clips_to_i3d_input(clips, 32)
    assert x.shape == (2, 3, 16, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(1)) and torch.allclose(x[1], -torch.ones(1))
    assert video_clips(np.zeros((40, 8, 8, 3), np.uint8)).shape == (2, 16, 8, 8, 3)  # non-overlapping
    assert video_clips(np.zeros((15, 8, 8, 3), np.uint8)).shape[0] == 0


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4 I): |mu|^2 = 3, tr(I + 4I - 2 * 2I) = 3 -> 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert abs(frechet_distance(a, a)) < 1e-8
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


@pytest.fixture(scope="module")
def real_clips(clips):
    """Four 16-frame clips: the first 32 frames of two fixtures, resized to 64 x 64."""
    out = []
    for name in ("talk_hdtf_aoc_512.mp4", "talk_retalking_face2.mp4"):
        frames = np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in clips[name].frames[:32]])
        out.append(video_clips(frames))
    return np.concatenate(out)


def test_fvd_random_weights_self_zero_and_monotone(real_clips, capsys):
    model = random_i3d(0)
    feats = lambda c: i3d_features(c, model, size=SIZE, batch_size=4)  # noqa: E731
    real = feats(real_clips)
    assert real.shape == (4, 400)
    np.testing.assert_array_equal(real, feats(real_clips))  # deterministic
    rng = np.random.default_rng(0)
    noisy = {s: feats(np.clip(real_clips + rng.normal(0, s, real_clips.shape), 0, 255).astype(np.uint8))
             for s in (8, 24, 64)}
    blurred = {k: feats(np.stack([[cv2.GaussianBlur(f, (0, 0), k) for f in c] for c in real_clips])) for k in (1.0, 3.0)}
    self_fvd = frechet_distance(real, real)
    noise_fvd = [frechet_distance(noisy[s], real) for s in (8, 24, 64)]
    blur_fvd = [frechet_distance(blurred[k], real) for k in (1.0, 3.0)]
    with capsys.disabled():
        print(f"\nFVD, RANDOM I3D weights (NOT real figures), 4 clips at {SIZE} px: self {self_fvd:.2e}, "
              f"noise 8/24/64 {[round(v, 2) for v in noise_fvd]}, blur 1/3 {[round(v, 2) for v in blur_fvd]}")
    assert abs(self_fvd) < 1e-6 * max(noise_fvd)
    assert 0 < noise_fvd[0] < noise_fvd[1] < noise_fvd[2]
    assert 0 < blur_fvd[0] < blur_fvd[1]
