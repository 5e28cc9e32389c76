"""The RobustBench model zoo (Croce et al. 2021) as a model: ``model=robustbench model.name=<zoo name>
model.threat=Linf|L2|corruptions`` (docs/how-to/start-from-a-model.md).

The architecture is the ``robustbench`` package's own definition (``model_zoo.<dataset>``'s ``model``
entry), so a zoo checkpoint loads into it unchanged; the models take pixels in [0, 1] and normalise
inside where their authors trained that way, so the dataset's mean/std are not used. The weights
(``model.init=pretrained``, this conf file's default) are the file RobustBench's ``load_model`` keeps,
``<model.dir>/<dataset>/<threat>/<name>.pt`` (``./models`` as in RobustBench), downloaded with the
package's own code when it is missing and robprune is online (``HF_HUB_OFFLINE=0``). They are read with
``torch.load(weights_only=True)`` by :mod:`robprune.start`, never by RobustBench's loader (which unpickles).
The zoo's published clean and robust accuracies (the leaderboard in the package's README) are recorded
in model.json and metrics.json (``start.published``) beside robprune's.

robustbench 1.1.1 (PyPI) imports its benchmark (``autoattack`` from GitHub, not on PyPI) and its data
loaders (``pkg_resources``, gone from setuptools 81) in its package ``__init__``; the zoo needs neither,
so :func:`zoo` loads ``robustbench.model_zoo`` without running it.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import Published, online
from robprune.options import Choice, Value
from robprune.registry import MODELS

DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}  # the zoo's datasets and their class counts
THREATS = ("Linf", "L2", "corruptions")
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}


def zoo():
    """``robustbench.model_zoo``, imported without running the package's ``__init__`` (see the module
    docstring: in robustbench 1.1.1 it fails without GitHub's autoattack, and warns about pkg_resources)."""
    if "robustbench" not in sys.modules:
        spec = importlib.util.find_spec("robustbench")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("model=robustbench needs the robustbench package: pip install 'robprune[robustbench]'")
        package = types.ModuleType("robustbench")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["robustbench"] = package
    return importlib.import_module("robustbench.model_zoo")


def entries(dataset: str, threat: str) -> dict:
    """{zoo name: {'model': constructor, 'gdrive_id': ...}} for one dataset and threat model."""
    z = zoo()
    enums = importlib.import_module("robustbench.model_zoo.enums")
    by_threat = z.model_dicts[enums.BenchmarkDataset(dataset)]
    threat_enum = enums.ThreatModel(threat)
    if threat_enum not in by_threat:
        have = ", ".join(t.value for t in by_threat)
        raise ConfigError(f"model.threat={threat}: RobustBench has no {threat} models for {dataset} (it has {have}); "
                          f"e.g. model.threat=Linf")
    return by_threat[threat_enum]


def check(name: str, threat: str, dataset: str) -> dict:
    """The zoo entry, or ConfigError naming the closest zoo names."""
    if dataset not in DATASETS:
        raise ConfigError(f"model.dataset={dataset}: RobustBench's zoo has models for the images of {', '.join(DATASETS)} "
                          f"only; use dataset=cifar10 (model.dataset follows dataset.name), or set model.dataset=cifar10 for "
                          f"an image folder of CIFAR-10")
    if threat not in THREATS:
        raise ConfigError(f"model.threat must be one of {', '.join(THREATS)}, got {threat!r}; e.g. model.threat=Linf")
    models = entries(dataset, threat)
    if name not in models:
        near = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        hint = f"pick a zoo name, closest: {', '.join(near)}" if near else f"e.g. model.name={next(iter(models))}"
        raise ConfigError(f"model.name={name!r} is not in RobustBench's {dataset} {threat} zoo ({len(models)} models); {hint}")
    return models[name]


@MODELS.register("robustbench", modality="image", pretrained=lambda cfg: zoo_weights(cfg),
                 check=lambda node: check(str(node.get("name")), str(node.get("threat")), str(node.get("dataset"))))
