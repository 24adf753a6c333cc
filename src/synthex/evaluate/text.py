"""Text-generation metrics for generated clinical notes and radiology reports.

Shared by the diagnosis -> note text-diffusion model and the image -> report model, so that both
report numbers computed the same way (R2Gen / CheXGenBench conventions):

- :func:`tokenize`: lowercase, words and numbers split from punctuation, ``.`` and ``,`` kept as
  tokens, every other punctuation mark dropped. Every metric below scores these tokens.
- :func:`lexical_metrics`: BLEU-1..4, METEOR, ROUGE-L and CIDEr with ``pycocoevalcap`` (corpus
  level, on the tokens joined by spaces), ROUGE-1/2 F-measure with ``rouge_score``.
- :func:`distinct_n`, :func:`self_bleu`: diversity of a set of generated texts.
- :func:`memorisation`: copies of, and long passages shared with, the training texts.
- :func:`finding_consistency`: clinical correctness: the findings a generated text names (read
  with the phantom finding parser, negations respected) against its condition.

The scorers are optional dependencies (``pip install "synthex[text]"``), imported only when a
metric needs them; a missing one raises :class:`~synthex.errors.SynthexError`. METEOR also needs
a Java runtime (``java`` on PATH).
"""
from __future__ import annotations

import importlib
import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from synthex.errors import SynthexError

LEXICAL_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL", "cider")
# pycocoevalcap fails on empty strings (ROUGE-L divides by the length), so an empty hypothesis /
# reference is scored as one placeholder token. :func:`tokenize` never yields ``@`` or ``#`` and
# the two placeholders differ, so a placeholder never matches anything: an empty text scores 0.
EMPTY_HYPOTHESIS = "@@@"
EMPTY_REFERENCE = "###"
INSTALL_HINT = 'pip install "synthex[text]"'
_TOKEN = re.compile(r"\d+\.\d+|[^\W_]+|[.,]")
_APOSTROPHES = re.compile(r"['\u2019]")


def tokenize(text: str) -> list[str]:
    """Lowercase tokens of ``text``: words and numbers (``3.5`` stays one token), ``.`` and ``,``.

    Apostrophes are removed (``patient's`` -> ``patients``); other punctuation (``- / ( ) : ;``...)
    separates words and is dropped: ``"Plate-like atelectasis, L base."`` ->
    ``["plate", "like", "atelectasis", ",", "l", "base", "."]``.
    """
    if not isinstance(text, str):
        raise SynthexError(f"a text must be a string, got {type(text).__name__}")
    return _TOKEN.findall(_APOSTROPHES.sub("", text.lower()))


# --------------------------------------------------------------------------------------------
# Input checks and optional imports
# --------------------------------------------------------------------------------------------
def _require(module: str, package: str) -> Any:
    """Import ``module`` (from pip package ``package``) or raise SynthexError with the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SynthexError(f"text metrics need the package {package!r}, which is not installed or "
                           f"broken ({exc}); install it with: {INSTALL_HINT}") from None


def _texts(values: Sequence[str], what: str, allow_empty: bool = False) -> list[str]:
    """``values`` as a list of strings; a bare string or a non-string item raises SynthexError."""
    if isinstance(values, str):
        raise SynthexError(f"{what}: give a list of texts, not one string")
    out = list(values)
    if not out and not allow_empty:
        raise SynthexError(f"{what}: got 0 texts; give at least one")
    for i, value in enumerate(out):
        if not isinstance(value, str):
            raise SynthexError(f"{what}[{i}] must be a string, got {type(value).__name__}")
    return out


def _same_length(first: Sequence[Any], second: Sequence[Any], names: tuple[str, str]) -> None:
    if len(first) != len(second):
        raise SynthexError(f"got {len(first)} {names[0]} and {len(second)} {names[1]}; give one "
                           f"{names[1][:-1]} per {names[0][:-1]}")


def _references(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Each reference as a non-empty list of strings."""
    if isinstance(references, str):
        raise SynthexError("references: give a list of texts (or of lists of texts), not one string")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else _texts(ref, f"references[{i}]")
        out.append(refs)
    return out


