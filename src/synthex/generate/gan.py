"""Sample a trained GAN (``synthex gan sample``) into a folder shaped like ``synthex synthesize``'s.

Output (``OUT``)::

    images/000000.png ...  PNGs with the A1111 infotext (seed, model, labels) and Synthetic: true
    metadata.csv           file_name, prompt, text, prompt_language, negative_prompt, seed, <the
                           prompts file's other columns>, steps, cfg_scale, sampler, model,
                           model_hash, width, height, synthetic, gan_labels
    gan_sample.json        what made the folder (model, options); marks the folder as this tool's

so ``synthex evaluate --synthetic OUT`` reads it like a diffusion model's output. Image ``j`` has
seed ``seed + j``; its ``z`` is drawn from a generator seeded with it, so an image does not depend
on the batch it was made in.

Labels: ``labels="effusion,cardiomegaly"`` (label names or finding phrases; "normal" = none) for
every image; or a prompts file (the CSV/JSONL ``synthesize`` reads, with the same job order, seeds
and file names: ``per_prompt`` images per row, else its ``count`` column, else one) whose prompts
are parsed with the phantom finding parser, sentence by sentence, exactly as ``synthex evaluate``
reads labels from text (:mod:`synthex.phantom.labels`).

Existing files are never replaced unless ``overwrite``; even then only files this tool wrote
(listed in the ``metadata.csv`` of a folder with ``gan_sample.json``) are replaced or removed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthex.errors import OutputExistsError, SynthexError

logger = logging.getLogger(__name__)

MARKER = "gan_sample.json"
METADATA = "metadata.csv"
IMAGES_DIR = "images"


@dataclass
class GanSampleOptions:
    """What to sample: ``n`` images with ``labels``, or the prompts of ``prompts_file``."""

    model: Path
    out: Path
    n: int | None = None
    """Images (default 16); with a prompts file: images per row (default: its count column, else 1)."""
    labels: str | None = None
    prompts_file: Path | None = None
    seed: int = 0
    batch_size: int = 64
    overwrite: bool = False
    progress: bool = True


@dataclass
class GanJob:
    """One image: file, seed, the prompt it stands for and its multi-hot labels."""

    index: int
    file_name: str
    seed: int
    prompt: str
    labels: Any  # np.ndarray (K,)
    negative_prompt: str = ""
    columns: dict[str, Any] = field(default_factory=dict)
    """The prompts file's other columns (renamed as synthesize renames them)."""


@dataclass
class GanSampleResult:
    out: Path
    metadata_csv: Path
    n_images: int
    model: str
    conditional: bool
    unparsed_sentences: int = 0


# --------------------------------------------------------------------------------------------
# 1. The job list
# --------------------------------------------------------------------------------------------
def _label_jobs(options: GanSampleOptions, names: list[str], conditional: bool) -> list[GanJob]:
    import numpy as np

    from synthex.phantom.labels import describe_labels, parse_label_list

    n = 16 if options.n is None else options.n
    if n < 1:
        raise SynthexError(f"--n {n} must be >= 1")
    vec = parse_label_list(options.labels or "", names) if conditional else np.zeros(len(names), np.float32)
    prompt = describe_labels(vec, names) if conditional else "Chest x-ray."
    width = max(6, len(str(n - 1)))
    return [GanJob(j, f"{IMAGES_DIR}/{j:0{width}d}.png", options.seed + j, prompt, vec) for j in range(n)]


def _prompt_jobs(options: GanSampleOptions, names: list[str], conditional: bool) -> tuple[list[GanJob], int]:
    """The jobs of ``synthesize`` for the same prompts file (order, seeds, file names, columns)."""
    import numpy as np

    from synthex.generate.batch import SynthesizeOptions, plan_jobs, read_prompts
    from synthex.phantom.labels import text_labels

    if options.n is not None and options.n < 1:
        raise SynthexError(f"--n {options.n} must be >= 1 (images per prompt)")
    frame = read_prompts(options.prompts_file)
    plan = plan_jobs(frame, SynthesizeOptions(Path(options.prompts_file), Path(options.out), per_prompt=options.n),
                     options.seed)
    jobs, unparsed, cache = [], 0, {}
    for job in plan:
        if job.prompt not in cache:
            vec, bad = text_labels(job.prompt, names) if conditional else (np.zeros(len(names), np.float32), 0)
            cache[job.prompt] = vec
            unparsed += bad
        jobs.append(GanJob(job.index, job.file_name, job.seed, job.prompt, cache[job.prompt], job.negative_prompt,
                           dict(job.labels)))
    return jobs, unparsed


