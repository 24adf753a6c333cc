"""``synthex report``: chest X-ray image(s) -> structured radiology report(s)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from synthex.errors import SynthexError


def report_command(
    path: Path = typer.Argument(..., help="An image, or a folder of images (then --out CSV is required)."),
    model: str = typer.Option(None, "--model", "-m", help="Report model: embedded-report (default, shipped), "
                              "smolvlm-instruct, RUN/model of 'synthex train report', or a folder."),
    adapter: Path = typer.Option(None, "--adapter", help="A LoRA adapter folder (RUN/model of a --lora run)."),
    case: str = typer.Option(None, "--case", help="Clinical case text (cut to 500 characters); gender and age "
                             "are taken from it when it states them, else Unknown."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of the reports (required for a folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
    load_in_4bit: bool = typer.Option(False, "--4bit", help="Load the model in 4-bit NF4 (bitsandbytes)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per generate call."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out CSV written by this tool."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a structured report (Image Labels | Gender | Age | Image Caption; Findings / Impression)
    for a chest X-ray. Synthetic text written by a model: for research, not diagnosis."""
    from synthex.cli.generate import _quiet_libraries
    from synthex.report.batch import list_images, write_reports_csv
    from synthex.report.model import ReportModel

    images = list_images(path)
    if len(images) > 1 and out is None:
        raise SynthexError(f"{path} holds {len(images)} images; pass --out reports.csv")
    if out is not None and out.exists() and not overwrite:
        raise SynthexError(f"--out {out} exists; pass --overwrite to replace it, or choose another file")
    _quiet_libraries()  # no third-party loading bars on stdout (--json stays parseable)
    loaded = ReportModel.load(model, adapter=adapter, load_in_4bit=load_in_4bit)
    bar = None
    if not quiet and len(images) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc="reports", unit="image")
    reports = loaded.generate(images, [case] * len(images), batch_size=batch_size,
                              callback=(lambda done, total: bar.update(done - bar.n)) if bar else None)
    if bar:
        bar.close()
    if out is not None:
        write_reports_csv(out, images, reports, loaded.name)
        typer.echo(f"{len(reports)} reports ({sum(not r.parsed for r in reports)} repaired into the four fields): {out}")
        return
    for image, rep in zip(images, reports):
        if as_json:
            typer.echo(json.dumps({"image": str(image), "model": loaded.name, **rep.to_dict()}))
        else:
            typer.echo(f"{rep.line()}\n\n{rep.sections()}\n\n(synthetic report; for research, not diagnosis)")


def register(root_app: typer.Typer) -> None:
    root_app.command("report")(report_command)
