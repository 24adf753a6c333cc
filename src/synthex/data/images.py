"""Chest X-ray images: read, normalise, resize, smart-crop and export as an imagefolder.

The thesis pipeline (chapter 3) turns each source image into a square training image:

1. read the file and normalise it to 8 bits (:func:`read_image`, :func:`to_8bit`);
2. convert to the output mode ("RGB" as the thesis did, or "L");
3. resize so the SHORT side equals the target size (default 1024) with Lanczos
   (:func:`resize_short_side`);
4. "smart crop" to a square (:func:`smart_crop`): a portrait image loses 1/3 of its excess
   height above and 2/3 below, which keeps the lung apices; a landscape image is cropped in
   the centre.

:func:`export_images` runs that transform over many files with worker processes, writes PNGs
atomically (temp name + ``os.replace``), resumes by skipping outputs that already exist,
supports deterministic sharding across machines (``--shard K/N``) and never drops an
unreadable file silently: it is counted, logged and listed in ``rejects.csv``.

The output folder plus a ``metadata.csv`` (``file_name,text``) is a Hugging Face imagefolder.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageFile, ImageOps
from tqdm.auto import tqdm

from synthex.errors import ConfigError, ImageReadError
from synthex.io import atomic_write
from synthex.io import bomb_checked as _bomb_checked
from synthex.io import image_read_failure as _read_failure

logger = logging.getLogger(__name__)

OUTPUT_MODES = ("RGB", "L")
DEFAULT_SIZE = 1024
REJECTS_COLUMNS = ("source", "name", "reason")
TEMP_SUFFIX = ".synthex-tmp"
"""Suffix of the temp files of every write of prepare (``.<name>.<random>.synthex-tmp``)."""
_TEMP_SUFFIX = TEMP_SUFFIX
_FALLBACK_PIXEL_LIMIT = 89_478_485  # PIL's default MAX_IMAGE_PIXELS, used when a library unset it
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


# ---------------------------------------------------------------------------------------------
# Reading and normalising
# ---------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file fully and return it as an 8-bit "L" or "RGB" image.

    The whole file is decoded inside the ``try`` (``Image.load``), and PIL's
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so a truncated or corrupt file raises
    :class:`~synthex.errors.ImageReadError` instead of silently loading with grey/black rows.
    Missing files, non-image files and decompression bombs raise the same error.
    JPEG EXIF orientation is applied. See :func:`to_8bit` for how modes are normalised.
    """
    path = Path(path)
    try:
        with _bomb_checked(), Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable file"
        # OSError covers FileNotFoundError, UnidentifiedImageError and "image file is truncated";
        # SyntaxError is raised for broken PNG chunks; malformed headers can raise others;
        # DecompressionBombError/Warning for a header that claims too many pixels.
        raise ImageReadError(path, _read_failure(path, exc)) from exc
    try:
        return to_8bit(img)
    except ValueError as exc:
        raise ImageReadError(path, f"unsupported image mode {img.mode!r}: {exc}") from exc


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) from an image header without decoding pixels; None when the file is
    unreadable, not an image or claims too many pixels (the export rejects it with a reason)."""
    try:
        with _bomb_checked(), Image.open(path) as img:
            return img.size
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - reported later by read_image through the export
        return None


def to_8bit(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to an 8-bit "L" (grey) or "RGB" image.

    - "L" is returned unchanged; "RGB" too, unless its three channels are equal (a grey film
      stored as colour, common for JPEGs), which becomes "L". Both give the same pixels after
      conversion to "RGB" or "L", but an "L" image is resized three times faster.
    - "1" becomes "L"; "CMYK"/"YCbCr"/"LAB"/"HSV" become "RGB".
    - Alpha ("LA", "RGBA", "PA", palette with transparency) is composited onto BLACK: in an
      X-ray a transparent pixel carries no signal, and black is the X-ray background.
    - Palette images become "RGB" (or "L" when every palette entry is grey).
    - High-bit modes ("I;16", "I;16B", "I", "F", ...) are scaled by the BIT RANGE ACTUALLY
      USED: with ``bits`` the smallest bit depth (at least 8) that holds the maximum value,
      ``out = round(value * 255 / (2**bits - 1))``. A 12-bit DICOM export (max <= 4095) is
      therefore divided by 4095, not 65535, and black stays black (no min-max stretch, so the
      exposure of the original is kept). Negative values (only possible in "I"/"F") fall back
      to a min-max stretch. See :func:`_scale_high_bit`.
    """
    mode = img.mode
    if mode == "L":
        return img
    if mode == "RGB":
        return _grey_if_neutral(img)
    if mode in _HIGH_BIT_MODES:
        return _scale_high_bit(img)
    if mode == "1":
        return img.convert("L")
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
        if mode == "RGB":
            return _grey_if_neutral(img)
    if mode in ("LA", "La"):
        return _flatten_alpha(img.convert("LA"), "L")
    if mode in ("RGBA", "RGBa"):
        return _grey_if_neutral(_flatten_alpha(img.convert("RGBA"), "RGB"))
    return img.convert("RGB")


