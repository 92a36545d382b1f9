"""A fast curation config for the scale-out and fault tests: only the required stages run.

Every optional section is disabled (whatever stages the stage list holds), scene
detection is off (one clip per input or per given time span), so a 1 s span costs one short FFmpeg
re-encode. Shared by test_s3, test_fault_tolerance, test_security and test_cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vividhead.curation.config import SECTIONS, CurateConfig, config_from_dict

REQUIRED = ("run", "probe", "dedup", "scene_split", "normalize", "write")


def fast_config_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """Raw config: optional stages off, ``scene_split.detector: none``, ``min_clip_s: 1``.

    Keyword arguments update sections: ``fast_config_dict(write={"samples_per_shard": 1})``.
    """
    raw: dict[str, Any] = {name: {"enabled": False} for name in SECTIONS if name not in REQUIRED}
    raw["scene_split"] = {"detector": "none", "min_clip_s": 1.0}
    raw["normalize"] = {"preset": "ultrafast"}
    for name, values in sections.items():
        raw.setdefault(name, {})
        raw[name] = {**raw[name], **values}
    return raw


def fast_config(**sections: dict[str, Any]) -> CurateConfig:
    """:func:`fast_config_dict` loaded into a :class:`CurateConfig`."""
    return config_from_dict(fast_config_dict(**sections))


def write_fast_config(path: Path, **sections: dict[str, Any]) -> Path:
    """:func:`fast_config_dict` as a YAML file at ``path`` (for ``python -m vividhead.curation --config``)."""
    path.write_text(yaml.safe_dump(fast_config_dict(**sections), sort_keys=False))
    return path
