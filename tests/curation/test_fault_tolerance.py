"""Fault tolerance: a SIGKILLed driver resumes, dead workers are retried, a hanging ffprobe is cut
by its timeout, and a full disk or denied write fails fast without leaving half-written files."""

from __future__ import annotations

import collections
import csv
import errno
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
from fast_config import write_fast_config
from netutil import descendants, kill_pids

from vividhead.curation.config import StageConfig
from vividhead.curation.inputs import expand_inputs
from vividhead.curation.records import new_row
from vividhead.curation.stage import Stage
from vividhead.curation.stages.probe import ProbeConfig, ProbeStage
from vividhead.curation.stages.write import ShardWriter
from vividhead.curation.storage import Storage, StorageError

REPO = Path(__file__).resolve().parents[2]
# Short spans of distinct files (dedup compares whole-file MD5s): one 1.2 s clip per input.
SPAN_FILES = (
    "talk_retalking_face1.mp4", "talk_retalking_face2.mp4", "talk_retalking_face3.mp4",
    "talk_retalking_face4.mp4",
)

# Stage classes below are defined in this test module, which Ray workers cannot import.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def span_list(path: Path, video_dir: Path, names=SPAN_FILES, end_s: float = 1.2) -> Path:
    """A CSV URL list with one ``[0, end_s)`` span per file."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "start_s", "end_s"])
        for name in names:
            writer.writerow([str(video_dir / name), 0.0, end_s])
    return path


def shard_keys(out: Path) -> list[str]:
    """Every sample key in every shard (one per ``.mp4`` member), duplicates kept."""
    keys = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += [m.name[: -len(".mp4")] for m in tar.getmembers() if m.name.endswith(".mp4")]
    return keys


def no_temp_files(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.startswith((".tmp-", ".part-"))]


# -- driver killed mid-run --------------------------------------------------------------------------


def test_sigkilled_driver_resumes_without_duplicates_or_redone_shards(tmp_path, video_dir):
    out = tmp_path / "out"
    inputs = span_list(tmp_path / "inputs.csv", video_dir)
    config = write_fast_config(tmp_path / "curate.yaml", write={"samples_per_shard": 1}, run={"cache_dir": str(tmp_path / "cache")})
    cmd = [sys.executable, "-m", "curation", str(inputs), "--output", str(out), "--config", str(config), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray

    log = open(tmp_path / "first_run.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "_parts").glob("part-*.parquet")):
            assert proc.poll() is None, "the first run ended before it could be killed:\n" + (tmp_path / "first_run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no part written in 240 s"
            time.sleep(0.01)
        ray_processes = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    # The local Ray the killed driver had started: stop it by PID (it would die with its parent).
    kill_pids(ray_processes)

    parts = sorted((out / "_parts").glob("part-*.parquet"))
    finished_rows = [r for p in parts for r in pq.read_table(p).to_pylist()]
    finished_shards = {int(r["shard"]) for r in finished_rows if r["shard"] is not None}
    snapshot = {s: (out / "shards" / f"{s:05d}.tar").stat() for s in finished_shards}
    assert finished_shards and len({r["input_id"] for r in finished_rows}) < len(SPAN_FILES), "killed too late to test resume"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]

    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    counts = collections.Counter((r["input_id"], r["clip_index"]) for r in manifest)
    assert len({r["input_id"] for r in manifest}) == len(SPAN_FILES)
    assert all(n == 1 for n in counts.values()), counts
    kept = [r for r in manifest if r["status"] == "kept"]
    assert len(kept) == len(SPAN_FILES)
    keys = shard_keys(out)
    assert sorted(keys) == sorted(r["key"] for r in kept)  # no duplicate, none missing
    for shard, before in snapshot.items():
        after = (out / "shards" / f"{shard:05d}.tar").stat()
        assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    assert not no_temp_files(out)


# -- worker killed during a stage -------------------------------------------------------------------


class DieOnce(Stage):
    """Kills its worker process (``os._exit(1)``) on the first call anywhere, then works."""

    name = "die_once"

    def __init__(self, cfg: StageConfig, marker: str, always: bool = False) -> None:
        super().__init__(cfg)
        self.marker, self.always = marker, always

    def process(self, row):
        if self.always or not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        row["detail"] = str(os.getpid())
        return [row]


class DieOnceActor(DieOnce):
    """The same stage with a ``setup``, so it runs in an actor pool."""

    def setup(self) -> None:
        pass


def _rows(n: int) -> list[dict]:
    return [new_row(input_id=f"in{i}", source_id=f"s{i}", url=f"/nowhere/{i}.mp4") for i in range(n)]


@pytest.mark.parametrize("stage_cls", [DieOnceActor, DieOnce], ids=["actor", "task"])
def test_worker_killed_during_a_stage_is_retried_and_nothing_is_lost(ray_local, tmp_path, stage_cls):
    import ray.data

    from vividhead.curation.ray_adapter import apply_stage, needs_actor

    marker = tmp_path / "died"
    stage = stage_cls(StageConfig(workers=1), str(marker))
    assert needs_actor(stage) == (stage_cls is DieOnceActor)
    ds = ray.data.from_items(_rows(4), override_num_blocks=4)
    out = apply_stage(ds, stage).take_all()
    assert marker.exists(), "the worker never died: the test tested nothing"
    assert sorted(r["input_id"] for r in out) == ["in0", "in1", "in2", "in3"]
    assert all(r["status"] == "kept" and r["detail"] != marker.read_text() for r in out)


@pytest.mark.timeout(300)
def test_a_row_that_kills_every_worker_fails_the_job_instead_of_hanging(ray_local, tmp_path):
    import ray.data

    from vividhead.curation.ray_adapter import ACTOR_MAX_RESTARTS, apply_stage

    assert 0 < ACTOR_MAX_RESTARTS < 10
    stage = DieOnceActor(StageConfig(workers=1), str(tmp_path / "died"), always=True)
    ds = ray.data.from_items(_rows(1), override_num_blocks=1)
    with pytest.raises(Exception) as info:
        apply_stage(ds, stage).take_all()
    assert "died" in str(info.value).lower() or "actor" in type(info.value).__name__.lower(), info.value


# -- ffprobe hang ------------------------------------------------------------------------------------


def test_hanging_ffprobe_is_cut_by_its_timeout_and_other_inputs_finish(ray_local, tmp_path, video_dir):
    import ray.data

    from vividhead.curation.ray_adapter import apply_stage

    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # ffprobe blocks opening a FIFO nobody writes to
    good = video_dir / "talk_retalking_face2.mp4"
    probe = ProbeStage(ProbeConfig(timeout_s=3.0), str(tmp_path / "cache"))
    rows = expand_inputs([str(fifo), str(good)])
    start = time.monotonic()
    out = {r["source_id"]: r for r in apply_stage(ray.data.from_items(rows, override_num_blocks=2), probe).take_all()}
    assert time.monotonic() - start < 120
    assert (out["stuck"]["status"], out["stuck"]["reason"]) == ("rejected", "ffprobe_timeout")
    assert "3 s" in out["stuck"]["detail"]
    assert out["talk_retalking_face2"]["status"] == "kept" and out["talk_retalking_face2"]["md5"]


# -- output errors ----------------------------------------------------------------------------------

_EFBIG_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    from vividhead.curation.records import new_row
    from vividhead.curation.stages.write import ShardWriter
    from vividhead.curation.storage import Storage, StorageError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
    writer = ShardWriter(Storage(sys.argv[1]), 1)
    writer.prepare()
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # files over 300 kB cannot grow
    def clip(name, size):
        return new_row(input_id=name, source_id=name, clip_id=name + "-0000", clip_index=0,
                       video_bytes=b"v" * size, audio_bytes=b"w" * 1000)
    writer.add(clip("small", 50_000))
    try:
        writer.add(clip("large", 1_000_000))
    except StorageError as exc:
        print(exc)
        sys.exit(3)
    """
)


