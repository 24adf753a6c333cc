"""``synthex phantom``: render phantom chest radiographs with known ground truth."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Render synthetic phantom chest X-rays with exact ground truth.", no_args_is_help=True)


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
