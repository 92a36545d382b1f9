"""Field ranges declared with :func:`vividhead.config.bounded`: the rule is the message's end, one
line naming the key; a subclass that changes a default keeps its base's range."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from vividhead.config import Bounds, ConfigError, bounded, build_dataclass, check_bounds


@dataclasses.dataclass(frozen=True)
class _Section:
    count: int = bounded(1, ">= 1")
    share: float = bounded(0.5, "in (0, 1]")
    limit: Optional[int] = bounded(None, ">= count or null")
    betas: tuple[float, float] = bounded((0.9, 0.99), "in [0, 1)")
    window_s: float = bounded(30.0, "in (0, 30] (Whisper's window)")


@dataclasses.dataclass(frozen=True)
class _Child(_Section):
    count: int = 4  # a new default, the same range


@pytest.mark.parametrize(("raw", "message"), [
    ({"count": 0}, "sec.count: must be >= 1"),
    ({"share": 0}, "sec.share: must be in (0, 1]"),
    ({"limit": 0}, "sec.limit: must be >= count or null"),
    ({"betas": [0.5, 1.0]}, "sec.betas: must be in [0, 1)"),
    ({"window_s": 31}, "sec.window_s: must be in (0, 30] (Whisper's window)"),
])
def test_out_of_range_is_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        build_dataclass("sec", _Section, raw)
    assert str(err.value) == message


def test_in_range_passes_and_null_only_where_the_rule_says():
    built = build_dataclass("sec", _Section, {"count": 2, "share": 1, "limit": 2, "betas": [0, 0.5], "window_s": 30})
    assert built.limit == 2
    check_bounds(_Section(limit=None), "sec")
    with pytest.raises(ConfigError, match=r"^sec\.count: must be >= 1$"):
        check_bounds(_Section(count=None), "sec")


def test_a_redefined_default_keeps_the_base_range():
    assert _Child().count == 4
    with pytest.raises(ConfigError, match=r"^child\.count: must be >= 1$"):
        build_dataclass("child", _Child, {"count": 0})


def test_a_malformed_rule_fails_at_definition():
    with pytest.raises(ValueError, match="not a range rule"):
        Bounds("at least 1")


def test_every_bound_names_fields_that_exist():
    """Every config class's rules parse, and a bound that names a field names one of its class."""
    from vividhead.curation.stage_list import STAGES
    from vividhead.training.trainers import config as train_config
    from vividhead.training.trainers.distill_config import DistillSection

    classes = [s.config_class for s in STAGES] + [DistillSection] + [
        c for c in vars(train_config).values() if dataclasses.is_dataclass(c)]
    checked = 0
    for cls in classes:
        check_bounds(cls(**({"shards": "x"} if cls is train_config.DataConfig else {})), cls.__name__)
        checked += sum("bounds" in f.metadata for f in dataclasses.fields(cls))
    assert checked > 40
