"""The shard contract (vividhead/shard_format.py) against the real writer's output, the stage code and the loader."""

from __future__ import annotations

import ast
import io
import json
import re
import tarfile
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from vividhead.curation.records import manifest_table
from vividhead.shard_format import (
    ANNOTATION_ERRORS,
    AUDIO_CHANNELS,
    AUDIO_SUBTYPE,
    FPS,
    FRAME_SIZE_PX,
    JSON,
    KEPT,
    KEY_PATTERN,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    MASK,
    MEDIA_REASONS,
    MEMBERS,
    MP4,
    PART_DIR,
    REASONS,
    REJECTED,
    REQUIRED_MEMBERS,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    SHARD_DIR,
    STAGE_REASONS,
    STATS_FILE,
    STATUSES,
    WAV,
    WAV2VEC,
    floor_frame_count,
    is_valid_frame_count,
    member_name,
    part_index,
    part_path,
    sample_json_keys,
    shard_index,
    shard_path,
    split_member,
)

CURATION = Path(__file__).resolve().parents[1] / "curation"


def _samples(out: Path) -> dict[str, dict]:
    """{key: {"shard": index, ext: bytes}} of every shard member under OUT."""
    samples: dict[str, dict] = {}
    for tar_path in sorted((out / SHARD_DIR).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = split_member(m.name)
                sample = samples.setdefault(key, {"shard": shard_index(tar_path.name)})
                sample[ext] = tar.extractfile(m).read()
    return samples


# -- pure helpers ------------------------------------------------------------------------------


def test_frame_count_rule_and_names():
    assert SAMPLES_PER_FRAME * FPS == SAMPLE_RATE_HZ
    assert [n for n in range(0, 40) if is_valid_frame_count(n)] == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]
    assert is_valid_frame_count(9, stride=8) and not is_valid_frame_count(13, stride=8)
    assert [floor_frame_count(n) for n in (0, 1, 4, 5, 44, 45, 46)] == [0, 1, 1, 5, 41, 45, 45]
    assert shard_path(7) == "shards/00007.tar" and shard_index(shard_path(7)) == 7
    assert shard_index("s3://b/out/shards/00012.tar") == 12 and shard_index("00012.tar.tmp") is None
    assert part_path(3) == "_parts/part-00003.parquet" and part_index(part_path(3)) == 3
    assert part_index(".part-00003.parquet.tmp") is None
    assert split_member(member_name("abc-0001", WAV2VEC)) == ("abc-0001", WAV2VEC)
    assert split_member("dir/abc-0001.mask.npz") == ("abc-0001", MASK)
    assert set(REQUIRED_MEMBERS) <= set(MEMBERS) and STATUSES == (KEPT, REJECTED)


# -- the writer's output -----------------------------------------------------------------------


def test_writer_manifest_schema_is_the_contract(curated_shards):
    assert manifest_table([]).schema.equals(MANIFEST_SCHEMA)
    assert pq.read_schema(curated_shards / MANIFEST_FILE).equals(MANIFEST_SCHEMA)
    parts = sorted((curated_shards / PART_DIR).iterdir())
    assert parts and all(part_index(p.name) is not None for p in parts)
    for p in parts:
        assert pq.read_schema(p).equals(MANIFEST_SCHEMA), p.name
    assert (curated_shards / STATS_FILE).is_file()


