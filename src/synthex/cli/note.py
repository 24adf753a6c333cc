"""``synthex note``: diagnosis -> clinical note (text diffusion or the AR baseline)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from synthex.errors import SynthexError
from synthex.notes.model import DEFAULT_GUIDANCE

MODEL_HELP = ("Note model: 'diffusion' (the shipped text-diffusion model, default), 'ar' (the shipped GPT-2 "
              "baseline) or RUN/model of 'synthex train note'.")


def note_command(
    diagnosis: list[str] = typer.Argument(None, help="Diagnoses, e.g. 'Cardiomegaly/mild; Pleural Effusion/right' "
                                          "or 'right pleural effusion' (Russian/Ukrainian are read too)."),
    diagnoses: Path = typer.Option(None, "--diagnoses", help="CSV with a 'diagnosis' column or a text file, one "
                                   "per line (needs --out; resumable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for notes.csv, notes.jsonl and prompts.csv."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    n: int = typer.Option(1, "--n", "-n", help="Notes per diagnosis (note k uses seed + k)."),
    steps: int = typer.Option(None, "--steps", show_default="50 for ddim, 1000 for ddpm", help="Denoising steps."),
    sampler: str = typer.Option("ddim", "--sampler", help="ddim (deterministic, few steps) or ddpm (ancestral)."),
    seed: int = typer.Option(0, "--seed", "-s"),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, "--guidance", "--cfg", help="Classifier-free guidance on "
                                   "the diagnosis (1 = off)."),
    top_p: float = typer.Option(0.9, "--top-p", help="AR model: nucleus sampling (0 = greedy)."),
    lang: str = typer.Option("auto", "--lang", help="Language of the diagnosis: auto, en, ru, uk."),
    images: bool = typer.Option(False, "--images", help="With --out: also make one X-ray per note "
                                "(synthex synthesize on OUT/prompts.csv into OUT/images)."),
    clamp: bool = typer.Option(False, "--clamp", help="Diffusion: the clamping trick (snap each x0 estimate to "
                               "token embeddings during sampling)."),
    trace: int = typer.Option(0, "--trace", help="Print the text every N denoising steps (diffusion)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace this tool's own files in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write clinical notes (findings + impression) for diagnoses. Synthetic text, for research only."""
    from synthex.notes.diffusion import SAMPLERS
    from synthex.notes.model import NoteModel

    if sampler not in SAMPLERS:
        raise SynthexError(f"--sampler {sampler!r} must be one of {', '.join(SAMPLERS)}")
    if not diagnosis and diagnoses is None:
        raise SynthexError("give a diagnosis, e.g. synthex note 'Cardiomegaly/mild', or --diagnoses FILE --out DIR")
    if diagnoses is not None and out is None:
        raise SynthexError("--diagnoses needs --out DIR (notes.csv and prompts.csv go there; re-runs resume)")
    if images and out is None:
        raise SynthexError("--images needs --out DIR")
    loaded = NoteModel.load(model)
    if out is not None:
        _batch(loaded, list(diagnosis or []), diagnoses, out, n, steps, sampler, seed, guidance, top_p, lang,
               overwrite, quiet, images, clamp)
        return
    notes = loaded.generate(list(diagnosis), n=n, seed=seed, sampler=sampler, steps=steps, guidance=guidance,
                            top_p=top_p, lang=lang, trace_every=trace, clamp=clamp)
    _print(notes, as_json)


def _print(notes, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        typer.echo(json.dumps([asdict(x) for x in notes], indent=1, ensure_ascii=False))
        return
    for x in notes:
        how = f"{x.sampler} {x.steps} steps" if x.steps else "autoregressive"
        typer.echo(f"# {x.diagnosis}  (condition: {x.condition}; seed {x.seed}; {how}; synthetic)")
        for t, text in x.trace:
            typer.echo(f"  t={t:4d}: {text}")
        typer.echo(x.text + "\n")


def _batch(model, given, file, out, n, steps, sampler, seed, guidance, top_p, lang, overwrite, quiet, images,
           clamp=False):
    from tqdm.auto import tqdm

    from synthex.notes.batch import NoteBatchOptions, read_diagnoses, write_notes

    rejects: list = []
    items = list(given)
    if file is not None:
        read, rejects = read_diagnoses(file)
        items += read
    options = NoteBatchOptions(out, model=str(model.folder), n=n, seed=seed, sampler=sampler, steps=steps,
                               guidance=guidance, top_p=top_p, lang=lang, overwrite=overwrite, clamp=clamp)
    bar = tqdm(total=len(items) * n, desc="notes", unit="note", disable=quiet)

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    result = write_notes(items, options, model, progress, rejects)
    bar.close()
    typer.echo(f"notes: {result.written} written, {result.skipped} already there, {result.total} in all -> "
               f"{result.notes_csv}; prompts for synthesize: {result.prompts_csv}")
    if rejects:
        typer.echo(f"{len(rejects)} empty rows skipped: " + ", ".join(f"line {i}" for i, _ in rejects[:20]))
    if images:
        _images(result.prompts_csv, Path(out) / "images", quiet)


def _images(prompts: Path, out: Path, quiet: bool) -> None:
    from synthex.cli.generate import _engine
    from synthex.generate.batch import SynthesizeOptions, synthesize

    result = synthesize(SynthesizeOptions(prompts_file=prompts, out=out, progress=not quiet), _engine(False))
    if result.metadata_csv is not None:
        typer.echo(f"images: {result.metadata_csv} (diagnosis and note columns carried; run again to resume)")


def register(root_app: typer.Typer) -> None:
    root_app.command("note")(note_command)
