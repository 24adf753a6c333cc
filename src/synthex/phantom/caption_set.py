"""A training imagefolder whose captions say what was drawn: ``synthex phantom caption-set``.

Two sources, mixed:

- ``n_random`` phantoms with finding lists drawn by :func:`~synthex.phantom.captions.sample_balanced`
  (every finding family, side and grade about equally often; normals a minority), each with one
  caption per style of :data:`~synthex.phantom.captions.STYLES`;
- optionally the rows of split ``train`` of a ``synthex data prepare`` folder made from the
  phantom IU X-ray set (``--iu DIR``): the real report caption filtered by
  :func:`~synthex.phantom.captions.filter_report` (sentences that name a finding the phantom
  does not show are dropped, counted in ``caption_set.json``), plus structured captions.

``metadata.csv`` has ``file_name, text`` (the first caption), ``caption_1..K`` (alternatives
that ``synthex train base`` draws from when its config lists them in ``caption_columns``),
``findings`` (JSON of the drawn findings), one 0/1 column per phantom label, ``source`` and
``split``. Images are rendered at twice the size and Lanczos-downsampled, like the phantom set
``synthex data prepare --size`` makes. Every image is written atomically and a re-run with the
same options renders only the missing ones; a folder made with other options is refused.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synthex.errors import ImageReadError, OutputExistsError, SynthexError
from synthex.io import atomic_write, open_image
from synthex.phantom.captions import STYLES, FilterCounts, caption_variants, filter_report, sample_balanced
from synthex.phantom.classifier import PHANTOM_LABELS, finding_labels
from synthex.phantom.findings import Finding

logger = logging.getLogger(__name__)
STATE = "caption_set.json"


@dataclass
class CaptionSetOptions:
    out: Path
    n_random: int = 8000
    size: int = 128
    seed: int = 0
    iu: Path | None = None  # a `synthex data prepare` folder of the phantom IU X-ray set
    p_normal: float = 0.12
    workers: int = 2

    def identity(self) -> dict[str, Any]:
        return {"n_random": self.n_random, "size": self.size, "seed": self.seed,
                "iu": str(self.iu) if self.iu else None, "p_normal": self.p_normal, "styles": list(STYLES)}


def _render(job: tuple[str, list[dict], int, int]) -> str:
    from PIL import Image

    from synthex.phantom.render import render_phantom

    path, findings, seed, size = job
    result = render_phantom([Finding.from_dict(f) for f in findings] or "normal", seed, size * 2)
    image = Image.fromarray(result.image, mode="L").resize((size, size), Image.LANCZOS)
    atomic_write(Path(path), lambda fh: image.save(fh, format="PNG"))
    return path


def _check_out(options: CaptionSetOptions) -> None:
    out = options.out
    state = out / STATE
    if state.is_file():
        saved = json.loads(state.read_text(encoding="utf-8")).get("options")
        if saved != options.identity():
            raise OutputExistsError(f"{out} holds a caption set made with other options ({saved}); "
                                    "choose another --out folder or the same options to resume")
    elif out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty and holds no caption set; choose an empty --out folder")


def _random_rows(options: CaptionSetOptions) -> tuple[list[dict], list[tuple]]:
    rng = np.random.default_rng(options.seed)
    rows, jobs = [], []
    for i in range(options.n_random):
        findings = [f.resolved() for f in sample_balanced(rng, options.p_normal)]
        seed = int(rng.integers(0, 2**31 - 1))
        name = f"images/r{i:06d}.png"
        rows.append({"file_name": name, "captions": caption_variants(findings, rng), "findings": findings,
                     "source": "random"})
        jobs.append((str(options.out / name), [f.to_dict() for f in findings], seed, options.size))
    return rows, jobs


def _iu_rows(options: CaptionSetOptions, counts: FilterCounts, outcome: Counter, rejects: list[dict]) -> list[dict]:
    import pandas as pd
    from PIL import Image

    from synthex.phantom.dataset import load_mesh_rules, mesh_to_findings

    folder = Path(options.iu)
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise SynthexError(f"--iu {folder} has no metadata.csv; make it with 'synthex data prepare "
                           "--source PHANTOM_DIR --out DIR --size N --mode L'")
    table = pd.read_csv(meta, dtype=str, keep_default_na=False)
    missing = [c for c in ("file_name", "text", "mesh") if c not in table.columns]
    if missing:
        raise SynthexError(f"{meta} lacks the column(s) {missing}; it must be a 'synthex data prepare' output")
    if "split" in table.columns:
        table = table[table["split"] == "train"]
    rules, rng = load_mesh_rules(), np.random.default_rng(options.seed + 1)
    rows = []
    for i, row in enumerate(table.itertuples(index=False)):
        drawn = [f.resolved() for f in mesh_to_findings(row.mesh, rules)[0]]
        text, c = filter_report(row.text, drawn)
        counts.kept, counts.dropped, counts.unreadable = (counts.kept + c.kept, counts.dropped + c.dropped,
                                                          counts.unreadable + c.unreadable)
        outcome["rewritten" if c.dropped else "unchanged"] += 1
        name = f"images/iu{i:05d}.png"
        target = options.out / name
        source = folder / row.file_name
        if not target.is_file():
            if not source.is_file():
                rejects.append({"file_name": row.file_name, "reason": "image file not found"})
                continue
            try:
                with open_image(source) as image:
                    image = image.convert("L").resize((options.size, options.size), Image.LANCZOS)
            except ImageReadError as exc:
                rejects.append({"file_name": row.file_name, "reason": exc.reason})
                continue
                atomic_write(target, lambda fh, im=image: im.save(fh, format="PNG"))
        variants = caption_variants(drawn, rng)
        rows.append({"file_name": name, "captions": [text or variants[0], *variants[:len(STYLES) - 1]],
                     "findings": drawn, "source": "iu"})
    return rows


def build_caption_set(options: CaptionSetOptions, callback: Callable[[int, int], None] | None = None) -> dict:
    """Render (or resume) the caption set; returns the summary also written to ``caption_set.json``."""
    import pandas as pd

    if options.n_random < 0 or options.size < 32:
        raise SynthexError(f"--n must be >= 0 and --size >= 32 (got {options.n_random}, {options.size})")
    if not 0.0 <= options.p_normal <= 1.0:
        raise SynthexError(f"--p-normal must be in [0, 1], got {options.p_normal}")
    if options.n_random == 0 and not options.iu:
        raise SynthexError("nothing to build: give --n > 0 or --iu DIR")
    _check_out(options)
    out = options.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    atomic_write(out / STATE, lambda fh: fh.write(json.dumps({"options": options.identity(),
                                                              "complete": False}).encode()))
    rows, jobs = _random_rows(options)
    todo = [j for j in jobs if not Path(j[0]).is_file()]
    with ProcessPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for k, _ in enumerate(pool.map(_render, todo, chunksize=16), 1):
            if callback:
                callback(k, len(todo))
    counts, outcome, rejects = FilterCounts(), Counter(), []
    if options.iu:
        rows += _iu_rows(options, counts, outcome, rejects)
        if rejects:
            logger.warning("%d IU rows left out (listed in %s under 'rejects'), first: %s", len(rejects), STATE,
                           rejects[0])
    table = pd.DataFrame({
        "file_name": [r["file_name"] for r in rows],
        "text": [r["captions"][0] for r in rows],
        **{f"caption_{k}": [r["captions"][k] for r in rows] for k in range(1, len(STYLES))},
        "findings": [json.dumps([f.to_dict() for f in r["findings"]]) for r in rows],
        "source": [r["source"] for r in rows], "split": "train",
    })
    labels = np.stack([finding_labels(r["findings"], PHANTOM_LABELS) for r in rows]).astype(int)
    for j, name in enumerate(PHANTOM_LABELS):
        table[name] = labels[:, j]
    atomic_write(out / "metadata.csv", lambda fh: fh.write(table.to_csv(index=False).encode()))
    summary = {**_summary(options, rows, labels, counts, outcome), "rejects": rejects}
    atomic_write(out / STATE, lambda fh: fh.write(json.dumps(summary, indent=1).encode()))
    return summary


def _summary(options, rows, labels, counts: FilterCounts, outcome: Counter) -> dict:
    grades, sides = Counter(), Counter()
    for r in rows:
        for f in r["findings"]:
            grades[f"{f.name}/{f.severity}"] += bool(f.severity)
            sides[f"{f.name}/{f.side}"] += bool(f.side)
    return {"options": options.identity(), "complete": True, "n_images": len(rows),
            "n_random": sum(r["source"] == "random" for r in rows), "n_iu": sum(r["source"] == "iu" for r in rows),
            "n_normal": sum(not r["findings"] for r in rows),
            "label_counts": {n: int(labels[:, j].sum()) for j, n in enumerate(PHANTOM_LABELS)},
            "grades": dict(sorted(grades.items())), "sides": dict(sorted(sides.items())),
            "iu_report_filter": {**asdict(counts), "reports": dict(outcome)}}
