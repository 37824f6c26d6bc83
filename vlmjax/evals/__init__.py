"""Evaluators: importing this package registers every evaluator by name."""
from vlmjax.evals import captioning, compositional, linear_probe, objects, retrieval, vqa, zeroshot  # noqa: F401
