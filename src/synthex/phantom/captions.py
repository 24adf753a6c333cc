"""Captions that say what the phantom shows, written from its ground truth.

The renderer knows every finding it drew (name, side, zone, grade), so a caption can be exact.
:func:`caption_variants` writes several phrasings of one finding list:

- ``mesh``: the ``synthex data prepare`` caption style built from IU X-ray MeSH headings
  ("Chest x-ray. Pleural Effusion left moderate. Cardiomegaly mild.");
- ``report``: report sentences in the vocabulary of real radiology reports, with synonyms from
  the finding registry and negations of findings that are absent ("No pneumothorax.");
- ``short``: a terse list ("moderate left pleural effusion, cardiomegaly");
- ``mixed``: MeSH heading line followed by report sentences (the shape of real captions).

:func:`filter_report` keeps only those sentences of a real report that agree with what was
drawn: a sentence naming a drawable finding that is not in the picture (or on the other side)
is dropped, sentences naming no drawable finding are kept, and the counts are returned so that
a dataset builder can report what it did.

Side words always mean the PATIENT's side ("left" = image right), as in real reports.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthex.errors import SynthexError
from synthex.phantom.findings import REGISTRY, Finding, parse_findings

STYLES = ("mesh", "report", "short", "mixed")

# MeSH headings of IU X-ray for each finding (what `synthex data prepare` puts after "Chest x-ray.").
MESH_HEADINGS = {
    "cardiomegaly": ("Cardiomegaly",), "pleural_effusion": ("Pleural Effusion",),
    "opacity": ("Opacity lung", "Opacity", "Infiltrate"), "consolidation": ("Consolidation",),
    "airspace_disease": ("Airspace Disease",), "pneumonia": ("Pneumonia",),
    "atelectasis": ("Pulmonary Atelectasis", "Atelectasis"), "edema": ("Pulmonary Edema",),
    "congestion": ("Pulmonary Congestion",), "pneumothorax": ("Pneumothorax",),
    "nodule": ("Nodule", "Density round"), "mass": ("Mass",),
    "calcified_granuloma": ("Calcified Granuloma", "Granulomatous Disease"),
    "emphysema": ("Pulmonary Emphysema", "Pulmonary Disease, Chronic Obstructive", "Lung hyperdistention"),
    "elevated_hemidiaphragm": ("Diaphragm elevated",), "scoliosis": ("Scoliosis",),
    "pacemaker": ("Implanted Medical Device", "Pacemaker"), "central_line": ("Catheters, Indwelling",),
    "sternotomy": ("Sutures mediastinum", "Surgical Instruments mediastinum"),
}
# Report phrasings; {sev} {side} {zone} are filled (empty when the finding lacks them).
REPORT_TEMPLATES = {
    "cardiomegaly": ("{sev} cardiomegaly.", "The heart is {sevly} enlarged.", "{sev} enlargement of the cardiac silhouette.",
                     "The cardiac silhouette is {sevly} enlarged.", "Heart size is {sevly} enlarged."),
    "pleural_effusion": ("{sev} {side} pleural effusion.", "There is a {sev} {side} pleural effusion.",
                         "{sev} {side} effusion.", "Blunting of the {side} costophrenic angle from a {sev} effusion.",
                         "{side} pleural fluid, {sev}."),
    "opacity": ("{sev} {side} {zone} lobe airspace opacity.", "There is {sev} opacity in the {side} {zone} lung.",
                "{side} {zone} zone opacity.", "{sev} {side} {zone} infiltrate."),
    "consolidation": ("{sev} {side} {zone} lobe consolidation.", "Consolidation of the {side} {zone} lung, {sev}."),
    "airspace_disease": ("{sev} {side} {zone} airspace disease.", "Airspace disease in the {side} {zone} lung."),
    "pneumonia": ("{sev} {side} {zone} lobe pneumonia.", "Findings of {side} {zone} pneumonia, {sev}."),
    "atelectasis": ("{sev} {side} {zone} atelectasis.", "Platelike atelectasis in the {side} {zone} lung.",
                    "{side} {zone} subsegmental atelectasis, {sev}."),
    "edema": ("{sev} pulmonary edema.", "{sev} interstitial edema.", "Findings of {sev} pulmonary edema."),
    "congestion": ("{sev} pulmonary vascular congestion.", "{sev} vascular congestion."),
    "pneumothorax": ("{sev} {side} pneumothorax.", "There is a {sev} {side} pneumothorax.",
                     "{side} pneumothorax, {sev}."),
    "nodule": ("{sev} {side} {zone} lung nodule.", "A {side} {zone} pulmonary nodule.",
               "Nodular density in the {side} {zone} lung."),
    "mass": ("{sev} {side} {zone} lung mass.", "A {side} {zone} pulmonary mass."),
    "calcified_granuloma": ("Calcified granuloma in the {side} {zone} lung.", "{side} {zone} calcified granulomas.",
                            "Small calcified {side} granuloma."),
    "emphysema": ("{sev} emphysema.", "The lungs are {sevly} hyperexpanded.", "{sev} hyperinflation.",
                  "Hyperinflated lungs consistent with {sev} COPD."),
    "elevated_hemidiaphragm": ("{sev} elevation of the {side} hemidiaphragm.", "The {side} hemidiaphragm is {sevly} elevated.",
                               "Elevated {side} hemidiaphragm."),
    "scoliosis": ("{sev} scoliosis convex to the {side}.", "{sev} thoracic scoliosis, convex {side}.",
                  "Scoliosis of the thoracic spine, convex {side}."),
    "pacemaker": ("{side} chest wall pacemaker.", "A {side}-sided pacemaker with a lead in the heart.",
                  "{side} cardiac pacer."),
    "central_line": ("{side} central venous catheter.", "A {side} central line is in place.",
                     "{side} sided central venous catheter tip at the cavoatrial junction."),
    "sternotomy": ("Median sternotomy wires.", "Postoperative sternotomy wires.", "Sternotomy changes."),
}
# What a report says about a finding that is absent (negations).
NEGATIONS = {
    "cardiomegaly": ("The heart size is normal.", "Normal heart size.", "No cardiomegaly."),
    "pleural_effusion": ("No pleural effusion.", "No effusion.", "There is no pleural effusion."),
    "opacity": ("No focal airspace opacity.", "No focal consolidation.", "The lungs are clear."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "edema": ("No pulmonary edema.",),
    "nodule": ("No pulmonary nodules.",),
}
NORMAL_SENTENCES = (
    "The heart size is normal.", "The lungs are clear.", "No acute cardiopulmonary abnormality.",
    "Normal chest x-ray.", "The cardiac silhouette and mediastinum size are within normal limits.",
    "No acute cardiopulmonary disease.", "Clear lungs.", "Unremarkable chest.",
)
_SEVERITY_WORD = {"mild": ("mild", "small", "minimal", "slight"), "moderate": ("moderate", "moderate size"),
                  "severe": ("severe", "large", "marked", "extensive")}
_SEVERITY_ADVERB = {"mild": ("mildly", "slightly"), "moderate": ("moderately",), "severe": ("markedly", "severely")}
_ZONE_WORD = {"upper": ("upper",), "middle": ("middle", "mid"), "lower": ("lower", "basilar")}
_MESH_ZONE = {"upper": "upper lobe", "middle": "middle lobe", "lower": "base"}
_FAMILY = {"consolidation": "opacity", "airspace_disease": "opacity", "pneumonia": "opacity",
           "congestion": "edema", "mass": "nodule"}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;])", r"\1", text).replace(", .", ".").replace(",.", ".")
    text = re.sub(r"\b(a|A) (?=[aeiouAEIOU])", lambda m: m.group(1) + "n ", text)
    return text[:1].upper() + text[1:]


def _fill(template: str, f: Finding, rng: np.random.Generator) -> str:
    side = f.side or ""
    if side == "bilateral":
        side = _pick(rng, ("bilateral", "bilateral"))
    sev = _pick(rng, _SEVERITY_WORD[f.severity]) if f.severity else ""
    sevly = _pick(rng, _SEVERITY_ADVERB[f.severity]) if f.severity else ""
    zone = _pick(rng, _ZONE_WORD[f.zone]) if f.zone else ""
    return _clean(template.format(sev=sev, sevly=sevly, side=side, zone=zone))


def mesh_term(f: Finding, rng: np.random.Generator) -> str:
    """One finding as a MeSH-style caption term, e.g. "Opacity lung base right moderate"."""
    words = [_pick(rng, MESH_HEADINGS[f.name])]
    if f.zone:
        words.append(_MESH_ZONE[f.zone])
    if f.side:
        words.append(f.side)
    if f.severity:
        words.append("borderline" if f.severity == "mild" and f.name == "cardiomegaly" and rng.random() < 0.3
                     else f.severity)
    return " ".join(words)


def report_sentence(f: Finding, rng: np.random.Generator) -> str:
    return _fill(_pick(rng, REPORT_TEMPLATES[f.name]), f, rng)


def _negations(findings: Sequence[Finding], rng: np.random.Generator, k: int) -> list[str]:
    present = {_FAMILY.get(f.name, f.name) for f in findings}
    absent = [name for name in NEGATIONS if name not in present]
    if "opacity" in present or "pleural_effusion" in present:  # "the lungs are clear" would contradict
        absent = [a for a in absent if a != "opacity"]
    chosen = rng.permutation(absent)[:k] if absent else []
    return [_pick(rng, NEGATIONS[str(name)]) for name in chosen]


def caption(findings: Sequence[Finding], rng: np.random.Generator, style: str = "mesh") -> str:
    """One caption of ``style`` (see :data:`STYLES`) for resolved ``findings`` (empty = normal)."""
    if style not in STYLES:
        raise SynthexError(f"unknown caption style {style!r}; valid styles: {', '.join(STYLES)}")
    findings = [f for f in findings if f.name != "normal"]
    order = list(rng.permutation(len(findings))) if findings else []
    ordered = [findings[i] for i in order]
    if not ordered:
        normal = list(rng.permutation(NORMAL_SENTENCES)[: 1 + int(rng.integers(3))])
        if style == "mesh":
            return "Chest x-ray. Normal."
        if style == "short":
            return _pick(rng, ("normal chest x-ray", "normal", "no acute cardiopulmonary abnormality",
                               "normal heart and clear lungs"))
        head = "Chest x-ray. Normal. " if style == "mixed" else ""
        return head + " ".join(normal + _negations([], rng, int(rng.integers(2))))
    if style == "mesh":
        return "Chest x-ray. " + " ".join(mesh_term(f, rng) + "." for f in ordered)
    if style == "short":
        return ", ".join(report_sentence(f, rng).rstrip(".").lower() for f in ordered)
    sentences = [report_sentence(f, rng) for f in ordered] + _negations(ordered, rng, int(rng.integers(3)))
    if style == "report":
        return " ".join(sentences)
    return "Chest x-ray. " + " ".join(mesh_term(f, rng) + "." for f in ordered) + " " + " ".join(sentences)


def caption_variants(findings: Sequence[Finding], rng: np.random.Generator,
                     styles: Sequence[str] = STYLES) -> list[str]:
    """One caption per style, all describing the same ``findings``."""
    return [caption(findings, rng, style) for style in styles]


# ---------------------------------------------------------------------------------------------
# Real report text: keep what the phantom shows
# ---------------------------------------------------------------------------------------------
@dataclass
class FilterCounts:
    """What :func:`filter_report` did to one report."""

    kept: int = 0
    dropped: int = 0
    unreadable: int = 0  # sentences naming no drawable finding (kept as neutral text)


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _labels(findings: Sequence[Finding]) -> set[str]:
    out = set()
    for f in findings:
        if f.name == "normal":
            continue
        family = _FAMILY.get(f.name, f.name)
        if family in ("pleural_effusion", "opacity") or REGISTRY[f.name].lateral:
            side = f.side or REGISTRY[f.name].default_side
            sides = ("right", "left") if side == "bilateral" else (side,)
            out.update(f"{family}_{s}" for s in sides)
        else:
            out.add(family)
    return out


def filter_report(text: str, drawn: Sequence[Finding]) -> tuple[str, FilterCounts]:
    """The sentences of ``text`` that agree with the ``drawn`` findings, and the counts.

    A sentence is dropped when it names a drawable finding that was not drawn (family and side
    compared), or when it says the study is normal although something was drawn."""
    counts = FilterCounts()
    truth = _labels([f.resolved() for f in drawn])
    kept = []
    for sentence in (s.strip() for s in _SENTENCE.split(str(text or ""))):
        if not sentence:
            continue
        try:
            named = parse_findings(sentence)
        except SynthexError:
            counts.unreadable += 1
            kept.append(sentence)
            continue
        says_normal = any(f.name == "normal" for f in named)
        claims = _labels([f.resolved() for f in named])
        if (says_normal and truth) or not claims <= truth:
            counts.dropped += 1
            continue
        counts.kept += 1
        kept.append(sentence)
    return " ".join(kept), counts


# ---------------------------------------------------------------------------------------------
# Balanced finding draws
# ---------------------------------------------------------------------------------------------
def sample_balanced(rng: np.random.Generator, p_normal: float = 0.12,
                    n_weights: Sequence[float] = (0.5, 0.35, 0.15)) -> list[Finding]:
    """A random finding list in which every finding family, side and grade is equally likely:
    normal with ``p_normal``, else 1-3 findings of different families (weights ``n_weights``)."""
    if rng.random() < p_normal:
        return []
    families: dict[str, list[str]] = {}
    for name in REGISTRY:
        if name != "normal":
            families.setdefault(_FAMILY.get(name, name), []).append(name)
    keys = sorted(families)
    k = 1 + int(rng.choice(len(n_weights), p=np.asarray(n_weights) / sum(n_weights)))
    out = []
    for family in rng.permutation(keys)[:k]:
        members = families[str(family)]
        # the family's own name half the time, a member otherwise (opacity vs consolidation ...)
        name = str(family) if rng.random() < 0.5 or len(members) == 1 else _pick(rng, members)
        spec = REGISTRY[name]
        side = _pick(rng, spec.sides) if spec.sides else None
        if side == "bilateral" and rng.random() < 0.5 and "left" in spec.sides:  # bilateral less often
            side = _pick(rng, ("left", "right"))
        zone = _pick(rng, ("upper", "middle", "lower")) if spec.zoned else None
        severity = _pick(rng, ("mild", "moderate", "severe")) if spec.graded else None
        out.append(Finding(name, side, zone, severity))
    return out
