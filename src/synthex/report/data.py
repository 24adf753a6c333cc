"""Report training data: (image, clinical case, target report, reference, truth, patient, split).

Two sources:

- a ``synthex data prepare`` folder (IU X-ray, or the phantom IU X-ray set): images and splits
  from its ``metadata.csv``; the real report (``findings``, ``impression``) and the clinical case
  (``indication``) from the source folder's ``indiana_reports.csv``; for the phantom set the
  renderer's truth from ``phantom_truth.jsonl``. The target caption keeps only the report
  sentences the phantom shows (:func:`synthex.phantom.captions.filter_report`); a part left empty
  is written from the truth. ``Image Labels`` are the drawn findings (``Finding.describe``).
  What was done is counted in :attr:`ReportData.counts`.
- a MultiCaRe-style CSV: ``clinical_case, image_path, expected_output`` (+ optional
  ``patient_id``, ``split``); image paths relative to the CSV. Without ``split``, patients are
  split 70/10/20 by a seeded hash of their id.

Rows without a readable image or with empty text are rejects: counted and listed, never silently
dropped.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthex.errors import DataSourceError
from synthex.report.format import UNKNOWN, build_report, caption_text, case_demographics

SPLITS = ("train", "val", "test")
MULTICARE_COLUMNS = ("clinical_case", "image_path", "expected_output")


@dataclass
class ReportExample:
    image: Path
    case: str
    target: str
    reference: str
    truth: list[dict] | None
    patient: str
    split: str
    uid: str = ""

    def truth_findings(self):
        from synthex.phantom.findings import Finding

        return None if self.truth is None else [Finding.from_dict(d) for d in self.truth]


@dataclass
class ReportData:
    examples: list[ReportExample]
    rejects: list[tuple[str, str]]
    source: str
    counts: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> list[ReportExample]:
        return [e for e in self.examples if e.split == name]


def load_report_data(source: str | Path, *, seed: int = 0) -> ReportData:
    """Examples of a prepared folder or a MultiCaRe-style CSV (see the module doc)."""
    path = Path(source)
    if path.is_dir():
        return load_prepared(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_multicare(path, seed=seed)
    raise DataSourceError(f"report data {source}: not found; give a 'synthex data prepare' folder "
                          "(e.g. runs/phantom-ds-128) or a CSV with columns clinical_case, image_path, expected_output")


# ---------------------------------------------------------------------------------------------
# A prepared IU X-ray / phantom folder
# ---------------------------------------------------------------------------------------------
def _read_csv(path: Path, what: str):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataSourceError(f"{what} {path}: cannot read it as CSV ({err})") from err


def _source_folder(folder: Path) -> Path:
    try:
        options = json.loads((folder / "prepare.json").read_text(encoding="utf-8"))["options"]
        src = Path(options["source"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise DataSourceError(f"{folder}: no readable prepare.json naming its source ({err}); give a folder "
                              "written by 'synthex data prepare'") from err
    src = src if src.is_absolute() or src.is_dir() else folder / src
    if not (src / "indiana_reports.csv").is_file():
        raise DataSourceError(f"{folder}: its source {src} has no indiana_reports.csv (the real report text); "
                              "keep the 'synthex phantom build' / IU X-ray folder beside it")
    return src


def _truth(src: Path) -> dict[str, list[dict]] | None:
    path = src / "phantom_truth.jsonl"
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row["image_id"])] = row["findings"]
    return out


def phantom_target(findings: str, impression: str, truth: list[dict], rng: np.random.Generator,
                   counts: Counter) -> tuple[str, list[str]]:
    """(caption, labels) that say what the phantom shows (see the module doc)."""
    from synthex.phantom.captions import caption, filter_report
    from synthex.phantom.findings import Finding

    drawn = [Finding.from_dict(d) for d in truth]
    kept_f, cf = filter_report(findings, drawn)
    kept_i, ci = filter_report(impression, drawn)
    counts["sentences_kept"] += cf.kept + ci.kept + cf.unreadable + ci.unreadable
    counts["sentences_dropped"] += cf.dropped + ci.dropped
    if not kept_f.strip():
        kept_f = caption(drawn, rng, "report")
        counts["findings_written_from_truth"] += 1
    if not kept_i.strip():
        kept_i = ("No acute cardiopulmonary abnormality." if not drawn
                  else caption(drawn, rng, "short").capitalize() + ".")
        counts["impression_written_from_truth"] += 1
    counts["reports_rewritten" if cf.dropped + ci.dropped else "reports_kept_whole"] += 1
    return caption_text(kept_f, kept_i), [f.describe() for f in drawn]


def load_prepared(folder: Path) -> ReportData:
    meta = _read_csv(folder / "metadata.csv", "metadata") if (folder / "metadata.csv").is_file() else None
    if meta is None:
        raise DataSourceError(f"{folder}: no metadata.csv; give a folder written by 'synthex data prepare'")
    src = _source_folder(folder)
    reports = _read_csv(src / "indiana_reports.csv", "reports").set_index("uid")
    truth = _truth(src)
    rng, counts, rejects, examples = np.random.default_rng(0), Counter(), [], []
    for k, row in meta.iterrows():
        where = f"{folder / 'metadata.csv'} row {k + 2} ({row.get('file_name', '')})"
        image = folder / str(row.get("file_name", ""))
        uid = str(row.get("uid", ""))
        if not image.is_file():
            rejects.append((where, f"image {image} is missing"))
            continue
        if uid not in reports.index:
            rejects.append((where, f"uid {uid!r} has no report in {src / 'indiana_reports.csv'}"))
            continue
        rep = reports.loc[uid]
        findings, impression = str(rep.get("findings", "")), str(rep.get("impression", ""))
        if not (findings.strip() or impression.strip()):
            rejects.append((where, "the report has neither findings nor impression text"))
            continue
        drawn = truth.get(str(row.get("image_id", ""))) if truth is not None else None
        if truth is not None and drawn is None:
            rejects.append((where, f"image_id {row.get('image_id')!r} is not in {src / 'phantom_truth.jsonl'}"))
            continue
        if drawn is not None:
            cap, labels = phantom_target(findings, impression, drawn, rng, counts)
        else:
            cap = caption_text(findings, impression)
            labels = [x for x in str(row.get("labels", "")).split(";") if x and x != "normal"]
        case = str(rep.get("indication", ""))
        gender, age = case_demographics(case)
        examples.append(ReportExample(image, case, build_report(labels, cap, gender, age),
                                      caption_text(findings, impression), drawn, uid, str(row.get("split", "train")), uid))
    return ReportData(examples, rejects, str(folder), dict(counts))


# ---------------------------------------------------------------------------------------------
# A MultiCaRe-style CSV
# ---------------------------------------------------------------------------------------------
def patient_split(patient: str, seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> str:
    """train / val / test by a seeded hash of the patient id (all images of a patient together)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "little") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def load_multicare(path: Path, *, seed: int = 0) -> ReportData:
    frame = _read_csv(path, "report CSV")
    missing = [c for c in MULTICARE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataSourceError(f"{path}: missing column(s) {', '.join(missing)}; a report CSV needs "
                              f"{', '.join(MULTICARE_COLUMNS)} (optional: patient_id, split)")
    rejects, examples = [], []
    for k, row in frame.iterrows():
        where = f"{path} row {k + 2}"
        image = Path(str(row["image_path"]))
        image = image if image.is_absolute() else path.parent / image
        target, case = str(row["expected_output"]).strip(), str(row["clinical_case"]).strip()
        split = str(row.get("split", "")).strip() or None
        if not str(row["image_path"]).strip() or not image.is_file():
            rejects.append((where, f"image {image} is missing"))
        elif not target:
            rejects.append((where, "expected_output is empty"))
        elif not case:
            rejects.append((where, "clinical_case is empty"))
        elif split is not None and split not in SPLITS:
            rejects.append((where, f"split {split!r} is not one of {', '.join(SPLITS)}"))
        else:
            patient = str(row.get("patient_id", "")).strip() or f"row{k}"
            examples.append(ReportExample(image, case, target, _caption_of(target), None, patient,
                                          split or patient_split(patient, seed), str(k)))
    return ReportData(examples, rejects, str(path), {"rows": len(frame)})


def _caption_of(target: str) -> str:
    from synthex.report.format import parse_report

    report = parse_report(target)
    return report.caption or target


def write_rejects(path: Path, rejects: list[tuple[str, str]]) -> None:
    from synthex.train.note import _write_rejects

    _write_rejects(path, rejects)


__all__ = ["ReportExample", "ReportData", "load_report_data", "patient_split", "UNKNOWN", "Any"]
