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
