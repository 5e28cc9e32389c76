"""The pipeline's stages, in order. Each module declares one :class:`robprune.graph.Stage`; the config
decides which run (``Stage.when``). A method adds a stage by adding a module and listing it here: the
walk in :func:`robprune.pipeline.run` does not change."""
from robprune.stages import average, calib, evaluate, finetune, prune, prune_train, quant, scores, train

STAGES = (train.STAGE, average.INGREDIENTS, average.STAGE, scores.STAGE, calib.STAGE, prune.STAGE, prune_train.STAGE, quant.STAGE, finetune.STAGE, evaluate.STAGE)

__all__ = ["STAGES"]
