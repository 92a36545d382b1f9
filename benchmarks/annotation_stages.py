"""CPU cost of the occlusion and annotation stages, in milliseconds per second of video.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/annotation_stages.py \
        [--clip ../shared/fixtures/media/video/talk_hdtf_katiehill_512.mp4] [--repeats 3] [--threads 2]

The clip is normalised like the pipeline does (512x512 H.264 at 25 fps, 16 kHz mono WAV), then each
stage's ``process`` runs ``--repeats`` times on it after ``setup`` (model loading is not timed);
the medians of wall time and of process CPU time (all threads; less sensitive to other jobs
on a shared machine) are reported. Weights:

* face_mask: the real MediaPipe FaceLandmarker bundle from the fixtures.
* occlusion: the real YOLOX-nano from the fixtures; the DWPose weights are not available, so the
  pose model is a stand-in ONNX with DWPose's signature whose cost is *not* DWPose's: the figure is
  "detector + rtmlib pre/post-processing + stand-in" and says so.
* audio_features / attributes: the real *architectures* (wav2vec2-base; Whisper small; ViT-base
  image classifiers) with random weights, built from their configs. Weight values do not change the
  amount of compute, so the timings hold for the pretrained checkpoints; the outputs are meaningless.

Prints one JSON line per stage and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def normalised_clip(path: Path):
    """(video bytes, audio bytes, num_frames) of the whole clip, as the normalize stage makes them."""
    from vividhead.curation.media import count_video_frames
    from vividhead.curation.stages.normalize import NormalizeConfig, normalize_clip

    n = count_video_frames(path)
    clip = normalize_clip(path, 0.0, n, NormalizeConfig())
    return clip.video, clip.audio, clip.num_frames


def standin_pose_onnx(path: Path) -> str:
    """A small ONNX with DWPose's I/O (input [1,3,384,288]; simcc_x [1,133,576], simcc_y [1,133,768])."""
    import torch

    class Standin(torch.nn.Module):
        """conv -> pool -> two linear SimCC heads."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 16, stride=16)
            self.pool = torch.nn.AdaptiveAvgPool2d((4, 2))
            self.x = torch.nn.Linear(16, 133 * 576)
            self.y = torch.nn.Linear(16, 133 * 768)

        def forward(self, img):
            f = self.pool(torch.relu(self.conv(img))).flatten(1)
            return self.x(f).view(-1, 133, 576), self.y(f).view(-1, 133, 768)

    torch.onnx.export(Standin().eval(), torch.zeros(1, 3, 384, 288), str(path), input_names=["input"],
                      output_names=["simcc_x", "simcc_y"], dynamo=False)
    return str(path)


def build_models(tmp: Path) -> dict[str, str]:
    """Random-weight folders with the real architectures (see the module docstring)."""
    import torch
    from transformers import (
        GenerationConfig,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
        Wav2Vec2Config,
        Wav2Vec2Model,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    out = {}
    out["wav2vec2"] = str(tmp / "wav2vec2-base")
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(out["wav2vec2"])  # the defaults are wav2vec2-base
    out["whisper"] = str(tmp / "whisper-small")
    WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=768, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
        decoder_start_token_id=50258)).save_pretrained(out["whisper"])
    GenerationConfig(decoder_start_token_id=50258, lang_to_id={f"<|l{i}|>": 50259 + i for i in range(99)}).save_pretrained(out["whisper"])
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out["whisper"])
    for name, labels in (("gender", ["female", "male"]), ("age", [str(i) for i in range(9)])):
        out[name] = str(tmp / f"vit-{name}")
        ViTForImageClassification(ViTConfig(num_labels=len(labels), id2label=dict(enumerate(labels)))).save_pretrained(out[name])
        ViTImageProcessor().save_pretrained(out[name])
    return out


def time_stage(stage, row: dict, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and process CPU seconds (all threads) of ``stage.process`` on copies of ``row``."""
    from vividhead.errors import MediaError

    stage.setup()
    walls, cpus = [], []
    for _ in range(repeats):
        r = dict(row)
        start, cpu0 = time.perf_counter(), time.process_time()
        try:
            stage.process(r)
        except MediaError:  # a rejection (e.g. the stand-in pose model's random keypoints) costs the same
            pass
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu0)
    return walls, cpus


def main() -> None:
    """Run the benchmark and print JSON lines and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=REPO.parent / "shared/fixtures/media/video/talk_hdtf_katiehill_512.mp4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--only", nargs="*", help="stage names to run (default: all)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from vividhead.curation.records import new_row
    from vividhead.curation.stages.attributes import AttributesConfig, AttributesStage
    from vividhead.curation.stages.audio_features import AudioFeaturesConfig, AudioFeaturesStage
    from vividhead.curation.stages.face_mask import FaceMaskConfig, FaceMaskStage
    from vividhead.curation.stages.occlusion import OcclusionConfig, OcclusionStage

    video, audio, frames = normalised_clip(args.clip)
    seconds = frames / 25.0
    row = new_row(video_bytes=video, audio_bytes=audio, num_frames=frames)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_models(tmp)
        stages = {
            "occlusion (YOLOX-nano real + stand-in pose, 2 fps)": OcclusionStage(OcclusionConfig(pose_weights_path=standin_pose_onnx(tmp / "pose.onnx"))),
            "face_mask (FaceLandmarker real, every frame)": FaceMaskStage(FaceMaskConfig()),
            "audio_features (wav2vec2-base arch.)": AudioFeaturesStage(AudioFeaturesConfig(weights_path=models["wav2vec2"])),
            "attributes: language (Whisper small arch., 8 s)": AttributesStage(AttributesConfig(language_weights_path=models["whisper"], gender=False, age=False)),
            "attributes: gender + age (2x ViT-base arch., 3 frames)": AttributesStage(AttributesConfig(language=False, gender_weights_path=models["gender"], age_weights_path=models["age"])),
        }
        results = []
        for label, stage in stages.items():
            if args.only and stage.name not in args.only:
                continue
            walls, cpus = time_stage(stage, row, args.repeats)
            med, cpu = statistics.median(walls), statistics.median(cpus)
            res = {"stage": label, "clip_s": seconds, "median_s": round(med, 3), "ms_per_video_s": round(1000 * med / seconds, 1),
                   "cpu_ms_per_video_s": round(1000 * cpu / seconds, 1), "runs_s": [round(t, 3) for t in walls]}
            results.append(res)
            print(json.dumps(res), flush=True)
    print("\n| stage | wall ms per s of video | CPU ms per s of video |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['stage']} | {r['ms_per_video_s']:.0f} | {r['cpu_ms_per_video_s']:.0f} |")


if __name__ == "__main__":
    main()
