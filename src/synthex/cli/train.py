"""``synthex train``: train the embedded model from scratch (``base``)."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train models: the embedded default model from scratch.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Train models: the embedded default model from scratch (``base``)."""


@app.command()
def base(
    data: Path = typer.Option(..., "--data", "-d", help="Imagefolder: metadata.csv (file_name,text[,split]) + images."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, log, samples, pipeline/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Training YAML (default: the packaged embedded_base.yaml)."),
    max_steps_vae: int = typer.Option(None, "--max-steps-vae", help="VAE training steps."),
    max_steps_unet: int = typer.Option(None, "--max-steps-unet", help="UNet + text encoder training steps."),
    resolution: int = typer.Option(None, "--resolution", help="Image side in pixels (default 128)."),
    batch_size: int = typer.Option(None, "--batch-size", help="UNet-stage batch size."),
    batch_size_vae: int = typer.Option(None, "--batch-size-vae", help="VAE-stage batch size."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation, batches and noise (default 42)."),
    split: str = typer.Option(None, "--split", help="metadata.csv split to train on (default 'train')."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train the embedded text-to-X-ray model: tokenizer, VAE, latent cache, UNet + text encoder."""
    from synthex.train.scratch import load_config, train_base

    overrides = {
        "vae.max_steps": max_steps_vae, "unet.max_steps": max_steps_unet, "resolution": resolution,
        "unet.batch_size": batch_size, "vae.batch_size": batch_size_vae, "seed": seed, "split": split,
    }
    cfg = load_config(config, overrides)
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = train_base(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"images: {result.n_images} ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'})")
    typer.echo("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in result.parameters.items()))
    typer.echo(f"pipeline: {result.pipeline_dir} ({result.size_mb:.1f} MB)")
    typer.echo(f"validation grid: {result.validation_grid}; log: {out / 'training_log.csv'}")
