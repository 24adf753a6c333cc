"""The phantom's finding vocabulary: the Finding record, defaults and the free-text parser."""
from __future__ import annotations

import pytest

from synthex.errors import SynthexError
from synthex.phantom.findings import (
    FINDING_NAMES,
    REGISTRY,
    Finding,
    as_findings,
    finding_names,
    finding_synonyms,
    parse_findings,
)


def _tuples(text: str) -> list[tuple]:
    return [(f.name, f.side, f.zone, f.severity) for f in parse_findings(text)]


@pytest.mark.parametrize("text, expected", [
    ("cardiomegaly, right pleural effusion",
     [("cardiomegaly", None, None, None), ("pleural_effusion", "right", None, None)]),
    ("moderate left pleural effusion; opacity right lower zone",
     [("pleural_effusion", "left", None, "moderate"), ("opacity", "right", "lower", None)]),
    ("Chest x-ray. Lung opacity. Opacity lung base right.", [("opacity", "right", "lower", None)]),
    ("Cardiomegaly/mild; Pleural Effusion/right/small",
     [("cardiomegaly", None, None, "mild"), ("pleural_effusion", "right", None, "mild")]),
    ("Diaphragm/right/elevated/mild", [("elevated_hemidiaphragm", "right", None, "mild")]),
    ("elevated left hemidiaphragm", [("elevated_hemidiaphragm", "left", None, None)]),
    ("bibasilar atelectasis", [("atelectasis", "bilateral", "lower", None)]),
    ("consolidation in the right upper lobe", [("consolidation", "right", "upper", None)]),
    ("pneumonia lingula", [("pneumonia", "left", "middle", None)]),
    ("airspace disease, left upper zone", [("airspace_disease", "left", "upper", None)]),
    ("large right pneumothorax", [("pneumothorax", "right", None, "severe")]),
    ("dextroscoliosis", [("scoliosis", "right", None, None)]),
    ("levoscoliosis, severe", [("scoliosis", "left", None, "severe")]),
    ("hyperinflation", [("emphysema", None, None, None)]),
    ("Lung/hyperdistention", [("emphysema", None, None, None)]),
    ("right and left effusion", [("pleural_effusion", "bilateral", None, None)]),
    ("mild cardiomegaly with pulmonary edema",
     [("cardiomegaly", None, None, "mild"), ("edema", None, None, None)]),
    ("large heart", [("cardiomegaly", None, None, None)]),
    ("pacemaker; sternotomy wires; right picc line",
     [("pacemaker", None, None, None), ("sternotomy", None, None, None), ("central_line", "right", None, None)]),
    ("no pneumothorax, small left effusion", [("pleural_effusion", "left", None, "mild")]),
    ("calcified granuloma left upper lobe", [("calcified_granuloma", "left", "upper", None)]),
    ("normal", [("normal", None, None, None)]),
    ("No acute cardiopulmonary abnormality.", [("normal", None, None, None)]),
    ("", []),
])
def test_parse_examples(text, expected):
    assert _tuples(text) == expected


def test_lobe_is_kept_as_extra():
    (finding,) = parse_findings("right middle lobe pneumonia")
    assert (finding.side, finding.zone, finding.extra) == ("right", "middle", {"lobe": "RML"})


@pytest.mark.parametrize("phrase, canonical", sorted(finding_synonyms().items()))
def test_every_synonym_maps_to_its_name(phrase, canonical):
    names = [f.name for f in parse_findings(phrase)]
    assert names == [canonical]


def test_synonym_families_keep_their_names():
    assert [f.name for f in parse_findings("consolidation; airspace disease; pneumonia; infiltrate")] == [
        "consolidation", "airspace_disease", "pneumonia", "opacity"]
    assert {REGISTRY[n].family for n in ("consolidation", "airspace_disease", "pneumonia", "opacity")} == {"opacity"}


@pytest.mark.parametrize("text", ["banana", "cardiomegaly, banana split", "right lower zone foo"])
def test_unknown_finding_lists_valid_names(text):
    with pytest.raises(SynthexError) as err:
        parse_findings(text)
    message = str(err.value)
    assert "valid finding names" in message
    assert all(name in message for name in FINDING_NAMES)


def test_unknown_name_in_finding_record():
    with pytest.raises(SynthexError, match="pleural_effusion"):
        Finding("banana")


