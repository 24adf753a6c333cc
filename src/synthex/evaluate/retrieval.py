"""Ranking metrics and baselines for search: Recall@k, Precision@k, NDCG@k, MAP, MRR.

:func:`score_rankings` takes a score matrix (queries x items, higher = better) and a boolean
relevance matrix of the same shape and computes the metrics with torchmetrics' retrieval
metrics (one query = one ``indexes`` group). Queries with no relevant item are left out of the
means and counted (``n_skipped``), never scored as zero silently.

Baselines on the same rankings: :func:`random_scores` (a seeded permutation per query) and a
lexical one, :func:`bm25_scores` (Okapi BM25, k1 = 1.5, b = 0.75, over lower-cased word tokens;
the query's words against each item's report).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from synthex.errors import SynthexError

DEFAULT_KS = (1, 5, 10)
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of and or in on at to is are was were with without there this that be by for as "
                  "from it its chest x ray xray".split())


def score_rankings(scores, relevant, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``R@k``, ``P@k``, ``NDCG@k`` for each k, ``MAP`` and ``MRR``, plus ``n_queries`` and
    ``n_skipped`` (queries without any relevant item)."""
    import torch
    from torchmetrics.retrieval import (
        RetrievalMAP,
        RetrievalMRR,
        RetrievalNormalizedDCG,
        RetrievalPrecision,
        RetrievalRecall,
    )

    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32) if not torch.is_tensor(scores) else scores).float()
    relevant = torch.as_tensor(relevant).bool()
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise SynthexError(f"scores {tuple(scores.shape)} and relevance {tuple(relevant.shape)} must be the same "
                           "(queries, items) matrix")
    has = relevant.any(1)
    n_q = int(has.sum())
    out: dict[str, float] = {"n_queries": float(n_q), "n_skipped": float(len(has) - n_q)}
    if n_q == 0:
        return out
    s, r = scores[has], relevant[has]
    preds, target = s.flatten(), r.flatten()
    indexes = torch.arange(s.shape[0]).repeat_interleave(s.shape[1])
    for k in ks:
        out[f"R@{k}"] = float(RetrievalRecall(top_k=k)(preds, target, indexes=indexes))
    for k in ks:
        out[f"P@{k}"] = float(RetrievalPrecision(top_k=k)(preds, target, indexes=indexes))
    for k in ks:
        out[f"NDCG@{k}"] = float(RetrievalNormalizedDCG(top_k=k)(preds, target, indexes=indexes))
    out["MAP"] = float(RetrievalMAP()(preds, target, indexes=indexes))
    out["MRR"] = float(RetrievalMRR()(preds, target, indexes=indexes))
    return out


def random_scores(n_queries: int, n_items: int, seed: int = 0) -> np.ndarray:
    """Scores that rank the items in a seeded random order for each query."""
    return np.random.default_rng(seed).random((n_queries, n_items)).astype(np.float32)


def words(text: str) -> list[str]:
    """Lower-cased word tokens without stop words (the lexical baseline's analyser)."""
    return [w for w in _WORD.findall(str(text).lower()) if w not in _STOP]


def bm25_scores(queries: Sequence[str], documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 of every query against every document: (len(queries), len(documents))."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    lengths = np.zeros(len(documents), dtype=np.float64)
    for j, doc in enumerate(documents):
        tokens = words(doc)
        lengths[j] = len(tokens)
        counts: dict[int, int] = {}
        for t in tokens:
            term = vocab.setdefault(t, len(vocab))
            counts[term] = counts.get(term, 0) + 1
        for term, c in counts.items():
            rows.append(term), cols.append(j), vals.append(c)
    out = np.zeros((len(queries), len(documents)), dtype=np.float32)
    if not vocab or not len(documents):
        return out
    tf = sparse.csr_matrix((vals, (rows, cols)), shape=(len(vocab), len(documents)), dtype=np.float64)
    df = np.diff(tf.indptr)
    idf = np.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
    for i, query in enumerate(queries):
        terms = sorted({vocab[w] for w in words(query) if w in vocab})
        if not terms:
            continue
        sub = tf[terms].toarray()
        out[i] = (idf[terms, None] * sub * (k1 + 1) / (sub + norm[None, :])).sum(0)
    return out
