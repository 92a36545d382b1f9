"""FID and KID on video frames with torch-fidelity's Inception-v3 (imported lazily, GPU machines).

Protocol: frames are sampled per video (every ``every``-th frame of the 25 fps video, all frames by
default; :func:`vividhead.evaluation.frames.fid_frame_indices`), pooled over the set, and
fed as uint8 RGB to torch-fidelity's ``FeatureExtractorInceptionV3`` (``inception-v3-compat``: the
TF-compatible bilinear resize to 299 x 299 and the 2015-12-05 TensorFlow weights), 2048-d pool
features. FID is torch-fidelity's ``fid_statistics_to_metric`` on the two sets' mean and covariance;
KID is its ``kid_features_to_metric`` (polynomial kernel of degree 3, gamma 1/2048, coef0 1, 100
subsets of ``min(1000, n_generated, n_real)`` features, seed 2020: torch-fidelity's defaults).

torch-fidelity imports torchvision at import time, and there is no working CPU torchvision for the
CPU torch pinned in this project (``../shared/ENVIRONMENT.md``), so everything here imports it inside
functions and :func:`require_torch_fidelity` turns its absence into a one-line message.

Weights: torch-fidelity gets the Inception file by path (registry ``inception_fid``), so it never
downloads behind the registry's back; the state dict is loaded with ``weights_only=True`` (no
pickled code runs) whatever the installed torch's default is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: Feature layer of FID and KID (torch-fidelity's default).
FEATURE_LAYER = "2048"
#: torch-fidelity's KID defaults, stated in the report.
KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0, KID_SEED = 100, 1000, 3, 1, 2020


class EvalDependencyError(RuntimeError):
    """An optional dependency of a metric is missing; the message says what to install."""


def require_torch_fidelity():
    """Import torch-fidelity or raise a one-line :class:`EvalDependencyError`.

    Returns:
        the ``torch_fidelity`` module.
    """
    try:
        import torch_fidelity
    except Exception as exc:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise EvalDependencyError(
            "FID/KID need torch-fidelity and a torchvision that matches your torch: "
            "pip install 'vividhead[eval]' on a machine with such a torchvision (e.g. a CUDA one), "
            f"or skip them with --skip fid,kid ({reason})"
        ) from None
    return torch_fidelity


@contextlib.contextmanager
def _weights_only_load():
    """Make ``torch.load`` refuse pickled code while torch-fidelity loads its state dict.

    torch-fidelity 0.4.0 calls ``torch.load(path, weights_only=False)`` explicitly, so the flag is
    forced here whatever the caller passes (a ``functools.partial`` default would be overridden:
    on the H200 run of 2026-11-30 a pickled payload ran that way).
    """
    import torch

    original = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = original


class InceptionFeatures:
    """torch-fidelity's Inception-v3 feature extractor on a device.

    Args:
        weights_path: the ``weights-inception-2015-12-05-6726825d.pth`` file.
        device: ``cuda`` / ``cpu``.
        batch_size: frames per forward pass.

    Raises:
        EvalDependencyError: torch-fidelity cannot be imported.
        pickle.UnpicklingError: the weights file holds more than tensors.
    """

    def __init__(self, weights_path: str | Path, device: str = "cuda", batch_size: int = 64) -> None:
        require_torch_fidelity()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        with _weights_only_load():
            net = FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                              feature_extractor_weights_path=str(weights_path))
        self.net = net.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        """Features of frames.

        Args:
            frames: uint8 [N, H, W, 3] RGB (or an iterable of [H, W, 3] / [n, H, W, 3] arrays).

        Returns:
            float64 [N, 2048].
        """
        import torch

        out = []

        def run(batch: list[np.ndarray]) -> None:
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(self.device)
            with torch.no_grad():
                out.append(self.net(x)[0].double().cpu().numpy())

        batch: list[np.ndarray] = []
        for item in ([frames] if isinstance(frames, np.ndarray) else frames):
            for f in (item if item.ndim == 4 else item[None]):
                batch.append(np.ascontiguousarray(f, dtype=np.uint8))
                if len(batch) == self.batch_size:
                    run(batch)
                    batch = []
        if batch:
            run(batch)
        return np.concatenate(out) if out else np.zeros((0, 2048))


def fid_from_features(gen: np.ndarray, real: np.ndarray) -> float:
    """torch-fidelity's FID of two feature sets (float [N, D] each, N >= 2)."""
    import torch

    require_torch_fidelity()
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    s1 = fid_features_to_statistics(torch.from_numpy(np.asarray(gen, np.float64)))
    s2 = fid_features_to_statistics(torch.from_numpy(np.asarray(real, np.float64)))
    return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])


def kid_from_features(gen: np.ndarray, real: np.ndarray, subset_size: int = KID_SUBSET_SIZE,
                      subsets: int = KID_SUBSETS, seed: int = KID_SEED) -> tuple[float, float, int]:
    """torch-fidelity's KID (mean, std over subsets, subset size used) of two feature sets; the
    subset size is capped at the smaller set."""
    import torch

    require_torch_fidelity()
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = int(min(subset_size, len(gen), len(real)))
    out = kid_features_to_metric(
        torch.from_numpy(np.asarray(gen, np.float64)), torch.from_numpy(np.asarray(real, np.float64)),
        kid_subsets=subsets, kid_subset_size=size, kid_degree=KID_DEGREE, kid_gamma=None,
        kid_coef0=KID_COEF0, rng_seed=seed, verbose=False,
    )
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"]), size
