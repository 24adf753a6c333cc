"""`synthex data prepare` / `synthex phantom` hardening: --overwrite removes only its own files,
options are checked up front, hostile images are rejects, duplicates are reported, an empty
result is an error, rejects.csv has LF line ends, an interrupted run resumes."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from synthex.cli import app
from synthex.data import images as images_mod
from synthex.data.images import ExportTask, export_images, shard_of
from synthex.data.pipeline import PrepareOptions, prepare
from synthex.data.sources import load_tables
from synthex.errors import ConfigError, DataSourceError, OutputExistsError
from tests.conftest import make_kaggle, write_png

runner = CliRunner()
IMG = Path("images/images_normalized")


def _opts(source, **kw) -> PrepareOptions:
    base = dict(source=str(source), preset="unbalanced", size=32, progress=False, card=False)
    return PrepareOptions(**{**base, **kw})


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (grey, 8 bit) with a tiny, short IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- 1. --overwrite
def test_overwrite_removes_only_prepare_files_and_keeps_the_users(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    first = prepare(out, _opts(kaggle_dir))
    (out / "notes.txt").write_text("mine")
    (out / "images" / "my_sketch.txt").write_text("mine too")
    old_names = set(pd.read_csv(out / "metadata.csv")["file_name"])
    # the new run selects fewer images: those of the old run must not linger
    presets = tmp_path / "presets.yaml"
    presets.write_text("presets:\n  few:\n    balance_normal: {method: keep_longest, n: 1}\n")
    result = prepare(out, _opts(kaggle_dir, preset="few", presets_file=str(presets), overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "my_sketch.txt").read_text() == "mine too"
    new_names = set(pd.read_csv(out / "metadata.csv")["file_name"])
    assert len(new_names) < len(old_names) and result.complete
    on_disk = {f"images/{p.name}" for p in (out / "images").glob("*.png")}
    assert on_disk == new_names  # stale images of the previous run were removed
    assert first.images_written == len(old_names)


def test_source_inside_out_is_refused_and_kept(tmp_path, kaggle_dir):
    out = tmp_path / "runs" / "iu"
    prepare(out, _opts(kaggle_dir))
    raw = make_kaggle(out / "raw", n_patients=3)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    with pytest.raises(DataSourceError, match=r"--source .* is inside --out"):
        prepare(out, _opts(raw, overwrite=True))
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before
    with pytest.raises(DataSourceError, match=r"--images .* is inside --out"):
        prepare(out, _opts(kaggle_dir, images=str(raw / IMG), overwrite=True))
    assert (out / "metadata.csv").is_file()  # the finished run is untouched too


def test_out_inside_source_or_images_is_refused(tmp_path, kaggle_dir):
    with pytest.raises(DataSourceError, match=r"--out .* is inside --source"):
        prepare(kaggle_dir / "prepared", _opts(kaggle_dir))
    with pytest.raises(DataSourceError, match=r"--out .* is inside --images"):
        prepare(tmp_path / "imgs" / "out", _opts(kaggle_dir, images=str(tmp_path / "imgs")))
    assert not (kaggle_dir / "prepared").exists()


def test_overwrite_reads_the_source_before_deleting(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    prepare(out, _opts(kaggle_dir))
    with pytest.raises(DataSourceError, match="no such file"):
        prepare(out, _opts(tmp_path / "missing", overwrite=True))
    with pytest.raises(Exception, match="unknown"):
        prepare(out, _opts(kaggle_dir, preset="nope", overwrite=True))
    assert (out / "metadata.csv").is_file() and any((out / "images").glob("*.png"))


def test_unreadable_manifest_is_a_clear_error(tmp_path, kaggle_dir):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "prepare.json").write_text("{not json")
    with pytest.raises(OutputExistsError, match="prepare.json is unreadable"):
        prepare(out, _opts(kaggle_dir))


# --------------------------------------------------------------------------- 2. options
@pytest.mark.parametrize("args, needle", [
    (["--size", "0"], "--size 0"), (["--size", "-5"], "--size -5"), (["--size", "100000"], "--size 100000"),
    (["--mode", "CMYK"], "--mode 'CMYK'"), (["--workers", "0"], "--workers 0"),
    (["--workers", "-2"], "--workers -2"), (["--shard", "3/2"], "--shard"), (["--shard", "abc"], "--shard"),
    (["--shard", "1/0"], "--shard"),
])
def test_prepare_bad_options_are_one_line(tmp_path, args, needle):
    out = tmp_path / "x"
    res = runner.invoke(app, ["data", "prepare", "--out", str(out), "-q", *args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()  # checked before anything is written


def test_library_options_are_checked(tmp_path):
    for bad in (dict(size=0), dict(size=True), dict(mode="CMYK"), dict(workers=0), dict(shard=(3, 2)),
                dict(shard=("a", "b"))):
        with pytest.raises(ConfigError):
            prepare(tmp_path / "x", PrepareOptions(source="bundled", progress=False, **bad))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text, needle", [
    ("- all\n- opacity\n", "holds a list"),
    ("presets: [a, b]\n", "'presets:' mapping"),
    ("presets:\n  mine: [Frontal]\n", "preset 'mine' is a list"),
    ("presets:\n  mine: {projections: Frontal}\n", "projections"),
    ("presets:\n  mine: {split: {seed: x}}\n", "split.seed"),
    ("presets:\n  mine: {split: {seed: -1}}\n", "split.seed"),
    ("presets:\n  mine: {balance_normal: {method: drop_shortest, n: many}}\n", "balance_normal.n"),
    ("presets:\n  mine: {projection: [Frontal]}\n", "unknown key"),
    ("defaults: [1]\npresets:\n  mine: {}\n", "'defaults'"),
    ("presets:\n  mine: {subset: {include_headings_containing: opacity}}\n", "include_headings_containing"),
])
def test_bad_presets_file_is_one_line(tmp_path, text, needle):
    presets = tmp_path / "p.yaml"
    presets.write_text(text)
    res = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path / "x"), "-q", "--presets", str(presets),
                              "--preset", "mine"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and needle in res.output and str(presets) in res.output
    res = runner.invoke(app, ["data", "presets", "--presets", str(presets)])
    assert res.exit_code == 2 and res.output.startswith("error: ")


@pytest.mark.parametrize("args, needle", [
    (["render", "normal", "--out", "{o}/a.png", "--size", "0"], "--size 0"),
    (["render", "normal", "--out", "{o}/a.png", "--seed", "-1"], "--seed -1"),
    (["gallery", "--out", "{o}/g.png", "--seed", "-3"], "--seed -3"),
    (["build", "--out", "{o}", "--workers", "0"], "--workers 0"),
    (["build", "--out", "{o}", "--seed", "-1"], "--seed -1"),
    (["build", "--out", "{o}", "--n", "0"], "--n 0"),
    (["caption-set", "--out", "{o}", "--seed", "-1", "--n", "2"], "--seed -1"),
    (["caption-set", "--out", "{o}", "--workers", "0", "--n", "2"], "--workers 0"),
    (["caption-set", "--out", "{o}", "--size", "4000", "--n", "2"], "--size 4000"),
    (["classifier", "--out", "{o}", "--epochs", "0"], "--epochs 0"),
    (["classifier", "--out", "{o}", "--n-train", "0"], "--n-train 0"),
])
def test_phantom_bad_options_are_one_line(tmp_path, args, needle):
    out = tmp_path / "ph"
    res = runner.invoke(app, ["phantom", *[a.format(o=out) for a in args]])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and needle in res.output
    assert not out.exists()


def test_phantom_build_options_checked_in_the_library(tmp_path):
    from synthex.phantom.dataset import BuildOptions, build_dataset

    for bad in (dict(workers=0), dict(seed=-1), dict(n=0), dict(size=0)):
        with pytest.raises(ConfigError):
            build_dataset(BuildOptions(str(tmp_path / "b"), **{"n": 1, **bad}))
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- 3. hostile images
def test_hostile_images_are_rejects_and_the_run_proceeds(tmp_path, kaggle_dir):
    folder = kaggle_dir / IMG
    _png_header_only(folder / "1_IM-0001-1001.dcm.png", 40000, 40000)  # DecompressionBombError
    _png_header_only(folder / "5_IM-0005-1001.dcm.png", 10000, 10000)  # DecompressionBombWarning
    (folder / "6_IM-0006-1001.dcm.png").write_bytes(b"")  # zero bytes
    (folder / "7_IM-0007-1001.dcm.png").write_text("not an image at all")
    good = folder / "8_IM-0008-1001.dcm.png"
    good.write_bytes(good.read_bytes()[:70])  # truncated
    out = tmp_path / "ds"
    result = prepare(out, _opts(kaggle_dir))
    assert result.complete and result.images_rejected == 5
    rejects = pd.read_csv(out / "rejects.csv").set_index("name")["reason"]
    assert "too many pixels" in rejects["images/1_IM-0001-1001.png"]
    assert "too many pixels" in rejects["images/5_IM-0005-1001.png"]
    assert "empty file" in rejects["images/6_IM-0006-1001.png"]
    assert len(rejects) == 5 and rejects.str.len().gt(0).all()
    meta = pd.read_csv(out / "metadata.csv")
    assert not set(rejects.index) & set(meta["file_name"]) and len(meta) > 0


def test_header_scan_survives_a_bomb(tmp_path):
    from synthex.data.images import read_image_size

    path = tmp_path / "bomb.png"
    _png_header_only(path, 40000, 40000)
    assert read_image_size(path) is None
    root = make_kaggle(tmp_path / "k", n_patients=2)
    _png_header_only(root / IMG / "1_IM-0001-1001.dcm.png", 40000, 40000)
    tables = load_tables(root)
    from synthex.data.integrity import check_integrity

    report, _ = check_integrity(tables)  # used to raise DecompressionBombError
    assert report.images_present == report.images_listed


def test_extreme_aspect_ratio_is_a_reject_not_a_memory_blowup(tmp_path):
    from synthex.data.images import transform_problem

    write_png(tmp_path / "strip.png", 1, 90000)
    write_png(tmp_path / "ok.png", 40, 48)
    assert transform_problem((1, 90000), 32) and transform_problem((40, 48), 32) is None
    report = export_images([ExportTask(tmp_path / "strip.png", "a.png"), ExportTask(tmp_path / "ok.png", "b.png")],
                           tmp_path / "out", size=32, progress=False)
    assert report.written == 1 and "aspect ratio" in report.rejected[0][1]


# --------------------------------------------------------------------------- 4. duplicates
def _duplicate(root: Path, reports_extra: list[dict], projections_extra: list[dict]) -> None:
    reports = pd.read_csv(root / "indiana_reports.csv", dtype=str, keep_default_na=False)
    projections = pd.read_csv(root / "indiana_projections.csv", dtype=str, keep_default_na=False)
    reports = pd.concat([reports, pd.DataFrame(reports_extra)], ignore_index=True)
    projections = pd.concat([projections, pd.DataFrame(projections_extra)], ignore_index=True)
    reports.to_csv(root / "indiana_reports.csv", index=False)
    projections.to_csv(root / "indiana_projections.csv", index=False)


def test_duplicates_are_merged_or_rejected_never_vanish(tmp_path, kaggle_dir):
    reports = pd.read_csv(kaggle_dir / "indiana_reports.csv", dtype=str, keep_default_na=False).set_index("uid")
    projections = pd.read_csv(kaggle_dir / "indiana_projections.csv", dtype=str, keep_default_na=False)
    same5 = reports.loc["5"].to_dict() | {"uid": "5"}
    other7 = reports.loc["7"].to_dict() | {"uid": "7", "findings": "A different report for the same uid."}
    row6 = projections[projections["filename"] == "6_IM-0006-1001.dcm.png"].iloc[0].to_dict()
    row8 = projections[projections["filename"] == "8_IM-0008-1001.dcm.png"].iloc[0].to_dict() | {"projection": "Lateral"}
    _duplicate(kaggle_dir, [same5, other7], [row6, row8])
    out = tmp_path / "ds"
    result = prepare(out, _opts(kaggle_dir))
    integ = result.integrity
    assert (integ.identical_report_rows, integ.identical_projection_rows) == (1, 1)
    assert (integ.conflicting_report_uids, integ.conflicting_projection_images) == (1, 1)
    meta = pd.read_csv(out / "metadata.csv", dtype=str)
    assert {"5", "6"} <= set(meta["uid"])  # identical duplicates: merged, the patients stay
    assert not {"7"} & set(meta["uid"]) and "images/8_IM-0008-1001.png" not in set(meta["file_name"])
    rejects = pd.read_csv(out / "rejects.csv").set_index("name")["reason"]
    assert "uid 7 listed 2 times" in rejects["images/7_IM-0007-1001.png"]
    assert "different reports" in rejects["images/7_IM-0007-2001.png"]
    assert rejects["images/8_IM-0008-1001.png"].str.contains("image 8_IM-0008-1001 listed 2 times").all()
    assert "indiana_reports.csv" in pd.read_csv(out / "rejects.csv")["source"].iloc[0]
    log = result.selection.log_frame().set_index("step")
    assert log.loc["several_frontal", "removed"] == 2  # only patient 3's real two frontals
    assert json.loads((out / "integrity.json").read_text())["rows_rejected"] == 4  # uid 7's two images, image 8's two rows


def test_cli_summary_names_the_duplicates(tmp_path, kaggle_dir):
    reports = pd.read_csv(kaggle_dir / "indiana_reports.csv", dtype=str, keep_default_na=False)
    _duplicate(kaggle_dir, [reports.iloc[4].to_dict()], [])
    res = runner.invoke(app, ["data", "prepare", "--source", str(kaggle_dir), "--out", str(tmp_path / "o"),
                              "--size", "32", "-q", "--no-card", "--preset", "unbalanced"])
    assert res.exit_code == 0, res.output
    assert "duplicates: 1 identical report rows" in res.output


# --------------------------------------------------------------------------- 5. empty result
def test_all_images_unreadable_is_an_error_not_a_finished_run(tmp_path, kaggle_dir):
    for path in (kaggle_dir / IMG).glob("*.png"):
        path.write_bytes(b"garbage")
    out = tmp_path / "ds"
    with pytest.raises(DataSourceError) as info:
        prepare(out, _opts(kaggle_dir))
    message = str(info.value)
    assert str(kaggle_dir) in message and "rejects.csv" in message and "10 rejected" in message
    assert json.loads((out / "prepare.json").read_text())["complete"] is False
    assert not (out / "metadata.csv").exists()
    assert len(pd.read_csv(out / "rejects.csv")) == 10
    res = runner.invoke(app, ["data", "prepare", "--source", str(kaggle_dir), "--out", str(tmp_path / "c"),
                              "--size", "32", "-q", "--no-card", "--preset", "unbalanced"])
    assert res.exit_code == 2 and res.output.startswith("error: ")


def test_empty_selection_is_an_error(tmp_path, kaggle_dir):
    presets = tmp_path / "p.yaml"
    presets.write_text("presets:\n  none:\n    projections: [Unknown]\n")
    with pytest.raises(DataSourceError, match="no rows left"):
        prepare(tmp_path / "ds", _opts(kaggle_dir, preset="none", presets_file=str(presets)))
    assert json.loads((tmp_path / "ds" / "prepare.json").read_text())["complete"] is False


def test_selected_images_all_missing_is_an_error_not_text_only(tmp_path, kaggle_dir):
    for path in (kaggle_dir / IMG).glob("*-1001.dcm.png"):
        path.unlink()  # every frontal gone, laterals still there
    with pytest.raises(DataSourceError, match="none of the .* selected images is in the image folder"):
        prepare(tmp_path / "ds", _opts(kaggle_dir))
    assert not (tmp_path / "ds" / "captions.csv").exists()


# --------------------------------------------------------------------------- 6. LF line ends
def test_rejects_and_tables_have_lf_line_ends(tmp_path, kaggle_dir):
    bad = kaggle_dir / IMG / "1_IM-0001-1001.dcm.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "ds"
    prepare(out, _opts(kaggle_dir))
    for name in ("rejects.csv", "metadata.csv", "selection.csv", "excluded.csv"):
        data = (out / name).read_bytes()
        assert b"\r\n" not in data and data.endswith(b"\n"), name
    report = export_images([ExportTask(bad, "a.png")], tmp_path / "e", size=32, progress=False)
    assert b"\r" not in report.rejects_path.read_bytes()


# --------------------------------------------------------------------------- 7. resume
def test_interrupted_export_resumes_and_overwrite_clears_it(tmp_path, kaggle_dir, monkeypatch):
    out = tmp_path / "ds"
    real = images_mod._export_one
    calls = {"n": 0}

    def flaky(job):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(images_mod, "_export_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(out, _opts(kaggle_dir))
    monkeypatch.setattr(images_mod, "_export_one", real)
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["complete"] is False and len(manifest["images"]) == 10
    result = prepare(out, _opts(kaggle_dir))
    assert result.complete and result.images_skipped == 3 and result.images_written == 7
    assert len(pd.read_csv(out / "metadata.csv")) == 10
    # an interrupted run with another size is refused, and --overwrite removes the old images
    manifest = json.loads((out / "prepare.json").read_text())
    manifest["complete"] = False
    (out / "prepare.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputExistsError, match="different options"):
        prepare(out, _opts(kaggle_dir, size=40))
    result = prepare(out, _opts(kaggle_dir, size=40, overwrite=True))
    assert result.images_written == 10 and result.images_skipped == 0


def test_shards_complete_when_one_shard_had_a_reject(tmp_path, kaggle_dir):
    name = "images/1_IM-0001-1001.png"
    (kaggle_dir / IMG / "1_IM-0001-1001.dcm.png").write_bytes(b"garbage")
    first = shard_of(name, 2)  # run the shard holding the reject first
    out = tmp_path / "ds"
    a = prepare(out, _opts(kaggle_dir, shard=(first, 2)))
    b = prepare(out, _opts(kaggle_dir, shard=(1 - first, 2)))
    assert a.images_rejected == 1 and not a.complete
    assert b.complete and (out / "metadata.csv").is_file()
    assert json.loads((out / "prepare.json").read_text())["complete"] is True
    assert list(pd.read_csv(out / "rejects.csv")["name"]) == [name]
    assert len(pd.read_csv(out / "metadata.csv")) == 9
