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
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from synthex import __version__
from synthex.data import card as card_mod
from synthex.data import mesh as mesh_mod
from synthex.data.cleaning import Cleaner, CleaningReport, load_rules
from synthex.data.integrity import IntegrityReport, check_integrity
from synthex.data.prompts import TokenStats, build_prompts, token_stats
from synthex.data.selection import Selection, get_preset, select
from synthex.data.sources import load_tables
from synthex.errors import OutputExistsError

log = logging.getLogger(__name__)

MANIFEST = "prepare.json"
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


def _check_out_dir(out: Path, options: PrepareOptions) -> None:
    """Refuse to clobber: finished run -> need overwrite; other config -> refuse; foreign folder -> refuse."""
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise OutputExistsError(
            f"--out {out} is not empty and was not made by 'synthex data prepare'; choose a new folder."
        )
    previous = json.loads(manifest.read_text())
    if options.overwrite:
        log.info("--overwrite: removing the previous run in %s", out)
        for name in os.listdir(out):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        return
    if previous.get("complete"):
        raise OutputExistsError(f"--out {out} already holds a finished run; pass --overwrite to redo it.")
    if previous.get("options") != _jsonable(options.identity()):
        raise OutputExistsError(
            f"--out {out} holds an interrupted run with different options ({previous.get('options')}); "
            "rerun with the same options to resume, or pass --overwrite."
        )
    log.info("resuming the interrupted run in %s", out)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _write_manifest(out: Path, options: PrepareOptions, complete: bool, extra: dict | None = None) -> None:
    body = {"software": f"SynTheX-Ray {__version__}", "options": _jsonable(options.identity()),
            "complete": complete, **(extra or {})}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
    os.replace(tmp, out / MANIFEST)


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
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def prepare(out_dir: str | Path, options: PrepareOptions) -> PrepareResult:
    """Run the whole data stage; see the module docstring for the files written."""
    out = Path(out_dir)
    _check_out_dir(out, options)
    preset = get_preset(options.preset, options.presets_file)
    cleaner = Cleaner(load_rules(options.rules_file))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tables = load_tables(options.source, images=options.images)
    integrity, table = check_integrity(tables)
    timings["read"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, options, complete=False)
    integrity.save(out)

    t0 = time.perf_counter()
    table, cleaning = clean_table(table, cleaner)
    timings["clean"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    selection = select(table, preset)
    timings["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = selection.selected
    trigger_mask = chosen.get("is_subset_positive") if preset.get("subset") else None
    chosen["text"] = build_prompts(chosen, preset.get("trigger"), trigger_mask)
    tokens, counts = token_stats(list(chosen["text"]))
    chosen["clip_tokens"] = counts
    timings["prompts"] = time.perf_counter() - t0

    result = PrepareResult(out, integrity, cleaning, selection, tokens, chosen, timings=timings)
    _write_tables(out, result)
    _export(out, result, options)
    if options.card:
        t0 = time.perf_counter()
        card_mod.write_card(out, result, preset_name=options.preset, preset=preset)
        timings["card"] = time.perf_counter() - t0
    _write_manifest(out, options, complete=result.complete, extra={
        "rows": len(chosen), "images_written": result.images_written, "timings_s": timings,
        "shard": options.shard,
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


def _export(out: Path, result: PrepareResult, options: PrepareOptions) -> None:
    """Export images (if any) and write metadata.csv, or captions.csv for a text-only source."""
    from synthex.data.images import ExportTask, export_images, select_shard

    chosen = result.table
    meta = _metadata(chosen)
    have = chosen["image_path"].notna()
    if not have.any():
        _write_csv(meta, out / "captions.csv")
        log.info("no images present: wrote captions.csv for %d rows (text-only run)", len(meta))
        return
    result.images_missing = int((~have).sum())
    if result.images_missing:
        missing = chosen.loc[~have, ["uid", "image_id"]].assign(reason="image file not found")
        _write_csv(missing, out / "missing_images.csv")
        log.warning("%d selected rows have no image file; listed in missing_images.csv", result.images_missing)
    tasks = [ExportTask(Path(p), n) for p, n in zip(chosen.loc[have, "image_path"], meta.loc[have, "file_name"])]
    t0 = time.perf_counter()
    report = export_images(tasks, out, size=options.size, mode=options.mode, workers=options.workers,
                           shard=options.shard, progress=options.progress)
    result.timings["images"] = time.perf_counter() - t0
    result.images_written, result.images_skipped = report.written, report.skipped_existing
    result.images_rejected = len(report.rejected)
    rejected = {name for _, name in _rejected_names(report, tasks)}
    present = meta[have & ~meta["file_name"].isin(rejected)]
    present = present[[(out / f).is_file() for f in present["file_name"]]]
    if options.shard is not None:
        k, n = options.shard
        mine = {t.name for t in select_shard(tasks, options.shard)}
        _write_csv(present[present["file_name"].isin(mine)], out / f"metadata-shard{k}of{n}.csv")
    expected = len(tasks) - result.images_rejected
    result.complete = len(present) == expected
    if result.complete:
        _write_csv(present, out / "metadata.csv")
    else:
        log.info("%d of %d images present; metadata.csv is written when every shard has run",
                 len(present), expected)


def _rejected_names(report, tasks) -> list[tuple[str, str]]:
    by_source = {str(t.source): t.name for t in tasks}
    return [(src, by_source.get(src, "")) for src, _ in report.rejected]

