"""How good is search? ``synthex search eval``: ranking metrics of the dual encoder beside baselines.

Tasks, each scored with :func:`synthex.evaluate.retrieval.score_rankings` (torchmetrics):

====================  ===========================  ============================================
task                  relevance                    baselines
====================  ===========================  ============================================
text -> image         labels (query findings,      random; BM25 of the query against each
                      side included, all shown)    image's report (lexical)
text -> report        the same, for the report     random; BM25 (query against the reports)
image -> image        same label set               random; cosine of the phantom classifier's
                      (leave-one-out)              pooled features
image -> report       same label set; exact pair   random; classifier labels written as words,
                      (the image's own report)     then BM25 against the reports
report -> image       exact pair                   random
====================  ===========================  ============================================

Text queries come from a YAML file (default ``config/search_queries.yaml``: single findings with
sides in caption words and in held-out radiologist words); results are broken down by style.
:func:`build_benchmark_set` renders the evaluation set in the style of CheXpert 5x200: single
findings with sides, the same number per class, seeds disjoint from the training sets.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthex.errors import ConfigError, OutputExistsError, SynthexError
from synthex.io import atomic_write

logger = logging.getLogger(__name__)

DEFAULT_QUERIES = Path(__file__).resolve().parent.parent / "config" / "search_queries.yaml"
METRIC_COLUMNS = ("R@1", "R@5", "R@10", "P@10", "NDCG@10", "MAP", "MRR")
# The CheXpert-5x200-style classes of the benchmark set: (finding, side).
BENCHMARK_CLASSES = (
    ("normal", None), ("cardiomegaly", None), ("edema", None), ("emphysema", None), ("sternotomy", None),
    *((name, side) for name in ("pleural_effusion", "opacity", "pneumothorax", "nodule", "atelectasis",
                                "elevated_hemidiaphragm", "calcified_granuloma", "scoliosis", "pacemaker",
                                "central_line") for side in ("left", "right")),
)


@dataclass
class Query:
    text: str
    labels: frozenset[str]
    style: str = "caption"


def load_queries(path: str | Path | None = None) -> list[Query]:
    """Queries of a YAML file ``queries: [{text, labels, style}]`` (default: the packaged set)."""
    import yaml

    from synthex.search.labels import keys_from_spec

    path = Path(path) if path else DEFAULT_QUERIES
    if not path.is_file():
        raise ConfigError(f"query file {path} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = data.get("queries") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path} must hold 'queries:' with a list of {{text, labels, style}}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not str(row.get("text", "")).strip() or not row.get("labels"):
            raise ConfigError(f"{path}: query {i + 1} needs a non-empty 'text' and 'labels' (got {row!r})")
        out.append(Query(str(row["text"]).strip(), keys_from_spec(str(row["labels"])), str(row.get("style", "caption"))))
    return out


# --------------------------------------------------------------------------------------------
# 1. The benchmark set
# --------------------------------------------------------------------------------------------
def build_benchmark_set(out: str | Path, per_class: int = 40, size: int = 128, seed: int = 20261202,
                        workers: int = 2, progress: bool = True) -> dict:
    """Render ``per_class`` single-finding phantoms per class of :data:`BENCHMARK_CLASSES` into an
    imagefolder (``metadata.csv``: file_name, text = a report-style caption, findings, class).
    Re-running with the same options renders only missing images; other options are refused."""
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd
    from tqdm.auto import tqdm

    from synthex.phantom.caption_set import _render
    from synthex.phantom.captions import caption
    from synthex.phantom.findings import REGISTRY, SEVERITIES, ZONES, Finding

    out = Path(out)
    if per_class < 1 or size < 32:
        raise SynthexError(f"--per-class must be >= 1 and --size >= 32 (got {per_class}, {size})")
    options = {"per_class": per_class, "size": size, "seed": seed, "classes": [list(c) for c in BENCHMARK_CLASSES]}
    state = out / "benchmark.json"
    if state.is_file():
        if json.loads(state.read_text(encoding="utf-8")).get("options") != options:
            raise OutputExistsError(f"{out} holds a benchmark set made with other options; choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty and holds no benchmark set; choose an empty --out folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    atomic_write(state, lambda fh: fh.write(json.dumps({"options": options, "complete": False}).encode()))
    rng = np.random.default_rng(seed)
    rows, jobs = [], []
    for name, side in BENCHMARK_CLASSES:
        spec = REGISTRY[name]
        for j in range(per_class):
            zone = str(rng.choice(ZONES)) if spec.zoned else None
            severity = str(rng.choice(SEVERITIES)) if spec.graded else None
            findings = [] if name == "normal" else [Finding(name, side, zone, severity).resolved()]
            file_name = f"images/{name}{'_' + side if side else ''}_{j:04d}.png"
            rows.append({"file_name": file_name, "text": caption(findings, rng, "report"),
                         "findings": json.dumps([f.to_dict() for f in findings]),
                         "class": f"{name}:{side}" if side else name})
            jobs.append((str(out / file_name), [f.to_dict() for f in findings], int(rng.integers(2**31 - 1)), size))
    todo = [j for j in jobs if not Path(j[0]).is_file()]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in tqdm(pool.map(_render, todo, chunksize=8), total=len(todo), desc="rendering", disable=not progress):
            pass
    atomic_write(out / "metadata.csv", lambda fh: fh.write(pd.DataFrame(rows).to_csv(index=False).encode()))
    summary = {"options": options, "complete": True, "n_images": len(rows), "n_classes": len(BENCHMARK_CLASSES)}
    atomic_write(state, lambda fh: fh.write(json.dumps(summary, indent=1).encode()))
    return summary


# --------------------------------------------------------------------------------------------
# 2. Scoring an index
# --------------------------------------------------------------------------------------------
@dataclass
class RetrievalRow:
    task: str
    relevance: str
    method: str
    style: str
    metrics: dict[str, float]


@dataclass
class RetrievalEvaluation:
    index_dir: str
    model_id: str
    n_items: int
    n_labelled: int
    n_reports: int
    n_queries: int
    rows: list[RetrievalRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def get(self, task: str, relevance: str, method: str, style: str = "all") -> dict[str, float] | None:
        return next((r.metrics for r in self.rows if (r.task, r.relevance, r.method, r.style)
                     == (task, relevance, method, style)), None)


_LABEL_WORDS = {"pleural_effusion_right": "right pleural effusion", "pleural_effusion_left": "left pleural effusion",
                "opacity_right": "right lung opacity", "opacity_left": "left lung opacity"}


def labels_as_words(probs: np.ndarray, names, threshold: float = 0.5) -> str:
    """Classifier probabilities -> a short finding list in words ("normal" when none passes)."""
    found = [_LABEL_WORDS.get(n, n.replace("_", " ")) for n, p in zip(names, probs) if p >= threshold]
    return ", ".join(found) if found else "normal, no acute cardiopulmonary abnormality"


def _classifier_outputs(index, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from tqdm.auto import tqdm

    from synthex.phantom.classifier import load_classifier, to_tensor
    from synthex.search.index import read_image

    clf = load_classifier().eval()
    probs, feats = [], []
    for first in tqdm(range(0, len(index), 256), desc="baseline classifier", disable=not progress, leave=False):
        arr = np.stack([read_image(index.path(i), clf.config.size) for i in range(first, min(len(index), first + 256))])
        with torch.no_grad():
            x = to_tensor(arr, clf.config.size)
            f = clf.embed(x)
            probs.append(torch.sigmoid(clf.head(f)).numpy())
            feats.append(torch.nn.functional.normalize(f, dim=-1).numpy())
    return np.concatenate(probs), np.concatenate(feats)


def _add(result: RetrievalEvaluation, task: str, relevance: str, method: str, scores, relevant, style: str = "all"):
    from synthex.evaluate.retrieval import score_rankings

    result.rows.append(RetrievalRow(task, relevance, method, style, score_rankings(scores, relevant)))


def _text_to_image(result, index, model, queries, keys, labelled, seed):
    from synthex.evaluate.retrieval import bm25_scores, random_scores
    from synthex.search.labels import query_relevant

    rows = np.flatnonzero(labelled)
    q_emb = model.embed_texts([q.text for q in queries])
    relevant = np.array([[query_relevant(q.labels, keys[i]) for i in rows] for q in queries])
    methods = {"dual encoder": q_emb @ index.image[rows].T,
               "BM25 on reports": bm25_scores([q.text for q in queries], [index.items[i].get("report", "") for i in rows]),
               "random": random_scores(len(queries), len(rows), seed)}
    styles = ["all", *sorted({q.style for q in queries})]
    for method, scores in methods.items():
        for style in styles:
            pick = np.array([style == "all" or q.style == style for q in queries])
            _add(result, "text -> image", "labels", method, scores[pick], relevant[pick], style)
    docs = np.flatnonzero(index.has_text & labelled)
    if len(docs):
        where = np.searchsorted(rows, docs)
        for method, scores in {"dual encoder": q_emb @ index.text[docs].T,
                               "BM25 on reports": methods["BM25 on reports"][:, where],
                               "random": random_scores(len(queries), len(docs), seed + 2)}.items():
            _add(result, "text -> report", "labels", method, scores, relevant[:, where])


def _image_tasks(result, index, keys, labelled, feats, probs, seed):
    from synthex.evaluate.retrieval import bm25_scores, random_scores

    rows = np.flatnonzero(labelled)
    same = np.array([[keys[i] == keys[j] for j in rows] for i in rows])
    np.fill_diagonal(same, False)
    off = ~np.eye(len(rows), dtype=bool)
    for method, scores in {"dual encoder": index.image[rows] @ index.image[rows].T,
                           "classifier features": feats[rows] @ feats[rows].T,
                           "random": random_scores(len(rows), len(rows), seed)}.items():
        scores = np.where(off, scores, -np.inf).astype(np.float32)
        _add(result, "image -> image", "labels", method, scores, same)
    docs = np.flatnonzero(index.has_text & labelled)
    if len(docs) == 0:
        result.notes.append("no labelled item has a report: image -> report by labels not computed")
        return
    same_r = np.array([[keys[i] == keys[j] for j in docs] for i in rows])
    guesses = [labels_as_words(probs[i], _classifier_names()) for i in rows]
    reports = [index.items[j].get("report", "") for j in docs]
    for method, scores in {"dual encoder": index.image[rows] @ index.text[docs].T,
                           "classifier + BM25": bm25_scores(guesses, reports),
                           "random": random_scores(len(rows), len(docs), seed)}.items():
        _add(result, "image -> report", "labels", method, scores, same_r)


def _classifier_names():
    from synthex.phantom.classifier import load_classifier

    return load_classifier().config.names


def _exact_tasks(result, index, probs, seed):
    from synthex.evaluate.retrieval import bm25_scores, random_scores

    docs = np.flatnonzero(index.has_text)
    if len(docs) < 2:
        result.notes.append("fewer than 2 reports in the index: exact-pair tasks not computed")
        return
    reports = [index.items[j]["report"] for j in docs]
    text_id = {t: n for n, t in enumerate(dict.fromkeys(reports))}
    ids = np.array([text_id[t] for t in reports])
    exact = ids[:, None] == ids[None, :]  # identical report text counts as the pair
    names = _classifier_names()
    guesses = [labels_as_words(probs[i], names) for i in docs]
    for method, scores in {"dual encoder": index.image[docs] @ index.text[docs].T,
                           "classifier + BM25": bm25_scores(guesses, reports),
                           "random": random_scores(len(docs), len(docs), seed)}.items():
        _add(result, "image -> report", "exact pair", method, scores, exact)
    for method, scores in {"dual encoder": index.text[docs] @ index.image[docs].T,
                           "random": random_scores(len(docs), len(docs), seed + 1)}.items():
        _add(result, "report -> image", "exact pair", method, scores, exact)
    dup = len(reports) - len(text_id)
    if dup:
        result.notes.append(f"{dup} reports repeat another's text word for word; an identical report counts as the pair")


def evaluate_index(index, model, queries: list[Query] | None = None, *, seed: int = 0,
                   progress: bool = True) -> RetrievalEvaluation:
    """Every task of the module docstring on ``index`` (labels from its items where known)."""
    from synthex.search.labels import keys_from_spec

    if index.model_id != model.model_id:
        raise SynthexError(f"index {index.folder} was built with search model {index.model_id}, not {model.model_id}; "
                           "evaluate it with the model that built it (--model) or rebuild it")
    if len(index) < 2:
        raise SynthexError(f"index {index.folder} holds {len(index)} item(s); evaluation needs at least 2")
    queries = load_queries() if queries is None else queries
    keys = [keys_from_spec(it["labels"]) if it.get("labels") else None for it in index.items]
    labelled = np.array([k is not None for k in keys])
    result = RetrievalEvaluation(str(index.folder), index.model_id, len(index), int(labelled.sum()),
                                 int(index.has_text.sum()), len(queries))
    probs, feats = _classifier_outputs(index, progress)
    if labelled.sum() >= 2:
        _text_to_image(result, index, model, queries, keys, labelled, seed)
        _image_tasks(result, index, keys, labelled, feats, probs, seed)
    else:
        result.notes.append("the index has no finding labels (no findings/mesh column): label tasks not computed")
    if (~labelled).any():
        result.notes.append(f"{int((~labelled).sum())} items without labels left out of the label tasks")
    _exact_tasks(result, index, probs, seed)
    return result


# --------------------------------------------------------------------------------------------
# 3. Writing the evaluation
# --------------------------------------------------------------------------------------------
def to_markdown(result: RetrievalEvaluation) -> str:
    """The evaluation as Markdown: one table, one row per task / relevance / method / style."""
    lines = [f"# Search evaluation\n\nIndex `{result.index_dir}` ({result.n_items} images, {result.n_labelled} "
             f"with finding labels, {result.n_reports} reports); search model `{result.model_id}`; "
             f"{result.n_queries} text queries. Metrics: torchmetrics retrieval (queries without a relevant "
             "item are left out and counted).\n",
             "| task | relevance | method | queries | style | " + " | ".join(METRIC_COLUMNS) + " |",
             "|---|---|---|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for r in result.rows:
        m = r.metrics
        n = f"{int(m.get('n_queries', 0))}" + (f" (+{int(m['n_skipped'])} skipped)" if m.get("n_skipped") else "")
        lines.append(f"| {r.task} | {r.relevance} | {r.method} | {n} | {r.style} | "
                     + " | ".join(f"{m[c]:.3f}" if c in m else "-" for c in METRIC_COLUMNS) + " |")
    if result.notes:
        lines += ["", *[f"- {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def plot_evaluation(result: RetrievalEvaluation, path: Path) -> Path:
    """Grouped bars: MAP and R@10 of every method for each task (style "all")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(dict)
    for r in result.rows:
        if r.style == "all" and "MAP" in r.metrics:
            groups[f"{r.task}\n({r.relevance})"][r.method] = r.metrics
    methods = list(dict.fromkeys(r.method for r in result.rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, metric in zip(axes, ("MAP", "R@10")):
        width = 0.8 / max(1, len(methods))
        for j, method in enumerate(methods):
            xs = [i + j * width for i, g in enumerate(groups) if method in groups[g]]
            ys = [groups[g][method][metric] for g in groups if method in groups[g]]
            ax.bar(xs, ys, width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], list(groups), fontsize=7)
        ax.set_title(metric)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    where = Path(result.index_dir)
    name = where.parent.name if where.name == "index" else where.name
    fig.suptitle(f"search evaluation: {name} ({result.n_items} images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_evaluation(result: RetrievalEvaluation, out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """``retrieval.md``, ``retrieval.json``, ``retrieval.csv`` and ``retrieval.png`` in ``out``."""
    import csv
    import io

    out = Path(out)
    paths = {s: out / f"retrieval.{s}" for s in ("md", "json", "csv", "png")}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; choose another --out folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(paths["md"], lambda fh: fh.write(to_markdown(result).encode()))
    body = {k: v for k, v in result.__dict__.items() if k != "rows"}
    body["rows"] = [r.__dict__ for r in result.rows]
    atomic_write(paths["json"], lambda fh: fh.write(json.dumps(body, indent=1).encode()))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", "relevance", "method", "style", "n_queries", "n_skipped", *METRIC_COLUMNS])
    for r in result.rows:
        writer.writerow([r.task, r.relevance, r.method, r.style, r.metrics.get("n_queries"), r.metrics.get("n_skipped"),
                         *(r.metrics.get(c) for c in METRIC_COLUMNS)])
    atomic_write(paths["csv"], lambda fh: fh.write(buf.getvalue().encode()))
    plot_evaluation(result, paths["png"])
    return paths


def evaluate_search(out: str | Path, *, index_dir: str | Path | None = None, data: str | Path | None = None,
                    model_dir: str | Path | None = None, queries: str | Path | None = None, seed: int = 0,
                    overwrite: bool = False, progress: bool = True) -> tuple[RetrievalEvaluation, dict[str, Path]]:
    """Evaluate an index, or index a labelled folder (into ``out/index``) and evaluate that; write
    the results to ``out``. What ``synthex search eval`` and ``synthex evaluate --task retrieval`` run."""
    from synthex.search.index import SearchIndex, build_index
    from synthex.search.model import load_search_model

    if (index_dir is None) == (data is None):
        raise SynthexError("give either an INDEX folder or --data DIR to evaluate (one of them)")
    out = Path(out)
    existing = [p for p in (out / f"retrieval.{s}" for s in ("md", "json")) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; choose another --out folder or pass --overwrite")
    if index_dir is None:
        index_dir = out / "index"
        model = load_search_model(model_dir)
        build_index(data, index_dir, model, progress=progress)
    else:
        index = SearchIndex(index_dir)
        model = load_search_model(model_dir or index.meta.get("model_dir"))
    result = evaluate_index(SearchIndex(index_dir), model, load_queries(queries), seed=seed, progress=progress)
    return result, write_evaluation(result, out, overwrite=overwrite)
