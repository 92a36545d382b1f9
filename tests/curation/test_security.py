"""Untrusted input: hostile source ids and file names through the whole pipeline and writer, HTTP
download size and time limits against a loopback server, no shell, no pickle-executing loads."""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from fast_config import fast_config
from netutil import QuietHandler, http_server

from vividhead.curation.media import fetch_remote
from vividhead.curation.pipeline import run_curation
from vividhead.curation.storage import RetryPolicy
from vividhead.errors import MediaError

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)
KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


# -- hostile ids ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(ray_local, tmp_path_factory, video_dir):
    """Curate 1.2 s spans of 7 distinct fixture files listed with hostile ``source_id`` values,
    one of them a file whose own name is hostile (its id comes from the name)."""
    root = tmp_path_factory.mktemp("hostile")
    canary = root / "pwned"
    ids = ["../../x", "/etc/passwd", "a\"b'c", "line1\nline2", f"x; rm -rf ~; $(touch {canary}) `touch {canary}`", ".."]
    names = ["talk_retalking_face1.mp4", "talk_retalking_face2.mp4", "talk_retalking_face3.mp4",
             "talk_retalking_face4.mp4", "talk_hdtf_aoc_512.mp4", "talk_livep_outdoor_d20.mp4"]
    evil_name = "it's; $(touch pwned) \"q\"\n.mp4"
    evil = root / "inputs" / evil_name
    evil.parent.mkdir()
    shutil.copy(video_dir / "talk_hdtf_katiehill_512.mp4", evil)
    listing = root / "inputs.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "source_id", "start_s", "end_s"])
        for source_id, name in zip(ids, names):
            writer.writerow([str(video_dir / name), source_id, 0.0, 1.2])
        writer.writerow([str(evil), "", 0.0, 1.2])
    out = root / "work" / "out"
    cfg = fast_config(run={"cache_dir": str(root / "cache")})
    result = run_curation([str(listing)], str(out), cfg)
    return root, out, result, ids + [Path(evil_name).stem], canary


def test_hostile_ids_survive_in_the_manifest_but_keys_are_safe(hostile_run):
    _, _, result, ids, _ = hostile_run
    rows = result.manifest.to_pylist()
    assert sorted(r["source_id"] for r in rows) == sorted(ids)  # data kept exactly
    assert all(r["status"] == "kept" for r in rows), [(r["source_id"], r["reason"]) for r in rows]
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) == len(ids)
    assert all(KEY.match(k) for k in keys), keys


def test_every_file_stays_inside_out_and_nothing_ran_in_a_shell(hostile_run):
    root, out, _, _, canary = hostile_run
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve()), path
    assert sorted(p.name for p in out.iterdir()) == ["_parts", "manifest.parquet", "shards", "stats.json"]
    assert {p.name for p in root.iterdir()} <= {"cache", "inputs", "inputs.csv", "work"}
    assert sorted(p.name for p in (root / "work").iterdir()) == ["out"]
    assert not canary.exists() and not (REPO / "pwned").exists() and not Path("pwned").exists()


def test_shard_members_are_plain_files_named_by_safe_keys(hostile_run):
    _, out, result, _, _ = hostile_run
    by_key = {r["key"]: r for r in result.manifest.to_pylist()}
    seen = set()
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert member.isfile() and "/" not in member.name and ".." not in member.name, member.name
                key, ext = member.name.split(".", 1)
                assert KEY.match(key) and ext in ("mp4", "wav", "json"), member.name
                if ext == "json":
                    meta = json.loads(tar.extractfile(member).read())
                    assert meta["source_id"] == by_key[key]["source_id"]
                seen.add(key)
    assert seen == set(by_key)


# -- HTTP download limits ---------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


