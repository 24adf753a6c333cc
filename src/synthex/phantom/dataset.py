"""An IU-X-ray-shaped phantom dataset: every real bundled report paired with a phantom drawn
from its own MeSH labels, in the Kaggle layout that ``synthex data prepare`` reads unchanged.

Writes into ``OUT``::

    indiana_reports.csv        uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv    uid, filename, projection
    images/images_normalized/  <uid>_IM-....dcm.png phantoms (marked synthetic in PNG metadata)
    phantom_truth.jsonl        per image: seed, rendered findings, unmapped MeSH terms, CTR
    mesh_mapping.csv           per MeSH heading: terms mapped / unmapped, the finding it became
    build.json                 options, counts, completion state

Image seeds are derived from (seed, image id), so the dataset is deterministic for a seed and
an interrupted build resumes (finished images are skipped; each PNG is written atomically).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from synthex.data.mesh import MeshTerm, is_normal, parse_mesh
from synthex.data.sources import KAGGLE_IMAGE_DIR, load_source
from synthex.errors import ConfigError, OutputExistsError, SynthexError
from synthex.io import atomic_write
from synthex.phantom.findings import REGISTRY, Finding

log = logging.getLogger(__name__)

_SEVERITY = {"mild": "mild", "borderline": "mild", "small": "mild", "minimal": "mild",
             "moderate": "moderate", "severe": "severe", "large": "severe", "extensive": "severe", "marked": "severe"}
_ZONE = {"upper lobe": "upper", "apex": "upper", "apical": "upper", "middle lobe": "middle", "lingula": "middle",
         "hilum": "middle", "base": "lower", "lower lobe": "lower", "basilar": "lower", "retrocardiac": "lower"}
_SIDES = ("right", "left", "bilateral")
MANIFEST = "build.json"


# --------------------------------------------------------------------------- MeSH -> findings
@dataclass(frozen=True)
class MeshRule:
    heading: str
    finding: str
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    severity: str | None = None

    def matches(self, term: MeshTerm) -> bool:
        quals = {q.casefold() for q in term.qualifiers}
        return (term.key == self.heading and all(w in quals for w in self.when)
                and not any(w in quals for w in self.unless))


def load_mesh_rules(path: str | Path | None = None) -> list[MeshRule]:
    """Load the MeSH -> finding rules (packaged ``phantom_mesh_map.yaml`` by default)."""
    origin = str(path) if path else "packaged phantom_mesh_map.yaml"
    try:
        text = (Path(path).read_text() if path else
                importlib.resources.files("synthex.config").joinpath("phantom_mesh_map.yaml").read_text())
        raw = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SynthexError(f"{origin}: cannot read the MeSH map ({err}).") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("rules") or [], list):
        raise ConfigError(f"{origin}: must be a mapping with a 'rules:' list (each: heading, finding, when, "
                          "unless, severity), as in the packaged phantom_mesh_map.yaml.")
    rules = []
    for i, entry in enumerate(raw.get("rules") or []):
        if not isinstance(entry, dict) or entry.get("finding") not in REGISTRY or not entry.get("heading"):
            raise SynthexError(f"{origin}: rule #{i + 1} {entry!r} needs a heading and a finding among "
                               f"{', '.join(REGISTRY)}.")
        for key in ("when", "unless"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise ConfigError(f"{origin}: rule #{i + 1} ({entry['heading']}): {key} is {value!r}; it must be "
                                  "a list of qualifier words, e.g. [right, mild].")
        if entry.get("severity") is not None and not isinstance(entry["severity"], str):
            raise ConfigError(f"{origin}: rule #{i + 1} ({entry['heading']}): severity must be a text or null.")
        rules.append(MeshRule(str(entry["heading"]).casefold(), entry["finding"],
                              tuple(w.casefold() for w in entry.get("when", [])),
                              tuple(w.casefold() for w in entry.get("unless", [])), entry.get("severity")))
    if not rules:
        raise SynthexError(f"{origin}: no rules.")
    return rules


def _term_findings(term: MeshTerm, rule: MeshRule) -> list[Finding]:
    spec = REGISTRY[rule.finding]
    quals = [q.casefold() for q in term.qualifiers]
    side = next((q for q in quals if q in _SIDES), None)
    zone = next((_ZONE[q] for q in quals if q in _ZONE), None) if spec.zoned else None
    severity = next((_SEVERITY[q] for q in quals if q in _SEVERITY), rule.severity) if spec.graded else None
    sides: list[str | None] = [side if side in spec.sides else None]
    if side == "bilateral" and "bilateral" not in spec.sides and "left" in spec.sides:
        sides = ["right", "left"]
    if not spec.sides:
        sides = [None]
    return [Finding(rule.finding, s, zone, severity) for s in sides]


def mesh_to_findings(mesh: str, rules: list[MeshRule]) -> tuple[list[Finding], list[str]]:
    """Findings to draw for a MeSH field, and the terms no rule maps (duplicates merged)."""
    if is_normal(mesh):
        return [], []
    findings: list[Finding] = []
    unmapped: list[str] = []
    for term in parse_mesh(mesh):
        rule = next((r for r in rules if r.matches(term)), None)
        if rule is None:
            unmapped.append(str(term))
            continue
        for f in _term_findings(term, rule):
            if f not in findings:
                findings.append(f)
    return findings, unmapped


# --------------------------------------------------------------------------- building
@dataclass
class BuildOptions:
    out: str
    n: int | None = None
    size: int = 256
    seed: int = 0
    lateral: bool = False
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    map_file: str | None = None

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n", "size", "seed", "lateral", "map_file")}

    def validate(self) -> None:
        """Check the options up front; a :class:`ConfigError` names the option and the fix."""
        from synthex.phantom.render import MAX_SIZE, MIN_SIZE

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not whole(self.size) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError(f"--size {self.size!r}: phantoms are {MIN_SIZE} to {MAX_SIZE} pixels.")
        if not whole(self.seed) or self.seed < 0:
            raise ConfigError(f"--seed {self.seed!r}: give a non-negative integer (same seed, same dataset).")
        if not whole(self.workers) or self.workers < 1:
            raise ConfigError(f"--workers {self.workers!r}: give 1 or more render processes.")
        if self.n is not None and (not whole(self.n) or self.n < 1):
            raise ConfigError(f"--n {self.n!r}: must be at least 1 (omit it for every report).")


@dataclass
class BuildReport:
    reports: int = 0
    frontal_images: int = 0
    lateral_rows: int = 0
    written: int = 0
    skipped_existing: int = 0
    terms_total: int = 0
    terms_mapped: int = 0
    images_with_unmapped_only: int = 0
    unmapped_by_heading: dict[str, int] = field(default_factory=dict)
    finding_counts: dict[str, int] = field(default_factory=dict)


def image_seed(seed: int, image_id: str) -> int:
    """A stable 31-bit seed for one image of the dataset."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _select_rows(n: int | None, lateral: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = load_source("bundled")
    uids = list(dict.fromkeys(table["uid"]))
    if n is not None:
        if n < 1:
            raise SynthexError(f"--n {n}: must be at least 1.")
        uids = uids[:n]
    table = table[table["uid"].isin(set(uids))]
    keep = table["projection"] == "Frontal" if not lateral else table["projection"].isin(["Frontal", "Lateral"])
    return table, table[keep]


