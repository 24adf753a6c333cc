"""A search index over a folder of chest X-rays: ``synthex search index DIR --out INDEX``.

What a folder may be (detected in this order):

- an imagefolder: ``metadata.csv`` (or ``metadata.jsonl``) with ``file_name``; the report is
  the first of the columns ``text, report, prompt, caption`` that exists; labels come from a
  ``findings`` JSON column or a ``mesh`` column (``synthex data prepare``, ``synthex phantom
  caption-set`` and ``synthex synthesize`` write such folders);
- a phantom or Kaggle IU X-ray set: ``indiana_reports.csv`` + ``indiana_projections.csv`` (the
  report is FINDINGS + IMPRESSION, labels from MeSH);
- any other folder: every image under it (hidden folders skipped); a PNG's AUTOMATIC1111
  ``parameters`` prompt, when it has one, is its report.

Every image is embedded once by the dual encoder (center square crop, grayscale) and every
report once by its text tower. A second run embeds only new files and files whose content
changed (size and mtime first, then SHA-1), re-embeds a report whose text changed, and drops
files that are gone; the counts say which. Unreadable images and listed-but-missing files are
counted and listed (``index.json`` under ``rejects``), never silently skipped.

Index folder (the tool's own files; a folder holding anything else is refused)::

    index.json                         format, generation, model id, source, counts, rejects
    items-<gen>.jsonl                  one item per line: key, size, mtime_ns, sha1, report, labels
    vectors-<gen>.safetensors          image (N, D), text (N, D), has_text (N,) float32
    pending/chunk-*.{safetensors,jsonl}  embeddings of an interrupted build (reused on resume)

A new generation is written beside the old one and ``index.json`` is switched to it last, so an
interrupted update leaves the previous index usable and the next run picks up the pending chunks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthex.errors import DataSourceError, OutsidePathError, OutputExistsError, SynthexError
from synthex.io import atomic_write
from synthex.paths import member_path

logger = logging.getLogger(__name__)

FORMAT = 1
INDEX_FILE = "index.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
REPORT_COLUMNS = ("text", "report", "prompt", "caption")
CHUNK = 1024


@dataclass
class Item:
    """One image of the source folder."""

    key: str  # path relative to the source folder, POSIX style
    report: str = ""
    labels: str = ""  # label keys joined by ";" (see synthex.search.labels), "" when unknown


@dataclass
class IndexReport:
    """What one ``build_index`` call did."""

    index_dir: Path
    layout: str
    n_items: int = 0
    n_new: int = 0
    n_changed: int = 0
    n_reused: int = 0
    n_removed: int = 0
    n_reports: int = 0
    n_text_embedded: int = 0
    rejects: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# 1. What is in a folder
# --------------------------------------------------------------------------------------------
def _labels_text(keys) -> str:
    from synthex.search.labels import specific_keys

    return ";".join(sorted(specific_keys(keys))) if keys else ""


def _imagefolder_items(root: Path, meta: Path) -> tuple[list[Item], list[dict[str, str]]]:
    import pandas as pd

    from synthex.phantom.dataset import load_mesh_rules
    from synthex.search.train import _row_keys

    try:
        table = (pd.read_json(meta, lines=True, dtype=False) if meta.suffix == ".jsonl"
                 else pd.read_csv(meta, dtype=str, keep_default_na=False))
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataSourceError(f"{meta} cannot be read ({exc}); fix the file or index the folder without it") from exc
    if "file_name" not in table.columns:
        raise DataSourceError(f"{meta} has no 'file_name' column (it has {list(table.columns)[:12]}); "
                              "name the image path column file_name")
    report_col = next((c for c in REPORT_COLUMNS if c in table.columns), None)
    rules = load_mesh_rules()
    items, rejects, seen = [], [], set()
    for row in table.fillna("").astype(str).to_dict("records"):
        try:
            path = member_path(root, row["file_name"])  # lexical check: symlinked image folders are fine
        except OutsidePathError as exc:
            rejects.append({"file": row["file_name"], "reason": f"path points outside the folder ({exc.reason})"})
            continue
        key = path.relative_to(root).as_posix()
        if key in seen:
            rejects.append({"file": key, "reason": f"listed twice in {meta.name}"})
            continue
        seen.add(key)
        if not path.is_file():
            rejects.append({"file": key, "reason": f"listed in {meta.name} but missing"})
            continue
        try:
            keys = _row_keys(row, rules)
        except (SynthexError, ValueError) as exc:
            rejects.append({"file": key, "reason": f"unreadable findings/mesh value ({exc})"})
            keys = None
        items.append(Item(key, row.get(report_col, "") if report_col else "", _labels_text(keys)))
    return items, rejects


def _iu_items(root: Path) -> tuple[list[Item], list[dict[str, str]]]:
    import pandas as pd

    from synthex.phantom.dataset import load_mesh_rules, mesh_to_findings
    from synthex.search.labels import label_keys

    reports = pd.read_csv(root / "indiana_reports.csv", dtype=str, keep_default_na=False)
    projections = pd.read_csv(root / "indiana_projections.csv", dtype=str, keep_default_na=False)
    by_uid = {r["uid"]: r for r in reports.to_dict("records")}
    dirs = [d for d in (root / "images" / "images_normalized", root / "images", root) if d.is_dir()]
    rules, items, rejects = load_mesh_rules(), [], []
    for row in projections.to_dict("records"):
        path = next((d / row["filename"] for d in dirs if (d / row["filename"]).is_file()), None)
        if path is None:
            rejects.append({"file": row["filename"], "reason": "listed in indiana_projections.csv but missing"})
            continue
        rep = by_uid.get(row["uid"], {})
        text = " ".join(t for t in (rep.get("findings", ""), rep.get("impression", "")) if t.strip())
        keys = label_keys([f.resolved() for f in mesh_to_findings(rep.get("MeSH", ""), rules)[0]]) if rep else None
        items.append(Item(path.relative_to(root).as_posix(), text, _labels_text(keys)))
    return items, rejects


def _plain_items(root: Path) -> tuple[list[Item], list[dict[str, str]]]:
    from synthex.generate.infotext import parse_infotext, read_png_text

    items = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        report = ""
        if path.suffix.lower() == ".png":
            try:
                text = read_png_text(path).get("parameters", "")
                report = parse_infotext(text).prompt if text else ""
            except (SynthexError, OSError, ValueError):
                report = ""
        items.append(Item(rel.as_posix(), report))
    return items, []


def discover(root: str | Path) -> tuple[str, list[Item], list[dict[str, str]]]:
    """(layout, items, rejects) of a folder; see the module docstring for the layouts."""
    root = Path(root)
    if not root.is_dir():
        raise DataSourceError(f"{root} is not a folder; give the folder of images to index")
    for name in ("metadata.csv", "metadata.jsonl"):
        if (root / name).is_file():
            return ("imagefolder", *_imagefolder_items(root, root / name))
    if (root / "indiana_reports.csv").is_file() and (root / "indiana_projections.csv").is_file():
        return ("iu", *_iu_items(root))
    return ("plain", *_plain_items(root))


# --------------------------------------------------------------------------------------------
# 2. Reading one image
# --------------------------------------------------------------------------------------------
def read_image(path: Path, size: int) -> np.ndarray:
    """A file -> (size, size) uint8 grayscale (short side resized, centre crop); raises
    :class:`~synthex.errors.ImageReadError` for an unreadable file."""
    from synthex.errors import ImageReadError
    from synthex.io import open_image
    from synthex.train.data import prepare_image

    with open_image(path) as img:
        try:
            return prepare_image(img, size)
        except (OSError, ValueError) as exc:
            raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# 3. The index on disk
# --------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write(path, lambda fh: fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()))


def _write_vectors(path: Path, image: np.ndarray, text: np.ndarray, has_text: np.ndarray) -> None:
    from safetensors.numpy import save

    data = save({"image": np.ascontiguousarray(image, np.float32), "text": np.ascontiguousarray(text, np.float32),
                 "has_text": np.ascontiguousarray(has_text, np.float32)})
    atomic_write(path, lambda fh: fh.write(data))


def _read_vectors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _own_file(name: str) -> bool:
    return (name in (INDEX_FILE, "pending") or name.startswith((".", "items-", "vectors-"))
            or name in ("rejects.csv",))


def _check_index_dir(out: Path) -> dict[str, Any] | None:
    """The saved index.json of ``out``, None for a new index; refuses a foreign folder."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    meta = out / INDEX_FILE
    if not meta.is_file():
        foreign = [p.name for p in out.iterdir() if not _own_file(p.name)]
        if foreign:
            raise OutputExistsError(f"{out} is not empty and is not a search index (it holds {foreign[:3]}); "
                                    "choose an empty or new --out folder")
        return None
    saved = json.loads(meta.read_text(encoding="utf-8"))
    if saved.get("format") != FORMAT:
        raise SynthexError(f"{out} is a search index of format {saved.get('format')}, this version reads {FORMAT}; "
                           "rebuild it with --rebuild")
    return saved


