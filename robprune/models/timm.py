"""Any timm model by name (Wightman, pytorch-image-models): ``timm.create_model(name, in_chans,
num_classes)`` behind robprune's :class:`Normalize` layer, so inputs stay pixels in [0, 1].

timm's models are built for ImageNet (224 px): their stem downsamples by 4 (ResNet: 7x7 stride-2 conv
and a stride-2 max-pool) or 2 (MobileViT, EfficientNet), so a 32 px image ends at 1x1 before the last
stage. ``stem: small`` (the ``auto`` choice for images up to 64 px) sets timm's first conv
(``pretrained_cfg['first_conv']``) to stride 1 and drops a stem max-pool (``model.maxpool``), as the
CIFAR ResNets do; ``stem: timm`` keeps timm's stem as it is. Models with a fixed input size (ViTs) get
``img_size`` = the dataset's image size.

Published weights are ``model.init=pretrained`` (:mod:`robprune.start`), found by :func:`timm_weights`:
the file timm's ``pretrained_cfg`` names for the name's tag, in the Hugging Face hub's cache (``HF_HOME``)
or torch.hub's checkpoint folder, downloaded with the hub's own code only when robprune is online
(``HF_HUB_OFFLINE=0``); the Normalize layer then holds the normalisation they were trained with
(``pretrained_cfg['mean']``/``['std']``), not the dataset's. timm is imported only when a timm model is built.
Channel pruning on timm models: see :func:`robprune.validate_prune.check_cut_fits`.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import NormalizedNet, Published, download, online
from robprune.options import Choice, Float, Value
from robprune.registry import MODELS

DROP = Float(0, high=1, high_open=True, null=True, example="0.1")  # a dropout rate

STEMS = ("auto", "timm", "small")
SMALL_IMAGE = 64  # px: stem auto = small up to this image size


@MODELS.register("timm", modality="image", pretrained=lambda cfg: timm_weights(str(cfg.get("name", "resnet18"))),
                 check=lambda node: check_timm_name(str(node.get("name", "resnet18"))))
def timm_model(*, in_channels: int, image_size: int, num_classes: int, mean, std,
               name: Annotated[str, Value("str", example="resnet18"), "timm architecture (timm.list_models()): resnet18, "
                               "resnet10t, mobilevit_xxs, vgg16_bn, ...; a tag is allowed (resnet18.a1_in1k)"] = "resnet18",
               stem: Annotated[str, Choice(*STEMS), "auto = small for images <= 64 px, else timm | small = first conv "
                               "stride 1, no stem max-pool | timm = timm's ImageNet stem"] = "auto",
               drop_rate: Annotated[float | None, DROP, "dropout before the classifier; null = timm's default"] = None,
               drop_path_rate: Annotated[float | None, DROP, "stochastic depth rate; null = timm's default (models "
                                         "without it refuse a value)"] = None) -> NormalizedNet:
    """``timm.create_model(name, in_chans=in_channels, num_classes=num_classes)`` after Normalize, randomly
    initialised (``model.init=pretrained`` loads timm's published weights afterwards: :func:`timm_weights`).

    name: a timm architecture (``timm.list_models()``), optionally with a weight tag (``resnet18.a1_in1k``).
    stem: auto | timm | small (see the module docstring). drop_rate, drop_path_rate: classifier dropout
    and stochastic depth; None = timm's default (not every model takes drop_path_rate).
    Raises ConfigError for an unknown name or an option the model does not take.
    """
    import timm

    check_timm_name(name)
    if stem not in STEMS:
        raise ConfigError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}; e.g. model.stem=auto")
    kwargs = {"in_chans": in_channels, "num_classes": num_classes, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    if _fixed_input_size(name):
        kwargs["img_size"] = image_size
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:  # an option this architecture's constructor does not have
        raise ConfigError(f"model.name={name} does not take one of the options given ({err}); set model.drop_rate=null "
                          f"and model.drop_path_rate=null") from None
    if stem == "small" or (stem == "auto" and image_size <= SMALL_IMAGE):
        small_stem(net, name, required=stem == "small")
    return NormalizedNet(net, mean, std)


def check_timm_name(name: str) -> None:
    """ConfigError unless ``name`` is a timm architecture (a ``.tag`` suffix allowed); lists close matches.
    Names from the hub (``hf-hub:org/repo``) are not checked here (they need the network)."""
    import timm

    if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name):
        return
    near = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(near)}; e.g. model.name={near[0]}" if near else \
        "no close match; e.g. model.name=resnet18"
    raise ConfigError(f"model.name={name!r} is not a timm model; {hint} (all names: timm.list_models())")


HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo, in its order


def timm_weights(name: str) -> Published:
    """The published weights of timm model ``name`` (``arch.tag``; no tag = timm's default tag) as a local
    file, with the normalisation they were trained with.

    Where, in order: the Hugging Face hub repo of the tag's ``pretrained_cfg`` (``hf_hub_id``, file
    ``hf_hub_filename`` or ``model.safetensors`` then ``pytorch_model.bin``) through
    ``huggingface_hub.hf_hub_download`` (its cache, ``HF_HOME``; the network only when :func:`online`);
    then the cfg's ``url`` as torch.hub keeps it, ``torch.hub.get_dir()/checkpoints/<basename>``
    (downloaded with ``torch.hub.download_url_to_file`` only when online). ConfigError (one line naming
    model.init and a local file as the fix) when the tag publishes no weights or none is on this machine
    offline. The file is loaded by robprune.start (strict, safetensors or ``weights_only``), never by timm."""
    from timm.models import get_pretrained_cfg

    check_timm_name(name)
    fix = "pass a local weights file of this architecture: model.init=path/to/weights.safetensors"
    if name.startswith(("hf-hub:", "hf_hub:")):
        raise ConfigError(f"model.init=pretrained: model.name={name} is a hub repo, not a timm tag; download its "
                          f"weights yourself and {fix}")
    cfg = get_pretrained_cfg(name)
    hub_id, url = (getattr(cfg, "hf_hub_id", None) or None), (getattr(cfg, "url", None) or None)
    local = getattr(cfg, "file", None)
    if cfg is None or not (hub_id or url or local):
        raise ConfigError(f"model.init=pretrained: timm publishes no weights for {name!r} (no hub repo or url in its "
                          f"pretrained_cfg); name a tag that has some (timm.list_pretrained('{name.split('.')[0]}*')), or {fix}")
    mean, std = tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    info = {"source": f"timm {_version('timm')} pretrained_cfg", "tag": f"{name.split('.')[0]}.{cfg.tag}" if cfg.tag else name}
    path = _from_file(local) or _from_hub(hub_id, getattr(cfg, "hf_hub_filename", None)) or _from_url(url)
    if path is None:
        where = " or ".join(w for w in (hub_id and f"the hub repo {hub_id} (HF_HOME's cache)",
                                        url and f"{_hub_checkpoint(url)}") if w)
        why = "robprune is offline (HF_HUB_OFFLINE=0 downloads them once)" if not online() else "the download failed"
        raise ConfigError(f"model.init=pretrained: the weights of timm model {name!r} are not on this machine (looked in "
                          f"{where}) and {why}; {fix}")
    return Published(path=path, mean=mean, std=std, info=info)


def _from_file(local) -> Path | None:
    return Path(local) if local and Path(local).is_file() else None


def _from_hub(hub_id: str | None, filename: str | None) -> Path | None:
    """The cached (or, online, downloaded) file of a hub repo; None when it is not to be had."""
    if not hub_id:
        return None
    from huggingface_hub import hf_hub_download

    for file in ((filename,) if filename else HUB_FILES):
        try:
            return Path(hf_hub_download(hub_id, file, local_files_only=not online()))
        except Exception:  # noqa: BLE001, S112 - not cached, no such file, offline, network: all mean "not from here"
            continue
    return None


def _hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps a url's file (TORCH_HOME at call time)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _from_url(url: str | None) -> Path | None:
    if not url:
        return None
    path = _hub_checkpoint(url)
    if path.is_file():
        return path
    if not online():
        return None
    return download(url, path)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def small_stem(net: nn.Module, name: str, *, required: bool) -> None:
    """IN PLACE: stride 1 in timm's first conv (it must have stride 1 or 2) and no stem max-pool
    (``net.maxpool``). ResNets then downsample 8x instead of 32x, MobileViT 16x; VGG is unchanged.
    A first conv with another stride (a ViT's patch embedding) is left as is, or, if ``required``
    (stem=small), a ConfigError."""
    first = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv")
    conv = net.get_submodule(first) if isinstance(first, str) else None
    if not isinstance(conv, nn.Conv2d) or tuple(conv.stride) not in ((1, 1), (2, 2)):
        if required:
            stride = tuple(conv.stride) if isinstance(conv, nn.Conv2d) else None
            raise ConfigError(f"model.stem=small: timm model {name!r} has no stride-2 stem conv (first conv "
                              f"{first!r}, stride {stride}); use model.stem=timm")
        return
    conv.stride = (1, 1)
    if isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
        net.maxpool = nn.Identity()


def _fixed_input_size(name: str) -> bool:
    """Whether the architecture only takes its configured input size (ViT-style position embeddings)."""
    from timm.models import get_pretrained_cfg

    if name.startswith(("hf-hub:", "hf_hub:")):
        return False
    cfg = get_pretrained_cfg(name)
    return bool(getattr(cfg, "fixed_input_size", False))
