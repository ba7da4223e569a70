"""Evaluation as the paper does it: pass@1 averaged over k samples, cons@k, unbiased pass@k."""

from r1lab.evaluation.metrics import majority_vote, pass_at_k
from r1lab.evaluation.runner import Protocol, evaluate, paper_protocols

__all__ = ["Protocol", "evaluate", "majority_vote", "paper_protocols", "pass_at_k"]
