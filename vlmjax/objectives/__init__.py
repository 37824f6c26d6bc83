"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import assignment, contrastive, dreamlip, ntp, regularizers  # noqa: F401
