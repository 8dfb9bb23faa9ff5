"""Typed configs loaded from YAML: nested frozen dataclasses, validated with errors that name the key.

Numeric fields declare their valid range once, where they are defined (:func:`num`), and every
config's ``__post_init__`` calls :func:`check_fields`, so a config is checked the same way
whether it comes from YAML, a CLI flag or code. Floats must be finite everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from m2s_train.errors import ConfigError

T = TypeVar("T")

_BOUNDS = "m2s_bounds"


def num(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A numeric dataclass field (``default``, or ``factory`` for lists) with its valid range,
    applied to each element of a list/tuple; checked by :func:`check_fields`."""
    return dataclasses.field(default=default, default_factory=factory, metadata={_BOUNDS: (ge, gt, le, lt)})


def _range_problem(name: str, value: Any, bounds: tuple[Any, ...] | None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if bounds is None:
        return None
    ge, gt, le, lt = bounds
    for ok, text, limit in ((ge is None or value >= ge, ">=", ge), (gt is None or value > gt, ">", gt),
                            (le is None or value <= le, "<=", le), (lt is None or value < lt, "<", lt)):
        if not ok:
            return f"{name} must be {text} {limit:g}, got {value}"
    return None


def check_fields(config: Any) -> None:
    """Raise ``ValueError`` naming the field if a numeric field of ``config`` is out of range or not finite."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            problem = _range_problem(f.name, item, f.metadata.get(_BOUNDS))
            if problem:
                raise ValueError(problem)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`.

    Validation in the dataclass's ``__post_init__`` (ValueError) is re-raised naming ``where``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-serialisable) dict of a config dataclass."""
    return dataclasses.asdict(config)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file (or its defaults) and apply dotted overrides (``{"depth.backend": "x"}``).

    ``None`` overrides are ignored, so CLI flags that were not given leave the file's value.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: cannot override {dotted}: '{part}' is not a mapping")
        node[leaf] = value
    return from_dict(cls, data, where)