def _check_pairs(hypotheses: Sequence[str],
                 references: Sequence[str | Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    hyps, refs = _texts(hypotheses, "hypotheses", allow_empty=True), _references(references)
    if not hyps or not refs:
        raise SynthexError(f"got {len(hyps)} hypotheses and {len(refs)} references; give at least one "
                           "pair")
    _same_length(hyps, refs, ("hypotheses", "references"))
    return hyps, refs


# --------------------------------------------------------------------------------------------
# Reference-based lexical metrics
# --------------------------------------------------------------------------------------------
def lexical_metrics(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]],
                    meteor: bool | None = None) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-1/2/L and CIDEr of ``hypotheses`` against ``references``.

    Each reference is one string or a list of strings. BLEU, METEOR, ROUGE-L (pycocoevalcap's,
    beta 1.2) and CIDEr (CIDEr-D, kept raw: it can exceed 1, and its IDF comes from these
    references, so a single pair scores 0) are pycocoevalcap's corpus-level scores; ROUGE-1/2 are
    mean ``rouge_score`` F-measures (best reference). All on :func:`tokenize` tokens. An empty
    hypothesis scores 0 (see :data:`EMPTY_HYPOTHESIS`). ``meteor``: None = only when ``java`` is
    on PATH (else None), True = required (no Java raises), False = skipped (None).
    """
    hyps, refs = _check_pairs(hypotheses, references)
    use_meteor = _want_meteor(meteor)
    res = {i: [" ".join(tokenize(h)) or EMPTY_HYPOTHESIS] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(tokenize(r)) or EMPTY_REFERENCE for r in rs] for i, rs in enumerate(refs)}
    out: dict[str, float | None] = dict.fromkeys(LEXICAL_KEYS)
    out.update(_coco_scores(gts, res))
    out.update(_rouge_n(gts, res))
    if use_meteor:
        out["meteor"] = _meteor(gts, res)
    return out


def _want_meteor(meteor: bool | None) -> bool:
    if meteor is None:
        return shutil.which("java") is not None
    if meteor and shutil.which("java") is None:
        raise SynthexError("METEOR needs Java, and no 'java' command is on PATH; install a Java runtime "
                           "(e.g. openjdk 17) or pass meteor=False")
    return bool(meteor)


def _coco_scores(gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr with pycocoevalcap."""
    bleu = _require("pycocoevalcap.bleu.bleu", "pycocoevalcap").Bleu(4)
    rouge = _require("pycocoevalcap.rouge.rouge", "pycocoevalcap").Rouge()
    cider = _require("pycocoevalcap.cider.cider", "pycocoevalcap").Cider()
    bleus, _ = bleu.compute_score(gts, res, verbose=0)
    out = {f"bleu{k + 1}": min(1.0, max(0.0, float(b))) for k, b in enumerate(bleus)}
    out["rougeL"] = float(rouge.compute_score(gts, res)[0])
    out["cider"] = float(cider.compute_score(gts, res)[0])
    return out


class _Whitespace:
    """A rouge_score tokenizer for text already split by :func:`tokenize` (keeps ``.`` and ``,``)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


def _rouge_n(gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2 F-measure with rouge_score, the best reference per hypothesis."""
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], tokenizer=_Whitespace())
    scores = [scorer.score_multi(gts[i], res[i][0]) for i in res]
    return {key: float(np.mean([s[key].fmeasure for s in scores])) for key in ("rouge1", "rouge2")}


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus METEOR 1.5 with pycocoevalcap's Java wrapper; the Java process is closed after."""
    module = _require("pycocoevalcap.meteor.meteor", "pycocoevalcap")
    scorer = None
    try:
        scorer = module.Meteor()
        return float(scorer.compute_score(gts, res)[0])
    except (OSError, ValueError) as exc:  # java did not start, or died (empty reply)
        raise SynthexError(f"METEOR failed ({exc}); check that 'java -version' works, or pass "
                           "meteor=False") from None
    finally:
        if scorer is not None:  # stop java now, not at garbage collection (its __del__ stays safe)
            proc = scorer.meteor_p
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------------
def _ngram_counts(tokens: list[str], max_n: int) -> Counter[tuple[str, ...]]:
    """Counts of every 1..max_n-gram of ``tokens``."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, max_n + 1) for i in range(len(tokens) - k + 1))


def _check_n(n: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SynthexError(f"{what} must be a whole number >= 1, got {n!r}")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct n-grams / all n-grams over the whole set (0.0 when there are none)."""
    _check_n(n)
    grams = [tuple(toks[i:i + n]) for toks in map(tokenize, _texts(texts, "texts", allow_empty=True))
             for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_n: int = 4, sample: int | None = 200, seed: int = 0) -> float:
    """Self-BLEU in [0, 1]: mean sentence BLEU (orders 1..``max_n``) of each text against all others.

    Exactly ``sacrebleu.sentence_bleu(hyp, others, tokenize="none")`` on :func:`tokenize` tokens
    (smoothing "exp", effective order, score / 100), computed from one n-gram index of the set so
    that it is linear in its size. With more than ``sample`` texts, a fixed random subset of
    ``sample`` (``seed``) is scored as hypotheses, still against all the others. Higher = less
    diverse. Fewer than 2 texts: nan.
    """
    _check_n(max_n, "max_n")
    if sample is not None:
        _check_n(sample, "sample")
    toks = [tokenize(t) for t in _texts(texts, "texts", allow_empty=True)]
    if len(toks) < 2:
        return math.nan
    bleu = _require("sacrebleu.metrics.bleu", "sacrebleu").BLEU
    counts = [_ngram_counts(t, max_n) for t in toks]
    top = _top_two(counts)
    lengths = np.array([len(t) for t in toks])
    chosen = range(len(toks))
    if sample is not None and sample < len(toks):
        chosen = sorted(np.random.default_rng(seed).choice(len(toks), sample, replace=False).tolist())
    scores = []
    for i in chosen:
        correct, total = [0] * max_n, [0] * max_n
        for gram, count in counts[i].items():
            best = top[gram]
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, best[0] if best[1] != i else best[2])
        others = np.delete(lengths, i)
        diff = np.abs(others - lengths[i])
        ref_len = int(others[diff == diff.min()].min())  # closest length, ties -> shorter (sacrebleu)
        scores.append(bleu.compute_bleu(correct, total, int(lengths[i]), ref_len, smooth_method="exp",
                                        effective_order=True, max_ngram_order=max_n).score / 100.0)
    return float(np.mean(scores))


