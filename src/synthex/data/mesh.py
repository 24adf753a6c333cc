"""IU X-ray MeSH strings as structured findings, with frequencies, combinations and trees.

A MeSH field holds findings separated by ``;`` and qualifiers separated by ``/``:
``"Diaphragm/right/elevated/mild;Opacity/lung/base/left"`` ->
``[MeshTerm("Diaphragm", ("right", "elevated", "mild")), MeshTerm("Opacity", ("lung", "base", "left"))]``.
Headings are compared case-insensitively ("normal" and "Normal" are one heading).
"""
from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from synthex.errors import SynthexError

NORMAL = "normal"
NO_INDEXING = "no indexing"


@dataclass(frozen=True)
class MeshTerm:
    """One MeSH finding: a main heading and its qualifiers."""

    heading: str
    qualifiers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Case-folded heading, the unit of counting."""
        return self.heading.casefold()

    def __str__(self) -> str:
        return "/".join((self.heading, *self.qualifiers))


def parse_mesh(mesh: str | None) -> list[MeshTerm]:
    """Parse a MeSH field into terms; empty parts are ignored, whitespace is trimmed."""
    if not isinstance(mesh, str):
        return []
    terms = []
    for part in mesh.split(";"):
        pieces = [p.strip() for p in part.split("/") if p.strip()]
        if pieces:
            terms.append(MeshTerm(pieces[0], tuple(pieces[1:])))
    return terms


def headings(mesh: str | None) -> list[str]:
    """Distinct case-folded main headings of a MeSH field, in order of appearance."""
    seen: list[str] = []
    for term in parse_mesh(mesh):
        if term.key not in seen:
            seen.append(term.key)
    return seen


def is_normal(mesh: str | None) -> bool:
    """True when the only heading is "normal"."""
    return headings(mesh) == [NORMAL]


def _display_names(meshes: Iterable[str]) -> dict[str, str]:
    """Most common spelling of each case-folded heading."""
    spellings: dict[str, Counter] = {}
    for mesh in meshes:
        for term in parse_mesh(mesh):
            spellings.setdefault(term.key, Counter())[term.heading] += 1
    return {k: c.most_common(1)[0][0] for k, c in spellings.items()}


def heading_frequencies(meshes: pd.Series, exclude: Iterable[str] = (NO_INDEXING,)) -> pd.DataFrame:
    """Images per main heading (each image counted once per heading), most frequent first.

    "No Indexing" is excluded from the statistics by default (its rows are kept elsewhere).
    """
    skip = {e.casefold() for e in exclude}
    names = _display_names(meshes)
    counts = Counter(h for mesh in meshes for h in headings(mesh) if h not in skip)
    frame = pd.DataFrame(
        [(names[k], n) for k, n in counts.most_common()], columns=["heading", "images"]
    )
    frame["share"] = frame["images"] / max(len(meshes), 1)
    return frame


def combinations(meshes: pd.Series, exclude: Iterable[str] = (NO_INDEXING,)) -> pd.DataFrame:
    """Per-image combinations of main headings (sorted, joined by " + "), most frequent first."""
    skip = {e.casefold() for e in exclude}
    names = _display_names(meshes)
    combos = Counter(
        " + ".join(sorted(names[h] for h in headings(m) if h not in skip)) or "(none)" for m in meshes
    )
    return pd.DataFrame(combos.most_common(), columns=["combination", "images"])


def mesh_tree(meshes: pd.Series, heading: str) -> dict:
    """Nested counts below one heading: {"name", "count", "children": {qualifier: node}}.

    Each image counts once per path prefix, so a parent's count is the images having it.
    """
    key = heading.casefold()
    names = _display_names(meshes)
    if key not in names:
        close = difflib.get_close_matches(heading, sorted(names.values()), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise SynthexError(f"MeSH heading {heading!r} does not occur in this data.{hint}")
    root = {"name": names[key], "count": 0, "children": {}}
    for mesh in meshes:
        paths = {term.qualifiers for term in parse_mesh(mesh) if term.key == key}
        if not paths:
            continue
        root["count"] += 1
        prefixes = {path[: i + 1] for path in paths for i in range(len(path))}
        for prefix in sorted(prefixes, key=len):
            node = root
            for q in prefix:
                node = node["children"].setdefault(q, {"name": q, "count": 0, "children": {}})
            node["count"] += 1
    return root


def render_tree(node: dict, prefix: str = "", last: bool = True, top: bool = True) -> str:
    """Draw a :func:`mesh_tree` as text: ``Diaphragm (122)`` then ``└── right (61)`` ..."""
    label = f"{node['name']} ({node['count']:,})"
    lines = [label if top else f"{prefix}{'└── ' if last else '├── '}{label}"]
    children = sorted(node["children"].values(), key=lambda n: (-n["count"], n["name"]))
    child_prefix = "" if top else prefix + ("    " if last else "│   ")
    for i, child in enumerate(children):
        lines.append(render_tree(child, child_prefix, i == len(children) - 1, top=False))
    return "\n".join(lines)
