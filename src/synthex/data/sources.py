"""Read IU X-ray (Open-i) reports and projections into one table, one row per image.

Three layouts are understood:

* **Kaggle** (``indiana_reports.csv`` + ``indiana_projections.csv`` + ``images/images_normalized/``);
* **Open-i** (``ecgen-radiology/*.xml``) as a folder or as the ``NLMCXR_reports.tgz`` tarball,
  with view positions from an Open-i DICOM metadata CSV when one is given (or the bundled one);
* **bundled**: the real 3,955 Open-i reports and DICOM metadata shipped inside the
  torchxrayvision wheel, so the text pipeline runs on real reports with no download.

The table contract (:data:`COLUMNS`), one row per image of a report that has both a report and
an image listing:

==============  =====================================================================
uid             report/patient id as a string ("1" for ``CXR1``); the split unit
image_id        image id without extension ("1_IM-0001-4001")
filename        Kaggle file name ("1_IM-0001-4001.dcm.png")
projection      "Frontal", "Lateral" or "Unknown"
projection_source  "csv" (Kaggle), "dicom" (Open-i DICOM tag), "inferred" (per-study rule,
                see :func:`resolve_projections`) or "unknown"
mesh            MeSH terms joined by ";" (major then minor), e.g. "Cardiomegaly/mild;Opacity/lung"
problems        main headings joined by ";" ("normal" for normal studies)
indication      raw INDICATION text ("" when absent)
comparison      raw COMPARISON text
findings        raw FINDINGS text
impression      raw IMPRESSION text
image_path      absolute path of the image file when present on disk, else None
width, height   image size in pixels when known (DICOM metadata or file header), else NaN
==============  =====================================================================
"""
from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from synthex.errors import DataSourceError
from synthex.paths import BUNDLED_DICOM_METADATA, BUNDLED_REPORTS, bundled_file

log = logging.getLogger(__name__)

COLUMNS = [
    "uid", "image_id", "filename", "projection", "mesh", "problems", "indication",
    "comparison", "findings", "impression", "image_path", "width", "height", "projection_source",
]
TEXT_FIELDS = ("indication", "comparison", "findings", "impression")
KAGGLE_REPORTS = "indiana_reports.csv"
KAGGLE_PROJECTIONS = "indiana_projections.csv"
KAGGLE_IMAGE_DIR = Path("images") / "images_normalized"
KAGGLE_REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
KAGGLE_PROJECTION_COLUMNS = ["uid", "filename", "projection"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
REJECT_COLUMNS = ["uid", "image_id", "filename", "origin", "reason"]
REPORT_FIELDS = ("mesh", "problems", *TEXT_FIELDS)

_VIEW_POSITIONS = {
    "PA": "Frontal", "AP": "Frontal",
    "LL": "Lateral", "RL": "Lateral", "LATERAL": "Lateral", "LARGE LATERAL": "Lateral",
}
_ORIENTATIONS = {"['L', 'F']": "Frontal", "['R', 'F']": "Frontal", "['A', 'F']": "Lateral", "['P', 'F']": "Lateral"}


@dataclass
class SourceTables:
    """What a source yields before joining: reports (one row per uid) and projections."""

    layout: str
    reports: pd.DataFrame
    projections: pd.DataFrame
    image_dir: Path | None
    notes: list[str] = field(default_factory=list)
    #: where reports and projections were read from (named in duplicate messages)
    origins: dict[str, str] = field(default_factory=dict)
    #: rows left out because the source contradicts itself: uid, image_id, filename, origin, reason
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS))
    #: counts of identical rows merged and conflicting uids/images left out
    duplicates: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- detection
def detect_layout(source: str | Path) -> str:
    """Return "bundled", "kaggle", "openi-dir" or "openi-tar" for a ``--source`` value."""
    if str(source) == "bundled":
        return "bundled"
    path = Path(source)
    if not path.exists():
        raise DataSourceError(
            f"--source {source}: no such file or folder. Give a Kaggle IU X-ray folder "
            f"(with {KAGGLE_REPORTS}), an Open-i folder/tarball (ecgen-radiology/*.xml) or 'bundled'."
        )
    if path.is_file() and path.name.endswith((".tgz", ".tar.gz", ".tar")):
        return "openi-tar"
    if path.is_dir():
        if (path / KAGGLE_REPORTS).is_file() or (path / KAGGLE_PROJECTIONS).is_file():
            return "kaggle"
        if (path / "ecgen-radiology").is_dir() or any(path.glob("*.xml")):
            return "openi-dir"
    raise DataSourceError(
        f"--source {source}: not a known IU X-ray layout. Expected {KAGGLE_REPORTS} and "
        f"{KAGGLE_PROJECTIONS} (Kaggle), an ecgen-radiology/ folder of XML reports or its .tgz "
        "(Open-i), or 'bundled'."
    )


