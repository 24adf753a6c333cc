"""Scores of generated reports: the four-field parse rate, lexical metrics against the real
report text, and clinical correctness read by the project's finding parser (negation handled)
against the reference report's findings and, on phantoms, against the renderer's truth.

:func:`evaluate_report_model` runs a model over a split of a report data source and writes
``reports.csv``, ``results.json`` and ``report.md`` (``synthex evaluate --task report``).
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from synthex.errors import OutputExistsError, SynthexError
from synthex.report.format import StructuredReport

R2GEN_IU = {"bleu4": 0.165, "meteor": 0.187, "rougeL": 0.371}  # R2Gen on IU X-ray (Chen et al., 2020)
SIDED = ("pleural_effusion_right", "pleural_effusion_left", "opacity_right", "opacity_left")


def finding_text(report: StructuredReport) -> str:
    """What the finding parser reads: the labels (one sentence each), then findings and impression."""
    labels = " ".join(f"{lab.rstrip('.')}." for lab in report.labels)
    return f"{labels} {report.text()}".strip()


def truth_text(findings: Sequence[Any]) -> str:
    """Renderer truth as text the parser maps back to it (``Finding.describe``); normal if empty."""
    return " ".join(f"{f.describe()}." for f in findings) or "Normal chest."


def _laterality(consistency: dict[str, Any]) -> dict[str, Any]:
    """Effusion / opacity: of the images with one on a side, the share whose report names that side
    and not the other one only (per sided label: sensitivity), plus the parser's pairwise rule."""
    per = consistency["per_finding"]
    tp = sum(per[n]["tp"] for n in SIDED if n in per)
    support = sum(per[n]["support"] for n in SIDED if n in per)
    fp = sum(per[n]["fp"] for n in SIDED if n in per)
    return {"sided_sensitivity": tp / support if support else None, "sided_false_positives": fp,
            "sided_support": support, "pairs_correct_side": consistency["laterality_accuracy"]}


def score_reports(reports: Sequence[StructuredReport], references: Sequence[str],
                  truths: Sequence[Sequence[Any]] | None = None, *, meteor: bool | None = None) -> dict[str, Any]:
    """Parse rate, lexical metrics (captions vs ``references``) and clinical correctness."""
    from synthex.evaluate.text import finding_consistency, lexical_metrics

    if len(reports) != len(references) or not reports:
        raise SynthexError(f"got {len(reports)} reports and {len(references)} references; give one reference per report")
    texts = [finding_text(r) for r in reports]
    out: dict[str, Any] = {"n": len(reports), "parse_rate": sum(r.parsed for r in reports) / len(reports),
                           "lexical": lexical_metrics([r.caption or r.text() for r in reports], list(references),
                                                      meteor=meteor)}
    out["clinical_vs_reference"] = finding_consistency(texts, list(references))
    if truths is not None:
        truth = finding_consistency(texts, [truth_text(t) for t in truths])
        out["clinical_vs_truth"] = truth
        out["laterality_vs_truth"] = _laterality(truth)
    return out


