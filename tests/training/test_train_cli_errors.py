"""``vividhead train ...`` through the real CLI: expected failures are one line ``error: ...`` with
exit code 2 and write nothing; a run folder is never clobbered; data as documented (no manifest:
every sample with one warning; a truncated shard: skipped and counted in ``data/skipped_samples``).

The shards are written here (tiny synthetic clips, no curation run), so each case takes seconds.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import vividhead.cli as cli
from vividhead.media import Mp4Writer
from vividhead.shard_format import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

REPO = Path(__file__).resolve().parents[2]
NUM_FRAMES = 41  # > the 33-frame window


def _clip(key: str, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), NUM_FRAMES, axis=0)
    frames = (frames.astype(np.int16) + np.arange(NUM_FRAMES)[:, None, None, None]).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    writer = Mp4Writer(buf, FPS, 64, 64)
    writer.write(frames)
    writer.close()
    wav = io.BytesIO()
    sf.write(wav, (0.1 * rng.standard_normal(NUM_FRAMES * SAMPLES_PER_FRAME)).astype(np.float32), SAMPLE_RATE_HZ,
             format="WAV", subtype="PCM_16")
    meta = {"key": key, "num_frames": NUM_FRAMES, "fps": float(FPS), "sample_rate": SAMPLE_RATE_HZ}
    return {"mp4": buf.getvalue(), "wav": wav.getvalue(), "json": json.dumps(meta).encode()}


def write_shards(out: Path, shards: int = 2, clips_per_shard: int = 2) -> Path:
    """``out/shards/0000N.tar`` of tiny clips, no manifest."""
    (out / "shards").mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(out / "shards" / f"{s:05d}.tar", "w") as tar:
            for c in range(clips_per_shard):
                key = f"clip{s}_{c}"
                for ext, data in _clip(key, 10 * s + c).items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("data") / "out")


def sft_yaml(path: Path, shards: Path | str, out: Path, max_steps: int = 2) -> Path:
    raw = yaml.safe_load((REPO / "examples" / "sft_tiny_cpu.yaml").read_text())
    raw["data"].update(shards=str(shards), num_workers=0, validation_clips=0, shuffle_buffer=0)
    raw["log"].update(progress=False, every_steps=1, validate_every_steps=0, preview_every_steps=0)
    raw["run"].update(output_dir=str(out), max_steps=max_steps)
    raw["checkpoint"].update(every_steps=1000)
    path.write_text(yaml.safe_dump(raw))
    return path


def vividhead(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``vividhead ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


def one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("VIVIDHEAD_DEBUG", raising=False)


def test_existing_run_is_not_clobbered_even_with_an_empty_shards_folder(shards, tmp_path, capsys):
    """The issue's first row, through the real script: one line, exit 2, the run folder byte-identical."""
    run = tmp_path / "run"
    assert vividhead(["train", "sft", "--config", str(sft_yaml(tmp_path / "a.yaml", shards, run))], capsys)[0] == 0
    before = snapshot(run)
    assert "config.json" in before and any(k.startswith("checkpoints/") for k in before)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = sft_yaml(tmp_path / "b.yaml", empty, run, max_steps=10)
    proc = subprocess.run([sys.executable, "-m", "vividhead", "train", "sft", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, str(run), "already holds a run", "--resume")
    assert snapshot(run) == before
    # the same with good data: still refused in-process, still untouched
    code, err = vividhead(["train", "sft", "--config", str(sft_yaml(tmp_path / "c.yaml", shards, run, 4))], capsys)
    assert code == 2
    one_error_line(err, "already holds a run")
    assert snapshot(run) == before
    # --resume auto continues it (exact-resume is tested in test_sft.py)
    code, _ = vividhead(["train", "sft", "--config", str(tmp_path / "c.yaml"), "--resume", "auto"], capsys)
    assert code == 0
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == 4
    assert not list(run.glob(".config.json.tmp*"))


@pytest.mark.parametrize("what", ["empty", "missing", "bad_manifest"])
def test_bad_data_is_one_line_and_writes_nothing(what, shards, tmp_path, capsys):
    data = tmp_path / "data"
    if what == "empty":
        data.mkdir()
        expect = "no shards under"
    elif what == "missing":
        expect = "no shards under"
    else:
        import shutil

        shutil.copytree(shards, data)
        (data / "manifest.parquet").write_bytes(b"not parquet")
        expect = "not a readable Parquet manifest"
    run = tmp_path / "run"
    code, err = vividhead(["train", "sft", "--config", str(sft_yaml(tmp_path / "c.yaml", data, run))], capsys)
    assert code == 2
    one_error_line(err, expect, str(data))
    assert not run.exists()


def test_distill_without_its_init_checkpoint_is_one_line(shards, tmp_path, capsys):
    raw = yaml.safe_load((REPO / "examples" / "distill_tiny_cpu.yaml").read_text())
    raw["data"].update(shards=str(shards), num_workers=0)
    raw["distill"].update(init_checkpoint=str(tmp_path / "no_such_run"))
    raw["run"].update(output_dir=str(tmp_path / "run"))
    cfg = tmp_path / "distill.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    code, err = vividhead(["train", "distill", "--config", str(cfg)], capsys)
    assert code == 2
    one_error_line(err, "distill.init_checkpoint", "no_such_run")
    assert not (tmp_path / "run").exists()


def test_cache_latents_on_an_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cfg = sft_yaml(tmp_path / "c.yaml", tmp_path / "empty", tmp_path / "run")
    code, err = vividhead(["train", "cache-latents", "--config", str(cfg), "--out", str(tmp_path / "cache")], capsys)
    assert code == 2
    one_error_line(err, "no shards under")
    assert not (tmp_path / "cache").exists()


def test_cache_latents_shows_progress(shards, tmp_path, capsys):
    cfg = sft_yaml(tmp_path / "c.yaml", shards, tmp_path / "run")
    code, err = vividhead(["train", "cache-latents", "--config", str(cfg), "--out", str(tmp_path / "cache"),
                           "--windows-per-clip", "1"], capsys)
    assert code == 0, err
    assert "cache-latents:" in err and "window" in err, err  # the progress bar (tqdm, on stderr)
    assert (tmp_path / "cache" / "index.json").exists()


def test_no_manifest_trains_on_every_sample_with_one_warning(shards, tmp_path, capsys, caplog, monkeypatch):
    import vividhead.training.data as data

    monkeypatch.setattr(data, "_NO_MANIFEST_WARNED", set())  # earlier tests here warned about these shards
    caplog.set_level(logging.WARNING)
    code, err = vividhead(["train", "sft", "--config", str(sft_yaml(tmp_path / "c.yaml", shards, tmp_path / "run"))],
                          capsys)
    assert code == 0, err
    warned = [r for r in caplog.records if "manifest.parquet not found" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert "every sample" in warned[0].getMessage()


def test_truncated_shard_is_skipped_and_counted(shards, tmp_path, capsys, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shards, data)
    bad = data / "shards" / "00001.tar"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # `head -c`: the second clip and its end are cut
    caplog.set_level(logging.WARNING)
    code, err = vividhead(["train", "sft", "--config", str(sft_yaml(tmp_path / "c.yaml", data, tmp_path / "run", 4))],
                          capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/skipped_samples"] > 0, rows[-1]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert skipped and all("00001.tar" in m for m in skipped), skipped
    assert len(skipped) == len(set(skipped))  # once each, though the shard is read every epoch
    assert "ReadError" not in err and "warn" not in err.lower(), err  # no raw webdataset warnings


def test_out_of_memory_is_one_line_naming_the_step_and_checkpoint_and_the_run_resumes(shards, tmp_path, capsys,
                                                                                     monkeypatch):
    """A device out of memory in step 3 (checkpoints every 2 steps): one line with the step, the last
    checkpoint and the memory options, exit 2; ``--resume auto`` then finishes the run from step 2."""
    import torch

    from vividhead.training.trainers.sft import SFTTrainer

    raw = yaml.safe_load(sft_yaml(tmp_path / "a.yaml", shards, tmp_path / "run", max_steps=4).read_text())
    raw["checkpoint"]["every_steps"] = 2
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    real = SFTTrainer.train_step

    def step_or_oom(self, batch):
        if self.step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.64 GiB.")
        return real(self, batch)

    monkeypatch.setattr(SFTTrainer, "train_step", step_or_oom)
    code, err = vividhead(["train", "sft", "--config", str(tmp_path / "a.yaml")], capsys)
    assert code == 2
    one_error_line(err, "out of memory in step 3", "step_00000002", "--resume auto",
                   "parallel.activation_checkpointing", "data.batch_size")
    monkeypatch.setattr(SFTTrainer, "train_step", real)
    code, _ = vividhead(["train", "sft", "--config", str(tmp_path / "a.yaml"), "--resume", "auto"], capsys)
    assert code == 0
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir()
