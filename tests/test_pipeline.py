"""End to end: `synthex data prepare` on the bundled reports and on a Kaggle layout with images."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from synthex.cli import app
from synthex.data.pipeline import PrepareOptions, prepare
from synthex.errors import OutputExistsError

runner = CliRunner()


def test_bundled_text_pipeline_reproduces_thesis_rules(tmp_path):
    result = prepare(tmp_path / "out", PrepareOptions(source="bundled", progress=False))
    log = result.selection.log_frame().set_index("step")
    assert log.loc["quality", "removed"] == 76  # the thesis' 76 (75 by MeSH, 22-24 by text)
    assert "75 by MeSH" in log.loc["quality_overlap", "reason"]
    assert log.loc["balance_normal", "removed"] == 800
    assert result.cleaning.xxxx_after < result.cleaning.xxxx_before
    captions = pd.read_csv(tmp_path / "out" / "captions.csv")
    assert len(captions) == len(result.table) > 2500
    assert captions["text"].str.startswith("Chest x-ray. ").all()
    assert not captions["text"].str.contains("XXXX").any()
    assert set(captions["split"]) == {"train", "val", "test"}
    assert captions.groupby("uid")["split"].nunique().max() == 1
    for name in ("integrity.json", "cleaning.csv", "selection.csv", "excluded.csv", "DATA_CARD.md",
                 "card/finding_frequencies.png", "card/caption_tokens.png", "token_stats.json"):
        assert (tmp_path / "out" / name).is_file(), name
    excluded = pd.read_csv(tmp_path / "out" / "excluded.csv")
    assert len(excluded) + len(captions) == result.integrity.images_listed


def test_opacity_preset_is_balanced_with_trigger(tmp_path):
    result = prepare(tmp_path / "o", PrepareOptions(source="bundled", preset="opacity", progress=False, card=False))
    table = result.table
    positives = table[table["is_subset_positive"]]
    assert 150 < len(positives) == int(table["is_normal"].sum())
    assert positives["text"].str.startswith("Chest x-ray. Lung opacity. ").all()
    assert not table.loc[table["is_normal"], "text"].str.contains("Lung opacity.").any()


def test_kaggle_with_images_makes_a_loadable_imagefolder(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    result = prepare(out, PrepareOptions(source=str(kaggle_dir), preset="unbalanced", size=32, progress=False))
    meta = pd.read_csv(out / "metadata.csv")
    assert result.complete and result.images_written == len(meta) > 0
    assert all((out / f).is_file() for f in meta["file_name"])
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == len(meta) and ds[0]["image"].size == (32, 32)
    assert ds[0]["text"].startswith("Chest x-ray.")


def test_existing_output_is_not_overwritten_and_resume_works(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    opts = PrepareOptions(source=str(kaggle_dir), preset="unbalanced", size=32, progress=False, card=False)
    prepare(out, opts)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(out, opts)
    # simulate an interrupted run: manifest says incomplete, one image and the metadata lost
    manifest = json.loads((out / "prepare.json").read_text())
    manifest["complete"] = False
    (out / "prepare.json").write_text(json.dumps(manifest))
    meta = pd.read_csv(out / "metadata.csv")
    (out / meta["file_name"][0]).unlink()
    (out / "metadata.csv").unlink()
    result = prepare(out, opts)
    assert result.images_written == 1 and result.images_skipped == len(meta) - 1
    assert len(pd.read_csv(out / "metadata.csv")) == len(meta)
    # different options on an interrupted run are refused
    manifest["complete"] = False
    (out / "prepare.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputExistsError, match="different options"):
        prepare(out, PrepareOptions(source=str(kaggle_dir), preset="all", size=32, progress=False))
    result = prepare(out, PrepareOptions(source=str(kaggle_dir), preset="unbalanced", size=32, progress=False,
                                         card=False, overwrite=True))
    assert result.images_written == len(meta)


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="not made by"):
        prepare(tmp_path, PrepareOptions(source="bundled", progress=False))
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_unreadable_images_are_listed_not_dropped_silently(tmp_path, kaggle_dir):
    bad = kaggle_dir / "images/images_normalized/1_IM-0001-1001.dcm.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    out = tmp_path / "ds"
    result = prepare(out, PrepareOptions(source=str(kaggle_dir), preset="unbalanced", size=32, progress=False, card=False))
    assert result.images_rejected == 1
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["source"].str.endswith("1_IM-0001-1001.dcm.png").all()
    assert "images/1_IM-0001-1001.png" not in set(pd.read_csv(out / "metadata.csv")["file_name"])


def test_shards_fill_one_folder_and_the_last_writes_metadata(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    base = dict(source=str(kaggle_dir), preset="unbalanced", size=32, progress=False, card=False)
    first = prepare(out, PrepareOptions(**base, shard=(0, 2)))
    assert not first.complete and not (out / "metadata.csv").exists()
    assert (out / "metadata-shard0of2.csv").is_file()
    second = prepare(out, PrepareOptions(**base, shard=(1, 2)))
    assert second.complete
    meta = pd.read_csv(out / "metadata.csv")
    assert first.images_written + second.images_written == len(meta)


def test_cli_prepare_and_inspect_and_mesh(tmp_path):
    res = runner.invoke(app, ["data", "inspect", "--source", "bundled", "--out", str(tmp_path / "i")])
    assert res.exit_code == 0, res.output
    assert "| common uids | 3,851 |" in res.output
    res = runner.invoke(app, ["data", "mesh", "Diaphragm"])
    assert res.exit_code == 0 and res.output.startswith("Diaphragm (")
    assert "└── mild" in res.output or "├── mild" in res.output
    res = runner.invoke(app, ["data", "mesh", "--combinations", "--top", "3"])
    assert res.exit_code == 0 and "normal" in res.output.splitlines()[1]
    res = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path / "p"), "-q", "--no-card"])
    assert res.exit_code == 0, res.output
    assert "XXXX" in res.output and "selected:" in res.output


def test_cli_errors_are_one_clear_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from synthex.cli import main; main()", "data", "prepare",
                           "--out", str(tmp_path / "x"), "--source", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: --source" in proc.stderr and "Traceback" not in proc.stderr
