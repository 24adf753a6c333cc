"""Image sets for evaluation: a folder of images, optionally with ``metadata.csv`` labels.

Contract (documented in docs/evaluation.md):

- A folder is either an imagefolder (``metadata.csv`` with a ``file_name`` column, as written by
  ``synthex data prepare`` and ``synthex synthesize``) or a plain folder of PNG/JPEG files
  (searched recursively, hidden folders such as ``.synthex/`` skipped); a plain folder has no
  labels, so alignment, per-finding fidelity and utility are reported as not computable for it.
- Every image becomes 8-bit grayscale: RGB/RGBA/16-bit/palette images are converted and counted.
- Images must be square (crop them first, e.g. with ``synthex data prepare``). Within a set,
  images of another size than the set's most common size are resized to it (area filter) and
  counted. The two sets may have different sizes: each metric states the size it works at.
- Unreadable files and files listed in ``metadata.csv`` but absent are rejected, counted and
  listed in the report; they never stop the run unless too few images remain.
- Labels, in order of preference: finding columns named like the phantom labels (0/1), the
  ``mesh`` column (mapped with the phantom MeSH rules), the ``text``/``prompt`` column (parsed
  sentence by sentence with the phantom finding parser; sentences it cannot read are counted).
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from synthex.errors import ImageReadError, SynthexError
from synthex.phantom.classifier import PHANTOM_LABELS, finding_labels
from synthex.phantom.labels import text_findings  # one reader of findings in text, shared with the GAN

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TEXT_COLUMNS = ("text", "prompt")
LABEL_SOURCES = ("columns", "mesh", "text")


@dataclass
class ImageSet:
    """Images (uint8 (N, S, S)), their files and content hashes, prompts/texts and labels."""

    name: str
    folder: Path
    files: list[Path]
    hashes: list[str]
    images: np.ndarray
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = PHANTOM_LABELS
    label_source: str | None = None
    rejects: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unparsed_sentences: int = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray) -> "ImageSet":
        idx = np.asarray(index, dtype=int)
        return ImageSet(self.name, self.folder, [self.files[i] for i in idx], [self.hashes[i] for i in idx],
                        self.images[idx], None if self.texts is None else [self.texts[i] for i in idx],
                        None if self.labels is None else self.labels[idx], self.label_names, self.label_source)


# --------------------------------------------------------------------------------------------
# 1. Listing files
# --------------------------------------------------------------------------------------------
def _read_metadata(folder: Path):
    import pandas as pd

    path = folder / "metadata.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=object, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SynthexError(f"{path}: not a readable CSV file ({exc}); fix or remove it") from None
    if "file_name" not in frame.columns:
        raise SynthexError(f"{path}: no 'file_name' column (columns: {', '.join(map(str, frame.columns))}); "
                           "an imagefolder metadata.csv names each image in 'file_name'")
    return frame


def _listed_files(folder: Path, frame):
    """The files metadata.csv names, in its folder: a row naming a path outside the folder
    (absolute, ``..``), an empty name or a file already listed is rejected with its reason."""
    from synthex.errors import OutsidePathError
    from synthex.paths import member_path

    files, rows, rejects, seen = [], [], [], set()
    for i, value in enumerate(frame["file_name"]):
        try:
            path = member_path(folder, value)
        except OutsidePathError as exc:
            rejects.append((str(value), f"metadata.csv row {i + 2}: {exc.reason}; only files inside {folder} "
                                        "are read"))
            continue
        if str(path) in seen:
            rejects.append((str(value), f"metadata.csv row {i + 2}: listed twice (the first row is used)"))
            continue
        seen.add(str(path))
        files.append(path)
        rows.append(i)
    return files, frame.iloc[rows].reset_index(drop=True), rejects


def _first(rejects: list[tuple[str, str]], n: int = 3) -> str:
    shown = "; ".join(f"{f}: {r}" for f, r in rejects[:n])
    return shown + (f" (and {len(rejects) - n} more)" if len(rejects) > n else "")


def _plain_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# --------------------------------------------------------------------------------------------
# 2. Reading images
# --------------------------------------------------------------------------------------------
def read_gray(path: Path) -> tuple[np.ndarray, bool]:
    """uint8 grayscale array of one image and whether it had to be converted (ImageReadError for
    an unreadable file, a header claiming too many pixels included)."""
    from synthex.io import open_image

    with open_image(path) as img:
        mode = img.mode
        if mode == "L":
            return np.asarray(img, dtype=np.uint8).copy(), False
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            return np.clip(arr / hi * 255 + 0.5, 0, 255).astype(np.uint8), True
        return np.asarray(img.convert("L"), dtype=np.uint8).copy(), True


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 image resized to ``size`` (box filter down, bicubic up)."""
    img = Image.fromarray(arr).resize((size, size), Image.Resampling.BOX if arr.shape[0] > size
                                                 else Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _load_pixels(files: list[Path], name: str, progress: bool):
    from tqdm.auto import tqdm

    arrays, kept, hashes, rejects, converted = [], [], [], [], 0
    for path in tqdm(files, desc=f"reading {name}", disable=not progress, leave=False):
        try:
            data = path.read_bytes()
            arr, was_converted = read_gray(path)
        except FileNotFoundError:
            rejects.append((str(path), "listed in metadata.csv but missing"))
            continue
        except ImageReadError as exc:
            rejects.append((str(path), f"unreadable image ({exc.reason})"))
            continue
        except (OSError, ValueError) as exc:
            rejects.append((str(path), f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise SynthexError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, not square; crop the {name} "
                               "images to squares first (e.g. 'synthex data prepare --size N')")
        converted += was_converted
        arrays.append(arr)
        kept.append(path)
        hashes.append(hashlib.sha1(data).hexdigest())
    return arrays, kept, hashes, rejects, converted


# --------------------------------------------------------------------------------------------
# 3. Labels
# --------------------------------------------------------------------------------------------
def available_label_sources(columns) -> list[str]:
    cols = set(map(str, columns))
    out = []
    if cols & set(PHANTOM_LABELS):
        out.append("columns")
    if "mesh" in cols:
        out.append("mesh")
    if cols & set(TEXT_COLUMNS):
        out.append("text")
    return out




def _labels_from(frame, source: str, names: tuple[str, ...]) -> tuple[np.ndarray, int]:
    n = len(frame)
    if source == "columns":
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise SynthexError(f"label columns missing: {', '.join(missing)}")
        try:
            return frame[list(names)].astype(float).to_numpy(np.float32), 0
        except ValueError as exc:
            raise SynthexError(f"label columns must hold 0/1 values ({exc})") from None
    labels, unparsed = np.zeros((n, len(names)), np.float32), 0
    if source == "mesh":
        from synthex.phantom.dataset import load_mesh_rules, mesh_to_findings

        rules = load_mesh_rules()
        for i, mesh in enumerate(frame["mesh"]):
            labels[i] = finding_labels(mesh_to_findings(str(mesh), rules)[0], names)
        return labels, 0
    column = next(c for c in TEXT_COLUMNS if c in frame.columns)
    for i, text in enumerate(frame[column]):
        found, bad = text_findings(str(text))
        labels[i], unparsed = finding_labels(found, names), unparsed + bad
    return labels, unparsed


def label_columns(columns) -> set[str]:
    return set(map(str, columns)) & set(PHANTOM_LABELS)


# --------------------------------------------------------------------------------------------
# 4. The entry point
# --------------------------------------------------------------------------------------------
def load_image_set(folder: str | Path, name: str, *, label_source: str | None = None,
                   min_images: int = 10, progress: bool = False) -> ImageSet:
    """Read a folder (see the module doc). ``label_source`` forces one of ``LABEL_SOURCES``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SynthexError(f"{name} folder {folder} does not exist; pass a folder of images")
    frame = _read_metadata(folder)
    listed_rejects: list[tuple[str, str]] = []
    if frame is not None:
        files, frame, listed_rejects = _listed_files(folder, frame)
    else:
        files = _plain_files(folder)
    if not files:
        raise SynthexError(f"{name} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                           + (f"; metadata.csv rows rejected: {_first(listed_rejects)}" if listed_rejects else ""))
    arrays, kept, hashes, rejects, converted = _load_pixels(files, name, progress)
    rejects = listed_rejects + rejects
    if len(kept) < min_images:
        raise SynthexError(f"{name} set {folder}: {len(kept)} readable images ({len(rejects)} rejected), "
                           f"at least {min_images} are needed; add images")
    sizes = Counter(a.shape[0] for a in arrays)
    size = sizes.most_common(1)[0][0]
    notes = []
    if converted:
        notes.append(f"{converted} images converted to 8-bit grayscale")
    if len(sizes) > 1:
        resized = sum(n for s, n in sizes.items() if s != size)
        notes.append(f"{resized} images resized to {size}x{size} (sizes found: "
                     + ", ".join(f"{s}px x{n}" for s, n in sorted(sizes.items())) + ")")
        arrays = [a if a.shape[0] == size else resize_square(a, size) for a in arrays]
    result = ImageSet(name, folder, kept, hashes, np.stack(arrays), rejects=rejects, notes=notes)
    if frame is not None:
        keep = {str(p): i for i, p in enumerate(files)}
        rows = frame.iloc[[keep[str(p)] for p in kept]].reset_index(drop=True)
        text_col = next((c for c in TEXT_COLUMNS if c in rows.columns), None)
        result.texts = [str(t) for t in rows[text_col]] if text_col else None
        _attach_labels(result, rows, label_source)
    for path, reason in rejects:
        log.warning("%s set: rejected %s: %s", name, path, reason)
    return result


def _attach_labels(result: ImageSet, rows, label_source: str | None) -> None:
    sources = available_label_sources(rows.columns)
    if label_source is not None and label_source not in sources:
        raise SynthexError(f"{result.name} set {result.folder}: label source {label_source!r} not available "
                           f"(metadata.csv offers {sources or 'none'}); choose one of those")
    source = label_source or (sources[0] if sources else None)
    if source is None:
        return
    try:
        result.labels, result.unparsed_sentences = _labels_from(rows, source, PHANTOM_LABELS)
    except SynthexError as exc:
        raise SynthexError(f"{result.name} set {result.folder}/metadata.csv: {exc}") from None
    result.label_source = source
    if result.unparsed_sentences:
        result.notes.append(f"{result.unparsed_sentences} sentences named no drawable finding (ignored for labels)")


def common_label_source(real_columns, synth_columns) -> str | None:
    """The best label source both sets offer; finding columns present in only one set (or
    different finding columns in both) are an error, since the label sets would differ."""
    real_cols, synth_cols = label_columns(real_columns), label_columns(synth_columns)
    if (real_cols or synth_cols) and real_cols != synth_cols and real_cols and synth_cols:
        raise SynthexError(
            "the real and synthetic metadata.csv have different finding columns: only real "
            f"{sorted(real_cols - synth_cols)}, only synthetic {sorted(synth_cols - real_cols)}; "
            "give both sets the same label columns (or drop them to derive labels from text/mesh)")
    both = [s for s in available_label_sources(real_columns) if s in available_label_sources(synth_columns)]
    return both[0] if both else None
