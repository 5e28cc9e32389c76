"""Model registry. A config names a builder by ``_target_: robprune.models.<name>``; every builder takes
``in_channels, image_size, num_classes, mean, std`` (filled from the dataset) plus its own options, and
returns a model whose first layer is :class:`Normalize`, so inputs are pixels in [0, 1]. Each is
registered in :data:`robprune.registry.MODELS` under its conf file's stem (``conf/model/<name>.yaml``). ``timm_model``
builds any timm architecture by name (``model=timm model.name=...``). ``text_classifier`` builds a
transformers sequence classifier whose input is token ids (:mod:`robprune.models.text`)."""
from robprune.models.cnn import cnn8, small_cnn
from robprune.models.common import Normalize, build_model
from robprune.models.resnet import resnet18
from robprune.models.text import TextClassifier, text_classifier
from robprune.models.timm import timm_model
from robprune.models.vgg import vgg16_bn

from robprune.registry import MODELS

# name (= conf/model/<name>.yaml) -> builder; minilm and bert are one builder with another pretrained encoder
MODELS.add("small_cnn", small_cnn, modality="image")
MODELS.add("cnn8", cnn8, modality="image")
MODELS.add("resnet18", resnet18, modality="image")
MODELS.add("vgg16_bn", vgg16_bn, modality="image")
MODELS.add("timm", timm_model, modality="image")
MODELS.add("minilm", text_classifier, modality="text")
MODELS.add("bert", text_classifier, modality="text")

__all__ = ["Normalize", "build_model", "cnn8", "small_cnn", "resnet18", "timm_model", "vgg16_bn", "TextClassifier", "text_classifier"]
