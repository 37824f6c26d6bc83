"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import (  # noqa: F401
    alignment, assignment, composed, contrastive, dreamlip, fusion, identity, isa, noise_adaptive, ntp, regions,
    regularizers, scene_graph, self_training, video)
