"""The configuration reference of the docs site, rendered from the code's own declarations.

``render_reference()`` returns one markdown page: one section per config group (a folder of ``conf/``),
one table per option file, one row per key with its default (from the YAML), its type / range / choices
(from :mod:`robprune.schema`) and its trailing ``# comment``. ``docs/gen_reference.py`` calls it at
``mkdocs build`` time, so the page cannot drift from the code.

Everything that knows the *shape* of the declarations is in :func:`spec_for` and :func:`describe`:
when the declarations change (e.g. to typed dataclasses), adapt those two and keep the rest.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from robprune import options, schema
from robprune.declarations import GROUP, declared_defaults, options_of
from robprune.options import help_of
from robprune.registry import REGISTRIES
from robprune.config import config_dir

# group folder -> the node of the root config its options fill (None: not a node of the run config)
NODES = {"attack": None, "compress": None, "experiment": None, "table": None, "hydra/launcher": None,
         "eval/corruptions": "eval.corruptions"}
INTRO = {
    "attack": "Attacks, bound as partial functions; used inside `train`, `finetune`, `eval` and `prune.scores`.",
    "compress": "One axis that sets `prune` and `quant` together (add with `+compress=`).",
    "experiment": "A paper's setup as a small diff over the defaults (add with `+experiment=`). Keys are global.",
    "table": "Table layouts for `robprune table +table=<name> <dir>`.",
    "hydra/launcher": "How the jobs of a sweep (`-m`) run (Hydra launcher plugins).",
    "eval/corruptions": "Corruption robustness; add with `+eval/corruptions@eval.corruptions=<option>`.",
}
_KEY = re.compile(r"^(\s*)([^\s#:'\"-][^:#]*?|'[^']*'|\"[^\"]*\"):(?:\s|$)")


def groups(conf: Path | None = None) -> dict[str, list[Path]]:
    """{group: [option files]}: every folder of conf/ holding YAML files, nested groups as 'a/b'."""
    conf = conf or config_dir()
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        if group != ".":
            found.setdefault(group, []).append(path)
    return found


def comments(text: str) -> tuple[str, dict[str, str]]:
    """(the file's leading comment block, {dotted key: its trailing comment}) by a line scan."""
    header, trailing, stack = [], {}, []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not trailing and not stack and line.startswith("#") and all(l.startswith("#") for l in lines[:i]):
            header.append(line.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2).strip().strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        rest = line[match.end():]
        at = next((i for i, ch in enumerate(rest) if ch == "#" and _outside_quotes(rest, i)), None)
        if at is not None:
            trailing[".".join(k for _, k in stack)] = rest[at + 1:].strip()
    return " ".join(h for h in header if h != "@package _global_"), trailing


def _outside_quotes(text: str, pos: int) -> bool:
    return text[:pos].count("'") % 2 == 0 and text[:pos].count('"') % 2 == 0


def flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """[(dotted key, leaf value)] in file order; a dict of only scalars under 'latency:' stays nested keys."""
    if isinstance(node, dict) and node:
        out = []
        for key, value in node.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, node)]


def _targets(data: dict, conf: Path) -> dict[str, str]:
    """{dotted node path: _target_} of a file, including nodes filled by its defaults list
    (``/attack@objective.attack: pgd`` takes conf/attack/pgd.yaml's target)."""
    found = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict):
            for source, option in entry.items():
                group, _, package = str(source).lstrip("/").partition("@")
                file = conf / group / f"{option}.yaml"
                if package and file.is_file():
                    target = (yaml.safe_load(file.read_text()) or {}).get("_target_")
                    if target:
                        found[package] = target
    for key, value in flatten(data):
        if key == "_target_" or key.endswith("._target_"):
            found[key[: -len("._target_")] if "." in key else ""] = value
    return found


def spec_for(group: str, option: str, key: str, data: dict, conf: Path | None = None) -> Any:
    """The schema's spec of ``key`` (dotted, relative to the option's node), or None when undeclared."""
    targets = _targets(data, conf or config_dir())
    node = NODES.get(group, group)
    if node is None and group == "attack":
        return _walk({"": schema.TARGET}, key, targets)
    if node is None:
        return None
    root: Any = schema.ROOT
    for part in node.split("."):
        root = root.get(part) if isinstance(root, dict) else None
    if group == "dataset":
        root = {**schema.DATASET, **schema.dataset_keys(option)}
    return _walk({"": root}, key, targets)


def _walk(spec: Any, key: str, targets: dict[str, str]) -> Any:
    path = ""
    spec = spec[""]
    for part in key.split("."):
        if spec == schema.TARGET:
            if not targets.get(path):  # the target comes from a composed file this one only overrides
                return None
            spec = schema.params_of(targets[path])
        if isinstance(spec, schema.MapOf):
            spec = spec.item
            path = f"{path}.{part}" if path else part
            continue
        if not isinstance(spec, dict) or part not in spec:
            return None
        spec = spec[part]
        path = f"{path}.{part}" if path else part
    return spec


