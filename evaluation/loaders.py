"""Weights of the evaluation models, through the registry (:mod:`vividhead.weights`), with
the provenance the report records (registry name, file, SHA-256, real or seeded random weights).

Every load is ``torch.load(..., weights_only=True)`` into our own module definitions (or
torch-fidelity's Inception, see :mod:`vividhead.evaluation.fid`): no pickled code runs.
Random weights exist only so tests and cost benchmarks can run the real architectures; figures
computed with them are marked ``random_weights: true`` in ``report.json`` and "NOT A REAL FIGURE" in
``report.md``.

Registry names:

* ``lightasd_talkset`` / ``lightasd_ava`` -- Light-ASD (real weights in ``../shared/fixtures/weights``);
* ``syncnet_v2`` -- SyncNet for Sync-C / Sync-D (not downloadable here: a user fetches it);
* ``i3d_rgb_imagenet`` -- I3D for FVD (a user fetches it);
* ``inception_fid`` -- torch-fidelity's Inception-v3 for FID / KID (a user fetches it);
* ``face_mediapipe_detector`` -- the face track of Sync-C/D and Light-ASD (in the fixtures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from vividhead import weights as registry

#: Light-ASD checkpoint the evaluation uses: the TalkSet fine-tuning (in-the-wild talking clips).
ASD_WEIGHTS = "lightasd_talkset"


@dataclass(frozen=True)
class WeightRecord:
    """Where a model's weights came from.

    Attributes:
        name: registry name.
        path: local file, or None for random weights.
        sha256: hex SHA-256 of ``path`` (computed at load time), or None.
        random_weights: seeded random weights (figures are not real).
        seed: the seed of random weights.
    """

    name: str
    path: Optional[str]
    sha256: Optional[str]
    random_weights: bool = False
    seed: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)


class MissingEvalWeights(RuntimeError):
    """A metric's weights are not available: the message names the file, where to put it and the
    flag that skips the metric."""


def resolve(name: str, explicit: Optional[str] = None, skip_flag: str = "") -> WeightRecord:
    """Resolve a registry entry to a local file and hash it.

    Args:
        name: registry name.
        explicit: a path that overrides the lookup.
        skip_flag: the CLI flag that skips the metric, named in the error.

    Raises:
        MissingEvalWeights: not found locally and not downloadable (offline or failed).
    """
    try:
        path = registry.resolve(name, explicit)
    except registry.WeightsNotFound as exc:
        hint = f" (or pass {skip_flag})" if skip_flag else ""
        raise MissingEvalWeights(f"{exc}{hint}") from None
    return WeightRecord(name, str(path), registry.sha256_of(path))


def load_asd(explicit: Optional[str] = None, device: str = "cpu", name: str = ASD_WEIGHTS):
    """Light-ASD with real weights.

    Returns:
        (:class:`vividhead.curation.models.lightasd.LightASD` in eval mode, :class:`WeightRecord`).

    Raises:
        MissingEvalWeights: checkpoint not found.
    """
    from vividhead.curation.models.lightasd import load_lightasd

    rec = resolve(name, explicit, "--skip asd")
    return load_lightasd(rec.path, device), rec


def load_syncnet(explicit: Optional[str] = None, device: str = "cpu", random_seed: Optional[int] = None):
    """SyncNet (``syncnet_v2.model``), or seeded random weights when ``random_seed`` is set.

    Returns:
        (:class:`vividhead.curation.models.syncnet.SyncNet` in eval mode, :class:`WeightRecord`).

    Raises:
        MissingEvalWeights: ``syncnet_v2.model`` not found (real weights asked).
    """
    import torch

    from vividhead.curation.models.syncnet import SyncNet
    from vividhead.curation.models.syncnet import load_syncnet as _load

    if random_seed is not None:
        torch.manual_seed(random_seed)
        return SyncNet().to(device).eval(), WeightRecord("syncnet_v2", None, None, True, random_seed)
    rec = resolve("syncnet_v2", explicit, "--skip sync")
    return _load(rec.path, device), rec


def load_i3d(explicit: Optional[str] = None, device: str = "cpu", random_seed: Optional[int] = None):
    """I3D for FVD (``rgb_imagenet.pt``), or seeded random weights when ``random_seed`` is set.

    Returns:
        (:class:`vividhead.evaluation.i3d.InceptionI3d` in eval mode, :class:`WeightRecord`).

    Raises:
        MissingEvalWeights: ``rgb_imagenet.pt`` not found (real weights asked).
    """
    from vividhead.evaluation.i3d import load_i3d as _load
    from vividhead.evaluation.i3d import random_i3d

    if random_seed is not None:
        return random_i3d(random_seed, device), WeightRecord("i3d_rgb_imagenet", None, None, True, random_seed)
    rec = resolve("i3d_rgb_imagenet", explicit, "--skip fvd")
    return _load(rec.path, device), rec


def inception_weights(explicit: Optional[str] = None) -> WeightRecord:
    """The torch-fidelity Inception file (handed to torch-fidelity by path, so nothing downloads
    behind the registry's back).

    Raises:
        MissingEvalWeights: ``weights-inception-2015-12-05-6726825d.pth`` not found.
    """
    return resolve("inception_fid", explicit, "--skip fid,kid")


def face_detector(explicit: Optional[str] = None, min_confidence: float = 0.5):
    """The MediaPipe face detector of the face tracks.

    Returns:
        (:class:`vividhead.models.face_detector.FaceDetector`, :class:`WeightRecord`); close the
        detector when done.

    Raises:
        MissingEvalWeights: the detector model is not found.
    """
    from vividhead.models.face_detector import WEIGHTS_NAME, FaceDetector

    rec = resolve(WEIGHTS_NAME, explicit, "--skip sync,asd")
    return FaceDetector(Path(rec.path), min_confidence), rec