class Payload(QuietHandler):
    """``/sized``: with Content-Length; ``/unsized``: no length, body until close; ``/drip``: one
    byte every 0.2 s; ``/stall``: headers, then silence; ``/flaky``: 503 twice, then the payload."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        Payload.hits[self.path] = Payload.hits.get(self.path, 0) + 1
        if self.path == "/flaky" and Payload.hits[self.path] <= 2:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_error(404)
            return
        self.send_response(200)
        if self.path in ("/sized", "/flaky"):
            self.send_header("Content-Length", str(len(PAYLOAD)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if self.path == "/drip":
                for _ in range(150):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path == "/stall":
                time.sleep(30)
            else:
                self.wfile.write(PAYLOAD)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


@pytest.fixture(scope="module")
def http_base():
    with http_server(Payload) as base:
        yield base


def _no_leftovers(cache: Path) -> bool:
    folder = cache / "inputs"
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("path", ["/sized", "/unsized"])
def test_download_over_the_size_limit_is_refused(http_base, tmp_path, path):
    with pytest.raises(MediaError) as info:
        fetch_remote(f"{http_base}{path}", tmp_path, max_bytes=4096, timeout_s=20.0, retry=FAST_RETRY)
    assert info.value.reason == "too_large"
    assert _no_leftovers(tmp_path)


def test_download_under_the_size_limit_is_complete(http_base, tmp_path):
    path = fetch_remote(f"{http_base}/unsized", tmp_path, max_bytes=len(PAYLOAD), timeout_s=20.0, retry=FAST_RETRY)
    assert path.read_bytes() == PAYLOAD
    assert path.parent == tmp_path / "inputs" and [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("path", ["/drip", "/stall"])
def test_slow_download_is_cut_by_its_time_limit(http_base, tmp_path, path):
    start = time.monotonic()
    with pytest.raises(MediaError) as info:
        fetch_remote(f"{http_base}{path}", tmp_path, max_bytes=10**9, timeout_s=1.5, retry=FAST_RETRY)
    assert info.value.reason == "download_timeout"
    assert time.monotonic() - start < 10
    assert _no_leftovers(tmp_path)


def test_http_503_is_retried_and_404_is_not(http_base, tmp_path):
    Payload.hits.clear()
    path = fetch_remote(f"{http_base}/flaky", tmp_path, max_bytes=10**6, timeout_s=20.0, retry=FAST_RETRY)
    assert path.read_bytes() == PAYLOAD and Payload.hits["/flaky"] == 3
    with pytest.raises(MediaError) as info:
        fetch_remote(f"{http_base}/missing", tmp_path, max_bytes=10**6, timeout_s=20.0, retry=FAST_RETRY)
    assert info.value.reason == "download_failed" and Payload.hits["/missing"] == 1


def test_cache_file_names_do_not_come_from_the_url(http_base, tmp_path):
    path = fetch_remote(f"{http_base}/sized?name=../../../etc/x;rm", tmp_path, max_bytes=10**6, timeout_s=20.0, retry=FAST_RETRY)
    assert path.parent == tmp_path / "inputs" and re.fullmatch(r"[0-9a-f]{32}", path.name)


# -- static checks on the code ----------------------------------------------------------------------

CODE_DIRS = ("curation", "training", "inference", "datasets_card")


def _calls():
    for folder in CODE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    yield path.relative_to(REPO), node


def _name(func: ast.expr) -> str:
    return ast.unparse(func)


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_shell_anywhere():
    bad = []
    for path, call in _calls():
        shell = _kw(call, "shell")
        if (shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False)) or _name(call.func) in ("os.system", "os.popen"):
            bad.append(f"{path}:{call.lineno}")
    assert not bad, bad


def test_weights_are_loaded_without_code_execution():
    bad = []
    for path, call in _calls():
        name = _name(call.func)
        if name == "torch.load":
            flag = _kw(call, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                bad.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            flag = _kw(call, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                bad.append(f"{path}:{call.lineno} np.load with allow_pickle")
        elif name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
            bad.append(f"{path}:{call.lineno} {name}")
    assert not bad, bad


def test_credentials_in_storage_options_never_reach_stats():
    from vividhead.curation.storage import redact

    options = {"key": "AKIAEXAMPLE", "secret": "s3cr3t", "token": "t0k3n",
               "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "aws_secret_access_key": "s3cr3t"},
               "s3": {"password": "pw", "anon": False}}
    text = json.dumps(redact({"run": {"storage_options": options}}))
    assert "AKIAEXAMPLE" not in text and "s3cr3t" not in text and "t0k3n" not in text and '"pw"' not in text
    assert "http://127.0.0.1:9000" in text and '"anon": false' in text