def test_written_samples_follow_the_contract(curated_shards):
    manifest = pq.read_table(curated_shards / MANIFEST_FILE).to_pylist()
    kept = {r["key"]: r for r in manifest if r["status"] == KEPT}
    samples = _samples(curated_shards)
    assert set(samples) == set(kept) and len(kept) >= 3
    assert sorted(p.name for p in (curated_shards / SHARD_DIR).iterdir()) == sorted(
        Path(shard_path(s)).name for s in {r["shard"] for r in kept.values()})
    for key, sample in samples.items():
        row = kept[key]
        assert KEY_PATTERN.fullmatch(key) and sample.pop("shard") == row["shard"]
        # face_mask and audio_features ran: every member of the format is there, nothing else.
        assert sorted(sample) == sorted(MEMBERS), key
        meta = json.loads(sample[JSON])
        assert tuple(sorted(meta)) == tuple(sorted(sample_json_keys()))
        assert meta["fps"] == FPS and meta["sample_rate"] == SAMPLE_RATE_HZ and meta["key"] == key
        n = row["num_frames"]
        assert meta["num_frames"] == n and is_valid_frame_count(n)
        with av.open(io.BytesIO(sample[MP4])) as c:
            stream = c.streams.video[0]
            assert (stream.width, stream.height) == (FRAME_SIZE_PX, FRAME_SIZE_PX)
            assert stream.codec_context.name == "h264" and stream.average_rate == FPS
            assert sum(1 for _ in c.decode(video=0)) == n
        info = sf.info(io.BytesIO(sample[WAV]))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE_HZ, AUDIO_CHANNELS, AUDIO_SUBTYPE)
        assert info.frames == n * SAMPLES_PER_FRAME
        feats = np.load(io.BytesIO(sample[WAV2VEC]), allow_pickle=False)
        assert feats.dtype == np.float16 and feats.ndim == 3 and feats.shape[0] == n
        with np.load(io.BytesIO(sample[MASK]), allow_pickle=False) as z:
            assert z["size"].tolist() == [FRAME_SIZE_PX, FRAME_SIZE_PX]
            assert z["face"].shape == z["lips"].shape == (n, FRAME_SIZE_PX, FRAME_SIZE_PX // 8)
            assert z["present"].shape == (n,) and z["landmarks"].shape == (n, 478, 3)


def test_manifest_statuses_and_reasons_are_declared(curated_shards):
    rows = pq.read_table(curated_shards / MANIFEST_FILE).to_pylist()
    assert {r["status"] for r in rows} == set(STATUSES)
    for r in rows:
        if r["status"] == REJECTED:
            assert r["reason"] in STAGE_REASONS.get(r["stage"], frozenset()) | MEDIA_REASONS, r
        else:
            assert r["stage"] is None and r["reason"] is None
        for annotator, reason in json.loads(r["annotation_errors"] or "{}").items():
            assert reason in frozenset().union(*ANNOTATION_ERRORS.values()), (annotator, reason)


# -- the reason codes in the code --------------------------------------------------------------


def _reason_literals(tree: ast.AST) -> list[str | re.Pattern]:
    """Reason codes a module passes to MediaError / reject / note_annotation_error / ``reason=`` (or
    gives a ``reason`` parameter as default); an f-string becomes a pattern (``f"{tool}_timeout"`` ->
    ``.+_timeout``)."""

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            parts = [re.escape(p.value) if isinstance(p, ast.Constant) else ".+" for p in node.values]
            return re.compile("".join(parts))
        return None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # def run_tool(..., reason="ffmpeg_failed")
            params = node.args.posonlyargs + node.args.args
            defaults = dict(zip([a.arg for a in params][::-1], node.args.defaults[::-1]))
            defaults.update({a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None})
            found.append(value(defaults["reason"]) if "reason" in defaults else None)
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        args = {"MediaError": 0, "reject": 2, "note_annotation_error": 2}
        if name in args and len(node.args) > args[name]:
            found.append(value(node.args[args[name]]))
        found += [value(k.value) for k in node.keywords if k.arg == "reason"]
    return [v for v in found if v is not None]


def _declared(code: str | re.Pattern, allowed: frozenset[str]) -> bool:
    return code in allowed if isinstance(code, str) else any(code.fullmatch(a) for a in allowed)


def test_every_reason_in_the_stages_is_declared():
    annotation = frozenset().union(*ANNOTATION_ERRORS.values())
    stage_files = sorted((CURATION / "stages").glob("*.py"))
    assert len(stage_files) > 10
    for path in sorted(CURATION.rglob("*.py")):
        codes = _reason_literals(ast.parse(path.read_text()))
        if path.parent.name == "stages":
            allowed = STAGE_REASONS.get(path.stem, frozenset()) | MEDIA_REASONS | ANNOTATION_ERRORS.get(path.stem, frozenset())
        else:  # shared helpers (media.py, audio_io.py, face_track.py, ...)
            allowed = REASONS | annotation
        undeclared = [c if isinstance(c, str) else c.pattern for c in codes if not _declared(c, allowed)]
        assert not undeclared, f"{path.relative_to(CURATION.parent)}: reason codes missing from shard_format: {undeclared}"


def test_every_declared_reason_occurs_in_the_code():
    source = "\n".join(p.read_text() for p in CURATION.rglob("*.py"))
    for code in REASONS | frozenset().union(*ANNOTATION_ERRORS.values()):
        assert f'"{code}"' in source or code.endswith("_timeout"), f"{code} is declared but never emitted"
    for stage in STAGE_REASONS:
        assert (CURATION / "stages" / f"{stage}.py").is_file(), stage


# -- the loader --------------------------------------------------------------------------------


def test_loader_reads_what_the_writer_writes(curated_shards):
    from vividhead.training.data import ClipWindowDataset

    manifest = pq.read_table(curated_shards / MANIFEST_FILE).to_pylist()
    kept = {r["key"]: r["num_frames"] for r in manifest if r["status"] == KEPT}
    ds = ClipWindowDataset.from_output_dir(str(curated_shards), num_frames=33, shuffle_buffer=0, seed=0)
    assert ds.num_clips == sum(n > 33 for n in kept.values()) >= 3
    seen = {}
    for s in ds:
        seen[s.meta["key"]] = s
        assert s.frames.shape == (33, 3, FRAME_SIZE_PX, FRAME_SIZE_PX)
        assert s.wav2vec is not None and s.wav2vec.shape[0] == 33
        assert s.meta["num_frames"] == kept[s.meta["key"]]
    assert set(seen) == {k for k, n in kept.items() if n > 33}
