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
from synthex.errors import ConfigError, SynthexError

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = (0.7, 0.1, 0.2)  # used for fractions a preset does not give


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
    layout = "a mapping with 'defaults:' (optional) and 'presets:' (name -> settings), as in the packaged presets.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the file holds a {type(raw).__name__}, not {layout}.")
    unknown = sorted(set(map(str, raw)) - {"defaults", "presets"})
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {unknown}; expected {layout}.")
    if not isinstance(raw.get("presets"), dict) or not raw["presets"]:
        raise SynthexError(f"{origin}: needs a 'presets:' mapping with at least one preset.")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{origin}: 'defaults' is a {type(defaults).__name__}; it must be a mapping of preset keys.")
    _check_preset_body(defaults, f"{origin}, defaults", partial=True)
    presets = {}
    for name, body in raw["presets"].items():
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: preset {name!r} is a {type(body).__name__}; it must be a mapping "
                              "of preset keys ({} for the defaults).")
        _check_preset_body(body, f"{origin}, preset {name!r}", partial=True)
        merged = _merge(defaults, body)
        _check_preset_body(merged, f"{origin}, preset {name!r}", partial=False)
        presets[str(name)] = merged
    return presets


PRESET_KEYS = ("projections", "drop_patients_with_several_frontal", "quality_filter", "balance_normal",
               "subset", "trigger", "split")
PROJECTIONS = ("Frontal", "Lateral", "Unknown")


def _check_preset_body(body: dict, where: str, partial: bool) -> None:
    """Check the keys and value types of a preset (``partial``: before merging with defaults,
    where only the keys given are checked). Raises :class:`ConfigError` naming the key."""
    def bad(key: str, want: str) -> ConfigError:
        return ConfigError(f"{where}: {key} is {body_value(key)!r}; it must be {want}.")

    def body_value(path: str) -> Any:
        value: Any = body
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def text_list(key: str, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} is {value!r}; it must be a list of texts, e.g. [a, b].")

    def whole(key: str, value: Any, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where}: {key} is {value!r}; it must be a whole number >= {low}.")

    unknown = sorted(set(map(str, body)) - set(PRESET_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; preset keys are {', '.join(PRESET_KEYS)}.")
    if "projections" in body:
        value = body["projections"]
        if not isinstance(value, list) or not value or any(v not in PROJECTIONS for v in value):
            raise bad("projections", f"a non-empty list of {', '.join(PROJECTIONS)}")
    if "drop_patients_with_several_frontal" in body and not isinstance(body["drop_patients_with_several_frontal"], bool):
        raise bad("drop_patients_with_several_frontal", "true or false")
    if body.get("quality_filter") is not None:
        qf = body["quality_filter"]
        if not isinstance(qf, dict) or set(map(str, qf)) - {"mesh_headings", "text_phrases"}:
            raise bad("quality_filter", "a mapping with mesh_headings and text_phrases lists")
        for key in ("mesh_headings", "text_phrases"):
            if key in qf:
                text_list(f"quality_filter.{key}", qf[key])
    if body.get("balance_normal") is not None:
        rule = body["balance_normal"]
        if not isinstance(rule, dict) or rule.get("method", "none") not in ("drop_shortest", "keep_longest", "none"):
            raise bad("balance_normal", "{method: drop_shortest | keep_longest | none, n: N}")
        if "n" in rule:
            whole("balance_normal.n", rule["n"])
    if body.get("subset") is not None:
        _check_subset(body["subset"], where, text_list, whole)
    if body.get("trigger") is not None and not isinstance(body["trigger"], str):
        raise bad("trigger", "a text (the phrase after 'Chest x-ray.') or null")
    if "split" in body:
        split = body["split"]
        if not isinstance(split, dict) or set(map(str, split)) - {*SPLITS, "seed"}:
            raise bad("split", "{train: 0.7, val: 0.1, test: 0.2, seed: 42}")
        for key in SPLITS:
            if key in split and (isinstance(split[key], bool) or not isinstance(split[key], (int, float))
                                 or not 0 <= split[key] <= 1):
                raise ConfigError(f"{where}: split.{key} is {split[key]!r}; it must be a fraction from 0 to 1.")
        if "seed" in split:
            whole("split.seed", split["seed"])
    if not partial:
        _check_split(body.get("split") or {}, where)


def _check_subset(subset: Any, where: str, text_list, whole) -> None:
    keys = {"include_headings_containing", "exclude_terms_containing", "max_findings", "normals"}
    if not isinstance(subset, dict) or set(map(str, subset)) - keys:
        raise ConfigError(f"{where}: subset is {subset!r}; it must be a mapping with keys {sorted(keys)}.")
    for key in ("include_headings_containing", "exclude_terms_containing"):
        if key in subset:
            text_list(f"subset.{key}", subset[key])
    if not subset.get("include_headings_containing"):
        raise ConfigError(f"{where}: subset.include_headings_containing must list at least one heading word.")
    if "max_findings" in subset:
        whole("subset.max_findings", subset["max_findings"], 1)
    normals = subset.get("normals")
    if normals is None:
        return
    nkeys = {"n", "exclude_text_containing", "aspect_ratio"}
    if not isinstance(normals, dict) or set(map(str, normals)) - nkeys:
        raise ConfigError(f"{where}: subset.normals is {normals!r}; it must be a mapping with keys {sorted(nkeys)}.")
    if "n" in normals and normals["n"] != "match":
        whole("subset.normals.n", normals["n"])
    if "exclude_text_containing" in normals:
        text_list("subset.normals.exclude_text_containing", normals["exclude_text_containing"])
    ratio = normals.get("aspect_ratio")
    if ratio is not None and (not isinstance(ratio, list) or len(ratio) != 2
                              or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in ratio)
                              or not 0 <= ratio[0] <= ratio[1]):
        raise ConfigError(f"{where}: subset.normals.aspect_ratio is {ratio!r}; it must be [low, high] with "
                          "0 <= low <= high, e.g. [0.85, 1.15], or null.")


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
    return presets[name]


def _check_split(split: dict, where: str) -> None:
    fractions = [float(split.get(s, f)) for s, f in zip(SPLITS, DEFAULT_SPLIT)]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"{where}: split fractions {dict(zip(SPLITS, fractions))} must be >= 0 and sum to 1."
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
    return by_mesh.astype(bool), by_text.astype(bool)  # bool also for an empty frame


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
    fractions = np.array([float(split.get(s, f)) for s, f in zip(SPLITS, DEFAULT_SPLIT)])
    rng = np.random.default_rng(int(split.get("seed", 42)))
    patients = frame.groupby("uid", sort=True)["is_normal"].first()
    assignment: dict[str, str] = {}
    for _, group in patients.groupby(patients):
        uids = group.index.to_numpy()[rng.permutation(len(group))]
        bounds = np.round(np.cumsum(fractions) * len(uids)).astype(int)
        for name, chunk in zip(SPLITS, np.split(uids, bounds[:-1])):
            assignment.update(dict.fromkeys(chunk, name))
    return frame["uid"].map(assignment)
