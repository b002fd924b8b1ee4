"""Evaluation (SPEC 5): ranking metrics, training-only baselines, the synthetic oracle, the Evaluator, the report."""
from retailsim.eval.evaluator import BUCKETS, Evaluator
from retailsim.eval.metrics import RANK_METRICS

__all__ = ["BUCKETS", "Evaluator", "RANK_METRICS"]
