"""CPU seconds of normalize's FFmpeg command with different FFmpeg builds, on the same kept clips.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights VIVIDHEAD_OFFLINE=1 .venv/bin/python \
        benchmarks/normalize_ffmpeg_builds.py --run OUT_DIR debian=/usr/bin/ffmpeg npm41=/tmp/ffmpeg-4.1 \
        iio702=/tmp/ffmpeg-7.0.2 [--repeats 3] [--parts]

``OUT_DIR`` is a finished run (``benchmarks/curation_throughput.py --keep OUT_DIR``): its kept rows
give the clips (source, start, frames, crop). Each ``NAME=PATH`` is an ``ffmpeg`` binary. The command
is ``benchmarks/curation_levers.py``'s ``normalize_command`` (the stage's defaults, one thread), run
on every kept clip, one clip after the other; the builds alternate within each of ``--repeats`` rounds
(so all see the same machine load) and the smallest round is kept. CPU seconds are user + system of
the FFmpeg children (``RUSAGE_CHILDREN``). ``--parts`` adds the command's parts (``decode``,
``decode_crop_scale``, ``video``; see ``curation_levers.py``).

Prints one JSON object: per build its version line, ``cpu_s`` (``all`` and, with ``--parts``, the
parts), ``rounds_cpu_s``, the output's ``packets`` (the stage's ``count_video_frames``) and
``decoded_frames`` (PyAV decode of the MP4) summed over the clips, ``mp4_bytes``, and whether its
outputs have, clip by clip, the first build's frame counts, decoded pixels and WAV samples.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


from curation_floor import child_cpu_s  # noqa: E402


def decoded(path: Path) -> tuple[int, str]:
    """Frames PyAV decodes from the MP4 and a SHA-256 over their YUV planes."""
    import hashlib

    import av

    digest, n = hashlib.sha256(), 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            digest.update(frame.to_ndarray().tobytes())
            n += 1
    return n, digest.hexdigest()


def run_build(binary: str, rows: list[dict], sizes: dict, part: str, keep: bool) -> tuple[float, list]:
    """CPU seconds of the command on every row with ``binary``; per row (packets, decoded frames, their
    SHA-256, mp4 bytes, the WAV's samples) when ``keep``."""
    import soundfile as sf
    from curation_levers import normalize_command

    from vividhead.curation import media

    media.FFMPEG = binary  # ffmpeg_args compiles the graph with this module global
    cpu, outs = 0.0, []
    for row in rows:
        with media.temp_dir() as tmp:
            args = normalize_command(row, sizes[row["url"]], tmp, part)
            start = child_cpu_s()
            media.run_tool(args, 600)
            cpu += child_cpu_s() - start
            if keep:
                mp4, wav = tmp / "clip.mp4", tmp / "clip.wav"
                outs.append((media.count_video_frames(mp4), *decoded(mp4), mp4.stat().st_size,
                             sf.read(wav, dtype="int16")[0].tobytes()))
    return cpu, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="output folder of a finished run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", action="store_true", help="also the decode, decode_crop_scale and video parts")
    ap.add_argument("builds", nargs="+", help="NAME=PATH of an ffmpeg binary")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from vividhead.curation.media import frame_at
    from vividhead.shard_format import FPS

    builds = dict(b.split("=", 1) for b in args.builds)
    kept = [r for r in pq.read_table(args.run / "manifest.parquet").to_pylist()
            if r["status"] == "kept" and r["crop_box"]]
    sizes = {r["url"]: frame_at(r["url"], r["start_s"], FPS).shape[1::-1] for r in kept}
    report: dict = {"run": str(args.run), "clips": len(kept), "cores": os.cpu_count(),
                    "load_avg_start": [round(x, 2) for x in os.getloadavg()], "builds": {}}
    outs = {}
    for name, binary in builds.items():
        version = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
        _, outs[name] = run_build(binary, kept, sizes, "all", keep=True)  # outputs, and a warm-up
        report["builds"][name] = {
            "binary": binary, "version": version,
            "packets": sum(o[0] for o in outs[name]), "decoded_frames": sum(o[1] for o in outs[name]),
            "mp4_bytes": sum(o[3] for o in outs[name]), "rounds_cpu_s": {}, "cpu_s": {}}
    parts = ("decode", "decode_crop_scale", "video", "all") if args.parts else ("all",)
    for part in parts:
        rounds = {name: [] for name in builds}
        for _ in range(args.repeats):
            for name, binary in builds.items():
                rounds[name].append(round(run_build(binary, kept, sizes, part, keep=False)[0], 3))
        for name in builds:
            report["builds"][name]["rounds_cpu_s"][part] = rounds[name]
            report["builds"][name]["cpu_s"][part] = min(rounds[name])
    first_name, first = next(iter(outs.items()))
    for name, v in outs.items():  # per clip, against the first build
        report["builds"][name][f"same_as_{first_name}"] = {
            "frame_counts": [o[:2] for o in v] == [o[:2] for o in first],
            "decoded_pixels": [o[2] for o in v] == [o[2] for o in first],
            "wav_samples": [o[4] for o in v] == [o[4] for o in first]}
    report["num_frames_wanted"] = sum(r["num_frames"] for r in kept)
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
