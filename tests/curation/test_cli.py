from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "curation", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=120)


def test_bad_config_is_one_line_naming_the_key(tmp_path, video_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("face:\n  min_face_pixels: 3\n")
    proc = _run([str(video_dir / "talk_retalking_face2.mp4"), "--output", str(tmp_path / "o"), "--config", str(cfg)])
    assert proc.returncode == 2
    assert "face.min_face_pixels: unknown key" in proc.stderr
    assert not (tmp_path / "o" / "shards").exists()


def test_missing_weights_offline_fail_at_startup(tmp_path, video_dir):
    proc = _run([str(video_dir / "talk_retalking_face2.mp4"), "--output", str(tmp_path / "o")],
                VIVIDHEAD_WEIGHTS_DIR=str(tmp_path / "none"), VIVIDHEAD_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 2
    assert ".tflite" in proc.stderr or ".model" in proc.stderr or "not found" in proc.stderr


def test_vividhead_help_lists_curate():
    proc = subprocess.run([sys.executable, "-c", "from vividhead.cli import main; main()", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "curate" in proc.stdout


def test_a_gpu_stage_without_cuda_fails_at_startup_in_one_line(tmp_path, video_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("transition:\n  num_gpus: 1\n")
    proc = _run([str(video_dir / "talk_retalking_face2.mp4"), "--output", str(tmp_path / "o"), "--config", str(cfg)],
                CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "transition.num_gpus: 1 GPU requested but this node has 0 CUDA GPUs" in errors[0]
    assert not (tmp_path / "o" / "shards").exists()


def test_summary_table_shows_disabled_stages_as_off():
    from rich.console import Console

    from vividhead.curation.cli import summary_table

    stats = {"inputs": 1, "skipped_inputs": 0, "clips_kept": 1, "hours_kept": 0.001, "shards": [0], "wall_s": 1.0,
             "stages": {"probe": {"enabled": True, "in": 1, "out": 1, "dropped": {}, "seconds": 0.1},
                        "occlusion": {"enabled": False}}}
    console = Console(width=120, record=True)
    console.print(summary_table(stats))
    lines = console.export_text().splitlines()
    occlusion = next(line for line in lines if "occlusion" in line)
    assert [cell.strip() for cell in occlusion.strip("│ ").split("│")] == ["occlusion", "off", "off", "-", "-"]