def robustbench_model(*, in_channels: int, image_size: int, num_classes: int, mean, std,
                      name: Annotated[str, Value("str", example="Carmon2019Unlabeled"), "zoo name (the Model ID of "
                                      "RobustBench's leaderboard), e.g. Standard, Carmon2019Unlabeled, Wong2020Fast"] = "Standard",
                      threat: Annotated[str, Choice(*THREATS), "threat model of the zoo: Linf | L2 | corruptions"] = "Linf",
                      dataset: Annotated[str, Value("str", example="cifar10"), "the zoo's dataset: cifar10 | cifar100 | "
                                         "imagenet (conf/model/robustbench.yaml: ${dataset.name})"] = "cifar10",
                      dir: Annotated[str, Value("str", example="models"), "RobustBench's model folder: weights are "  # noqa: A002
                                     "<dir>/<dataset>/<threat>/<name>.pt"] = "models") -> nn.Module:
    """The zoo's architecture for (dataset, threat, name), untrained (``model.init=pretrained`` loads the
    zoo's weights). The dataset's shape must be the zoo dataset's (mean/std are not used)."""
    check(name, threat, dataset)
    if (in_channels, image_size, num_classes) != (3, IMAGE_SIZE[dataset], DATASETS[dataset]):
        raise ConfigError(f"model=robustbench model.dataset={dataset} takes 3x{IMAGE_SIZE[dataset]}x{IMAGE_SIZE[dataset]} "
                          f"images of {DATASETS[dataset]} classes, but the dataset gives {in_channels}x{image_size}x"
                          f"{image_size} and {num_classes}; use dataset={dataset}")
    return entries(dataset, threat)[name]["model"]()


def zoo_weights(cfg: dict) -> Published:
    """The zoo file for ``cfg`` (RobustBench's cache layout), downloaded with RobustBench's code when
    missing and online; ConfigError offline, naming the file and how to get it."""
    name, threat, dataset = str(cfg.get("name", "Standard")), str(cfg.get("threat", "Linf")), str(cfg.get("dataset", "cifar10"))
    entry = check(name, threat, dataset)
    path = Path(str(cfg.get("dir", "models"))) / dataset / threat / f"{name}.pt"
    info = published(name, threat, dataset)
    if not path.is_file():
        gdrive = entry.get("gdrive_id")
        if not gdrive or isinstance(gdrive, list):
            raise ConfigError(f"model.name={name}: RobustBench publishes these weights through timm or in several files, "
                              f"which robprune does not load yet; pick another zoo model or pass a state dict: model.init=<file>")
        if not online():
            raise ConfigError(f"model.init=pretrained: RobustBench weights {path} are not on this machine and robprune is "
                              f"offline; set HF_HUB_OFFLINE=0 on a machine online (robprune downloads them with RobustBench's "
                              f"code), or pass the file: model.init=<file> (or model.dir=<folder of the zoo's layout>)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            importlib.import_module("robustbench.utils").download_gdrive_new(gdrive, path)
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            path.unlink(missing_ok=True)
            raise ConfigError(f"model.init=pretrained: downloading {name} to {path} failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); pass the file: model.init=<file>") from None
    return Published(path=path, info=info, wrappers=("last",), strip=("model.",))


@lru_cache(maxsize=None)
def leaderboard() -> dict:
    """{(dataset, threat): {zoo name: (clean %, robust %)}} from the leaderboard in the installed package's README."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("robustbench")
    except PackageNotFoundError:
        return {}
    text = meta.get_payload() or meta.get("Description") or ""
    table: dict = {}
    dataset = threat = None
    for line in text.splitlines():
        head = line.strip().lower()
        if line.startswith("### "):
            dataset = "cifar100" if "cifar-100" in head else "cifar10" if "cifar-10" in head else \
                "imagenet" if "imagenet" in head else None
        elif line.startswith("#### "):
            threat = "Linf" if "linf" in head else "L2" if "l2" in head else "corruptions" if "corruption" in head else None
        elif dataset and threat and line.startswith("|"):
            cells = [re.sub(r"<[^>]+>|\*|\[|\]\(.*?\)", "", c).strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and cells[3].endswith("%") and cells[4].endswith("%"):
                table.setdefault((dataset, threat), {})[cells[1]] = (float(cells[3][:-1]), float(cells[4][:-1]))
    return table


def published(name: str, threat: str, dataset: str) -> dict:
    """The zoo's published accuracies of one model (fractions), or a record saying none was found."""
    from importlib.metadata import version

    found = leaderboard().get((dataset, threat), {}).get(name)
    source = f"robustbench {version('robustbench')} README leaderboard"
    if found is None:
        return {"zoo": f"{dataset}/{threat}/{name}", "source": source, "clean_acc": None, "robust_acc": None}
    robust = "autoattack" if threat in ("Linf", "L2") else "corruptions"
    return {"zoo": f"{dataset}/{threat}/{name}", "source": source, "clean_acc": found[0] / 100,
            "robust_acc": found[1] / 100, "robust_metric": robust}
