"""Text-generation metrics (synthex.evaluate.text): lexical scores, diversity, memorisation and
finding consistency, on hand-made examples with hand-computed values."""
from __future__ import annotations

import math
import random
import shutil
import sys

import pytest

from synthex.errors import SynthexError
from synthex.evaluate import text as T

NOTE = "The heart is mildly enlarged. There is a small right pleural effusion, no pneumothorax."
OTHER = "Lungs clear bilaterally; osseous structures intact"


# ------------------------------------------------------------------------------------ tokenize
def test_tokenize_lowercases_and_splits_punctuation():
    assert T.tokenize("Plate-like atelectasis, L base. Patient's 3.5cm nodule (RUL)!") == [
        "plate", "like", "atelectasis", ",", "l", "base", ".", "patients", "3.5", "cm", "nodule", "rul"]
    assert T.tokenize("") == [] and T.tokenize("@@@ ### |||") == []


# ------------------------------------------------------------------------------------ lexical
def test_identical_texts_score_one():
    hyps = [NOTE, "Cardiac silhouette within normal limits, lungs are clear."]
    scores = T.lexical_metrics(hyps, [h.upper() for h in hyps], meteor=False)
    assert set(scores) == set(T.LEXICAL_KEYS)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    assert scores["cider"] > 1.0  # CIDEr is kept raw (10 for a perfect corpus)
    assert scores["meteor"] is None


def test_disjoint_texts_score_zero():
    scores = T.lexical_metrics(["alpha beta gamma delta epsilon"], ["one two three four five"], meteor=False)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL", "cider"):
        assert scores[key] == pytest.approx(0.0, abs=1e-6), key


def test_multiple_references_use_the_best_and_empty_hypothesis_scores_zero():
    multi = T.lexical_metrics([NOTE], [[OTHER, NOTE]], meteor=False)
    assert multi["bleu4"] == pytest.approx(1.0, abs=1e-6) and multi["rouge2"] == pytest.approx(1.0)
    empty = T.lexical_metrics(["", "   "], [NOTE, ""], meteor=False)  # no crash; placeholders never match
    for key in ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "cider"):
        assert empty[key] == pytest.approx(0.0, abs=1e-6), key


@pytest.mark.parametrize(("hyps", "refs", "needle"), [
    (["a b c", "d e f"], ["a b c"], "2 hypotheses and 1 references"),
    ([], [], "0 hypotheses and 0 references"),
    ("a b c", ["a b c"], "not one string"),
    (["a b c"], [[]], "references[0]: got 0 texts"),
    ([None], ["a"], "hypotheses[0] must be a string"),
])
def test_bad_pairs_raise(hyps, refs, needle):
    with pytest.raises(SynthexError) as err:
        T.lexical_metrics(hyps, refs, meteor=False)
    assert needle in str(err.value)


def test_meteor_true_without_java_raises(monkeypatch):
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(SynthexError, match="Java"):
        T.lexical_metrics([NOTE], [NOTE], meteor=True)
    assert T.lexical_metrics([NOTE], [NOTE])["meteor"] is None  # None = only when java is found


def test_meteor_with_java():
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    scores = T.lexical_metrics([NOTE], [NOTE], meteor=True)  # one Java start (slow: ~5-20 s)
    assert 0.95 < scores["meteor"] <= 1.0


def test_missing_package_names_it_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(SynthexError) as err:
        T.lexical_metrics([NOTE], [NOTE], meteor=False)
    assert "'rouge-score'" in str(err.value) and 'pip install "synthex[text]"' in str(err.value)
    monkeypatch.setitem(sys.modules, "sacrebleu.metrics.bleu", None)
    with pytest.raises(SynthexError, match="sacrebleu"):
        T.self_bleu([NOTE, OTHER])


# ------------------------------------------------------------------------------------ diversity
def test_distinct_n_hand_computed():
    texts = ["a b a b", "a b c"]
    # bigrams: ab ba ab | ab bc -> 3 distinct of 5; unigrams: 3 distinct of 7
    assert T.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert T.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert T.distinct_n(["a", ""], 2) == 0.0 and T.distinct_n([], 1) == 0.0
    with pytest.raises(SynthexError, match="n must be"):
        T.distinct_n(texts, 0)