@dataclass
class _Old:
    by_key: dict[str, int]
    rows: list[dict[str, Any]]
    vectors: dict[str, np.ndarray]


def _load_old(out: Path, saved: dict[str, Any] | None) -> _Old:
    if not saved:
        return _Old({}, [], {})
    gen = saved["generation"]
    rows = _read_jsonl(out / f"items-{gen}.jsonl")
    vectors = _read_vectors(out / f"vectors-{gen}.safetensors")
    return _Old({r["key"]: i for i, r in enumerate(rows)}, rows, vectors)


def _load_pending(folder: Path, model_id: str) -> dict[tuple[str, str], tuple[np.ndarray, dict]]:
    """(key, sha1) -> (image vector, row) from the complete chunks of an interrupted build."""
    found: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}
    for vec_path in sorted(folder.glob("chunk-*.safetensors")) if folder.is_dir() else []:
        rows_path = vec_path.with_suffix(".jsonl")
        if not rows_path.is_file():
            continue
        rows = _read_jsonl(rows_path)
        image = _read_vectors(vec_path)["image"]
        if len(rows) != len(image) or any(r.get("model_id") != model_id for r in rows):
            continue
        for row, vec in zip(rows, image):
            found[(row["key"], row["sha1"])] = (vec, row)
    return found


