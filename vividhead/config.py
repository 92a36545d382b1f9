"""Typed YAML configs: frozen dataclasses built from nested mappings, validated at load.

One loader for every config of the package (curation's ``CurateConfig``, the trainers' configs):
an unknown key or a value of the wrong type fails at load with a one-line message that names the
key (``optim.lr: expected a number, got 'fast'``); the dataclasses' own ``validate(section)`` or
``__post_init__`` checks ranges.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from vividhead.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is unknown or invalid; the message names the key (``face.min_face_px``).

    A :class:`~vividhead.errors.UserError`: the CLI prints it as one line and exits with code 2.
    """


def check(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` ``"{key}: {msg}"`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless.

    Ints are accepted for floats, lists for tuples, nested mappings for dataclasses (recursively,
    keys named ``key.sub``).

    Raises:
        ConfigError: the value does not fit the annotation.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        check(value is not None, key, "must not be null")
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is Literal:
        check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(key, tp, value)
    if tp is bool:
        check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if tp is tuple or origin is tuple:
        check(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args:
            check(len(value) == len(args), key, f"expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if tp is dict or origin is dict:
        check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return value
    return value


def build_dataclass(name: str, cls: type, raw: Any) -> Any:
    """Build the dataclass ``cls`` from its raw mapping (``None`` gives the defaults); ``name`` is
    the key path used in messages (``""`` for the top level).

    Calls ``validate(name)`` on the result when the class defines it.

    Raises:
        ConfigError: ``raw`` is not a mapping, has an unknown key, or a value of the wrong type or
            out of range (``__post_init__`` ``ValueError`` s are re-raised naming ``name``).
    """
    if raw is None:
        raw = {}
    if isinstance(raw, cls):
        return raw
    check(isinstance(raw, dict), name or "config", f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        full = f"{name}.{key}" if name else str(key)
        removed = getattr(cls, "REMOVED_KEYS", {}).get(key)  # a ClassVar {key: hint} of keys no longer settable
        check(removed is None, full, f"unknown key ({removed})")
        check(key in known, full, f"unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = coerce(value, hints[key], full)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name or 'config'}: {exc}") from exc
    if hasattr(obj, "validate"):
        obj.validate(name)
    return obj


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file.

    Raises:
        ConfigError: unreadable file or invalid YAML (one line, naming the file).
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain nested dict (YAML/JSON-serialisable: tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))
