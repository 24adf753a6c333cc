"""The evaluation report: ``report.md``, a self-contained ``report.html`` (plots embedded as
base64 PNG) and ``results.json`` (every number), written atomically into the report folder.

The report is built once as a list of blocks (heading, text, table, figure) and rendered to
both formats, so the two always say the same thing.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from synthex.evaluate.types import REPORT_FILES, EvaluationResult, ReportContext, options_dict
from synthex.io import atomic_write

FIG_DIR = "figures"


@dataclass
class Block:
    kind: str  # "h2", "h3", "p", "table", "figure", "list"
    content: Any
    extra: Any = None


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"


def _ci(d: dict, key: str, digits: int = 3) -> str:
    lo, hi = d.get(f"{key}_lo"), d.get(f"{key}_hi")
    base = _f(d.get(key), digits)
    return f"{base} [{_f(lo, digits)}, {_f(hi, digits)}]" if lo is not None else base


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Agg)
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    path = out / FIG_DIR / name
    atomic_write(path, lambda h: h.write(buf.getvalue()))
    return path


def _fig_samples(out: Path, real, synth, n: int = 8) -> Path:
    plt = _plt()
    n = min(n, len(real), len(synth))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2))
    for row, (name, s) in enumerate((("real", real), ("synthetic", synth))):
        idx = np.linspace(0, len(s) - 1, n).astype(int)
        for c, i in enumerate(idx):
            ax = axes[row, c] if n > 1 else axes[row]
            ax.imshow(s.images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    return _save(fig, out, "samples.png")


def _fig_bars(out: Path, name: str, groups: dict[str, dict[str, float]], title: str, ylabel: str,
              chance: float | None = None) -> Path:
    plt = _plt()
    keys = sorted({k for g in groups.values() for k in g})
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(keys) * max(1, len(groups)) / 1.5), 3.4))
    width = 0.8 / max(1, len(groups))
    for gi, (label, values) in enumerate(groups.items()):
        x = np.arange(len(keys)) + gi * width
        ax.bar(x, [values.get(k, np.nan) for k in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=45, ha="right", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="k", lw=0.8, ls="--")
    ax.set_ylabel(ylabel), ax.set_title(title, fontsize=10), ax.legend(fontsize=8)
    return _save(fig, out, name)


def _fig_hist(out: Path, name: str, series: dict[str, np.ndarray], title: str, xlabel: str,
              line: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    finite = [np.asarray(v)[np.isfinite(v)] for v in series.values() if len(v)]
    if finite:
        lo, hi = min(v.min() for v in finite), max(v.max() for v in finite)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
        for label, v in series.items():
            if len(v):
                ax.hist(np.asarray(v)[np.isfinite(v)], bins=bins, alpha=0.5, label=f"{label} (n={len(v)})",
                        density=True)
    if line is not None:
        ax.axvline(line, color="r", lw=1, label="threshold")
    ax.set_title(title, fontsize=10), ax.set_xlabel(xlabel), ax.legend(fontsize=8)
    return _save(fig, out, name)


def _fig_pairs(out: Path, closest, synth, train, threshold: float) -> Path:
    plt = _plt()
    n = len(closest)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.5 * max(n, 1), 3.6), squeeze=False)
    for c, (i, j, dp, dfeat) in enumerate(closest):
        axes[0, c].imshow(synth.images[i], cmap="gray", vmin=0, vmax=255)
        axes[1, c].imshow(train.images[j], cmap="gray", vmin=0, vmax=255)
        axes[0, c].set_title(f"px {dp:.3f}\nft {dfeat:.4f}", fontsize=7, color="red" if dp <= threshold else "black")
        for r in (0, 1):
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[0, 0].set_ylabel("synthetic"), axes[1, 0].set_ylabel("nearest train")
    return _save(fig, out, "privacy_pairs.png")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def _overview(ctx: ReportContext) -> list[Block]:
    o, sets = ctx.options, ctx.sets
    rows = []
    for name, s in sets.items():
        rows.append([name, str(s.folder), _f(len(s)), f"{s.size}px", s.label_source or "none",
                     _f(len(s.rejects)), "; ".join(s.notes) or "-"])
    synthex_note = (" (the in-project phantom-trained encoder: numbers are not comparable with Inception FID or "
                    "torchxrayvision FXD)." if ctx.extractor_id.startswith("synthex") else ".")
    blocks = [Block("p", f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `synthex evaluate`. "
                         "Synthetic images are for research, not diagnosis."),
              Block("table", rows, ["set", "folder", "images", "size", "labels from", "rejected", "notes"]),
              Block("p", f"Feature extractor: `{ctx.extractor_id}`" + synthex_note)]
    others = ctx.extractors
    if others:
        blocks.append(Block("list", [f"extractor `{k}`: {v}" for k, v in others.items()]))
    if o.train is None:
        blocks.append(Block("p", "No `--train` folder: the privacy audit uses the real set as the training set."))
    if ctx.skipped:
        blocks.append(Block("list", [f"**{m} not computed**: {r}" for m, r in ctx.skipped.items()]))
    return blocks


def _fidelity_blocks(r: dict) -> list[Block]:
    rows = [["FID", _ci(r, "fid", 3), f"bootstrap {r.get('bootstrap', 0)} resamples, 95% interval"],
            ["KID", f"{_f(r['kid'], 5)} ± {_f(r['kid_std'], 5)}",
             f"{r['subsets']} subsets of {r['subset_size']}; interval [{_f(r['kid_lo'], 5)}, {_f(r['kid_hi'], 5)}]"]]
    rows += [[m.capitalize(), _ci(r, m), f"k = {r['k']}"] for m in ("precision", "recall", "density", "coverage")]
    blocks = [Block("h2", "Fidelity"), Block("p", f"{_f(r['n_real'])} real vs {_f(r['n_synthetic'])} synthetic "
                                                  f"images, {r['dim']}-d features."),
              Block("table", rows, ["metric", "value [95% CI]", "how"])]
    blocks += [Block("p", f"**Warning:** {w}") for w in r.get("warnings", [])]
    if r.get("per_finding"):
        rows = [[p["finding"], _f(p["n_real"]), _f(p["n_synthetic"]), _f(p.get("fid")), _f(p.get("kid"), 5),
                 _f(p.get("precision")), _f(p.get("recall")), p.get("skipped", "")] for p in r["per_finding"]]
        blocks += [Block("h3", "Per finding"),
                   Block("table", rows, ["finding", "real", "synthetic", "FID", "KID", "precision", "recall", "note"])]
    return blocks


def _diversity_blocks(r: dict, out: Path) -> list[Block]:
    rows = []
    for name in ("synthetic", "real"):
        d = r[name]
        rows.append([name, _f(d["prompts"]), _f(d.get("within_prompt")), _f(d["within_prompt_pairs"]),
                     _f(d.get("across_prompts")), _f(d["across_prompts_pairs"]), f"{d['size']}px / {d['scales']}"])
    series = {f"{n} {k.replace('_', ' ')}": r[n].get(f"{k}_values", np.zeros(0))
              for n in ("synthetic", "real") for k in ("within_prompt", "across_prompts")}
    fig = _fig_hist(out, "diversity.png", {k: v for k, v in series.items() if len(v)}, "MS-SSIM of image pairs "
                    "(higher = more alike)", "MS-SSIM")
    return [Block("h2", "Diversity"),
            Block("p", "Mean MS-SSIM of image pairs with the same prompt and with different prompts; higher means "
                       "less diverse. Within-prompt values near 1 mean mode collapse."),
            Block("table", rows, ["set", "prompts", "within prompt", "pairs", "across prompts", "pairs",
                                  "size / scales"]), Block("figure", fig, "MS-SSIM distributions")]


def _alignment_blocks(r: dict, out: Path) -> list[Block]:
    s, ref = r["synthetic"], r.get("real")
    rows = [["mean per-finding AUROC (prompted vs not)", _f(s["mean_auroc"]), _f(ref["mean_auroc"]) if ref else "-"],
            ["pathology prompts that look normal", _f(s["normal"]["pathology_called_normal"]),
             _f(ref["normal"]["pathology_called_normal"]) if ref else "-"],
            ["pathology prompts with every prompted finding missed", _f(s["normal"]["pathology_all_missed"]),
             _f(ref["normal"]["pathology_all_missed"]) if ref else "-"],
            ["normal prompts that look normal", _f(s["normal"]["normal_called_normal"]),
             _f(ref["normal"]["normal_called_normal"]) if ref else "-"]]
    if "ctr" in s and s["ctr"]:
        for key in ("mean_ctr_cardiomegaly", "mean_ctr_other", "share_ctr_over_0.5_cardiomegaly",
                    "share_ctr_over_0.5_other", "auroc_ctr"):
            rows.append([f"CTR probe: {key.replace('_', ' ')}", _f(s["ctr"][key]),
                         _f(ref["ctr"][key]) if ref and ref.get("ctr") else "-"])
    blocks = [Block("h2", "Text-image alignment"),
              Block("p", f"Scored by the phantom finding classifier. Pathology prompts: {s['normal']['n_pathology']}; "
                         f"normal prompts: {s['normal']['n_normal']}. The real column is the same measurement on the "
                         "real images with their own labels (the ceiling)."),
              Block("table", rows, ["measure", "synthetic", "real (reference)"])]
    if "ctr_probe" in r:
        p = r["ctr_probe"]
        blocks.append(Block("p", f"CTR probe: ridge regression from the encoder embedding to the renderer's measured "
                                 f"CTR, fitted on {p['n']} rendered phantoms at {p['size']}px; held-out MAE "
                                 f"{_f(p['heldout_mae'])}, R² {_f(p['heldout_r2'])}. An estimate, not a measurement."))
    ref_rows = {x["finding"]: x for x in ref["per_finding"]} if ref else {}
    rows = [[x["finding"], _f(x["n_prompted"]), _f(x["auroc"]), _f(x["detected_prompted"]), _f(x["detected_not"]),
             _f(ref_rows.get(x["finding"], {}).get("auroc"))] for x in s["per_finding"]]
    blocks += [Block("h3", "Per finding"), Block("table", rows, ["finding", "prompted", "AUROC", "detected if prompted",
                                                                "detected if not", "real AUROC"])]
    groups = {"synthetic": {x["finding"]: x["auroc"] for x in s["per_finding"]}}
    if ref:
        groups["real"] = {x["finding"]: x["auroc"] for x in ref["per_finding"]}
    blocks.append(Block("figure", _fig_bars(out, "alignment.png", groups, "AUROC prompted vs not", "AUROC", 0.5),
                        "per-finding AUROC"))
    ref_lat = {x["finding"]: x for x in ref["laterality"]} if ref else {}
    rows = [[x["finding"], _f(x["n"]), _f(x["correct_side"]), _f(ref_lat.get(x["finding"], {}).get("correct_side"))]
            for x in s["laterality"]]
    blocks += [Block("h3", "Laterality"), Block("table", rows, ["prompted", "images", "correct side", "real"])]
    return blocks


def _privacy_blocks(r: dict, out: Path, synth, train) -> list[Block]:
    cal = r["calibration"]
    rows = [[space, _f(cal[space]["threshold"], 4), _f(cal[space]["copy_recall"]),
             _f(cal[space]["distinct_false_rate"]),
             "yes" if cal[space]["separated"] else "no (threshold capped)",
             _f(r["flag_rate_pixel_only"] if space == "pixel" else r["flag_rate_feature_only"])]
            for space in ("pixel", "feature")]
    blocks = [Block("h2", "Privacy / memorisation"),
              Block("p", f"Nearest training image of each of {r['n_synthetic']} synthetic images among {r['n_train']} "
                         f"training images ({r['train_set']}). Thresholds calibrated on {cal['n_calibration']} "
                         "augmented copies of training images vs their nearest distinct training image."),
              Block("table", rows, ["space", "threshold", "copies caught", "distinct pairs under it", "separates",
                                    "synthetic under it"]),
              Block("p", f"**Flagged as near-copies (pixel space): {r['n_flagged']} of {r['n_synthetic']} "
                         f"({100 * r['flag_rate']:.1f}%).** For scale: "
                         f"{100 * cal['pixel']['distinct_false_rate']:.1f}% "
                         "of distinct training images fall under the same threshold against their nearest other "
                         "training image, so a flag rate at that level is what unrelated look-alikes give; "
                         "inspect the closest pairs below.")]
    fig = _fig_hist(out, "privacy_hist.png", {"augmented copies": cal["pixel"]["copies"],
                                               "distinct training": cal["pixel"]["distinct"],
                                               "synthetic -> nearest train": r["pixel_dist"]},
                    "pixel distance to the nearest training image", "distance", cal["pixel"]["threshold"])
    if r.get("flagged_pairs"):
        shown = r["flagged_pairs"][:50]
        blocks.append(Block("list", [f"`{p['synthetic']}` ~ `{p['train']}` (pixel distance {p['pixel_distance']:.4f})"
                                     for p in shown] + ([f"... {len(r['flagged_pairs']) - 50} more in results.json"]
                                                        if len(r["flagged_pairs"]) > 50 else [])))
    blocks += [Block("figure", fig, "pixel distances"),
               Block("figure", _fig_pairs(out, r["closest"], synth, train, cal["pixel"]["threshold"]),
                     "closest synthetic (top) / training (bottom) pairs; red = flagged")]
    return blocks


def _utility_blocks(r: dict, out: Path) -> list[Block]:
    regimes = list(r["regimes"])
    rows = [[f] + [_f(r["regimes"][g]["auroc"].get(f)) for g in regimes] for f in r["findings"]]
    rows.append(["**mean**"] + [_f(r["regimes"][g]["mean_auroc"]) for g in regimes])
    groups = {g: r["regimes"][g]["auroc"] for g in regimes}
    return [Block("h2", "Utility"),
            Block("p", f"Classifier ({r['size']}px, {r['epochs']} epochs) trained on {r['n_train_real']} real, "
                       f"{r['n_train_real']} real + {r['n_synthetic']} synthetic, or {r['n_synthetic']} synthetic "
                       f"images; AUROC on {r['n_test_real']} held-out real images. Left out (no positives or "
                       f"negatives in the test part): {', '.join(r['left_out']) or 'none'}."),
            Block("table", rows, ["finding"] + regimes),
            Block("figure", _fig_bars(out, "utility.png", groups, "AUROC on held-out real images", "AUROC", 0.5),
                  "utility")]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _md(blocks: list[Block], out: Path) -> str:
    lines = ["# SynTheX-Ray evaluation report", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            lines += [("## " if b.kind == "h2" else "### ") + b.content, ""]
        elif b.kind == "p":
            lines += [b.content, ""]
        elif b.kind == "list":
            lines += [f"- {x}" for x in b.content] + [""]
        elif b.kind == "table":
            lines += ["| " + " | ".join(b.extra) + " |", "|" + "---|" * len(b.extra)]
            lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in b.content] + [""]
        elif b.kind == "figure":
            lines += [f"![{b.extra}]({Path(b.content).relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(blocks: list[Block]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>SynTheX-Ray evaluation</title><style>"
             "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
             "<h1>SynTheX-Ray evaluation report</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline(b.content)}</p>")
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b.content) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.extra)
            body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in b.content)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "figure":
            data = base64.b64encode(Path(b.content).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(b.extra)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.extra)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_jsonable(value: Any, max_array: int = 64) -> Any:
    """Numbers and short arrays as JSON (NaN -> null); long arrays summarised by their length."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, max_array) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, max_array) for v in value]
    if isinstance(value, np.ndarray):
        if value.size > max_array:
            return {"array_of": int(value.size), "mean": to_jsonable(float(np.nanmean(value))) if value.size else None}
        return to_jsonable(value.tolist(), max_array)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(out: Path, results: dict, ctx: ReportContext) -> EvaluationResult:
    out.mkdir(parents=True, exist_ok=True)
    sets = ctx.sets
    blocks = [Block("h2", "Overview")] + _overview(ctx)
    blocks += [Block("p", f"**Warning:** {w}") for w in ctx.warnings]
    blocks.append(Block("figure", _fig_samples(out, sets["real"], sets["synthetic"]),
                        "real (top) and synthetic (bottom)"))
    warnings = list(ctx.warnings) + list(results.get("fidelity", {}).get("warnings", []))
    if "fidelity" in results:
        blocks += _fidelity_blocks(results["fidelity"])
    if "diversity" in results:
        blocks += _diversity_blocks(results["diversity"], out)
    if "alignment" in results:
        blocks += _alignment_blocks(results["alignment"], out)
    if "privacy" in results:
        train = sets.get("train", sets["real"])
        blocks += _privacy_blocks(results["privacy"], out, sets["synthetic"], train)
    if "utility" in results:
        blocks += _utility_blocks(results["utility"], out)
    if "roundtrip" in results:
        blocks += _roundtrip_blocks(results["roundtrip"])
    rejects = [f"{name}: {p} ({why})" for name, s in sets.items() for p, why in s.rejects]
    if rejects:
        blocks += [Block("h2", "Rejected files"), Block("list", rejects)]
    t = ctx.timings
    blocks += [Block("h2", "Timings"), Block("table", [[k, f"{v:.1f} s"] for k, v in t.items()], ["step", "time"])]
    payload = {"options": options_dict(ctx.options), "extractor": ctx.extractor_id, "timings": t,
               "extractors_available": ctx.extractors,
               "skipped": ctx.skipped, "warnings": warnings,
               "sets": {n: {"folder": str(s.folder), "n": len(s), "size": s.size, "label_source": s.label_source,
                            "rejects": s.rejects, "notes": s.notes} for n, s in sets.items()},
               "results": results}
    md, page = _md(blocks, out), _html(blocks)
    paths = [out / name for name in REPORT_FILES]
    atomic_write(paths[0], lambda h: h.write(md.encode()))
    atomic_write(paths[1], lambda h: h.write(page.encode()))
    text = json.dumps(to_jsonable(payload), indent=1)
    atomic_write(paths[2], lambda h: h.write(text.encode()))
    return EvaluationResult(out, results, *paths, warnings=warnings, skipped=ctx.skipped, timings=t)


