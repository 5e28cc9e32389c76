"""Typed option declarations: the one place a configurable thing's options are written.

A thing's options are a dataclass whose fields carry their spec (type, range, choices, null) in
:func:`option`; that declaration is at once the schema the config is validated against
(:func:`spec_of`, read by :mod:`robprune.validate`), the defaults (:func:`defaults_of`, filled into the
composed config under what the YAML file sets) and the keyword arguments the thing is built with. The
generated configuration reference (docs/configuration/reference.md) is read from the same fields. See
docs/concepts/registry-and-options.md.

A spec is a :class:`Value` (a leaf), a nested dict of specs, :data:`TARGET` (a node with a
``_target_``: its keys are the callable's options, see :mod:`robprune.validate`), :class:`MapOf` (free
names, each value of one spec) or :data:`ANY` (checked by its owner). This module sits at the bottom of
the layers: it imports nothing of robprune's but the error type.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from robprune.errors import ConfigError

ANY = "any"
TRAINING = "training"  # a train node (robprune.schema.TRAIN) with the keys of a training its owner runs
TARGET = "target"
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
         "path": "a path", "list": "a list"}

SENTINELS = ("any", "target", "training")  # specs that are words: ANY, TARGET, TRAINING
REQUIRED = "required"  # in an option's Annotated metadata: the config must set it (declared default ???)


@dataclass(frozen=True)
class Value:
    """A leaf: kind (int | float | bool | str | path | list), optional bounds (``low``/``high``, open
    or closed), ``choices``, ``null`` (None allowed), ``item`` (spec of each list element) and
    ``example`` (a valid value shown in the fix)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    null: bool = False
    item: "Value | None" = None
    example: str = ""

    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming ``key`` and the fix unless ``value`` fits."""
        if value is None:
            if not self.null:
                raise ConfigError(f"{key} must not be null; {self._fix(key)}")
            return
        if self.choices is not None:
            if not any(isinstance(c, bool) == isinstance(value, bool) and c == value for c in self.choices):
                named = [_show(c) for c in self.choices if c is not None]
                allowed = (f"{', '.join(named)} or null" if None in self.choices and named
                           else f"one of {', '.join(_show(c) for c in self.choices)}")
                raise ConfigError(f"{key} must be {allowed}, got {value!r}{_close(value, self.choices)}; {self._fix(key)}")
            return
        if not _is_kind(value, self.kind):
            raise ConfigError(f"{key} must be {KINDS[self.kind]}{' or null' if self.null else ''}, got {value!r}; {self._fix(key)}")
        if self.kind == "list" and self.item is not None:
            for i, element in enumerate(value):
                self.item.check(element, f"{key}[{i}]")
        if self.kind in ("int", "float") and not self._in_range(value):
            raise ConfigError(f"{key} must be {self._range()}, got {value!r}; {self._fix(key)}{' (or null)' if self.null else ''}")

    def _in_range(self, v: float) -> bool:
        ok_low = self.low is None or (v > self.low if self.low_open else v >= self.low)
        ok_high = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return ok_low and ok_high

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def _fix(self, key: str) -> str:
        example = self.example or (_show(self.choices[0]) if self.choices else {"int": "1", "float": "0.1", "bool": "true"}.get(self.kind, "<value>"))
        return f"e.g. {key}={example}"


@dataclass(frozen=True)
class MapOf:
    """A node whose keys are free names (attack names) and whose values all follow ``item``."""

    item: Any


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "path":
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if kind == "list":
        from omegaconf import ListConfig

        return isinstance(value, (list, tuple, ListConfig))
    return True


def _show(choice: Any) -> str:
    return "null" if choice is None else str(choice).lower() if isinstance(choice, bool) else str(choice)


def _close(value: Any, choices) -> str:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices if c is not None], n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def unknown_key(key: str, parent: str, allowed) -> ConfigError:
    """The error for a key that the schema of ``parent`` does not have, with difflib's nearest key."""
    allowed = sorted(k for k in allowed if k not in HYDRA_KEYS)
    name = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(name, allowed, n=1)
    where = parent or "the root config"
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else "remove it"
    return ConfigError(f"{key} is not a key of {where} ({hint}); keys: {', '.join(allowed) or '(none)'}", key=key)


def Int(low=None, *, high=None, null=False, example="") -> Value:  # noqa: N802  (spec constructors read like types)
    return Value("int", low=low, high=high, null=null, example=example)


def Float(low=None, *, high=None, low_open=False, high_open=False, null=False, example="") -> Value:  # noqa: N802
    return Value("float", low=low, high=high, low_open=low_open, high_open=high_open, null=null, example=example)


def Choice(*choices, example="") -> Value:  # noqa: N802
    return Value("str", choices=tuple(choices), null=None in choices, example=example)


