"""S3 in and out against a real S3 server (moto in server mode on 127.0.0.1), resume on S3, and
transient storage faults (connection resets, 5xx/throttling) retried with backoff."""

from __future__ import annotations

import errno
import io
import json
import os

import av
import pyarrow.parquet as pq
import pytest

# Credentials come from the standard AWS chain (environment variables here). Set at import, before
# the session's Ray starts, so Ray workers inherit them. Fake values: the server is local.
for _name, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_name, _value)

import fsspec  # noqa: E402
import s3fs  # noqa: E402
import webdataset as wds  # noqa: E402
from fast_config import fast_config  # noqa: E402
from netutil import QuietHandler, http_server, moto_server  # noqa: E402

from vividhead.curation.media import fetch_remote  # noqa: E402
from vividhead.curation.pipeline import run_curation  # noqa: E402
from vividhead.curation.storage import RetryPolicy, Storage, StorageError, is_transient, register_webdataset_scheme  # noqa: E402
from vividhead.errors import MediaError  # noqa: E402

CLIPS = ("talk_retalking_face2.mp4", "talk_retalking_face3.mp4")
FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


class Always503(QuietHandler):
    """Every GET answers 503 Service Unavailable (a storage outage that does not end)."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def s3():
    """``(storage_options, fs)`` for a fresh moto S3 server with buckets ``vh-in`` and ``vh-out`` (S3 bucket names need 3+ characters)."""
    with moto_server() as endpoint:
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        fs = fsspec.filesystem("s3", **options)
        fs.mkdir("vh-in")
        fs.mkdir("vh-out")
        yield options, fs


class Flaky:
    """Wraps a file-system method: the first ``failures`` calls raise ``exc``, later ones pass."""

    def __init__(self, fn, failures: int, exc: BaseException) -> None:
        self.fn, self.failures, self.exc, self.calls = fn, failures, exc, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def s3_run(s3, ray_local, video_dir, tmp_path_factory):
    """Curate ``s3://vh-in/videos/`` (two talking clips and a non-video) plus an HTTP input whose
    server always answers 503, into ``s3://vh-out/run1``."""
    options, fs = s3
    for name in CLIPS:
        fs.put_file(str(video_dir / name), f"vh-in/videos/{name}")
    fs.pipe_file("vh-in/videos/not_a_video.mp4", b"this is not a video\n")
    cache = tmp_path_factory.mktemp("cache")
    cfg = fast_config(run={"storage_options": options, "cache_dir": str(cache)}, write={"samples_per_shard": 1})
    with http_server(Always503) as base:
        inputs = ["s3://vh-in/videos/", f"{base}/outage.mp4"]
        result = run_curation(inputs, "s3://vh-out/run1", cfg)
    return inputs, cfg, result


def _shard_info(fs, prefix: str) -> dict[str, tuple]:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[1]: (fs.info(p)["ETag"], fs.info(p)["LastModified"]) for p in fs.ls(f"{prefix}/shards")}


def test_curates_s3_in_to_s3_out(s3, s3_run):
    _, fs = s3
    _, _, result = s3_run
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[1] for p in fs.ls("vh-out/run1")}
    assert {"manifest.parquet", "stats.json", "shards", "_parts"} <= names
    table = pq.read_table(io.BytesIO(fs.cat_file("vh-out/run1/manifest.parquet")))
    rows = table.to_pylist()
    assert table.num_rows == result.manifest.num_rows == 4
    kept = [r for r in rows if r["status"] == "kept"]
    assert sorted(r["source_id"] for r in kept) == ["talk_retalking_face2", "talk_retalking_face3"]
    assert all(r["url"].startswith("s3://vh-in/videos/") for r in kept)
    bad = next(r for r in rows if r["source_id"] == "not_a_video")
    assert (bad["stage"], bad["reason"]) == ("probe", "unreadable")
    stats = json.loads(fs.cat_file("vh-out/run1/stats.json"))
    assert stats["clips_kept"] == 2 and len(stats["shards"]) == 2


def test_transient_input_errors_are_retried_then_recorded(s3_run):
    _, _, result = s3_run
    row = next(r for r in result.manifest.to_pylist() if r["source_id"] == "outage")
    assert (row["status"], row["stage"], row["reason"]) == ("rejected", "probe", "storage_unavailable")
    assert "5 attempts" in row["detail"] and "503" in row["detail"]