# --------------------------------------------------------------------------------------------
# 2. The output folder
# --------------------------------------------------------------------------------------------
def _own_files(out: Path) -> set[str]:
    """The image files this tool wrote into ``out`` before (empty when it did not make it)."""
    import pandas as pd

    if not (out / MARKER).is_file() or not (out / METADATA).is_file():
        return set()
    try:
        frame = pd.read_csv(out / METADATA, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return set()
    return set(frame["file_name"]) if "file_name" in frame.columns else set()


def check_output(out: Path, jobs: list[GanJob], overwrite: bool) -> set[str]:
    """Refuse to replace files (all without ``overwrite``; those not written by this tool even
    with it); returns this tool's earlier images that the new run does not rewrite (to remove)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder")
    targets = {job.file_name for job in jobs}
    existing = [name for name in (METADATA, MARKER, *sorted(targets)) if (out / name).exists()]
    if not existing:
        return set()
    shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
    if not overwrite:
        raise OutputExistsError(f"{out} already holds {shown}; pass --overwrite to replace them or choose "
                                "another --out folder")
    own = _own_files(out)
    foreign = [n for n in existing if n not in own and n != MARKER and not (n == METADATA and own)]
    if foreign:
        raise OutputExistsError(f"{out} holds {', '.join(foreign[:3])} not written by 'synthex gan sample'; "
                                "--overwrite only replaces this tool's own files: choose another --out folder")
    return {n for n in own - targets if (out / n).is_file()}


def _record(job: GanJob, model: str, digest: str, size: int, names: list[str]) -> dict[str, Any]:
    from synthex.phantom.labels import label_names_of

    return {"file_name": job.file_name, "prompt": job.prompt, "text": job.prompt, "prompt_language": "en",
            "negative_prompt": job.negative_prompt, "seed": job.seed, **job.columns, "steps": "",
            "cfg_scale": "", "sampler": "", "model": model, "model_hash": digest, "width": size, "height": size,
            "synthetic": True, "gan_labels": ";".join(label_names_of(job.labels, names)) or "normal"}


def _parameters(job: GanJob, model: str, digest: str, size: int, names: list[str], conditional: bool):
    from synthex.generate.infotext import GenerationParameters
    from synthex.phantom.labels import label_names_of

    extra = {"Model type": "DCGAN conditional" if conditional else "DCGAN"}
    if conditional:
        extra["Labels"] = " ".join(label_names_of(job.labels, names)) or "normal"
    return GenerationParameters(prompt=job.prompt, negative_prompt=job.negative_prompt, seed=job.seed, width=size,
                                height=size, model=model, model_hash=digest, extra=extra)


# --------------------------------------------------------------------------------------------
# 3. Sampling
# --------------------------------------------------------------------------------------------
def generate_images(generator, jobs: list[GanJob], conditional: bool):
    """uint8 images (B, R, R) of ``jobs``: z of job j from a generator seeded with its seed."""
    import numpy as np
    import torch

    z = torch.stack([torch.randn(generator.arch.z_dim, generator=torch.Generator().manual_seed(job.seed))
                     for job in jobs])
    y = torch.from_numpy(np.stack([job.labels for job in jobs])).float() if conditional else None
    with torch.no_grad():
        x = generator(z, y)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()


def _write_tables(out: Path, records: list[dict], options: GanSampleOptions, info: dict) -> Path:
    import pandas as pd

    from synthex.io import atomic_write

    text = pd.DataFrame(records).to_csv(index=False)
    atomic_write(out / METADATA, lambda fh: fh.write(text.encode("utf-8")))
    body = {"tool": "synthex gan sample", "model": str(Path(options.model).resolve()), **info,
            "seed": options.seed, "n": options.n, "labels": options.labels,
            "prompts_file": str(options.prompts_file) if options.prompts_file else None, "images": len(records)}
    atomic_write(out / MARKER, lambda fh: fh.write((json.dumps(body, indent=1) + "\n").encode("utf-8")))
    return out / METADATA


def sample_gan(options: GanSampleOptions) -> GanSampleResult:
    """Sample ``options.model`` into ``options.out``; see the module docstring."""
    from PIL import Image
    from tqdm.auto import tqdm

    from synthex.generate.infotext import write_image
    from synthex.io import short_hash
    from synthex.models.gan import GENERATOR_FILE, load_gan

    if options.labels is not None and options.prompts_file is not None:
        raise SynthexError("give --labels or --prompts, not both")
    if options.batch_size < 1:
        raise SynthexError(f"batch size {options.batch_size} must be >= 1")
    generator, _, body = load_gan(Path(options.model))
    arch, names = generator.arch, list(generator.arch.labels)
    if options.labels is not None and not arch.conditional:
        raise SynthexError(f"{options.model} is an unconditional GAN: it takes no --labels; leave them out")
    unparsed = 0
    if options.prompts_file is not None:
        jobs, unparsed = _prompt_jobs(options, names, arch.conditional)
    else:
        jobs = _label_jobs(options, names, arch.conditional)
    out = Path(options.out)
    stale = check_output(out, jobs, options.overwrite)
    model, digest = str(body.get("name") or Path(options.model).resolve().parent.name), short_hash(
        Path(options.model) / GENERATOR_FILE)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    with tqdm(total=len(jobs), desc="gan sample", unit="img", disable=not options.progress) as bar:
        for start in range(0, len(jobs), options.batch_size):
            batch = jobs[start:start + options.batch_size]
            for job, pixels in zip(batch, generate_images(generator, batch, arch.conditional)):
                params = _parameters(job, model, digest, arch.resolution, names, arch.conditional)
                write_image(Image.fromarray(pixels, mode="L"), out / job.file_name, params, overwrite=options.overwrite)
                records.append(_record(job, model, digest, arch.resolution, names))
                bar.update(1)
    for name in stale:
        (out / name).unlink(missing_ok=True)
    csv_path = _write_tables(out, records, options, {"model_name": model, "model_hash": digest})
    if unparsed:
        logger.info("%d prompt sentences named no finding (ignored for the labels)", unparsed)
    return GanSampleResult(out, csv_path, len(records), model, arch.conditional, unparsed)
