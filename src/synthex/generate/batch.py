"""``synthesize``: a prompts file -> a synthetic imagefolder, resumable and multi-process.

Layout of the output folder::

    OUT/
      images/000000.png ...       one PNG per job, A1111 parameters + Synthetic=true
      metadata.csv                file_name, prompt, text, negative_prompt, seed, ..., synthetic
                                  (a source column that clashes: file_name -> source_image, ...)
      samples.jsonl               the same rows as JSON lines (typed values)
      synthesize.json             the resolved run configuration (checked on resume)
      .synthex/records-<rank>.jsonl   per-process records, one line per finished image

The job list is deterministic: job ``j`` has seed ``base_seed + j`` and file
``images/{j:06d}.png``. A job is finished when its image exists AND its record line does.
Records are appended (one ``write`` + fsync per image) after the image's atomic write, so an
interrupted run resumes without a duplicate or a lost row; the metadata files are rebuilt from
the records at the end. Under ``accelerate launch`` job ``j`` belongs to process
``j % num_processes``; each process writes its own records file and the main process merges them
after ``wait_for_everyone``.

The folder loads directly with ``datasets.load_dataset("imagefolder", data_dir=OUT)`` (only
``metadata.csv`` is an imagefolder metadata name; the JSON-lines copy is ``samples.jsonl`` so the
folder scan does not see two metadata formats). Label columns carried over from the prompts file
never use a name imagefolder reads as an image column (``file_name``, ``*_file_name``,
``file_names``, ``*_file_names``, ``image``) or one of the output columns.

Everything (prompts file, counts, every job's request, the model and its LoRAs) is checked before
anything is written to the output folder, so a refused command leaves nothing behind that would
make the corrected command a "resume with other settings".
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.defaults import (
    DEFAULT_CLIP_SKIP,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_MODEL,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DEFAULT_WIDTH,
)
from synthex.generate.engine import Engine, GenerationRequest, parse_seed, random_seed
from synthex.generate.samplers import canonical_sampler_name

logger = logging.getLogger(__name__)

PROMPT_COLUMNS = ("prompt", "text")
NEGATIVE_COLUMNS = ("negative_prompt", "negative")
COUNT_COLUMN = "count"
IMAGE_COLUMNS = ("init_image", "mask", "strength")
"""Optional img2img/inpainting columns: ``init_image`` and ``mask`` paths (relative to the
prompts file's folder), ``strength`` (empty: the default). They are also carried as labels."""
CONFIG_NAME = "synthesize.json"
RECORDS_DIR = ".synthex"
IMAGES_DIR = "images"
OUTPUT_COLUMNS = ("file_name", "prompt", "text", "prompt_language", "negative_prompt", "seed",
                  "steps", "cfg_scale", "sampler", "model", "model_hash", "width", "height",
                  "synthetic", "job")
"""Columns synthesize writes itself; a source column of the same name is renamed."""
_IMAGE_BASE = "image"


# --------------------------------------------------------------------------------------------
# Options, jobs, result
# --------------------------------------------------------------------------------------------
@dataclass
class SynthesizeOptions:
    """How to turn a prompts file into images. Counts: ``per_prompt`` images per row, or the
    ``counts_column`` (default ``count`` when present), or ``per_class`` images per value of
    ``class_column`` spread round-robin over that class's rows."""

    prompts_file: Path
    out: Path
    per_prompt: int | None = None
    counts_column: str | None = None
    per_class: int | None = None
    class_column: str | None = None
    model: str = DEFAULT_MODEL
    loras: Sequence[tuple[str, float]] = ()
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    schedule_type: str | None = None
    clip_skip: int = DEFAULT_CLIP_SKIP
    negative_prompt: str = ""
    width: int | None = DEFAULT_WIDTH
    height: int | None = DEFAULT_HEIGHT
    seed: int | str | None = 0
    device: str | None = None
    dtype: str | None = None
    max_images: int | None = None
    """Stop after this many new images in this process (resume later)."""
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Job:
    index: int
    row: int
    prompt: str
    negative_prompt: str
    seed: int
    file_name: str
    labels: dict[str, Any] = field(default_factory=dict)
    init_image: str | None = None
    """Path of the init image (resolved against the prompts file's folder), or None."""
    mask: str | None = None
    strength: str | None = None
    """The row's ``strength`` text (checked by the request), or None for the default."""


@dataclass
class SynthesizeResult:
    out: Path
    total: int
    done: int
    generated: int
    """Images made by this process in this run."""
    complete: bool
    processes: int = 1
    metadata_csv: Path | None = None
    metadata_jsonl: Path | None = None
    base_seed: int | None = None
    random_seed: bool = False
    """True when the base seed was drawn at random (``seed`` -1/None); it is in synthesize.json."""


# --------------------------------------------------------------------------------------------
# 1. Reading the prompts file
# --------------------------------------------------------------------------------------------
def read_prompts(path: str | os.PathLike[str]) -> Any:
    """A CSV or JSONL prompts file as a DataFrame (all columns kept), with clear errors."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SynthexError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8-sig")
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.DataFrame(_read_jsonl(path))
        else:
            raise SynthexError(f"{path}: prompts must be a .csv or .jsonl file, got {suffix or 'no suffix'}")
    except UnicodeDecodeError as exc:
        raise SynthexError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
            f"{exc.start}); save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel, or "
            f"iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix})") from None
    except pd.errors.EmptyDataError:
        raise SynthexError(f"{path}: the prompts file is empty") from None
    except pd.errors.ParserError as exc:
        raise SynthexError(f"{path}: not a readable CSV file ({exc})") from exc
    if frame.empty:
        raise SynthexError(f"{path}: the prompts file has no rows")
    return frame


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SynthexError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SynthexError(f"{path}, line {number}: each line must be a JSON object")
        rows.append(row)
    return rows


def _prompt_column(frame: Any, path: Path) -> str:
    for name in PROMPT_COLUMNS:
        if name in frame.columns:
            return name
    raise SynthexError(f"{path}: no 'prompt' or 'text' column; columns found: "
                       f"{', '.join(map(str, frame.columns))}")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


# --------------------------------------------------------------------------------------------
# 2. The deterministic job list
# --------------------------------------------------------------------------------------------
def _counts(frame: Any, options: SynthesizeOptions, path: Path) -> list[int]:
    chosen = [options.per_prompt is not None, options.per_class is not None,
              options.counts_column is not None]
    if sum(chosen) > 1:
        raise SynthexError("give only one of per_prompt, per_class and counts_column")
    if options.per_class is not None:
        return _class_counts(frame, options, path)
    if options.per_prompt is not None:
        if options.per_prompt < 1:
            raise SynthexError(f"per_prompt must be >= 1, got {options.per_prompt}")
        return [options.per_prompt] * len(frame)
    column = options.counts_column or (COUNT_COLUMN if COUNT_COLUMN in frame.columns else None)
    if column is None:
        return [1] * len(frame)
    if column not in frame.columns:
        raise SynthexError(f"{path}: counts column {column!r} not found; columns: "
                           f"{', '.join(map(str, frame.columns))}")
    return [_count(value, path, column, i) for i, value in enumerate(frame[column])]


def _count(value: Any, path: Path, column: str, row: int) -> int:
    try:
        number = float(_text(value))
    except ValueError:
        number = float("nan")
    if not number == number or number < 0 or int(number) != number:
        raise SynthexError(f"{path}, row {row + 1}, column {column!r}: count must be a whole "
                           f"number >= 0, got {_text(value)!r}")
    return int(number)


def _class_counts(frame: Any, options: SynthesizeOptions, path: Path) -> list[int]:
    column = options.class_column
    if not column or column not in frame.columns:
        raise SynthexError(f"{path}: per_class needs class_column naming a column; got {column!r}, "
                           f"columns: {', '.join(map(str, frame.columns))}")
    if options.per_class < 1:
        raise SynthexError(f"per_class must be >= 1, got {options.per_class}")
    counts = [0] * len(frame)
    groups: dict[str, list[int]] = {}
    for i, value in enumerate(frame[column]):
        groups.setdefault(_text(value), []).append(i)
    for rows in groups.values():
        for k in range(options.per_class):
            counts[rows[k % len(rows)]] += 1
    return counts


def label_column(name: str) -> str:
    """The output name of a source column: output columns and names imagefolder reads as image
    columns get another one (``file_name`` -> ``source_image``, ``seed`` -> ``source_seed``,
    ``xray_file_name`` -> ``xray_file``, ``image`` -> ``source_image``...)."""
    name = str(name)
    if name in ("file_name", _IMAGE_BASE):
        return "source_image"
    if name in ("file_names", f"{_IMAGE_BASE}s"):
        return "source_images"
    if name.endswith("_file_name"):
        return name[: -len("_name")]
    if name.endswith("_file_names"):
        return name[: -len("_names")] + "s"
    return f"source_{name}" if name in OUTPUT_COLUMNS else name


def label_columns(columns: Sequence[Any], skip: set[str]) -> dict[str, str]:
    """Source column -> output column for the label columns, clashes numbered (``_2``...)."""
    out: dict[str, str] = {}
    taken = set(OUTPUT_COLUMNS) | {str(c) for c in columns if str(c) not in skip}
    for column in columns:
        key = str(column)
        if key in skip:
            continue
        name = label_column(key)
        if name != key:
            base, k = name, 2
            while name in taken or name in out.values():
                name, k = f"{base}_{k}", k + 1
        out[key] = name
    return out


def _labels(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names[str(key)]: None if isinstance(value, float) and value != value else value
            for key, value in row.items() if str(key) in names}


def plan_jobs(frame: Any, options: SynthesizeOptions, base_seed: int) -> list[Job]:
    """Every image to make, in a fixed order: job j = (row, seed base_seed + j, file name)."""
    path = Path(options.prompts_file)
    prompt_col = _prompt_column(frame, path)
    negative_col = next((c for c in NEGATIVE_COLUMNS if c in frame.columns), None)
    counts = _counts(frame, options, path)
    skip = {prompt_col, *([negative_col] if negative_col else [])}
    if options.counts_column or COUNT_COLUMN in frame.columns:
        skip.add(options.counts_column or COUNT_COLUMN)
    total = sum(counts)
    if total == 0:
        raise SynthexError(f"{path}: the counts add up to 0 images")
    width = max(6, len(str(total - 1)))
    names = label_columns(list(frame.columns), {str(c) for c in skip})
    jobs: list[Job] = []
    for row, (record, count) in enumerate(zip(frame.to_dict("records"), counts)):
        prompt = _text(record[prompt_col]).strip()
        if count and not prompt:
            raise SynthexError(f"{path}, row {row + 1}, column {prompt_col!r}: empty prompt")
        negative = _text(record[negative_col]) if negative_col else ""
        labels = _labels(record, names)
        inputs = _image_inputs(record, path)
        for _ in range(count):
            j = len(jobs)
            jobs.append(Job(j, row, prompt, negative or options.negative_prompt, base_seed + j,
                            f"{IMAGES_DIR}/{j:0{width}d}.png", labels, **inputs))
    return jobs


def _image_inputs(record: dict[str, Any], path: Path) -> dict[str, str | None]:
    """The row's init_image/mask (paths resolved against the prompts file's folder) and
    strength text; empty cells are None."""
    out: dict[str, str | None] = {}
    for column in IMAGE_COLUMNS:
        text = _text(record.get(column)).strip()
        if column != "strength" and text:
            text = str(path.parent / os.path.expanduser(text))
        out[column] = text or None
    return out


def _strength(text: str | None) -> Any:
    if text is None:
        return DEFAULT_STRENGTH
    try:
        return float(text)
    except ValueError:
        return text  # refused by the request's validation, naming the value


# --------------------------------------------------------------------------------------------
# 3. Run configuration (checked on resume) and records
# --------------------------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_config(options: SynthesizeOptions, base_seed: int, total: int) -> dict[str, Any]:
    """What must stay the same for a resumed run to continue the same dataset."""
    from synthex import __version__

    return {
        "prompts_file": str(Path(options.prompts_file).resolve()),
        "prompts_sha256": _file_digest(Path(options.prompts_file)),
        "per_prompt": options.per_prompt, "counts_column": options.counts_column,
        "per_class": options.per_class, "class_column": options.class_column,
        "model": str(options.model), "loras": [[str(p), float(s)] for p, s in options.loras],
        "steps": options.steps, "guidance": float(options.guidance),
        "sampler": canonical_sampler_name(options.sampler, options.schedule_type),
        "negative_prompt": options.negative_prompt, "width": options.width,
        "height": options.height, "base_seed": base_seed, "total": total,
        "version": f"synthex-{__version__}",
        **({"clip_skip": options.clip_skip} if options.clip_skip != DEFAULT_CLIP_SKIP else {}),
    }


def _write_atomic(path: Path, text: str) -> None:
    from synthex.io import atomic_write

    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _config_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    ignore = {"version"}
    return [f"{k}: {stored.get(k)!r} then, {current.get(k)!r} now"
            for k in current if k not in ignore and stored.get(k) != current.get(k)]


def records_path(out: Path, rank: int) -> Path:
    return out / RECORDS_DIR / f"records-{rank}.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write + fsync (a crash leaves at most a torn last
    line, which :func:`read_records` ignores)."""
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def end_torn_line(path: Path) -> None:
    """Terminate a torn last line (an interrupted append) so the next record starts afresh."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    append_line = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(append_line, b"\n")
    finally:
        os.close(append_line)


def read_records(out: Path) -> dict[int, dict[str, Any]]:
    """job index -> record, from every process's records file (later lines win)."""
    records: dict[int, dict[str, Any]] = {}
    folder = out / RECORDS_DIR
    for path in sorted(folder.glob("records-*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                records[int(record["job"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("%s line %d: unreadable record ignored (interrupted write?)", path, number)
    return records


def finished_jobs(out: Path, jobs: Sequence[Job]) -> set[int]:
    """Jobs whose image exists AND whose record was written."""
    records = read_records(out)
    return {job.index for job in jobs
            if job.index in records and records[job.index].get("file_name") == job.file_name
            and (out / job.file_name).is_file()}


# --------------------------------------------------------------------------------------------
# 4. Running: prepare the folder, make this process's images, merge the metadata
# --------------------------------------------------------------------------------------------
def distributed_state() -> Any:
    """accelerate's PartialState: one process normally, N under ``accelerate launch``."""
    import torch
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    return PartialState(cpu=use_cpu or not torch.cuda.is_available())


def _check_folder(out: Path, options: SynthesizeOptions) -> None:
    if options.overwrite or (out / CONFIG_NAME).is_file():
        return
    foreign = [name for name in ("metadata.csv", "samples.jsonl", IMAGES_DIR) if (out / name).exists()]
    if foreign:
        raise OutputExistsError(
            f"{out} already holds {', '.join(foreign)} but no {CONFIG_NAME}: it is not a "
            "synthesize run to resume; choose another --out or pass --overwrite")


def _prepare(out: Path, options: SynthesizeOptions, frame: Any) -> None:
    """Main process only: clear on overwrite, write the run configuration of a new run."""
    if options.overwrite:
        for name in (IMAGES_DIR, RECORDS_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metadata.csv", "samples.jsonl", CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    if (out / CONFIG_NAME).is_file():
        return
    seed = parse_seed(options.seed)
    base = random_seed() if seed is None else seed
    config = run_config(options, base, len(plan_jobs(frame, options, base)))
    config["random_seed"] = seed is None  # recorded, not compared on resume
    _write_atomic(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def _stored_config(out: Path, options: SynthesizeOptions, frame: Any) -> tuple[dict[str, Any], list[Job]]:
    config = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
    seed = parse_seed(options.seed)
    base = int(config["base_seed"]) if seed is None else seed
    jobs = plan_jobs(frame, options, base)
    mismatch = _config_mismatch(config, run_config(options, base, len(jobs)))
    if mismatch:
        raise OutputExistsError(
            f"{out} holds a synthesize run with other settings ({'; '.join(mismatch)}); resume it "
            "with the same settings, choose another --out, or pass --overwrite")
    return config, jobs


def _request(job: Job, options: SynthesizeOptions, device: str | None) -> GenerationRequest:
    return GenerationRequest(
        prompt=job.prompt, negative_prompt=job.negative_prompt, steps=options.steps,
        guidance=options.guidance, seed=job.seed, sampler=options.sampler,
        schedule_type=options.schedule_type, clip_skip=options.clip_skip, width=options.width,
        height=options.height, loras=list(options.loras), model=options.model, n=1,
        device=device, dtype=options.dtype, init_image=job.init_image, mask=job.mask,
        strength=_strength(job.strength),
    )


def check_run(jobs: Sequence[Job], options: SynthesizeOptions, engine: Engine,
              device: str | None = None) -> None:
    """Every job's request validated and its LoRA tags resolved, before anything is written:
    one RequestError/SynthexError naming the row for the first bad one."""
    from synthex.generate.engine import RequestError

    _check_image_rows(jobs, options)
    seen: set[tuple[Any, ...]] = set()
    for job in jobs:
        key = (job.prompt, job.negative_prompt, job.init_image, job.mask, job.strength)
        if key in seen:
            continue
        seen.add(key)
        request = _request(job, options, device)
        try:
            request.validate()
            engine.prepare(request)
        except RequestError as exc:
            raise RequestError([f"{Path(options.prompts_file)}, row {job.row + 1}: {p}"
                                for p in exc.problems]) from None
        except SynthexError as exc:
            message = f"{Path(options.prompts_file)}, row {job.row + 1}: {exc}"
            try:
                error = type(exc)(message)
            except TypeError:
                error = SynthexError(message)
            raise error from None


def _check_image_rows(jobs: Sequence[Job], options: SynthesizeOptions) -> None:
    """The init_image/mask/strength cells of every row at once: one RequestError listing each
    rejected row with its reasons and how many rows were rejected (nothing is written)."""
    from synthex.generate.engine import RequestError
    from synthex.generate.img2img import check_request

    problems: list[str] = []
    rows: dict[int, Job] = {job.row: job for job in jobs if job.init_image or job.mask or job.strength}
    rejected = 0
    for row, job in rows.items():
        found = check_request(_request(job, options, None))
        rejected += bool(found)
        problems += [f"{Path(options.prompts_file)}, row {row + 1}: {p}" for p in found]
    if problems:
        problems.append(f"{rejected} of {len({job.row for job in jobs})} rows rejected (their "
                        "init_image/mask/strength columns); fix them and run again, nothing was "
                        "written")
        raise RequestError(problems)


def _record(job: Job, params: Any) -> dict[str, Any]:
    from synthex.generate.infotext import strip_lora_tags

    # the labels first: output columns win (label_columns already renamed any clash)
    return {
        # "text" is what the model read: Russian/Ukrainian prompts are mapped to English
        "job": job.index, "file_name": job.file_name, "prompt": job.prompt,
        "text": strip_lora_tags(params.prompt) or job.prompt,
        "prompt_language": params.extra.get("Prompt language", "en"),
        "negative_prompt": job.negative_prompt, "seed": params.seed, **job.labels,
        "steps": params.steps, "cfg_scale": params.cfg_scale,
        "sampler": " ".join(filter(None, (params.sampler, params.schedule_type))),
        "model": params.model, "model_hash": params.model_hash, "width": params.width,
        "height": params.height, "synthetic": True,
    }


def _generate_mine(out: Path, jobs: list[Job], options: SynthesizeOptions, state: Any,
                   engine: Engine, on_image: Callable[[Job], None] | None,
                   step_callback: Any) -> tuple[int, int]:
    """Make this process's unfinished images; returns (finished before, generated now)."""
    from tqdm.auto import tqdm

    from synthex.generate.infotext import write_png

    rank, world = state.process_index, state.num_processes
    mine = [job for job in jobs if job.index % world == rank]
    done = finished_jobs(out, mine)
    todo = [job for job in mine if job.index not in done]
    if options.max_images is not None:
        todo = todo[: max(options.max_images, 0)]
    device = options.device or (str(state.device) if world > 1 else None)
    records = records_path(out, rank)
    end_torn_line(records)
    bar = tqdm(total=len(mine), initial=len(done), disable=not options.progress, position=rank,
               desc=f"synthesize [{rank}/{world}]" if world > 1 else "synthesize", unit="img")
    generated = 0
    try:
        for job in todo:
            result = engine.generate(_request(job, options, device), callback=step_callback)
            write_png(result.images[0], out / job.file_name, result.parameters[0], overwrite=True)
            append_record(records, _record(job, result.parameters[0]))
            generated += 1
            bar.update(1)
            if on_image is not None:
                on_image(job)
    finally:
        bar.close()
    return len(done), generated


def write_metadata(out: Path, jobs: Sequence[Job]) -> tuple[Path, Path, int]:
    """Rebuild ``metadata.csv`` and ``samples.jsonl`` (atomically) from the records of the
    finished jobs, in job order; returns (csv, jsonl, rows)."""
    import pandas as pd

    records = read_records(out)
    rows = []
    for job in jobs:
        record = records.get(job.index)
        if record and record.get("file_name") == job.file_name and (out / job.file_name).is_file():
            rows.append({k: v for k, v in record.items() if k != "job"})
    csv_path, jsonl_path = out / "metadata.csv", out / "samples.jsonl"
    _write_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False))
    _write_atomic(jsonl_path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    return csv_path, jsonl_path, len(rows)


def synthesize(options: SynthesizeOptions, engine: Engine | None = None, *,
               on_image: Callable[[Job], None] | None = None,
               step_callback: Any = None) -> SynthesizeResult:
    """Build (or resume) the synthetic dataset described by ``options``; see the module doc.

    ``on_image(job)`` runs after each finished image, ``step_callback`` is the engine's per-step
    callback. Under ``accelerate launch`` every process calls this with the same options.
    """
    out = Path(options.out)
    frame = read_prompts(options.prompts_file)
    seed = parse_seed(options.seed)
    plan = plan_jobs(frame, options, 0)  # every process checks the file before anyone waits
    _check_folder(out, options)
    engine = engine or Engine()
    state = distributed_state()
    device = options.device or (str(state.device) if state.num_processes > 1 else None)
    check_run(plan, options, engine, device)  # nothing is written before this passes
    if options.overwrite or not (out / CONFIG_NAME).is_file():
        engine.load_for(_request(plan[0], options, device))  # a missing model: refused now
    if state.is_main_process:
        _prepare(out, options, frame)
    state.wait_for_everyone()
    config, jobs = _stored_config(out, options, frame)
    logger.info("synthesize: %d images, base seed %d, process %d of %d", len(jobs),
                config["base_seed"], state.process_index + 1, state.num_processes)
    before, generated = _generate_mine(out, jobs, options, state, engine, on_image,
                                       step_callback)
    state.wait_for_everyone()
    result = SynthesizeResult(out, len(jobs), before + generated, generated, False,
                              state.num_processes, base_seed=int(config["base_seed"]),
                              random_seed=seed is None)
    if state.is_main_process:
        result.metadata_csv, result.metadata_jsonl, result.done = write_metadata(out, jobs)
        result.complete = result.done == len(jobs)
        if not result.complete:
            logger.info("%d of %d images done; run the same command again to resume",
                        result.done, len(jobs))
    return result


__all__ = [
    "Job", "SynthesizeOptions", "SynthesizeResult", "append_record", "finished_jobs", "plan_jobs",
    "read_prompts", "read_records", "run_config", "synthesize", "write_metadata",
]