def describe(spec: Any) -> str:
    """A spec in words: 'float in [0, 1) or null', 'one of: l1, l2', 'int ≥ 1'."""
    if callable(spec) and not isinstance(spec, (schema.Value, schema.MapOf)):
        return "checked by the attack"
    if not isinstance(spec, schema.Value):
        return {schema.TARGET: "node with `_target_`"}.get(spec, "—") if isinstance(spec, str) else "—"
    null = " or null" if spec.null else ""
    if spec.choices is not None:
        return "one of: " + ", ".join(f"`{options._show(c)}`" for c in spec.choices)
    text = {"int": "int", "float": "float", "bool": "bool", "str": "str", "path": "path", "list": "list"}[spec.kind]
    if spec.kind in ("int", "float") and (spec.low is not None or spec.high is not None):
        text += " " + spec._range().replace(">=", "≥").replace("<=", "≤")
    if spec.kind == "list" and isinstance(spec.item, schema.Value):
        text += f" of ({describe(spec.item)})"
    return text + null


def _cell(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_option(group: str, path: Path, conf: Path) -> str:
    """The table of one option file."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    header, trailing = comments(text)
    lines = [f"### `{group}={path.stem}`", "", f"`conf/{group}/{path.name}`" + (f": {_escape(header)}" if header else ""), ""]
    declared = _declared(data)
    defaults = [e for e in data.get("defaults") or [] if e != "_self_" and not _is_declared(e)]
    if defaults:
        shown = ", ".join(f"`{k}: {v}`" if isinstance(e, dict) else f"`{e}`" for e in defaults
                          for k, v in (e.items() if isinstance(e, dict) else [(e, "")]))
        lines += [f"Composes: {shown}", ""]
    own = {k: v for k, v in data.items() if k != "defaults"}
    rows = [(k, v) for k, v in flatten({**{k: v for k, (v, _) in declared.items()}, **own}) if k]
    trailing = {**{k: text for k, (_, text) in declared.items() if text}, **trailing}
    if not rows:
        return "\n".join(lines + ["(no keys)", ""])
    lines += ["| key | default | type / range / choices | meaning |", "|---|---|---|---|"]
    explained: set[str] = set()
    for key, value in rows:
        spec = None if key.rsplit(".", 1)[-1].startswith("_") else spec_for(group, path.stem, key, data, conf)
        text = trailing.get(key, "")
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if not text and parent in trailing and parent not in explained:  # a nested group's help, on its first leaf
            text, _ = trailing[parent], explained.add(parent)
        lines.append(f"| `{key}` | {_cell(value)} | {describe(spec)} | {_escape(text)} |")
    return "\n".join(lines + [""])


def _is_declared(entry: Any) -> bool:
    return isinstance(entry, dict) and any(str(k).lstrip("/").startswith(f"{GROUP}/") for k in entry)


def _declared(data: dict) -> dict[str, tuple[Any, str]]:
    """{key: (declared default, help)} of the thing a file's ``/declared/<group>@_here_: <name>`` names
    (robprune.declarations): the options the file does not repeat."""
    for entry in data.get("defaults") or []:
        if not _is_declared(entry):
            continue
        (source, name), = entry.items()
        group = str(source).lstrip("/").split("@")[0].split("/", 1)[1]
        registry = next(r for r in REGISTRIES.values() if r.group == group)
        options = options_of(registry.entry(str(name)))
        helps = {**(help_of(registry.common) if registry.common is not None else {}), **help_of(options)}
        return {k: (v, helps.get(k, "")) for k, v in declared_defaults(registry.entry(str(name)), registry.common).items()}
    return {}


def render_reference(conf: Path | None = None) -> str:
    """The whole configuration reference, as markdown."""
    conf = conf or config_dir()
    found = groups(conf)
    out = ["# Configuration reference", "",
           "Generated at build time by `robprune.reference.render_reference()` from the option declarations "
           "(`robprune.options`: types, ranges, choices, declared defaults and their meaning), `robprune/schema.py` "
           "(the root config's layout) and the files of `conf/` (what each option file sets, with its comments). "
           "Pick an option with `group=option`; set a key with `group.key=value`. Keys are relative to the "
           "group's node (`prune.sparsity` is the row `sparsity` of a `prune` option). `—` means the schema "
           "declares no type for that key (it is checked elsewhere, or free).", ""]
    out += ["Groups: " + ", ".join(f"[`{g}`](#{_anchor(g)})" for g in found), ""]
    for group, files in found.items():
        out += [f"## {group}", "", INTRO.get(group, f"Options of the `{group}` node."), "",
                "Options: " + ", ".join(f"`{p.stem}`" for p in files), ""]
        out += [render_option(group, p, conf) for p in files]
    return "\n".join(out)


def _anchor(group: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", group.lower())
