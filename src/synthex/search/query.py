"""Queries against an index: text -> images, image -> similar images, text or image -> reports.

:func:`search` is the one entry point (the CLI and the web app call it). Results are
:class:`Hit` rows, best first, which :func:`write_results` saves as CSV or JSON and
:func:`contact_sheet` draws as one PNG (rank, score and the start of the report under each
thumbnail). Output files are never overwritten unless asked.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from synthex.errors import OutputExistsError, SynthexError
from synthex.io import atomic_write

logger = logging.getLogger(__name__)

MODES = ("images", "reports")
MAX_K = 1000


@dataclass
class Hit:
    """One result."""

    rank: int
    score: float
    key: str  # the file, relative to the indexed folder
    path: str  # absolute path of the file
    report: str
    labels: str


@dataclass
class SearchResult:
    query: str  # the text, or "image:<path>"
    mode: str  # "images" or "reports"
    hits: list[Hit]
    index_dir: str
    model_id: str
    original: str | None = None  # the Russian/Ukrainian text a mapped query was written in
    language: str = "en"


def _check_model(index, model) -> None:
    if index.model_id != model.model_id:
        raise SynthexError(f"index {index.folder} was built with search model {index.model_id}, the loaded model is "
                           f"{model.model_id}; pass that model with --model or rebuild the index with this one")


def query_vector(model, text: str | None = None, image: str | Path | np.ndarray | None = None) -> np.ndarray:
    """The embedding of a text or of an image (path or uint8 array); exactly one must be given."""
    from synthex.search.index import read_image

    if (text is None or not str(text).strip()) == (image is None):
        raise SynthexError("give a text query or an image to search with (exactly one of them); "
                           "e.g. 'small left pleural effusion' or --image scan.png")
    if image is None:
        return model.embed_texts([str(text).strip()])[0]
    if isinstance(image, (str, Path)):
        arr = read_image(Path(image), model.config.image_size)
    else:
        arr = np.asarray(image)
        if arr.ndim == 3:
            arr = arr.mean(axis=-1).astype(np.uint8)
        if arr.ndim != 2:
            raise SynthexError(f"query image must be a grayscale or RGB array, got shape {arr.shape}")
    return model.embed_images(arr[None])[0]


def search(index, model, text: str | None = None, image: str | Path | np.ndarray | None = None, *,
           k: int = 10, mode: str = "images", exclude_self: bool = True, lang: str = "auto") -> SearchResult:
    """Top ``k`` images (``mode="images"``) or reports (``mode="reports"``) for a text or an image.

    An image query that is itself in the index is left out of its own results
    (``exclude_self``), so "similar images" means other images. A Russian or Ukrainian text is
    read through the glossary (:func:`synthex.text.lang.localise`, ``lang``) and searched in English."""
    if mode not in MODES:
        raise SynthexError(f"unknown search mode {mode!r}; choose 'images' or 'reports'")
    if not 1 <= int(k) <= MAX_K:
        raise SynthexError(f"--k must be between 1 and {MAX_K}, got {k}")
    _check_model(index, model)
    mapping = None
    if text is not None and image is None:
        from synthex.text.lang import localise

        text, mapping = localise(str(text), lang)
    vec = query_vector(model, text, image)
    self_row = _self_row(index, image) if (exclude_self and isinstance(image, (str, Path))) else None
    extra = 1 if self_row is not None else 0
    scores, rows = index.top_k(vec[None], int(k) + extra, "image" if mode == "images" else "text")
    hits = []
    for score, row in zip(scores[0], rows[0]):
        if row == self_row or len(hits) == k:
            continue
        item = index.items[int(row)]
        hits.append(Hit(len(hits) + 1, float(score), item["key"], str(index.path(int(row))), item.get("report", ""),
                        item.get("labels", "")))
    query = str(text).strip() if text is not None and str(text).strip() else f"image:{image if isinstance(image, (str, Path)) else 'array'}"
    if mapping is not None:
        return SearchResult(query, mode, hits, str(index.folder), index.model_id, mapping.original.strip(),
                            mapping.language)
    return SearchResult(query, mode, hits, str(index.folder), index.model_id)


def _self_row(index, image: str | Path) -> int | None:
    try:
        key = Path(image).resolve().relative_to(index.source).as_posix()
    except ValueError:
        return None
    return next((i for i, it in enumerate(index.items) if it["key"] == key), None)


# --------------------------------------------------------------------------------------------
# Output: CSV / JSON / contact sheet
# --------------------------------------------------------------------------------------------
def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another file name or pass --overwrite")


def write_results(result: SearchResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """``.csv`` (one row per hit) or ``.json`` (query, mode, index, model and hits)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SynthexError(f"{path}: results are written as .csv or .json; give a file name ending in one of them")
    _check_new(path, overwrite)
    if suffix == ".json":
        body = json.dumps({"query": result.query, "original_query": result.original,
                           "query_language": result.language, "mode": result.mode, "index": result.index_dir,
                           "model_id": result.model_id, "hits": [asdict(h) for h in result.hits]},
                          indent=1, ensure_ascii=False).encode()
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["query", "mode", *Hit.__dataclass_fields__])
        writer.writeheader()
        for h in result.hits:
            writer.writerow({"query": result.query, "mode": result.mode, **asdict(h)})
        body = buf.getvalue().encode()
    atomic_write(path, lambda fh: fh.write(body))
    return path


def _thumbnail(path: str, size: int):
    from PIL import Image, ImageDraw

    from synthex.errors import ImageReadError
    from synthex.io import open_image

    try:
        with open_image(path) as img:
            thumb = img.convert("L")
            thumb.thumbnail((size, size))
    except (ImageReadError, OSError, ValueError):
        thumb = Image.new("L", (size, size), 40)
        ImageDraw.Draw(thumb).text((6, size // 2), "missing", fill=220)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    return canvas


def _wrap(text: str, width: int, lines: int) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join(str(text).split()), width)[:lines] or [""]


def contact_sheet(result: SearchResult, path: str | Path, *, thumb: int = 160, columns: int = 5,
                  overwrite: bool = False) -> Path:
    """One PNG: the query on top, then a grid of thumbnails with rank, score and report start."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SynthexError(f"{path}: the contact sheet is a PNG; give a file name ending in .png")
    _check_new(path, overwrite)
    if not result.hits:
        raise SynthexError("no results to draw (the index is empty or holds no reports)")
    columns = max(1, min(columns, len(result.hits)))
    caption_h, head_h = 44, 22
    n_rows = -(-len(result.hits) // columns)
    sheet = Image.new("L", (columns * thumb, head_h + n_rows * (thumb + caption_h)), 255)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{result.mode} for: {result.query}"[: columns * thumb // 6], fill=0)
    for j, hit in enumerate(result.hits):
        x, y = (j % columns) * thumb, head_h + (j // columns) * (thumb + caption_h)
        sheet.paste(_thumbnail(hit.path, thumb), (x, y))
        lines = [f"#{hit.rank}  {hit.score:.3f}", *_wrap(hit.report or hit.key, thumb // 6, 2)]
        for n, line in enumerate(lines):
            draw.text((x + 3, y + thumb + 2 + 13 * n), line, fill=0)
    info = PngInfo()
    info.add_text("Description", f"SynTheX-Ray search results ({result.mode}) for {result.query!r}; "
                  f"index {result.index_dir}, model {result.model_id}. For research, not diagnosis.")
    info.add_text("Software", "SynTheX-Ray")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", pnginfo=info)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    return path
