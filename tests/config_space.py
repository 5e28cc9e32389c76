"""The configuration space robprune accepts, as data for the fuzzer (tests/test_config_space.py).

Everything is read from what the product declares: the experiments are the files of conf/experiment,
the options of a group its registry's names or its conf files (tests/test_every_option.py ``options``), and the
values a key may take its declared spec (robprune.options.Value: kind, range, choices, null), found by
walking a composed config with the schema the validator walks (robprune.validate.check_node). Nothing here
lists a name.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from omegaconf import DictConfig, OmegaConf

from robprune import schema
from robprune.compose import compose, fit_experiment
from robprune.errors import RobpruneError
from robprune.options import ANY, TARGET, MapOf, Value
from robprune.validate import study_nodes
from tests.helpers import REPO

CONF = REPO / "conf"
# the groups a command line swaps (conf/<group>/*.yaml; the nested ones such as eval/corruptions are reached
# through their parents)
GROUPS = tuple(sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "declared",
                                                                                         "hydra", "table")))
# the groups of item 2 of issue 27: every experiment takes every option of these of its modality
METHOD_GROUPS = ("prune", "finetune", "train", "eval")


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group: str) -> list[str]:
    from tests.test_every_option import options as group_options

    return group_options(group)


@dataclass(frozen=True)
class Outcome:
    """accepted (the config validates; ``notes`` are the keys fit_experiment dropped or reset), or refused with
    one line; ``needs_data``: refused only because the data root is not there (the last check of all)."""

    accepted: bool
    message: str = ""
    notes: tuple[str, ...] = ()

    @property
    def needs_data(self) -> bool:
        return not self.accepted and self.message.startswith("ConfigError: dataset.root=")


def outcome(overrides: list[str]) -> Outcome:
    """Compose and validate ``overrides`` in-process, as ``robprune run`` does before any job: accepted, or one
    user-error line. Anything else (a traceback) propagates: that is the bug the fuzzer looks for."""
    try:
        cfg = compose(overrides)
        notes = fit_experiment(cfg, overrides)
    except RobpruneError as err:
        return Outcome(False, str(err))
    OmegaConf.to_yaml(cfg, resolve=True)  # an accepted config resolves whole: the run writes it so, after its work
    return Outcome(True, notes=tuple(notes))


def one_line(message: str) -> bool:
    """A user error as the CLI prints it: one line, a kind, a key or file, a fix, and not a dump."""
    return ("\n" not in message.strip() and message.split(":", 1)[0] in ("ConfigError", "DataError", "CheckpointError")
            and len(message) < 1200)


# ------------------------------------------------------------------------------------------ declared leaves

@functools.lru_cache(maxsize=256)
def declared_leaves(base: tuple[str, ...]) -> tuple[tuple[str, Value | None], ...]:
    """(key, spec) of every leaf of the config composed from ``base`` whose value the declarations type
    (spec None: a leaf checked by a function of its owner, a text attack's option); empty if ``base`` is refused."""
    try:
        cfg = compose(list(base))
    except RobpruneError:
        return ()
    out: list[tuple[str, Value | None]] = []
    _walk(cfg, {**schema.ROOT, **dict.fromkeys(study_nodes(), ANY)}, "", out)
    return tuple(out)


def _child(node: DictConfig, key):
    try:
        return node[key]
    except Exception:  # noqa: BLE001  an interpolation this base cannot resolve: not a leaf to draw
        return None


def _walk(node, spec: dict, path: str, out: list) -> None:
    if not isinstance(node, DictConfig):
        return
    if path == "dataset":
        spec = {**spec, **schema.dataset_keys(str(node.get("name")))}
    for key in node.keys():
        child = f"{path}.{key}" if path else str(key)
        if key in spec:
            _visit(spec[key], _child(node, key), child, out)


def _visit(spec, value, path: str, out: list) -> None:
    if spec == ANY or value is None and not isinstance(spec, Value):
        return
    if isinstance(spec, Value):
        out.append((path, spec))
    elif callable(spec) and not isinstance(spec, MapOf):
        out.append((path, None))
    elif spec == TARGET:
        if isinstance(value, DictConfig) and "_target_" in value:
            typed = schema.params_of(str(value._target_))
            for key in value.keys():
                if key in typed:
                    _visit(typed[key], _child(value, key), f"{path}.{key}", out)
                elif isinstance(_child(value, key), DictConfig) and "_target_" in value[key]:
                    _visit(TARGET, value[key], f"{path}.{key}", out)
    elif isinstance(spec, MapOf):
        if isinstance(value, DictConfig):
            for key in value.keys():
                _visit(spec.item, _child(value, key), f"{path}.{key}", out)
    elif isinstance(spec, dict):
        _walk(value, spec, path, out)


# ------------------------------------------------------------------------------------------ values

def render(value) -> str:
    """``value`` as Hydra's override grammar reads it back (strings quoted, lists bracketed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, str) and not value.startswith("${"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def valid_values(spec: Value | None) -> list:
    """Values the declaration allows (a few per kind, the bounds included)."""
    if spec is None:
        return []
    values: list = [None] if spec.null else []
    if spec.choices is not None:
        return values + [c for c in spec.choices if c is not None]
    if spec.kind in ("int", "float"):
        low = spec.low if spec.low is not None else -3
        high = spec.high if spec.high is not None else low + 10
        if spec.kind == "int":
            lo = int(math.floor(low)) + (1 if spec.low_open or int(math.floor(low)) < low else 0)
            hi = int(math.ceil(high)) - (1 if spec.high_open or int(math.ceil(high)) > high else 0)
            return values + sorted({lo, hi, (lo + hi) // 2}) if lo <= hi else values
        eps = 1e-3 * max(1.0, abs(high - low))
        return values + [low + (eps if spec.low_open else 0.0), high - (eps if spec.high_open else 0.0), (low + high) / 2]
    return values + {"bool": [True, False], "str": ["x"], "path": ["no-such-folder/x"], "list": [[]]}.get(spec.kind, [])


def invalid_values(spec: Value | None) -> list:
    """Values the declaration refuses: the wrong kind, past a bound, a member not in the choices, null."""
    if spec is None:
        return []
    values: list = [] if spec.null else [None]
    if spec.choices is not None:
        return values + ["no_such_choice"]
    wrong = {"int": ["abc", 1.5, True], "float": ["abc", True, [1]], "bool": ["maybe", 2], "str": [[1, 2], 3.5],
             "path": [[1], 2.5], "list": ["abc", 3]}.get(spec.kind, [])
    if spec.kind in ("int", "float"):
        if spec.low is not None:
            values.append(spec.low if spec.low_open else (spec.low - 1 if spec.kind == "int" else spec.low - 0.5))
        if spec.high is not None:
            values.append(spec.high if spec.high_open else (spec.high + 1 if spec.kind == "int" else spec.high + 0.5))
    return values + wrong
