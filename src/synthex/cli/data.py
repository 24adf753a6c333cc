"""``synthex data``: inspect a source, prepare a dataset, explore MeSH categories."""
from __future__ import annotations

from pathlib import Path

import typer

from synthex.cli.boundary import BoundaryGroup

app = typer.Typer(cls=BoundaryGroup, help="Read, check, clean, select and caption IU X-ray data.", no_args_is_help=True)

SOURCE_HELP = "Kaggle folder, Open-i folder or .tgz, or 'bundled' (the real reports shipped by torchxrayvision)."


@app.command()
def inspect(
    source: str = typer.Option("bundled", "--source", "-s", help=SOURCE_HELP),
    images: Path = typer.Option(None, "--images", help="Image folder (default: the layout's own)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder to save integrity.json/.md and table.csv."),
    rows: int = typer.Option(5, "--rows", help="Rows of the table to print."),
) -> None:
    """Read a source into the one-row-per-image table and print its integrity report."""
    import pandas as pd

    from synthex.data.integrity import check_integrity
    from synthex.data.sources import load_tables

    if rows < 0:
        from synthex.errors import ConfigError

        raise ConfigError(f"--rows {rows}: give 0 or more rows to print.")
    report, table = check_integrity(load_tables(source, images=images))
    typer.echo(report.to_markdown())
    with pd.option_context("display.max_columns", 8, "display.width", 140, "display.max_colwidth", 30):
        typer.echo(table.head(rows).to_string())
    if out is not None:
        report.save(out)
        table.to_csv(out / "table.csv", index=False)
        typer.echo(f"saved {out / 'integrity.md'} and {out / 'table.csv'}")


@app.command()
def prepare(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (imagefolder + data card)."),
    source: str = typer.Option("bundled", "--source", "-s", help=SOURCE_HELP),
    preset: str = typer.Option("all", "--preset", "-p", help="Selection preset (see 'synthex data presets')."),
    presets_file: Path = typer.Option(None, "--presets", help="Your own presets YAML."),
    rules_file: Path = typer.Option(None, "--rules", help="Your own cleaning rules YAML."),
    images: Path = typer.Option(None, "--images", help="Image folder (default: the layout's own)."),
    size: int = typer.Option(1024, "--size", help="Output image side (short side resize + smart crop)."),
    mode: str = typer.Option("RGB", "--mode", help="Output image mode: RGB (thesis) or L."),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel image workers."),
    shard: str = typer.Option(None, "--shard", help="K/N: export only shard K of N (0-based)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out."),
    no_card: bool = typer.Option(False, "--no-card", help="Skip the data card and its plots."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Clean, select, caption and split a source; export images when present."""
    from synthex.data.pipeline import PrepareOptions, parse_shard_option
    from synthex.data.pipeline import prepare as run_prepare

    options = PrepareOptions(
        source=source, preset=preset, presets_file=_opt(presets_file), rules_file=_opt(rules_file),
        images=_opt(images), size=size, mode=mode, workers=workers,
        shard=parse_shard_option(shard) if shard is not None else None, overwrite=overwrite,
        progress=not quiet, card=not no_card,
    )
    options.validate()  # every option checked before anything is read or written
    result = run_prepare(out, options)
    _print_summary(result)


def _opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _print_summary(result) -> None:
    integ, cl, table = result.integrity, result.cleaning, result.table
    typer.echo(f"source: {integ.layout}: {integ.report_uids:,} reports, {integ.images_listed:,} images listed, "
               f"{integ.common_uids:,} common uids, {integ.frontal_images:,} frontal, "
               f"{integ.patients_with_several_frontal:,} patients with several frontal images")
    dup = (integ.identical_report_rows, integ.identical_projection_rows)
    if any(dup) or integ.rows_rejected:
        typer.echo(f"duplicates: {dup[0]:,} identical report rows and {dup[1]:,} identical projection rows merged; "
                   f"{integ.conflicting_report_uids:,} uids with different reports and "
                   f"{integ.conflicting_projection_images:,} contradicting images left out "
                   f"({integ.rows_rejected:,} rows, listed in rejects.csv)")
    typer.echo(f"cleaning: XXXX {cl.xxxx_before:,} -> {cl.xxxx_after:,} over {cl.n_texts:,} texts")
    typer.echo(result.selection.log_frame().to_string(index=False))
    splits = table["split"].value_counts().to_dict()
    typer.echo(f"selected: {len(table):,} images ({int(table['is_normal'].sum()):,} normal); split {splits}")
    typer.echo(f"captions: {result.tokens.summary()}")
    if result.images_written or result.images_skipped or result.images_rejected:
        typer.echo(f"images: {result.images_written:,} written, {result.images_skipped:,} already there, "
                   f"{result.images_rejected:,} rejected (rejects.csv), {result.images_missing:,} missing")
    state = "complete" if result.complete else "partial (other shards pending)"
    typer.echo(f"wrote {result.out_dir} ({state}); timings "
               + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))


@app.command()
def mesh(
    heading: str = typer.Argument(None, help="A MeSH main heading, e.g. Diaphragm; omit for the frequency table."),
    source: str = typer.Option("bundled", "--source", "-s", help=SOURCE_HELP),
    all_projections: bool = typer.Option(False, "--all-projections", help="Count every image, not only frontal ones."),
    top: int = typer.Option(30, "--top", help="Rows of the frequency table."),
    combos: bool = typer.Option(False, "--combinations", help="Per-image heading combinations instead."),
) -> None:
    """MeSH heading frequencies, or the qualifier tree of one heading (Diaphragm -> right -> elevated -> mild)."""
    from synthex.data import mesh as mesh_mod
    from synthex.data.sources import load_source
    from synthex.errors import ConfigError

    if top < 1:
        raise ConfigError(f"--top {top}: give 1 or more rows.")

    table = load_source(source)
    if not all_projections:
        table = table[table["projection"] == "Frontal"].drop_duplicates("uid")
    if heading:
        typer.echo(mesh_mod.render_tree(mesh_mod.mesh_tree(table["mesh"], heading)))
    elif combos:
        typer.echo(mesh_mod.combinations(table["mesh"]).head(top).to_string(index=False))
    else:
        typer.echo(mesh_mod.heading_frequencies(table["mesh"]).head(top).to_string(index=False))


@app.command()
def presets(file: Path = typer.Option(None, "--presets", help="Your own presets YAML.")) -> None:
    """List selection presets and what each one does."""
    from synthex.data.selection import load_presets

    for name, body in load_presets(file).items():
        subset = body.get("subset")
        what = (f"subset of {', '.join(subset.get('include_headings_containing', [])[:4])}..., normals {subset.get('normals', {}).get('n')}"
                if subset else f"balance_normal {body.get('balance_normal')}")
        typer.echo(f"{name:14s} trigger={body.get('trigger')!r}; {what}")
