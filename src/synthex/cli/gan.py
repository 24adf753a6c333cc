"""``synthex gan``: sample a GAN baseline trained with ``synthex train gan``."""
from __future__ import annotations

from pathlib import Path

import typer

from synthex.cli.boundary import BoundaryGroup

app = typer.Typer(cls=BoundaryGroup, help="Sample the GAN baseline (trained with 'synthex train gan').",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Sample the GAN baseline (trained with ``synthex train gan``)."""


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", "-m", help="GAN model folder: RUN/model of 'synthex train gan'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/*.png + metadata.csv (as synthesize)."),
    n: int = typer.Option(None, "--n", "-n", show_default="16; with --prompts: the count column, else 1",
                          help="Images; with --prompts: images per prompt row."),
    labels: str = typer.Option(None, "--labels", help="Findings of every image, comma-separated: label names "
                               "(pleural_effusion_left) or phrases (effusion, left opacity); 'normal' = none."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompts CSV/JSONL as 'synthex synthesize' reads it; "
                                 "labels are parsed from each prompt."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of image 0 (image j: seed + j)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace this tool's own earlier files in --out."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write GAN samples with A1111 infotext (synthetic flag) and a metadata.csv 'synthex evaluate' reads."""
    from synthex.cli.train import _set_threads
    from synthex.generate.gan import GanSampleOptions, sample_gan

    _set_threads(threads)
    result = sample_gan(GanSampleOptions(model, out, n=n, labels=labels, prompts_file=prompts, seed=seed,
                                         batch_size=batch_size, overwrite=overwrite, progress=not quiet))
    typer.echo(f"wrote {result.n_images} images of {result.model} "
               f"({'conditional' if result.conditional else 'unconditional'}) to {result.out}; "
               f"metadata: {result.metadata_csv}")
    if result.unparsed_sentences:
        typer.echo(f"{result.unparsed_sentences} prompt sentences named no finding (ignored for the labels)")
