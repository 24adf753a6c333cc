"""Tests of the report-text cleaning rule table (synthex.data.cleaning).

Every rule is exercised with a real sentence quoted from the bundled IU X-ray reports
(torchxrayvision's NLMCXR_reports.tgz); a test checks that each quoted sentence really occurs there.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from synthex.data import cleaning
from synthex.data.cleaning import Cleaner, CleaningRule, load_rules, split_sentences
from synthex.errors import SynthexError

# (rule, real sentence from the bundled reports, expected cleaned text)
REAL_CASES: list[tuple[str, str, str]] = [
    ("markup_debris", "At XXXX 2 right lung pulmonary nodules concerning for<BR>metastatic disease",
     "At 2 right lung pulmonary nodules concerning for metastatic disease"),
    ("drop_interval_change", "The heart and lungs have XXXX XXXX in the interval.", ""),
    ("drop_no_xxxx_abnormalities_as",
     "No XXXX abnormalities as compared to prior study of earlier the same XXXX", ""),
    ("drop_xxxx_of_the_spine", "XXXX XXXX of the spine.", ""),
    ("drop_examination_consists_of",
     "The XXXX examination consists of frontal and lateral radiographs of the chest.", ""),
    ("drop_views_obtained", "XXXX XXXX and lateral chest examination was obtained.", ""),
    ("drop_views_obtained", "PA and lateral views of the chest were obtained.", ""),
    ("drop_masked_predicate", "Lung volumes are XXXX.", ""),
    ("drop_image_count", "2 images.", ""),
    ("drop_image_count", "Three images submitted.", ""),
    ("drop_image_count", "Right shoulder: 3 images.", ""),
    ("drop_ct_mention", "Recommend chest CT for further evaluation.", ""),
    ("drop_scan_mention",
     "Bone scan would be helpful to evaluate for metastatic disease to the bone.", ""),
    ("drop_considered",
     "A followup study and 4 to 6 weeks could be considered to evaluate for resolution.", ""),
    ("drop_advised", "Additional evaluation XXXX advised.", ""),
    ("lymph_nodes", "Calcified lymph XXXX are present.", "Calcified lymph nodes are present."),
    ("lymph_nodes", "Calcified right hilar lymph XXXX.", "Calcified right hilar lymph nodes."),
    ("hilar_lymph_nodes", "Calcified left hilar XXXX.", "Calcified left hilar lymph nodes."),
    ("upper_lobe_scarring",
     "Bilateral upper lobe XXXX, fibronodular infiltrates which have been there on prior exams.",
     "Bilateral upper lobe scarring, fibronodular infiltrates which have been there on prior "
     "exams."),
    ("cerclage_wires", "Sternotomy and XXXX cerclage XXXX appear intact.",
     "Sternotomy and cerclage wires appear intact."),
    ("osseous_structures_intact", "The XXXX are intact.", "The osseous structures are intact."),
    ("osseous_structures_intact", "Limited evaluation reveals the XXXX XXXX to be grossly intact.",
     "Limited evaluation reveals the osseous structures to be grossly intact."),
    ("osseous_structures_normal", "The XXXX are grossly normal.",
     "The osseous structures are normal."),
    ("osseous_structures_normal", "XXXX are normal.", "The osseous structures are normal."),
    ("osseous_structures_unremarkable", "The XXXX are unremarkable.",
     "The osseous structures are unremarkable."),
    ("osseous_structures_unremarkable", "XXXX and soft tissues are unremarkable.",
     "Osseous structures and soft tissues are unremarkable."),
    ("x_ray", "Normal chest x-XXXX.", "Normal chest x-ray."),
    ("x_ray", "Normal X-XXXX of chest.", "Normal X-ray of chest."),
    ("sternotomy_wire", "The most caudal XXXX sternotomy XXXX is fractured.",
     "The most caudal sternotomy wire is fractured."),
    ("sternotomy_wires", "XXXX sternotomy XXXX are intact.", "Sternotomy wires are intact."),
    ("aortic_arch", "Right-sided aortic XXXX.", "Right-sided aortic arch."),
    ("costophrenic_angle_side", "There is blunting of the left costophrenic XXXX.",
     "There is blunting of the left costophrenic angle."),
    ("costophrenic_angle_blunting", "Bilateral costophrenic XXXX blunting is present.",
     "Bilateral costophrenic angle blunting is present."),
    ("costophrenic_angles", "Both costophrenic XXXX are blunted.",
     "Both costophrenic angles are blunted."),
    ("pulmonary_vessels", "The heart and pulmonary XXXX are normal.",
     "The heart and pulmonary vessels are normal."),
    ("no_signs_of", "There are no XXXX of a large pleural effusion.",
     "There are no signs of a large pleural effusion."),
    ("lung_field_side", "Clear left lung XXXX.", "Clear left lung field."),
    ("lung_fields", "Clear lung XXXX bilaterally.", "Clear lung fields bilaterally."),
    ("port_a_cath", "Right XXXX-A-XXXX tip overlies the mid SVC.",
     "Right Port-A-Cath tip overlies the mid SVC."),
    ("in_place", "Left PICC line remains in XXXX.", "Left PICC line remains in place."),
    ("comparison_prefix", "Comparison XXXX, XXXX.", ""),
    ("comparison_prefix", "Comparison XXXX, XXXX Well-expanded and clear lungs.",
     "Well-expanded and clear lungs."),
    ("masked_change_prefix", "XXXX change COPD.", "COPD."),
    ("masked_last_list_item", "Soft tissues and XXXX are unremarkable.",
     "Soft tissues are unremarkable."),
    ("osseous_structures_agreement", "XXXX XXXX is intact.", "Osseous structures are intact."),
    ("is_unchanged_to_normal", "Cardiomediastinal silhouette is unchanged.",
     "Cardiomediastinal silhouette is normal."),
    ("is_unchanged_to_normal", "Heart size is unchanged.", "Heart size is normal."),
    ("are_unchanged_to_normal", "Cardiomediastinal contours are unchanged since previous exam.",
     "Cardiomediastinal contours are normal."),
    ("are_unchanged_to_normal", "Osseous structures and soft tissues are unchanged.",
     "Osseous structures and soft tissues are normal."),
    ("remove_leftover_xxxx", "No XXXX focal airspace consolidation or pleural effusion.",
     "No focal airspace consolidation or pleural effusion."),
    ("remove_leftover_xxxx", "Left-sided XXXX/ICD device and leads are stable.",
     "Left-sided ICD device and leads are stable."),
    ("leading_punctuation", "XXXX, soft tissues, and alignment are normal.",
     "Soft tissues, and alignment are normal."),
    ("drop_empty_sentence", "XXXX.", ""),
    ("drop_empty_sentence", "There is no evidence of acute cardiopulmonary disease. .",
     "There is no evidence of acute cardiopulmonary disease."),
    ("space_before_punctuation", "Pulmonary vasculature is normal .",
     "Pulmonary vasculature is normal."),
    ("space_after_open_parenthesis",
     "Stable XXXX foreign body over the left breast (XXXX nipple piercing).",
     "Stable foreign body over the left breast (nipple piercing)."),
    ("double_comma",
     "Heart XXXX, mediastinum, XXXX, bony structures and lung XXXX are unremarkable.",
     "Heart, mediastinum, bony structures and lung fields are unremarkable."),
    ("comma_before_period",
     "If there is concern for soft tissue bone or bony abnormality of the thorax, XXXX.",
     "If there is concern for soft tissue bone or bony abnormality of the thorax."),
    ("repeated_period", "No acute cardiopulmonary abnormality..",
     "No acute cardiopulmonary abnormality."),
    ("dangling_word_before_period", "Shunt tubing traverses the entire image from top to XXXX.",
     "Shunt tubing traverses the entire image from top."),
    ("dangling_word_before_period", "There are degenerative changes of the XXXX.",
     "There are degenerative changes."),
    ("double_space", "Heart size is at the upper limits of  normal.",
     "Heart size is at the upper limits of normal."),
    ("double_space", "There is mild XXXX atelectasis in the left lung base.",
     "There is mild atelectasis in the left lung base."),
]

# Rules that never fire on the bundled corpus with the full table (an earlier rule drops every
# sentence they would touch); they are tested on a real sentence with a shorter table below.
PARTIAL_TABLE_CASES: list[tuple[str, str, str, str]] = [
    # (rule, first rule of the shortened table, real sentence, expected)
    ("empty_parentheses", "remove_leftover_xxxx",
     "On a previous outside XXXX scan (XXXX), the right upper lobe was consolidated.",
     "On a previous outside scan, the right upper lobe was consolidated."),
]

# Other real texts quoted by the tests below.
MARKUP_REPORT = (
    "[&lt;The heart size and cardiomediastinal silhouette are stable and within normal limits. "
    "Pulmonary vasculature appears normal. There is no focal air space consolidation. No pleural "
    "effusion or pneumothorax.&gt;] Extensive left upper quadrant splenic calcification may "
    "reflect old granulomatous disease"
)
UNNUMBERED_LIST = "1. Cardiomegaly 2. XXXX XXXX opacity in the left base XXXX atelectasis"
UNCHANGED_WITH = "Cardiomediastinal silhouette is unchanged with mild cardiomegaly."
PREDICATE_AFTER_COMMA = "Small bilateral pleural effusions are present, which are XXXX."
LOWER_CASE_START = "with XXXX opacities in the lung bases, XXXX bronchovascular crowding."
OTHER_REAL = [MARKUP_REPORT, UNNUMBERED_LIST, UNCHANGED_WITH, PREDICATE_AFTER_COMMA,
              LOWER_CASE_START, "heart size normal."]


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cleaner() -> Cleaner:
    return Cleaner()


@pytest.fixture(scope="module")
def bundled_texts() -> list[str]:
    """FINDINGS and IMPRESSION of every bundled report (None where a report lacks one)."""
    from synthex.errors import DataSourceError
    from synthex.paths import BUNDLED_REPORTS, bundled_file

    try:
        path = bundled_file(BUNDLED_REPORTS)
    except DataSourceError as exc:
        pytest.skip(str(exc))
    texts: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            labels = {node.get("Label"): node.text for node in root.iter("AbstractText")}
            texts.extend([labels.get("FINDINGS"), labels.get("IMPRESSION")])
    return texts


def _table_from(first: str) -> tuple[CleaningRule, ...]:
    rules = load_rules()
    names = [rule.name for rule in rules]
    return rules[names.index(first):]


def _touched(cleaner_: Cleaner, text: str) -> dict[str, int]:
    _, report = cleaner_.clean_many([text])
    return {name: n for name, n in report.rule_sentences.items() if n}


# ----------------------------------------------------------------------------------------------
# Each rule on real sentences
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "sentence", "expected"), REAL_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REAL_CASES)])
def test_rule_on_real_sentence(cleaner: Cleaner, rule: str, sentence: str, expected: str) -> None:
    assert cleaner.clean(sentence) == expected
    assert rule in _touched(cleaner, sentence)


@pytest.mark.parametrize(("rule", "first", "sentence", "expected"), PARTIAL_TABLE_CASES)
def test_rule_on_real_sentence_with_shorter_table(
    rule: str, first: str, sentence: str, expected: str
) -> None:
    short = Cleaner(_table_from(first))
    assert short.clean(sentence) == expected
    assert rule in _touched(short, sentence)


def test_every_rule_has_a_real_sentence_test() -> None:
    tested = {case[0] for case in REAL_CASES} | {case[0] for case in PARTIAL_TABLE_CASES}
    untested = [rule.name for rule in load_rules() if rule.name not in tested]
    assert untested == []


def test_quoted_sentences_occur_in_bundled_reports(bundled_texts: list[str]) -> None:
    corpus = "\n".join(text for text in bundled_texts if text)
    quoted = [case[1] for case in REAL_CASES] + [case[2] for case in PARTIAL_TABLE_CASES]
    quoted += OTHER_REAL
    missing = [sentence for sentence in quoted if sentence not in corpus]
    assert missing == []


def test_unchanged_is_kept_when_a_finding_follows(cleaner: Cleaner) -> None:
    assert cleaner.clean(UNCHANGED_WITH) == UNCHANGED_WITH


def test_masked_predicate_after_comma_keeps_the_finding(cleaner: Cleaner) -> None:
    expected = "Small bilateral pleural effusions are present, which are."
    assert cleaner.clean(PREDICATE_AFTER_COMMA) == expected


# ----------------------------------------------------------------------------------------------
# Order, whole corpus, acronyms
# ----------------------------------------------------------------------------------------------
def _moved_before(rules: tuple[CleaningRule, ...], moved: str, before: str) -> list[CleaningRule]:
    rest = [rule for rule in rules if rule.name != moved]
    rule = next(rule for rule in rules if rule.name == moved)
    at = [r.name for r in rest].index(before)
    return rest[:at] + [rule] + rest[at:]


@pytest.mark.parametrize(("moved", "before", "sentence", "in_order", "out_of_order"), [
    # Removing every XXXX first hides the markers the drop rules look for.
    ("remove_leftover_xxxx", "drop_interval_change",
     "The heart and lungs have XXXX XXXX in the interval.", "",
     "The heart and lungs have in the interval."),
    # ... and those the context rules resolve.
    ("remove_leftover_xxxx", "lymph_nodes", "Calcified lymph XXXX are present.",
     "Calcified lymph nodes are present.", "Calcified lymph are present."),
    # The singular sternotomy rule must come before the general plural one.
    ("sternotomy_wires", "sternotomy_wire", "The most caudal XXXX sternotomy XXXX is fractured.",
     "The most caudal sternotomy wire is fractured.",
     "The most caudal sternotomy wires is fractured."),
    # Singular costophrenic angle before the general plural rule.
    ("costophrenic_angles", "costophrenic_angle_side",
     "There is blunting of the left costophrenic XXXX.",
     "There is blunting of the left costophrenic angle.",
     "There is blunting of the left costophrenic angles."),
])
def test_rule_order_matters(
    moved: str, before: str, sentence: str, in_order: str, out_of_order: str
) -> None:
    rules = load_rules()
    assert Cleaner(rules).clean(sentence) == in_order
    assert Cleaner(_moved_before(rules, moved, before)).clean(sentence) == out_of_order


@pytest.fixture(scope="module")
def cleaned_corpus(
    cleaner: Cleaner, bundled_texts: list[str]
) -> tuple[list[str], cleaning.CleaningReport]:
    return cleaner.clean_many(bundled_texts)


def test_no_xxxx_left_after_cleaning_bundled_corpus(
    bundled_texts: list[str], cleaned_corpus: tuple[list[str], cleaning.CleaningReport]
) -> None:
    cleaned, report = cleaned_corpus
    assert report.n_texts == len(bundled_texts) == 2 * 3955
    assert report.xxxx_before == sum(text.count("XXXX") for text in bundled_texts if text) > 3000
    assert report.xxxx_after == 0
    assert not any("XXXX" in text for text in cleaned)
    assert all(n > 0 for name, n in report.rule_sentences.items() if name != "empty_parentheses")


def test_no_punctuation_artefacts_left_in_bundled_corpus(
    cleaned_corpus: tuple[list[str], cleaning.CleaningReport]
) -> None:
    artefact = re.compile(r"\.\.|[,;:]\.|,,|\s[.,;:!?]|\(\)|  |^\W|\.\s+[a-z]")
    assert [text for text in cleaned_corpus[0] if artefact.search(text)] == []


def test_literal_guard_does_not_change_results(
    bundled_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = bundled_texts[:2000]
    fast_out, fast_report = Cleaner().clean_many(sample)
    monkeypatch.setattr(cleaning, "_required_literal", lambda pattern: (None, False))
    slow_out, slow_report = Cleaner().clean_many(sample)
    assert fast_out == slow_out
    assert fast_report.rule_sentences == slow_report.rule_sentences


@pytest.mark.parametrize(("pattern", "literal"), [
    (r"(?i)\b(lymph)\s+XXXX\b", "lymph"),
    (r"\bCT\b", "CT"),
    (r"(?i)\b(?:scans?|considered)\b", None),  # alternation: nothing is required
    (r"(?i)(?-i:XXXX)\s+are", "XXXX"),
    (r"a(?:bc)?d", None),  # optional group: no run of 2 is required
])
def test_required_literal(pattern: str, literal: str | None) -> None:
    assert cleaning._required_literal(pattern)[0] == literal


@pytest.mark.parametrize(("sentence", "expected"), [
    ("Hyperexpanded lung XXXX compatible with COPD.",
     "Hyperexpanded lung fields compatible with COPD."),
    ("The heart is XXXX within normal limits in size given the low lung volumes an AP portable "
     "technique.",
     "The heart is within normal limits in size given the low lung volumes an AP portable "
     "technique."),
    ("heart size normal.", "Heart size normal."),
    (LOWER_CASE_START, "With opacities in the lung bases, bronchovascular crowding."),
])
def test_acronyms_kept_and_sentence_case(cleaner: Cleaner, sentence: str, expected: str) -> None:
    assert cleaner.clean(sentence) == expected


def test_ct_kept_when_ct_sentences_are_not_dropped() -> None:
    rules = [rule for rule in load_rules() if rule.name != "drop_ct_mention"]
    sentence = "recommend chest CT for further evaluation."  # real, lower-cased first letter
    assert Cleaner(rules).clean(sentence) == "Recommend chest CT for further evaluation."


# ----------------------------------------------------------------------------------------------
# API details
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, math.nan])
def test_missing_text_gives_empty_string(cleaner: Cleaner, missing: object) -> None:
    assert cleaner.clean(missing) == ""  # type: ignore[arg-type]


def test_non_text_is_rejected(cleaner: Cleaner) -> None:
    with pytest.raises(TypeError, match="string or None"):
        cleaner.clean(42)  # type: ignore[arg-type]


def test_report_counts_on_hand_made_example(cleaner: Cleaner) -> None:
    texts = [
        "The XXXX are intact. 2 images.",
        None,
        "Calcified lymph XXXX. Heart size is unchanged. Calcified hilar lymph XXXX.",
        "Normal.",
        "No XXXX infiltrates.",
    ]
    cleaned, report = cleaner.clean_many(texts, n_examples=2)
    assert cleaned == [
        "The osseous structures are intact.",
        "",
        "Calcified lymph nodes. Heart size is normal. Calcified hilar lymph nodes.",
        "Normal.",
        "No infiltrates.",
    ]
    assert report.n_texts == 5
    assert (report.xxxx_before, report.xxxx_after) == (4, 0)
    touched = {name: n for name, n in report.rule_sentences.items() if n}
    assert touched == {
        "drop_image_count": 1,
        "osseous_structures_intact": 1,
        "lymph_nodes": 2,
        "is_unchanged_to_normal": 1,
        "remove_leftover_xxxx": 1,
        "double_space": 1,
    }
    assert list(report.rule_sentences) == [rule.name for rule in cleaner.rules]
    assert report.examples == [(texts[0], cleaned[0]), (texts[2], cleaned[2])]
    frame = report.to_frame()
    assert list(frame.columns) == ["name", "reason", "sentences_touched"]
    assert len(frame) == len(cleaner.rules)
    assert frame.set_index("name").loc["lymph_nodes", "sentences_touched"] == 2
    assert frame["reason"].str.len().min() > 10


@pytest.mark.parametrize(("text", "sentences"), [
    ("Lungs are clear bilaterally.The heart is normal. 1. No effusion. 2. No edema.",
     ["Lungs are clear bilaterally.", "The heart is normal.", "1. No effusion.", "2. No edema."]),
    (UNNUMBERED_LIST,  # a numbered list without periods
     ["1. Cardiomegaly", "2. XXXX XXXX opacity in the left base XXXX atelectasis"]),
    ("There is a 1.7 cm nodule.", ["There is a 1.7 cm nodule."]),
])
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_markup_is_removed_before_sentences_are_read(cleaner: Cleaner) -> None:
    assert cleaner.clean(MARKUP_REPORT) == (
        "The heart size and cardiomediastinal silhouette are stable and within normal limits. "
        "Pulmonary vasculature appears normal. There is no focal air space consolidation. "
        "No pleural effusion or pneumothorax. Extensive left upper quadrant splenic "
        "calcification may reflect old granulomatous disease")
    assert cleaner.clean("Nodule <5 mm.") == "Nodule <5 mm."


# ----------------------------------------------------------------------------------------------
# The rules file
# ----------------------------------------------------------------------------------------------
def test_packaged_rules_are_reachable_with_importlib_resources() -> None:
    res = resources.files("synthex") / "config" / cleaning.DEFAULT_RULES_FILE
    assert res.is_file()
    rules = load_rules()
    assert rules == load_rules(Path(str(res)))
    assert len({rule.name for rule in rules}) == len(rules)
    assert all(rule.reason.strip() for rule in rules)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_user_rules_file_with_text_scope(tmp_path: Path) -> None:
    path = _write(tmp_path, r"""
