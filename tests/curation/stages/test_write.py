from __future__ import annotations

import json
import tarfile

import pytest

from vividhead.curation.records import add_member, new_row, reject
from vividhead.curation.stages.write import ShardWriter
from vividhead.curation.storage import Storage
from vividhead.shard_format import FPS, SAMPLE_RATE_HZ, WAV2VEC, member_name


def _clip(input_id, i, n, kept=True):
    row = new_row(input_id=input_id, source_id=input_id, url=f"/x/{input_id}.mp4", clip_id=f"{input_id}-{i:04d}",
                  clip_index=i, rows_of_input=n, start_s=float(i), end_s=float(i + 5), duration_s=5.0, num_frames=125,
                  crop_box=[1, 2, 3, 4], video_bytes=b"V" * 10, audio_bytes=b"A" * 4)
    add_member(row, WAV2VEC, b"npy")
    return row if kept else reject(row, "face", "no_face")


def _writer(tmp_path, n=2):
    w = ShardWriter(Storage(str(tmp_path)), samples_per_shard=n)
    w.prepare()
    return w


def test_inputs_are_written_whole_and_parts_follow_shards(tmp_path):
    w = _writer(tmp_path)
    w.add(_clip("a", 1, 2))
    assert not list(tmp_path.glob("shards/*.tar"))  # input a is incomplete
    w.add(_clip("b", 0, 1, kept=False))
    w.add(_clip("a", 0, 2))  # completes a: 2 kept -> shard 0
    assert [p.name for p in tmp_path.glob("shards/*.tar")] == ["00000.tar"]
    w.add(_clip("c", 0, 1))
    w.close()
    table = w.write_manifest()
    rows = table.to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ["a-0000", "a-0001", "b-0000", "c-0000"]
    assert {r["clip_id"]: r["shard"] for r in rows} == {"a-0000": 0, "a-0001": 0, "b-0000": None, "c-0000": 1}
    with tarfile.open(tmp_path / "shards/00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("a-0000.json").read())
    assert names == [member_name(key, ext) for key in ("a-0000", "a-0001") for ext in ("mp4", "wav", WAV2VEC, "json")]
    assert meta["crop_box"] == [1, 2, 3, 4] and meta["fps"] == FPS and meta["sample_rate"] == SAMPLE_RATE_HZ
    assert "status" not in meta and "timings" not in meta


def test_resume_after_a_kill_between_shard_and_part(tmp_path):
    w = _writer(tmp_path, n=1)
    w.add(_clip("a", 0, 1))  # shard 0 + part 0
    # simulate a kill: a finished shard whose part never landed, and stray temp files
    (tmp_path / "shards" / "00001.tar").write_bytes(b"orphan")
    (tmp_path / "shards" / ".tmp-123.tar").write_bytes(b"half")
    (tmp_path / "_parts" / ".tmp-9.parquet").write_bytes(b"half")
    w2 = ShardWriter(Storage(str(tmp_path)), 1)
    done = w2.prepare()
    assert done.column("input_id").to_pylist() == ["a"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar"]
    assert not list((tmp_path / "_parts").glob(".tmp-*"))
    w2.add(_clip("b", 0, 1))
    w2.close()
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    rows = w2.write_manifest().to_pylist()
    assert [(r["input_id"], r["shard"]) for r in rows] == [("a", 0), ("b", 1)]


def test_close_refuses_incomplete_inputs(tmp_path):
    w = _writer(tmp_path)
    w.add(_clip("a", 0, 3))
    with pytest.raises(RuntimeError, match="did not receive all their rows"):
        w.close()


def test_unwritable_output_fails_fast(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file, even by root
    with pytest.raises(OSError):
        ShardWriter(Storage(str(blocker / "out")), 1).prepare()
    assert not list(tmp_path.rglob(".tmp-*"))
