from __future__ import annotations

import pytest

from vividhead.curation.records import new_row
from vividhead.curation.stages.dedup import DedupConfig, DedupStage, find_duplicates
from vividhead.curation.stages.probe import ProbeConfig, probe_media
from vividhead.errors import MediaError


def test_probe_reads_real_metadata(video_dir):
    r = probe_media(video_dir / "talk_retalking_face4.mp4", ProbeConfig())
    assert (r.width, r.height) == (700, 700) and r.fps == pytest.approx(30.0, abs=0.1)
    assert r.duration_s == pytest.approx(6.63, abs=0.05) and r.has_audio and len(r.md5) == 32


@pytest.mark.parametrize(
    "name, reason",
    [("cuts_nature_3scenes.mp4", "no_audio"), ("neg_no_audio_talking_vertical.mp4", "no_audio")],
)
def test_probe_rejects_missing_audio(video_dir, name, reason):
    with pytest.raises(MediaError) as err:
        probe_media(video_dir / name, ProbeConfig())
    assert err.value.reason == reason


def test_probe_rejects_bad_files(tmp_path, video_dir):
    (tmp_path / "t.mp4").write_text("not a video")
    for path, reason in [(tmp_path / "t.mp4", "unreadable"), (tmp_path / "none.mp4", "not_found")]:
        with pytest.raises(MediaError) as err:
            probe_media(path, ProbeConfig())
        assert err.value.reason == reason
    with pytest.raises(MediaError) as err:
        probe_media(video_dir / "talk_retalking_face5.mp4", ProbeConfig(min_duration_s=6.0))
    assert err.value.reason == "too_short"
    no_audio_ok = probe_media(video_dir / "fades_synthetic.mp4", ProbeConfig(require_audio=False))
    assert not no_audio_ok.has_audio


def _row(i, source_id, md5):
    return new_row(input_id=f"in{i}", source_id=source_id, md5=md5)


def test_dedup_keeps_first_and_names_it():
    rows = [_row(0, "a", "m1"), _row(1, "b", "m1"), _row(2, "a", "m2"), _row(3, "c", "m3")]
    dups = find_duplicates(rows, [], DedupConfig())
    assert dups == {1: ("duplicate_md5", "in0"), 2: ("duplicate_source_id", "in0")}
    out = DedupStage(DedupConfig()).process_all(rows, [])
    assert [r["status"] for r in out] == ["kept", "rejected", "rejected", "kept"]
    assert out[1]["duplicate_of"] == "in0" and out[1]["stage"] == "dedup"


def test_dedup_against_previous_runs_and_switches():
    prev = [{"input_id": "old", "source_id": "c", "md5": "m9"}]
    rows = [_row(0, "c", "mX"), _row(1, "d", "m9")]
    assert find_duplicates(rows, prev, DedupConfig()) == {0: ("duplicate_source_id", "old"), 1: ("duplicate_md5", "old")}
    assert find_duplicates(rows, prev, DedupConfig(by_source_id=False, by_md5=False)) == {}
