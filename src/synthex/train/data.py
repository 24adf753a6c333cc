"""Read an imagefolder dataset into tensors for training.

Dataset contract (the Hugging Face ``imagefolder`` layout that ``synthex data prepare`` and the
phantom renderer write):

- ``FOLDER/metadata.csv`` with at least the columns ``file_name`` (image path relative to
  ``FOLDER``) and ``text`` (the caption); an optional ``split`` column (``train``/``val``/
  ``test``...) selects rows; other columns are ignored.
- images: any PNG/JPEG that Pillow reads; grayscale, RGB(A), palette or 16-bit. They are
  converted to 8-bit grayscale, the short side resized to the training resolution (bicubic,
  antialiased) and cropped to a square: centred (``crop="center"``) or with the thesis smart
  crop (``crop="smart"``: a portrait film keeps its top, 1/3 of the excess removed above).

A missing folder, file or column raises :class:`~synthex.errors.DataSourceError` naming it. A
bad row (empty caption, missing or unreadable image, path outside the folder) is never silently
dropped: it is counted, logged and listed with its reason (:func:`save_rejects` writes the list
as CSV); ``strict=True`` turns any reject into an error.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthex.errors import DataSourceError

logger = logging.getLogger(__name__)

METADATA = "metadata.csv"
REQUIRED_COLUMNS = ("file_name", "text")


@dataclass(frozen=True)
class Reject:
    """One row that could not be used, and why."""

    row: int
    file_name: str
    reason: str


@dataclass
class ImageTextData:
    """Images (uint8, ``(N, 1, R, R)``) with their captions, in ``metadata.csv`` order."""

    images: "torch.Tensor"  # noqa: F821 - torch is imported lazily
    captions: list[str]
    file_names: list[str]
    rejects: list[Reject] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    """(height, width) of each source image (SDXL's size conditioning)."""
    crops: list[tuple[int, int]] = field(default_factory=list)
    """(top, left) of each crop in the resized image (SDXL's crop conditioning)."""
    columns: dict[str, list[str]] = field(default_factory=dict)
    """Extra metadata.csv columns requested by the caller, aligned with ``captions``."""

    def __len__(self) -> int:
        return len(self.captions)

    def pixels(self, indices) -> "torch.Tensor":  # noqa: F821
        """Float images in [-1, 1] (the VAE's input range) for the given row indices."""
        return to_model_range(self.images[indices])


def to_model_range(images_uint8):
    """uint8 images -> float32 in [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def metadata_fingerprint(folder: Path) -> str:
    """SHA-256 of ``metadata.csv`` (identifies the dataset a run was trained on)."""
    return hashlib.sha256((Path(folder) / METADATA).read_bytes()).hexdigest()


def read_metadata(folder: Path, *, split: str | None = "train", text_column: str = "text"):
    """Read and check ``metadata.csv``; keep the rows of ``split`` when a ``split`` column exists."""
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise DataSourceError(f"dataset folder {folder} does not exist; pass an imagefolder with {METADATA}")
    path = folder / METADATA
    if not path.is_file():
        raise DataSourceError(f"{path} is missing: an imagefolder needs a {METADATA} with columns "
                              f"file_name,{text_column} (make one with 'synthex data prepare')")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataSourceError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}; probably Latin-1 or "
            "Windows-1252); save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 -t utf-8) "
            "and run again"
        ) from err
    try:
        table = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"{path} is not a readable CSV table ({reason}); fix the file (one header line "
                              f"file_name,{text_column},... and one row per image)") from err
    missing = [c for c in ("file_name", text_column) if c not in table.columns]
    if missing:
        raise DataSourceError(f"{path} lacks the column(s) {missing}; it has {list(table.columns)}. "
                              f"An imagefolder needs file_name (image path) and {text_column} (caption)")
    table = table.reset_index(drop=True)
    table["_row"] = table.index + 2  # the line number in the CSV file (header is line 1)
    if split is None or "split" not in table.columns:
        if split is not None:
            logger.info("%s has no 'split' column: using all %d rows", path, len(table))
        return table
    chosen = table[table["split"] == split]
    if chosen.empty:
        raise DataSourceError(f"{path} has no row with split == {split!r}; splits present: "
                              f"{sorted(table['split'].unique())}. Choose one or pass split=None")
    return chosen


CROPS = ("center", "smart")


def prepare_image(image, resolution: int, crop: str = "center") -> np.ndarray:
    """Any PIL image -> ``(resolution, resolution)`` uint8 grayscale (short side + crop)."""
    return prepare_image_with_box(image, resolution, crop)[0]


def prepare_image_with_box(image, resolution: int, crop: str = "center") -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`prepare_image` plus the (top, left) of the crop in the resized image."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode != "L":
        image = image.convert("L")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    w, h = image.size
    scale = resolution / min(w, h)
    top = left = 0
    if (w, h) != (resolution, resolution):
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(size, Image.BICUBIC)
        left = (size[0] - resolution) // 2
        top = (size[1] - resolution) // (3 if crop == "smart" else 2)
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8), (top, left)


def _load_one(folder: Path, row: int, name: str, caption: str, resolution: int, crop: str = "center"):
    """((array, (height, width), (top, left)), None) or (None, Reject)."""
    if not caption.strip():
        return None, Reject(row, name, "empty caption")
    from synthex.errors import OutsidePathError
    from synthex.paths import member_path

    try:
        path = member_path(folder, name)
    except OutsidePathError as exc:
        return None, Reject(row, name, f"file_name points outside the dataset folder ({exc.reason})")
    if not path.is_file():
        return None, Reject(row, name, "image file not found")
    from synthex.errors import ImageReadError
    from synthex.io import open_image

    try:
        with open_image(path) as image:
            arr, box = prepare_image_with_box(image, resolution, crop)
            return (arr, (image.height, image.width), box), None
    except ImageReadError as err:
        return None, Reject(row, name, f"unreadable image: {err.reason}")
    except (OSError, ValueError) as err:
        return None, Reject(row, name, f"unreadable image: {type(err).__name__}: {err}")


def load_imagefolder(folder: Path, resolution: int, *, split: str | None = "train",
                     text_column: str = "text", workers: int = 2, progress: bool = False,
                     strict: bool = False, crop: str = "center", columns: tuple[str, ...] = ()) -> ImageTextData:
    """Load the rows of ``split`` as uint8 tensors at ``resolution`` with their captions.

    Rejected rows are logged (count + first few) and returned in ``.rejects``; when every row
    is rejected, or any is and ``strict`` is set, :class:`DataSourceError` is raised.
    ``columns`` names extra metadata.csv columns to return (missing ones raise).
    """
    import torch
    from tqdm.auto import tqdm

    folder = Path(folder)
    table = read_metadata(folder, split=split, text_column=text_column)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataSourceError(f"{folder / METADATA} lacks the column(s) {missing} asked for; it has "
                              f"{[c for c in table.columns if c != '_row']}")
    jobs = list(zip(table["_row"], table["file_name"], table[text_column]))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda j: _load_one(folder, *j, resolution, crop), jobs), total=len(jobs),
                            desc="images", unit="img", disable=not progress))
    kept_pos = [i for i, (item, _) in enumerate(results) if item is not None]
    kept = [(results[i][0], jobs[i]) for i in kept_pos]
    rejects = [rej for _, rej in results if rej is not None]
    _report_rejects(folder, rejects, len(jobs), strict)
    if not kept:
        raise DataSourceError(f"no usable image in {folder / METADATA} (split={split!r}): all "
                              f"{len(jobs)} rows were rejected, first: {rejects[0].reason if rejects else '-'}")
    images = torch.from_numpy(np.stack([item[0] for item, _ in kept]))[:, None]
    return ImageTextData(images=images, captions=[str(j[2]).strip() for _, j in kept],
                         file_names=[str(j[1]) for _, j in kept], rejects=rejects,
                         original_sizes=[item[1] for item, _ in kept], crops=[item[2] for item, _ in kept],
                         columns={c: [str(v) for v in table[c].iloc[kept_pos]] for c in columns})


def _report_rejects(folder: Path, rejects: list[Reject], total: int, strict: bool) -> None:
    if not rejects:
        return
    first = "; ".join(f"line {r.row} {r.file_name!r}: {r.reason}" for r in rejects[:3])
    message = f"{len(rejects)} of {total} rows of {folder / METADATA} rejected ({first}{' ...' if len(rejects) > 3 else ''})"
    if strict:
        raise DataSourceError(message + "; fix or remove them, or run without strict checking")
    logger.warning("%s; they are listed in the run's rejects.csv", message)


def save_rejects(rejects: list[Reject], path: Path) -> None:
    """Write the rejected rows as CSV (``row,file_name,reason``; header only when none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    from synthex.io import atomic_write

    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "file_name", "reason"])
    writer.writerows((r.row, r.file_name, r.reason) for r in rejects)
    atomic_write(path, lambda fh: fh.write(text.getvalue().encode("utf-8")))
