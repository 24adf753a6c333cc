"""Multi-hot finding labels of images, from metadata columns, MeSH terms or free text.

The same rules as ``synthex evaluate`` (:mod:`synthex.evaluate.data`) reads labels by, so a
conditional model trained or sampled with these labels is scored on the labels it was given:

- ``columns``: 0/1 columns named like the labels (``cardiomegaly``, ``pleural_effusion_right``...);
- ``mesh``: the ``mesh`` column, mapped with the phantom MeSH rules;
- ``text``: the ``text`` / ``prompt`` column, parsed sentence by sentence with the phantom finding
  parser (:func:`synthex.phantom.findings.parse_findings`); sentences naming no drawable finding
  are counted and ignored.

"normal" is the all-zero vector.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from synthex.errors import SynthexError

LABEL_SOURCES = ("columns", "mesh", "text")
TEXT_COLUMNS = ("text", "prompt")
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")
_SIDED = {"pleural_effusion", "opacity"}


def text_findings(text: str) -> tuple[list[Any], int]:
    """Findings named in free text, sentence by sentence; (findings, sentences not understood)."""
    from synthex.phantom.findings import parse_findings

    found, unparsed = [], 0
    for sentence in _SENTENCE.split(text or ""):
        if not sentence.strip():
            continue
        try:
            found.extend(f for f in parse_findings(sentence) if f.name != "normal")
        except SynthexError:
            unparsed += 1
    return found, unparsed


def text_labels(text: str, names: Sequence[str]) -> tuple[np.ndarray, int]:
    """(multi-hot vector over ``names``, sentences not understood) of free text."""
    from synthex.phantom.classifier import finding_labels

    found, unparsed = text_findings(text)
    return finding_labels(found, tuple(names)), unparsed


def available_sources(columns: Sequence[Any], names: Sequence[str]) -> list[str]:
    """The label sources a table with ``columns`` offers, best first."""
    cols = set(map(str, columns))
    out = []
    if set(names) <= cols:
        out.append("columns")
    if "mesh" in cols:
        out.append("mesh")
    if cols & set(TEXT_COLUMNS):
        out.append("text")
    return out


def frame_labels(frame: Any, names: Sequence[str], source: str | None = None) -> tuple[np.ndarray, str, int]:
    """(labels (N, K) float32, the source used, sentences not understood) of a metadata table;
    ``source`` (one of :data:`LABEL_SOURCES`, default: the best available) forces one."""
    from synthex.phantom.classifier import finding_labels

    sources = available_sources(frame.columns, names)
    if source is not None and source not in sources:
        raise SynthexError(f"label source {source!r} is not available (the table offers {sources or 'none'}; "
                           f"'columns' needs 0/1 columns {list(names)})")
    source = source or (sources[0] if sources else None)
    if source is None:
        raise SynthexError("no labels: the table has no finding columns, no 'mesh' and no 'text'/'prompt' column")
    if source == "columns":
        try:
            return frame[list(names)].astype(float).to_numpy(np.float32), source, 0
        except ValueError as exc:
            raise SynthexError(f"finding columns must hold 0/1 values ({exc})") from None
    labels, unparsed = np.zeros((len(frame), len(names)), np.float32), 0
    if source == "mesh":
        from synthex.phantom.dataset import load_mesh_rules, mesh_to_findings

        rules = load_mesh_rules()
        for i, mesh in enumerate(frame["mesh"]):
            labels[i] = finding_labels(mesh_to_findings(str(mesh), rules)[0], tuple(names))
        return labels, source, 0
    column = next(c for c in TEXT_COLUMNS if c in frame.columns)
    for i, text in enumerate(frame[column]):
        labels[i], bad = text_labels(str(text), names)
        unparsed += bad
    return labels, source, unparsed


def parse_label_list(text: str, names: Sequence[str]) -> np.ndarray:
    """A comma list such as ``"effusion,cardiomegaly"`` or ``"pleural_effusion_left"`` -> multi-hot
    over ``names``. Items are label names or finding phrases (synonyms, sides: "left effusion");
    ``normal`` (or an empty list) is all zeros. An item naming no label raises SynthexError."""
    from synthex.phantom.classifier import finding_labels
    from synthex.phantom.findings import parse_findings

    vec = np.zeros(len(names), np.float32)
    index = {n: i for i, n in enumerate(names)}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item or item.lower() == "normal":
            continue
        if item in index:
            vec[index[item]] = 1.0
            continue
        try:
            hot = finding_labels([f for f in parse_findings(item.replace("_", " ")) if f.name != "normal"],
                                 tuple(names))
        except SynthexError:
            hot = np.zeros(len(names), np.float32)
        if not hot.any():
            raise SynthexError(f"label {item!r} names none of the model's findings; use 'normal' or "
                               f"names such as {', '.join(names)}")
        vec = np.maximum(vec, hot)
    return vec


def label_names_of(vec: Sequence[float], names: Sequence[str]) -> list[str]:
    """The names of the set labels (empty = normal)."""
    return [n for n, v in zip(names, vec) if float(v) > 0.5]


def describe_labels(vec: Sequence[float], names: Sequence[str]) -> str:
    """A caption that :func:`text_labels` reads back as ``vec``: ``"Chest x-ray. Cardiomegaly.
    Left pleural effusion."`` (``"Chest x-ray. Normal."`` for none)."""
    phrases = [_phrase(n) for n in label_names_of(vec, names)]
    body = " ".join(p[:1].upper() + p[1:] + "." for p in phrases) or "Normal."
    return f"Chest x-ray. {body}"


def _phrase(name: str) -> str:
    from synthex.phantom.findings import REGISTRY, Finding

    base, _, side = name.rpartition("_")
    if base in _SIDED and side in ("right", "left"):
        return Finding(base, side=side).describe()
    if name in REGISTRY:
        return Finding(name).describe()
    return name.replace("_", " ")