def _flatten_alpha(img: Image.Image, mode: str) -> Image.Image:
    """Composite an image with alpha onto a black background of ``mode``."""
    background = Image.new(mode, img.size, 0)
    background.paste(img.convert(mode), mask=img.getchannel("A"))
    return background


def _grey_if_neutral(img: Image.Image) -> Image.Image:
    """Return "L" when all three RGB channels are equal (a grey image stored as colour)."""
    r, g, b = (np.asarray(channel) for channel in img.split())
    if np.array_equal(r, g) and np.array_equal(g, b):
        return Image.fromarray(r, mode="L")
    return img


def _scale_high_bit(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit or float grey image to 8-bit "L" by the bit range actually used.

    Non-negative integers use exact integer rounding (half up) through a lookup table, so the
    result is identical on every machine; floats and negative values use float arithmetic.
    """
    data = np.asarray(img)
    if data.size == 0:
        return Image.new("L", img.size, 0)
    low, high = data.min(), data.max()
    if np.issubdtype(data.dtype, np.integer) and low >= 0:
        denom = 2 ** max(8, int(high).bit_length()) - 1
        if high < 2**16:  # one gather instead of several full-size arithmetic passes
            table = ((np.arange(int(high) + 1, dtype=np.int64) * 255 + denom // 2) // denom)
            return Image.fromarray(table.astype(np.uint8)[data], mode="L")
        out = (data.astype(np.int64) * 255 + denom // 2) // denom
        return Image.fromarray(out.astype(np.uint8), mode="L")
    data = data.astype(np.float64)
    low, high = float(low), float(high)
    if low < 0:  # signed data: min-max stretch is the only sensible mapping
        data = (data - low) * 255.0 / (high - low) if high > low else data * 0.0
    else:
        data = data * 255.0 / (2 ** max(8, int(np.ceil(high)).bit_length()) - 1)
    return Image.fromarray(np.clip(np.floor(data + 0.5), 0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------
# The thesis transform: resize the short side, smart crop
# ---------------------------------------------------------------------------------------------
def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive integer number of pixels, got {size!r}")


def _check_mode(mode: str) -> None:
    if mode not in OUTPUT_MODES:
        raise ConfigError(f"mode must be one of {OUTPUT_MODES}, got {mode!r}")


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (Lanczos) so that the SHORT side equals ``size``, keeping the aspect ratio.

    The long side is ``round(long * size / short)`` (halves rounded up). An image whose short
    side already equals ``size`` is returned as a copy, untouched. Images smaller than
    ``size`` are upscaled, as in the thesis.
    """
    _check_size(size)
    width, height = img.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize an empty image of size {img.size}")
    short = min(width, height)
    if short == size:
        return img.copy()
    if width <= height:
        new_size = (size, max(size, int(height * size / width + 0.5)))
    else:
        new_size = (max(size, int(width * size / height + 0.5)), size)
    return img.resize(new_size, Image.Resampling.LANCZOS)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Return the (left, top, right, bottom) box of the smart crop of a width x height image.

    Horizontal excess is split evenly (left gets the floor of half); vertical excess is split
    1/3 above (floor) and the rest below, which keeps the lung apices of a portrait film.
    Example: 100x160 to 100 -> excess 60 -> 20 rows removed above, 40 below: (0, 20, 100, 120).
    """
    _check_size(size)
    if width < size or height < size:
        raise ValueError(
            f"cannot crop a {width}x{height} image to {size}x{size}: resize it first so that "
            "its short side is at least the target size (resize_short_side)"
        )
    left = (width - size) // 2
    top = (height - size) // 3
    return left, top, left + size, top + size


def smart_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop ``img`` to ``size`` x ``size``: portrait keeps the top (1/3 of the excess removed
    above, 2/3 below), landscape is centre-cropped. See :func:`crop_box`."""
    box = crop_box(img.width, img.height, size)
    if box == (0, 0, img.width, img.height):
        return img.copy()
    return img.crop(box)


def prepare_image(img: Image.Image, size: int = DEFAULT_SIZE, mode: str = "RGB") -> Image.Image:
    """Apply the thesis transform: 8-bit normalise, convert to ``mode``, resize the short side
    to ``size`` (Lanczos), smart-crop to ``size`` x ``size``.

    A grey ("L") source is resized before being converted to "RGB": Lanczos works per channel
    and L -> RGB copies the channel, so the result is byte-identical to converting first, at a
    third of the cost. Any other source is converted first.
    """
    _check_size(size)
    _check_mode(mode)
    img = to_8bit(img)
    if img.mode != "L":
        img = img.convert(mode)
    img = smart_crop(resize_short_side(img, size), size)
    return img.convert(mode) if img.mode != mode else img


# ---------------------------------------------------------------------------------------------
# Tasks, shards, reports
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportTask:
    """One image to export: ``source`` file -> ``out_dir / name`` (``name`` is a relative
    POSIX path ending in ``.png``, e.g. ``"images/1_IM-0001-4001.png"``)."""

    source: Path
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))