@dataclass
class _Plan:
    rows: list[dict[str, Any]]  # one per current item, in discovery order
    image: np.ndarray  # (N, D), filled where known
    known: np.ndarray  # (N,) bool: image vector known
    text_known: np.ndarray  # (N,) bool: report vector known and the report is unchanged
    text: np.ndarray
    counts: dict[str, int]
    rejects: list[dict[str, str]]


def _plan(root: Path, items: list[Item], old: _Old, pending: dict, dim: int) -> _Plan:
    n = len(items)
    plan = _Plan([], np.zeros((n, dim), np.float32), np.zeros(n, bool), np.zeros(n, bool),
                 np.zeros((n, dim), np.float32), {"new": 0, "changed": 0, "reused": 0}, [])
    for i, item in enumerate(items):
        path = root / item.key
        st = path.stat()
        row = {"key": item.key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "report": item.report,
               "labels": item.labels}
        j = old.by_key.get(item.key)
        prev = old.rows[j] if j is not None else None
        if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
            row["sha1"] = prev["sha1"]
        else:
            row["sha1"] = file_sha1(path)
        if prev and prev["sha1"] == row["sha1"]:
            plan.image[i], plan.known[i] = old.vectors["image"][j], True
            plan.counts["reused"] += 1
            if prev.get("report", "") == item.report:
                plan.text[i], plan.text_known[i] = old.vectors["text"][j], True
        else:
            plan.counts["changed" if prev else "new"] += 1
            hit = pending.get((item.key, row["sha1"]))
            if hit is not None:
                plan.image[i], plan.known[i] = hit[0], True
        plan.rows.append(row)
    return plan


