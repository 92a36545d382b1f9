"""Typed YAML configs: frozen dataclasses built from nested mappings, validated at load.

One loader for every config of the package (curation's ``CurateConfig``, the trainers' configs):
an unknown key or a value of the wrong type fails at load with a one-line message that names the
key (``optim.lr: expected a number, got 'fast'``). A field's range is declared with the field
(:func:`bounded`, checked by :func:`check_bounds`); a dataclass's own ``validate(section)`` adds the
checks that are not one field's range, and ``__post_init__`` may raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import types
import typing
from dataclasses import dataclass
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


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_BOUND = r"-?\d+(?:\.\d+)?(?:e-?\d+)?|[a-z_]\w*"  # a number, or the name of another field
_RULE = re.compile(
    rf"(?:(?P<op>>=|<=|>|<) (?P<bound>{_BOUND})|in (?P<open>[\[(])(?P<lo>{_BOUND}), (?P<hi>{_BOUND})(?P<close>[\])]))"
    r"(?P<null> or null)?(?: \(.+\))?"
)


@dataclass(frozen=True)
class Bounds:
    """The range of a config field, written as its error message ends: ``"must be " + rule``.

    ``rule`` is ``OP BOUND`` (``> 0``, ``>= 1``) or an interval ``in [LO, HI)`` (square bracket:
    closed end, parenthesis: open end), optionally followed by ``or null`` (``None`` passes) and a
    parenthesised note. A bound is a number or the name of another field of the same dataclass
    (``>= min_clip_s``). A tuple value passes when every item does.

    Raises:
        ValueError: ``rule`` is not of that form (at import of the config class).
    """

    rule: str

    def __post_init__(self) -> None:
        if _RULE.fullmatch(self.rule) is None:
            raise ValueError(f"not a range rule: {self.rule!r}")

    def holds(self, value: Any, obj: Any) -> bool:
        """Whether ``value`` (a field of ``obj``, whose other fields a bound may name) is in range."""
        if isinstance(value, tuple):
            return all(self.holds(v, obj) for v in value)
        m = _RULE.fullmatch(self.rule)
        if value is None:
            return m["null"] is not None

        def bound(text: str) -> Any:
            return getattr(obj, text) if text[0].isalpha() or text[0] == "_" else float(text)

        if m["op"]:
            return _OPS[m["op"]](value, bound(m["bound"]))
        return (_OPS[">=" if m["open"] == "[" else ">"](value, bound(m["lo"]))
                and _OPS["<=" if m["close"] == "]" else "<"](value, bound(m["hi"])))


def bounded(default: Any, rule: str) -> Any:
    """A dataclass field with ``default`` whose value must satisfy ``rule`` (:class:`Bounds`):
    ``min_face_px: int = bounded(128, ">= 1")``. :func:`check_bounds` checks it at load."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(rule)})


def check_bounds(obj: Any, section: str) -> None:
    """Check every :func:`bounded` field of the dataclass ``obj``, in declaration order (a field that
    a subclass redefines with another default keeps its base's range).

    Raises:
        ConfigError: ``"{section}.{field}: must be {rule}"`` for the first field out of range.
    """
    for f in dataclasses.fields(obj):
        # A subclass that only changes a field's default keeps the range its base declared.
        bounds = next((k.__dataclass_fields__[f.name].metadata["bounds"] for k in type(obj).__mro__
                       if f.name in getattr(k, "__dataclass_fields__", {})
                       and "bounds" in k.__dataclass_fields__[f.name].metadata), None)
        if bounds is not None:
            key = f"{section}.{f.name}" if section else f.name
            check(bounds.holds(getattr(obj, f.name), obj), key, f"must be {bounds.rule}")


def validate_section(obj: Any, section: str) -> None:
    """Validate a built config dataclass: its field ranges (:func:`check_bounds`), then its own
    ``validate(section)`` (checks across fields) when the class defines one.

    Raises:
        ConfigError: naming the first key out of range.
    """
    check_bounds(obj, section)
    if hasattr(obj, "validate"):
        obj.validate(section)


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

    Validates the result (:func:`validate_section`: field ranges, then the class's ``validate(name)``).

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
    validate_section(obj, name)
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