@dataclass
class ExportReport:
    """What :func:`export_images` did. ``rejected`` holds ``(source, reason)`` pairs, sorted by
    output name; ``rejects_path`` is the CSV that lists them (with the output name too)."""

    written: int = 0
    skipped_existing: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    rejects_path: Path | None = None

    @property
    def total(self) -> int:
        """Number of tasks handled (written + skipped + rejected)."""
        return self.written + self.skipped_existing + len(self.rejected)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"K/N"`` into ``(K, N)`` with ``0 <= K < N``; raise :class:`ConfigError` (a
    ``ValueError``) naming ``text``."""
    hint = "expected 'K/N' with integers 0 <= K < N, e.g. '0/4' for the first of four shards"
    parts = str(text).strip().split("/")
    if len(parts) != 2:
        raise ConfigError(f"invalid shard {text!r}: {hint}")
    try:
        index, count = (int(part.strip()) for part in parts)
    except ValueError:
        raise ConfigError(f"invalid shard {text!r}: {hint}") from None
    return _check_shard((index, count), text)


def _check_shard(shard: tuple[int, int], text: object = None) -> tuple[int, int]:
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ConfigError(f"invalid shard {shard!r}: expected (K, N) with integers 0 <= K < N") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (index, count)):
        raise ConfigError(f"invalid shard {shard!r}: K and N must be integers, e.g. '0/4'")
    if count < 1 or not 0 <= index < count:
        shown = text if text is not None else f"{index}/{count}"
        raise ConfigError(
            f"invalid shard {shown!r}: need 0 <= K < N (got K={index}, N={count}); "
            "shards are numbered from 0"
        )
    return index, count


def shard_of(name: str, count: int) -> int:
    """Shard (0..count-1) that owns output ``name``: a stable hash of the name modulo ``count``.

    It depends only on the name (SHA-1, not Python's salted ``hash``), so it is the same on
    every run and machine and does not move when other tasks are added or removed.
    """
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(tasks: Sequence[ExportTask], shard: tuple[int, int] | None) -> list[ExportTask]:
    """Return the tasks of shard ``(K, N)`` sorted by name (all tasks when ``shard`` is None).

    The N shards partition the tasks: every task is in exactly one shard (see :func:`shard_of`).
    """
    ordered = sorted(tasks, key=lambda task: task.name)
    if shard is None:
        return ordered
    index, count = _check_shard(shard)
    return [task for task in ordered if shard_of(task.name, count) == index]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def save_png_atomic(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG to ``path`` atomically: a hidden temp file in the same folder,
    flushed to disk, then ``os.replace``. An interrupted write leaves at most a
    ``.<name>.<random>.synthex-tmp`` file, never a half PNG under the real name."""
    atomic_write(path, lambda handle: img.save(handle, format="PNG"), suffix=_TEMP_SUFFIX)

def _export_one(job: tuple[ExportTask, str, int, str]) -> tuple[str, str, str]:
    """Worker: read, transform and write one task. Returns ``(status, name, reason)`` with
    status "written" or "rejected". Only unreadable inputs are rejects; a failure to write
    (disk full, permissions) propagates and stops the export."""
    task, out_dir, size, mode = job
    try:
        img = read_image(task.source)
    except ImageReadError as exc:
        return "rejected", task.name, getattr(exc, "reason", None) or str(exc)
    problem = transform_problem(img.size, size)
    if problem:
        return "rejected", task.name, problem
    save_png_atomic(prepare_image(img, size, mode), Path(out_dir) / task.name)
    return "written", task.name, ""


def transform_problem(image_size: tuple[int, int], size: int) -> str | None:
    """Why an image of ``image_size`` cannot take the thesis transform to ``size``, or None.

    Resizing the short side to ``size`` multiplies the long side by ``size / short``: a 1 x 60000
    strip would become a 1024 x 61 million image. Such images (and empty ones) are rejects.
    """
    width, height = image_size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height} pixels)"
    short, long = min(width, height), max(width, height)
    resized = size * max(size, int(long * size / short + 0.5))
    limit = Image.MAX_IMAGE_PIXELS or _FALLBACK_PIXEL_LIMIT
    if resized > limit:
        return (f"aspect ratio {width}x{height} is too extreme: resizing its short side to {size} "
                f"would make a {resized:,}-pixel image (limit {limit:,})")
    return None