def test_file_size_limit_on_output_fails_with_one_line_and_no_half_shard(tmp_path):
    """A real kernel write error (EFBIG from RLIMIT_FSIZE, as a full disk gives ENOSPC) mid-shard."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _EFBIG_SCRIPT, str(out)], capture_output=True, timeout=120, cwd=REPO)
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    message = proc.stdout.decode().strip()
    assert "\n" not in message
    assert message.startswith(f"write {out}/shards/00001.tar failed: OSError: [Errno {errno.EFBIG}] File too large"), message
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.tar"]
    assert [m.name for m in tarfile.open(out / "shards" / "00000.tar").getmembers()][:2] == ["small-0000.mp4", "small-0000.wav"]
    assert sorted(p.name for p in (out / "_parts").iterdir()) == ["part-00000.parquet"]
    assert not no_temp_files(out)


def test_permission_error_publishing_a_shard_fails_without_leftovers(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "out"))
    writer = ShardWriter(storage, 1)
    writer.prepare()
    real_replace = os.replace

    def denied(src, dst):
        if str(dst).endswith(".tar"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", denied)
    row = new_row(input_id="a", source_id="a", clip_id="a-0000", clip_index=0, video_bytes=b"v", audio_bytes=b"w")
    with pytest.raises(StorageError, match=r"^rename to .*/out/shards/00000.tar failed: PermissionError"):
        writer.add(row)
    assert list((tmp_path / "out" / "shards").iterdir()) == []
    assert not (tmp_path / "out" / "_parts").exists() or not list((tmp_path / "out" / "_parts").iterdir())


def test_disk_full_mid_run_stops_the_cli_with_one_clear_line(ray_local, tmp_path, video_dir, monkeypatch):
    """ENOSPC on the second shard, half-way through its tar: exit code 2, one ``error:`` line naming
    the shard, the first shard and its part intact, no temp file, no second shard."""
    import typer
    from typer.testing import CliRunner

    import vividhead.curation.stages.write as write_mod
    from vividhead.curation.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a root with subcommands, as the vividhead command has
    register(app)

    calls = []
    real_write_tar = write_mod.write_tar

    def full_disk(path, samples):
        calls.append(path)
        if len(calls) == 1:
            return real_write_tar(path, samples)
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)  # what fit before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write_mod, "write_tar", full_disk)
    out = tmp_path / "out"
    inputs = span_list(tmp_path / "inputs.csv", video_dir, SPAN_FILES[:3])
    config = write_fast_config(tmp_path / "curate.yaml", write={"samples_per_shard": 1}, run={"cache_dir": str(tmp_path / "cache")})
    result = CliRunner().invoke(app, ["curate", str(inputs), "--output", str(out), "--config", str(config), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: write {out}/shards/00001.tar failed: OSError: [Errno {errno.ENOSPC}] No space left on device")
    assert len(calls) == 2
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.tar"]
    assert len(shard_keys(out)) == 1
    assert sorted(p.name for p in (out / "_parts").iterdir()) == ["part-00000.parquet"]
    assert not no_temp_files(out)
