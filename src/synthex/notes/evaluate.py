"""Score generated notes: against held-out references, against their diagnosis, for diversity,
fluency and memorisation (the measures of issue 16, one row per model/sampler).

:func:`score_notes` takes the generated texts with the diagnoses they were made for and returns
one flat dict:

- lexical (vs the held-out real note of the same patient): BLEU-1..4, METEOR (when Java is
  present), ROUGE-1/2/L, CIDEr (:func:`synthex.evaluate.text.lexical_metrics`);
- diagnosis consistency: findings read back from each note by the project's finding parser
  (negation handled, sides included) vs the findings of the diagnosis: micro-F1 over all,
  over single-finding and over two-finding diagnoses, exact match, laterality
  (:func:`synthex.evaluate.text.finding_consistency`);
- diversity: distinct-1/2, self-BLEU; memorisation: share of exact copies of a training note,
  longest shared n-gram; fluency: perplexity under the AR baseline when one is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def finding_count(diagnosis: str) -> int:
    """How many distinct findings the parser reads from a diagnosis (0 = normal / none known)."""
    from synthex.phantom.labels import text_findings

    found, _ = text_findings(diagnosis.replace(";", ". "))
    return len({f.name for f in found})


def consistency_by_size(texts: Sequence[str], diagnoses: Sequence[str]) -> dict[str, Any]:
    """Diagnosis-consistency micro-F1 overall, for single- and for two-finding diagnoses."""
    from synthex.evaluate.text import finding_consistency

    conditions = [d.replace(";", ". ") for d in diagnoses]
    out: dict[str, Any] = {}
    whole = finding_consistency(list(texts), conditions)
    out.update(consistency_f1=whole["micro_f1"], consistency_exact=whole["exact_match"],
               normal_agreement=whole["normal_agreement"], laterality=whole["laterality_accuracy"])
    sizes = [finding_count(d) for d in diagnoses]
    for size, name in ((1, "single"), (2, "pairs")):
        idx = [i for i, s in enumerate(sizes) if s == size]
        out[f"n_{name}"] = len(idx)
        out[f"consistency_f1_{name}"] = (finding_consistency([texts[i] for i in idx], [conditions[i] for i in idx])
                                         ["micro_f1"] if idx else None)
    return out


def score_notes(texts: Sequence[str], diagnoses: Sequence[str], references: Sequence[str],
                training_notes: Sequence[str], *, fluency=None, meteor: bool | None = None) -> dict[str, Any]:
    """All the measures of the module docstring for one set of generated notes. ``fluency`` is
    an optional ``callable(diagnoses, texts) -> perplexity``."""
    from synthex.evaluate.text import distinct_n, lexical_metrics, memorisation, self_bleu

    row: dict[str, Any] = {"n": len(texts)}
    row.update(lexical_metrics(list(texts), list(references), meteor=meteor))
    row.update(consistency_by_size(texts, diagnoses))
    row.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2), self_bleu=self_bleu(texts))
    mem = memorisation(list(texts), list(training_notes))
    row.update(exact_copy=mem["exact_copy"], longest_shared_ngram=mem["longest_shared_ngram_mean"])
    if fluency is not None:
        row["perplexity_ar"] = fluency(list(diagnoses), list(texts))
    return row
