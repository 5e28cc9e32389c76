"""One registration mechanism for every kind of configurable thing (docs/concepts/registry-and-options.md).

A pruning method, attack, model, dataset, training objective, optimizer wrapper or stage is registered
once, under the name that is at the same time its conf file's stem (``conf/<group>/<name>.yaml``, for
kinds that have a config group) and the name recorded in ``metrics.json`` and tables::

    from robprune.registry import PRUNERS

    @PRUNERS.register("l1_filter", modality="image", family="channel")
    def l1_filter(model, context, **options): ...

or, for several names built by one callable, as a module-level table (``DATASETS.add("mnist", SOURCE)``).
Every list of names (validation, error hints, tests, the configuration reference) is read from here:
``PRUNERS.names(modality="text")``. A registry imports the modules that register into it the first
time it is read, so a name is known whether or not its module was imported yet; this module imports
nothing of robprune's beyond the error type, so it sits at the bottom of the layers.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from robprune.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """A registered thing: its name, the object (function, class, source, stage) and free metadata
    (``modality``, ``family``, ...) that lists filter on."""

    name: str
    obj: Any
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> :class:`Entry` for one kind of thing.

    kind: what an entry is, in words ("pruning method"); group: its conf group (``conf/<group>/``),
    None for kinds chosen inside other nodes (objectives, stages); modules: the modules whose import
    registers every entry (imported lazily, on the first read). :attr:`common`: a dataclass declaring
    options every entry's node takes besides its own (a model's ``init`` and ``head``), handled by the
    caller, not by the registered callable; set by the package that owns them (:meth:`set_common`)."""

    def __init__(self, kind: str, *, group: str | None = None, modules: tuple[str, ...] = ()):
        self.kind, self.group, self.modules = kind, group, modules
        self._common: Any = None
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    # ---- registration -------------------------------------------------------------------------------
    def add(self, name: str, obj: Any, **meta: Any) -> Any:
        """Register ``obj`` as ``name``; a second registration of one name is a programming error."""
        if not name or not name.replace("_", "").isalnum() or not name[0].isalpha() or name != name.lower():
            raise ValueError(f"{self.kind} name {name!r} must be lower_snake_case (it is a conf file stem)")
        known = self._entries.get(name)
        if known is not None and known.obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({known.obj!r} and {obj!r})")
        self._entries[name] = Entry(name, obj, dict(meta))
        return obj

    def set_common(self, options: Any) -> None:
        """Declare the options (a dataclass) every entry's node takes besides its own."""
        self._common = options

    @property
    def common(self) -> Any:
        """The dataclass of options every entry's node takes (None: none); loads the registry first."""
        self._load()
        return self._common

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register("name", modality="image")``; the name defaults to ``obj.__name__``."""
        def decorate(obj: Any) -> Any:
            return self.add(name or obj.__name__, obj, **meta)
        return decorate

    # ---- reading -----------------------------------------------------------------------------------
    def _load(self) -> None:
        """Import every module of the registry's packages (a new file that registers is found without
        editing an ``__init__``)."""
        if self._loaded:
            return
        self._loaded = True  # set first: a registering module may read its own registry at import
        for name in self.modules:
            module = importlib.import_module(name)
            for info in pkgutil.walk_packages(getattr(module, "__path__", ()), prefix=f"{name}."):
                importlib.import_module(info.name)

    def entry(self, name: str, *, key: str | None = None) -> Entry:
        """The entry of ``name``; ConfigError naming ``key`` (default: the group), the nearest name and
        every registered one otherwise."""
        self._load()
        found = self._entries.get(str(name))
        if found is None:
            raise self.unknown(name, key=key)
        return found

    def get(self, name: str, *, key: str | None = None) -> Any:
        return self.entry(name, key=key).obj

    def unknown(self, name: Any, *, key: str | None = None, names: tuple[str, ...] | None = None) -> ConfigError:
        """The one-line error for a name this registry (or the subset ``names``) does not hold."""
        choices = names if names is not None else self.names()
        near = difflib.get_close_matches(str(name), choices, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        where = key or self.group or self.kind
        pick = f"{self.group}=<option>" if self.group and key in (None, self.group) else f"{where}=<name>"
        return ConfigError(f"{where}={name!r} is not a registered {self.kind}{hint}; choose one of "
                           f"{', '.join(choices) or '(none)'} ({pick})")

    def names(self, **meta: Any) -> tuple[str, ...]:
        """Sorted names whose metadata matches every ``key=value`` given (``names(modality="text")``)."""
        self._load()
        return tuple(sorted(name for name, e in self._entries.items() if _matches(e.meta, meta)))

    def entries(self) -> tuple[Entry, ...]:
        self._load()
        return tuple(self._entries[name] for name in sorted(self._entries))

    def find(self, obj: Any) -> Entry | None:
        """The entry ``obj`` is registered as (the first name, sorted), or None: what a config's
        ``_target_`` resolves to tells its kind's metadata (modality, family)."""
        return next((e for e in self.entries() if e.obj is obj), None)

    def name_of(self, obj: Any) -> str | None:
        found = self.find(obj)
        return None if found is None else found.name

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"


def locate(target: str) -> Any:
    """The object a dotted ``_target_`` path names, resolved as hydra does (attribute first, else import
    the submodule), without hydra.utils.get_object's logging of failures."""
    parts = target.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=2):
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            raise AttributeError(f"{'.'.join(parts[:i - 1])} has no {name!r}") from None
    return obj


def target_entry(registry: "Registry", target: str | None) -> Entry | None:
    """The entry of ``registry`` a config's ``_target_`` resolves to; None when it names nothing
    registered there (or cannot be imported: validation reports that with the key)."""
    if not target:
        return None
    try:
        return registry.find(locate(str(target)))
    except (ImportError, AttributeError):
        return None


def _matches(meta: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """Every wanted value equals the entry's, or is one of them when the entry lists several
    (``modality=("image", "text")``)."""
    for key, value in want.items():
        have = meta.get(key)
        if have != value and not (isinstance(have, (tuple, frozenset)) and value in have):
            return False
    return True


# Every kind of registered thing. A registry's ``modules`` are where its entries are declared.
PRUNERS = Registry("pruning method", group="prune", modules=("robprune.prune",))
ATTACKS = Registry("attack", group="attack", modules=("robprune.attacks", "robprune.attacks.text"))
MODELS = Registry("model", group="model", modules=("robprune.models",))
DATASETS = Registry("dataset", group="dataset", modules=("robprune.data",))
OBJECTIVES = Registry("training objective", modules=("robprune.train.objectives",))
SHARPNESS = Registry("optimizer wrapper", modules=("robprune.train.sharpness",))
CRITERIA = Registry("channel importance criterion", modules=("robprune.prune",))
STAGES = Registry("stage", modules=("robprune.stages",))

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (PRUNERS, ATTACKS, MODELS, DATASETS, OBJECTIVES, SHARPNESS,
                                                       CRITERIA, STAGES)}