BOOL = Value("bool")
STR = Value("str")
PATH = Value("path", null=True)
FRACTION = Float(0, high=1, high_open=True, null=True, example="0.5")
EPS = Float(0, example="0.03137")
STEPS = Int(1, example="10")
SIZE = Int(1, example="64")
SEED = Int(null=True, example="0")


# ---- declarations --------------------------------------------------------------------------------

def option(default: Any = dataclasses.MISSING, spec: Any = None, *, help: str = "") -> Any:  # noqa: A002
    """A dataclass field with its spec (a :class:`Value`, a nested dict, TARGET, ANY; None = inferred from
    the annotation) and a one-line ``help`` for the reference. Lists and dicts default to a copy."""
    metadata = {"spec": spec, "help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(obj: Any) -> bool:
    """Whether ``obj`` declares its options: a dataclass, or a callable with ``Annotated`` parameters."""
    return bool(dataclasses.is_dataclass(obj) or (callable(obj) and _annotated(obj)))


@functools.lru_cache(maxsize=None)
def _annotated(fn: Any) -> tuple[tuple[str, Any, Any, str], ...]:
    """(name, spec, default, help) of each keyword option of ``fn`` typed ``Annotated[type, spec, "help"]``."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError, NameError):
        return ()
    out = []
    for name, param in params.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        spec = next((m for m in hint.__metadata__ if _is_spec(m)), None)
        text = next((m for m in hint.__metadata__ if isinstance(m, str) and m not in (*SENTINELS, REQUIRED)), "")
        default = "???" if REQUIRED in hint.__metadata__ else param.default
        if spec is not None:
            out.append((name, spec, default, text))
    return tuple(out)


def _is_spec(m: Any) -> bool:
    """A spec: a Value, a nested dict, MapOf, a sentinel word, or a check ``(value, key) -> None`` that raises
    ConfigError itself (text attacks' options, robprune.attacks.text.base)."""
    if isinstance(m, str):
        return m in SENTINELS
    return isinstance(m, (Value, dict, MapOf)) or (callable(m) and not isinstance(m, type))


def spec_of(obj: Any) -> dict[str, Any]:
    """{key: spec} of a declaration: a dataclass's fields (each field's own spec, or one inferred from
    its annotation), or a callable's ``Annotated[type, spec]`` keyword parameters."""
    if dataclasses.is_dataclass(obj):
        hints = typing.get_type_hints(obj)
        return {f.name: f.metadata.get("spec") or _infer(hints[f.name], f.name) for f in dataclasses.fields(obj)}
    return {name: spec for name, spec, _, _ in _annotated(obj)}


def defaults_of(obj: Any) -> dict[str, Any]:
    """{key: default} of a declaration (options without a default are left out: they are required)."""
    if not dataclasses.is_dataclass(obj):
        return {name: default for name, _, default, _ in _annotated(obj) if default is not inspect.Parameter.empty}
    out = {}
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def help_of(obj: Any) -> dict[str, str]:
    """{key: one-line meaning and unit} of a declaration (the configuration reference's text)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(obj)}
    return {name: text for name, _, _, text in _annotated(obj)}


def check_fields(obj: Any, where: str) -> None:
    """Check every field of a declaration instance against its spec (ConfigError naming ``where.key``);
    what construction from code (not from a validated config) still needs."""
    specs = spec_of(type(obj))
    for f in dataclasses.fields(obj):
        spec = specs[f.name]
        if isinstance(spec, Value):
            spec.check(getattr(obj, f.name), f"{where}.{f.name}")
        elif callable(spec) and not isinstance(spec, (MapOf, type)):  # a check of its own: (value, key)
            spec(getattr(obj, f.name), f"{where}.{f.name}")


def check_group(spec: dict[str, Any], value: Any, key: str) -> None:
    """A nested group of options given as a mapping (a dict or a DictConfig, e.g. a text attack's
    ``counter_fitting``): every key declared in ``spec`` and every value fitting its Value (ConfigError naming
    ``key.<option>``); what a caller outside the config validation needs."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a group of keys, got {value!r}; e.g. {key}.{next(iter(spec))}=<value>", key=key)
    for name, item in value.items():
        if name not in spec:
            raise unknown_key(f"{key}.{name}", key, spec)
        sub = spec[name]
        if isinstance(sub, dict):
            check_group(sub, item, f"{key}.{name}")
        elif isinstance(sub, Value):
            sub.check(item, f"{key}.{name}")


def _infer(annotation: Any, name: str) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    null = type(None) in typing.get_args(annotation)
    base = args[0] if null and len(args) == 1 else annotation
    if typing.get_origin(base) is typing.Literal:
        return Value("str", choices=typing.get_args(base) + ((None,) if null else ()), null=null)
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "list"}
    kind = kinds.get(typing.get_origin(base) or base)
    if kind is None:
        raise TypeError(f"option {name!r}: give a spec for annotation {annotation!r}")
    return Value(kind, null=null)
