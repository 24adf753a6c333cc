"""Issue 11: captions written from the phantom's ground truth, the caption set, and the trainer's
warm start (``init_from``), caption alternatives and budget extension."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthex.errors import OutputExistsError, SynthexError
from synthex.phantom.captions import (
    STYLES,
    caption,
    caption_variants,
    filter_report,
    sample_balanced,
)
from synthex.phantom.classifier import finding_labels
from synthex.phantom.findings import Finding, parse_findings


def _labels(findings):
    return tuple(finding_labels([f.resolved() for f in findings]))


def _read_back(text: str) -> list[Finding]:
    """Findings the project's parser reads in a caption, sentence by sentence (sentences that
    name no drawable finding, e.g. about the mediastinum, are skipped)."""
    found = []
    for sentence in text.replace(", ", ". ").split(". "):
        try:
            found += [f for f in parse_findings(sentence) if f.name != "normal"]
        except SynthexError:
            pass
    return found


# ----------------------------------------------------------------------------- captions
@pytest.mark.parametrize("seed", range(40))
def test_report_and_short_captions_parse_back_to_what_was_drawn(seed):
    """Every sentence the report style writes names only drawn findings (or negates absent ones):
    the project's own parser reads back exactly the drawn label set, sides included."""
    rng = np.random.default_rng(seed)
    drawn = [f.resolved() for f in sample_balanced(rng, p_normal=0.0)]
    for style in ("report", "short"):
        text = caption(drawn, rng, style)
        assert _labels(_read_back(text)) == _labels(drawn), (style, text, drawn)


def test_mesh_caption_names_side_zone_and_grade():
    rng = np.random.default_rng(0)
    f = Finding("pleural_effusion", "left", None, "severe")
    text = caption([f], rng, "mesh")
    assert text == "Chest x-ray. Pleural Effusion left severe."
    opacity = caption([Finding("opacity", "right", "lower", "mild")], rng, "mesh")
    assert opacity.startswith("Chest x-ray. ") and "base right mild" in opacity


def test_normal_captions_never_name_a_finding():
    rng = np.random.default_rng(1)
    for _ in range(30):
        for text in caption_variants([], rng):
            assert _labels(_read_back(text)) == _labels([]), text


def test_negations_never_contradict_the_picture():
    rng = np.random.default_rng(2)
    effusion = [Finding("pleural_effusion", "right", None, "moderate")]
    for _ in range(50):
        text = caption(effusion, rng, "report")
        assert "No pleural effusion" not in text and "No effusion" not in text
        assert "lungs are clear" not in text


def test_unknown_style_is_named():
    with pytest.raises(SynthexError, match="unknown caption style 'poem'.*mesh, report, short, mixed"):
        caption([], np.random.default_rng(0), "poem")


def test_filter_report_drops_what_the_phantom_does_not_show():
    drawn = [Finding("cardiomegaly", severity="mild")]
    text, counts = filter_report("Borderline cardiomegaly. Small right pleural effusion. Clear lungs. "
                                 "Degenerative changes of the spine. No pneumothorax.", drawn)
    assert text == "Borderline cardiomegaly. Degenerative changes of the spine. No pneumothorax."
    assert (counts.kept, counts.dropped, counts.unreadable) == (2, 2, 1)


def test_filter_report_checks_the_side():
    drawn = [Finding("pleural_effusion", "left", None, "moderate")]
    text, counts = filter_report("Left pleural effusion. Right pleural effusion.", drawn)
    assert text == "Left pleural effusion." and counts.dropped == 1


def test_balanced_draws_cover_every_family_side_and_grade():
    rng = np.random.default_rng(0)
    draws = [sample_balanced(rng) for _ in range(3000)]
    normal = sum(not d for d in draws) / len(draws)
    assert 0.08 < normal < 0.16
    flat = [f for d in draws for f in d]
    effusion_sides = {f.side for f in flat if f.name == "pleural_effusion"}
    assert effusion_sides == {"left", "right", "bilateral"}
    grades = pd.Series([f.severity for f in flat if f.name == "cardiomegaly"]).value_counts()
    assert set(grades.index) == {"mild", "moderate", "severe"} and grades.min() > 0.25 * grades.sum()
    families = pd.Series([f.name for f in flat]).value_counts()
    assert families["cardiomegaly"] > 0.04 * len(flat)


