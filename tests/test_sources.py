from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synthex.data.integrity import check_integrity
from synthex.data.sources import COLUMNS, detect_layout, load_source, load_tables, parse_openi_xml
from synthex.errors import DataSourceError
from tests.conftest import make_kaggle


def test_bundled_source_has_the_real_collection():
    tables = load_tables("bundled")
    report, table = check_integrity(tables)
    assert report.report_uids == 3955  # the Open-i release
    assert report.common_uids == 3851  # the thesis' "3,851 common uids"
    assert report.images_listed == 7470  # Kaggle ships 7,470 files
    assert list(table.columns) == COLUMNS
    assert table["image_path"].isna().all()  # no images bundled: text pipeline only
    assert set(table["projection"]) <= {"Frontal", "Lateral", "Unknown"}
    assert report.frontal_images > 3800


def test_openi_xml_parsing_keeps_every_field(bundled_xml):
    row, images = parse_openi_xml(bundled_xml["1000"])
    assert row["uid"] == "1000"
    assert row["mesh"] == "Opacity/lung/upper lobe/right;Pulmonary Atelectasis/upper lobe/right;Opacity/lung/lingula"
    assert row["problems"] == "Opacity;Pulmonary Atelectasis"
    assert row["findings"].startswith("There is XXXX increased opacity within the right upper lobe")
    assert row["comparison"] == "XXXX PA and lateral chest radiographs"
    assert images == ["CXR1000_IM-0003-1001", "CXR1000_IM-0003-2001", "CXR1000_IM-0003-3001"]


@pytest.mark.parametrize("fixture", ["openi_dir", "openi_tar"])
def test_openi_folder_and_tarball_agree(request, fixture):
    table = load_source(request.getfixturevalue(fixture))
    assert set(table["uid"]) <= {str(u) for u in range(1, 2000)}
    assert (table["filename"] == table["image_id"] + ".dcm.png").all()
    # Open-i ids "CXR1_1_IM-0001-3001" become Kaggle names "1_IM-0001-3001.dcm.png"
    assert "1_IM-0001-3001.dcm.png" in set(table["filename"])
    assert table.groupby("uid")["projection"].apply(lambda p: (p == "Frontal").sum()).ge(1).all()


def test_kaggle_layout_reads_images_and_sizes(kaggle_dir):
    report, table = check_integrity(load_tables(kaggle_dir))
    assert report.layout == "kaggle"
    assert report.images_present == report.images_listed == 25
    assert report.patients_with_several_frontal == 1
    assert table["image_path"].notna().all()
    assert (table["width"] > 0).all() and (table["projection_source"] == "csv").all()


def test_integrity_counts_missing_and_extra_images(kaggle_dir):
    (kaggle_dir / "images/images_normalized/1_IM-0001-1001.dcm.png").unlink()
    extra = kaggle_dir / "images/images_normalized/999_IM-9999-1001.dcm.png"
    extra.write_bytes((kaggle_dir / "images/images_normalized/2_IM-0002-1001.dcm.png").read_bytes())
    report, table = check_integrity(load_tables(kaggle_dir))
    assert report.images_missing == 1 and report.missing_examples == ["1_IM-0001-1001"]
    assert report.images_extra == 1 and report.extra_examples == ["999_IM-9999-1001"]
    assert table.loc[table["image_id"] == "1_IM-0001-1001", "image_path"].isna().all()


def test_text_only_kaggle_runs(tmp_path):
    root = make_kaggle(tmp_path / "k", with_images=False)
    report, table = check_integrity(load_tables(root))
    assert report.images_present == 0 and table["image_path"].isna().all()
    assert any("text" in n for n in report.notes)


def test_missing_column_names_file_and_column(kaggle_dir):
    frame = pd.read_csv(kaggle_dir / "indiana_reports.csv").drop(columns=["findings"])
    frame.to_csv(kaggle_dir / "indiana_reports.csv", index=False)
    with pytest.raises(DataSourceError, match=r"indiana_reports.csv lacks column\(s\) findings"):
        load_tables(kaggle_dir)


def test_wrong_folder_says_what_is_expected(tmp_path):
    with pytest.raises(DataSourceError, match="not a known IU X-ray layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataSourceError, match="no such file or folder"):
        detect_layout(tmp_path / "nope")


def test_malformed_xml_names_the_file(openi_dir):
    bad = openi_dir / "ecgen-radiology" / "bad.xml"
    bad.write_text("<eCitation><uId id='CXR9'/>")
    with pytest.raises(DataSourceError, match="bad.xml: malformed report XML"):
        load_tables(openi_dir)


def test_truncated_tarball_is_a_clear_error(tmp_path, openi_tar):
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(openi_tar.read_bytes()[:200])
    with pytest.raises(DataSourceError, match="unreadable tarball"):
        load_tables(cut)
