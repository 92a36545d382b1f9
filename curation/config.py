"""Typed, frozen configuration for the curation pipeline, loaded from YAML.

The YAML file has one section per stage, named as the stage (``probe``, ``dedup``, ``scene_split``,
...), plus a ``run`` section for job-wide settings. Each section's dataclass sits with its stage
(``FaceConfig`` in ``curation/stages/face.py``, found as ``FaceStage.config_class``);
:class:`CurateConfig` has one field per stage of :data:`vividhead.curation.stage_list.STAGES`, in
pipeline order. Every section has ``enabled`` (default true; required stages refuse ``false``) and
the stage's parameters. Unknown sections or keys and values of the wrong type fail at load with a
one-line :class:`ConfigError` naming the key (:mod:`vividhead.config` is the loader).

Example::

    face:
      min_face_px: 128
      face_share: 0.6
    transition:
      enabled: false
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vividhead.config import ConfigError, build_dataclass, check, read_yaml, to_dict, validate_section
from vividhead.curation.stage import StageConfig
from vividhead.curation.stage_list import STAGES

__all__ = ["SECTIONS", "ConfigError", "CurateConfig", "RunConfig", "StageConfig", "config_from_dict", "load_config"]


@dataclass(frozen=True)
class RunConfig:
    """Job-wide settings.

    Attributes:
        cache_dir: node-local folder for downloaded inputs and weights (``~/.cache/vividhead``).
        storage_options: fsspec options for remote URLs (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
        group_frame_stages: run consecutive frame stages (face visibility ... face masks) in one
            actor over one decode and one face track of each clip (same results); false gives one
            Ray operator per stage.
        chain_stages: run each run of consecutive CPU stages that includes a model stage
            (scene_split ... face masks offline) in one actor pool, each row through all of them
            in one worker (same results; fewer actor processes and no transfer of the row between
            them); false gives one Ray operator per stage (or frame group).
    """

    cache_dir: Optional[str] = None
    storage_options: dict = field(default_factory=dict)
    group_frame_stages: bool = True
    chain_stages: bool = True

    def validate(self, section: str) -> None:
        check(isinstance(self.storage_options, dict), f"{section}.storage_options", "must be a mapping")


#: Section name -> config class: ``run``, then every stage in pipeline order.
SECTIONS: dict[str, type] = {"run": RunConfig, **{s.name: s.config_class for s in STAGES}}


class _CurateConfigMethods:
    """Methods of :class:`CurateConfig` (its fields come from the stage list)."""

    def __post_init__(self) -> None:
        validate_section(self.run, "run")
        for stage in STAGES:
            section = getattr(self, stage.name)
            check(isinstance(section, stage.config_class), stage.name,
                  f"expected {stage.config_class.__name__}, got {type(section).__name__}")
            validate_section(section, stage.name)
            check(section.enabled or not stage.required, f"{stage.name}.enabled", "this stage cannot be disabled")
            check(section.workers is None or section.min_workers is None, f"{stage.name}.min_workers",
                  "cannot be set with workers (a fixed pool of that size): keep one of them")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) of every section."""
        return to_dict(self)


#: The whole pipeline configuration: a frozen dataclass with ``run`` and one field per stage
#: (named as the stage, typed by its ``config_class``, defaulting to that class's defaults).
CurateConfig = dataclasses.make_dataclass(
    "CurateConfig",
    [(name, cls, field(default_factory=cls)) for name, cls in SECTIONS.items()],
    bases=(_CurateConfigMethods,),
    frozen=True,
)
CurateConfig.__module__ = __name__  # pickled by reference, like a class written out here
CurateConfig.__doc__ = "The whole pipeline configuration: ``run`` plus one frozen section per stage, in pipeline order."


def config_from_dict(raw: Optional[dict], sections: Optional[dict[str, type]] = None) -> CurateConfig:
    """Build a :class:`CurateConfig` from a nested dict (e.g. parsed YAML).

    Raises:
        ConfigError: unknown section or key, or an invalid value; the message names the key.
    """
    sections = sections or SECTIONS
    raw = raw or {}
    check(isinstance(raw, dict), "config", "top level must be a mapping of sections")
    built = {}
    for name, value in raw.items():
        check(name in sections, str(name), f"unknown section (known: {', '.join(sections)})")
        built[name] = build_dataclass(name, sections[name], value)
    try:
        return CurateConfig(**built)
    except TypeError as exc:  # a section the dataclass does not know
        raise ConfigError(str(exc)) from exc


def load_config(path: Optional[str | Path]) -> CurateConfig:
    """Load a YAML config file; ``None`` gives the defaults.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key or invalid value.
    """
    if path is None:
        return CurateConfig()
    return config_from_dict(read_yaml(path))