def test_self_bleu_equals_sacrebleu_sentence_bleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(3)
    words = "the heart lung is are no normal mild right left effusion opacity .".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(12)] + [""]
    toks = [" ".join(T.tokenize(t)) for t in texts]
    expected = [sacrebleu.sentence_bleu(toks[i], toks[:i] + toks[i + 1:], tokenize="none").score / 100
                for i in range(len(toks))]
    assert T.self_bleu(texts, sample=None) == pytest.approx(sum(expected) / len(expected), abs=1e-9)


def test_self_bleu_limits_and_sampling():
    assert T.self_bleu([NOTE, NOTE, NOTE]) == pytest.approx(1.0)
    assert T.self_bleu(["alpha beta gamma delta", "one two three four"]) == 0.0
    assert math.isnan(T.self_bleu([NOTE])) and math.isnan(T.self_bleu([]))
    rng = random.Random(0)
    texts = [" ".join(rng.choices("abcdefgh", k=10)) for _ in range(40)]
    first, again = T.self_bleu(texts, sample=10, seed=1), T.self_bleu(texts, sample=10, seed=1)
    assert first == again and 0.0 < first < 1.0
    assert T.self_bleu(texts, sample=100) == T.self_bleu(texts, sample=None)


# ------------------------------------------------------------------------------------ memorisation
def test_memorisation_hand_computed():
    training = ["the heart is enlarged .", "no pleural effusion is seen ."]
    generated = ["The heart is enlarged.", "the heart is normal, no pleural effusion.", "Lungs clear"]
    out = T.memorisation(generated, training, n=3)
    assert out["exact_copy"] == pytest.approx(1 / 3)
    assert out["longest_shared_ngram_max"] == 5  # the copy: all 5 tokens
    assert out["longest_shared_ngram_mean"] == pytest.approx((5 + 3 + 0) / 3)
    assert out["share_with_ngram_overlap"] == pytest.approx(2 / 3)
    assert T.memorisation(generated, training, n=4)["share_with_ngram_overlap"] == pytest.approx(1 / 3)


def test_copied_note_and_no_match_across_texts():
    out = T.memorisation([NOTE], [OTHER, NOTE, "the end"])
    assert out["exact_copy"] == 1.0 and out["longest_shared_ngram_max"] == len(T.tokenize(NOTE))
    assert out["share_with_ngram_overlap"] == 1.0
    # "b c" only exists across the boundary of two training texts: not a shared bigram
    assert T.memorisation(["b c", ""], ["a b", "c d"])["longest_shared_ngram_max"] == 1


def _brute_longest(gen: list[str], training: list[list[str]]) -> int:
    best = 0
    for i in range(len(gen)):
        for j in range(i + best + 1, len(gen) + 1):
            piece = gen[i:j]
            if not any(piece == t[k:k + len(piece)] for t in training for k in range(len(t))):
                break
            best = j - i
    return best


def test_memorisation_matches_brute_force():
    rng = random.Random(7)
    training = [" ".join(rng.choices("abc", k=rng.randint(0, 12))) for _ in range(15)]
    generated = [" ".join(rng.choices("abcd", k=rng.randint(1, 15))) for _ in range(40)]
    toks = [T.tokenize(t) for t in training]
    for g in generated:
        want = _brute_longest(T.tokenize(g), toks)
        assert T.memorisation([g], training)["longest_shared_ngram_max"] == want, g


def test_memorisation_on_a_realistic_size():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(400)]
    training = [" ".join(rng.choices(vocab, k=60)) for _ in range(3000)]
    generated = [" ".join(rng.choices(vocab, k=60)) for _ in range(495)] + training[:5]
    out = T.memorisation(generated, training)
    assert out["exact_copy"] == pytest.approx(0.01) and out["longest_shared_ngram_max"] == 60


def test_memorisation_bad_inputs():
    with pytest.raises(SynthexError, match="training: got 0 texts"):
        T.memorisation([NOTE], [])
    with pytest.raises(SynthexError, match="generated: got 0 texts"):
        T.memorisation([], [NOTE])


