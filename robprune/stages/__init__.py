"""The pipeline's stages, in order. Each module declares one :class:`robprune.graph.Stage`; the config
decides which run (``Stage.when``). A method adds a stage by adding a module and placing it in
:data:`ORDER` (where it sits in the graph); each is registered in :data:`robprune.registry.STAGES` under
its name, the cache folder and the metrics key. The walk in :func:`robprune.pipeline.run` does not
change (docs/how-to/add-stage.md)."""
from robprune.registry import STAGES as REGISTRY
from robprune.stages import average, calib, evaluate, finetune, prune, prune_train, quant, scores, train

ORDER = (train.STAGE, average.INGREDIENTS, average.STAGE, scores.STAGE, calib.STAGE, prune.STAGE, prune_train.STAGE,
         quant.STAGE, finetune.STAGE, evaluate.STAGE)
for _stage in ORDER:
    REGISTRY.add(_stage.name, _stage)  # robprune.registry.STAGES: name -> stage (ORDER is its place in the graph)
STAGES = ORDER

__all__ = ["ORDER", "STAGES"]
