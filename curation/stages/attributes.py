"""attributes: spoken language and the speaker's apparent gender, age band and ethnicity (annotation).

* Language: Whisper language identification through transformers. The encoder reads the first
  ``language_max_s`` seconds (at most Whisper's 30 s window); one decoder step from
  ``<|startoftranscript|>`` gives the logits of the language tokens (``generation_config.lang_to_id``),
  and the most likely one is the language (ISO 639-1 code, e.g. ``en``), as Whisper's own
  ``detect_language`` does.
* Gender / age band / ethnicity: transformers image classifiers (ViT fine-tuned on FairFace by
  default) on the face of ``face_frames`` frames spread over the clip; the face is found with the
  MediaPipe face detector and cropped with 25 % margin (the whole frame when no face is found);
  class probabilities are averaged over the frames. Labels are normalised to lower snake case
  (``male``, ``20-29``, ``70+``, ``east_asian``).

Each annotator can be switched off. The stage never rejects: an annotation that fails for a clip
stays null and ``annotation_errors[<annotator>]`` holds the reason. These labels are *apparent*
attributes predicted by models with known biases; they describe the data set, never a person.

Sources: Radford et al., "Robust Speech Recognition via Large-Scale Weak Supervision" (Whisper,
2022); Kärkkäinen and Joo, "FairFace" (WACV 2021); Dosovitskiy et al., ViT (ICLR 2021).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from vividhead import weights
from vividhead.config import bounded
from vividhead.curation.audio_io import read_pcm16
from vividhead.curation.media import iter_frames
from vividhead.curation.records import Row, note_annotation_error
from vividhead.curation.stage import Stage, StageConfig, check
from vividhead.errors import MediaError
from vividhead.models.face_detector import WEIGHTS_NAME as FACE_WEIGHTS
from vividhead.models.face_detector import FaceDetector


@dataclass(frozen=True)
class AttributesConfig(StageConfig):
    """Spoken language and apparent gender / age band / ethnicity (annotation, never rejects).

    Each annotator has a switch, a registry name and an optional explicit local folder (the
    transformers ``save_pretrained`` layout). ``ethnicity`` has no registry default: no public
    FairFace race classifier could be verified here, so it needs ``ethnicity_weights_path``.

    Attributes:
        language: Whisper language identification on the first ``language_max_s`` seconds.
        gender / age / ethnicity: image classifiers on the face crop of ``face_frames`` frames
            spread over the clip (probabilities averaged).
    """

    memory_gib: float = 3.0  # Whisper and the FairFace classifiers

    language: bool = True
    language_weights: str = "whisper_small"
    language_weights_path: Optional[str] = None
    language_max_s: float = bounded(30.0, "in (0, 30] (Whisper's window)")
    gender: bool = True
    gender_weights: str = "face_gender_fairface_vit"
    gender_weights_path: Optional[str] = None
    age: bool = True
    age_weights: str = "face_age_fairface_vit"
    age_weights_path: Optional[str] = None
    ethnicity: bool = False
    ethnicity_weights_path: Optional[str] = None
    face_frames: int = bounded(3, ">= 1")

    def validate(self, section: str) -> None:
        check(not self.ethnicity or bool(self.ethnicity_weights_path), f"{section}.ethnicity_weights_path",
               "required when ethnicity is enabled (no registry default)")


SAMPLE_RATE = 16000


def normalise_label(label: str) -> str:
    """``"East Asian"`` -> ``east_asian``, ``"more than 70"`` -> ``70+``, ``"Man"`` -> ``male``."""
    text = label.strip().lower()
    if m := re.fullmatch(r"(?:more than|over|above)\s*(\d+)", text):
        return f"{m.group(1)}+"
    text = {"man": "male", "woman": "female"}.get(text, text)
    return re.sub(r"[^a-z0-9+\-]+", "_", text).strip("_")


class WhisperLanguageId:
    """Whisper spoken-language identification from a local transformers folder.

    Args:
        path: folder with ``config.json``, weights, ``preprocessor_config.json`` and a
            ``generation_config.json`` that has ``lang_to_id`` (all Whisper multilingual checkpoints).
        device: torch device.

    Raises:
        ValueError: the model has no ``lang_to_id`` (an English-only checkpoint).
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

        self.extractor = WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True).eval().to(device)
        gen = GenerationConfig.from_pretrained(str(path), local_files_only=True)
        lang_to_id = getattr(gen, "lang_to_id", None)
        if not lang_to_id:
            raise ValueError(f"{path}: generation_config has no lang_to_id (not a multilingual Whisper)")
        self.codes = [tok.strip("<|>") for tok in lang_to_id]
        self.ids = list(lang_to_id.values())
        self.start_id = gen.decoder_start_token_id
        self.device = device

    def __call__(self, audio: np.ndarray) -> tuple[str, float]:
        """Most likely language of a waveform.

        Args:
            audio: float32 [N] mono at 16 kHz in [-1, 1] (at most 30 s are used).

        Returns:
            (ISO 639-1 code such as ``en``, its probability among the language tokens).
        """
        import torch

        feats = self.extractor(audio[: 30 * SAMPLE_RATE], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            logits = self.model(
                input_features=feats.to(self.device, self.model.dtype),
                decoder_input_ids=torch.tensor([[self.start_id]], device=self.device),
            ).logits[0, -1]
            probs = torch.softmax(logits[self.ids].float(), dim=-1)
        best = int(probs.argmax())
        return self.codes[best], float(probs[best])


class FaceAttributeClassifier:
    """A transformers image classifier (e.g. ViT on FairFace) applied to face crops.

    Args:
        path: local folder with the model and its image processor (``save_pretrained`` layout).
        device: torch device.
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        try:
            self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True, backend="pil")
        except TypeError:  # older transformers without the backend switch
            self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True, use_fast=False)
        self.model = AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True).eval().to(device)
        self.labels = [normalise_label(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        self.device = device

    def __call__(self, faces: list[np.ndarray]) -> tuple[str, float]:
        """Label of a face seen in several frames.

        Args:
            faces: uint8 [h, w, 3] RGB face crops (any size; the processor resizes).

        Returns:
            (normalised label, its mean probability over the crops).
        """
        import torch

        inputs = self.processor(images=list(faces), return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype)).logits
        probs = torch.softmax(logits.float(), dim=-1).mean(0)
        best = int(probs.argmax())
        return self.labels[best], float(probs[best])


def face_crops(
    video: bytes | str,
    detector: Optional[FaceDetector],
    count: int,
    num_frames: Optional[int] = None,
    margin: float = 0.25,
) -> list[np.ndarray]:
    """Face crops of ``count`` frames spread evenly over the clip.

    Args:
        video: encoded clip.
        detector: face detector; None or no face found -> the whole frame.
        num_frames: frames in the clip when known (otherwise counted with a first decoding pass).
        margin: the face box is grown by this share of its side on each side (FairFace's 0.25).

    Returns:
        uint8 [h, w, 3] RGB crops (fewer than ``count`` for very short clips).

    Raises:
        MediaError: ``decode_failed`` (also when no frame decodes).
    """
    if not num_frames:
        num_frames = sum(1 for _ in iter_frames(video, size=(16, 16), fmt="gray"))
    picks = set(np.linspace(0, max(num_frames - 1, 0), count).round().astype(int).tolist())
    frames = [f for i, f in iter_frames(video) if i in picks]
    if not frames:
        raise MediaError("decode_failed", "no frame decoded")
    crops = []
    for frame in frames:
        boxes = detector.detect(frame) if detector is not None else []
        if boxes:
            b = boxes[0]
            side = max(b.x1 - b.x0, b.y1 - b.y0) * (1 + 2 * margin)
            cx, cy = b.center
            h, w = frame.shape[:2]
            x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
            frame = frame[y0:y1, x0:x1]
        crops.append(np.ascontiguousarray(frame))
    return crops


class AttributesStage(Stage):
    """Fills ``language``, ``gender``, ``age_band`` and ``ethnicity``; never rejects."""

    name = "attributes"
    config_class = AttributesConfig
    writes_columns = ("language", "gender", "age_band", "ethnicity", "annotation_errors")
    FACE_ATTRIBUTES = (("gender", "gender"), ("age", "age_band"), ("ethnicity", "ethnicity"))

    #: After setup: the WhisperLanguageId, a FaceAttributeClassifier per enabled face attribute,
    #: the FaceDetector those need.
    resources = {"_language": None, "_face": {}, "_detector": None}

    def _face_weights(self, attr: str) -> tuple[Optional[str], Optional[str]]:
        return getattr(self.cfg, f"{attr}_weights", None), getattr(self.cfg, f"{attr}_weights_path")

    def weights(self):
        """Registry entries of the enabled annotators (plus the face detector for the face ones)."""
        out = []
        if self.cfg.language:
            out.append((self.cfg.language_weights, self.cfg.language_weights_path))
        face_on = False
        for attr, _ in self.FACE_ATTRIBUTES:
            if getattr(self.cfg, attr):
                name, path = self._face_weights(attr)
                face_on = True
                if name:  # ethnicity has no registry entry: its explicit folder is checked in setup
                    out.append((name, path))
        if face_on:
            out.append((FACE_WEIGHTS, None))
        return out

    def setup(self) -> None:
        """Load the enabled annotators' models once (CUDA when ``num_gpus > 0``, else CPU)."""
        device = self.device()
        if self.cfg.language:
            self._language = WhisperLanguageId(weights.resolve(self.cfg.language_weights, self.cfg.language_weights_path), device)
        for attr, _ in self.FACE_ATTRIBUTES:
            if getattr(self.cfg, attr):
                name, path = self._face_weights(attr)
                if name:
                    path = weights.resolve(name, path)
                elif not Path(path).is_dir():
                    raise weights.WeightsNotFound(f"attributes.{attr}_weights_path: folder {path} does not exist")
                self._face[attr] = FaceAttributeClassifier(path, device)
        if self._face:
            self._detector = FaceDetector.load(None, 0.5)

    def process(self, row: Row) -> list[Row]:
        """Fill the attribute columns; failures go to ``annotation_errors``."""
        if self._language is not None:
            try:
                pcm, sr = read_pcm16(row["audio_bytes"])
                if sr != SAMPLE_RATE:
                    raise MediaError("bad_sample_rate", f"{sr} Hz")
                if len(pcm) < SAMPLE_RATE // 2:
                    raise MediaError("audio_too_short", f"{len(pcm)} samples")
                audio = pcm[: int(self.cfg.language_max_s * SAMPLE_RATE)].astype(np.float32) / 32768.0
                row["language"], _ = self._language(audio)
            except MediaError as exc:
                note_annotation_error(row, "language", exc.reason)
        if self._face:
            try:
                crops = face_crops(row["video_bytes"], self._detector, self.cfg.face_frames, row.get("num_frames"))
            except MediaError as exc:
                for attr in self._face:
                    note_annotation_error(row, attr, exc.reason)
                return [row]
            for attr, column in self.FACE_ATTRIBUTES:
                if attr in self._face:
                    row[column], _ = self._face[attr](crops)
        return [row]
