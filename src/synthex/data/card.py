"""The data card: a Markdown page with plots describing a prepared dataset.

Written to ``DATA_CARD.md`` with PNG plots under ``card/`` (finding frequencies, per-image
combinations, caption lengths against CLIP's 77-token window, split composition) and
before/after cleaning examples.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from synthex import __version__  # noqa: E402
from synthex.data import mesh as mesh_mod  # noqa: E402

if TYPE_CHECKING:
    from synthex.data.pipeline import PrepareResult

_TOP = 20


def _barh(series: pd.Series, title: str, path: Path, xlabel: str = "images") -> None:
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(series) + 1.2))
    ax.barh(list(series.index)[::-1], list(series.values)[::-1], color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for i, v in enumerate(list(series.values)[::-1]):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _token_hist(counts: pd.Series, limit: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(counts, bins=40, color="#55a868")
    ax.axvline(limit, color="#c44e52", linestyle="--", label=f"CLIP window ({limit} tokens)")
    ax.set_xlabel("caption length (CLIP tokens, incl. start/end)")
    ax.set_ylabel("captions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _split_plot(frame: pd.DataFrame, path: Path) -> None:
    table = pd.crosstab(frame["split"], frame["is_normal"].map({True: "normal", False: "finding"}))
    table = table.reindex(["train", "val", "test"]).fillna(0)
    ax = table.plot.bar(stacked=True, figsize=(5, 3), color=["#dd8452", "#4c72b0"][: table.shape[1]])
    ax.set_ylabel("images")
    ax.set_title("patient-level split")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)


def write_plots(out: Path, frame: pd.DataFrame, token_limit: int) -> dict[str, str]:
    """Write the card's PNG plots; return {name: relative path}."""
    folder = out / "card"
    folder.mkdir(exist_ok=True)
    freq = mesh_mod.heading_frequencies(frame["mesh"]).set_index("heading")["images"].head(_TOP)
    combos = mesh_mod.combinations(frame["mesh"]).set_index("combination")["images"].head(15)
    plots = {
        "findings": "card/finding_frequencies.png",
        "combinations": "card/combinations.png",
        "tokens": "card/caption_tokens.png",
        "split": "card/split.png",
    }
    if len(freq):
        _barh(freq, "MeSH main headings (selected images)", out / plots["findings"])
        _barh(combos, "Per-image heading combinations", out / plots["combinations"])
    _token_hist(frame["clip_tokens"], token_limit, out / plots["tokens"])
    _split_plot(frame, out / plots["split"])
    return plots


def _md_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |")
    return "\n".join(lines)


def write_card(out: Path, result: PrepareResult, preset_name: str, preset: dict[str, Any]) -> Path:
    """Write ``DATA_CARD.md`` and its plots; return the card's path."""
    frame = result.table
    plots = write_plots(out, frame, result.tokens.max_length)
    freq = mesh_mod.heading_frequencies(frame["mesh"]).head(_TOP)
    freq["share"] = freq["share"].map(lambda s: f"{s:.1%}")
    splits = frame["split"].value_counts().reindex(["train", "val", "test"]).fillna(0).astype(int)
    cl = result.cleaning
    examples = "\n".join(f"- before: {b!r}\n  after: {a!r}" for b, a in cl.examples[:5])
    text = f"""# Data card: `{out.name}`

Made by SynTheX-Ray {__version__} with preset `{preset_name}` from source `{result.integrity.layout}`.
Images generated from this dataset are synthetic and for research, not diagnosis.

## Contents
- {len(frame):,} images of {frame['uid'].nunique():,} patients; normal {int(frame['is_normal'].sum()):,}.
- Split (patient-level): train {splits['train']:,}, val {splits['val']:,}, test {splits['test']:,}.
- Trigger phrase: {preset.get('trigger') or 'none'}.
- Images: written {result.images_written:,}, already present {result.images_skipped:,}, rejected {result.images_rejected:,}, missing {result.images_missing:,}.

## Source integrity
{result.integrity.to_markdown()}
## Selection
{_md_table(result.selection.log_frame())}

## Cleaning
XXXX markers: {cl.xxxx_before:,} before, {cl.xxxx_after:,} after, over {cl.n_texts:,} texts.

{_md_table(cl.to_frame())}

Examples:
{examples}

## Captions
{result.tokens.summary()}.

![caption tokens]({plots['tokens']})

## Findings
{_md_table(freq)}

![findings]({plots['findings']})
![combinations]({plots['combinations']})
![split]({plots['split']})
"""
    path = out / "DATA_CARD.md"
    path.write_text(text)
    return path
