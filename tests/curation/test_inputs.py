from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vividhead.curation.inputs import InputError, expand_inputs, source_id_from_url
from vividhead.curation.records import clip_id_for, safe_key


def test_directory_glob_and_file_inputs(video_dir):
    rows = expand_inputs([str(video_dir)])
    names = [r["source_id"] for r in rows]
    assert "talk_retalking_face1" in names and len(rows) == len(list(video_dir.glob("*.mp4")))
    assert len({r["input_id"] for r in rows}) == len(rows)
    globbed = expand_inputs([str(video_dir / "talk_retalking_face*.mp4")])
    assert [r["source_id"] for r in globbed] == [f"talk_retalking_face{i}" for i in range(1, 6)]
    again = expand_inputs([str(video_dir / "talk_retalking_face*.mp4")])
    assert [r["input_id"] for r in again] == [r["input_id"] for r in globbed]  # stable across runs


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_url_lists(tmp_path, video_dir, fmt):
    recs = [
        {"url": str(video_dir / "talk_retalking_face1.mp4"), "source_id": "yt_abc", "start_s": 0.5, "end_s": 5.9},
        {"url": "s3://bucket/x/video.mp4", "source_id": "", "start_s": None, "end_s": None},
    ]
    path = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        lines = ["url,source_id,start_s,end_s"] + [f"{r['url']},{r['source_id']},{r['start_s'] or ''},{r['end_s'] or ''}" for r in recs]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(recs), path)
    rows = expand_inputs([str(path)])
    assert [r["source_id"] for r in rows] == ["yt_abc", "video"]
    assert rows[0]["start_s"] == 0.5 and rows[0]["end_s"] == 5.9
    assert rows[1]["start_s"] is None and rows[1]["url"] == "s3://bucket/x/video.mp4"


def test_url_list_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("link\nx.mp4\n")
    with pytest.raises(InputError, match="no 'url' column"):
        expand_inputs([str(bad)])
    bad.write_text("url,start_s\nx.mp4,soon\n")
    with pytest.raises(InputError, match="start_s must be a number"):
        expand_inputs([str(bad)])


@pytest.mark.parametrize("hostile", ["../../x", "a/b/../../etc/passwd", 'q"uote', "new\nline", "semi;rm -rf /", "..", "", "-rf", "x.y.z"])
def test_hostile_ids_become_safe_keys(hostile):
    key = clip_id_for(hostile, 3)
    assert key.endswith("-0003")
    assert all(c.isalnum() or c in "_-" for c in key)
    assert not key.startswith(("-", ".")) and "/" not in key and ".." not in key
    assert safe_key(hostile) != safe_key(hostile + "_")  # no collisions between distinct ids


def test_source_id_from_url():
    assert source_id_from_url("https://host/a/b/abc123.mp4?sig=1") == "abc123"
    assert source_id_from_url("/data/videos/clip.mkv") == "clip"
