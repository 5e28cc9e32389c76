"""Any torchvision classification model by name: ``torchvision.models.get_model(name, weights=None,
num_classes=num_classes)`` behind robprune's :class:`Normalize` layer, so inputs stay pixels in [0, 1].

As for timm (:mod:`robprune.models.timm`), the ImageNet stem downsamples a 32 px image to almost nothing:
``stem: small`` (the ``auto`` choice for images up to 64 px) sets the first conv ``conv1`` to stride 1
and drops the stem max-pool ``maxpool``, which only ResNet-style nets (resnet*, resnext*, wide_resnet*)
have; ``stem: auto`` leaves other nets as they are, ``stem: small`` refuses them. ViTs are built for the
dataset's image size. A dataset with other than 3 channels gets a first conv (the model's first
``nn.Conv2d``) taking that many, randomly initialised.

Published weights are ``model.init=pretrained`` (:mod:`robprune.start`): :func:`torchvision_weights`
finds the file of ``model.weights`` (an enum name of ``get_model_weights(name)``, ``DEFAULT`` = the
best) where torch.hub keeps it (``torch.hub.get_dir()/checkpoints``, i.e. ``TORCH_HOME``), downloaded
with ``torch.hub.download_url_to_file`` only when robprune is online (``HF_HUB_OFFLINE=0``); the Normalize
layer then holds the weights' normalisation (their ``transforms()``' mean and std, ImageNet's), not the
dataset's, and the weights' published ImageNet accuracies are recorded in model.json. They take 3-channel
images: another channel count with init=pretrained is one line. DenseNet's files use key names older
than its modules' (torchvision renames them while loading); robprune loads names as they are and
refuses them, naming the first key that does not fit. torchvision is imported only when a torchvision
model is built or checked.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import NormalizedNet, Published, download, online
from robprune.options import Choice, Value
from robprune.registry import MODELS

STEMS = ("auto", "torchvision", "small")
SMALL_IMAGE = 64  # px: stem auto = small up to this image size, as for timm


def _check_node(node: dict) -> None:
    name = str(node.get("name", "resnet18"))
    check_name(name)
    check_weights(name, str(node.get("weights", "DEFAULT")))


@MODELS.register("torchvision", modality="image", check=_check_node,
                 pretrained=lambda cfg: torchvision_weights(str(cfg.get("name", "resnet18")), str(cfg.get("weights", "DEFAULT"))))
def torchvision_model(*, in_channels: int, image_size: int, num_classes: int, mean, std,
                      name: Annotated[str, Value("str", example="resnet18"), "torchvision classification model "
                                      "(torchvision.models.list_models(module=torchvision.models)): resnet18, resnet50, "
                                      "mobilenet_v3_small, vgg16_bn, ..."] = "resnet18",
                      weights: Annotated[str, Value("str", example="IMAGENET1K_V1"), "which published weights "
                                         "model.init=pretrained loads: an enum name of "
                                         "torchvision.models.get_model_weights(name); DEFAULT = the best"] = "DEFAULT",
                      stem: Annotated[str, Choice(*STEMS), "auto = small for images <= 64 px (ResNets), else "
                                      "torchvision | small = conv1 stride 1, no stem max-pool (ResNets only) | "
                                      "torchvision = the ImageNet stem"] = "auto") -> NormalizedNet:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes)`` after Normalize,
    randomly initialised (``model.init=pretrained`` loads ``weights`` afterwards). ``weights`` is used
    only by :func:`torchvision_weights`; it is an option of this builder so that it is declared, checked
    and recorded with the model. Raises ConfigError for an unknown name or weights, or stem=small on a
    net without a ResNet stem."""
    import torchvision

    check_name(name)
    check_weights(name, weights)
    if stem not in STEMS:
        raise ConfigError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}; e.g. model.stem=auto")
    kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _first_conv_channels(net, in_channels)
    if stem == "small" or (stem == "auto" and image_size <= SMALL_IMAGE):
        small_stem(net, name, required=stem == "small")
    return NormalizedNet(net, mean, std)


def names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def check_name(name: str) -> None:
    """ConfigError unless ``name`` is a torchvision classification model; lists close matches."""
    known = names()
    if name in known:
        return
    near = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(near)}; e.g. model.name={near[0]}" if near else "no close match; e.g. model.name=resnet18"
    raise ConfigError(f"model.name={name!r} is not a torchvision classification model; {hint} (all names: "
                      f"torchvision.models.list_models(module=torchvision.models))")


def check_weights(name: str, weights: str):
    """The weights enum member ``weights`` of model ``name``, or ConfigError listing the names it has."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if weights not in enum.__members__:
        have = ", ".join(enum.__members__)
        raise ConfigError(f"model.weights={weights} is not a weight of torchvision's {name} (it has {have}); "
                          f"e.g. model.weights=DEFAULT")
    return enum[weights]


def small_stem(net: nn.Module, name: str, *, required: bool) -> None:
    """IN PLACE: ``conv1`` to stride 1 and no ``maxpool`` (a ResNet then downsamples 8x instead of 32x).
    A net without both is left as is, or, if ``required`` (stem=small), a ConfigError."""
    conv, pool = getattr(net, "conv1", None), getattr(net, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(pool, nn.MaxPool2d):
        if required:
            raise ConfigError(f"model.stem=small: torchvision's {name} has no ResNet stem (conv1 and maxpool); use "
                              f"model.stem=torchvision")
        return
    conv.stride = (1, 1)
    net.maxpool = nn.Identity()


def _first_conv_channels(net: nn.Module, in_channels: int) -> None:
    """IN PLACE: the first ``nn.Conv2d`` replaced by one taking ``in_channels`` (its other settings kept)."""
    name, conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ConfigError(f"dataset has {in_channels} channels but this torchvision model has no conv to take them; "
                          f"use a 3-channel dataset")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    parent, _, last = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, last, new)


def torchvision_weights(name: str, weights: str = "DEFAULT") -> Published:
    """The file of torchvision's ``weights`` for ``name`` where torch.hub keeps it
    (``torch.hub.get_dir()/checkpoints/<basename of the url>``), downloaded with torch.hub's own code only
    when online; the weights' normalisation; their published accuracies (``meta['_metrics']``). ConfigError
    (one line naming model.init and the fix) when offline and absent or when the download fails."""
    import torch
    import torchvision

    check_name(name)
    member = check_weights(name, weights)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name
    fix = "pass a local weights file of this architecture: model.init=path/to/weights.safetensors"
    if not path.is_file():
        if not online():
            raise ConfigError(f"model.init=pretrained: torchvision's {name} weights {member} are not on this machine "
                              f"({path}) and robprune is offline (HF_HUB_OFFLINE=0 downloads them once); {fix}")
        if download(member.url, path) is None:
            raise ConfigError(f"model.init=pretrained: downloading {member.url} to {path} failed; copy the file there, or {fix}")
    transform = member.transforms()
    info = {"source": f"torchvision {torchvision.__version__}", "weights": str(member),
            "metrics": member.meta.get("_metrics")}
    return Published(path=path, mean=tuple(float(v) for v in transform.mean), std=tuple(float(v) for v in transform.std),
                     info={k: v for k, v in info.items() if v is not None})
