"""Training objectives: importing this package registers every objective by name."""
from vlmjax.objectives import contrastive, dreamlip, regularizers  # noqa: F401
