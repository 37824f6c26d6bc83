"""Evaluators: importing this package registers every evaluator by name."""
from vlmjax.evals import captioning, compositional, retrieval, zeroshot  # noqa: F401
