"""Model registry. A config names a builder by ``_target_: robprune.models.<name>``; every builder takes
``in_channels, image_size, num_classes, mean, std`` (filled from the dataset) plus its own options, and
returns a model whose first layer is :class:`Normalize`, so inputs are pixels in [0, 1]. Each
registers itself in :data:`robprune.registry.MODELS` under its conf file's stem (``conf/model/<name>.yaml``),
its options declared in its signature (docs/how-to/add-model.md). ``timm_model``
builds any timm architecture by name (``model=timm model.name=...``), ``torchvision_model`` any
torchvision classification model (``model=torchvision model.name=...``). ``text_classifier`` builds a
transformers sequence classifier whose input is token ids (:mod:`robprune.models.text`)."""
from robprune.models.airbench import airbench
from robprune.models.cnn import cnn8, small_cnn
from robprune.models.common import Normalize, StartOptions, build_model
from robprune.models.resnet import resnet18
from robprune.models.robustbench import robustbench_model
from robprune.models.text import TextClassifier, text_classifier
from robprune.models.timm import timm_model
from robprune.models.torchvision import torchvision_model
from robprune.models.vgg import vgg16_bn
from robprune.models.wrn import wrn

from robprune.registry import MODELS

MODELS.set_common(StartOptions)  # model.init, model.head: every model node takes them (robprune.start)

__all__ = ["StartOptions", "Normalize", "build_model", "airbench", "cnn8", "small_cnn", "resnet18", "robustbench_model", "timm_model", "torchvision_model", "vgg16_bn", "wrn", "TextClassifier", "text_classifier"]
