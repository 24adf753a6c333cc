"""Notes for a file of diagnoses, resumable: ``synthex note --diagnoses FILE --out DIR``.

``DIR/notes.jsonl`` gets one line per finished note as it is made; a re-run with the same
options skips what is there (an interrupted run loses at most the note in progress and never
writes one twice). At the end ``DIR/notes.csv`` (diagnosis, condition, note, seed, model,
sampler, steps, synthetic) and ``DIR/prompts.csv`` (``prompt`` = "Chest x-ray." + diagnosis +
note, the caption form the image models were trained on, with ``diagnosis`` and ``note``
columns that ``synthex synthesize`` carries into the image metadata) are written. Other
options on a folder with notes are an error unless ``overwrite``; then only this tool's own files
are removed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex.errors import DataSourceError, OutputExistsError
from synthex.notes.model import DEFAULT_GUIDANCE

OWN_FILES = ("notes.jsonl", "notes.csv", "prompts.csv", "notes.json")


@dataclass
class NoteBatchOptions:
    out: Path
    model: str | None = None
    n: int = 1
    seed: int = 0
    sampler: str = "ddim"
    steps: int | None = None
    guidance: float = DEFAULT_GUIDANCE
    top_p: float = 0.9
    lang: str = "auto"
    overwrite: bool = False
    clamp: bool = False

    def identity(self, model_name: str) -> dict[str, Any]:
        return {"model": model_name, "n": self.n, "seed": self.seed, "sampler": self.sampler, "steps": self.steps,
                "guidance": self.guidance, "top_p": self.top_p, "lang": self.lang, "clamp": self.clamp}


@dataclass
class NoteBatchResult:
    out: Path
    written: int
    skipped: int
    total: int
    rejects: list[tuple[int, str]] = field(default_factory=list)
    notes_csv: Path | None = None
    prompts_csv: Path | None = None


def read_diagnoses(path: str | Path) -> tuple[list[str], list[tuple[int, str]]]:
    """Diagnoses from a CSV (a ``diagnosis`` column, else ``mesh``, else the only column) or a text
    file (one per line); empty rows are returned as rejects (line number, reason)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"diagnoses file {path} does not exist; pass a CSV with a 'diagnosis' column "
                              "or a text file with one diagnosis per line")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            column = next((c for c in ("diagnosis", "mesh") if c in frame.columns), None)
            if column is None and len(frame.columns) != 1:
                raise DataSourceError(f"{path} has no 'diagnosis' column (columns: {', '.join(frame.columns)}); "
                                      "rename the column holding the diagnoses to 'diagnosis'")
            values, first = frame[column or frame.columns[0]].tolist(), 2
        else:
            values, first = path.read_text(encoding="utf-8").splitlines(), 1
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataSourceError(f"{path} is not a readable UTF-8 CSV/text file ({err})") from err
    good, rejects = [], []
    for i, value in enumerate(values):
        if str(value).strip():
            good.append(str(value).strip())
        else:
            rejects.append((i + first, "empty diagnosis"))
    if not good:
        raise DataSourceError(f"{path} holds no diagnosis ({len(rejects)} empty rows)")
    return good, rejects


def _check_folder(out: Path, identity: dict, overwrite: bool) -> None:
    manifest = out / "notes.json"
    if overwrite:
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
        return
    if manifest.is_file():
        try:
            stored = json.loads(manifest.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OutputExistsError(f"{manifest} is damaged ({err}); pass --overwrite to start again or "
                                    "another --out") from err
        diffs = [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in identity.items() if stored.get(k) != v]
        if diffs:
            raise OutputExistsError(f"{out} holds notes made with other options ({'; '.join(diffs)}); use the same "
                                    "options to resume, another --out, or --overwrite to replace this tool's files")
    elif out.is_dir() and (out / "notes.jsonl").exists():
        raise OutputExistsError(f"{out}/notes.jsonl exists without notes.json; pass --overwrite or another --out")


def _done(path: Path) -> dict[tuple[int, int], dict]:
    """Finished notes by (diagnosis index, k); a torn last line (killed mid-write) is dropped."""
    done: dict[tuple[int, int], dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and {"index", "k", "text"} <= set(record):  # others are made again
            done[(record["index"], record["k"])] = record
    return done


def write_notes(diagnoses: list[str], options: NoteBatchOptions, model=None,
                callback: Callable[[int, int], None] | None = None,
                rejects: list[tuple[int, str]] | None = None) -> NoteBatchResult:
    """Generate ``options.n`` notes per diagnosis into ``options.out`` (module docstring)."""
    from synthex.notes.model import NoteModel

    model = model or NoteModel.load(options.model)
    out = Path(options.out)
    identity = options.identity(str(model.folder))
    _check_folder(out, identity, options.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.json").write_text(json.dumps(identity | {"synthetic": True}, indent=1), encoding="utf-8")
    jsonl = out / "notes.jsonl"
    done = _done(jsonl)
    if jsonl.is_file():  # rewrite without a torn tail so appends start on a fresh line
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in done.values()), encoding="utf-8")
    total, written = len(diagnoses) * options.n, 0
    with jsonl.open("a", encoding="utf-8") as fh:
        for i, diagnosis in enumerate(diagnoses):
            for k in range(options.n):
                if (i, k) in done:
                    continue
                note = model.generate([diagnosis], n=1, seed=options.seed + k, sampler=options.sampler,
                                      steps=options.steps, guidance=options.guidance, top_p=options.top_p,
                                      lang=options.lang, clamp=options.clamp)[0]
                record = {"index": i, "k": k, **{key: v for key, v in asdict(note).items() if key != "trace"}}
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                done[(i, k)] = record
                written += 1
                if callback is not None:
                    callback(len(done), total)
    notes_csv, prompts_csv = _export(out, done, diagnoses, options.n)
    return NoteBatchResult(out, written, total - written, total, list(rejects or []), notes_csv, prompts_csv)


def _export(out: Path, done: dict, diagnoses: list[str], n: int) -> tuple[Path, Path]:
    import pandas as pd

    from synthex.data.prompts import build_prompt
    from synthex.io import atomic_write

    rows = [done[(i, k)] for i in range(len(diagnoses)) for k in range(n)]
    notes = pd.DataFrame([{"diagnosis": r["diagnosis"], "condition": r["condition"], "note": r["text"],
                           "seed": r["seed"], "model": r["model"], "sampler": r["sampler"], "steps": r["steps"],
                           "synthetic": True} for r in rows])
    prompts = pd.DataFrame({"prompt": [build_prompt(r["diagnosis"], r["text"], "") for r in rows],
                            "diagnosis": notes["diagnosis"], "note": notes["note"], "note_seed": notes["seed"],
                            "synthetic_note": True})
    for frame, name in ((notes, "notes.csv"), (prompts, "prompts.csv")):
        atomic_write(out / name, lambda fh, f=frame: fh.write(f.to_csv(index=False).encode("utf-8")))
    return out / "notes.csv", out / "prompts.csv"