def _embed_missing(root: Path, plan: _Plan, model, pending_dir: Path, progress: bool,
                   callback: Callable[[int, int], None] | None) -> None:
    """Embed the images whose vectors are unknown, CHUNK at a time, each chunk saved to pending/."""
    from tqdm.auto import tqdm

    from synthex.errors import ImageReadError

    todo = [i for i in range(len(plan.rows)) if not plan.known[i]]
    if not todo:
        return
    pending_dir.mkdir(parents=True, exist_ok=True)
    start = len(list(pending_dir.glob("chunk-*.safetensors")))
    bar = tqdm(total=len(todo), desc="embedding images", unit="img", disable=not progress)
    done = 0
    for c, first in enumerate(range(0, len(todo), CHUNK)):
        chunk, arrays, ok = todo[first:first + CHUNK], [], []
        for i in chunk:
            try:
                arrays.append(read_image(root / plan.rows[i]["key"], model.config.image_size))
                ok.append(i)
            except ImageReadError as exc:
                plan.rejects.append({"file": plan.rows[i]["key"], "reason": f"unreadable image ({exc.reason})"})
        if ok:
            vectors = model.embed_images(np.stack(arrays))
            plan.image[ok], plan.known[ok] = vectors, True
            name = pending_dir / f"chunk-{start + c:05d}"
            _write_vectors(name.with_suffix(".safetensors"), vectors, np.zeros((0, vectors.shape[1])), np.zeros(0))
            _write_jsonl(name.with_suffix(".jsonl"), [{**plan.rows[i], "model_id": model.model_id} for i in ok])
        done += len(chunk)
        bar.update(len(chunk))
        if callback:
            callback(done, len(todo))
    bar.close()


def _embed_reports(plan: _Plan, model) -> int:
    todo = [i for i, r in enumerate(plan.rows) if plan.known[i] and not plan.text_known[i] and r["report"].strip()]
    for first in range(0, len(todo), 512):
        part = todo[first:first + 512]
        plan.text[part] = model.embed_texts([plan.rows[i]["report"] for i in part])
    return len(todo)


def _model_dir(model) -> str | None:
    """The model folder to record (None = the shipped model, found again wherever it is installed)."""
    from synthex.search.model import DEFAULT_SEARCH_DIR

    if model.folder is None or Path(model.folder).resolve() == DEFAULT_SEARCH_DIR.resolve():
        return None
    return str(Path(model.folder).resolve())