# ----------------------------------------------------------------------------- caption set
def _iu_folder(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = [("a.png", "Chest x-ray. Cardiomegaly. The heart is enlarged. Right pleural effusion.", "Cardiomegaly", "train"),
            ("b.png", "Chest x-ray. Normal. Clear lungs.", "normal", "train"),
            ("c.png", "Chest x-ray. Normal.", "normal", "test")]
    for name, *_ in rows:
        Image.fromarray(np.full((64, 64), 100, np.uint8), mode="L").save(root / "images" / name)
    pd.DataFrame([{"file_name": f"images/{n}", "text": t, "mesh": m, "split": s} for n, t, m, s in rows]).to_csv(
        root / "metadata.csv", index=False)
    return root


def test_caption_set_writes_a_resumable_imagefolder(tmp_path):
    from synthex.phantom.caption_set import CaptionSetOptions, build_caption_set

    iu = _iu_folder(tmp_path / "iu")
    options = CaptionSetOptions(tmp_path / "set", n_random=6, size=32, seed=3, iu=iu, workers=1)
    summary = build_caption_set(options)
    table = pd.read_csv(tmp_path / "set" / "metadata.csv", keep_default_na=False)
    assert len(table) == 8 and summary["n_iu"] == 2 and summary["n_random"] == 6
    assert [f"caption_{k}" for k in range(1, len(STYLES))] == [c for c in table.columns if c.startswith("caption_")]
    iu_row = table[table.source == "iu"].iloc[0]
    assert "Right pleural effusion" not in iu_row.text and "enlarged" in iu_row.text  # filtered to what is drawn
    assert summary["iu_report_filter"]["dropped"] >= 1
    for row in table.itertuples():
        drawn = [Finding.from_dict(d) for d in json.loads(row.findings)]
        assert row.cardiomegaly == int(any(f.name == "cardiomegaly" for f in drawn))
    first = (tmp_path / "set" / table.file_name[0]).read_bytes()
    (tmp_path / "set" / table.file_name[1]).unlink()  # an interrupted run: one image missing
    build_caption_set(options)
    assert (tmp_path / "set" / table.file_name[1]).is_file()
    assert (tmp_path / "set" / table.file_name[0]).read_bytes() == first
    with pytest.raises(OutputExistsError, match="other options"):
        build_caption_set(CaptionSetOptions(tmp_path / "set", n_random=7, size=32, seed=3, iu=iu, workers=1))


def test_caption_set_refuses_a_foreign_folder_and_a_bad_iu(tmp_path):
    from synthex.phantom.caption_set import CaptionSetOptions, build_caption_set

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="holds no caption set"):
        build_caption_set(CaptionSetOptions(tmp_path / "mine", n_random=1, size=32))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SynthexError, match="p-normal"):
        build_caption_set(CaptionSetOptions(tmp_path / "new", n_random=1, size=32, p_normal=1.5))
    iu = _iu_folder(tmp_path / "iu")
    (iu / "images" / "b.png").unlink()  # a listed image that is missing: left out, counted, listed
    summary = build_caption_set(CaptionSetOptions(tmp_path / "withgap", n_random=1, size=32, iu=iu, workers=1))
    assert summary["n_iu"] == 1 and summary["rejects"] == [{"file_name": "images/b.png", "reason": "image file not found"}]
    with pytest.raises(SynthexError, match="no metadata.csv"):
        build_caption_set(CaptionSetOptions(tmp_path / "new", n_random=1, size=32, iu=tmp_path / "mine", workers=1))


# ----------------------------------------------------------------------------- trainer
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests.helpers_tiny import one_thread  # noqa: E402,F401
from tests.test_train_scratch import make_imagefolder, tiny_config  # noqa: E402


