from __future__ import annotations

import dataclasses

import pytest

from vividhead.curation.config import ConfigError, CurateConfig, config_from_dict, load_config


def test_defaults_are_valid_and_frozen():
    cfg = CurateConfig()
    assert cfg.scene_split.min_clip_s == 5.0 and cfg.scene_split.max_clip_s == 50.0
    assert not hasattr(cfg.normalize, "fps")  # the shard contract fixes fps, sample rate and frame size
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
        ({"normalize": {"crf": 60}}, "normalize.crf"),
        ({"face": [1, 2]}, "face"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert message.startswith(key + ":") and "\n" not in message


@pytest.mark.parametrize("raw, message", [
    ({"asd": {"min_workers": 0}}, "asd.min_workers: must be >= 1 or null"),
    ({"face": {"workers": 2, "min_workers": 4}}, "face.min_workers: cannot be set with workers"),
])
def test_min_workers_is_one_or_more_and_not_with_a_fixed_pool(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    cfg = config_from_dict({"asd": {"min_workers": 8}, "face": {"workers": 2}})
    assert (cfg.asd.min_workers, cfg.asd.workers, cfg.face.min_workers) == (8, None, None)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("face: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("key", "value", "constant"), [("fps", 20, "FPS = 25"), ("sample_rate_hz", 16000, "SAMPLE_RATE_HZ = 16000"),
                                                       ("out_size_px", 256, "FRAME_SIZE_PX = 512")])
def test_contract_values_are_not_configurable(tmp_path, key, value, constant):
    """A curate config that sets a value the shard contract fixes fails at load: one line naming
    the key and the contract's constant (vividhead/shard_format.py says why)."""
    path = tmp_path / "c.yaml"
    path.write_text(f"normalize:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"normalize.{key}: unknown key") and "\n" not in message
    assert "shard contract" in message and constant in message