def _check_tasks(tasks: Sequence[ExportTask]) -> None:
    """Raise ``ValueError`` for an unsafe, non-PNG or duplicated output name."""
    seen: set[str] = set()
    for task in tasks:
        name = PurePosixPath(task.name)
        if name.is_absolute() or ".." in name.parts or not name.parts or "\\" in task.name:
            raise ValueError(
                f"output name {task.name!r} (for {task.source}) must be a relative POSIX path "
                "inside the output folder, e.g. 'images/1_IM-0001-4001.png'"
            )
        if name.suffix.lower() != ".png":
            raise ValueError(
                f"output name {task.name!r} must end in .png (images are saved as PNG)"
            )
        if str(name) in seen:
            raise ValueError(f"output name {task.name!r} is used by more than one task")
        seen.add(str(name))


def _remove_stale_temps(
    out_dir: Path, tasks: Sequence[ExportTask], extra: Sequence[Path] = ()
) -> int:
    """Delete temp files left by an interrupted run, but only those of OUR outputs (tasks and
    ``extra`` files; a concurrent export of another shard into the same folder keeps its own)."""
    targets = {(out_dir / task.name) for task in tasks} | set(extra)
    removed = 0
    for folder in {path.parent for path in targets}:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not (entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX)):
                continue
            target = entry.name[1 : -len(_TEMP_SUFFIX)].rsplit(".", 1)[0]
            if folder / target in targets:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
    return removed


def _export_chunk(jobs: list[tuple[ExportTask, str, int, str]]) -> list[tuple[str, str, str]]:
    """Worker: export a chunk of jobs (chunks amortise inter-process overhead)."""
    return [_export_one(job) for job in jobs]


