"""The structured report: ``Image Labels: [...] | Gender: ... | Age: ... | Image Caption: ...``.

The paper's four ``|``-separated fields (NEIGHBOURS.md section 3); the caption holds the IU X-ray
style ``Findings: ... Impression: ...``. :func:`build_report` writes one, :func:`parse_report`
reads one back (case-insensitive, as a lower-casing tokenizer writes it) and says whether the
raw text held the four fields. Gender and age are never taken from the model: they come from the
clinical case text when it states them (:func:`case_demographics`), else ``Unknown``.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

UNKNOWN = "Unknown"
BASE_LABELS = ("thorax", "radiology", "chest x-ray")
FIELDS = ("Image Labels", "Gender", "Age", "Image Caption")
SYNTHETIC_NOTE = "synthetic report written by a model; for research, not diagnosis"

_FOUR = re.compile(r"image\s+labels\s*:\s*\[?(?P<labels>[^\]|]*)\]?\s*\|\s*gender\s*:\s*(?P<gender>[^|]*?)\s*\|"
                   r"\s*age\s*:\s*(?P<age>[^|]*?)\s*\|\s*image\s+caption\s*:\s*(?P<caption>.*)", re.I | re.S)
_SECTIONS = re.compile(r"(?:^|\s)(findings|impression)\s*:\s*", re.I)
_AGE = re.compile(r"\b(\d{1,3})[\s-]*(?:-?year|yr|y/?o\b|years?\b)|\baged?\s+(\d{1,3})\b", re.I)
_MALE = re.compile(r"\b(male|man|boy|gentleman|he|his|him|mr)\b", re.I)
_FEMALE = re.compile(r"\b(female|woman|girl|lady|she|her|hers|mrs|ms)\b", re.I)


@dataclass
class StructuredReport:
    """One report, its four fields, and whether the model's raw text parsed into them."""

    labels: list[str] = field(default_factory=list)
    gender: str = UNKNOWN
    age: str = UNKNOWN
    findings: str = ""
    impression: str = ""
    raw: str = ""
    parsed: bool = True

    @property
    def caption(self) -> str:
        parts = []
        if self.findings:
            parts.append(f"Findings: {self.findings}")
        if self.impression:
            parts.append(f"Impression: {self.impression}")
        return " ".join(parts)

    def line(self) -> str:
        """The paper's one-line form."""
        return build_report(self.labels, self.caption, self.gender, self.age)

    def sections(self) -> str:
        """The IU X-ray form: labels, demographics, FINDINGS and IMPRESSION on their own lines."""
        return (f"IMAGE LABELS: {', '.join(self.labels)}\nGENDER: {self.gender}    AGE: {self.age}\n"
                f"FINDINGS: {self.findings or '-'}\nIMPRESSION: {self.impression or '-'}")

    def text(self) -> str:
        """Findings and impression as one text (what the finding parser reads)."""
        return " ".join(t for t in (self.findings, self.impression) if t)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["report"] = self.line()
        out["synthetic"] = True
        return out


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text or "")).strip()
    return text[:1].upper() + text[1:] if text else ""


def caption_text(findings: str, impression: str) -> str:
    """``Findings: ... Impression: ...`` (an empty part left out)."""
    return StructuredReport(findings=_sentence(findings), impression=_sentence(impression)).caption


def build_report(labels: list[str], caption: str, gender: str = UNKNOWN, age: str = UNKNOWN) -> str:
    """The four-field line. ``labels`` beyond the base ones are the findings it names."""
    names = list(BASE_LABELS) + [lab for lab in labels if lab not in BASE_LABELS]
    return (f"Image Labels: [{', '.join(names)}] | Gender: {gender or UNKNOWN} | Age: {age or UNKNOWN} | "
            f"Image Caption: {caption.strip()}")


def _split_caption(caption: str) -> tuple[str, str]:
    parts = _SECTIONS.split(" " + caption)
    if len(parts) < 3:
        return _sentence(caption), ""
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        found.setdefault(name.lower(), _sentence(body))
    lead = _sentence(parts[0])  # text before the first heading: findings, unless they are headed
    findings = " ".join(t for t in (lead, found.get("findings", "")) if t)
    return findings, found.get("impression", "")


def parse_report(text: str, case: str | None = None) -> StructuredReport:
    """Read a model's output. ``parsed`` is False when the four fields were not all there; the
    report is then repaired (the whole text taken as the caption, labels empty), never dropped.
    Gender and age are those of ``case`` (:func:`case_demographics`), not the model's."""
    raw = str(text or "")
    match = _FOUR.search(raw)
    gender, age = case_demographics(case or "")
    if match is None:
        findings, impression = _split_caption(re.sub(r"(?i)image\s+(labels|caption)\s*:", " ", raw))
        return StructuredReport([], gender, age, findings, impression, raw, parsed=False)
    labels = [lab.strip().lower() for lab in match["labels"].split(",") if lab.strip()]
    labels = [lab for lab in dict.fromkeys(labels) if lab not in BASE_LABELS]
    findings, impression = _split_caption(match["caption"])
    return StructuredReport(labels, gender, age, findings, impression, raw, parsed=True)


def case_demographics(case: str) -> tuple[str, str]:
    """(gender, age) stated by a clinical case text; ``Unknown`` for what it does not state (IU
    X-ray removes both). Both sexes named, or several ages, give ``Unknown``: never a guess."""
    ages = {next(g for g in m.groups() if g) for m in _AGE.finditer(case)}
    ages = {a for a in ages if 0 < int(a) < 120}
    male, female = bool(_MALE.search(case)), bool(_FEMALE.search(case))
    gender = "Male" if male and not female else "Female" if female and not male else UNKNOWN
    return gender, (ages.pop() if len(ages) == 1 else UNKNOWN)
