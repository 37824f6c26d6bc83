"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import (alignment, assignment, composed, contrastive, dreamlip, identity, noise_adaptive,  # noqa: F401
                               ntp, regions, regularizers, scene_graph, self_training)
