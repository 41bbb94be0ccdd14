"""Typed, frozen dataclass configs: field metadata, type checks, the JSON wire format and CLI flags.

Every configuration (`MmAPConfig`, `TrainConfig`, `DataConfig`, `RunConfig`, `StudyConfig`) is a frozen
dataclass whose fields say, once, their type, default, help text and choices (`option`). From that one
declaration come:

- `check_types`: called by each `__post_init__`, so a value of the wrong type (a study file's `"10"` for
  an integer) fails with one line naming the field, the value and what is valid;
- `to_dict` / `from_dict`: the only wire format (plain JSON values; tuples become lists, enums their
  value, nested configs nested tables), used for Ray, `config.json`, `study.json`, Parquet rows and TOML;
- `add_arguments` / `parsed_values`: argparse flags named after the fields (`n_tokens` -> `--n-tokens`),
  so a new field is one line and every field can be set from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, TypeVar

from .parse import parse_json

T = TypeVar("T")


def option(default: Any, help: str, *, choices: Iterable | None = None, parse: Callable[[str], Any] | None = None):
    """A dataclass field with its help text; `parse` turns a command-line string into the field's value."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "parse": parse}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a dataclass (`from __future__ import annotations` makes them text)."""
    return typing.get_type_hints(cls)


def _args(tp: Any) -> tuple:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def describe(tp: Any) -> str:
    """What a valid value of type `tp` looks like, in words."""
    if _is_union(tp):
        parts = [describe(a) for a in _args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or None" if type(None) in _args(tp) else "")
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = _args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return f"a list of {describe(inner[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(inner)} values [{', '.join(describe(a) for a in inner)}]"
    if origin is dict:
        return "a table of name -> number"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in tp)
    if dataclasses.is_dataclass(tp):
        return f"a table of {tp.__name__} settings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def conforms(value: Any, tp: Any) -> bool:
    """Whether `value` is a valid value of type `tp` (bools are not numbers; ints are floats)."""
    if tp is Any:
        return True
    if _is_union(tp):
        return any(conforms(value, a) for a in _args(tp))
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = _args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        if len(inner) == 2 and inner[1] is Ellipsis:
            return all(conforms(v, inner[0]) for v in value)
        return len(value) == len(inner) and all(conforms(v, a) for v, a in zip(value, inner))
    if origin is dict:
        key, val = _args(tp)
        return isinstance(value, dict) and all(conforms(k, key) and conforms(v, val) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            tp(value)  # a value, or an alias the enum accepts (`_missing_`)
        except ValueError:
            return False
        return True
    return isinstance(value, tp)


def check_types(cfg: Any) -> None:
    """Raise ValueError naming the first field whose value does not have its annotated type."""
    name = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        tp, value = hints(type(cfg))[f.name], getattr(cfg, f.name)
        parse = f.metadata.get("parse")
        if parse and isinstance(value, str) and not conforms(value, tp):  # the string form: "0-2", "A+B|C"
            try:
                value = parse(value)
            except ValueError as e:
                raise ValueError(f"{name}.{f.name}={value!r} is not valid: {e}") from None
            object.__setattr__(cfg, f.name, value)
        if not conforms(value, tp):
            member = _args(tp)[0] if typing.get_origin(tp) is tuple else tp
            if isinstance(member, type) and issubclass(member, enum.Enum):
                raise ValueError(f"{name}.{f.name}={value!r} is not valid; choose one of {_values(member)}")
            raise ValueError(f"{name}.{f.name}={value!r} is not valid: it must be {describe(tp)}")
        if _beyond_int32(value):  # no setting needs more; tensor shapes and Parquet columns would overflow
            raise ValueError(f"{name}.{f.name}={value!r} is out of range: integers must lie in [-2**31, 2**31)")
        if isinstance(value, list):  # lists from JSON / TOML become the tuples the annotation says
            object.__setattr__(cfg, f.name, _tuples(value))
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ValueError(f"{name}.{f.name}={value!r} is not valid; choose one of {tuple(choices)}")


def _beyond_int32(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_beyond_int32(v) for v in value)
    if isinstance(value, dict):
        return any(_beyond_int32(v) for v in value.values())
    return isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**31


def _values(enum_type: type[enum.Enum]) -> str:
    return ", ".join(repr(e.value) for e in enum_type)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON values: nested configs as dicts, tuples as lists, enums as their values."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


CLOSE = 0.75  # difflib ratio for a suggestion: 'epocs'/'epochs' 0.91 is one, 'num_workers'/'n_tokens' 0.63 is not


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name `name` most likely meant: the closest spelling ('epocs' -> 'epochs'), else the one
    sharing the longest beginning or end with it, of 4+ letters ('model_name' -> 'model'); None if none is."""
    valid = list(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=CLOSE)
    if match:
        return match[0]

    def affix(v: str) -> int:
        short, long_ = sorted((v, name), key=len)
        return len(short) if len(short) >= 4 and (long_.startswith(short) or long_.endswith(short)) else 0

    best = max(valid, key=affix, default=None)
    return best if best is not None and affix(best) else None


def did_you_mean(unknown: Iterable[str], fields: Iterable[str], paths: Mapping[str, str] | None = None) -> str:
    """' (did you mean 'a' -> 'b'?)' for the closest field of each unknown name, or "'b' in [table]" when
    the closest is a setting of a nested table (`paths`: leaf name -> dotted path); '' when none is close."""
    fields, paths = list(fields), dict(paths or {})
    hints_ = []
    for u in unknown:
        m = closest(u, fields + [p for p in paths if p not in fields])
        if m in fields:
            hints_.append(f"{u!r} -> {m!r}")
        elif m is not None and "." in paths[m]:
            hints_.append(f"{m!r} in [{paths[m].rsplit('.', 1)[0]}]")
    return f" (did you mean {', '.join(hints_)}?)" if hints_ else ""


def leaf_paths(cls: type, prefix: str = "") -> dict[str, str]:
    """Every leaf field's name -> its dotted path in the config tree ('epochs' -> 'run.train.epochs')."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_paths(tp, f"{prefix}{f.name}."))
        else:
            out.setdefault(f.name, prefix + f.name)
    return out


def check_keys(cls: type, data: Any, where: str = "", recursive: bool = True) -> None:
    """Refuse keys that are not fields of `cls` (recursively), naming the valid ones and the closest match.

    A key that belongs to a nested table ('epochs' at the top of a study file) is pointed there.
    """
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table of settings, not {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = where.split(".", 1)[1] + "." if "." in where else ("" if where == cls.__name__ else where + ".")
        paths = {name: prefix + path for name, path in leaf_paths(cls).items()}
        elsewhere = {u: paths[u] for u in unknown if u in paths}
        hint = f" ({', '.join(f'{u!r} belongs in [{paths[u].rsplit(chr(46), 1)[0]}]' for u in elsewhere)})"
        hint = hint if elsewhere else did_you_mean(unknown, fields, paths)
        raise ValueError(f"{where} has unknown settings {unknown}{hint}; valid: {sorted(fields)}")
    for name, value in data.items() if recursive else ():
        tp = hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            check_keys(tp, value, f"{where}.{name}")


def from_dict(cls: type[T], data: Mapping, where: str | None = None) -> T:
    """The config `to_dict` wrote (or a TOML table / partial dict; missing fields take their defaults).

    Unknown keys are refused with the valid ones and the closest match; values are checked by the
    configs' own `__post_init__`. With `where` (e.g. "StudyConfig" for a study file), a nested config's
    errors name the setting by its path in the file ("StudyConfig.run.train.epochs=...") rather than by
    its class ("TrainConfig.epochs=...", what command-line errors say).
    """
    return _from_dict(cls, data, where, where or cls.__name__)


def _from_dict(cls: type[T], data: Mapping, where: str | None, path: str) -> T:
    """`from_dict` with `path`, the table's place in the whole dict, which unknown keys are named by."""
    check_keys(cls, data, path, recursive=False)  # nested tables: by their own _from_dict
    kwargs = {}
    for name, value in data.items():
        tp = hints(cls)[name]
        nested = f"{where}.{name}" if where else None
        kwargs[name] = _from_dict(tp, value, nested, f"{path}.{name}") if dataclasses.is_dataclass(tp) else value
    try:
        return cls(**kwargs)
    except ValueError as e:  # "TrainConfig.epochs=..." -> "StudyConfig.run.train.epochs=..."
        msg = str(e)
        if where and where != cls.__name__ and msg.startswith(cls.__name__ + "."):
            msg = where + msg[len(cls.__name__) :]
        raise ValueError(msg) from None


def parse_text(cls: type, path: str, text: str) -> Any:
    """The value of the field at dotted `path` of `cls` from its text form: the field's own parser, or its
    type ('4' -> 4, 'true' -> True, 'none' -> None); the config's checks then judge it."""
    head, _, rest = path.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    tp = hints(cls)[head]
    if rest:
        return parse_text(tp, rest, text)
    if f.metadata.get("parse"):
        return text  # parsed by the config's check_types, once
    if text.strip().lower() == "none" and conforms(None, tp):
        return None
    base = next((a for a in _args(tp) if a is not type(None)), tp) if _is_union(tp) else tp
    if base is bool:
        if text.strip().lower() not in ("true", "false"):
            raise ValueError(f"{path}={text!r} is not valid: it must be true or false")
        return text.strip().lower() == "true"
    if base in (int, float):
        try:
            return base(text)
        except ValueError:
            raise ValueError(f"{path}={text!r} is not valid: it must be {describe(base)}") from None
    return text


def replace(cfg: T, **changes: Any) -> T:
    """`cfg` with fields changed; a dotted name ('train.lr') reaches into nested configs."""
    direct = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict] = {}
    for k, v in changes.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    for head, sub in nested.items():
        direct[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **direct)


def optional_float(text: str) -> float | None:
    """A command-line number, or 'none'."""
    return None if text.strip().lower() == "none" else float(text)


def json_resources(text: str) -> dict[str, float]:
    """'{"A100": 1}' -> {"A100": 1} (custom Ray resources on the command line)."""
    import json

    try:
        parsed = parse_json(text, repr(text)[:40])
    except json.JSONDecodeError as e:
        raise ValueError(f"{text!r} is not JSON ({e}); use e.g. '{{\"A100\": 1}}'") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{text!r} must be a JSON object of resource name -> amount, e.g. '{{\"A100\": 1}}'")
    return parsed


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_type(tp: Any, parse: Callable | None) -> tuple[Callable | None, str | None]:
    """(argparse type, nargs) of a field: a scalar, or a list given as several values."""
    if parse:  # the text goes to the config as is: its check_types parses it once, naming the field on error
        return str, None
    inner = [a for a in _args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    base, nargs = inner[0], None
    if typing.get_origin(base) is tuple:  # tuple[int, ...]: one or more values; tuple[float, float]: two
        items = _args(base)
        base, nargs = items[0], "+" if items[-1] is Ellipsis else len(items)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return str, nargs
    if base in (int, float, str):
        return base, nargs
    return None, None


def add_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: Iterable[str] = (),
    unset: bool = False,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag per leaf field of `cls` (nested configs in their own argument groups).

    unset: flags that are not given leave no attribute, so `parsed_values` returns only what was given on
    the command line (for layering flags over a preset and a study file). `defaults` replaces some fields' defaults.
    """
    skip, defaults = set(skip), dict(defaults or {})
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(tp):
            group = parser.add_argument_group(f.name) if isinstance(parser, argparse.ArgumentParser) else parser
            add_arguments(group, tp, skip=skip, unset=unset, defaults=defaults)
            continue
        if "help" not in f.metadata:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        default = argparse.SUPPRESS if unset else defaults.get(f.name, default)
        if isinstance(default, enum.Enum):
            default = default.value
        shown = unset or default is None or "default" in f.metadata["help"]
        help_ = f.metadata["help"] + ("" if shown else " (default: %(default)s)")
        choices = f.metadata.get("choices")
        if tp is bool:
            parser.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"]
            )
        else:
            kind, nargs = _cli_type(tp, f.metadata.get("parse"))
            if kind is None:
                continue  # a table (e.g. worker resources) has its own flag where it is needed
            member = _args(tp)[0] if typing.get_origin(tp) is tuple else tp
            if isinstance(member, type) and issubclass(member, enum.Enum):
                choices = [e.value for e in member]
            parser.add_argument(
                _flag(f.name), type=kind, nargs=nargs, default=default, choices=choices, help=help_, metavar=None
            )


def parsed_values(cls: type, args: argparse.Namespace, *, skip: Iterable[str] = ()) -> dict:
    """The nested dict of the `cls` fields that `args` holds (with `unset`: only the flags given)."""
    out: dict[str, Any] = {}
    skip = set(skip)
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(tp):
            sub = parsed_values(tp, args, skip=skip)
            if sub:
                out[f.name] = sub
        elif hasattr(args, f.name):
            out[f.name] = getattr(args, f.name)
    return out


def merge(base: dict, layer: Mapping) -> dict:
    """`layer` laid over `base`, table by table (a nested dict merges key by key)."""
    out = dict(base)
    for k, v in layer.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
