"""FID / KID through torch-fidelity (``pytest -m gpu`` on a CUDA machine with torchvision and the
torch-fidelity wheel; skipped elsewhere).

The Inception runs at seeded RANDOM weights (He-normal convolutions, written to a file and loaded
through our weights-only path): the values printed are NOT real figures. Checked: a set against
itself gives FID ~0, FID and KID grow with added noise and with blur, and our streaming feature
extraction gives torch-fidelity's own ``calculate_metrics`` result on the same frames.

Frames come from the fixture videos through OpenCV (the GPU image has no PyAV).
"""

from __future__ import annotations

import unittest.mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("torch_fidelity")

import cv2  # noqa: E402
from conftest import VIDEO_DIR  # noqa: E402

from vividhead.evaluation.fid import InceptionFeatures, fid_from_features, kid_from_features  # noqa: E402

NAMES = ("talk_hdtf_aoc_512.mp4", "talk_hdtf_katiehill_512.mp4", "talk_retalking_face2.mp4")
FRAMES = 48


def _frames(name: str, n: int = FRAMES) -> np.ndarray:
    cap = cv2.VideoCapture(str(VIDEO_DIR / name))
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(out)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.concatenate([_frames(n) for n in NAMES])  # uint8 [144, 256, 256, 3]


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's Inception-v3 state dict at seeded random weights, saved as a plain file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with unittest.mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), \
            unittest.mock.patch("torch.load", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_kid_random_weights_self_zero_and_monotone(frames, random_inception, capsys):
    feats = InceptionFeatures(random_inception, "cuda", batch_size=48)
    real = feats(frames)
    assert real.shape == (len(frames), 2048)
    rng = np.random.default_rng(0)
    noisy = {s: feats(np.clip(frames + rng.normal(0, s, frames.shape), 0, 255).astype(np.uint8)) for s in (8, 24, 64)}
    blurred = {k: feats(np.stack([cv2.GaussianBlur(f, (0, 0), k) for f in frames])) for k in (1.0, 3.0)}
    fid_self = fid_from_features(real, real)
    fid_noise = [fid_from_features(noisy[s], real) for s in (8, 24, 64)]
    fid_blur = [fid_from_features(blurred[k], real) for k in (1.0, 3.0)]
    kid_noise = [kid_from_features(noisy[s], real)[0] for s in (8, 24, 64)]
    kid_self = kid_from_features(real, real)[0]
    with capsys.disabled():
        print(f"\nFID/KID, RANDOM Inception weights (NOT real figures), {len(frames)} frames: FID self {fid_self:.2e}, "
              f"noise 8/24/64 {[round(v, 3) for v in fid_noise]}, blur 1/3 {[round(v, 3) for v in fid_blur]}; "
              f"KID self {kid_self:.2e}, noise {[f'{v:.2e}' for v in kid_noise]}")
    assert abs(fid_self) < 1e-4 * fid_noise[-1]
    assert 0 < fid_noise[0] < fid_noise[1] < fid_noise[2]
    assert 0 < fid_blur[0] < fid_blur[1]
    assert kid_noise[0] < kid_noise[1] < kid_noise[2] and abs(kid_self) < 0.1 * kid_noise[-1]


def test_matches_torch_fidelity_calculate_metrics(frames, random_inception):
    import torch_fidelity

    class Frames(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    other = np.clip(frames.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    feats = InceptionFeatures(random_inception, "cuda", batch_size=32)
    ours_fid = fid_from_features(feats(other), feats(frames))
    ours_kid = kid_from_features(feats(other), feats(frames), subset_size=100)[0]
    ref = torch_fidelity.calculate_metrics(
        input1=Frames(other), input2=Frames(frames), fid=True, kid=True, kid_subset_size=100, cuda=True,
        feature_extractor_weights_path=str(random_inception), cache=False, verbose=False, batch_size=32,
        samples_shuffle=False,
    )
    assert ours_fid == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert ours_kid == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-2, abs=1e-6)


def test_weights_file_with_code_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        InceptionFeatures(tmp_path / "evil.pth", "cuda")


def test_drift_fid_per_window(frames, random_inception):
    from vividhead.evaluation.drift import fid_per_window

    feats = InceptionFeatures(random_inception, "cuda", batch_size=48)
    out = fid_per_window(frames[:100], frames[48:], feats, window_s=1.6, min_frames=40)
    assert len(out) == 3 and out[0] > 0 and out[1] > 0 and out[2] is None  # windows of 40, 40, 20 frames
