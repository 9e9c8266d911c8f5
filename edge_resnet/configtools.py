"""Typed dataclass config from TOML tables, checked at load time. Every problem of a file is
collected in one pass (a file with four mistakes takes one run to fix, not four), each one line
naming `[table] key` and the fix, with "did you mean" for a near miss."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .errors import ConfigError

T = TypeVar("T")


class ConfigErrors(ConfigError):
    """Several problems at once. Its message is the first, so it reads as any ConfigError (one line);
    `errors` holds them all, for `config check` to list."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors[0])
        self.errors = list(errors)


def error_lines(e: ConfigError) -> list[str]:
    """Every problem a ConfigError stands for (a plain one stands for itself)."""
    return list(e.errors) if isinstance(e, ConfigErrors) else [str(e)]


class ErrorCollector:
    """Where loading puts each problem and goes on with the key's default, instead of stopping."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

    def raise_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice a typo most likely meant: edit distance (a swap counts one) at most 2, or 1 for
    words of up to four letters, where 2 would match almost anything."""
    limit = 1 if len(word) <= 4 else 2
    best = min(((_distance(word.lower(), c.lower()), c) for c in choices), default=None)
    return best[1] if best is not None and best[0] <= limit else None


def _distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions ('devcie' is one step from 'device')."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def hint(word: object, choices: Iterable[str], otherwise: str) -> str:
    """"did you mean `x`?" for a near miss, else `otherwise` (the short list of what is known)."""
    near = did_you_mean(word, choices) if isinstance(word, str) else None
    return f"did you mean `{near}`?" if near else otherwise


def key_label(section: str, name: str) -> str:
    """How a message names a key: `[model] threads`, `[model.preprocess] mean`, or a top-level `device_id`."""
    return f"[{section}] {name}" if section else name


def from_dict(cls: type[T], data: Any, section: str) -> T:
    """Build dataclass `cls` from a TOML table, or raise one ConfigError carrying all its problems."""
    errors = ErrorCollector()
    built = build_table(cls, data, section, errors)
    errors.raise_any()
    assert built is not None  # nothing was wrong, so it built
    return built


def build_table(cls: type[T], data: Any, section: str, errors: ErrorCollector) -> T | None:
    """`cls` from a TOML table with every problem put in `errors`: a bad key falls back to its
    default so the rest is still checked. None when the table cannot be built at all."""
    if not isinstance(data, dict):
        errors.add(f"[{section}] must be a table, got {type(data).__name__}")
        return None
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            known = f"known keys: {', '.join(sorted(fields))}"
            errors.add(f"[{section}] unknown key {name!r}; {hint(name, fields, known)}")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):  # a sub-table: [model.preprocess]
            sub = build_table(tp, value, f"{section}.{name}" if section else name, errors)
            if sub is not None:
                kwargs[name] = sub
            continue
        try:
            kwargs[name] = coerce(tp, value, key_label(section, name))
        except ConfigError as e:
            errors.add(str(e))
    missing = [n for n, f in fields.items() if n not in data and _required(f)]
    for name in missing:
        errors.add(f"[{section}] missing key {name!r}; add it (see deploy/config.example.toml)")
    return None if missing else construct(cls, kwargs, section, errors)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def construct(cls: type[T], kwargs: dict[str, Any], section: str, errors: ErrorCollector) -> T | None:
    """`cls(**kwargs)`, running its `__post_init__` checks, which raise at the first bad value. Each
    failure is recorded, and the key it is about (the one whose default makes that failure go) falls
    back to its default, until the table builds: so every bad value of a table is named, with no
    change to the tables' own checks. A failure that names a key already put back to its default
    comes from that default (width without its height), so it is not a mistake of its own. None when
    a failure is about no key that has a default."""
    kwargs = dict(kwargs)
    required = {f.name for f in dataclasses.fields(cls) if f.init and _required(f)}  # type: ignore[arg-type]
    dropped: list[str] = []
    while True:
        try:
            return cls(**kwargs)
        except ConfigError as e:
            problem = str(e)
        except TypeError as e:
            errors.add(f"[{section}] {e}" if section else str(e))
            return None
        if not any(re.search(rf"\b{re.escape(k)}\b", problem) for k in dropped):
            errors.add(problem)
        droppable = [k for k in kwargs if k not in required]
        culprit = next((k for k in droppable if _fixes(cls, _without(kwargs, k), problem)), None)
        if culprit is None:
            return None
        del kwargs[culprit]
        dropped.append(culprit)


def _without(kwargs: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != key}


def _fixes(cls: type[Any], kwargs: dict[str, Any], problem: str) -> bool:
    """Whether these arguments get past `problem`: they build, or fail about another key."""
    try:
        cls(**kwargs)
    except ConfigError as e:
        return str(e).split(":", 1)[0] != problem.split(":", 1)[0]
    except (TypeError, ValueError):  # a check that needs this key set: it is not the one to drop
        return False
    return True


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type `tp` (TOML gives int/float/str/bool/list/dict), converting where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            near = did_you_mean(value, map(str, choices)) if isinstance(value, str) else None
            mean = f"; did you mean `{near}`?" if near else ""
            raise ConfigError(f"{key}: {value!r} is not one of {listed}{mean}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        inner = args[0] if args else Any
        items = [coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: unsupported value {value!r} for {tp}")


def check_range(key: str, value: float, lo: float, hi: float, unit: str) -> None:
    """Every numeric key is range-checked here: a finite number in [lo, hi], or one line naming it."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{key}: {value!r} is out of range; use {lo:g}..{hi:g} ({unit})")
