"""Greedy weight averaging (docs/methods/kr.md#step-1; Wortsman et al. 2022's greedy soup): the ingredients
are fine-tuned models with different hyperparameters — the train stage's model plus one stage per entry
of ``average.ingredients`` (a stage *family*: each entry is its own cached stage, so adding one reuses
the others) — sorted by accuracy under attack on the held-out part of the data (``dataset.heldout_split``,
a slice of the training file no model trains on), then added one by one to a uniform average when the
average's score does not drop. The chosen average is the model the later stages prune."""
from __future__ import annotations

import shutil

import torch
from omegaconf import OmegaConf

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.config import to_container
from robprune.errors import ConfigError
from robprune.graph import LIBRARIES, TEXT_ATTACK_LIBRARIES, Precheck, Stage, StageContext
from robprune.io import atomic_write_json
from robprune.measure import dense_model
from robprune.stages.common import architecture, seed_stage, train_model
from robprune.train.recipe import merge_recipe

AVERAGE_FILE = "average.json"


# --- the ingredients: a family of training stages -----------------------------------------------------

def ingredient_node(ctx: StageContext, name: str):
    """The ingredient's training recipe: ``train`` with the ingredient's entries merged over it."""
    entry = to_container(ctx.cfg.average.ingredients[name])  # its keys: checked by robprune.schema.INGREDIENT
    return merge_recipe(ctx.cfg.train, {k: v for k, v in entry.items() if k != "seed"}), entry.get("seed")


def build_ingredient(ctx: StageContext) -> None:
    name = ctx.stage.removeprefix("ingredient_")
    node, seed = ingredient_node(ctx, name)
    arch = architecture(ctx.cfg.model, ctx.data)
    generator = seed_stage(int(seed if seed is not None else ctx.cfg.train_seed), ctx)
    model = dense_model(arch).to(ctx.device)
    history = train_model(model, node, f"average.ingredients.{name}", ctx, generator)
    save_checkpoint(model, ctx.work, arch=arch, history=[], extra={"train_log": history, "ingredient": name})
    shutil.rmtree(ctx.work / "epochs", ignore_errors=True)


def ingredients(cfg) -> list[Stage]:
    """One training stage per entry of ``average.ingredients`` (none without an ``average`` node)."""
    node = cfg.get("average")
    if node is None:
        return []
    return [Stage(f"ingredient_{name}", reads=("model", "train", f"average.ingredients.{name}", "train_seed",
                                               "data.batch_size", "dataset.augment", "trainer"), data=("train",),
                  build=build_ingredient) for name in node.ingredients]


INGREDIENTS = Stage("ingredient", reads=(), build=build_ingredient, instances=ingredients)


# --- the greedy average ---------------------------------------------------------------------------------

def uniform_average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; other tensors (integer buffers) from the first state."""
    return {k: (torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone())
            for k, v in states[0].items()}


def score(model, ctx: StageContext) -> float:
    """Accuracy under ``average.attack`` on the first ``average.n_score`` held-out sentences (seeded)."""
    from robprune.evaluate.text import evaluate_text_robustness

    node = ctx.cfg.average
    eval_cfg = OmegaConf.create({"attacks": {"score": to_container(node.attack)}, "batch_size": int(node.batch_size),
                                 "n_examples": {"score": int(node.n_score)}})
    metrics = evaluate_text_robustness(model.to(ctx.device), ctx.data.heldout_text, ctx.data.heldout_y,
                                       ctx.data.tokenizer, eval_cfg, max_length=int(ctx.data.max_length),
                                       device=ctx.device, seed=int(ctx.cfg.train_seed), progress=ctx.progress)
    return float(metrics["robust_acc/score"])


def build_average(ctx: StageContext) -> None:
    if ctx.data.heldout_text is None:
        raise ConfigError("average needs held-out sentences to score the ingredients; set dataset.heldout_split "
                          "(e.g. 'train[8000:8500]', disjoint from dataset.train_split)")
    seed_stage(int(ctx.cfg.train_seed), ctx)  # part of building the dense model: a seed sweep with train_seed pinned shares it
    names = ["train", *sorted(n for n in ctx.inputs if n.startswith("ingredient_"))]
    models = {n: load_checkpoint(ctx.input(n).path) for n in names}
    scores = {n: score(models[n][0], ctx) for n in names}
    order = sorted(names, key=lambda n: (-scores[n], names.index(n)))   # best first; ties in declaration order
    chosen, best = [order[0]], scores[order[0]]
    states = {n: models[n][0].state_dict() for n in names}
    steps = []
    for name in order[1:]:                       # greedy soup: keep an ingredient when the score does not drop
        model, _ = load_checkpoint(ctx.input("train").path)
        model.load_state_dict(uniform_average([states[n] for n in (*chosen, name)]))
        trial = score(model, ctx)
        steps.append({"ingredient": name, "score": trial, "kept": trial >= best})
        if trial >= best:
            chosen, best = [*chosen, name], trial
    model, meta = load_checkpoint(ctx.input("train").path)
    model.load_state_dict(uniform_average([states[n] for n in chosen]))
    record = {"scores": scores, "order": order, "steps": steps, "chosen": chosen, "score": best,
              "n_score": int(ctx.cfg.average.n_score)}
    save_checkpoint(model, ctx.work, arch=meta["arch"], history=[], extra={"average": record})
    atomic_write_json(ctx.work / AVERAGE_FILE, record)


def externals(view) -> list:
    """A user's vectors file or encoder folder read by the scoring attack enters the key (as for eval)."""
    from robprune.evaluate.text import input_stats

    return input_stats(scoring_eval(view.average.attack))


def scoring_eval(attack):
    """An eval node holding the scoring attack alone (for the text evaluator's input checks and stats)."""
    return OmegaConf.create({"attacks": {"score": to_container(attack)}})


def precheck(pc: Precheck) -> None:
    """The scoring attack's word vectors and sentence encoder load before any training."""
    from robprune.evaluate.text import check_inputs

    check_inputs(scoring_eval(pc.cfg.average.attack))


STAGE = Stage("average", reads=("average", "train_seed"), inputs=("train", "ingredient*"), data=("heldout",),
              build=build_average, when=lambda cfg: cfg.get("average") is not None, publishes=(AVERAGE_FILE,),
              externals=externals, precheck=precheck,
              libraries=(*LIBRARIES, *TEXT_ATTACK_LIBRARIES))
