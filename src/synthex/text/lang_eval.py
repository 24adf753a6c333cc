"""Measure the Russian/Ukrainian glossary on a parallel prompt set.

A parallel set is a YAML file ``prompts: [{id, set, source, en, text}, ...]``: an English source
and its translation. The English is read by the English parser
(:func:`synthex.phantom.findings.parse_findings`), the translation by
:func:`synthex.text.lang.map_text`; a prompt is correct when both give the same findings with
the same sides and grades (``exact``); names only, sides and zones are reported beside it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from synthex.errors import SynthexError
from synthex.phantom.findings import Finding, parse_findings
from synthex.text.lang import map_text

REQUIRED = ("id", "en", "text")


def load_parallel(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a parallel set; a row without ``id``/``en``/``text`` is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SynthexError(f"parallel set {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise SynthexError(f"{path}: expected 'prompts:' with a list of {{id, en, text}} entries")
    bad = [str(r.get("id", n)) if isinstance(r, dict) else str(n) for n, r in enumerate(rows)
           if not isinstance(r, dict) or any(not str(r.get(k) or "").strip() for k in REQUIRED)]
    if bad:
        raise SynthexError(f"{path}: {len(bad)} entr(y/ies) lack id, en or text: {', '.join(bad[:10])}")
    return rows


def _keys(findings: Iterable[Finding], zone: bool = False) -> set:
    """The findings as a set: one finding named twice ("granuloma ... calcified granuloma") is one."""
    return {(f.name, f.side, f.severity) + ((f.zone,) if zone else ()) for f in findings}


def compare_row(row: dict[str, Any], lang: str = "auto") -> dict[str, Any]:
    """One row: expected and mapped findings and which parts agree."""
    expected = parse_findings(str(row["en"]))
    out: dict[str, Any] = {"id": row["id"], "set": row.get("set", ""), "source": row.get("source", ""),
                           "en": row["en"], "text": row["text"],
                           "expected": "; ".join(f.describe() for f in expected)}
    try:
        mapping = map_text(str(row["text"]), lang)
    except SynthexError as exc:
        return {**out, "mapped": "", "english": "", "error": str(exc), "exact": False, "names": False,
                "sides": False, "grades": False, "zones": False, "unknown": ""}
    got = mapping.findings
    return {**out, "mapped": "; ".join(f.describe() for f in got), "english": mapping.english, "error": "",
            "exact": _keys(got) == _keys(expected),
            "names": {f.name for f in got} == {f.name for f in expected},
            "sides": {(f.name, f.side) for f in got} == {(f.name, f.side) for f in expected},
            "grades": {(f.name, f.severity) for f in got} == {(f.name, f.severity) for f in expected},
            "zones": _keys(got, True) == _keys(expected, True),
            "unknown": " ".join(mapping.unknown), "language": mapping.language}


def evaluate_parallel(rows: Sequence[dict[str, Any]], lang: str = "auto") -> dict[str, Any]:
    """Shares of rows whose mapping agrees with the English source (exact, names, sides, grades, zones)."""
    results = [compare_row(row, lang) for row in rows]
    n = len(results)
    share = {k: sum(r[k] for r in results) / n if n else 0.0 for k in ("exact", "names", "sides", "grades", "zones")}
    words = Counter(w for r in results for w in r["unknown"].split())
    return {"n": n, **share, "errors": sum(bool(r["error"]) for r in results),
            "with_unknown_words": sum(bool(r["unknown"]) for r in results),
            "top_unknown": words.most_common(15), "rows": results}
