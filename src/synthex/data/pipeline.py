"""``synthex data prepare``: source -> cleaned, selected, captioned, split imagefolder + data card.

Steps (each writes what it found into the output folder):
1. read the source and check its integrity (``integrity.json/md``);
2. clean findings and impression with the rule table (``cleaning.csv``);
3. select rows with a preset (``selection.csv`` log, ``excluded.csv`` rows);
4. build prompts and count CLIP tokens;
5. export images when present (``images/``, ``rejects.csv``; resumable, shardable);
6. write ``metadata.csv`` (imagefolder) or ``captions.csv`` (text-only) and the data card.

An output folder is refused when it already holds a finished run, unless ``overwrite``; a run
interrupted during the image export resumes when started again with the same configuration.
``overwrite`` removes only the files a previous prepare wrote (listed in ``prepare.json``), and
only after the new source has been read; ``--source``/``--images`` inside ``--out`` (or
``--out`` inside them) are refused. Options are checked before anything is read or written.
Nothing is dropped silently: unreadable images and rows the source contradicts (a uid listed
twice with different reports) are listed in ``rejects.csv``; a run that yields no image or row
at all is an error, not a finished run.
"""
from __future__ import annotations

import csv
import fnmatch
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthex import __version__
from synthex.data import card as card_mod
from synthex.data import mesh as mesh_mod
from synthex.data.cleaning import Cleaner, CleaningReport, load_rules
from synthex.data.images import TEMP_SUFFIX, write_rejects
from synthex.data.integrity import IntegrityReport, check_integrity
from synthex.data.prompts import TokenStats, build_prompts, token_stats
from synthex.data.selection import Selection, get_preset, select
from synthex.data.sources import load_tables
from synthex.errors import ConfigError, DataSourceError, OutputExistsError
from synthex.io import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "prepare.json"
MAX_SIZE = 8192
REJECTS = "rejects.csv"
#: files a prepare run writes (relative to --out); --overwrite removes these and no others
OWN_FILES = (
    "integrity.json", "integrity.md", "cleaning.csv", "selection.csv", "excluded.csv", "token_stats.json",
    "captions.csv", "missing_images.csv", "metadata.csv", REJECTS, "DATA_CARD.md",
    "card/finding_frequencies.png", "card/combinations.png", "card/caption_tokens.png", "card/split.png",
)
OWN_PATTERNS = ("metadata-shard*of*.csv", "rejects.shard-*-of-*.csv", ".*.synthex-tmp", "*.tmp")
IMAGES_DIR = "images"
METADATA_COLUMNS = [
    "file_name", "text", "uid", "image_id", "split", "is_normal", "labels", "mesh", "projection",
]


@dataclass
class PrepareOptions:
    """Everything that defines a prepare run (saved in ``prepare.json``)."""

    source: str
    preset: str = "all"
    presets_file: str | None = None
    rules_file: str | None = None
    images: str | None = None
    size: int = 1024
    mode: str = "RGB"
    workers: int = 1
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    progress: bool = True
    card: bool = True

    def validate(self) -> None:
        """Check every option up front; raise :class:`ConfigError` naming the option and the fix."""
        from synthex.data.images import OUTPUT_MODES, _check_shard

        if not isinstance(self.source, (str, os.PathLike)) or not str(self.source).strip():
            raise ConfigError("--source is empty: give a Kaggle/Open-i folder, a .tgz or 'bundled'.")
        if not _is_int(self.size) or not 1 <= self.size <= MAX_SIZE:
            raise ConfigError(f"--size {self.size!r}: give the output image side as a whole number of pixels "
                              f"from 1 to {MAX_SIZE} (the thesis used 1024).")
        mode = self.mode.upper() if isinstance(self.mode, str) else self.mode
        if mode not in OUTPUT_MODES:
            raise ConfigError(f"--mode {self.mode!r}: use RGB (as the thesis) or L (grey).")
        self.mode = mode
        if not _is_int(self.workers) or self.workers < 1:
            raise ConfigError(f"--workers {self.workers!r}: give 1 or more image worker processes.")
        if self.shard is not None:
            try:
                self.shard = _check_shard(tuple(self.shard) if isinstance(self.shard, list) else self.shard)
            except ConfigError as err:
                raise ConfigError(f"--shard: {err}") from None
        if not isinstance(self.preset, str) or not self.preset:
            raise ConfigError(f"--preset {self.preset!r}: give a preset name (see 'synthex data presets').")

    def identity(self) -> dict[str, Any]:
        """The options that must match for a resume (not workers/progress/shard)."""
        keep = ("source", "preset", "presets_file", "rules_file", "images", "size", "mode")
        return {k: getattr(self, k) for k in keep}


