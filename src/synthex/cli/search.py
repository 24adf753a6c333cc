"""``synthex search``: index a folder of chest X-rays, query it by text or image, evaluate it."""
from __future__ import annotations

from pathlib import Path

import typer

from synthex.cli.boundary import BoundaryGroup

app = typer.Typer(cls=BoundaryGroup, help="Search chest X-rays by text or by a similar image, and search their reports.",
                  no_args_is_help=True)

MODEL_HELP = "Search model folder (default: the shipped embedded dual encoder)."


@app.command()
def index(
    folder: Path = typer.Argument(..., help="Imagefolder, phantom/IU set, generated set or plain folder of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder (created; updated in place on a re-run)."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-embed everything (another model or source folder)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed every image (and report) of FOLDER; a re-run embeds only new or changed files."""
    from synthex.search.index import build_index
    from synthex.search.model import load_search_model

    _threads(threads)
    report = build_index(folder, out, load_search_model(model), rebuild=rebuild, progress=not quiet)
    typer.echo(f"{report.index_dir}: {report.n_items} images ({report.layout} layout), {report.n_reports} with a report; "
               f"new {report.n_new}, changed {report.n_changed}, reused {report.n_reused}, removed {report.n_removed}; "
               f"{report.seconds:.1f} s")
    if report.rejects:
        typer.echo(f"not indexed: {len(report.rejects)} file(s), listed in {report.index_dir / 'index.json'} "
                   f"('rejects'); first: {report.rejects[0]['file']}: {report.rejects[0]['reason']}", err=True)


@app.command()
def query(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="Index folder made by 'synthex search index'."),
    text: str = typer.Argument(None, help='What to look for, e.g. "small left pleural effusion".'),
    image: Path = typer.Option(None, "--image", "-i", help="Find images similar to this one (instead of a text)."),
    k: int = typer.Option(10, "--k", "-k", help="How many results."),
    reports: bool = typer.Option(False, "--reports", help="Return reports of the indexed set instead of images."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(None, "--out", "-o", help="Also save the results: .csv or .json."),
    sheet: Path = typer.Option(None, "--sheet", help="Also draw a contact sheet PNG of the results."),
    backend: str = typer.Option("exact", "--backend", help="exact (numpy) or faiss (pip install faiss-cpu)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --out / --sheet files."),
    lang: str = typer.Option("auto", "--lang", help="Query language: auto (Cyrillic Russian/Ukrainian is "
                             "mapped to English), en (unchanged), ru, uk."),
) -> None:
    """Top-k images (or reports) for a text or an image, as a table (and CSV/JSON, a contact sheet)."""
    from synthex.search.index import SearchIndex
    from synthex.search.model import load_search_model
    from synthex.search.query import contact_sheet, search, write_results

    idx = SearchIndex(index_dir, backend=backend)
    result = search(idx, load_search_model(model or idx.meta.get("model_dir")), text, image, k=k,
                    mode="reports" if reports else "images", lang=lang)
    if text and image is None:
        from synthex.cli.generate import show_mapping

        show_mapping(text, lang, "query")
    _print_table(result)
    if out:
        typer.echo(f"wrote {write_results(result, out, overwrite=overwrite)}")
    if sheet:
        typer.echo(f"wrote {contact_sheet(result, sheet, overwrite=overwrite)}")


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.mode} for {result.query!r}", show_lines=False)
    for col in ("#", "score", "file", "labels", "report"):
        table.add_column(col, overflow="fold")
    for h in result.hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.key, h.labels or "-", (h.report or "")[:140])
    Console(width=160).print(table)
    if not result.hits:
        typer.echo("no results (the index is empty, or holds no reports for --reports)")


@app.command("eval")
def eval_(
    index_dir: Path = typer.Argument(None, metavar="[INDEX]", help="Index folder to evaluate (or give --data)."),
    data: Path = typer.Option(None, "--data", "-d", help="A labelled folder: it is indexed into OUT/index first."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for retrieval.md/.json/.csv/.png."),
    queries: Path = typer.Option(None, "--queries", help="Query YAML (default: the packaged single-finding queries)."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing evaluation in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Recall@k, Precision@k, NDCG, MAP, MRR of text->image, image->image, image->report, report->image
    against random, lexical (BM25) and classifier baselines."""
    from synthex.search.evaluate import evaluate_search, to_markdown

    result, paths = evaluate_search(out, index_dir=index_dir, data=data, model_dir=model, queries=queries, seed=seed,
                                    overwrite=overwrite, progress=not quiet)
    typer.echo(to_markdown(result))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("benchmark-set")
def benchmark_set(
    out: Path = typer.Option(..., "--out", "-o", help="Output imagefolder."),
    per_class: int = typer.Option(40, "--per-class", help="Images per class (25 classes: single findings with sides)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(20261202, "--seed", help="Seed (disjoint from the training sets' seeds)."),
    workers: int = typer.Option(2, "--workers", help="Render processes."),
) -> None:
    """Render the CheXpert-5x200-style search benchmark: single findings with sides, equal counts."""
    from synthex.search.evaluate import build_benchmark_set

    summary = build_benchmark_set(out, per_class, size, seed, workers)
    typer.echo(f"{out}: {summary['n_images']} images in {summary['n_classes']} classes")


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
