"""Evaluators: importing this package registers every evaluator by name."""
from vlmjax.evals import retrieval, zeroshot  # noqa: F401
