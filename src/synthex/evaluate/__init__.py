"""Evaluation of synthetic chest X-rays: fidelity, diversity, text alignment, privacy, utility.

Entry point: :func:`evaluate` with :class:`EvaluationOptions`; see docs/evaluation.md.
"""
from __future__ import annotations

from synthex.evaluate.run import evaluate
from synthex.evaluate.types import METRICS, EvaluationOptions, EvaluationResult

__all__ = ["METRICS", "EvaluationOptions", "EvaluationResult", "evaluate"]
