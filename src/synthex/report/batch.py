"""Folders of images in, a CSV of reports out."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from synthex.errors import SynthexError
from synthex.report.format import StructuredReport

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CSV_COLUMNS = ("image", "report", "image_labels", "gender", "age", "findings", "impression", "parsed", "model",
               "synthetic")


def list_images(path: str | Path) -> list[Path]:
    """``path`` itself, or the images of the folder ``path`` (sorted; none is an error)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SynthexError(f"{path}: no such image or folder; give a PNG/JPEG or a folder of them")
    images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SynthexError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return images


def write_reports_csv(out: Path, images: Sequence[Path], reports: Sequence[StructuredReport], model: str) -> None:
    from synthex.train.loop import _write_text

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for image, r in zip(images, reports):
        writer.writerow([str(image), r.line(), "; ".join(r.labels), r.gender, r.age, r.findings, r.impression,
                         r.parsed, model, True])
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_text(out, buf.getvalue())