def _with_alternatives(root: Path) -> Path:
    table = pd.read_csv(root / "metadata.csv")
    table["caption_1"] = ["cardiomegaly alternative"] * len(table)
    table["caption_2"] = [""] * len(table)  # empty: falls back to the main caption
    table.to_csv(root / "metadata.csv", index=False)
    return root


def test_warm_start_keeps_tokenizer_and_vae_and_trains_on_alternatives(tmp_path):
    from safetensors.torch import load_file

    from synthex.train.scratch import train_base

    data = _with_alternatives(make_imagefolder(tmp_path / "ds"))
    first = train_base(data, tmp_path / "a", tiny_config(), progress=False)
    cfg = tiny_config(init_from=str(first.pipeline_dir), caption_columns=["caption_1", "caption_2"],
                      **{"unet.max_steps": 3})
    second = train_base(data, tmp_path / "b", cfg, progress=False)
    vae_a = load_file(str(first.pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_b = load_file(str(second.pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
    assert second.scaling_factor == pytest.approx(first.scaling_factor)
    assert (tmp_path / "a/pipeline/tokenizer/vocab.json").read_text() == (tmp_path / "b/pipeline/tokenizer/vocab.json").read_text()
    unet_a = load_file(str(first.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_b = load_file(str(second.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not all(torch.equal(unet_a[k], unet_b[k]) for k in unet_a)
    meta = json.loads((tmp_path / "b" / "cache" / "captions.json").read_text())
    assert len(meta["alternatives"]) == 3
    assert meta["alternatives"][1][0] == "cardiomegaly alternative"
    assert meta["alternatives"][2] == meta["captions"]  # empty alternatives fell back


def test_warm_start_from_another_architecture_is_refused(tmp_path):
    from synthex.models.embedded import EmbeddedArch
    from synthex.train.scratch import train_base

    data = make_imagefolder(tmp_path / "ds")
    first = train_base(data, tmp_path / "a", tiny_config(), progress=False)
    cfg = tiny_config(init_from=str(first.pipeline_dir))
    cfg.arch = EmbeddedArch.from_dict({**EmbeddedArch.tiny().to_dict(), "unet_channels": [16, 24]})
    with pytest.raises(SynthexError, match="do not fit the configured architecture"):
        train_base(data, tmp_path / "b", cfg, progress=False)
    with pytest.raises(SynthexError, match="not a diffusers pipeline folder"):
        train_base(data, tmp_path / "c", tiny_config(init_from=str(tmp_path)), progress=False)


def test_a_finished_run_extends_to_a_larger_budget(tmp_path):
    from synthex.train.scratch import train_base

    data = make_imagefolder(tmp_path / "ds")
    done = train_base(data, tmp_path / "run", tiny_config(), progress=False)
    before = (done.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    train_base(data, tmp_path / "run", tiny_config(**{"unet.max_steps": 8}), resume=True, progress=False)
    log = pd.read_csv(tmp_path / "run" / "training_log.csv")
    assert log[log.stage == "unet"].step.tolist() == list(range(1, 9))  # steps 6-8 added, none repeated
    assert (done.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != before
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["unet"]["max_steps"] == 8
    with pytest.raises(SynthexError, match="cannot raise vae.max_steps"):
        train_base(data, tmp_path / "run", tiny_config(**{"unet.max_steps": 8, "vae.max_steps": 6}),
                   resume=True, progress=False)


def test_a_typo_under_arch_is_a_clean_config_error(tmp_path):
    """Issue 12: a bad key under ``arch:`` gives the same clean error as one under ``vae:``."""
    import yaml

    from synthex.errors import ConfigError
    from synthex.train.scratch import load_config

    for section in ("arch", "vae"):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({section: {"unet_chanels": [8]}}))
        with pytest.raises(ConfigError, match="unet_chanels"):
            load_config(tmp_path / "bad.yaml")
        import subprocess
        import sys

        result = subprocess.run([sys.executable, "-m", "synthex.cli", "train", "base", "--data", str(tmp_path),
                                 "--out", str(tmp_path / "run"), "--config", str(tmp_path / "bad.yaml"), "--dry-run"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "unet_chanels" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
