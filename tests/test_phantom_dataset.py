"""The phantom IU X-ray dataset and the phantom finding classifier."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from synthex.data.pipeline import PrepareOptions, prepare
from synthex.errors import OutputExistsError, SynthexError
from synthex.phantom.classifier import (
    PHANTOM_LABELS, ClassifierConfig, auroc, finding_labels, load_classifier, predict_proba, save_classifier,
    train_phantom_classifier,
)
from synthex.phantom.dataset import BuildOptions, build_dataset, load_mesh_rules, mesh_to_findings
from synthex.phantom.findings import Finding


@pytest.fixture(scope="module")
def rules():
    return load_mesh_rules()


@pytest.mark.parametrize("mesh, expected", [
    ("Opacity/lung/base/right", [Finding("opacity", "right", "lower")]),
    ("Pleural Effusion/bilateral/small", [Finding("pleural_effusion", "bilateral", None, "mild")]),
    ("Cardiomegaly/mild", [Finding("cardiomegaly", severity="mild")]),
    ("Cardiomegaly/borderline", [Finding("cardiomegaly", severity="mild")]),
    ("Calcified Granuloma/lung/upper lobe/right", [Finding("calcified_granuloma", "right", "upper")]),
    ("Diaphragm/left/elevated", [Finding("elevated_hemidiaphragm", "left")]),
    ("Lung/hyperdistention", [Finding("emphysema")]),
    ("Nodule/bilateral", [Finding("nodule", "right"), Finding("nodule", "left")]),
    ("Density/lung/round/left", [Finding("nodule", "left")]),
    ("normal", []),
])
def test_mesh_mapping(rules, mesh, expected):
    findings, unmapped = mesh_to_findings(mesh, rules)
    assert findings == expected and unmapped == []


def test_unmapped_terms_are_returned_not_dropped(rules):
    findings, unmapped = mesh_to_findings("Spine/degenerative;Cardiomegaly/mild;Lung/hypoinflation", rules)
    assert findings == [Finding("cardiomegaly", severity="mild")]
    assert unmapped == ["Spine/degenerative", "Lung/hypoinflation"]


def test_bad_map_file_is_a_clear_error(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("rules:\n  - {heading: opacity, finding: blob}\n")
    with pytest.raises(SynthexError, match="rule #1"):
        load_mesh_rules(path)


def test_build_is_deterministic_resumable_and_feeds_the_data_pipeline(tmp_path):
    out = tmp_path / "ph"
    report = build_dataset(BuildOptions(str(out), n=12, size=64, seed=3, progress=False))
    assert report.reports == 12 and report.written == report.frontal_images > 0
    assert report.terms_total >= report.terms_mapped
    projections = pd.read_csv(out / "indiana_projections.csv")
    pngs = sorted((out / "images/images_normalized").glob("*.png"))
    assert len(pngs) == len(projections) == report.frontal_images
    truth = [json.loads(line) for line in (out / "phantom_truth.jsonl").read_text().splitlines()]
    assert len(truth) == len(pngs) and all("findings" in t and "unmapped" in t for t in truth)
    assert (out / "mesh_mapping.csv").is_file()
    # same seed, other folder: identical pixels
    again = tmp_path / "ph2"
    build_dataset(BuildOptions(str(again), n=12, size=64, seed=3, progress=False))
    assert pngs[0].read_bytes() == (again / "images/images_normalized" / pngs[0].name).read_bytes()
    # finished build refused without --overwrite; interrupted build resumes
    with pytest.raises(OutputExistsError):
        build_dataset(BuildOptions(str(out), n=12, size=64, seed=3, progress=False))
    manifest = json.loads((out / "build.json").read_text())
    manifest["complete"] = False
    (out / "build.json").write_text(json.dumps(manifest))
    pngs[0].unlink()
    resumed = build_dataset(BuildOptions(str(out), n=12, size=64, seed=3, progress=False))
    assert resumed.written == 1 and resumed.skipped_existing == len(pngs) - 1
    # the data pipeline runs on it unchanged
    result = prepare(tmp_path / "ds", PrepareOptions(source=str(out), preset="unbalanced", size=32, mode="L",
                                                    progress=False, card=False))
    meta = pd.read_csv(tmp_path / "ds" / "metadata.csv")
    assert result.images_written == len(meta) > 0
    assert meta["text"].str.startswith("Chest x-ray.").all()


def test_lateral_rows_are_listed_without_images(tmp_path):
    report = build_dataset(BuildOptions(str(tmp_path / "l"), n=5, size=64, lateral=True, progress=False))
    projections = pd.read_csv(tmp_path / "l" / "indiana_projections.csv")
    assert report.lateral_rows == (projections["projection"] == "Lateral").sum() > 0


def test_labels_follow_side_and_family():
    labels = finding_labels([Finding("pleural_effusion", "bilateral"), Finding("pneumonia", "left"),
                             Finding("mass", "right")])
    on = {PHANTOM_LABELS[i] for i in np.flatnonzero(labels)}
    assert on == {"pleural_effusion_right", "pleural_effusion_left", "opacity_left", "nodule"}


def test_auroc_rank_statistic():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_classifier_learns_large_findings_and_round_trips(tmp_path):
    names = ("pleural_effusion_right", "pleural_effusion_left", "pacemaker")
    model, metrics = train_phantom_classifier(
        n_train=400, n_test=160, size=64, epochs=6, seed=1, pool=("pleural_effusion", "pacemaker"),
        names=names, progress=False)
    assert metrics["pleural_effusion_right"] > 0.8 and metrics["pleural_effusion_left"] > 0.8
    save_classifier(model, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    x = np.random.default_rng(0).integers(0, 255, (3, 50, 50), dtype=np.uint8)
    assert np.allclose(predict_proba(model, x), predict_proba(loaded, x), atol=1e-6)
    with pytest.raises(SynthexError, match="missing"):
        load_classifier(tmp_path / "nothing")


def test_shipped_classifier_loads_and_separates_findings():
    from synthex.phantom.render import render_phantom

    model = load_classifier()
    assert list(model.config.names) == list(PHANTOM_LABELS)
    assert model.config.metrics["pleural_effusion_left"] > 0.9  # measured on 1,000 held-out phantoms
    names = list(PHANTOM_LABELS)
    normal = [render_phantom("normal", s, 128).image for s in range(500, 508)]
    effusion = [render_phantom("severe left pleural effusion", s, 128).image for s in range(500, 508)]
    probs_n = predict_proba(model, np.stack(normal))[:, names.index("pleural_effusion_left")]
    probs_e = predict_proba(model, np.stack(effusion))[:, names.index("pleural_effusion_left")]
    assert auroc(np.r_[np.zeros(8), np.ones(8)], np.r_[probs_n, probs_e]) > 0.9
