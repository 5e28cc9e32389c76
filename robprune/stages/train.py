"""The dense model: the model config, filled from ``model.init`` when it names starting weights
(robprune.start, docs/how-to/start-from-a-model.md), trained with the train recipe on the training split
(``train.epochs=0``: kept as it is)."""
from __future__ import annotations

import copy
import shutil

from robprune.checkpoint import save_checkpoint
from robprune.graph import LIBRARIES, Precheck, Stage, StageContext
from robprune.measure import dense_model
from robprune.stages.common import architecture, seed_stage, train_model
from robprune.start import content_record, load_start


def build(ctx: StageContext) -> None:
    cfg = ctx.cfg
    arch = architecture(cfg.model, ctx.data)
    generator = seed_stage(cfg.train_seed, ctx)
    model = dense_model(arch)
    init_from_data(model, ctx.data)
    start = load_start(model, cfg.model, num_classes=arch.get("num_classes"))
    model = model.to(ctx.device)
    history = train_model(model, cfg.train, "train", ctx, generator)
    save_checkpoint(model, ctx.work, arch=arch, history=[], extra={"train_log": history, "start": start})
    shutil.rmtree(ctx.work / "epochs", ignore_errors=True)


def init_from_data(model, data) -> None:
    """A model with a data-dependent initialisation (``init_from_data(images)``: airbench's patch whitening)
    gets up to ``model.init_images`` training images, evenly spaced over the split (an image folder is class-ordered, so a
    prefix would be a few classes only). model.init's weights, loaded after, replace it."""
    hook = getattr(model, "init_from_data", None)
    if hook is None:
        return
    import torch

    n = len(data.train_y)
    pick = torch.linspace(0, n - 1, min(n, int(model.init_images))).round().long().unique()
    x = data.train_x[pick]
    hook(x.float() / 255.0 if x.dtype == torch.uint8 else x.float())


def precheck(pc: Precheck) -> None:
    """model.init resolves and its weights fit the model (strict, the head rule), before any stage runs."""
    if pc.cfg.model.get("init") is not None:
        load_start(copy.deepcopy(pc.dense), pc.cfg.model, num_classes=pc.data.arch_record().get("num_classes"))


def content(view) -> dict:
    """model.init keyed by its file's sha256, never by its path (robprune.graph.Stage.content)."""
    return {"model.init": content_record(view.model)}


STAGE = Stage("train", reads=("model", "train", "train_seed", "data.batch_size", "dataset.augment", "trainer"),
              data=("train",), build=build, precheck=precheck, content=content,
              libraries=(*LIBRARIES, "robustbench"))  # model=robustbench: the zoo's architecture definitions