def test_normal_cannot_be_combined():
    with pytest.raises(SynthexError, match="normal"):
        parse_findings("normal, cardiomegaly")


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "cardiomegaly", "side": "left"}, "cannot take side"),
    ({"name": "pleural_effusion", "zone": "upper"}, "takes no zone"),
    ({"name": "pacemaker", "severity": "mild"}, "takes no severity"),
    ({"name": "opacity", "severity": "enormous"}, "unknown severity"),
    ({"name": "opacity", "side": "middle"}, "unknown side"),
    ({"name": "opacity", "extra": {"colour": 1}}, "takes no parameter"),
    ({"name": "cardiomegaly", "extra": {"ctr": 2.0}}, "must be a number"),
    ({"name": "edema", "side": "left"}, "cannot take side"),
])
def test_finding_validation(kwargs, match):
    with pytest.raises(SynthexError, match=match):
        Finding(**kwargs)


def test_synonyms_and_words_are_canonicalised():
    f = Finding("enlarged heart", severity="large", extra={"ctr": 0.62})
    assert (f.name, f.severity, f.extra) == ("cardiomegaly", "severe", {"ctr": 0.62})
    assert Finding("pleural effusion", side="Rt", severity="small") == Finding("pleural_effusion", "right", None, "mild")


def test_defaults_are_fixed():
    assert Finding("pleural_effusion").resolved() == Finding("pleural_effusion", "right", None, "moderate")
    assert Finding("opacity").resolved() == Finding("opacity", "right", "lower", "moderate")
    assert Finding("pacemaker").resolved() == Finding("pacemaker", "left")
    assert Finding("edema").resolved().side == "bilateral"
    for name in FINDING_NAMES:
        assert Finding(name).resolved() == Finding(name).resolved().resolved()


@pytest.mark.parametrize("name", FINDING_NAMES)
def test_describe_round_trips(name):
    spec = REGISTRY[name]
    for side in spec.sides or (None,):
        finding = Finding(name, side=side).resolved()
        assert parse_findings(finding.describe()) == [finding]


def test_dict_round_trip_and_as_findings():
    f = Finding("nodule", "left", "upper", "mild", {"radius": 0.02})
    assert Finding.from_dict(f.to_dict()) == f
    mixed = as_findings(["cardiomegaly", f, {"name": "pneumothorax", "side": "left"}])
    assert [x.name for x in mixed] == ["cardiomegaly", "nodule", "pneumothorax"]
    with pytest.raises(SynthexError):
        as_findings([3.5])
    with pytest.raises(SynthexError, match="unknown finding field"):
        Finding.from_dict({"name": "nodule", "where": "there"})


def test_names_listing():
    assert finding_names() == list(FINDING_NAMES)
    assert len(set(FINDING_NAMES)) == len(FINDING_NAMES) >= 20
    assert "normal" in FINDING_NAMES


@pytest.mark.parametrize("text, needle", [
    ("mild severe pleural effusion", "keep one grade"),
    ("no effusion, left effusion", "both denies and states pleural effusion"),
    ("no pneumothorax. Small pneumothorax.", "both denies and states pneumothorax"),
    ("left cardiomegaly", "cardiomegaly has no side 'left'"),
    ("right sided sternotomy", "has no side 'right'"),
])
def test_contradictions_and_dropped_words_are_errors_not_silently_resolved(text, needle):
    """Issue 13 item 10: these used to resolve silently (one grade picked, the denial ignored,
    the side dropped)."""
    with pytest.raises(SynthexError, match=needle):
        parse_findings(text)


@pytest.mark.parametrize("text, expected", [
    ("no left pneumothorax, small right pneumothorax", ["mild right pneumothorax"]),
    ("left pleural effusion and cardiomegaly", ["left pleural effusion", "cardiomegaly"]),
    ("mild cardiomegaly, severe left pneumothorax", ["mild cardiomegaly", "severe left pneumothorax"]),
    ("The lungs are clear bilaterally", ["normal"]),
])
def test_sides_and_grades_that_do_apply_still_read(text, expected):
    assert [f.describe() for f in parse_findings(text)] == expected


@pytest.mark.parametrize("text, expected", [
    ("No focal consolidation, pneumothorax or pleural effusion.", []),
    ("There is no focal consolidation, pleural effusion, or pneumothorax. Heart is enlarged.", ["cardiomegaly"]),
    ("No pleural effusion or pneumothorax, the heart is enlarged.", ["cardiomegaly"]),
    ("No effusion, stable cardiomegaly.", ["cardiomegaly"]),
    ("No pneumothorax but a small right pleural effusion.", ["pleural_effusion"]),
    ("Small right effusion. No pneumothorax, consolidation or edema.", ["pleural_effusion"]),
])
def test_a_negation_governs_its_whole_or_list(text, expected):
    assert [f.name for f in parse_findings(text)] == expected