def _roundtrip_blocks(r: dict) -> list[Block]:
    """Image -> report (a report model) -> findings, against the findings of the prompt."""
    c = r["consistency"]
    rows = [["finding micro-F1 / macro-F1", f"{_f(c['micro_f1'])} / {_f(c['macro_f1'])}"],
            ["exact finding-set match", _f(c["exact_match"])],
            ["normal prompts reported normal", _f(c["normal_agreement"])],
            ["stated side correct (effusion, opacity, ...)", _f(c["laterality_accuracy"])],
            ["reports that parse into the four fields", _f(r["parse_rate"])]]
    per = [[name, _f(v["support"]), _f(v["sensitivity"]), _f(v["specificity"]), _f(v["f1"])]
           for name, v in c["per_finding"].items() if v["support"] or v["fp"]]
    return [Block("h2", "Round trip: image -> report -> findings"),
            Block("p", f"Each synthetic image was read by the report model `{r['model']}`; the findings of its "
                       "report (the project's parser, negation handled) are compared with those of the prompt. "
                       "This alignment measure does not use the phantom classifier; it is only as good as the "
                       "report model (see its own evaluation)."),
            Block("table", rows, ["measure", "value"]),
            Block("table", per, ["finding", "support", "sensitivity", "specificity", "F1"])]
