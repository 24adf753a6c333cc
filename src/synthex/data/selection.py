"""Which images enter the training set: projection, unique patients, quality, balance, subsets, split.

Every rule is a step that records how many rows it removed and why; removed rows are kept in
:attr:`Selection.excluded` (written to ``excluded.csv``), so nothing disappears silently.
Rules and presets live in ``config/presets.yaml``; users add presets there or in their own file.
"""
from __future__ import annotations

import copy
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from synthex.data import mesh as mesh_mod
from synthex.errors import SynthexError

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- presets
def load_presets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Load presets (packaged file by default), each merged over the file's ``defaults``."""
    if path is None:
        text = importlib.resources.files("synthex.config").joinpath("presets.yaml").read_text()
        origin = "packaged presets.yaml"
    else:
        if not Path(path).is_file():
            raise SynthexError(f"--presets {path}: no such file.")
        text, origin = Path(path).read_text(), str(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SynthexError(f"{origin}: not valid YAML ({err}).") from err
    if not isinstance(raw.get("presets"), dict) or not raw["presets"]:
        raise SynthexError(f"{origin}: needs a 'presets:' mapping with at least one preset.")
    defaults = raw.get("defaults") or {}
    return {name: _merge(defaults, body or {}) for name, body in raw["presets"].items()}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_preset(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """Return one resolved preset, or an error listing the available names."""
    presets = load_presets(path)
    if name not in presets:
        raise SynthexError(f"--preset {name!r} is unknown; available: {', '.join(sorted(presets))}.")
    preset = presets[name]
    _check_split(preset.get("split") or {}, name)
    return preset


def _check_split(split: dict, name: str) -> None:
    fractions = [float(split.get(s, 0)) for s in SPLITS]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise SynthexError(
            f"preset {name!r}: split fractions {dict(zip(SPLITS, fractions))} must be >= 0 and sum to 1."
        )


# --------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """The selected rows, the per-step log and every excluded row with its reason."""

    selected: pd.DataFrame
    steps: list[dict[str, Any]] = field(default_factory=list)
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)

    def log_frame(self) -> pd.DataFrame:
        """One row per step: step, removed, remaining, reason."""
        return pd.DataFrame(self.steps, columns=["step", "removed", "remaining", "reason"])


class _Selector:
    def __init__(self, frame: pd.DataFrame):
        self.frame = frame.copy()
        self.steps: list[dict[str, Any]] = [
            {"step": "start", "removed": 0, "remaining": len(frame), "reason": "images with a report"}
        ]
        self.excluded: list[pd.DataFrame] = []

    def drop(self, mask: pd.Series, step: str, reason: str) -> None:
        removed = self.frame[mask]
        if len(removed):
            self.excluded.append(removed.assign(excluded_by=step))
        self.frame = self.frame[~mask]
        self.steps.append({"step": step, "removed": int(mask.sum()), "remaining": len(self.frame), "reason": reason})

    def result(self) -> Selection:
        excluded = pd.concat(self.excluded, ignore_index=True) if self.excluded else pd.DataFrame()
        return Selection(self.frame.reset_index(drop=True), self.steps, excluded)


def report_text(frame: pd.DataFrame, cleaned: bool = True) -> pd.Series:
    """findings + impression, cleaned when the cleaned columns exist."""
    suffix = "_clean" if cleaned and "findings_clean" in frame.columns else ""
    return (frame[f"findings{suffix}"].fillna("") + " " + frame[f"impression{suffix}"].fillna("")).str.strip()


def quality_mask(frame: pd.DataFrame, rules: dict) -> tuple[pd.Series, pd.Series]:
    """(rejected by MeSH heading, rejected by report text) per the thesis quality filter."""
    bad_headings = {h.casefold() for h in rules.get("mesh_headings", [])}
    by_mesh = frame["mesh"].map(lambda m: bool(bad_headings & set(mesh_mod.headings(m))))
    phrases = [p.casefold() for p in rules.get("text_phrases", [])]
    raw = report_text(frame, cleaned=False).str.casefold()
    by_text = raw.map(lambda t: any(p in t for p in phrases))
    return by_mesh, by_text


def select(frame: pd.DataFrame, preset: dict[str, Any]) -> Selection:
    """Apply a resolved preset to the one-row-per-image table (with cleaned text columns)."""
    sel = _Selector(frame)
    keep = set(preset.get("projections") or ["Frontal"])
    sel.drop(~sel.frame["projection"].isin(keep), "projection", f"projection not in {sorted(keep)}")
    if preset.get("drop_patients_with_several_frontal", True):
        counts = sel.frame.groupby("uid")["image_id"].transform("size")
        sel.drop(counts > 1, "several_frontal", "patient has more than one kept image")
    by_mesh, by_text = quality_mask(sel.frame, preset.get("quality_filter") or {})
    sel.steps.append({"step": "quality_overlap", "removed": 0, "remaining": len(sel.frame),
                      "reason": f"quality: {int(by_mesh.sum())} by MeSH, {int(by_text.sum())} by text, "
                                f"{int((by_mesh & by_text).sum())} both"})
    sel.drop(by_mesh | by_text, "quality", "quality filter (MeSH heading or report phrase)")
    if preset.get("subset"):
        _apply_subset(sel, preset["subset"], int((preset.get("split") or {}).get("seed", 42)))
    else:
        _balance_normals(sel, preset.get("balance_normal") or {"method": "none"})
    result = sel.result()
    result.selected["is_normal"] = result.selected["mesh"].map(mesh_mod.is_normal)
    result.selected["split"] = assign_splits(result.selected, preset.get("split") or {})
    return result


def _balance_normals(sel: _Selector, rule: dict) -> None:
    method = rule.get("method", "none")
    if method == "none":
        return
    if method not in ("drop_shortest", "keep_longest"):
        raise SynthexError(f"balance_normal.method {method!r}: use drop_shortest, keep_longest or none.")
    normal = sel.frame["mesh"].map(mesh_mod.is_normal)
    lengths = report_text(sel.frame[normal]).str.len()
    order = lengths.sort_values(kind="stable").index  # shortest first
    n = int(rule.get("n", 0))
    drop_idx = order[:n] if method == "drop_shortest" else order[: max(len(order) - n, 0)]
    sel.drop(sel.frame.index.isin(drop_idx), "balance_normal", f"{method} {n} 'normal' reports by text length")


def _apply_subset(sel: _Selector, subset: dict, seed: int) -> None:
    include = [w.casefold() for w in subset.get("include_headings_containing", [])]
    exclude = [w.casefold() for w in subset.get("exclude_terms_containing", [])]
    terms = sel.frame["mesh"].map(mesh_mod.parse_mesh)
    positive = terms.map(lambda ts: any(any(w in t.key for w in include) for t in ts))
    blacklisted = sel.frame["mesh"].str.casefold().map(lambda m: any(w in m for w in exclude))
    too_many = terms.map(len) > int(subset.get("max_findings", 99))
    normal = sel.frame["mesh"].map(mesh_mod.is_normal)
    pos = positive & ~blacklisted & ~too_many
    normal_rule = subset.get("normals") or {}
    dirty = report_text(sel.frame).str.casefold().map(
        lambda t: any(w in t for w in (x.casefold() for x in normal_rule.get("exclude_text_containing", [])))
    )
    sel.drop(~(pos | normal), "subset_findings", "neither a subset finding (whitelist, blacklist, max findings) nor normal")
    sel.drop(normal[sel.frame.index] & dirty[sel.frame.index], "subset_clean_normals", "normal report mentions a blacklisted term")
    n_pos = int(pos[sel.frame.index].sum())
    wanted = n_pos if normal_rule.get("n", "match") == "match" else int(normal_rule["n"])
    is_norm = normal[sel.frame.index]
    ranked = rank_normals(sel.frame[is_norm], normal_rule.get("aspect_ratio"), seed)
    sel.drop(sel.frame.index.isin(ranked[wanted:]), "subset_normal_count", f"normals beyond {wanted} (square-ish first)")
    sel.frame["is_subset_positive"] = pos[sel.frame.index]


def rank_normals(frame: pd.DataFrame, aspect_range: list[float] | None, seed: int) -> pd.Index:
    """Order normals: aspect ratio (w/h) in range first (seeded order), then the least-wide
    landscapes, then the least-tall portraits, then unknown sizes."""
    lo, hi = aspect_range or (0.0, float("inf"))
    aspect = frame["width"] / frame["height"]
    tie = pd.Series(np.random.default_rng(seed).random(len(frame)), index=frame.index)
    group = np.select([aspect.between(lo, hi), aspect > hi, aspect < lo], [0, 1, 2], default=3)
    key = np.where(group == 1, aspect, np.where(group == 2, -aspect, tie))
    order = pd.DataFrame({"group": group, "key": key}, index=frame.index)
    return order.sort_values(["group", "key"], kind="stable").index


def assign_splits(frame: pd.DataFrame, split: dict) -> pd.Series:
    """Patient-level split (by uid), stratified by normal/abnormal, seeded and deterministic."""
    fractions = np.array([float(split.get(s, f)) for s, f in zip(SPLITS, (0.7, 0.1, 0.2))])
    rng = np.random.default_rng(int(split.get("seed", 42)))
    patients = frame.groupby("uid", sort=True)["is_normal"].first()
    assignment: dict[str, str] = {}
    for _, group in patients.groupby(patients):
        uids = group.index.to_numpy()[rng.permutation(len(group))]
        bounds = np.round(np.cumsum(fractions) * len(uids)).astype(int)
        for name, chunk in zip(SPLITS, np.split(uids, bounds[:-1])):
            assignment.update(dict.fromkeys(chunk, name))
    return frame["uid"].map(assignment)
