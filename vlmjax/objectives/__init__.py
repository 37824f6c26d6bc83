"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import (alignment, assignment, contrastive, dreamlip, noise_adaptive, ntp,  # noqa: F401
                               regions, regularizers)
