"""Declared defaults as Hydra config nodes: a conf file keeps only what differs (docs/concepts/registry-and-options.md).

Every registered thing that declares its options (:mod:`robprune.options`: ``Annotated`` parameters or a
dataclass named by the registration's ``options=``) gets its defaults stored in Hydra's ConfigStore as
``declared/<group>/<name>``. Its conf file pulls them in first and sets only what differs::

    # conf/attack/pgd.yaml
    defaults:
      - /declared/attack@_here_: pgd   # every option of robprune.attacks.pgd at its declared default
      - _self_
    _target_: robprune.attacks.pgd
    _partial_: true
    eps: ${dataset.eps}
    steps: 10

so the composed config (and ``config.yaml``, and every stage key) holds every option, a user can set any
of them on the command line (``eval.attacks.pgd20.restarts=2``), and a default is written once, in the
code. :func:`store_declarations` must run before Hydra composes: :func:`robprune.compose.compose` and
:mod:`robprune.app` (also in launcher worker processes, which import it) call it.
"""
from __future__ import annotations

from robprune.options import declared, defaults_of
from robprune.registry import REGISTRIES, Entry

GROUP = "declared"  # conf files name their declared defaults as /declared/<group>@_here_: <name>


def options_of(entry: Entry):
    """What declares an entry's options: ``meta['options']`` (a dataclass) or the registered callable."""
    return entry.meta.get("options", entry.obj)


def declared_defaults(entry: Entry, common=None) -> dict | None:
    """{option: default} of a registered thing, as config values (None: it declares no options). What
    the registration fixes (``meta['fixed']``) is not an option of it; a ``method`` option defaults to the
    registered name (the name recorded in results). common: its registry's :attr:`~robprune.registry.Registry.common`
    options (a model's ``init`` and ``head``), listed first."""
    options = options_of(entry)
    if not declared(options):
        return None
    fixed = entry.meta.get("fixed", {})
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults_of(options).items() if k not in fixed}
    if "method" in out:
        out["method"] = entry.name
    return {**(defaults_of(common) if common is not None else {}), **out}


def load_option(group: str, name: str):
    """conf/<group>/<name>.yaml as the node it composes to on its own: its declared defaults under what the
    file sets, its ``defaults`` list dropped (for code and tests that read one option without Hydra)."""
    from omegaconf import OmegaConf

    from robprune.config import config_dir

    node = OmegaConf.load(config_dir() / group / f"{name}.yaml")
    base = {}
    for item in node.get("defaults") or []:
        if OmegaConf.is_dict(item):
            for source, option in item.items():
                path = str(source).lstrip("/").split("@")[0]
                if path.startswith(f"{GROUP}/"):
                    registry = next(r for r in REGISTRIES.values() if r.group == path.split("/", 1)[1])
                    base = declared_defaults(registry.entry(str(option)), registry.common) or {}
    if "defaults" in node:
        node.pop("defaults")
    return OmegaConf.merge(OmegaConf.create(base), node)


def store_declarations() -> None:
    """Store ``declared/<group>/<name>`` for every registered thing of a config group. Called before every
    composition (a few milliseconds), so a thing registered since the last one is there too."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for registry in REGISTRIES.values():
        if registry.group is None:
            continue
        for entry in registry.entries():
            node = declared_defaults(entry, registry.common)
            if node is not None:
                store.store(group=f"{GROUP}/{registry.group}", name=entry.name, node=node)
