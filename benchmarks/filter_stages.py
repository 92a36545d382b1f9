"""Per-clip cost of the lip-sync and speech filter stages, next to the FFmpeg decode of the same clip.

Builds one pipeline clip (the first ``--seconds`` of ``--video`` at 25 fps, cropped 512x512 around
the face by the ``normalize`` and ``face`` stages, 16 kHz mono PCM16 audio), then times
``process(row)`` of ``speech``, ``syncnet`` and ``asd`` and the decode of the clip's video to RGB
frames with FFmpeg's decoder (PyAV, as the stages decode). Prints milliseconds per second of video
(median of ``--repeats`` runs after one warm-up).

SyncNet runs with seeded random weights unless ``--syncnet-weights`` is given: its cost does not
depend on the weight values, and its scores are not printed.

    .venv/bin/python benchmarks/filter_stages.py \
        --video ../shared/fixtures/media/video/talk_hdtf_aoc_512.mp4 --seconds 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vividhead.curation.media import ffprobe, iter_frames
from vividhead.curation.models.syncnet import SyncNet
from vividhead.curation.records import new_row
from vividhead.curation.stages.asd import ASDConfig, ASDStage
from vividhead.curation.stages.face import FaceConfig, FaceStage
from vividhead.curation.stages.normalize import NormalizeConfig, normalize_clip
from vividhead.curation.stages.speech import SpeechConfig, SpeechStage
from vividhead.curation.stages.syncnet import SyncNetConfig, SyncNetStage

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


def build_clip(video: Path, seconds: float, weights_dir: Path) -> dict:
    """A kept clip row as the ``face`` stage hands it on."""
    duration = float(ffprobe(video)["format"]["duration"])
    frames = int(min(duration - 0.1, seconds) * 25)
    clip = normalize_clip(video, 0.0, frames, NormalizeConfig())
    row = new_row(input_id=video.name, source_id=video.name, video_bytes=clip.video, audio_bytes=clip.audio, num_frames=frames)
    face = FaceStage(FaceConfig(weights_path=str(weights_dir / "face_mediapipe_detector.tflite")))
    face.setup()
    return face.process(row)[0]


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, after one warm-up run."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=FIXTURES / "media" / "video" / "talk_hdtf_aoc_512.mp4")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--gpu", action="store_true", help="give the model stages a GPU (num_gpus=1)")
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("VIVIDHEAD_WEIGHTS_DIR", FIXTURES / "weights")))
    parser.add_argument("--syncnet-weights", type=Path, default=None, help="syncnet_v2.model (default: random weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpus = 1.0 if args.gpu else 0.0
    detector = str(args.weights_dir / "face_mediapipe_detector.tflite")

    row = build_clip(args.video, args.seconds, args.weights_dir)
    seconds = row["num_frames"] / 25.0
    with tempfile.TemporaryDirectory() as tmp:
        syncnet_weights = args.syncnet_weights
        if syncnet_weights is None:
            torch.manual_seed(0)
            syncnet_weights = Path(tmp) / "syncnet_random.model"
            torch.save(SyncNet().state_dict(), syncnet_weights)
        stages = {
            "speech": SpeechStage(SpeechConfig(num_gpus=gpus, min_speech_share=None)),
            "syncnet": SyncNetStage(SyncNetConfig(num_gpus=gpus, weights_path=str(syncnet_weights), detector_weights_path=detector,
                                                  min_lse_c=None, max_abs_av_offset_frames=None)),
            "asd": ASDStage(ASDConfig(num_gpus=gpus, weights_path=str(args.weights_dir / "asd_lightasd_pretrain_AVA.model"),
                                      detector_weights_path=detector, min_asd_score=None)),
        }
        results = {"ffmpeg decode (512x512 H.264 -> RGB)": timed(lambda: sum(1 for _ in iter_frames(row["video_bytes"])), args.repeats)}
        for name, stage in stages.items():
            stage.setup()
            results[name] = timed(lambda s=stage: s.process(dict(row)), args.repeats)
    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {args.threads} torch threads"
    print(f"clip: {args.video.name}, {row['num_frames']} frames ({seconds:g} s), 512x512; {device}; median of {args.repeats}")
    print("| step | ms per clip | ms per second of video | x decode |")
    print("|---|---|---|---|")
    decode = next(iter(results.values()))
    for name, sec in results.items():
        print(f"| {name} | {sec * 1000:.0f} | {sec * 1000 / seconds:.0f} | {sec / decode:.1f} |")


if __name__ == "__main__":
    main()