def round_trip(images: Sequence[Any], prompts: Sequence[str], *, model: str | None = None, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """Generated X-ray -> report -> findings, compared with the findings of each image's prompt
    (:func:`synthex.evaluate.text.finding_consistency`): an alignment measure of a generator that
    does not rely on the phantom classifier."""
    from synthex.evaluate.text import finding_consistency
    from synthex.report.model import ReportModel

    if len(images) != len(prompts) or not images:
        raise SynthexError(f"round trip: {len(images)} images and {len(prompts)} prompts; give one prompt per image")
    loaded = ReportModel.load(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc="round trip", unit="image")
    reports = loaded.generate(list(images), None, batch_size=batch_size,
                              callback=(lambda done, total: bar.update(done - bar.n)) if bar else None)
    if bar:
        bar.close()
    return {"model": loaded.name, "n": len(reports), "parse_rate": sum(r.parsed for r in reports) / len(reports),
            "consistency": finding_consistency([finding_text(r) for r in reports], list(prompts))}


def _check_out(out: Path, overwrite: bool) -> None:
    ours = {"reports.csv", "results.json", "report.md"}
    if out.exists() and any(out.iterdir()):
        foreign = [p.name for p in out.iterdir() if p.name not in ours]
        if foreign or not overwrite:
            why = f"it holds files this tool did not write ({', '.join(sorted(foreign)[:3])})" if foreign else \
                "it already holds a report evaluation"
            raise OutputExistsError(f"--out {out}: {why}; choose an empty folder" + ("" if foreign else " or pass --overwrite"))


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def evaluate_report_model(data: str | Path, out: str | Path, *, model: str | None = None, split: str = "test",
                          n: int | None = None, overwrite: bool = False, batch_size: int = 8,
                          callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Generate a report for the first ``n`` examples of ``split`` of ``data`` and score them."""
    from synthex.report.data import load_report_data
    from synthex.report.model import ReportModel
    from synthex.train.loop import _write_text

    out = Path(out)
    _check_out(out, overwrite)
    source = load_report_data(data)
    examples = source.split(split)[: n or None]
    if not examples:
        raise SynthexError(f"{data}: no examples in split {split!r}; choose train, val or test")
    loaded = ReportModel.load(model)
    t0 = time.perf_counter()
    reports = loaded.generate([e.image for e in examples], [e.case for e in examples], batch_size=batch_size,
                              callback=callback)
    seconds = time.perf_counter() - t0
    truths = [e.truth_findings() for e in examples]
    results = score_reports(reports, [e.reference for e in examples],
                            truths if all(t is not None for t in truths) else None)
    results.update(model=loaded.name, data=str(data), split=split, rejects=len(source.rejects),
                   seconds_per_report=seconds / len(examples), r2gen_iu=R2GEN_IU)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"image": str(e.image), "case": e.case, "report": r.line(), "parsed": r.parsed, "reference": e.reference,
             "truth": "; ".join(f.describe() for f in (e.truth_findings() or [])), "synthetic": True}
            for e, r in zip(examples, reports)]
    _write_text(out / "reports.csv", _csv(rows))
    _write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    _write_text(out / "report.md", to_markdown(results))
    return results


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_markdown(results: dict[str, Any]) -> str:
    """The headline table (lexical beside R2Gen's IU X-ray figures; clinical per finding)."""
    lex = results["lexical"]
    lines = [f"# Report evaluation: {results.get('model', '')} on {results.get('data', '')} ({results.get('split', '')}, "
             f"n={results['n']})", "", "Synthetic reports; for research, not diagnosis. Phantoms are not films.", "",
             "| measure | this model | R2Gen (IU X-ray) |", "|---|---:|---:|"]
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL", "cider"):
        lines.append(f"| {key} | {_f(lex.get(key))} | {_f(R2GEN_IU.get(key))} |")
    lines.append(f"| outputs that parse into the four fields | {results['parse_rate']:.1%} | - |")
    for name in ("clinical_vs_truth", "clinical_vs_reference"):
        if name in results:
            c = results[name]
            lines.append(f"| finding micro-F1 / macro-F1 ({name.split('_vs_')[1]}) | {_f(c['micro_f1'])} / "
                         f"{_f(c['macro_f1'])} | - |")
    if "laterality_vs_truth" in results:
        lat = results["laterality_vs_truth"]
        lines.append(f"| effusion/opacity on the drawn side (sensitivity) | {_f(lat['sided_sensitivity'])} | - |")
    if "seconds_per_report" in results:
        lines.append(f"| seconds per report | {results['seconds_per_report']:.2f} | - |")
    key = "clinical_vs_truth" if "clinical_vs_truth" in results else "clinical_vs_reference"
    lines += ["", f"Per finding ({key.replace('_', ' ')}):", "",
              "| finding | support | sensitivity | specificity | F1 |", "|---|---:|---:|---:|---:|"]
    for name, row in results[key]["per_finding"].items():
        if row["support"] or row["fp"]:
            lines.append(f"| {name} | {row['support']} | {_f(row['sensitivity'])} | {_f(row['specificity'])} | "
                         f"{_f(row['f1'])} |")
    return "\n".join(lines) + "\n"
