"""Evaluators: importing this package registers every evaluator by name."""
from vlmjax.evals import (  # noqa: F401
    captioning, cir, compositional, fusion, linear_probe, objects, retrieval, sentence_similarity, video, vqa, zeroshot)
