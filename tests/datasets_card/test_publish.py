"""Tests for datasets_card/publish.py and the `publish` command (no network unless a token is set)."""

from __future__ import annotations

import os

import pytest
import typer
from huggingface_hub import HfApi
from typer.testing import CliRunner

import vividhead.datasets_card.publish as publish_mod
from vividhead.datasets_card.card import write_card
from vividhead.datasets_card.cli import register
from vividhead.datasets_card.publish import ALLOW_PATTERNS, plan_upload, publish

EXPECTED = [
    "README.md",
    "card/duration_s.png",
    "card/face_px.png",
    "card/funnel.png",
    "card/language.png",
    "card/lse_c.png",
    "card/lse_d.png",
    "card/speech_share.png",
    "manifest.parquet",
    "shards/00000.tar",
    "shards/00001.tar",
    "shards/00002.tar",
    "stats.json",
]


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


def test_plan_lists_exactly_the_dataset_files(carded):
    items = plan_upload(carded)
    assert [i.path_in_repo for i in items] == EXPECTED
    assert all(i.local_path == (carded / i.path_in_repo).resolve() for i in items)
    assert all(i.size == i.local_path.stat().st_size for i in items)


def test_dry_run_command_lists_files_and_destinations(carded, monkeypatch):
    def no_api(*a, **k):
        raise AssertionError("dry run must not talk to the Hub")

    monkeypatch.setattr(publish_mod, "HfApi", no_api)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["publish", str(carded), "--repo-id", "vivid-org/vividhead-mini", "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith(f"would upload {len(EXPECTED)} files (")
    assert lines[0].endswith("to https://huggingface.co/datasets/vivid-org/vividhead-mini (public)")
    assert lines[1:] == [
        f"  {(carded / p).resolve()} -> hf://datasets/vivid-org/vividhead-mini/{p} "
        f"({(carded / p).stat().st_size} B)"
        for p in EXPECTED
    ]


def test_publish_operations(carded):
    api = RecordingApi()
    items = publish(carded, "vivid-org/vividhead-mini", private=True, api=api)
    assert [i.path_in_repo for i in items] == EXPECTED
    assert api.calls == [
        ("create_repo", ("vivid-org/vividhead-mini",), {"repo_type": "dataset", "private": True, "exist_ok": True}),
        ("upload_folder", (), {"repo_id": "vivid-org/vividhead-mini", "folder_path": str(carded.resolve()),
                               "repo_type": "dataset", "allow_patterns": list(ALLOW_PATTERNS),
                               "commit_message": "Publish vividhead dataset"}),
    ]
    dry = RecordingApi()
    assert publish(carded, "vivid-org/vividhead-mini", dry_run=True, api=dry) == items and dry.calls == []


def test_huggingface_hub_uploads_exactly_the_planned_files(carded, monkeypatch):
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
    assert [op.path_in_repo for op in ops] == EXPECTED
    assert [str(op.path_or_fileobj) for op in ops] == [str((carded / p).resolve()) for p in EXPECTED]


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


def test_live_upload_when_token_and_repo_are_set(carded):
    from huggingface_hub import get_token

    repo = os.environ.get("VIVIDHEAD_HUB_TEST_REPO")
    if not get_token() or not repo:
        pytest.skip("live Hub upload needs a token (HF_TOKEN or `hf auth login`) and "
                    "VIVIDHEAD_HUB_TEST_REPO=ORG/NAME (a scratch dataset repo); not run")
    publish(carded, repo, private=True)
    files = set(HfApi().list_repo_files(repo, repo_type="dataset"))
    assert set(EXPECTED) <= files