def build_index(source: str | Path, out: str | Path, model=None, *, rebuild: bool = False, progress: bool = True,
                callback: Callable[[int, int], None] | None = None) -> IndexReport:
    """Create or update the index of ``source`` in ``out`` (see the module docstring)."""
    from synthex.search.model import load_search_model

    t0 = time.perf_counter()
    source, out = Path(source).resolve(), Path(out)
    model = model or load_search_model()
    layout, items, rejects = discover(source)
    saved = _check_index_dir(out)
    if saved and saved.get("model_id") != model.model_id and not rebuild:
        raise SynthexError(f"{out} was built with search model {saved.get('model_id')} ({saved.get('model_dir')}), "
                           f"not {model.model_id}; pass --rebuild to re-embed everything with this model, or use "
                           "--model to pick the index's model")
    if saved and Path(saved.get("source", "")) != source and not rebuild:
        raise SynthexError(f"{out} indexes {saved.get('source')}, not {source}; choose another --out "
                           "(one index per folder) or pass --rebuild")
    old = _Old({}, [], {}) if rebuild else _load_old(out, saved)
    out.mkdir(parents=True, exist_ok=True)
    pending_dir = out / "pending"
    plan = _plan(source, items, old, _load_pending(pending_dir, model.model_id), model.config.embed_dim)
    plan.rejects[:0] = rejects
    _embed_missing(source, plan, model, pending_dir, progress, callback)
    n_text = _embed_reports(plan, model)
    keep = np.flatnonzero(plan.known)
    rows = [plan.rows[i] for i in keep]
    has_text = np.array([bool(r["report"].strip()) for r in rows], np.float32)
    unchanged = bool(saved) and not rebuild and n_text == 0 and rows == old.rows
    gen = int(saved["generation"]) + (0 if unchanged else 1) if saved else 1
    if not unchanged:  # nothing new, changed or removed: the current generation stays as it is
        _write_vectors(out / f"vectors-{gen}.safetensors", plan.image[keep], plan.text[keep], has_text)
        _write_jsonl(out / f"items-{gen}.jsonl", rows)
    report = IndexReport(out, layout, len(rows), plan.counts["new"], plan.counts["changed"], plan.counts["reused"],
                         len(set(old.by_key) - {r["key"] for r in plan.rows}), int(has_text.sum()), n_text,
                         plan.rejects)
    report.seconds = time.perf_counter() - t0
    meta = {"format": FORMAT, "generation": gen, "model_id": model.model_id,
            "model_dir": _model_dir(model), "dim": model.config.embed_dim,
            "image_size": model.config.image_size, "source": str(source), "layout": layout,
            "n_items": len(rows), "n_reports": report.n_reports, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "last_build": {k: getattr(report, k) for k in ("n_new", "n_changed", "n_reused", "n_removed",
                                                           "n_text_embedded")} | {"seconds": round(report.seconds, 2)},
            "rejects": plan.rejects}
    atomic_write(out / INDEX_FILE, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    for stale in list(out.glob("items-*.jsonl")) + list(out.glob("vectors-*.safetensors")):
        if stale.name not in (f"items-{gen}.jsonl", f"vectors-{gen}.safetensors"):
            stale.unlink()
    shutil.rmtree(pending_dir, ignore_errors=True)
    if plan.rejects:
        logger.warning("%d file(s) of %s not indexed (listed in %s under 'rejects'), first: %s",
                       len(plan.rejects), source, out / INDEX_FILE, plan.rejects[0])
    return report


# --------------------------------------------------------------------------------------------
# 4. A loaded index and exact (or faiss) nearest-neighbour search
# --------------------------------------------------------------------------------------------
BACKENDS = ("exact", "faiss")


class SearchIndex:
    """An index folder in memory: ``items`` (dicts), ``image`` / ``text`` vectors (N, D)."""

    def __init__(self, folder: str | Path, backend: str = "exact"):
        folder = Path(folder)
        meta_path = folder / INDEX_FILE
        if not meta_path.is_file():
            raise SynthexError(f"{folder} is not a search index (no {INDEX_FILE}); make one with "
                               "'synthex search index DIR --out INDEX'")
        if backend not in BACKENDS:
            raise SynthexError(f"unknown search backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.folder, self.backend = folder, backend
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        gen = self.meta["generation"]
        self.items = _read_jsonl(folder / f"items-{gen}.jsonl")
        vectors = _read_vectors(folder / f"vectors-{gen}.safetensors")
        self.image, self.text = vectors["image"], vectors["text"]
        self.has_text = vectors["has_text"].astype(bool)
        self.source = Path(self.meta["source"])
        self._faiss: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    def path(self, i: int) -> Path:
        return self.source / self.items[i]["key"]

    def _matrix(self, target: str) -> np.ndarray:
        if target not in ("image", "text"):
            raise SynthexError(f"search target must be 'image' or 'text', got {target!r}")
        return self.image if target == "image" else self.text

    def top_k(self, queries: np.ndarray, k: int, target: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k'), best first; ``target="text"`` ranks items by their reports
        (items without a report never appear)."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        matrix = self._matrix(target)
        valid = self.has_text if target == "text" else None
        n = int(valid.sum()) if valid is not None else len(matrix)
        k = max(0, min(int(k), n))
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.backend == "faiss":
            return self._faiss_top_k(q, k, target)
        scores = q @ matrix.T
        if valid is not None:
            scores[:, ~valid] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(1)[:, ::-1]
        rows = np.take_along_axis(part, order, 1)
        return np.take_along_axis(scores, rows, 1), rows

    def _faiss_top_k(self, q: np.ndarray, k: int, target: str):
        try:
            import faiss
        except ImportError as exc:
            raise SynthexError("the faiss backend needs faiss: pip install faiss-cpu (or use --backend exact)") from exc
        if target not in self._faiss:
            matrix = self._matrix(target)
            rows = np.flatnonzero(self.has_text) if target == "text" else np.arange(len(matrix))
            index = faiss.IndexFlatIP(matrix.shape[1])
            index.add(np.ascontiguousarray(matrix[rows]))
            self._faiss[target] = (index, rows)
        index, rows = self._faiss[target]
        scores, found = index.search(np.ascontiguousarray(q), k)
        return scores, rows[found]