def _top_two(counts: list[Counter[tuple[str, ...]]]) -> dict[tuple[str, ...], list[int]]:
    """n-gram -> [highest count, its text, second highest count, its text] over the texts, so the
    highest count among all texts but one is a lookup (BLEU clips by the max over references)."""
    top: dict[tuple[str, ...], list[int]] = {}
    for i, counter in enumerate(counts):
        for gram, c in counter.items():
            best = top.get(gram)
            if best is None:
                top[gram] = [c, i, 0, -1]
            elif c > best[0]:
                best[:] = [c, i, best[0], best[1]]
            elif c > best[2]:
                best[2:] = [c, i]
    return top


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------
def memorisation(generated: Sequence[str], training: Sequence[str], n: int = 8) -> dict[str, Any]:
    """How much of the training text the generated texts repeat, on :func:`tokenize` tokens.

    ``exact_copy``: share of generated texts equal to a training text (empty texts never count);
    ``longest_shared_ngram_mean`` / ``_max``: per generated text, the length in tokens of its longest
    contiguous token run found in any one training text; ``share_with_ngram_overlap``: share of
    generated texts sharing a run of >= ``n`` tokens with training. A suffix automaton of the
    training tokens makes it linear in the total length (3,000 x 60 tokens: about a second).
    """
    _check_n(n)
    gen = [tokenize(t) for t in _texts(generated, "generated")]
    train = [tokenize(t) for t in _texts(training, "training")]
    seen = {tuple(t) for t in train if t}
    automaton = _suffix_automaton(train)
    longest = np.array([_longest_match(automaton, t) for t in gen])
    return {"exact_copy": float(np.mean([bool(t) and tuple(t) in seen for t in gen])),
            "longest_shared_ngram_mean": float(longest.mean()),
            "longest_shared_ngram_max": int(longest.max()),
            "share_with_ngram_overlap": float(np.mean(longest >= n)), "n": n}


_Automaton = tuple[list[dict[int, int]], list[int], list[int], dict[str, int]]


def _suffix_automaton(texts: list[list[str]]) -> _Automaton:
    """Suffix automaton (transitions, suffix links, lengths, vocabulary) of the texts' token ids,
    joined by a separator (-1) that no query has, so that no match runs across two texts."""
    vocab: dict[str, int] = {}
    nxt: list[dict[int, int]] = [{}]
    link, length = [-1], [0]
    last = 0
    for toks in texts:
        for sym in [vocab.setdefault(t, len(vocab)) for t in toks] + [-1]:
            cur = len(length)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and sym not in nxt[p]:
                nxt[p][sym] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][sym]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(length)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(sym) == q:
                        nxt[p][sym] = clone
                        p = link[p]
                    link[q] = link[cur] = clone
            last = cur
    return nxt, link, length, vocab


def _longest_match(automaton: _Automaton, tokens: list[str]) -> int:
    """Length of the longest contiguous run of ``tokens`` that the automaton's texts contain."""
    nxt, link, length, vocab = automaton
    state = run = best = 0
    for tok in tokens:
        sym = vocab.get(tok, -2)  # -2: a token no training text has
        while state and sym not in nxt[state]:
            state = link[state]
            run = length[state]
        if sym in nxt[state]:
            state, run = nxt[state][sym], run + 1
        else:
            state = run = 0
        best = max(best, run)
    return best


