from __future__ import annotations

import dataclasses

import pytest

from vividhead.curation.config import ConfigError, CurateConfig, config_from_dict, load_config


def test_defaults_are_valid_and_frozen():
    cfg = CurateConfig()
    assert cfg.scene_split.min_clip_s == 5.0 and cfg.scene_split.max_clip_s == 50.0
    assert cfg.normalize.fps == 25.0 and cfg.normalize.sample_rate_hz == 16000
    assert cfg.normalize.out_size_px == 512
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.face.min_face_px = 3


def test_yaml_sections_load_into_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("face:\n  min_face_px: 96\ntransition:\n  enabled: false\nscene_split:\n  max_clip_s: 20\n")
    cfg = load_config(path)
    assert cfg.face.min_face_px == 96
    assert cfg.transition.enabled is False
    assert cfg.scene_split.max_clip_s == 20.0 and isinstance(cfg.scene_split.max_clip_s, float)
    assert cfg.probe.enabled is True


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"face": {"min_face_pix": 3}}, "face.min_face_pix"),
        ({"facee": {}}, "facee"),
        ({"face": {"min_face_px": "big"}}, "face.min_face_px"),
        ({"face": {"min_face_px": 1.5}}, "face.min_face_px"),
        ({"transition": {"enabled": "yes"}}, "transition.enabled"),
        ({"scene_split": {"detector": "magic"}}, "scene_split.detector"),
        ({"scene_split": {"min_clip_s": 10, "max_clip_s": 5}}, "scene_split.max_clip_s"),
        ({"face": {"face_share": 0}}, "face.face_share"),
        ({"normalize": {"sample_rate_hz": 16001}}, "normalize.sample_rate_hz"),
        ({"face": [1, 2]}, "face"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert message.startswith(key + ":") and "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("face: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