# --------------------------------------------------------------------------- Kaggle
def _read_csv_checked(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataSourceError(f"{path} is missing; the Kaggle IU X-ray layout needs it.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataSourceError(f"{path} is not a readable CSV ({err}); re-download it.") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataSourceError(
            f"{path} lacks column(s) {', '.join(missing)}; expected columns: {', '.join(required)}."
        )
    return frame


def read_kaggle(root: Path) -> SourceTables:
    """Read the Kaggle layout (two CSVs and an optional image folder)."""
    reports = _read_csv_checked(root / KAGGLE_REPORTS, KAGGLE_REPORT_COLUMNS)
    projections = _read_csv_checked(root / KAGGLE_PROJECTIONS, KAGGLE_PROJECTION_COLUMNS)
    reports = reports.rename(columns={"MeSH": "mesh", "Problems": "problems"})
    reports = reports[["uid", "mesh", "problems", *TEXT_FIELDS]].copy()
    projections = projections[KAGGLE_PROJECTION_COLUMNS].copy()
    projections["image_id"] = projections["filename"].map(_strip_image_suffix)
    projections["projection_source"] = "csv"
    image_dir = root / KAGGLE_IMAGE_DIR
    notes = [] if image_dir.is_dir() else [f"no image folder at {image_dir}: text-only run"]
    origins = {"reports": str(root / KAGGLE_REPORTS), "projections": str(root / KAGGLE_PROJECTIONS)}
    return SourceTables("kaggle", reports, projections, image_dir if image_dir.is_dir() else None, notes,
                        origins=origins)


def _strip_image_suffix(name: str) -> str:
    for suffix in (".dcm.png", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- Open-i XML
def parse_openi_xml(data: bytes | str, origin: str = "<xml>") -> tuple[dict, list[str]]:
    """Parse one Open-i report; return (report row, list of parentImage ids)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise DataSourceError(f"{origin}: malformed report XML ({err}).") from err
    uid_node = root.find("uId")
    if uid_node is None or not uid_node.get("id", "").startswith("CXR"):
        raise DataSourceError(f"{origin}: no <uId id='CXR...'> element; is this an Open-i report?")
    texts = {t.get("Label", "").lower(): (t.text or "").strip() for t in root.iter("AbstractText")}
    mesh = [n.text.strip() for tag in ("major", "minor") for n in root.iter(tag) if n.text and n.text.strip()]
    headings: list[str] = []
    for term in mesh:
        head = term.split("/")[0].strip()
        if head not in headings:
            headings.append(head)
    row = {
        "uid": uid_node.get("id")[3:],
        "mesh": ";".join(mesh),
        "problems": ";".join(headings),
        **{f: texts.get(f, "") for f in TEXT_FIELDS},
    }
    images = [p.get("id", "") for p in root.iter("parentImage") if p.get("id")]
    return row, images


def _openi_records(source: Path, layout: str) -> list[tuple[dict, list[str]]]:
    records = []
    if layout == "openi-tar":
        try:
            with tarfile.open(source) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xml"):
                        data = tar.extractfile(member).read()
                        records.append(parse_openi_xml(data, f"{source}:{member.name}"))
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataSourceError(f"{source}: unreadable tarball ({err}); re-download it.") from err
    else:
        folder = source / "ecgen-radiology" if (source / "ecgen-radiology").is_dir() else source
        for xml_path in sorted(folder.glob("*.xml")):
            records.append(parse_openi_xml(xml_path.read_bytes(), str(xml_path)))
    if not records:
        raise DataSourceError(f"{source}: no Open-i XML reports found.")
    return records


def _openi_image_name(parent_id: str) -> str:
    """Open-i parentImage id "CXR1_1_IM-0001-3001" -> Kaggle image id "1_IM-0001-3001"."""
    return parent_id[3:] if parent_id.startswith("CXR") else parent_id


def read_dicom_views(path: Path) -> pd.DataFrame:
    """View position per image from an Open-i DICOM metadata CSV: image_id, projection, width, height."""
    wanted = ["imageid", "View Position", "Patient Orientation", "Rows", "Columns"]
    try:
        meta = pd.read_csv(path, usecols=lambda c: c in wanted, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataSourceError(f"{path}: unreadable DICOM metadata CSV ({err}).") from err
    if "imageid" not in meta.columns:
        raise DataSourceError(f"{path} lacks the 'imageid' column of the Open-i DICOM metadata.")
    view = meta.get("View Position", pd.Series(index=meta.index, dtype=object)).map(_VIEW_POSITIONS)
    orient = meta.get("Patient Orientation", pd.Series(index=meta.index, dtype=object)).map(_ORIENTATIONS)
    return pd.DataFrame({
        # DICOM ids drop the study-repeat part of the report ids ("CXR1_IM-0001-3001").
        "dicom_id": meta["imageid"].astype(str).str[3:],
        "projection": view.fillna(orient).fillna("Unknown"),
        "width": pd.to_numeric(meta.get("Columns"), errors="coerce"),
        "height": pd.to_numeric(meta.get("Rows"), errors="coerce"),
    })


def read_openi(source: Path, layout: str, dicom_metadata: Path | None) -> SourceTables:
    """Read Open-i XML reports and join view positions from DICOM metadata when available."""
    records = _openi_records(source, layout)
    reports = pd.DataFrame([r for r, _ in records])
    rows = [(r["uid"], _openi_image_name(pid)) for r, ids in records for pid in ids]
    projections = pd.DataFrame(rows, columns=["uid", "image_id"])
    # Kaggle and DICOM ids drop the repeat part of Open-i ids ("CXR1_1_IM-0001-3001" -> "1_IM-0001-3001").
    projections["image_id"] = projections["image_id"].str.replace(r"^(\d+)_\d+_", r"\1_", regex=True)
    projections["filename"] = projections["image_id"] + ".dcm.png"
    notes = []
    if dicom_metadata is not None:
        views = read_dicom_views(dicom_metadata)
        views = views.rename(columns={"dicom_id": "image_id"}).drop_duplicates("image_id")
        projections = projections.merge(views, on="image_id", how="left")
        projections["projection"] = projections["projection"].fillna("Unknown")
        projections = resolve_projections(projections)
        notes.append(
            f"view positions from DICOM metadata {dicom_metadata.name}; "
            f"{int((projections['projection_source'] == 'inferred').sum())} inferred per study"
        )
    else:
        projections["projection"] = "Unknown"
        notes.append("no DICOM metadata: every projection is Unknown")
    origins = {"reports": f"{source} (Open-i reports)", "projections": f"{source} (Open-i parentImage lists)"}
    return SourceTables(layout, reports, projections, None, notes, origins=origins)


def resolve_projections(projections: pd.DataFrame) -> pd.DataFrame:
    """Repair Open-i DICOM view tags per study (they are missing for ~2,600 images and
    contradictory in ~1,200 two-image studies where both images say PA).

    Rules, in order: a DICOM "Lateral" stays lateral; a study with exactly one DICOM-frontal image
    keeps it as its frontal and its other untagged images become lateral; a study of at most two
    images with no or two frontal tags takes its lowest-numbered image as frontal and the other
    as lateral (the IU X-ray acquisition order: on studies with one PA and one lateral tag, the
    PA comes first in 691 of 768, 90%). Larger ambiguous studies keep their tags. The column
    ``projection_source`` says which rows were inferred.
    """
    out = projections.sort_values(["uid", "image_id"], kind="stable").reset_index(drop=True)
    out["projection_source"] = np.where(out["projection"] == "Unknown", "unknown", "dicom")
    by_uid = out.groupby("uid", sort=False)
    is_frontal = out["projection"] == "Frontal"
    is_candidate = out["projection"] != "Lateral"
    n_frontal = is_frontal.groupby(out["uid"]).transform("sum")
    n_images = by_uid["image_id"].transform("size")
    first_candidate = is_candidate & (is_candidate.astype(int).groupby(out["uid"]).cumsum() == 1)
    one_frontal = n_frontal == 1
    small_ambiguous = (n_frontal != 1) & (n_images <= 2)
    chosen = (one_frontal & is_frontal) | (small_ambiguous & first_candidate)
    decided = is_candidate & (one_frontal | small_ambiguous)
    new = np.where(chosen, "Frontal", "Lateral")
    changed = decided & (out["projection"] != new)
    out.loc[changed, "projection"] = new[changed.to_numpy()]
    out.loc[changed, "projection_source"] = "inferred"
    return out


# --------------------------------------------------------------------------- one table
def load_tables(
    source: str | Path, *, images: str | Path | None = None, dicom_metadata: str | Path | None = None
) -> SourceTables:
    """Read a source (path or "bundled") into report and projection tables."""
    layout = detect_layout(source)
    if layout == "kaggle":
        tables = read_kaggle(Path(source))
    elif layout == "bundled":
        tables = read_openi(bundled_file(BUNDLED_REPORTS), "openi-tar", bundled_file(BUNDLED_DICOM_METADATA))
        tables.layout = "bundled"
    else:
        meta = Path(dicom_metadata) if dicom_metadata else _default_dicom_metadata()
        tables = read_openi(Path(source), layout, meta)
    if images is not None:
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise DataSourceError(f"--images {images}: no such folder.")
        tables.image_dir = image_dir
    for column in ("uid", "mesh", "problems", *TEXT_FIELDS):
        tables.reports[column] = tables.reports[column].fillna("").astype(str)
    tables.reports["uid"] = tables.reports["uid"].str.strip()
    tables.projections["uid"] = tables.projections["uid"].astype(str).str.strip()
    return resolve_duplicates(tables)


def _normalised(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns with white space collapsed (so that only real differences count)."""
    return frame[columns].astype(str).apply(lambda col: col.str.split().str.join(" "))


def _describe_values(rows: pd.DataFrame, columns: list[str]) -> str:
    differing = [c for c in columns if rows[c].nunique() > 1]
    return ", ".join(f"{c}: " + " / ".join(repr(v[:40]) for v in rows[c].unique()) for c in differing)


def resolve_duplicates(tables: SourceTables) -> SourceTables:
    """Merge identical duplicate rows and leave out contradicting ones, saying so.

    * a report (or projection) row repeated identically is kept once and counted;
    * a uid listed several times with DIFFERENT reports is left out with all its images: which
      report belongs to the images cannot be known; each image is listed in ``tables.rejected``
      with the reason "uid U listed N times with different reports ...";
    * an image listed several times with a different uid or projection is left out likewise.

    Without this, a repeated uid or image row doubles the patient's images in the join, and the
    "several frontal images" rule silently removes the patient.
    """
    origin_r = tables.origins.get("reports", "the reports")
    origin_p = tables.origins.get("projections", "the projections")
    reports, projections = tables.reports, tables.projections
    rejected: list[dict] = []
    counts = {"identical_report_rows": 0, "identical_projection_rows": 0,
              "conflicting_report_uids": 0, "conflicting_projection_images": 0}

    report_cols = ["uid", *[c for c in REPORT_FIELDS if c in reports.columns]]
    listed = reports["uid"].value_counts()
    keep = ~_normalised(reports, report_cols).duplicated()
    counts["identical_report_rows"] = int((~keep).sum())
    reports = reports[keep]
    repeated = reports["uid"].value_counts()
    bad_uids = set(repeated.index[repeated > 1])
    if bad_uids:
        counts["conflicting_report_uids"] = len(bad_uids)
        for uid in sorted(bad_uids, key=_uid_order):
            reason = (f"uid {uid} listed {int(listed[uid])} times in {origin_r} with different reports "
                      f"({_describe_values(reports[reports['uid'] == uid], report_cols[1:])}); "
                      "keep one row per uid in the source")
            images = projections[projections["uid"] == uid]
            if images.empty:
                rejected.append({"uid": uid, "image_id": "", "filename": "", "origin": origin_r, "reason": reason})
            for row in images.itertuples(index=False):
                rejected.append({"uid": uid, "image_id": row.image_id, "filename": getattr(row, "filename", ""),
                                 "origin": origin_r, "reason": reason})
        reports = reports[~reports["uid"].isin(bad_uids)]
        projections = projections[~projections["uid"].isin(bad_uids)]

    proj_cols = [c for c in projections.columns if c not in ("width", "height")]
    image_listed = projections["image_id"].value_counts()
    keep = ~_normalised(projections, proj_cols).duplicated()
    counts["identical_projection_rows"] = int((~keep).sum())
    projections = projections[keep]
    repeated = projections["image_id"].value_counts()
    bad_images = set(repeated.index[repeated > 1])
    if bad_images:
        counts["conflicting_projection_images"] = len(bad_images)
        for image_id in sorted(bad_images):
            rows = projections[projections["image_id"] == image_id]
            reason = (f"image {image_id} listed {int(image_listed[image_id])} times in {origin_p} with different "
                      f"rows ({_describe_values(rows, [c for c in proj_cols if c != 'image_id'])}); "
                      "keep one row per image in the source")
            for row in rows.itertuples(index=False):
                rejected.append({"uid": row.uid, "image_id": image_id, "filename": getattr(row, "filename", ""),
                                 "origin": origin_p, "reason": reason})
        projections = projections[~projections["image_id"].isin(bad_images)]

    tables.reports = reports.reset_index(drop=True)
    tables.projections = projections.reset_index(drop=True)
    tables.rejected = pd.DataFrame(rejected, columns=REJECT_COLUMNS)
    tables.duplicates = counts
    if counts["identical_report_rows"] or counts["identical_projection_rows"]:
        tables.notes.append(
            f"duplicates merged: {counts['identical_report_rows']} identical report row(s) in {origin_r}, "
            f"{counts['identical_projection_rows']} identical projection row(s) in {origin_p}")
    if bad_uids or bad_images:
        tables.notes.append(
            f"left out (listed in rejects.csv): {len(bad_uids)} uid(s) listed several times with different "
            f"reports, {len(bad_images)} image(s) listed several times with different rows "
            f"({len(rejected)} row(s))")
    if counts["identical_report_rows"] or counts["identical_projection_rows"] or rejected:
        log.warning("%s", "; ".join(tables.notes[-2:]))
    return tables


def _uid_order(uid: str) -> tuple[float, str]:
    try:
        return float(uid), uid
    except ValueError:
        return float("inf"), uid


def _default_dicom_metadata() -> Path | None:
    try:
        return bundled_file(BUNDLED_DICOM_METADATA)
    except DataSourceError:
        return None


def index_images(image_dir: Path | None) -> dict[str, Path]:
    """Map image id (file name without image suffixes) -> path, for every image in a folder."""
    if image_dir is None:
        return {}
    found = {}
    for path in image_dir.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            key = _strip_image_suffix(path.name)
            found[key[3:] if re.match(r"CXR\d", key) else key] = path
    return found


def _fill_sizes_from_headers(frame: pd.DataFrame) -> None:
    """Read width/height from image headers (cheap: no pixel decoding) where unknown.

    An unreadable header (not an image, empty, truncated, a decompression bomb) leaves the size
    unknown; it never stops the read: the image export rejects that file with its reason.
    """
    from synthex.data.images import read_image_size

    todo = frame.index[frame["image_path"].notna() & frame["width"].isna()]
    for idx in todo:
        size = read_image_size(frame.at[idx, "image_path"])
        if size is not None:
            frame.at[idx, "width"], frame.at[idx, "height"] = size


def join_tables(tables: SourceTables, image_index: dict[str, Path] | None = None) -> pd.DataFrame:
    """Join reports and projections (common uids) into the one-row-per-image table."""
    index = index_images(tables.image_dir) if image_index is None else image_index
    frame = tables.projections.merge(tables.reports, on="uid", how="inner")
    frame["image_path"] = [str(index[i]) if i in index else None for i in frame["image_id"]]
    for column in ("width", "height"):
        if column not in frame.columns:
            frame[column] = np.nan
    _fill_sizes_from_headers(frame)
    frame = frame[COLUMNS].reset_index(drop=True)
    frame["_order"] = pd.to_numeric(frame["uid"], errors="coerce")
    return frame.sort_values(["_order", "uid", "image_id"], kind="stable").drop(columns="_order").reset_index(drop=True)


def load_source(
    source: str | Path, *, images: str | Path | None = None, dicom_metadata: str | Path | None = None
) -> pd.DataFrame:
    """Read any supported source into the documented one-row-per-image table (:data:`COLUMNS`)."""
    return join_tables(load_tables(source, images=images, dicom_metadata=dicom_metadata))
