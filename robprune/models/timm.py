"""Any timm model by name (Wightman, pytorch-image-models): ``timm.create_model(name, in_chans,
num_classes)`` behind robprune's :class:`Normalize` layer, so inputs stay pixels in [0, 1].

timm's models are built for ImageNet (224 px): their stem downsamples by 4 (ResNet: 7x7 stride-2 conv
and a stride-2 max-pool) or 2 (MobileViT, EfficientNet), so a 32 px image ends at 1x1 before the last
stage. ``stem: small`` (the ``auto`` choice for images up to 64 px) sets timm's first conv
(``pretrained_cfg['first_conv']``) to stride 1 and drops a stem max-pool (``model.maxpool``), as the
CIFAR ResNets do; ``stem: timm`` keeps timm's stem as it is. Models with a fixed input size (ViTs) get
``img_size`` = the dataset's image size.

Pretrained weights come from the Hugging Face hub and need the internet once (then its cache,
``HF_HOME``); they were trained on timm's own normalisation (``pretrained_cfg['mean']``), while the
Normalize layer uses the dataset's ``mean``/``std``. timm is imported only when a timm model is built.
Channel pruning on timm models: see :func:`robprune.validate_prune.check_cut_fits`.
"""
from __future__ import annotations

import difflib
from typing import Annotated

from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import Normalize
from robprune.options import BOOL, Choice, Float, Value
from robprune.registry import MODELS

DROP = Float(0, high=1, high_open=True, null=True, example="0.1")  # a dropout rate

STEMS = ("auto", "timm", "small")
SMALL_IMAGE = 64  # px: stem auto = small up to this image size


class TimmNet(nn.Module):
    """Normalize -> a timm model. x: (N, C, H, W) pixels in [0, 1] -> (N, num_classes) logits."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


@MODELS.register("timm", modality="image", check=lambda node: check_timm_name(str(node.get("name", "resnet18"))))
def timm_model(*, in_channels: int, image_size: int, num_classes: int, mean, std,
               name: Annotated[str, Value("str", example="resnet18"), "timm architecture (timm.list_models()): resnet18, "
                               "resnet10t, mobilevit_xxs, vgg16_bn, ...; a tag is allowed (resnet18.a1_in1k)"] = "resnet18",
               pretrained: Annotated[bool, BOOL, "true = ImageNet weights from the Hugging Face hub (internet once, then "
                                     "HF_HOME's cache); the classifier is new"] = False,
               stem: Annotated[str, Choice(*STEMS), "auto = small for images <= 64 px, else timm | small = first conv "
                               "stride 1, no stem max-pool | timm = timm's ImageNet stem"] = "auto",
               drop_rate: Annotated[float | None, DROP, "dropout before the classifier; null = timm's default"] = None,
               drop_path_rate: Annotated[float | None, DROP, "stochastic depth rate; null = timm's default (models "
                                         "without it refuse a value)"] = None) -> TimmNet:
    """``timm.create_model(name, pretrained, in_chans=in_channels, num_classes=num_classes)`` after Normalize.

    name: a timm architecture (``timm.list_models()``), optionally with a weight tag (``resnet18.a1_in1k``).
    stem: auto | timm | small (see the module docstring). drop_rate, drop_path_rate: classifier dropout
    and stochastic depth; None = timm's default (not every model takes drop_path_rate).
    Raises ConfigError for an unknown name, an option the model does not take, or weights that cannot
    be downloaded.
    """
    import timm

    check_timm_name(name)
    if stem not in STEMS:
        raise ConfigError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}; e.g. model.stem=auto")
    kwargs = {"in_chans": in_channels, "num_classes": num_classes, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    if _fixed_input_size(name):
        kwargs["img_size"] = image_size
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:  # an option this architecture's constructor does not have
        raise ConfigError(f"model.name={name} does not take one of the options given ({err}); set model.drop_rate=null "
                          f"and model.drop_path_rate=null") from None
    except Exception as err:  # noqa: BLE001 - hub, network and missing-weights errors come in many types
        if not pretrained:
            raise
        raise ConfigError(f"model.pretrained=true: the weights of timm model {name!r} could not be loaded "
                          f"({type(err).__name__}: {_first_line(err)}); connect to the internet once with HF_HUB_OFFLINE=0 "
                          f"(robprune's default is offline; weights are then cached under HF_HOME), or set "
                          f"model.pretrained=false") from None
    if stem == "small" or (stem == "auto" and image_size <= SMALL_IMAGE):
        small_stem(net, name, required=stem == "small")
    return TimmNet(net, mean, std)


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


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
