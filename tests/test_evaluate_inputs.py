"""Evaluation inputs: folders, labels, bad files, the feature cache, and the whole run (issue 7)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from synthex.errors import OutputExistsError, SynthexError
from synthex.evaluate import EvaluationOptions, evaluate
from synthex.evaluate.data import load_image_set
from synthex.evaluate.features import SynthexExtractor, cached_features
from tests.evaluate_fixtures import make_folder, read_folder
from tests.helpers_tiny import one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {"real": make_folder(root / "real", 40, seed=1), "synthetic": make_folder(root / "synth", 40, seed=2)}


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_labels_come_from_the_text(folders):
    s = load_image_set(folders["real"], "real")
    assert len(s) == 40 and s.size == 64 and s.label_source == "text"
    frame = pd.read_csv(folders["real"] / "metadata.csv")
    cardio = frame.text.str.contains("cardiomegaly").to_numpy()
    assert np.array_equal(s.labels[:, s.label_names.index("cardiomegaly")] > 0, cardio)
    assert np.array_equal(s.labels.sum(1) == 0, frame.text.eq("Chest x-ray. Normal.").to_numpy())


def test_too_few_images(tmp_path):
    make_folder(tmp_path / "few", 4, seed=3)
    with pytest.raises(SynthexError, match=r"4 readable images .* at least 10"):
        load_image_set(tmp_path / "few", "real")


def test_corrupt_and_missing_files_are_rejected_and_listed(folders, tmp_path):
    bad = copy(folders["real"], tmp_path / "bad")
    (bad / "images/0003.png").write_bytes(b"not a png")
    (bad / "images/0005.png").unlink()
    s = load_image_set(bad, "real")
    assert len(s) == 38
    reasons = dict(s.rejects)
    assert "unreadable image" in reasons[str(bad / "images/0003.png")]
    assert "missing" in reasons[str(bad / "images/0005.png")]
    assert s.labels.shape == (38, len(s.label_names))


def test_mixed_sizes_and_modes_are_converted_and_counted(folders, tmp_path):
    mixed = copy(folders["real"], tmp_path / "mixed")
    Image.open(mixed / "images/0001.png").convert("RGB").save(mixed / "images/0001.png")
    Image.open(mixed / "images/0002.png").resize((128, 128)).save(mixed / "images/0002.png")
    s = load_image_set(mixed, "real")
    assert s.images.shape == (40, 64, 64)
    assert any("1 images converted to 8-bit grayscale" in n for n in s.notes)
    assert any("1 images resized to 64x64" in n for n in s.notes)
    Image.new("L", (64, 48)).save(mixed / "images/0004.png")
    with pytest.raises(SynthexError, match=r"0004.png: image is 64x48, not square"):
        load_image_set(mixed, "real")


def test_mismatched_label_columns_are_an_error(folders, tmp_path):
    real, synth = copy(folders["real"], tmp_path / "r"), copy(folders["synthetic"], tmp_path / "s")
    for folder, column in ((real, "cardiomegaly"), (synth, "edema")):
        frame = pd.read_csv(folder / "metadata.csv")
        frame[column] = 0
        frame.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(SynthexError, match=r"different finding columns: only real \['cardiomegaly'\], only "
                                           r"synthetic \['edema'\]"):
        evaluate(EvaluationOptions(real=real, synthetic=synth, out=tmp_path / "report", metrics=("fidelity",),
                                   progress=False))


def test_metadata_without_file_name_column(tmp_path, folders):
    bad = copy(folders["real"], tmp_path / "nofile")
    pd.read_csv(bad / "metadata.csv").rename(columns={"file_name": "path"}).to_csv(bad / "metadata.csv", index=False)
    with pytest.raises(SynthexError, match="no 'file_name' column"):
        load_image_set(bad, "real")


class CountingExtractor(SynthexExtractor):
    calls: list[int]

    def __call__(self, images):
        self.calls = getattr(self, "calls", []) + [len(images)]
        return super().__call__(images)


def test_cache_computes_only_new_images(folders, tmp_path):
    folder = copy(folders["real"], tmp_path / "cached")
    ex = CountingExtractor()
    s = load_image_set(folder, "real")
    first = cached_features(ex, s.images[:25], s.hashes[:25], folder)
    assert ex.computed == 25 and (folder / ".synthex/features" / f"{ex.id}.npz").is_file()
    again = cached_features(ex, s.images, s.hashes, folder)  # 15 new images
    assert ex.computed == 40 and ex.calls == [25, 15]
    assert np.array_equal(again["embedding"][:25], first["embedding"])
    cached_features(ex, s.images, s.hashes, folder)
    assert ex.computed == 40
    fresh = SynthexExtractor()(s.images)
    assert np.allclose(again["probs"], fresh["probs"], atol=1e-5)


def test_full_run_refuses_to_overwrite_and_reuses_the_cache(folders, tmp_path):
    real, synth = copy(folders["real"], tmp_path / "r"), copy(folders["synthetic"], tmp_path / "s")
    ex = SynthexExtractor()
    options = EvaluationOptions(real=real, synthetic=synth, out=tmp_path / "report", progress=False, bootstrap=20,
                                kid_subsets=10, ctr_probe_n=40, utility_epochs=1, privacy_calibration=40)
    result = evaluate(options, extractors={"synthex": ex})
    for name in ("report.md", "report.html", "results.json", "figures/privacy_pairs.png"):
        assert (tmp_path / "report" / name).is_file()
    numbers = json.loads(result.results_json.read_text())
    assert set(numbers["results"]) == {"fidelity", "diversity", "alignment", "privacy", "utility"}
    assert numbers["results"]["privacy"]["n_flagged"] == 0 and numbers["results"]["privacy"]["flagged_pairs"] == []
    assert len(numbers["results"]["privacy"]["closest_pairs"]) == 8
    assert "data:image/png;base64," in result.report_html.read_text()
    first = ex.computed
    with pytest.raises(OutputExistsError, match="not empty"):
        evaluate(options, extractors={"synthex": ex})
    options.overwrite = True
    options.metrics = ("fidelity", "privacy")
    evaluate(options, extractors={"synthex": ex})
    assert ex.computed == first + 40  # only the privacy calibration's augmented copies are new


class FakeDenseNet(torch.nn.Module):
    """Stands in for torchxrayvision.models.DenseNet: same constructor and features2 contract."""

    def __init__(self, weights=None, op_threshs=None):
        super().__init__()
        self.proj = torch.nn.Linear(1, 1024)

    def features2(self, x):
        return self.proj(x.mean(dim=(1, 2, 3))[:, None])


def test_xrv_extractor_loads_local_weights_and_refuses_pickles(tmp_path, monkeypatch):
    """The xrv code path, with a stand-in for the torchxrayvision module (whose real import needs
    torchvision, absent here): weights from a local safetensors file; pickled files refused."""
    import sys
    import types

    from safetensors.torch import save_file

    from synthex.evaluate.features import make_extractor

    fake = types.ModuleType("torchxrayvision")
    fake.models = types.SimpleNamespace(DenseNet=FakeDenseNet)
    monkeypatch.setitem(sys.modules, "torchxrayvision", fake)
    with pytest.raises(SynthexError, match="weights not found"):
        make_extractor("xrv", weights=tmp_path / "absent.pt")
    save_file(FakeDenseNet().state_dict(), str(tmp_path / "xrv.safetensors"))
    ex = make_extractor("xrv", weights=tmp_path / "xrv.safetensors")
    out = ex(np.zeros((3, 64, 64), np.uint8))
    assert out["embedding"].shape == (3, 1024) and ex.id.startswith("xrv-densenet121-all-")
    torch.save(FakeDenseNet(), tmp_path / "pickled.pt")
    with pytest.raises(SynthexError, match="does not unpickle"):
        make_extractor("xrv", weights=tmp_path / "pickled.pt")


def test_copied_training_images_are_flagged_by_name(folders, tmp_path):
    images, texts = read_folder(folders["real"])
    synth = make_folder(tmp_path / "copies", 12, seed=0, images=images[:12], texts=texts[:12])
    result = evaluate(EvaluationOptions(real=folders["real"], synthetic=synth, out=tmp_path / "report",
                                        metrics=("privacy",), progress=False, privacy_calibration=40))
    pairs = result.results["privacy"]["flagged_pairs"]
    assert len(pairs) == 12
    assert all(Path(p["synthetic"]).name == Path(p["train"]).name for p in pairs)
    assert "images/0000.png" in result.report_md.read_text()


def test_plain_folders_without_labels_skip_label_metrics_and_say_so(folders, tmp_path):
    plain = copy(folders["synthetic"], tmp_path / "plain")
    (plain / "metadata.csv").unlink()
    result = evaluate(EvaluationOptions(real=folders["real"], synthetic=plain, out=tmp_path / "report",
                                        metrics=("fidelity", "alignment", "utility"), progress=False, bootstrap=10))
    assert set(result.skipped) == {"alignment", "utility"}
    assert result.results["fidelity"]["per_finding_skipped"] == "no labels in one of the sets"
    assert "**alignment not computed**" in result.report_md.read_text()


def test_metadata_rows_pointing_outside_the_folder_are_rejected_not_read(folders, tmp_path):
    """Issue 13 item 2: ../ and absolute paths in metadata.csv used to be followed."""
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(outside)
    bad = copy(folders["real"], tmp_path / "bad")
    frame = pd.read_csv(bad / "metadata.csv", dtype=str, keep_default_na=False)
    extra = frame.iloc[:4].copy()
    extra["file_name"] = ["../outside.png", str(outside), "/etc/passwd", frame.file_name[0]]
    pd.concat([frame, extra]).to_csv(bad / "metadata.csv", index=False)
    s = load_image_set(bad, "real")
    assert len(s) == 40 and all(bad in p.parents for p in s.files)
    reasons = dict(s.rejects)
    assert "climbs out" in reasons["../outside.png"] and "absolute" in reasons[str(outside)]
    assert "absolute" in reasons["/etc/passwd"] and "listed twice" in reasons[frame.file_name[0]]
    assert s.labels.shape[0] == 40


def test_bad_numbers_and_same_folder_and_one_sided_label_columns_are_said(folders, tmp_path):
    for field, value, flag in [("bootstrap", -1, "--bootstrap"), ("steps", 0, "--steps"), ("seed", -1, "--seed"),
                               ("guidance", float("nan"), "--cfg"), ("per_prompt", 0, "--n")]:
        options = EvaluationOptions(real=folders["real"], synthetic=folders["synthetic"], out=tmp_path / field,
                                    progress=False, **{field: value})
        with pytest.raises(SynthexError, match=flag):
            evaluate(options)
        assert not (tmp_path / field).exists()
    same = evaluate(EvaluationOptions(real=folders["real"], synthetic=folders["real"], out=tmp_path / "same",
                                      metrics=("fidelity",), progress=False, bootstrap=0))
    assert any("same folder" in w for w in same.warnings)
    assert "same folder" in same.report_md.read_text()
    one = copy(folders["synthetic"], tmp_path / "one")
    frame = pd.read_csv(one / "metadata.csv")
    frame["cardiomegaly"] = frame.text.str.contains("cardiomegaly").astype(int)
    frame.to_csv(one / "metadata.csv", index=False)
    result = evaluate(EvaluationOptions(real=folders["real"], synthetic=one, out=tmp_path / "one-sided",
                                        metrics=("fidelity",), progress=False, bootstrap=0))
    assert any("only the synthetic metadata.csv has finding columns (cardiomegaly)" in w for w in result.warnings)
