"""Training captions in the thesis format, and how many exceed CLIP's 77-token window.

``Chest x-ray. [trigger] {MeSH as text} {findings} {impression}`` where the MeSH text is
"Normal." for normal studies, else the terms with ``;`` -> ``. ``, ``/`` and ``_`` -> space,
ending with ``.``: ``"Chest x-ray. Cardiomegaly borderline. Pulmonary Artery enlarged. Heart size ..."``.
"No Indexing" terms carry no finding and are left out of the caption (the thesis kept them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from synthex.data import mesh as mesh_mod
from synthex.text.clip_tokenizer import CLIP_MAX_LENGTH, count_tokens

PREFIX = "Chest x-ray."
_SPACES = re.compile(r"\s+")


def mesh_to_text(mesh: str | None) -> str:
    """MeSH field -> caption text ("Normal." for normal, "" when nothing is indexed)."""
    if mesh_mod.is_normal(mesh):
        return "Normal."
    terms = [t for t in mesh_mod.parse_mesh(mesh) if t.key not in (mesh_mod.NO_INDEXING, mesh_mod.NORMAL)]
    parts = [" ".join((t.heading, *t.qualifiers)).replace("_", " ") for t in terms]
    return ". ".join(_SPACES.sub(" ", p).strip() for p in parts) + "." if parts else ""


def build_prompt(mesh: str | None, findings: str, impression: str, trigger: str | None = None) -> str:
    """One caption in the thesis format (whitespace normalised)."""
    parts = [PREFIX, trigger or "", mesh_to_text(mesh), findings or "", impression or ""]
    return _SPACES.sub(" ", " ".join(p for p in parts if p)).strip()


def build_prompts(frame: pd.DataFrame, trigger: str | None = None, trigger_mask: pd.Series | None = None) -> pd.Series:
    """Captions for a table with cleaned text; the trigger goes to rows where ``trigger_mask``."""
    use = trigger_mask if trigger_mask is not None else pd.Series(True, index=frame.index)
    return pd.Series(
        [
            build_prompt(m, f, i, trigger if t else None)
            for m, f, i, t in zip(frame["mesh"], frame["findings_clean"], frame["impression_clean"], use)
        ],
        index=frame.index,
    )


@dataclass
class TokenStats:
    """How captions fit CLIP's window (``max_length`` includes the start and end tokens)."""

    n: int
    exact: bool
    max_length: int
    over_limit: int
    mean_tokens: float
    median_tokens: float
    p95_tokens: float
    max_tokens: int
    mean_excess_when_over: float

    def summary(self) -> str:
        kind = "CLIP BPE" if self.exact else "approximate (open_clip_torch not installed)"
        return (
            f"{self.over_limit:,} of {self.n:,} prompts ({self.over_limit / max(self.n, 1):.1%}) exceed "
            f"{self.max_length} tokens ({kind}); median {self.median_tokens:.0f}, p95 {self.p95_tokens:.0f}, "
            f"max {self.max_tokens}; over-limit prompts exceed by {self.mean_excess_when_over:.1f} tokens on average"
        )


def token_stats(prompts: list[str], max_length: int = CLIP_MAX_LENGTH) -> tuple[TokenStats, np.ndarray]:
    """Token statistics and per-prompt counts (including start/end tokens)."""
    prompts = list(prompts)
    counts, exact = count_tokens(prompts) if prompts else ([], False)  # a tokenizer fails on no text
    arr = np.asarray(counts, dtype=int) + 2
    over = arr[arr > max_length] - max_length
    stats = TokenStats(
        n=len(arr), exact=exact, max_length=max_length, over_limit=int(over.size),
        mean_tokens=float(arr.mean()) if arr.size else 0.0,
        median_tokens=float(np.median(arr)) if arr.size else 0.0,
        p95_tokens=float(np.percentile(arr, 95)) if arr.size else 0.0,
        max_tokens=int(arr.max()) if arr.size else 0,
        mean_excess_when_over=float(over.mean()) if over.size else 0.0,
    )
    return stats, arr
