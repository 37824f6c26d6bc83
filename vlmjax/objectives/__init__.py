"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import alignment, assignment, contrastive, dreamlip, ntp, regularizers  # noqa: F401
