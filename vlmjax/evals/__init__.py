"""Evaluators: importing this package registers every evaluator by name."""
from vlmjax.evals import compositional, retrieval, zeroshot  # noqa: F401
