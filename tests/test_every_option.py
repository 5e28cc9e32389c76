"""Every option of every config group runs, and so does every shipped experiment (issue 22 item 5).

Options are the ``conf/<group>/*.yaml`` files, listed by ``options(group)``: a new file is a new test case
without editing this file. Each runs the real pipeline in-process, composed from the real config with
that option, ``offline(cfg)`` (tiny real-format files for datasets that need files, a tiny local BERT for a
hub model) and ``shrink(cfg)`` (every budget the composed config holds cut to the least that exercises
it). Image options run on the embedded digits default; an option the digits default refuses with a
ConfigError naming what it needs runs on the next base that accepts it: 32x32 images generated in memory
(e.g. VGG's five pools), or a tiny SST-2-format set with a tiny BERT (text datasets, models, objectives,
pruners, attacks). Every experiment of conf/experiment runs through the real command as a Hydra multirun
(experiments needing the same overrides share one). All cases share one
stage cache per session (xdist workers included), so e.g. every prune option reuses one dense model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from robprune.compose import compose
from robprune.errors import ConfigError
from robprune.pipeline import run
from robprune.registry import REGISTRIES
from robprune.schema import reads_files
from tests.helpers import REPO, read_metrics, robprune
from tests.tiny_roots import ZOO_MODEL, image_root, imagenet_every_root, shared_folder, text_root, tiny_imagenet_root, zoo_root

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    """The options of a config group: its registry's names where the group holds registered things
    (prune, attack, model, dataset: tests/test_registry.py keeps them equal to the conf stems), else
    the stems of ``conf/<group>/*.yaml`` (recipes: train, finetune, eval, quant, logger, compress)."""
    registry = next((r for r in REGISTRIES.values() if r.group == group), None)
    if registry is not None:
        return list(registry.names())
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# The defaults a case starts from, first to last: the embedded digits default; 32x32 images generated in
# memory (dataset=synthetic) for options that need larger images; a tiny text pipeline (the text_sst2
# experiment's groups: a local BERT, a tiny SST-2 set). No training curves, a cheap evaluation (an
# eval or attack option replaces or extends it).
BASES = {"image": ["logger=none", "eval=pgd"], "image32": ["logger=none", "eval=pgd", "dataset=synthetic"],
         "text": ["dataset=sst2", "model=bert", "train=text_finetune", "prune=none", "finetune=none", "eval=clean",
                  "logger=none"],
         "zoo": ["logger=none", "eval=pgd", "dataset=cifar10"],  # model=robustbench: the zoo's own dataset
         "imagenet": ["logger=none", "eval=pgd", "dataset=imagenet"]}  # ImageNet's evaluations (ImageNet-C, -V2)
IMAGENET_ONLY = {("eval", "imagenet"), ("eval/corruptions", "imagenet_c")}  # they need ImageNet's classes and files
STREAMED = ("imagenet", "imagenet_v2", "webdataset")  # datasets read from roots["imagenet"] at 32 px
TINY_TRAIN, TINY_TEST = 64, 32  # examples of the training and test splits of every run


# ---------------------------------------------------------------- what a composed config needs to run here

def offline(cfg, roots: dict) -> list[str]:
    """Overrides that point a composed config at the tiny local files: the data root of its dataset, a
    local BERT for a hub model name, a local masked LM where BERT-Attack needs one, no downloads, and a
    tracking store under the cache folder."""
    out = ["data.download=false"]
    name, text = str(cfg.dataset.name), cfg.dataset.get("modality") == "text"
    if text:
        out.append(f"data.root={roots['text']}")
    elif name in STREAMED:  # the tree holds 4 of ImageNet's classes, at sizes around 20 px
        out += [f"data.root={roots['imagenet']}", "dataset.num_classes=4", "dataset.image_size=16", "dataset.resize=18"]
    elif name == "tiny_imagenet":
        out += [f"data.root={roots['tiny_imagenet']}", "dataset.num_classes=null"]  # the tree has 3 of its 200 classes
        for key, attack in _attacks(cfg):  # AutoAttack's targeted attacks need 4 classes (refused before work otherwise)
            if str(attack.get("_target_", "")).endswith("autoattack"):
                out += [f"{key}.version=custom", f"{key}.attacks=[apgd-ce,square]"]
    elif reads_files(name):
        out.append(f"data.root={roots['image']}")
    for set_name in (OmegaConf.select(cfg, "eval.sets", default=None) or {}):  # shifted test sets (ImageNet-V2)
        out += [f"eval.sets.{set_name}.{k}={v}" for k, v in (("num_classes", 4), ("image_size", 16), ("resize", 18))]
    if str(cfg.model.get("_target_")).endswith("torchvision_model") and cfg.model.get("init") == "pretrained":
        # published weights are a download (tests/test_torchvision.py covers loading them): a randomly
        # initialised ResNet-18 stands in for adasap_imagenet's ResNet-50 (half the time of a case)
        out += ["model.init=null", "model.name=resnet18", "model.weights=DEFAULT"]
    if str(cfg.model.get("_target_")).endswith("robustbench_model"):  # a tiny zoo folder (random weights, the zoo's layout)
        dataset, threat, name = ZOO_MODEL
        out += [f"model.dir={roots['zoo']}", f"model.name={name}", f"model.threat={threat}"]
    pretrained = OmegaConf.select(cfg, "model.pretrained", default=None)
    if isinstance(pretrained, str) and pretrained != "minilm-l6" and not Path(pretrained).exists():
        out.append(f"model.pretrained={roots['text'] / 'encoder'}")  # a hub name: nothing is downloaded here
    for name, attack in _attacks(cfg):
        if "mlm" in attack.keys() and OmegaConf.is_missing(attack, "mlm"):
            out.append(f"{name}.mlm={roots['text'] / 'mlm'}")
    if OmegaConf.select(cfg, "logger.mlflow", default=None) is not None:
        out.append(f"logger.mlflow.tracking_uri={Path(str(cfg.cache_dir)).parent / 'mlruns'}")
    return out


def _attacks(cfg):
    """(key, node) of every attack config the run evaluates with."""
    for name, node in (OmegaConf.select(cfg, "eval.attacks", default=None) or {}).items():
        yield f"eval.attacks.{name}", node
    attack = OmegaConf.select(cfg, "average.attack", default=None)
    if attack is not None:
        yield "average.attack", attack


def _split(spec: str) -> str:
    return str(spec).split("[", 1)[0]


def _interpolated(cfg, key: str) -> bool:
    """Whether ``key``'s value is an interpolation (prune=hydra's ``${oc.select:train.objective,null}``)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False)
    return OmegaConf.is_config(node) and leaf in node and OmegaConf.is_interpolation(node, leaf)


def shrink(cfg) -> list[str]:
    """Overrides cutting every budget that ``cfg`` holds to the least that still runs its code: one epoch
    on a few dozen examples, one attack step, a handful of attacked examples, one latency repeat."""
    has = lambda key: OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False) is not None  # noqa: E731
    test = _split(cfg.dataset.test_split)  # every dataset but ImageNet-V2 has a train split (MNIST experiments carve theirs from test)
    train = "test" if str(cfg.dataset.name) == "imagenet_v2" else "train"
    out = [f"dataset.train_split='{train}[:{TINY_TRAIN}]'",
           f"dataset.test_split='{test}[{TINY_TRAIN}:{TINY_TRAIN + TINY_TEST}]'" if test == train
           else f"dataset.test_split='{test}[:{TINY_TEST}]'", "data.batch_size=32"]
    if has("dataset.heldout_split"):
        out.append(f"dataset.heldout_split='{_split(cfg.dataset.heldout_split)}[{TINY_TRAIN + TINY_TEST}:]'")
    for key, value in (("model.width", 8), ("model.width_mult", 0.125), ("model.depth", 10), ("model.widen_factor", 1)):
        if has(key):
            out.append(f"{key}={value}")
    for node in ("train", "finetune", "quant.train", "prune.during_training"):
        if has(f"{node}.epochs"):
            out.append(f"{node}.epochs={min(1, int(OmegaConf.select(cfg, f'{node}.epochs')))}")
        if node == "quant.train" or _interpolated(cfg, f"{node}.objective"):  # ${train.objective}: shrunk there
            continue
        if has(f"{node}.objective.attack.steps"):
            out.append(f"{node}.objective.attack.steps=1")
        if has(f"{node}.objective.adv_steps"):
            out.append(f"{node}.objective.adv_steps=1")
    if has("prune.during_training.prune_steps"):  # 2 batches of one epoch: prune at steps 1 and 2
        out += ["prune.during_training.prune_interval=1", "prune.during_training.prune_steps=2"]
    for key, value in (("quant.calibration.n_examples", 32), ("prune.scores.n_images", 32), ("prune.scores.steps", 1),
                       ("prune.scores.attack.steps", 1), ("prune.scores.draws", 1), ("prune.scores.damage_seeds", "[0]"),
                       ("prune.calibration.n", 16), ("prune.calibration.heldout", 8), ("prune.batch_size", 8),
                       ("eval.large_eps_n", 8), ("eval.corruptions.n_examples", 8), ("eval.corruptions.severities", "[1]"),
                       ("eval.latency.repeats", 1), ("eval.latency.warmup", 0), ("eval.latency.batch_size", 4),
                       ("average.n_score", 4)):
        if has(key):
            out.append(f"{key}={value}")
    for name in (OmegaConf.select(cfg, "average.ingredients", default=None) or {}):
        out.append(f"++average.ingredients.{name}.epochs=1")
    for name in (OmegaConf.select(cfg, "eval.n_examples", default=None) or {}):
        out.append(f"eval.n_examples.{name}=4")
    for key, attack in _attacks(cfg):
        for knob, value in (("steps", 1), ("n_iter", 2), ("n_queries", 10), ("query_budget", 20), ("max_candidates", 4),
                            ("word_candidates", 2), ("vocab_size", 2000)):
            if knob in attack:
                out.append(f"{key}.{knob}={value}")
    return out


# ---------------------------------------------------------------- running one option

@pytest.fixture(scope="session")
def roots(tmp_path_factory, worker_id):
    return {"image": shared_folder(tmp_path_factory, worker_id, "every_option_image", image_root),
            "tiny_imagenet": shared_folder(tmp_path_factory, worker_id, "every_option_tiny_imagenet", tiny_imagenet_root),
            "text": shared_folder(tmp_path_factory, worker_id, "every_option_text", text_root),
            "zoo": shared_folder(tmp_path_factory, worker_id, "every_option_zoo", zoo_root),
            "imagenet": shared_folder(tmp_path_factory, worker_id, "every_option_imagenet", imagenet_every_root)}


@pytest.fixture(scope="session")
def cache(tmp_path_factory, worker_id):
    """One stage cache for every case of the session (its lock serialises the workers' builds)."""
    return shared_folder(tmp_path_factory, worker_id, "every_option_cache", lambda folder: None)


def selection(group: str, option: str) -> list[str]:
    """The overrides choosing ``option`` of ``group`` as a user writes them."""
    if group == "attack":  # an attack is an evaluation entry named after it: robust_acc/<option>
        return [f"+attack@eval.attacks.{option}={option}", f"+eval.n_examples.{option}=4"]
    if group == "eval/corruptions":
        return [f"+eval/corruptions@eval.corruptions={option}"]
    if group == "compress":  # a study axis outside the root defaults (conf/experiment/adverfine_*)
        return [f"+compress={option}"]
    return [f"{group}={option}"]


def compose_run(overrides: list[str], roots: dict) -> tuple:
    """(config, choices as the command records them): the config composed from ``overrides``, then
    offline() and shrink() of it set as Hydra sets an override of an existing key (parsed by Hydra's
    override grammar; composing a second time would cost a third of a case)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose(overrides, with_hydra=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra") and "@" not in k and v is not None}  # what robprune.app records
    with open_dict(cfg):
        cfg.pop("hydra")
    for override in OverridesParser.create().parse_overrides([*offline(cfg, roots), *shrink(cfg)]):
        key = override.key_or_group
        parent, _, last = key.rpartition(".")
        assert override.is_force_add() or last in OmegaConf.select(cfg, parent).keys(), key  # as Hydra's struct mode
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=override.is_force_add())
    return cfg, choices


def run_option(group: str, option: str, roots: dict, cache: Path, run_dir: Path, *extra: str) -> dict:
    """Run the option on the first of BASES whose run accepts it. A base's refusal comes before any stage
    (validation, the data, the dense model) and must say what the option needs: text inputs, larger images."""
    refusals = []
    for name, base in BASES.items():
        if ((group, option) in IMAGENET_ONLY) != (name == "imagenet"):
            continue
        if group == "attack":  # an attack option is added to an evaluation without attacks
            base = [o for o in base if not o.startswith("eval=")] + ["eval=clean"]
        base = [o for o in base if o.split("=")[0] not in {e.split("=")[0] for e in extra}]  # extra may choose options
        try:
            cfg, choices = compose_run([*base, *selection(group, option), f"cache_dir={cache}", *extra], roots)
            metrics = run(cfg, run_dir, choices=choices)
        except ConfigError as err:
            assert not (run_dir / "metrics.json").exists()
            refusals.append(str(err))
            continue
        for refusal in refusals:
            assert re.search(r"text|transformer|token|embedding|image", refusal, re.I), refusal
        break
    else:
        raise AssertionError(f"no base runs {group}={option}: {refusals}")
    assert metrics == read_metrics(run_dir)
    assert 0 <= metrics["clean_acc"] <= 1 and metrics["params"] > 0
    assert isinstance(metrics["checks"], dict)
    assert (run_dir / "config.yaml").exists() and (run_dir / "model.safetensors").exists()
    return metrics


GROUPS = ["dataset", "model", "train", "prune", "quant", "finetune", "eval", "eval/corruptions", "attack", "logger",
          "compress"]
CASES = [(group, option) for group in GROUPS for option in options(group)]


def recorded(group: str, option: str, metrics: dict, run_dir: Path) -> bool:
    """The option's name where the results record it, and what the option adds: a metric per attack, a
    logger's files."""
    config = OmegaConf.load(run_dir / "config.yaml")
    if group == "attack":
        return f"robust_acc/{option}" in metrics and option in config.eval.attacks
    if group == "eval/corruptions":
        return metrics["choices"][group] == option and "corruption_acc/mean" in metrics
    if group == "logger" and config.logger.tensorboard and not any((run_dir / "tensorboard").iterdir()):
        return False  # the option's files: event files per stage, an MLflow run
    if group == "logger" and config.logger.mlflow and not any(Path(config.logger.mlflow.tracking_uri).iterdir()):
        return False
    if not all(f"robust_acc/{name}" in metrics for name in config.eval.attacks):  # every attack of the eval option
        return False
    named = {"dataset": metrics["dataset"]["name"], "prune": config.prune.method, "quant": config.quant.method}
    return metrics["choices"][group] == option and named.get(group, option) == option


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_runs(group, option, roots, cache, tmp_path):
    metrics = run_option(group, option, roots, cache, tmp_path / "run")
    assert recorded(group, option, metrics, tmp_path / "run"), (group, option, metrics.get("choices"))


# ---------------------------------------------------------------- every shipped experiment, through the command

SYMBOLIC = {name: Path(f"{{{name}}}") for name in ("image", "tiny_imagenet", "text", "zoo", "imagenet")}  # filled in when a test runs


def experiment_overrides(name: str) -> list[str]:
    """What an experiment needs on top of its file to run here in seconds: offline() and shrink(), and a
    tiny local encoder for a text model (the packaged MiniLM runs in test_option_runs[model=minilm])."""
    cfg = compose([f"+experiment={name}"])
    small = [f"model.pretrained={SYMBOLIC['text'] / 'encoder'}"] if "pretrained" in cfg.model else []
    return [*offline(cfg, SYMBOLIC), *shrink(cfg), *small]


def experiment_groups() -> list[tuple[list[str], list[str]]]:
    """(overrides, experiments): experiments that need the same overrides run as one multirun. Hydra
    composes a multirun's first config without the swept experiment, where keys of an experiment's
    groups (prune.scores, ...) are missing: a group's overrides are given as ``++key=value`` (set, or add
    where missing), which sets the same keys of every job as ``key=value``. An experiment alone in its
    group is not swept, so its own grid (``hydra.sweeper.params``, e.g. the Adver-Fine grid) would be:
    each axis is pinned to its first value."""
    groups: dict[tuple, list[str]] = {}
    for name in options("experiment"):
        groups.setdefault(tuple(experiment_overrides(name)), []).append(name)
    out = []
    for overrides, names in groups.items():
        if len(names) == 1:
            grid = OmegaConf.select(compose([f"+experiment={names[0]}"], with_hydra=True), "hydra.sweeper.params",
                                    default=None) or {}
            out.append(([*(f"{axis}={str(values).split(',')[0].strip()}" for axis, values in grid.items()),
                         *overrides], names))
        else:
            out.append(([f"++{o.lstrip('+')}" for o in overrides], names))
    return out


EXPERIMENTS = experiment_groups()


@pytest.mark.parametrize("overrides, names", EXPERIMENTS, ids=["+".join(names) for _, names in EXPERIMENTS])
def test_experiments_run_through_the_command(overrides, names, roots, cache, tmp_path):
    """``robprune run -m +experiment=a,b`` (Hydra's multirun, as lightning-hydra-template's experiment
    test): every job writes its metrics, and the experiment is recorded among the run's choices."""
    args = [o.format(**{k: str(v) for k, v in roots.items()}) for o in overrides]
    sweep = tmp_path / "sweep"
    res = robprune(["run", "-m", f"+experiment={','.join(names)}", *args, f"cache_dir={cache}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == len(names), (names, jobs)
    ran = {}
    for path in jobs:
        metrics = json.loads(path.read_text())
        assert 0 <= metrics["clean_acc"] <= 1 and isinstance(metrics["checks"], dict)
        assert (path.parent / "model.safetensors").exists() and (path.parent / "run.log").exists()
        ran[metrics["choices"]["experiment"]] = metrics
    assert sorted(ran) == sorted(names)
    for path in jobs:  # what an experiment's eval adds (adasap_imagenet: ImageNet-V2 through eval.sets)
        metrics, config = json.loads(path.read_text()), OmegaConf.load(path.parent / "config.yaml")
        for name in (OmegaConf.select(config, "eval.sets", default=None) or {}):
            assert 0 <= metrics[f"clean_acc/{name}"] <= 1 and metrics[f"n_eval/{name}"] > 0


# ---------------------------------------------------------------- defaults that run as shipped

# Options whose shipped default cannot run offline, and what they need: each is refused before any work
# with one line naming the key to set, and runs in test_option_runs with that key set by offline().
REFUSED_OFFLINE = {
    # model.pretrained: bert-base-uncased is a hub name; no package ships its weights (the packaged encoder
    # is model=minilm's), so offline it needs a local folder (offline() gives a tiny one)
    ("model", "bert"): ["model.pretrained"],
    # mlm: ??? -- BERT-Attack's masked language model has no default, as no package ships one (offline()
    # gives a tiny masked LM)
    ("attack", "bert_attack"): ["eval.attacks.bert_attack.mlm"],
}


@pytest.mark.parametrize("group, option", list(REFUSED_OFFLINE), ids=[f"{g}={o}" for g, o in REFUSED_OFFLINE])
def test_options_needing_files_no_package_ships_are_refused_naming_the_key(group, option, roots, cache, tmp_path,
                                                                          capsys):
    from tests.test_validation import assert_one_line, no_cache_entry, run_main

    base = [o for o in BASES["text"] if not o.startswith("eval=")] + ["eval=clean"]
    pointed = [f"data.root={roots['text']}", *([] if group == "model" else [f"model.pretrained={roots['text'] / 'encoder'}"])]
    code, err = run_main([*base, *selection(group, option), *pointed, f"cache_dir={tmp_path / 'cache'}",
                          f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    for key in REFUSED_OFFLINE[(group, option)]:
        assert_one_line(code, err, key)
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


def test_adasap_default_schedule_runs_on_the_embedded_default(cache, roots, tmp_path):
    """prune=adasap with its own schedule (not shrink()'s) on the whole digits training split: it fits the
    3 epochs x 12 batches (robprune run prune=adasap used to exit 2) and reaches its target sparsity."""
    cfg, choices = compose_run([*BASES["image"], "prune=adasap", f"cache_dir={cache}"], roots)
    shipped = compose(["prune=adasap"])
    for key in ("dataset.train_split", "data.batch_size", "prune.during_training"):
        OmegaConf.update(cfg, key, OmegaConf.select(shipped, key), merge=False)
    node = cfg.prune.during_training
    assert (node.epochs, node.prune_interval, node.prune_steps) == (3, 6, 5)
    metrics = run(cfg, tmp_path / "run", choices=choices)
    assert metrics["dataset"]["n_train"] == 1442 and "prune_train" in metrics["stages"]
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.05) and metrics["params"] < metrics["params_dense"]


# ---------------------------------------------------------------- table layouts (conf/table)

# The runs each layout of conf/table tabulates: (group, option, other overrides) run as in test_option_runs.
IMAGENET_LIKE = ["dataset=imagefolder", "prune.sparsity=0.6", "eval=clean", "+eval/corruptions@eval.corruptions=default"]
TABLE_RUNS = {"adverfine": [("compress", "none"), ("compress", "prune")],
              "kr": [("prune", "none", "eval=text"), ("prune", "kr_obs", "eval=text")],  # the layout's cells are TextFooler's
              # an image folder stands for ImageNet's (the paper's table); 0.6 sparsity = its 0.40x size
              "adasap": [("prune", "adasap", *IMAGENET_LIKE), ("prune", "taylor", *IMAGENET_LIKE)],
              "hydra": [("prune", "none"), ("prune", "hydra")]}  # the digits default: no paper column (tests/test_hydra.py has one)
# Rows whose published numbers (the layout's paper: section) must show beside the runs' own cells.
TABLE_PAPER = {"adasap": {"AdaSAP 0.40×": "77.27 / 41.23 / —", "Taylor 0.40×": "75.85 / 37.84 / —"}}


@pytest.mark.parametrize("layout", options("table"))
def test_table_layouts_tabulate_real_runs(layout, roots, cache, tmp_path):
    from robprune.cli import main

    if layout not in TABLE_RUNS:
        pytest.fail(f"conf/table/{layout}.yaml is new: add the runs it lays out to TABLE_RUNS in {__file__}")
    for i, (group, option, *extra) in enumerate(TABLE_RUNS[layout]):
        run_option(group, option, roots, cache, tmp_path / "runs" / str(i), *extra)
    assert main(["table", f"+table={layout}", str(tmp_path / "runs"), "--quiet"]) == 0
    rows = [ln for ln in (tmp_path / "runs" / f"{layout}.md").read_text().splitlines() if ln.startswith("|")]
    assert len(rows) >= 2 + len(TABLE_RUNS[layout]), rows  # header, rule, a row per run
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-1]] for ln in rows[2:]}
    for row, published in TABLE_PAPER.get(layout, {}).items():  # ours (measured, in %), then the paper's
        assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d / —", cells[row][0]) and cells[row][1] == published, cells


# ---------------------------------------------------------------- corruption sources that read files

@pytest.mark.parametrize("source", ["files", "folders"])
def test_corruption_sources_read_their_files(source, roots, cache, tmp_path):
    """eval.corruptions.source=files (CIFAR-10-C's <name>.npy + labels.npy) and =folders (Tiny-ImageNet-C's
    <name>/<severity>/<class>/<image>) on tiny files in those layouts, through the pipeline on digits
    (source=generate, the default, runs in test_option_runs[eval/corruptions=*])."""
    from robprune.data import build_data
    from tests.test_corruption_eval import _folders, write_files

    if source == "files":
        data = build_data(compose([]).dataset)  # the files hold the whole test split, as CIFAR-10-C does
        folder = write_files(tmp_path / "c", data.test_x, data.test_y, names=("contrast",))
    else:
        folder = _folders(tmp_path / "c", classes=10, per_class=2, names=("contrast",), severities=(1,))
    metrics = run_option("eval/corruptions", "default", roots, cache, tmp_path / "run", f"eval.corruptions.source={source}",
                         f"eval.corruptions.root={folder}", "eval.corruptions.names=[contrast]")
    assert 0 <= metrics["corruption_acc/contrast/1"] <= 1 and metrics["n_eval/corruptions"] == 8
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").eval.corruptions.source == source
