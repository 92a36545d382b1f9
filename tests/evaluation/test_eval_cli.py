"""``vividhead eval score / run / drift / split`` end to end on fixture media.

I3D and SyncNet run at seeded RANDOM weights here (``--random-weights``): the reports mark those
figures NOT REAL, and the tests check that they do. Light-ASD runs with the real fixture weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VIDEO_DIR
from typer.testing import CliRunner

from vividhead.cli import build_app

#: Fast settings: FID/KID need torch-fidelity (GPU machines), FVD at 32 px with random I3D weights.
FAST = ["--device", "cpu", "--skip", "fid,kid", "--random-weights", "i3d,syncnet", "--fvd-size", "32"]


def invoke(*args: str):
    return CliRunner().invoke(build_app(), ["eval", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory, clips):
    """real/: two fixture clips (first 40 frames, own audio); generated/: the same with noise added
    to one and the other's frames time-shifted by 3 frames (a lip-sync error)."""
    from vividhead.media import Mp4Writer

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for sub in ("real", "generated"):
        (root / sub).mkdir()
    for name in ("talk_retalking_face2.mp4", "talk_hdtf_aoc_512.mp4"):
        v = clips[name]
        frames, audio = v.frames[:40], v.audio[: 40 * 640]
        h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        if "face2" in name:
            gen = np.clip(frames.astype(np.int16) + rng.normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
        else:
            gen = np.concatenate([frames[:3], frames[:-3]])
        for sub, data in (("real", frames), ("generated", gen)):
            wr = Mp4Writer(str(root / sub / name), 25, w, h, audio=audio)
            wr.write(np.ascontiguousarray(data[:, :h, :w]))
            wr.close()
    return root


def test_score_writes_the_report(pair_dirs, tmp_path):
    out = tmp_path / "report"
    r = invoke("score", str(pair_dirs / "generated"), str(pair_dirs / "real"), "--out", str(out), *FAST,
               "--no-score-real")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    m = rep["metrics"]
    assert m["num_videos"] == 2 and m["fvd_clips_generated"] == 4 and m["fvd"] > 0
    assert rep["random_weights"] == {"fid": False, "kid": False, "fvd": True, "sync": True, "asd": False}
    assert rep["weights"]["lightasd_ava"]["sha256"] == "d44bc3ea7baa8e0946fa3921311714a630ed8b90a1928fab0dbe30d918909317"
    assert rep["weights"]["i3d_rgb_imagenet"]["random_weights"] is True
    assert rep["protocol"]["fvd"]["clip_len"] == 16 and "NOT the 224 px protocol" in rep["protocol"]["fvd"]["input"]
    assert {r["name"] for r in rep["per_video"]} == {"talk_retalking_face2", "talk_hdtf_aoc_512"}
    for row in rep["per_video"]:
        assert row["frames"] == 40 and row["gen_asd"] is not None and row["gen_sync_c"] is not None
    assert rep["skipped"] == {"fid": "skipped (--skip)", "kid": "skipped (--skip)"}
    md = (out / "report.md").read_text()
    assert "NOT A REAL FIGURE" in md and "| FVD |" in md and "talk_hdtf_aoc_512" in md and "Light-ASD" in md
    assert (out / "plots" / "per_video.png").stat().st_size > 5000


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from vividhead.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_required_missing_weights_stop_at_start_up_naming_the_file(pair_dirs, tmp_path, capsys):
    code, err = _main(["eval", "score", str(pair_dirs / "generated"), str(pair_dirs / "real"), "--out",
                       str(tmp_path / "x"), "--skip", "fid,kid,fvd,asd", "--require", "sync"], capsys)
    assert code == 2
    assert "syncnet_v2.model (syncnet_v2, not found offline" in err and "--weights NAME=PATH" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_required_fid_on_cpu_is_a_one_line_message(pair_dirs, tmp_path, capsys):
    code, err = _main(["eval", "score", str(pair_dirs / "generated"), str(pair_dirs / "real"), "--out",
                       str(tmp_path / "x"), "--skip", "fvd,sync,asd", "--require", "fid,kid"], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "torch-fidelity" in lines[0] and "pip install" in lines[0]
    assert "weights-inception-2015-12-05-6726825d.pth" in lines[0]


def test_cli_module_imports_with_only_typer():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'numpy', 'torch', 'av', 'cv2', 'scipy', 'mediapipe', 'matplotlib',\n"
        "                                  'torch_fidelity', 'torchvision', 'PIL', 'webdataset', 'pyarrow'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import typer\n"
        "from vividhead.evaluation import cli\n"
        "app = typer.Typer(); cli.register(app)\n"
        "print(sorted(c.name for c in cli.eval_app.registered_commands))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['drift', 'rollout', 'run', 'score', 'split']"


def test_drift_command(tmp_path, clips):
    from vividhead.media import Mp4Writer

    v = clips["talk_retalking_face5.mp4"]
    video = tmp_path / "long.mp4"
    wr = Mp4Writer(str(video), 25, v.frames.shape[2] // 2 * 2, v.frames.shape[1] // 2 * 2, audio=v.audio)
    wr.write(np.ascontiguousarray(v.frames[:50, : v.frames.shape[1] // 2 * 2, : v.frames.shape[2] // 2 * 2]))
    wr.close()
    np.save(tmp_path / "norms.npy", np.linspace(1, 2, 50).astype(np.float32))
    r = invoke("drift", str(video), "--reference", str(VIDEO_DIR / "talk_retalking_face5.mp4"), "--out",
               str(tmp_path / "d"), "--window-s", "1", "--skip", "sync", "--latent-norms", str(tmp_path / "norms.npy"))
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert len(rep["rows"]) == 2 and rep["rows"][0]["asd_score"] is not None and rep["rows"][1]["latent_norm"] > 1.5
    assert "lightasd_ava" in rep["weights"] and (tmp_path / "d" / "drift.png").exists()
    assert "| window |" in (tmp_path / "d" / "drift.md").read_text()


@pytest.fixture(scope="module")
def test_shards(tmp_path_factory, clips):
    """A curation-format output (``shards/*.tar`` with ``<key>.mp4/.wav/.json``, ``manifest.parquet``)
    of four 21-frame 256x256 clips from three sources: two clips of talk_retalking_face2, one of
    talk_retalking_face5 and one of talk_hdtf_aoc_512 (their own audio)."""
    import io

    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile

    from vividhead.curation.stages.write import write_tar
    from vividhead.evaluation.frames import to_pcm16
    from vividhead.media import encode_mp4_bytes

    root = tmp_path_factory.mktemp("shards") / "out"
    (root / "shards").mkdir(parents=True)
    samples, rows = [], []
    for name, start, idx in (("talk_retalking_face2.mp4", 0, 0), ("talk_retalking_face2.mp4", 21, 1),
                             ("talk_retalking_face5.mp4", 0, 0), ("talk_hdtf_aoc_512.mp4", 0, 0)):
        v, source = clips[name], Path(name).stem
        key = f"{source}-{idx:04d}"
        frames = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in v.frames[start : start + 21]])
        wav = io.BytesIO()
        soundfile.write(wav, to_pcm16(v.audio[640 * start : 640 * (start + 21)]), 16000, subtype="PCM_16", format="WAV")
        meta = {"key": key, "clip_id": key, "source_id": source, "num_frames": 21, "fps": 25, "sample_rate": 16000}
        samples.append((key, {"mp4": encode_mp4_bytes(frames, 25), "wav": wav.getvalue(), "json": json.dumps(meta).encode()}))
        rows.append({"key": key, "status": "kept", "source_id": source, "shard": len(samples[:-1]) // 2})
    write_tar(str(root / "shards" / "00000.tar"), samples[:2])
    write_tar(str(root / "shards" / "00001.tar"), samples[2:])
    pq.write_table(pa.Table.from_pylist(rows), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A ``vividhead train export`` folder of the tiny Pro variant at seeded random weights."""
    from tiny_models import TINY_PRO, tiny_models

    from vividhead.training.trainers.export import write_export
    from vividhead.training.trainers.models import FrozenEncoders

    m = tiny_models(TINY_PRO)
    out = tmp_path_factory.mktemp("export") / "tiny"
    return write_export(out, m.transformer.state_dict(), m.variant, FrozenEncoders(vae=m.vae, audio=m.audio_encoder),
                        weights="raw", step=0, source="random weights (test)")


def test_split_command(test_shards, tmp_path):
    r = invoke("split", str(test_shards / "manifest.parquet"), "--num-clips", "2", "--out", str(tmp_path / "s.json"))
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert len(s["test_keys"]) == 2 and len(s["test_groups"]) == 2 and s["num_groups_total"] == 3
    held_out = set(s["test_groups"])
    assert set(s["train_exclude_keys"]) == {k for k in ("talk_retalking_face2-0000", "talk_retalking_face2-0001",
                                                        "talk_retalking_face5-0000", "talk_hdtf_aoc_512-0000")
                                            if k.rsplit("-", 1)[0] in held_out}


def test_run_generates_and_scores_the_split(test_shards, tiny_export, tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "--checkpoint", str(tiny_export), "--shards", str(test_shards), "--out", str(out),
               "--num-clips", "2", "--dtype", "fp32", *FAST, "--skip", "fid,kid,sync")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics"]["num_videos"] == 2 and rep["split"]["num_clips"] == 2
    assert rep["generation"]["variant"] == "tiny-pro" and rep["generation"]["reference_frame"] == 0
    split = json.loads((out / "split.json").read_text())
    assert [r["name"] for r in rep["per_video"]] == split["test_keys"]
    for row in rep["per_video"]:
        assert row["generated_frames"] == row["real_frames"] == 21 and row["generated_size"] == "32x32"
        # random tiny model: its 32x32 output stays close to the reference frame; scored, or the
        # missing face track recorded
        assert row["gen_asd"] is not None or row["gen_error"] == "no_face_track"
        assert row["real_asd"] is not None  # the ground truth is scored for reference
        assert (out / "generated" / f"{row['name']}.mp4").stat().st_size > 0
    assert "fvd" in rep["metrics"] and rep["random_weights"]["fvd"] is True

    # The written MP4s score against the shards directly (REAL given as shards, paired by key).
    r = invoke("score", str(out / "generated"), str(test_shards), "--out", str(tmp_path / "rescore"), *FAST,
               "--skip", "fid,kid,sync,asd")
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "rescore" / "report.json").read_text())
    assert sorted(v["name"] for v in again["per_video"]) == sorted(split["test_keys"])
    assert len(again["unpaired"]["real"]) == 2 and again["metrics"]["fvd_clips_real"] == 2
