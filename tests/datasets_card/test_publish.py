"""Tests for datasets_card/publish.py and the `publish` command (no network unless a token is set)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import typer
from huggingface_hub import HfApi
from typer.testing import CliRunner

import vividhead.datasets_card.publish as publish_mod
from vividhead.datasets_card.card import write_card
from vividhead.datasets_card.cli import register
from vividhead.datasets_card.publish import ALLOW_PATTERNS, plan_upload, publish
from vividhead.shard_format import KEPT, MANIFEST_FILE, STATS_FILE, shard_path

CARD_FILES = ["README.md"] + [f"card/{n}.png" for n in
                              ("duration_s", "face_px", "funnel", "language", "lse_c", "lse_d", "speech_share")]


def expected_files(out) -> list[str]:
    """What must be published, in upload order: the card, the manifest, stats.json and the shards
    that kept clips are in according to the manifest (not a listing of the folder)."""
    manifest = pq.read_table(out / MANIFEST_FILE).to_pylist()
    shards = {r["shard"] for r in manifest if r["status"] == KEPT}
    assert len(shards) >= 2
    return sorted(CARD_FILES + [MANIFEST_FILE, STATS_FILE] + [shard_path(s) for s in shards])


@pytest.fixture(scope="module")
def expected(carded) -> list[str]:
    return expected_files(carded)


@pytest.fixture(scope="module")
def carded(carded_dir):
    out_dir = carded_dir
    if (out_dir / "tmp").exists():
        return out_dir
    # Files that must never be published.
    (out_dir / "tmp").mkdir()
    (out_dir / "tmp" / "scratch.mp4").write_bytes(b"x")
    (out_dir / ".cache" / "huggingface").mkdir(parents=True)
    (out_dir / ".cache" / "huggingface" / "state.json").write_text("{}")
    (out_dir / "shards" / "00000.tar.tmp").write_bytes(b"partial")
    (out_dir / "_SUCCESS").write_text("")
    return out_dir


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))


def test_plan_lists_exactly_the_dataset_files(carded, expected):
    items = plan_upload(carded)
    assert [i.path_in_repo for i in items] == expected
    assert all(i.local_path == (carded / i.path_in_repo).resolve() for i in items)
    assert all(i.size == i.local_path.stat().st_size for i in items)


def test_dry_run_command_lists_files_and_destinations(carded, expected, monkeypatch):
    def no_api(*a, **k):
        raise AssertionError("dry run must not talk to the Hub")

    monkeypatch.setattr(publish_mod, "HfApi", no_api)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["publish", str(carded), "--repo-id", "vivid-org/vividhead-mini", "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith(f"would upload {len(expected)} files (")
    assert lines[0].endswith("to https://huggingface.co/datasets/vivid-org/vividhead-mini (public)")
    assert lines[1:] == [
        f"  {(carded / p).resolve()} -> hf://datasets/vivid-org/vividhead-mini/{p} "
        f"({(carded / p).stat().st_size} B)"
        for p in expected
    ]


def test_publish_operations(carded, expected):
    api = RecordingApi()
    items = publish(carded, "vivid-org/vividhead-mini", private=True, api=api)
    assert [i.path_in_repo for i in items] == expected
    assert api.calls == [
        ("create_repo", ("vivid-org/vividhead-mini",), {"repo_type": "dataset", "private": True, "exist_ok": True}),
        ("upload_folder", (), {"repo_id": "vivid-org/vividhead-mini", "folder_path": str(carded.resolve()),
                               "repo_type": "dataset", "allow_patterns": list(ALLOW_PATTERNS),
                               "commit_message": "Publish vividhead dataset"}),
    ]
    dry = RecordingApi()
    assert publish(carded, "vivid-org/vividhead-mini", dry_run=True, api=dry) == items and dry.calls == []


def test_huggingface_hub_uploads_exactly_the_planned_files(carded, expected, monkeypatch):
    """Run the real HfApi.upload_folder down to the commit step and capture its add operations."""
    import huggingface_hub._upload_pipeline as pipeline

    captured = {}

    def fake_pipelined_upload(api, **kw):
        captured["ops"] = kw["add_operations"]
        captured["repo_type"] = kw["repo_type"]

    def fake_create_commit(self, **kw):
        captured["ops"] = [op for op in kw["operations"] if hasattr(op, "path_or_fileobj")]
        captured["repo_type"] = kw["repo_type"]

    monkeypatch.setattr(pipeline, "pipelined_upload", fake_pipelined_upload)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: None)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **kw: None)
    publish(carded, "vivid-org/vividhead-mini", api=HfApi(token="hf_not_a_real_token"))
    assert captured["repo_type"] == "dataset"
    ops = captured["ops"]
    assert [op.path_in_repo for op in ops] == expected
    assert [str(op.path_or_fileobj) for op in ops] == [str((carded / p).resolve()) for p in expected]


def test_publish_refuses_bad_inputs(out_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="vividhead card"):
        plan_upload(out_dir)  # no README.md yet
    write_card(out_dir)
    with pytest.raises(ValueError, match="ORG/NAME"):
        publish(out_dir, "no-slash", api=RecordingApi())
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["publish", str(tmp_path / "missing"), "--repo-id", "a/b", "--dry-run"])
    assert res.exit_code == 2 and "is not a directory" in " ".join(res.output.replace("│", " ").split())


def test_live_upload_when_token_and_repo_are_set(carded, expected):
    from huggingface_hub import get_token

    repo = os.environ.get("VIVIDHEAD_HUB_TEST_REPO")
    if not get_token() or not repo:
        pytest.skip("live Hub upload needs a token (HF_TOKEN or `hf auth login`) and "
                    "VIVIDHEAD_HUB_TEST_REPO=ORG/NAME (a scratch dataset repo); not run")
    publish(carded, repo, private=True)
    files = set(HfApi().list_repo_files(repo, repo_type="dataset"))
    assert set(expected) <= files
