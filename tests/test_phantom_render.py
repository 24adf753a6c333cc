"""The phantom renderer: determinism, isolation of each finding, laterality, CTR, files and CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthex.cli import app
from synthex.errors import OutputExistsError, SynthexError
from synthex.phantom import anatomy
from synthex.phantom.findings import FINDING_NAMES, REGISTRY, Finding
from synthex.phantom.render import render_phantom

SIZE = 256
SEEDS = (3, 11)
DEVICE_SIDE_SHARE = {"pacemaker": 0.7, "central_line": 0.6}


def _cases() -> list[tuple[str, str | None]]:
    cases = []
    for name in FINDING_NAMES:
        if name == "normal":
            continue
        sides = [s for s in ("right", "left") if s in REGISTRY[name].sides]
        cases += [(name, side) for side in sides] or [(name, None)]
    return cases


@pytest.fixture(scope="module")
def normals() -> dict[int, np.ndarray]:
    return {seed: render_phantom([], seed, SIZE).image.astype(np.int32) for seed in SEEDS}


def test_image_contract():
    result = render_phantom("cardiomegaly", 0, 128)
    assert result.image.dtype == np.uint8 and result.image.shape == (128, 128)
    assert set(result.masks) == {"cardiomegaly"}
    assert result.masks["cardiomegaly"].dtype == bool and result.masks["cardiomegaly"].shape == (128, 128)
    json.dumps(result.truth)  # JSON-serialisable


def test_deterministic_for_a_seed():
    a = render_phantom("moderate left pleural effusion; opacity right lower zone; pacemaker", 5, SIZE)
    b = render_phantom("moderate left pleural effusion; opacity right lower zone; pacemaker", 5, SIZE)
    assert np.array_equal(a.image, b.image)
    assert json.dumps(a.truth, sort_keys=True) == json.dumps(b.truth, sort_keys=True)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_different_seeds_differ():
    a, b = render_phantom([], 0, SIZE), render_phantom([], 1, SIZE)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 5
    assert a.truth["patient"] != b.truth["patient"]


def test_global_random_state_untouched():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    render_phantom("pneumonia", 2, 128)
    assert np.random.random() == before


def test_findings_keep_the_patient():
    normal = render_phantom([], 4, SIZE)
    sick = render_phantom("cardiomegaly, emphysema, right pneumothorax", 4, SIZE)
    assert sick.truth["patient"] == normal.truth["patient"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, side", _cases())
def test_difference_lies_in_the_finding_mask(normals, seed, name, side):
    result = render_phantom([Finding(name, side=side)], seed, SIZE)
    diff = np.abs(result.image.astype(np.int32) - normals[seed])
    mask = result.masks[name]
    assert diff.sum() > 500, "the finding must visibly change the image"
    assert diff[mask].sum() >= 0.9 * diff.sum()
    assert mask.mean() < 0.6
    if side is None or name == "scoliosis":
        return
    half = diff[:, SIZE // 2:] if side == "left" else diff[:, : SIZE // 2]  # patient's left = image right
    assert half.sum() >= DEVICE_SIDE_SHARE.get(name, 0.9) * diff.sum()
    (entry,) = result.truth["findings"]
    assert entry["side"] == side
    assert entry["expected_image_half"] == ("right" if side == "left" else "left")


@pytest.mark.parametrize("side", ["right", "left"])
def test_scoliosis_bows_towards_its_side(normals, side):
    seed = SEEDS[0]
    result = render_phantom([Finding("scoliosis", side=side, severity="severe")], seed, SIZE)
    gain = np.clip(result.image.astype(np.int32) - normals[seed], 0, None)
    centre_x = (gain.sum(axis=0) * (np.arange(SIZE) + 0.5)).sum() / gain.sum() / SIZE
    midline = 0.5 + result.truth["patient"]["shift_x"]
    assert (centre_x < midline) == (side == "right")


@pytest.mark.parametrize("seed", [0, 3, 11, 42])
def test_cardiomegaly_ctr_follows_severity(seed):
    normal = render_phantom([], seed, SIZE).truth["measurements"]["ctr"]
    ctrs = [render_phantom([Finding("cardiomegaly", severity=s)], seed, SIZE).truth["measurements"]["ctr"]
            for s in ("mild", "moderate", "severe")]
    assert normal < 0.5
    assert normal < ctrs[0] < ctrs[1] < ctrs[2]
    assert ctrs[1] > 0.5


def test_ctr_override():
    result = render_phantom([Finding("cardiomegaly", extra={"ctr": 0.7})], 3, SIZE)
    assert abs(result.truth["measurements"]["ctr"] - 0.7) < 0.04


def test_truth_fields():
    result = render_phantom("moderate left pleural effusion; opacity right lower zone", 8, SIZE)
    truth = result.truth
    assert truth["synthetic"] is True and truth["seed"] == 8 and truth["size"] == SIZE
    assert truth["labels"] == ["opacity", "pleural_effusion"]
    by_key = {f["key"]: f for f in truth["findings"]}
    assert by_key["pleural_effusion"]["side"] == "left" and by_key["pleural_effusion"]["image_half"] == "right"
    assert by_key["opacity"]["zone"] == "lower" and by_key["opacity"]["image_half"] == "left"
    assert by_key["opacity"]["severity"] == "moderate"  # the fixed default
    assert {"ctr", "cardiac_width_px", "thorax_width_px"} <= set(truth["measurements"])


def test_repeated_findings_get_their_own_masks():
    result = render_phantom("nodule right upper zone; nodule left lower zone", 6, SIZE)
    assert list(result.masks) == ["nodule", "nodule_2"]
    assert not (result.masks["nodule"] & result.masks["nodule_2"]).any()


def test_adding_a_finding_does_not_move_another():
    alone = render_phantom("nodule right upper zone", 9, SIZE)
    both = render_phantom("pacemaker; nodule right upper zone", 9, SIZE)
    assert alone.truth["findings"][0]["params"] == both.truth["findings"][1]["params"]


def test_anatomy_masks_follow_the_convention():
    result = render_phantom([], 2, SIZE, return_masks=True)
    cols = np.arange(SIZE)
    centre = {k: (m.sum(axis=0) * cols).sum() / m.sum() for k, m in result.anatomy_masks.items()}
    assert centre["lung_right"] < SIZE / 2 < centre["lung_left"]  # patient's right on the image left
    assert not render_phantom([], 2, SIZE).anatomy_masks


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": 1.5}, {"size": 10}, {"size": 100000}])
def test_bad_seed_or_size(bad):
    args = {"findings": "normal", "seed": 0, "size": 64, **bad}
    with pytest.raises(SynthexError):
        render_phantom(**args)


def test_unknown_finding_error_lists_names():
    with pytest.raises(SynthexError) as err:
        render_phantom("cardiomegaly, wobbly lung", 0, 64)
    assert all(name in str(err.value) for name in FINDING_NAMES)


def test_library_uses_real_masks():
    library = anatomy.load_lung_library()
    assert library.source.startswith("semantic_masks_v7labs_lungs")
    assert len(library) >= 100
    shape = library.shapes[0]
    assert shape.right.shape == (anatomy.GRID, anatomy.GRID) and 0.5 < shape.aspect < 1.3


def test_parametric_fallback(monkeypatch):
    fallback = anatomy.LungLibrary(anatomy.parametric_shapes(), source="parametric")
    monkeypatch.setattr("synthex.phantom.render.load_lung_library", lambda: fallback)
    result = render_phantom("left pleural effusion", 1, 128)
    assert result.truth["patient"]["lung_source"] == "parametric"
    assert result.masks["pleural_effusion"][:, 64:].sum() > 0


def test_mask_checks_reject_junk():
    blob = np.zeros((100, 100), bool)
    blob[20:80, 20:80] = True
    assert isinstance(anatomy.canonical_pair(blob), str)
    rows, cols = np.mgrid[:100, :120]
    lung = lambda cx: ((cols - cx) / 20) ** 2 + ((rows - 50) / 40) ** 2 < 1  # noqa: E731
    shape = anatomy.canonical_pair(lung(35) | lung(85))
    assert not isinstance(shape, str) and shape.right.any() and shape.left.any()


# ---------------------------------------------------------------------------------------------
# Files and command line
# ---------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_render_writes_marked_png_and_truth(tmp_path: Path):
    out, truth = tmp_path / "x.png", tmp_path / "x.json"
    result = runner.invoke(app, ["phantom", "render", "cardiomegaly, right pleural effusion", "-o", str(out),
                                 "--seed", "5", "--size", "128", "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size == (128, 128) and img.mode == "L"
        meta = img.text
    assert meta["Software"] == "SynTheX-Ray" and meta["Synthetic"] == "true"
    assert meta["Description"] == "cardiomegaly, right pleural effusion" and meta["Seed"] == "5"
    body = json.loads(truth.read_text())
    assert body["labels"] == ["cardiomegaly", "pleural_effusion"]
    assert np.array_equal(np.asarray(Image.open(out)), render_phantom(body["text"], 5, 128).image)


def test_cli_refuses_to_overwrite(tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["phantom", "render", "normal", "-o", str(out), "--size", "64"])
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"
    from synthex.cli import main

    monkeypatch.setattr(sys, "argv", ["synthex", "phantom", "render", "normal", "-o", str(out), "--size", "64"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    ok = runner.invoke(app, ["phantom", "render", "normal", "-o", str(out), "--size", "64", "--overwrite"])
    assert ok.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_gallery_and_list(tmp_path: Path):
    out = tmp_path / "gallery.png"
    result = runner.invoke(app, ["phantom", "gallery", "-o", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.mode == "RGB" and img.text["Synthetic"] == "true" and img.width >= 6 * 64
    listing = runner.invoke(app, ["phantom", "list"])
    assert listing.exit_code == 0 and all(name in listing.output for name in FINDING_NAMES)
