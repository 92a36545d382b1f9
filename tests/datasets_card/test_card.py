"""Tests for datasets_card/card.py and the `card` command."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from vividhead.datasets_card.card import CardOptions, size_category, validate_card, write_card
from vividhead.datasets_card.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_metadata_parses_back_with_huggingface_hub(carded_dir):
    readme = carded_dir / "README.md"
    card = DatasetCard.load(readme, repo_type="dataset")
    d = card.data.to_dict()
    assert d["license"] == "other" and d["license_name"] == "vividhead-source-terms"
    assert d["task_categories"] == ["image-to-video"]
    assert d["size_categories"] == ["n<1K"]
    assert d["language"] == ["de", "en", "zh"]  # "unknown lang" is not an ISO code: body only
    assert d["pretty_name"] == "VividHead" and "talking-head" in d["tags"]
    assert d["configs"] == [
        {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "shards/*.tar"}]},
    ]
    assert validate_card(readme.read_text()).to_dict() == d


def test_validate_card_rejects_incomplete_metadata():
    with pytest.raises(ValueError, match="no task_categories"):
        validate_card("---\nlicense: mit\nsize_categories: [n<1K]\nconfigs: [{config_name: a, data_files: x}]\n---\nbody")
    with pytest.raises(ValueError, match="license_name"):
        validate_card("---\nlicense: other\ntask_categories: [image-to-video]\nsize_categories: [n<1K]\n"
                      "configs: [{config_name: a, data_files: x}]\n---\nbody")


def test_stage_order():
    from vividhead.datasets_card.card import stage_order

    stages = {k: {} for k in ("dedup", "face", "my_new_stage", "probe", "write")}
    assert stage_order({"stages": stages}) == ["probe", "dedup", "face", "write", "my_new_stage"]
    assert stage_order({"stages": stages, "stage_order": ["write", "face"]}) == [
        "write", "face", "dedup", "my_new_stage", "probe"]


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 330_000, 5_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "1M<n<10M"]


def test_totals_funnel_and_reasons(carded_dir):
    from vividhead.curation import __version__

    text = (carded_dir / "README.md").read_text()
    assert "| clips | 5 |" in text
    assert "| hours | 0.00 |" in text and "| frames | 253 |" in text  # 41 + 41 + 45 + 45 + 81
    assert "| speakers | 4 (distinct source videos; no speaker ids) |" in text
    assert "| languages | 4 (de, en, unknown lang, zh) |" in text
    assert f"| pipeline version | {__version__} |" in text
    assert re.search(r"\| pipeline wall time \| \d+\.\d\d h \|", text)
    section = text.split("## Filtering funnel")[1].split("![")[0]
    stats = json.loads((carded_dir / "stats.json").read_text())
    ran = {name for name, section_cfg in stats["config"].items() if section_cfg.get("enabled", True)}
    funnel = [line for line in section.splitlines() if re.match(r"\| [a-z_]+ \| \d", line)
              and line.split("|")[1].strip() in ran]
    # The stages that ran, in pipeline order (stats.json has sorted keys); the last column is seconds.
    assert [line.rsplit("|", 2)[0] for line in funnel] == [
        "| probe | 9 | 8 | 1 | `no_audio` 1 ",
        "| dedup | 8 | 7 | 1 | `duplicate_md5` 1 ",
        "| scene_split | 7 | 7 | 1 | `too_short` 1 ",
        "| face | 7 | 6 | 1 | `no_face` 1 ",
        "| normalize | 6 | 5 | 1 | `silent_audio` 1 ",
        "| face_mask | 5 | 5 | 0 | - ",
        "| audio_features | 5 | 5 | 0 | - ",
        "| write | 5 | 5 | 0 | - ",
    ]
    assert all(float(line.rsplit("|", 2)[1]) >= 0 for line in funnel)
    assert "| normalize | `silent_audio` | 1 |" in text and "| face | `no_face` | 1 |" in text
    # Null scores are counted as null, not as zeros.
    assert "| SyncNet confidence LSE-C (`lse_c`) | 4 | 1 | 5.20 | 7.00 | 6.83 | 8.10 |" in text
    assert "| Speech share (`speech_share`) | 4 | 1 | 0.60 | 0.75 | 0.75 | 0.90 |" in text
    assert "min_lse_c: 3.0" in text and "## Ethics and licence" in text
    assert "without the rights holder's permission" in text


def test_charts_exist_and_are_embedded(carded_dir):
    text = (carded_dir / "README.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((card/[^)]+\.png)\)", text)
    charts = sorted((carded_dir / "card").glob("*.png"))
    assert sorted(linked) == [p.relative_to(carded_dir).as_posix() for p in charts]
    assert {Path(p).stem for p in linked} == {"funnel", "duration_s", "lse_c", "lse_d", "face_px", "speech_share",
                                              "language"}
    for p in charts:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"Software" not in data and b"matplotlib" not in data  # no version stamp
        assert int.from_bytes(data[16:20], "big") == 640  # 6.4 in at 100 dpi


def test_card_is_byte_identical_across_runs(carded_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("manifest.parquet", "stats.json"):
        shutil.copy(carded_dir / name, copy / name)
    second = write_card(copy)  # a fresh run from the manifest and stats alone
    assert second.readme.read_bytes() == (carded_dir / "README.md").read_bytes()
    assert sorted(p.name for p in second.charts) == sorted(p.name for p in (carded_dir / "card").glob("*.png"))
    for p in second.charts:
        assert p.read_bytes() == (carded_dir / "card" / p.name).read_bytes(), p.name


def test_card_without_scores_says_no_data(out_dir):
    table = pq.read_table(out_dir / "manifest.parquet")
    import pyarrow as pa

    for col in ("lse_c", "lse_d"):
        i = table.column_names.index(col)
        table = table.set_column(i, col, pa.nulls(table.num_rows, pa.float64()))
    pq.write_table(table, out_dir / "manifest.parquet")
    text = write_card(out_dir).readme.read_text()
    assert "| SyncNet confidence LSE-C (`lse_c`) | 0 | 5 | n/a | n/a | n/a | n/a |" in text


def test_disabled_stages_are_off_in_the_table_and_the_chart(tmp_path):
    import json

    from vividhead.curation.records import manifest_table
    from vividhead.datasets_card.charts import _context, funnel_figure

    pq.write_table(manifest_table([{"input_id": "a", "source_id": "a", "status": "rejected", "stage": "face",
                                    "reason": "no_face"}]), tmp_path / "manifest.parquet")
    on = {"enabled": True, "dropped": {}, "seconds": 1.0}
    stats = {"stage_order": ["probe", "face", "occlusion", "syncnet"],  # stats.json of a run with occlusion off
             "stages": {"probe": {**on, "in": 1, "out": 1}, "face": {**on, "in": 1, "out": 0, "dropped": {"no_face": 1}},
                        "occlusion": {"enabled": False}, "syncnet": {**on, "in": 0, "out": 0}}}
    (tmp_path / "stats.json").write_text(json.dumps(stats, sort_keys=True))
    text = write_card(tmp_path).readme.read_text()
    funnel = text.split("## Filtering funnel")[1].split("![")[0]
    assert "| occlusion | off | off | - | stage disabled | - |" in funnel
    assert "| face | 1 | 0 | 1 | `no_face` 1 | 1.0 |" in funnel and "Stages marked `off` were disabled" in funnel
    with _context():
        fig = funnel_figure(["face", "occlusion", "syncnet"], [9, 0, 7], [7, 0, 5], off=[False, True, False])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["face", "occlusion (off)", "syncnet"]
    assert len(ax.patches) == 4  # in/out bars for the two stages that ran, none for the one that was off
    assert any("off" in t.get_text() for t in ax.texts)


def test_card_options_license(out_dir):
    res = write_card(out_dir, CardOptions(license="cc-by-4.0", pretty_name="Tiny"))
    d = DatasetCard.load(res.readme).data.to_dict()
    assert d["license"] == "cc-by-4.0" and "license_name" not in d and d["pretty_name"] == "Tiny"


def test_card_command(out_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["card", str(out_dir), "--pretty-name", "VividHead-mini"])
    assert res.exit_code == 0, res.output
    assert "5 clips" in res.output and "4 speakers" in res.output
    assert (out_dir / "README.md").read_text().startswith("---\n")
    res = runner.invoke(_app(), ["card", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "manifest.parquet not found" in " ".join(res.output.replace("│", " ").split())


def test_card_configs_load_with_datasets(carded_dir, tmp_path):
    import datasets

    from vividhead.training.data import hf_features

    out_dir = carded_dir
    manifest = datasets.load_dataset("parquet", data_files=str(out_dir / "manifest.parquet"), split="train",
                                     cache_dir=str(tmp_path / "c1"))
    assert manifest.num_rows == pq.read_metadata(out_dir / "manifest.parquet").num_rows
    shards = sorted(str(p) for p in (out_dir / "shards").glob("*.tar"))
    clips = datasets.load_dataset(str(out_dir), "default", split="train", cache_dir=str(tmp_path / "c2"),
                                  features=hf_features(shards))
    assert sorted(clips["__key__"]) == ["talk_hdtf_aoc_512-0000", "talk_retalking_face2-0000", "talk_retalking_face2-0001",
                                        "talk_retalking_face3-0000", "talk_retalking_face5-0000"]


def test_card_validates_on_the_hub_when_online(carded_dir):
    from huggingface_hub import get_token

    if os.environ.get("HF_HUB_OFFLINE") == "1" or not get_token():
        pytest.skip("no Hugging Face token (HF_TOKEN or `hf auth login`): Hub YAML validation not run")
    DatasetCard((carded_dir / "README.md").read_text()).validate(repo_type="dataset")
