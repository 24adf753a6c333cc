"""What makes a search result relevant: finding labels with their side.

A chest image's findings become a set of label keys: the finding family (``"pleural_effusion"``)
and, for findings that sit on one side, the family with the patient's side
(``"pleural_effusion:left"``); a bilateral finding has both sides. An image without findings has
the single key ``"normal"``. Families merge what the phantom draws alike (consolidation,
airspace disease and pneumonia are ``opacity``; congestion is ``edema``; a mass is a
``nodule``), as the phantom classifier does.

Relevance, in the style of the CheXpert 5x200 protocol:

- text -> image: the image shows every finding the query names, on the named side
  (:func:`query_relevant`: the query's keys are a subset of the image's);
- image -> image and image -> report: the two label sets are equal (:func:`same_labels`);
- the exact pair: the report written for that very image (scored by the caller).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from synthex.phantom.findings import Finding, as_findings

NORMAL = "normal"
FAMILY = {"consolidation": "opacity", "airspace_disease": "opacity", "pneumonia": "opacity",
          "congestion": "edema", "mass": "nodule"}


def label_keys(findings: Iterable[Finding]) -> frozenset[str]:
    """Family and family:side keys of resolved findings (``{"normal"}`` when there are none)."""
    keys: set[str] = set()
    for f in findings:
        if f.name == NORMAL:
            continue
        family = FAMILY.get(f.name, f.name)
        keys.add(family)
        side = f.side or f.spec.default_side
        if side and f.spec.sides and f.spec.sides != ("bilateral",):
            for s in (("right", "left") if side == "bilateral" else (side,)):
                keys.add(f"{family}:{s}")
    return frozenset(keys) or frozenset({NORMAL})


def specific_keys(keys: frozenset[str]) -> frozenset[str]:
    """The most specific keys: a family is dropped where a family:side key stands for it."""
    sided = {k.split(":", 1)[0] for k in keys if ":" in k}
    return frozenset(k for k in keys if k not in sided)


def keys_from_json(text: str | None) -> frozenset[str] | None:
    """Label keys of a ``findings`` JSON column value (a list of finding dicts); None when empty."""
    if text is None or (isinstance(text, float)) or not str(text).strip():
        return None
    data = json.loads(str(text))
    return label_keys(as_findings([Finding.from_dict(d) for d in data]))


def keys_from_spec(spec: str | Sequence[str]) -> frozenset[str]:
    """Keys written by hand, e.g. ``"pleural_effusion:left"`` or ``"cardiomegaly; nodule:right"``;
    a family:side key implies its family."""
    parts = [p.strip() for p in (spec.replace(",", ";").split(";") if isinstance(spec, str) else spec)]
    keys = {p for p in parts if p}
    keys |= {k.split(":", 1)[0] for k in keys if ":" in k}
    return frozenset(keys)


def query_relevant(query: frozenset[str], image: frozenset[str]) -> bool:
    """True when the image shows everything the query asks for (``normal`` only matches normal)."""
    if NORMAL in query:
        return image == frozenset({NORMAL})
    return query <= image


def same_labels(a: frozenset[str], b: frozenset[str]) -> bool:
    """Equal label sets, side included."""
    return a == b
