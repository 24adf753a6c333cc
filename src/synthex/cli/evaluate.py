"""``synthex evaluate``: fidelity, diversity, text alignment, privacy and utility of a synthetic
set against a real one, as a Markdown + HTML report. Parses options, calls
:func:`synthex.evaluate.evaluate`, prints where the report is. Call :func:`register` on the
root Typer app to add the command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthex.errors import SynthexError
from synthex.generate.defaults import DEFAULT_GUIDANCE, DEFAULT_N, DEFAULT_STEPS


def evaluate(
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real images (imagefolder with "
                                        "metadata.csv, or plain)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (report.md, report.html, "
                                       "results.json)."),
    synthetic: Optional[Path] = typer.Option(None, "--synthetic", help="Folder of synthetic images."),
    train: Optional[Path] = typer.Option(None, "--train", help="Training images for the privacy audit "
                                         "(default: the real set)."),
    model: Optional[str] = typer.Option(None, "--model", help="Generate the synthetic set with this model..."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="...from this prompts CSV/JSONL."),
    n: int = typer.Option(DEFAULT_N, "--n", help="Images per prompt when generating."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Sampling steps when generating."),
    cfg: float = typer.Option(DEFAULT_GUIDANCE, "--cfg", help="Guidance scale when generating."),
    extractor: str = typer.Option("synthex", "--extractor", help="Features for FID/KID/PRDC/privacy: synthex "
                                  "(in-project, offline), xrv or inception (need local weights)."),
    xrv_weights: Optional[Path] = typer.Option(None, "--xrv-weights", help="torchxrayvision DenseNet 'all' .pt."),
    metrics: str = typer.Option("fidelity,diversity,alignment,privacy,utility", "--metrics",
                                help="Comma-separated subset of the metrics; add roundtrip for image -> report -> "
                                "findings vs the prompt (runs --report-model)."),
    report_model: Optional[str] = typer.Option(None, "--report-model", help="Report model of the roundtrip "
                                               "metric (default: the embedded one)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder (default: "
                                         "<image folder>/.synthex/features)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label source: columns, mesh or text "
                                         "(default: the best both sets offer)."),
    seed: int = typer.Option(0, "--seed", help="Seed for generation, bootstraps and splits."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for confidence intervals."),
    utility_epochs: int = typer.Option(6, "--utility-epochs", help="Epochs of each utility classifier."),
    ctr_probe: int = typer.Option(400, "--ctr-probe", help="Phantoms rendered to fit the CTR probe "
                                  "(0 = no CTR check)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the report in a non-empty --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    check_extractors: bool = typer.Option(False, "--check-extractors",
                                          help="Only say which extractors are available here, then exit."),
    task: str = typer.Option("images", "--task", help="images (synthetic vs real, the default) or retrieval "
                             "(search metrics on the labelled --real folder; same as 'synthex search eval --data') or report "
                             "(image -> report model --model on the test split of the --real prepared folder or "
                             "report CSV; --n reports, 0 = all)."),
) -> None:
    """Evaluate synthetic chest X-rays against real ones; writes a Markdown + HTML report."""
    if task == "retrieval":
        _retrieval(real, out, seed, overwrite, quiet)
        return
    if task == "report":
        _report(real, out, model, n, overwrite, quiet)
        return
    if task != "images":
        raise SynthexError(f"--task {task!r}: choose images, retrieval or report")
    from synthex.evaluate import EvaluationOptions
    from synthex.evaluate import evaluate as run_evaluation

    if check_extractors:
        from synthex.evaluate.features import availability

        for name, state in availability(xrv_weights).items():
            typer.echo(f"{name}: {state}")
        return
    if real is None or out is None:
        raise SynthexError("--real DIR and --out DIR are required (the real images and the report folder)")
    if labels is not None and labels not in ("columns", "mesh", "text"):
        raise SynthexError(f"--labels {labels!r}: choose columns, mesh or text")
    options = EvaluationOptions(
        real=real, out=out, synthetic=synthetic, train=train, model=model, prompts=prompts, per_prompt=n,
        steps=steps, guidance=cfg, extractor=extractor,
        extractor_weights=xrv_weights if extractor == "xrv" else None,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), cache=cache, label_source=labels,
        report_model=report_model,
        overwrite=overwrite, seed=seed, bootstrap=bootstrap, utility_epochs=utility_epochs, ctr_probe_n=ctr_probe,
        progress=not quiet)
    if model is not None:
        from synthex.cli.generate import _quiet_libraries

        _quiet_libraries()  # no third-party loading bars; ours stay
    result = run_evaluation(options)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    for metric, reason in result.skipped.items():
        typer.secho(f"not computed: {metric}: {reason}", fg=typer.colors.YELLOW, err=True)
    summary = _summary(result.results)
    if summary:
        typer.echo(summary)
    typer.echo(f"report: {result.report_md} and {result.report_html}; numbers: {result.results_json}")


def _summary(results: dict) -> str:
    parts = []
    if "fidelity" in results:
        f = results["fidelity"]
        parts.append(f"FID {f['fid']:.3f}  KID {f['kid']:.5f}  precision {f['precision']:.3f}  "
                     f"recall {f['recall']:.3f}  density {f['density']:.3f}  coverage {f['coverage']:.3f}")
    if "alignment" in results:
        a = results["alignment"]["synthetic"]
        parts.append(f"alignment: mean AUROC {a['mean_auroc']:.3f}, pathology prompts looking normal "
                     f"{a['normal']['pathology_called_normal']:.3f}, with every prompted finding missed "
                     f"{a['normal']['pathology_all_missed']:.3f}")
    if "privacy" in results:
        p = results["privacy"]
        parts.append(f"privacy: {p['n_flagged']} of {p['n_synthetic']} flagged as near-copies")
    return "\n".join(parts)


def register(root_app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the root ``synthex`` app."""
    root_app.command("evaluate")(evaluate)


__all__ = ["evaluate", "register"]


def _retrieval(real: Optional[Path], out: Optional[Path], seed: int, overwrite: bool, quiet: bool) -> None:
    from synthex.search.evaluate import evaluate_search, to_markdown

    if real is None or out is None:
        raise SynthexError("--task retrieval needs --real DIR (a labelled folder to index) and --out DIR")
    result, paths = evaluate_search(out, data=real, seed=seed, overwrite=overwrite, progress=not quiet)
    typer.echo(to_markdown(result))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _report(real: Optional[Path], out: Optional[Path], model: Optional[str], n: int, overwrite: bool,
            quiet: bool) -> None:
    from synthex.cli.generate import _quiet_libraries
    from synthex.report.evaluate import evaluate_report_model, to_markdown

    if real is None or out is None:
        raise SynthexError("--task report needs --real DATA (a 'synthex data prepare' folder or a report CSV) and "
                           "--out DIR; --model picks the report model (default: the embedded one)")
    _quiet_libraries()
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(desc="reports", unit="image")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    results = evaluate_report_model(real, out, model=model, n=n or None, overwrite=overwrite,
                                    callback=progress if bar else None)
    if bar:
        bar.close()
    typer.echo(to_markdown(results))
    typer.echo(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'reports.csv'}")