@dataclass
class PrepareResult:
    """What a prepare run produced."""

    out_dir: Path
    integrity: IntegrityReport
    cleaning: CleaningReport
    selection: Selection
    tokens: TokenStats
    table: pd.DataFrame
    images_written: int = 0
    images_skipped: int = 0
    images_rejected: int = 0
    images_missing: int = 0
    complete: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    #: rejects.csv rows for source rows left out (a uid listed twice with different reports, ...)
    source_rejects: list[tuple[str, str, str]] = field(default_factory=list)
    rows_rejected: int = 0
    #: output names of the images this run exports (recorded in prepare.json for --overwrite)
    image_names: list[str] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_shard_option(text: str) -> tuple[int, int]:
    """``--shard K/N`` -> ``(K, N)``; a :class:`ConfigError` naming ``--shard`` otherwise."""
    from synthex.data.images import parse_shard

    try:
        return parse_shard(text)
    except ConfigError as err:
        raise ConfigError(f"--shard: {err}") from None


def _check_paths(out: Path, options: PrepareOptions) -> None:
    """Refuse an input inside --out (--overwrite would delete it) and --out inside an input
    (the prepared images would be mixed with, and read back as, source images)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder.")
    out_abs = out.resolve()
    inputs = [("--images", options.images)]
    if str(options.source) != "bundled":
        inputs.insert(0, ("--source", options.source))
    for flag, value in inputs:
        if value is None:
            continue
        path = Path(value).resolve()
        if path == out_abs or out_abs in path.parents:
            raise DataSourceError(
                f"{flag} {value} is inside --out {out}: prepare writes (and --overwrite clears) --out, so "
                f"the input must live elsewhere; choose an --out outside {value}.")
        if path in out_abs.parents:
            raise DataSourceError(
                f"--out {out} is inside {flag} {value}: the prepared images would be mixed with the source "
                f"and read back as source images by a later run; choose an --out outside {value}.")


def _read_manifest(out: Path) -> dict:
    manifest = out / MANIFEST
    try:
        body = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputExistsError(
            f"{manifest} is unreadable ({err}); it is not a prepare run to resume: choose a new --out, or "
            "delete the folder yourself.") from None
    if not isinstance(body, dict):
        raise OutputExistsError(f"{manifest} is not a prepare manifest; choose a new --out.")
    return body


def _check_out_dir(out: Path, options: PrepareOptions) -> dict | None:
    """Refuse to clobber: finished run -> need overwrite; other config -> refuse; foreign folder
    -> refuse. Returns the previous manifest (None for a new or empty folder). Deletes nothing."""
    if not out.exists() or not any(out.iterdir()):
        return None
    if not (out / MANIFEST).is_file():
        raise OutputExistsError(
            f"--out {out} is not empty and was not made by 'synthex data prepare'; choose a new folder."
        )
    previous = _read_manifest(out)
    if options.overwrite:
        return previous
    if previous.get("complete"):
        raise OutputExistsError(f"--out {out} already holds a finished run; pass --overwrite to redo it.")
    if previous.get("options") != _jsonable(options.identity()):
        raise OutputExistsError(
            f"--out {out} holds an interrupted run with different options ({previous.get('options')}); "
            "rerun with the same options to resume, or pass --overwrite."
        )
    log.info("resuming the interrupted run in %s", out)
    return previous


def _remove_previous(out: Path, previous: dict) -> int:
    """--overwrite: delete what the previous prepare wrote (fixed names, shard/temp files, and the
    images named in its manifest; ``images/*.png`` for a manifest that does not list them).
    Anything else in --out (a user's own file) stays. Returns the number of files removed."""
    targets = [out / name for name in OWN_FILES]
    for folder in (out, out / "card", out / IMAGES_DIR):
        if folder.is_dir():
            targets += [p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in OWN_PATTERNS)]
    images = previous.get("images")
    if isinstance(images, list):
        targets += [out / str(name) for name in images]
    elif (out / IMAGES_DIR).is_dir():
        targets += list((out / IMAGES_DIR).glob("*.png"))
    removed = 0
    for path in targets:
        try:
            if path.is_file() and out.resolve() in path.resolve().parents:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    for folder in (out / "card", out / IMAGES_DIR):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)
    log.info("--overwrite: removed %d file(s) of the previous run in %s", removed, out)
    return removed


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _write_manifest(out: Path, options: PrepareOptions, complete: bool, extra: dict | None = None) -> None:
    body = {"software": f"SynTheX-Ray {__version__}", "options": _jsonable(options.identity()),
            "complete": complete, **(extra or {})}
    text = json.dumps(body, indent=2, default=str) + "\n"
    atomic_write(out / MANIFEST, lambda handle: handle.write(text.encode("utf-8")), suffix=TEMP_SUFFIX)


def clean_table(frame: pd.DataFrame, cleaner: Cleaner) -> tuple[pd.DataFrame, CleaningReport]:
    """Add ``findings_clean`` and ``impression_clean`` (each distinct report cleaned once)."""
    reports = frame.drop_duplicates("uid")[["uid", "findings", "impression"]]
    texts = list(reports["findings"]) + list(reports["impression"])
    cleaned, report = cleaner.clean_many(texts)
    n = len(reports)
    lookup = pd.DataFrame({"uid": reports["uid"].to_numpy(), "findings_clean": cleaned[:n],
                           "impression_clean": cleaned[n:]})
    return frame.merge(lookup, on="uid", how="left"), report


def _metadata(selected: pd.DataFrame) -> pd.DataFrame:
    meta = selected.copy()
    meta["file_name"] = "images/" + meta["image_id"] + ".png"
    meta["labels"] = meta["mesh"].map(lambda m: ";".join(mesh_mod.headings(m)))
    extra = [c for c in ("is_subset_positive",) if c in meta.columns]
    return meta[METADATA_COLUMNS + extra]


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    text = frame.to_csv(index=False, lineterminator="\n")
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), suffix=TEMP_SUFFIX)


def prepare(out_dir: str | Path, options: PrepareOptions) -> PrepareResult:
    """Run the whole data stage; see the module docstring for the files written."""
    out = Path(out_dir)
    options.validate()
    _check_paths(out, options)
    previous = _check_out_dir(out, options)
    preset = get_preset(options.preset, options.presets_file)
    cleaner = Cleaner(load_rules(options.rules_file))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tables = load_tables(options.source, images=options.images)
    integrity, table = check_integrity(tables)
    timings["read"] = time.perf_counter() - t0
    known: list[str] = []
    if options.overwrite and previous is not None:  # only now that the new source has been read
        _remove_previous(out, previous)
    elif previous is not None and isinstance(previous.get("images"), list):
        known = [str(name) for name in previous["images"]]  # resuming: keep the record of its images
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, options, complete=False, extra={"images": known})
    integrity.save(out)

    t0 = time.perf_counter()
    table, cleaning = clean_table(table, cleaner)
    timings["clean"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    selection = select(table, preset)
    timings["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = selection.selected
    if chosen.empty:
        _write_tables(out, PrepareResult(out, integrity, cleaning, selection, token_stats([])[0], chosen))
        write_rejects(out / REJECTS, _source_rejects(tables))
        raise DataSourceError(
            f"--source {options.source}: no rows left to prepare ({integrity.common_uids:,} uids with report "
            f"and images, {len(tables.rejected):,} source rows rejected, see {out / REJECTS}; the selection "
            f"steps are in {out / 'selection.csv'}); check the source or choose another --preset.")
    trigger_mask = chosen.get("is_subset_positive") if preset.get("subset") else None
    chosen["text"] = build_prompts(chosen, preset.get("trigger"), trigger_mask)
    tokens, counts = token_stats(list(chosen["text"]))
    chosen["clip_tokens"] = counts
    timings["prompts"] = time.perf_counter() - t0

    result = PrepareResult(out, integrity, cleaning, selection, tokens, chosen, timings=timings, image_names=known)
    result.source_rejects = _source_rejects(tables)
    result.rows_rejected = len(result.source_rejects)
    _write_tables(out, result)
    _export(out, result, options)
    if options.card:
        t0 = time.perf_counter()
        card_mod.write_card(out, result, preset_name=options.preset, preset=preset)
        timings["card"] = time.perf_counter() - t0
    _write_manifest(out, options, complete=result.complete, extra={
        "rows": len(chosen), "images_written": result.images_written, "timings_s": timings,
        "shard": options.shard, "images": result.image_names,
    })
    return result


def _write_tables(out: Path, result: PrepareResult) -> None:
    cleaning_frame = result.cleaning.to_frame()
    _write_csv(cleaning_frame, out / "cleaning.csv")
    _write_csv(result.selection.log_frame(), out / "selection.csv")
    excluded = result.selection.excluded
    cols = [c for c in ("uid", "image_id", "projection", "mesh", "excluded_by") if c in excluded.columns]
    _write_csv(excluded[cols] if cols else pd.DataFrame(columns=["uid", "image_id", "excluded_by"]),
               out / "excluded.csv")
    (out / "token_stats.json").write_text(json.dumps(asdict(result.tokens), indent=2) + "\n")


def _source_rejects(tables) -> list[tuple[str, str, str]]:
    """Rows the source contradicts (see :func:`resolve_duplicates`) as rejects.csv rows."""
    return [(row.origin, f"{IMAGES_DIR}/{row.image_id}.png" if row.image_id else f"uid {row.uid}", row.reason)
            for row in tables.rejected.itertuples(index=False)]


def _read_rejects(path: Path) -> list[tuple[str, str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [tuple(row) for row in list(csv.reader(handle))[1:] if len(row) == 3]


def _export(out: Path, result: PrepareResult, options: PrepareOptions) -> None:
    """Export images (if any) and write metadata.csv, or captions.csv for a text-only source."""
    from synthex.data.images import ExportTask, export_images, rejects_path, select_shard

    chosen = result.table
    meta = _metadata(chosen)
    have = chosen["image_path"].notna().to_numpy()
    if not have.any():
        write_rejects(out / REJECTS, result.source_rejects)
        if result.integrity.images_present:
            raise DataSourceError(
                f"--source {options.source}: none of the {len(meta):,} selected images is in the image folder "
                f"({result.integrity.images_present:,} other images are); point --images at the folder that "
                "holds the selected images.")
        _write_csv(meta, out / "captions.csv")
        log.info("no images present: wrote captions.csv for %d rows (text-only run)", len(meta))
        return
    result.images_missing = int((~have).sum())
    if result.images_missing:
        missing = chosen.loc[~have, ["uid", "image_id"]].assign(reason="image file not found")
        _write_csv(missing, out / "missing_images.csv")
        log.warning("%d selected rows have no image file; listed in missing_images.csv", result.images_missing)
    tasks = [ExportTask(Path(p), n) for p, n in zip(chosen.loc[have, "image_path"], meta.loc[have, "file_name"])]
    result.image_names = sorted(set(result.image_names) | {t.name for t in tasks})
    # the manifest lists the images this run writes before writing them, so --overwrite can
    # remove exactly those even after an interruption
    _write_manifest(out, options, complete=False, extra={"images": result.image_names})
    t0 = time.perf_counter()
    report = export_images(tasks, out, size=options.size, mode=options.mode, workers=options.workers,
                           shard=options.shard, progress=options.progress)
    result.timings["images"] = time.perf_counter() - t0
    result.images_written, result.images_skipped = report.written, report.skipped_existing
    result.images_rejected = len(report.rejected)
    image_rejects = _read_rejects(report.rejects_path)
    if options.shard is not None:  # what every shard run so far rejected (each writes its own file)
        n = options.shard[1]
        for k in range(n):
            if k != options.shard[0]:
                image_rejects += _read_rejects(rejects_path(out, REJECTS, (k, n)))
    rejected = {name for _, name, _ in image_rejects}
    in_meta = meta[have]
    present = in_meta[~in_meta["file_name"].isin(rejected).to_numpy()]
    present = present[np.array([(out / f).is_file() for f in present["file_name"]], dtype=bool)]
    if options.shard is not None:
        k, n = options.shard
        mine = {t.name for t in select_shard(tasks, options.shard)}
        _write_csv(present[present["file_name"].isin(mine)], out / f"metadata-shard{k}of{n}.csv")
    expected = len(tasks) - len(rejected & {t.name for t in tasks})
    all_rows = result.source_rejects + sorted(image_rejects, key=lambda row: row[1])
    if options.shard is None or len(present) == expected:
        write_rejects(out / REJECTS, all_rows)
    if expected == 0:
        result.complete = False
        raise DataSourceError(
            f"--source {options.source}: none of the {len(tasks):,} selected images could be read "
            f"({len(rejected):,} rejected, {result.rows_rejected:,} source rows rejected; reasons in "
            f"{out / REJECTS}); re-export or re-download the images. The run is not marked complete.")
    result.complete = len(present) == expected
    if result.complete:
        _write_csv(present, out / "metadata.csv")
    else:
        log.info("%d of %d images present; metadata.csv is written when every shard has run",
                 len(present), expected)