rules:
  - name: drop_followup
    pattern: '(?i)\bfollow-?up\b'
    replacement: null
    reason: recommendations are not image content
  - name: spell_out_cxr
    pattern: '\bCXR\b'
    replacement: chest x-ray
    reason: expand the abbreviation
    scope: text
  - name: shout
    pattern: '^no\b'
    replacement: 'No'
    reason: a sentence rule after a text rule sees the re-split sentences
""")
    custom = Cleaner(path)
    cleaned, report = custom.clean_many(["CXR shows no change. no CXR effusion. Followup advised."])
    assert cleaned == ["Chest x-ray shows no change. No chest x-ray effusion."]
    assert report.rule_sentences == {"drop_followup": 1, "spell_out_cxr": 2, "shout": 1}


@pytest.mark.parametrize(("content", "message"), [
    ("rules: [", "not valid YAML"),
    ("rules: []", "non-empty list under 'rules:'"),
    ("rules:\n  - just a string\n", "rule #1 must be a mapping"),
    ("rules:\n  - {name: broken, pattern: '(unclosed', replacement: x, reason: r}\n",
     "rule #1 ('broken'): pattern '(unclosed' is not a valid regex"),
    ("rules:\n  - {name: ok, pattern: a, replacement: b, reason: r}\n"
     "  - {name: badgroup, pattern: a, replacement: '\\2', reason: r}\n",
     "rule #2 ('badgroup'): replacement"),
    ("rules:\n  - {name: noreason, pattern: a, replacement: b}\n",
     "rule #1 ('noreason'): missing key(s) ['reason']"),
    ("rules:\n  - {name: norepl, pattern: a, reason: r}\n", "replacement: null"),
    ("rules:\n  - {name: typo, pattern: a, replacement: b, reason: r, scop: text}\n",
     "unknown key(s) ['scop']"),
    ("rules:\n  - {name: where, pattern: a, replacement: b, reason: r, scope: page}\n",
     "scope must be one of"),
    ("rules:\n  - {name: textdrop, pattern: a, replacement: null, reason: r, scope: text}\n",
     "only sentence-scope rules can drop"),
    ("rules:\n  - {name: num, pattern: a, replacement: 3, reason: r}\n", "must be text"),
    ("rules:\n  - {name: twin, pattern: a, replacement: b, reason: r}\n"
     "  - {name: twin, pattern: c, replacement: d, reason: r}\n", "'twin' is repeated"),
])
def test_bad_rules_file_gives_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(SynthexError) as info:
        Cleaner(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(SynthexError, match="does not exist"):
        load_rules(tmp_path / "nope.yaml")


def test_bad_rule_given_in_code() -> None:
    bad = CleaningRule("bad", "(", "x", "broken on purpose")
    with pytest.raises(SynthexError, match="'bad'.*not a valid regex"):
        Cleaner([bad])
    good = dataclasses.replace(bad, pattern="a")
    with pytest.raises(SynthexError, match="repeated"):
        Cleaner([good, good])