def _check_out(out: Path, options: BuildOptions) -> None:
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise OutputExistsError(f"--out {out} is not empty and was not made by 'synthex phantom build'.")
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputExistsError(f"{manifest} is unreadable ({err}); choose a new --out for the build.") from None
    if not isinstance(previous, dict):
        raise OutputExistsError(f"{manifest} is not a phantom build manifest; choose a new --out.")
    if options.overwrite:
        return
    if previous.get("complete"):
        raise OutputExistsError(f"--out {out} already holds a finished build; pass --overwrite to redo it.")
    if previous.get("options") != json.loads(json.dumps(options.identity())):
        raise OutputExistsError(f"--out {out} holds an interrupted build with other options "
                                f"({previous.get('options')}); use the same options to resume or --overwrite.")


def _render_job(job: tuple[str, str, list[dict], int, int, bool]) -> dict[str, Any]:
    """Render and save one phantom (runs in worker processes)."""
    from synthex.phantom.render import render_phantom, save_phantom

    path, image_id, findings, seed, size, overwrite = job
    result = render_phantom([Finding.from_dict(f) for f in findings] or "normal", seed, size)
    text = "; ".join(Finding.from_dict(f).describe() for f in findings) or "normal"
    save_phantom(result, path, text=text, overwrite=overwrite)
    ctr = result.truth.get("measurements", {}).get("ctr")
    return {"image_id": image_id, "ctr": ctr, "labels": result.truth.get("labels")}