# --------------------------------------------------------------------------------------------
# Clinical consistency
# --------------------------------------------------------------------------------------------
def _label_names(names: Sequence[str] | None) -> list[str]:
    """The labels scored: every finding but "normal", then the phantom's sided labels
    (``pleural_effusion_right`` ...), or ``names`` checked against those."""
    from synthex.phantom.classifier import PHANTOM_LABELS
    from synthex.phantom.findings import finding_names

    default = [n for n in finding_names() if n != "normal"]
    default += [n for n in PHANTOM_LABELS if n.endswith(("_right", "_left")) and n not in default]
    if names is None:
        return default
    chosen = _texts(names, "names")
    unknown = [n for n in chosen if n not in default and n not in PHANTOM_LABELS]
    twice = sorted({n for n in chosen if chosen.count(n) > 1})
    if unknown or twice:
        problem = f"unknown labels {unknown}" if unknown else f"labels given twice {twice}"
        raise SynthexError(f"names: {problem}; give distinct labels among {', '.join(default)} "
                           "(normal = none of them)")
    return chosen


def _label_vector(findings: list[Any], names: list[str]) -> np.ndarray:
    """Multi-hot (bool) over ``names``: a finding name is set by that exact finding; any other
    label (the sided ``opacity_left`` ...) as the phantom labels set it
    (:func:`synthex.phantom.classifier.finding_labels`, as in ``text_labels``)."""
    from synthex.phantom.classifier import finding_labels
    from synthex.phantom.findings import FINDING_NAMES

    family = finding_labels(findings, tuple(names))
    direct = {f.name for f in findings}
    return np.array([n in direct if n in FINDING_NAMES else bool(family[k] > 0.5)
                     for k, n in enumerate(names)], dtype=bool)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _confusion(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Counts and rates of one label (None where a rate's denominator is 0)."""
    tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
    fn, tn = int((truth & ~pred).sum()), int((~truth & ~pred).sum())
    return {"support": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _sides(findings: list[Any]) -> dict[str, set[str]]:
    """Finding name -> the sides stated for it (bilateral = right and left); unsided ones left out."""
    out: dict[str, set[str]] = {}
    for f in findings:
        if f.side:
            out.setdefault(f.name, set()).update(("right", "left") if f.side == "bilateral" else (f.side,))
    return out


def _laterality(text_findings: list[list[Any]], condition_findings: list[list[Any]]) -> float | None:
    """Share of pairs whose text states, for every finding the condition gives a side, the same
    finding with the same side(s); among pairs whose condition states a side (None if none)."""
    hits = total = 0
    for found, wanted in zip(text_findings, condition_findings):
        want = _sides(wanted)
        if want:
            have = _sides(found)
            total += 1
            hits += all(have.get(name) == sides for name, sides in want.items())
    return _ratio(hits, total)


def finding_consistency(texts: Sequence[str], conditions: Sequence[str],
                        names: Sequence[str] | None = None) -> dict[str, Any]:
    """Whether each generated text names the findings of its condition (a diagnosis such as
    ``"Cardiomegaly/mild; Pleural Effusion/right"`` or a reference report).

    Both are read with :func:`synthex.phantom.labels.text_findings` (negations such as "no
    pleural effusion" give nothing) and scored as multi-hot labels over ``names`` (default: every
    finding but "normal" plus the sided ``pleural_effusion_right/left``, ``opacity_right/left``;
    the sided labels follow the phantom labels: consolidation/pneumonia/airspace disease count as
    opacity, an unstated side as right). Returns ``per_finding`` counts and rates, ``micro_f1``
    (all labels), ``macro_f1`` (labels with support), ``exact_match``, ``normal_agreement``,
    ``laterality_accuracy`` (see :func:`_laterality`; explicit sides only), ``unparsed_sentences``
    (generated texts), ``unparsed_condition_sentences``, ``n`` and ``names``. Undefined rates: None.
    """
    from synthex.phantom.labels import text_findings

    texts, conditions = _texts(texts, "texts"), _texts(conditions, "conditions")
    _same_length(texts, conditions, ("texts", "conditions"))
    labels = _label_names(names)
    read_t, read_c = [text_findings(t) for t in texts], [text_findings(c) for c in conditions]
    pred = np.stack([_label_vector(f, labels) for f, _ in read_t])
    truth = np.stack([_label_vector(f, labels) for f, _ in read_c])
    per = {name: _confusion(truth[:, k], pred[:, k]) for k, name in enumerate(labels)}
    tp, fp, fn = (sum(p[key] for p in per.values()) for key in ("tp", "fp", "fn"))
    f1s = [p["f1"] for p in per.values() if p["support"] > 0]
    normal = ~truth.any(axis=1)
    return {"per_finding": per, "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "macro_f1": float(np.mean(f1s)) if f1s else None,
            "exact_match": float((pred == truth).all(axis=1).mean()),
            "normal_agreement": float((~pred[normal].any(axis=1)).mean()) if normal.any() else None,
            "laterality_accuracy": _laterality([f for f, _ in read_t], [f for f, _ in read_c]),
            "unparsed_sentences": sum(u for _, u in read_t),
            "unparsed_condition_sentences": sum(u for _, u in read_c), "n": len(texts), "names": labels}
