"""``synthex phantom``: render phantom chest radiographs with known ground truth."""
from __future__ import annotations

import math
from pathlib import Path

import typer

from synthex.cli.boundary import BoundaryGroup

app = typer.Typer(cls=BoundaryGroup, help="Render synthetic phantom chest X-rays with exact ground truth.", no_args_is_help=True)


def _check(flag: str, value, low=None, high=None, what: str = "") -> None:
    """Raise a one-line ConfigError naming ``flag`` when ``value`` is outside [low, high]."""
    from synthex.errors import ConfigError

    if value is None:
        return
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{flag} {value}: give a number.")
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            bounds = f"from {low} to {high}"
        else:
            bounds = f">= {low}" if low is not None else f"<= {high}"
        raise ConfigError(f"{flag} {value}: must be {bounds}{what}.")


def _check_size(size: int, scale: int = 1) -> None:
    """Phantoms are rendered at ``size * scale`` pixels, within the renderer's range."""
    from synthex.phantom.render import MAX_SIZE, MIN_SIZE

    low, high = -(-MIN_SIZE // scale), MAX_SIZE // scale
    _check("--size", size, low, high, " pixels" + (f" (rendered at {scale}x, then downsampled)" if scale > 1 else ""))


def _check_seed(seed: int) -> None:
    _check("--seed", seed, 0, 2**32 - 1, " (a non-negative integer; the same seed gives the same output)")


def _check_workers(workers: int) -> None:
    _check("--workers", workers, 1, None, " (1 renders in this process)")


@app.command()
def render(
    findings: str = typer.Argument(..., help='Findings text, e.g. "cardiomegaly, right pleural effusion" or "normal".'),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG (marked as synthetic in its metadata)."),
    seed: int = typer.Option(0, "--seed", "-s", help="Patient and texture seed (same seed = same patient)."),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
    truth: Path = typer.Option(None, "--truth", help="Also write the ground truth JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Render one phantom from a findings text."""
    from synthex.phantom.render import render_phantom, save_phantom

    _check_seed(seed)
    _check_size(size)
    result = render_phantom(findings, seed, size)
    written = save_phantom(result, out, truth_path=truth, text=findings, overwrite=overwrite)
    ctr = result.truth["measurements"]["ctr"]
    typer.echo(f"wrote {', '.join(map(str, written))}: {', '.join(result.truth['labels'])} (CTR {ctr:.2f})")


@app.command()
def gallery(
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG."),
    seed: int = typer.Option(7, "--seed", "-s", help="Seed of the patient shown in every tile."),
    size: int = typer.Option(256, "--size", help="Tile side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Every finding next to the same patient's normal image, with |finding - normal| maps."""
    from synthex.phantom.gallery import save_gallery

    _check_seed(seed)
    _check_size(size)
    path = save_gallery(out, seed, size, overwrite=overwrite)
    typer.echo(f"wrote {path}")


@app.command("list")
def list_findings() -> None:
    """List the finding names with their sides, zones, grading and synonyms."""
    from synthex.phantom.findings import REGISTRY

    for spec in REGISTRY.values():
        sides = "/".join(spec.sides) or "-"
        typer.echo(f"{spec.name:24s} sides: {sides:22s} zoned: {'yes' if spec.zoned else 'no ':3s} "
                   f"graded: {'yes' if spec.graded else 'no':3s}  {spec.description}")
        if spec.synonyms:
            typer.echo(f"{'':24s} also: {', '.join(spec.synonyms)}")


@app.command()
def build(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (Kaggle IU X-ray layout)."),
    n: int = typer.Option(None, "--n", help="Use the first N reports (default: all 3,851 with images)."),
    size: int = typer.Option(256, "--size", help="Phantom side in pixels."),
    seed: int = typer.Option(0, "--seed", "-s", help="Dataset seed (image seeds derive from it and the image id)."),
    lateral: bool = typer.Option(False, "--lateral", help="Also list lateral projections (not rendered: PA only)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel render processes."),
    map_file: Path = typer.Option(None, "--map", help="Your own MeSH -> finding rules YAML."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo a finished build in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pair every real bundled report with a phantom drawn from its own MeSH labels."""
    from synthex.phantom.dataset import BuildOptions, build_dataset

    _check("--n", n, 1, None, " reports")
    _check_size(size)
    _check_seed(seed)
    _check_workers(workers)
    report = build_dataset(BuildOptions(str(out), n, size, seed, lateral, workers, overwrite, not quiet,
                                        str(map_file) if map_file else None))
    share = report.terms_mapped / max(report.terms_total, 1)
    typer.echo(f"{report.reports:,} reports, {report.frontal_images:,} frontal phantoms "
               f"({report.written:,} written, {report.skipped_existing:,} already there), "
               f"{report.lateral_rows:,} lateral rows listed without images")
    typer.echo(f"MeSH terms mapped to findings: {report.terms_mapped:,} of {report.terms_total:,} ({share:.0%}); "
               f"{report.images_with_unmapped_only:,} abnormal reports drawn as normal-looking (only unmapped terms)")
    top = ", ".join(f"{k} {v}" for k, v in list(report.unmapped_by_heading.items())[:10])
    typer.echo(f"most frequent unmapped headings: {top} (all in {out / 'mesh_mapping.csv'})")
    typer.echo("findings drawn: " + ", ".join(f"{k} {v}" for k, v in report.finding_counts.items()))


@app.command("caption-set")
def caption_set(
    out: Path = typer.Option(..., "--out", "-o", help="Output imagefolder (metadata.csv + images/)."),
    n: int = typer.Option(8000, "--n", help="Random phantoms with balanced findings."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (rendered at 2x, Lanczos-downsampled)."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the finding draws, patients and phrasings."),
    iu: Path = typer.Option(None, "--iu", help="Also add the train split of this 'synthex data prepare' folder "
                            "of the phantom IU X-ray set, its reports filtered to what each phantom shows."),
    p_normal: float = typer.Option(0.12, "--p-normal", help="Share of normal random phantoms."),
    workers: int = typer.Option(2, "--workers", help="Rendering processes."),
) -> None:
    """Training images whose captions say exactly what was drawn (several phrasings each)."""
    from tqdm.auto import tqdm

    _check("--n", n, 0, None, " random phantoms (0 with --iu DIR)")
    _check_size(size, scale=2)
    _check_seed(seed)
    _check("--p-normal", p_normal, 0, 1, " (a share)")
    _check_workers(workers)
    from synthex.phantom.caption_set import CaptionSetOptions, build_caption_set

    bar = tqdm(desc="rendering", unit="img")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    summary = build_caption_set(CaptionSetOptions(out, n, size, seed, iu, p_normal, workers), progress)
    bar.close()
    f = summary["iu_report_filter"]
    typer.echo(f"wrote {out}: {summary['n_images']} images ({summary['n_random']} random, {summary['n_iu']} IU, "
               f"{summary['n_normal']} normal)")
    if summary["n_iu"]:
        typer.echo(f"IU reports: {f['reports']}; sentences kept {f['kept']}, dropped {f['dropped']} "
                   f"(name a finding the phantom does not show), neutral {f['unreadable']}")
    typer.echo("label counts: " + ", ".join(f"{k} {v}" for k, v in summary["label_counts"].items()))
    if summary["rejects"]:
        typer.echo(f"left out: {len(summary['rejects'])} IU rows whose image is missing (listed in "
                   f"{out / 'caption_set.json'} under 'rejects')")


@app.command()
def classifier(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for model.safetensors + config.json."),
    n_train: int = typer.Option(4000, "--n-train", help="Training phantoms."),
    n_test: int = typer.Option(1000, "--n-test", help="Held-out phantoms (other seeds) for AUROC."),
    size: int = typer.Option(128, "--size", help="Image side the classifier sees."),
    epochs: int = typer.Option(8, "--epochs"),
    seed: int = typer.Option(0, "--seed", "-s"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing classifier in --out."),
) -> None:
    """Train the phantom finding classifier and print per-finding AUROC on held-out phantoms."""
    from synthex.errors import OutputExistsError
    from synthex.phantom.classifier import WEIGHTS_FILE, save_classifier, train_phantom_classifier

    _check("--n-train", n_train, 1, None, " phantoms")
    _check("--n-test", n_test, 1, None, " phantoms")
    _check_size(size)
    _check("--epochs", epochs, 1, None)
    _check_seed(seed)

    if (out / WEIGHTS_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{out / WEIGHTS_FILE} exists; pass --overwrite to replace it.")
    model, metrics = train_phantom_classifier(
        n_train, n_test, size, epochs, seed,
        callback=lambda epoch, loss: typer.echo(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}"),
    )
    save_classifier(model, out)
    for name, value in metrics.items():
        typer.echo(f"{name:24s} AUROC {value:.3f}")
    typer.echo(f"mean AUROC {sum(metrics.values()) / len(metrics):.3f} on {n_test:,} held-out phantoms; saved {out}")