def _run_jobs(
    jobs: list[tuple[ExportTask, str, int, str]], workers: int
) -> Iterator[tuple[str, str, str]]:
    """Yield worker outcomes as they complete: in-process for one worker, else from a
    ``ProcessPoolExecutor`` started with "spawn" (not "fork": safe when the caller holds threads,
    e.g. torch or a UI server; a worker that dies raises instead of hanging)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_export_one, jobs)
        return
    processes = min(workers, len(jobs))
    chunk_size = max(1, min(8, len(jobs) // (processes * 4)))
    chunks = [jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_export_chunk, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                yield from future.result()
        except BrokenProcessPool as exc:
            raise RuntimeError(
                "image export worker processes died or could not start; a script that calls "
                "export_images with workers > 1 must guard its entry point with "
                "`if __name__ == '__main__':` (or use workers=1)"
            ) from exc
        finally:
            for future in futures:
                future.cancel()


def rejects_path(out_dir: Path, rejects_file: str, shard: tuple[int, int] | None) -> Path:
    """Where the rejects CSV goes: ``out_dir/rejects.csv``, or ``rejects.shard-K-of-N.csv``
    for a shard, so that shards exported concurrently into one folder do not clash."""
    path = Path(out_dir) / rejects_file
    if shard is None:
        return path
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")


def write_rejects(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """Write (source, name, reason) rows atomically (LF line ends); always written (header only
    when there are none) so the file describes the latest run."""
    import io

    from synthex.io import atomic_write

    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(REJECTS_COLUMNS)
    writer.writerows(rows)
    atomic_write(path, lambda handle: handle.write(text.getvalue().encode("utf-8")), suffix=_TEMP_SUFFIX)


def export_images(
    tasks: Sequence[ExportTask],
    out_dir: Path,
    *,
    size: int = DEFAULT_SIZE,
    mode: str = "RGB",
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    rejects_file: str = "rejects.csv",
    callback: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Export source images to ``out_dir/<task.name>`` as ``size`` x ``size`` PNGs.

    Steps: (1) validate arguments and names; (2) keep this shard's tasks (:func:`select_shard`);
    (3) delete temp files left by an interrupted run; (4) skip tasks whose output exists
    (resume); (5) read/transform/write the rest with ``workers`` processes, each write atomic;
    (6) list unreadable sources in the rejects CSV (:func:`rejects_path`) and log their count.
    ``callback(done, total)`` is called after each image (for a UI); ``progress`` shows tqdm.
    Reading errors never stop the export; writing errors do (they are not the image's fault).
    """
    _check_size(size)
    _check_mode(mode)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    _check_tasks(tasks)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL ImageFile.LOAD_TRUNCATED_IMAGES is True in this process (set by "
                       "another library): with workers=1 truncated images may load silently")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = select_shard(tasks, shard)
    reject_csv = rejects_path(out_dir, rejects_file, shard)
    stale = _remove_stale_temps(out_dir, selected, extra=[reject_csv])
    if stale:
        logger.info("removed %d temp file(s) left by an interrupted export", stale)
    todo = [task for task in selected if not (out_dir / task.name).exists()]
    report = ExportReport(
        skipped_existing=len(selected) - len(todo), workers=workers, rejects_path=reject_csv
    )
    report.rejected, rows = _export_todo(todo, out_dir, size, mode, workers, progress, callback)
    report.written = len(todo) - len(rows)
    write_rejects(reject_csv, rows)
    report.seconds = time.perf_counter() - start
    if rows:
        logger.warning("%d of %d image(s) could not be read and were not exported; see %s",
                       len(rows), len(selected), reject_csv)
    logger.info("exported %d image(s), skipped %d existing, rejected %d in %.1f s (%d worker(s))",
                report.written, report.skipped_existing, len(rows), report.seconds, workers)
    return report


def _export_todo(
    todo: list[ExportTask],
    out_dir: Path,
    size: int,
    mode: str,
    workers: int,
    progress: bool,
    callback: Callable[[int, int], None] | None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Run the jobs with a progress bar; return ``(rejected, reject_rows)`` sorted by name."""
    sources = {task.name: str(task.source) for task in todo}
    jobs = [(task, str(out_dir), size, mode) for task in todo]
    rows: list[tuple[str, str, str]] = []
    with tqdm(total=len(jobs), disable=not progress, desc="export images", unit="img") as bar:
        for done, (status, name, reason) in enumerate(_run_jobs(jobs, workers), start=1):
            if status == "rejected":
                rows.append((sources[name], name, reason))
                logger.debug("rejected %s: %s", sources[name], reason)
            bar.update(1)
            if callback is not None:
                callback(done, len(jobs))
    rows.sort(key=lambda row: row[1])
    return [(source, reason) for source, _, reason in rows], rows
