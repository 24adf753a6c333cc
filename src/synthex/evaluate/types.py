"""The evaluation's types, below everything else in ``synthex.evaluate``: what to compare
(:class:`EvaluationOptions`), what the report is built from (:class:`ReportContext`) and what comes
back (:class:`EvaluationResult`). ``run`` and ``report`` both import from here and not from each other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthex.generate.defaults import DEFAULT_GUIDANCE, DEFAULT_N, DEFAULT_STEPS

if TYPE_CHECKING:  # annotations only: importing the data module here would pull in the phantom code
    from synthex.evaluate.data import ImageSet

METRICS = ("fidelity", "diversity", "alignment", "privacy", "utility", "roundtrip")
# roundtrip (image -> report -> findings vs the prompt) runs a report model: asked for, not by default
DEFAULT_METRICS = METRICS[:5]
REPORT_FILES = ("report.md", "report.html", "results.json")


@dataclass
class EvaluationOptions:
    """What to compare and how. Give ``synthetic`` or (``model`` and ``prompts``)."""

    real: Path
    out: Path
    synthetic: Path | None = None
    train: Path | None = None
    """Training images for the privacy audit (default: the real set)."""
    model: str | None = None
    prompts: Path | None = None
    per_prompt: int = DEFAULT_N
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    loras: tuple[tuple[str, float], ...] = ()
    extractor: str = "synthex"
    extractor_weights: Path | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    report_model: str | None = None
    """Report model of the ``roundtrip`` metric (default: the embedded one)."""
    cache: Path | None = None
    """Feature cache folder; default ``<image folder>/.synthex/features``."""
    label_source: str | None = None
    overwrite: bool = False
    seed: int = 0
    k: int = 5
    bootstrap: int = 200
    kid_subsets: int = 100
    min_images: int = 10
    min_per_finding: int = 10
    diversity_pairs: int = 200
    privacy_calibration: int = 200
    ctr_probe_n: int = 400
    utility_epochs: int = 6
    utility_size: int = 64
    utility_test_fraction: float = 0.5
    progress: bool = True


@dataclass
class EvaluationResult:
    out: Path
    results: dict[str, Any]
    report_md: Path
    report_html: Path
    results_json: Path
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ReportContext:
    """Everything besides the metric results that the report shows (built by ``evaluate``)."""

    options: EvaluationOptions
    sets: dict[str, ImageSet]
    """``real``, ``synthetic`` and (when given) ``train``."""
    extractor_id: str
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)
    """Availability of the other feature extractors (name -> status line)."""


def options_dict(o: EvaluationOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()}