# ------------------------------------------------------------------------------------ findings
def test_perfect_findings_give_one():
    texts = ["Mild cardiomegaly. Small right pleural effusion.", "No acute cardiopulmonary abnormality."]
    out = T.finding_consistency(texts, ["Cardiomegaly/mild; Pleural Effusion/right", "normal"])
    assert out["micro_f1"] == 1.0 and out["macro_f1"] == 1.0 and out["exact_match"] == 1.0
    assert out["normal_agreement"] == 1.0 and out["laterality_accuracy"] == 1.0
    assert out["per_finding"]["pleural_effusion_right"]["support"] == 1 and out["n"] == 2


def test_wrong_side_and_bilateral():
    wrong = T.finding_consistency(["Left pleural effusion."], ["Pleural Effusion/right"])
    assert wrong["laterality_accuracy"] == 0.0 and wrong["exact_match"] == 0.0
    per = wrong["per_finding"]
    assert per["pleural_effusion"]["tp"] == 1
    assert per["pleural_effusion_right"]["fn"] == 1 and per["pleural_effusion_left"]["fp"] == 1
    both = T.finding_consistency(["Right pleural effusion.", "Bilateral effusions."],
                                 ["Bilateral pleural effusions.", "Pleural effusion, right and left."])
    assert both["laterality_accuracy"] == pytest.approx(1 / 2)
    assert T.finding_consistency(["Cardiomegaly."], ["Cardiomegaly/mild"])["laterality_accuracy"] is None


def test_negation_reads_nothing():
    from synthex.phantom.labels import text_findings

    assert text_findings("No pleural effusion.") == ([], 0)
    missed = T.finding_consistency(["No pleural effusion."], ["Pleural Effusion/right"])
    assert missed["per_finding"]["pleural_effusion"]["fn"] == 1 and missed["micro_f1"] == 0.0
    normal = T.finding_consistency(["No pleural effusion. No pneumothorax."], ["normal"])
    assert normal["normal_agreement"] == 1.0 and normal["exact_match"] == 1.0
    assert normal["micro_f1"] is None and normal["macro_f1"] is None  # nothing to find, nothing said


def test_known_confusion_hand_computed():
    texts = ["Mild cardiomegaly. Left pleural effusion.", "No pleural effusion.", "Normal chest.",
             "The bananas are ripe."]
    conditions = ["Cardiomegaly/mild; Pleural Effusion/right", "Pleural Effusion/left", "normal", "normal"]
    out = T.finding_consistency(texts, conditions)
    # tp: cardiomegaly 1, pleural_effusion 1; fp: pleural_effusion_left 1;
    # fn: pleural_effusion 1, pleural_effusion_right 1, pleural_effusion_left 1 -> 4 / (4 + 1 + 3)
    assert out["micro_f1"] == pytest.approx(0.5)
    # f1 over labels with support: cardiomegaly 1, pleural_effusion 2/3, _right 0, _left 0
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3) / 4)
    pe = out["per_finding"]["pleural_effusion"]
    assert (pe["support"], pe["sensitivity"], pe["specificity"], pe["precision"]) == (2, 0.5, 1.0, 1.0)
    assert out["exact_match"] == pytest.approx(2 / 4) and out["normal_agreement"] == 1.0
    assert out["laterality_accuracy"] == 0.0 and out["unparsed_sentences"] == 1


def test_findings_names_and_bad_inputs():
    out = T.finding_consistency(["Cardiomegaly."], ["Edema."], names=["cardiomegaly", "opacity_left"])
    assert list(out["per_finding"]) == ["cardiomegaly", "opacity_left"]
    assert out["normal_agreement"] == 0.0  # edema is not among the names: the condition is normal
    with pytest.raises(SynthexError, match="unknown labels \\['banana'\\]"):
        T.finding_consistency(["x"], ["y"], names=["banana"])
    with pytest.raises(SynthexError, match="2 texts and 1 conditions"):
        T.finding_consistency(["a", "b"], ["c"])
    with pytest.raises(SynthexError, match="texts: got 0 texts"):
        T.finding_consistency([], [])
