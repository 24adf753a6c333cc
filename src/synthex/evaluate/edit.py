"""Editing a finding into an image by inpainting (RadEdit's use), measured on phantoms.

A normal phantom is rendered with its anatomy masks; a zone of one lung (``lower`` = the lower
half of that lung's height, down past the costophrenic angle) becomes the inpainting mask; the
engine inpaints the prompt (for example "Chest x-ray. Right pleural effusion.") inside it. Three
things are measured per image, with the shipped phantom classifier:

- ``outside_max`` / ``outside_mean``: the change of pixels outside the mask dilated by the blur
  radius (the engine composites the original there, so this should be 0);
- ``p_before`` / ``p_after``: the classifier's probability of the finding on the prompted side
  before and after the edit;
- ``p_other_after``: the same finding on the other side after the edit. The other side's pixels
  are untouched (``outside_max``), so laterality holds by construction; a high value here says
  the classifier's sided heads read the whole image, not that the edit leaked;
- ``inside_mean`` / ``inside_signed``: the change inside the mask (an effusion is denser, so
  brighter: ``inside_signed`` > 0).

The patient's right is the image's left (the phantoms' ``lung_right`` mask is there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthex.errors import SynthexError

ZONES = ("upper", "middle", "lower")
SIDES = ("right", "left")


def zone_mask(lung: np.ndarray, zone: str = "lower", pad: int = 4) -> np.ndarray:
    """A bool mask over one zone of a lung mask: its third (upper/middle) or its lower half
    extended below the lung's bottom by ``2 * pad`` rows (where an effusion blunts the angle),
    over the lung's columns, dilated by ``pad`` pixels."""
    if zone not in ZONES:
        raise SynthexError(f"zone must be one of {', '.join(ZONES)}, got {zone!r}")
    rows, cols = np.nonzero(lung)
    if rows.size == 0:
        raise SynthexError("the lung mask is empty: no zone to edit")
    top, bottom, height = rows.min(), rows.max(), rows.max() - rows.min() + 1
    start = {"upper": top, "middle": top + height // 3, "lower": top + height // 2}[zone]
    stop = {"upper": top + height // 3, "middle": top + 2 * height // 3, "lower": bottom + 2 * pad}[zone]
    out = np.zeros_like(lung, dtype=bool)
    out[max(0, start - pad):min(lung.shape[0], stop + pad + 1),
        max(0, cols.min() - pad):min(lung.shape[1], cols.max() + pad + 1)] = True
    return out


@dataclass
class EditReport:
    """Per-image measurements of :func:`measure_edit` and their summary."""

    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        col = lambda k: np.array([r[k] for r in self.rows], dtype=float)  # noqa: E731
        return {"n": len(self.rows), "outside_max": float(col("outside_max").max()),
                "outside_mean": float(col("outside_mean").mean()),
                "inside_mean": float(col("inside_mean").mean()), "inside_signed": float(col("inside_signed").mean()),
                "p_before": float(col("p_before").mean()), "p_after": float(col("p_after").mean()),
                "p_other_after": float(col("p_other_after").mean()),
                "detected_after": float((col("p_after") > 0.5).mean()),
                "detected_before": float((col("p_before") > 0.5).mean()),
                "other_side_after": float((col("p_other_after") > 0.5).mean())}


def measure_edit(engine: Any, seeds: list[int], *, finding: str = "pleural_effusion", side: str = "right",
                 zone: str = "lower", prompt: str | None = None, size: int = 128, strength: float = 1.0,
                 steps: int = 20, mask_blur: int = 4, model: str = "embedded",
                 sampler: str = "Euler a") -> EditReport:
    """Inpaint ``finding`` on ``side`` into the normal phantom of each seed and measure it."""
    from PIL import Image

    from synthex.generate.engine import GenerationRequest
    from synthex.phantom.classifier import PHANTOM_LABELS, load_classifier, predict_proba
    from synthex.phantom.render import dilate, render_phantom

    if side not in SIDES:
        raise SynthexError(f"side must be right or left, got {side!r}")
    label, other = f"{finding}_{side}", f"{finding}_{'left' if side == 'right' else 'right'}"
    if label not in PHANTOM_LABELS:
        raise SynthexError(f"the phantom classifier has no label {label!r}; sided labels: "
                           + ", ".join(n for n in PHANTOM_LABELS if n.endswith(("_right", "_left"))))
    prompt = prompt or f"Chest x-ray. {side.capitalize()} {finding.replace('_', ' ')}."
    classifier, report = load_classifier(), EditReport(label)
    k, k_other = PHANTOM_LABELS.index(label), PHANTOM_LABELS.index(other)
    for seed in seeds:
        phantom = render_phantom(None, seed, size, return_masks=True)
        mask = zone_mask(phantom.anatomy_masks[f"lung_{side}"], zone)
        request = GenerationRequest(prompt, init_image=Image.fromarray(phantom.image), strength=strength,
                                    mask=Image.fromarray(mask.astype(np.uint8) * 255), mask_blur=mask_blur,
                                    steps=steps, seed=seed, sampler=sampler, model=model, n=1)
        edited = np.asarray(engine.generate(request).images[0].convert("L"))
        keep = ~dilate(mask, 2 * mask_blur + 1)
        change = np.abs(edited.astype(np.int16) - phantom.image.astype(np.int16))
        probs = predict_proba(classifier, np.stack([phantom.image, edited]))
        report.rows.append({"seed": seed, "outside_max": int(change[keep].max()),
                            "outside_mean": float(change[keep].mean()),
                            "inside_mean": float(change[mask].mean()),
                            "inside_signed": float((edited.astype(float) - phantom.image)[mask].mean()),
                            "p_before": float(probs[0, k]),
                            "p_after": float(probs[1, k]), "p_other_after": float(probs[1, k_other])})
    return report