def build_dataset(options: BuildOptions, callback: Callable[[int, int], None] | None = None) -> BuildReport:
    """Write the phantom IU X-ray dataset; see the module docstring."""
    options.validate()
    out = Path(options.out)
    _check_out(out, options)
    rules = load_mesh_rules(options.map_file)
    table, rows = _select_rows(options.n, options.lateral)
    image_dir = out / KAGGLE_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out / MANIFEST, {"options": options.identity(), "complete": False})
    report = BuildReport(reports=table["uid"].nunique())
    _write_kaggle_csvs(out, table, rows)
    truth, jobs = _plan(rows, rules, options, image_dir, report)
    _run_jobs(jobs, options, report, truth, callback)
    lines = "".join(json.dumps(record) + "\n" for record in truth)
    atomic_write(out / "phantom_truth.jsonl", lambda fh: fh.write(lines.encode("utf-8")))
    _mapping_table(rows, rules).to_csv(out / "mesh_mapping.csv", index=False)
    _write_json(out / MANIFEST, {"options": options.identity(), "complete": True, "report": asdict(report)})
    return report


def _write_json(path: Path, body: dict) -> None:
    text = json.dumps(body, indent=2, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _write_kaggle_csvs(out: Path, table: pd.DataFrame, rows: pd.DataFrame) -> None:
    reports = table.drop_duplicates("uid").rename(columns={"mesh": "MeSH", "problems": "Problems"})
    reports = reports.assign(image="Xray Chest PA (phantom)")
    reports[["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]].to_csv(
        out / "indiana_reports.csv", index=False)
    rows[["uid", "filename", "projection"]].to_csv(out / "indiana_projections.csv", index=False)


def _plan(rows, rules, options, image_dir, report) -> tuple[list[dict], list[tuple]]:
    truth, jobs = [], []
    counts: Counter = Counter()
    unmapped_heads: Counter = Counter()
    for row in rows.itertuples(index=False):
        if row.projection != "Frontal":
            report.lateral_rows += 1  # listed, not rendered: the renderer draws PA views only
            continue
        findings, unmapped = mesh_to_findings(row.mesh, rules)
        report.frontal_images += 1
        report.terms_total += len(parse_mesh(row.mesh)) if not is_normal(row.mesh) else 0
        report.terms_mapped += len(parse_mesh(row.mesh)) - len(unmapped) if not is_normal(row.mesh) else 0
        report.images_with_unmapped_only += int(bool(unmapped) and not findings)
        unmapped_heads.update(t.split("/")[0] for t in unmapped)
        counts.update(f.name for f in findings)
        seed = image_seed(options.seed, row.image_id)
        dicts = [f.to_dict() for f in findings]
        truth.append({"uid": row.uid, "image_id": row.image_id, "file_name": row.filename, "seed": seed,
                      "size": options.size, "mesh": row.mesh, "findings": dicts, "unmapped": unmapped})
        path = image_dir / row.filename
        if path.is_file() and not options.overwrite:
            report.skipped_existing += 1
            continue
        jobs.append((str(path), row.image_id, dicts, seed, options.size, options.overwrite))
    report.unmapped_by_heading = dict(unmapped_heads.most_common())
    report.finding_counts = dict(counts.most_common())
    return truth, jobs


def _run_jobs(jobs, options, report, truth, callback) -> None:
    measured: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="phantoms", unit="img", disable=not options.progress)
    if options.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(options.workers) as pool:
            results = pool.map(_render_job, jobs, chunksize=16)
            for done, res in enumerate(results, 1):
                measured[res["image_id"]] = res
                bar.update()
                if callback:
                    callback(done, len(jobs))
    else:
        for done, job in enumerate(jobs, 1):
            res = _render_job(job)
            measured[res["image_id"]] = res
            bar.update()
            if callback:
                callback(done, len(jobs))
    bar.close()
    report.written = len(measured)
    for record in truth:
        if record["image_id"] in measured:
            record["ctr"] = measured[record["image_id"]]["ctr"]


def _mapping_table(rows: pd.DataFrame, rules: list[MeshRule]) -> pd.DataFrame:
    """Per MeSH heading: how many terms were mapped or not, and to which findings."""
    stats: dict[str, dict[str, Any]] = {}
    for mesh in rows.loc[rows["projection"] == "Frontal", "mesh"]:
        if is_normal(mesh):
            continue
        for term in parse_mesh(mesh):
            entry = stats.setdefault(term.heading, {"heading": term.heading, "terms": 0, "mapped": 0, "findings": Counter()})
            entry["terms"] += 1
            rule = next((r for r in rules if r.matches(term)), None)
            if rule is not None:
                entry["mapped"] += 1
                entry["findings"][rule.finding] += 1
    frame = pd.DataFrame([{**e, "unmapped": e["terms"] - e["mapped"],
                           "findings": ";".join(f"{k}:{v}" for k, v in e["findings"].most_common())}
                          for e in stats.values()])
    return frame.sort_values("terms", ascending=False) if len(frame) else frame
