"""The export format (vividhead/export_format.py): one writer, one reader, versions checked."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_models import TINY_LITE, TINY_PRO, write_tiny_export
from vividhead import export_format as ef
from vividhead.errors import UserError


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_tiny_export(tmp_path_factory.mktemp("export") / "export", TINY_PRO)


def test_round_trip_layout_and_metadata(export):
    assert sorted(p.name for p in export.iterdir()) == sorted(
        [ef.METADATA_FILE, ef.TRANSFORMER_DIR, ef.VAE_DIR, ef.AUDIO_ENCODER_DIR])
    assert not export.with_name(export.name + ".tmp").exists()
    info = ef.read_export(export)
    assert info.version == ef.FORMAT_VERSION == json.loads((export / ef.METADATA_FILE).read_text())["format"]
    assert info.variant == TINY_PRO  # shapes, streaming geometry and VAE kind survive the trip
    assert (info.weights, info.step, info.kind) == ("raw", 0, None)
    assert info.vae_config is not None and info.vae_config["_class_name"] == "AutoencoderKLWan"
    assert info.transformer_dir == export / ef.TRANSFORMER_DIR and ef.is_export(export)


def test_round_trip_records_kind_and_loads(tmp_path):
    from tests.tiny_models import tiny_models
    from vividhead.inference.pipeline import FlashHeadModels
    from vividhead.training.trainers.export import write_export
    from vividhead.training.trainers.models import FrozenEncoders

    m = tiny_models(TINY_LITE, seed=3)
    out = write_export(tmp_path / "e", m.transformer.state_dict(), TINY_LITE, FrozenEncoders(m.vae, m.audio_encoder),
                       weights="ema", step=7, source="ckpt", kind="distill")
    info = ef.read_export(out)
    assert (info.kind, info.weights, info.step, info.source, info.variant) == ("distill", "ema", 7, "ckpt", TINY_LITE)
    loaded = FlashHeadModels.from_export(out, device="cpu", dtype=torch.float32)
    assert loaded.variant == TINY_LITE
    sd = m.transformer.state_dict()
    assert all(torch.equal(v, sd[k].float()) for k, v in loaded.transformer.state_dict().items())


def test_other_version_fails_naming_both(export, tmp_path):
    import shutil

    other = tmp_path / "v3"
    shutil.copytree(export, other)
    meta = json.loads((other / ef.METADATA_FILE).read_text())
    meta["format"] = 3  # 1 and 2 (adapters kept apart) are read
    (other / ef.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ef.ExportFormatError) as exc:
        ef.read_export(other)
    msg = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in msg
    assert "version 3" in msg and f"version {ef.FORMAT_VERSION}" in msg and str(other) in msg


def test_missing_version_reads_as_version_1(export, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(export, old)
    meta = json.loads((old / ef.METADATA_FILE).read_text())
    del meta["format"]
    (old / ef.METADATA_FILE).write_text(json.dumps(meta))
    assert ef.read_export(old).version == 1


def test_not_an_export(tmp_path):
    with pytest.raises(ef.ExportFormatError, match="not a vividhead export"):
        ef.read_export(tmp_path)
    assert not ef.is_export(tmp_path)


def test_infer_checkpoint_of_another_version_is_one_line(export, tmp_path, capsys, image_dir, audio_dir):
    import shutil

    from vividhead import cli

    other = tmp_path / "v9"
    shutil.copytree(export, other)
    meta = json.loads((other / ef.METADATA_FILE).read_text())
    meta["format"] = 9
    (other / ef.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as exc:
        cli.main(["infer", "--checkpoint", str(other), "--image", str(image_dir / "face_frontal_happy_256.png"),
                  "--audio", str(audio_dir / "speech_jfk_16k.wav"),
                  "--out", str(tmp_path / "o.mp4"), "--device", "cpu", "--dtype", "fp32"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(err) == 1, err
    assert "version 9" in err[0] and f"version {ef.FORMAT_VERSION}" in err[0] and str(other) in err[0]