def test_shards_read_back_with_webdataset(s3, s3_run):
    options, fs = s3
    _, _, result = s3_run
    register_webdataset_scheme("s3", options)
    fs.invalidate_cache()
    urls = [f"s3://{p}" for p in sorted(fs.ls("vh-out/run1/shards"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    kept = {r["key"]: r for r in result.manifest.to_pylist() if r["status"] == "kept"}
    assert sorted(s["__key__"] for s in samples) == sorted(kept)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["source_id"] == kept[sample["__key__"]]["source_id"]
        with av.open(io.BytesIO(sample["mp4"])) as container:
            frame = next(container.decode(video=0))
            row = kept[sample["__key__"]]  # no face crop in the fast config: the source size
            assert (frame.width, frame.height) == (row["source_width"], row["source_height"])
        assert sample["wav"][:4] == b"RIFF"


def test_rerun_on_s3_is_a_noop(s3, s3_run):
    _, fs = s3
    inputs, cfg, result = s3_run
    before = _shard_info(fs, "vh-out/run1")
    again = run_curation(inputs, "s3://vh-out/run1", cfg)
    assert again.skipped_inputs == 4
    assert again.manifest.num_rows == result.manifest.num_rows
    assert _shard_info(fs, "vh-out/run1") == before


def test_resume_on_s3_redoes_only_the_missing_input_through_connection_resets(s3, s3_run):
    """Drop the last part (as if the run died before writing it): the rerun redoes exactly that
    input, rewrites its shard through two connection resets, and leaves the other shard alone."""
    options, fs = s3
    inputs, cfg, result = s3_run
    fs.invalidate_cache()
    # Parts follow the order in which inputs finish (Ray's), so a rejected-only input may come
    # last: drop the last part that wrote a shard (it holds the highest shard number).
    parts = sorted(fs.ls("vh-out/run1/_parts"))
    tables = {p: pq.read_table(io.BytesIO(fs.cat_file(p))).to_pylist() for p in parts}
    target = [p for p in parts if any(r["shard"] is not None for r in tables[p])][-1]
    last = tables[target]
    redone = {r["shard"] for r in last if r["shard"] is not None}
    assert len(redone) == 1
    fs.rm(target)
    before = _shard_info(fs, "vh-out/run1")
    storage_fs = fsspec.filesystem("s3", **options)  # the cached instance run_curation's Storage gets
    flaky = Flaky(storage_fs.put_file, 2, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    try:
        storage_fs.put_file = flaky
        again = run_curation(inputs, "s3://vh-out/run1", cfg)
    finally:
        del storage_fs.put_file  # back to the method fsspec bound at init
    assert again.skipped_inputs == 4 - len({r["input_id"] for r in last})
    assert flaky.calls >= 3
    rows = again.manifest.to_pylist()
    assert sorted((r["input_id"], r["clip_index"]) for r in rows) == sorted(
        (r["input_id"], r["clip_index"]) for r in result.manifest.to_pylist()
    )
    keys = [r["key"] for r in rows if r["key"]]
    assert len(keys) == len(set(keys)) == 2
    after = _shard_info(fs, "vh-out/run1")
    assert set(after) == set(before) | {f"{s:05d}.tar" for s in redone}
    for name, info in before.items():
        if int(name[:5]) not in redone:
            assert after[name] == info, f"{name} was rewritten"


# -- transient faults, injected into fsspec file-system methods ------------------------------------


def test_storage_write_retries_connection_resets(s3, monkeypatch):
    options, _ = s3
    storage = Storage("s3://vh-out/retry", options, FAST_RETRY)
    flaky = Flaky(storage.fs.put_file, 2, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    monkeypatch.setattr(storage.fs, "put_file", flaky)
    storage.write_bytes("a.bin", b"x" * 1000)
    assert flaky.calls == 3
    assert storage.read_bytes("a.bin") == b"x" * 1000


def test_storage_write_fails_clearly_after_retries_and_leaves_no_temp(s3, monkeypatch):
    options, _ = s3
    storage = Storage("s3://vh-out/retry", options, FAST_RETRY)
    temps = []
    real_temp = storage.local_temp
    monkeypatch.setattr(storage, "local_temp", lambda rel: temps.append(real_temp(rel)) or temps[-1])
    throttled = OSError(errno.EBUSY, "Please reduce your request rate.")  # s3fs's SlowDown / 503
    flaky = Flaky(storage.fs.put_file, 100, throttled)
    monkeypatch.setattr(storage.fs, "put_file", flaky)
    with pytest.raises(StorageError) as info:
        storage.write_bytes("b.bin", b"y")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("upload s3://vh-out/retry/b.bin failed after 4 attempts: OSError")
    assert flaky.calls == 4
    assert temps and not any(os.path.exists(path) for _, path in temps)
    assert not storage.exists("b.bin")


def test_permanent_storage_errors_are_not_retried(s3, monkeypatch):
    options, _ = s3
    storage = Storage("s3://vh-out/retry", options, FAST_RETRY)
    flaky = Flaky(storage.fs.put_file, 100, PermissionError(errno.EACCES, "Access Denied"))
    monkeypatch.setattr(storage.fs, "put_file", flaky)
    with pytest.raises(StorageError, match=r"^upload s3://vh-out/retry/c.bin failed: PermissionError"):
        storage.write_bytes("c.bin", b"z")
    assert flaky.calls == 1


def test_s3_input_download_retries_connection_resets(s3, video_dir, tmp_path, monkeypatch):
    options, fs = s3
    fs.put_file(str(video_dir / CLIPS[0]), "vh-in/direct/clip.mp4")
    flaky = Flaky(s3fs.core.S3File._fetch_range, 2, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda self, *a: flaky(self, *a))
    path = fetch_remote("s3://vh-in/direct/clip.mp4", tmp_path, 10**9, 60.0, options, FAST_RETRY)
    assert flaky.calls == 3
    assert path.read_bytes() == (video_dir / CLIPS[0]).read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .part- temp left


def test_s3_input_download_gives_up_with_a_reason(s3, video_dir, tmp_path, monkeypatch):
    options, fs = s3
    fs.put_file(str(video_dir / CLIPS[1]), "vh-in/direct/clip2.mp4")
    flaky = Flaky(s3fs.core.S3File._fetch_range, 100, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda self, *a: flaky(self, *a))
    with pytest.raises(MediaError) as info:
        fetch_remote("s3://vh-in/direct/clip2.mp4", tmp_path, 10**9, 60.0, options, FAST_RETRY)
    assert info.value.reason == "storage_unavailable"
    assert flaky.calls == 4
    assert not any((tmp_path / "inputs").iterdir())


def test_missing_s3_input_is_not_retried(s3, tmp_path, monkeypatch):
    options, _ = s3
    sleeps = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    with pytest.raises(MediaError) as info:
        fetch_remote("s3://vh-in/direct/nope.mp4", tmp_path, 10**9, 60.0, options, FAST_RETRY)
    assert info.value.reason == "download_failed" and "FileNotFoundError" in info.value.detail
    assert sleeps == []


def test_transient_error_classification():
    import aiohttp
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    def http_error(status: int) -> aiohttp.ClientResponseError:
        return aiohttp.ClientResponseError(None, (), status=status)

    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError())
    assert is_transient(client_error("SlowDown", 503)) and is_transient(client_error("InternalError", 500))
    assert is_transient(client_error("ThrottlingException", 400))
    assert not is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))  # botocore retries it
    assert not is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))  # a dead host in a URL list
    assert is_transient(http_error(503)) and is_transient(http_error(429))
    assert is_transient(OSError(errno.EBUSY, "SlowDown"))  # s3fs's translation of 503
    wrapped = OSError(errno.EIO, "upload failed")
    wrapped.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert is_transient(wrapped)
    assert not is_transient(client_error("AccessDenied", 403)) and not is_transient(http_error(404))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(ValueError("bug"))


def test_storage_options_reach_only_the_protocols_they_are_for():
    from vividhead.curation.storage import options_for

    flat = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert options_for("s3://b/k.mp4", flat) == flat
    assert options_for("https://example.org/v.mp4", flat) == {}  # an S3 endpoint never reaches aiohttp
    assert options_for("/data/v.mp4", flat) == {}
    per = {"s3": flat, "http": {"headers": {"User-Agent": "vividhead"}}}
    assert options_for("s3://b/k.mp4", per) == flat
    assert options_for("http://example.org/v.mp4", per) == {"headers": {"User-Agent": "vividhead"}}
    assert options_for("gs://b/k.mp4", per) == {}
