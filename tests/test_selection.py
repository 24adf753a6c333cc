from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthex.data.selection import assign_splits, get_preset, load_presets, rank_normals, select
from synthex.errors import SynthexError


def _row(uid, mesh="normal", findings="The lungs are clear.", projection="Frontal", image=None, w=100, h=100):
    return {"uid": str(uid), "image_id": image or f"{uid}_IM-1", "projection": projection, "mesh": mesh,
            "findings": findings, "impression": "", "findings_clean": findings, "impression_clean": "",
            "width": w, "height": h}


def _frame(rows):
    return pd.DataFrame(rows)


def test_every_preset_in_the_packaged_file_resolves():
    presets = load_presets()
    assert {"all", "opacity", "cardiomegaly", "effusion", "unbalanced"} <= set(presets)
    for name in presets:
        preset = get_preset(name)
        assert preset["projections"] == ["Frontal"]
    assert presets["opacity"]["trigger"] == "Lung opacity."


def test_unknown_preset_lists_names():
    with pytest.raises(SynthexError, match="available: all, cardiomegaly"):
        get_preset("nope")


def test_user_preset_file_and_bad_split(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("defaults: {projections: [Frontal]}\npresets:\n  mine: {split: {train: 0.9, val: 0.2, test: 0}}\n")
    with pytest.raises(SynthexError, match="sum to 1"):
        get_preset("mine", path)
    path.write_text("presets: [oops")
    with pytest.raises(SynthexError, match="not valid YAML"):
        load_presets(path)


def test_frontal_unique_patient_and_quality_steps_are_logged():
    rows = [_row(1), _row(1, image="1_IM-2", projection="Lateral"),  # lateral dropped
            _row(2), _row(2, image="2_IM-2"),  # two frontals -> patient dropped
            _row(3, mesh="Technical Quality of Image Unsatisfactory"),  # MeSH quality
            _row(4, mesh="Cardiomegaly", findings="Limited exam due to rotation."),  # text quality
            _row(5, mesh="Contrast Media", findings="Motion artifact present."),  # both
            _row(6, mesh="Cardiomegaly/mild")]
    preset = get_preset("unbalanced")
    sel = select(_frame(rows), preset)
    assert sorted(sel.selected["uid"]) == ["1", "6"]
    log = sel.log_frame().set_index("step")
    assert log.loc["projection", "removed"] == 1
    assert log.loc["several_frontal", "removed"] == 2
    assert log.loc["quality", "removed"] == 3
    assert "2 by MeSH, 2 by text, 1 both" in log.loc["quality_overlap", "reason"]
    assert len(sel.excluded) == 6 and set(sel.excluded["excluded_by"]) == {"projection", "several_frontal", "quality"}


def test_balance_drops_the_shortest_normals():
    rows = [_row(i, findings="x" * i) for i in range(1, 11)] + [_row(99, mesh="Cardiomegaly", findings="a")]
    preset = get_preset("all")
    preset["balance_normal"] = {"method": "drop_shortest", "n": 4}
    kept = select(_frame(rows), preset).selected
    assert sorted(kept["uid"].astype(int)) == [5, 6, 7, 8, 9, 10, 99]
    preset["balance_normal"] = {"method": "keep_longest", "n": 2}
    kept = select(_frame(rows), preset).selected
    assert sorted(kept["uid"].astype(int)) == [9, 10, 99]


def test_opacity_subset_whitelist_blacklist_max_findings_and_trigger_rows():
    rows = [_row(1, mesh="Opacity/lung/base/right"),
            _row(2, mesh="Airspace Disease/lung/base/left;Pulmonary Atelectasis/base"),
            _row(3, mesh="Opacity/lung;Nodule/right"),  # blacklisted
            _row(4, mesh="Opacity;Opacity/a;Opacity/b;Opacity/c"),  # 4 findings
            _row(5, mesh="Cardiomegaly"),  # not in subset
            _row(6), _row(7, w=200, h=100), _row(8, w=100, h=100),
            _row(9, findings="Pacemaker in place.")]  # dirty normal
    sel = select(_frame(rows), get_preset("opacity"))
    kept = sel.selected.set_index("uid")
    assert set(kept.index) == {"1", "2", "6", "8"}  # 2 positives + 2 square normals
    assert kept.loc["1", "is_subset_positive"] and not kept.loc["6", "is_subset_positive"]
    assert set(sel.excluded["excluded_by"]) >= {"subset_findings", "subset_clean_normals", "subset_normal_count"}


def test_rank_normals_prefers_square_then_least_wide():
    frame = pd.DataFrame({"width": [300, 100, 120, 90, np.nan], "height": [100, 100, 100, 200, 100]},
                         index=list("abcde"))
    order = list(rank_normals(frame, [0.85, 1.15], seed=0))
    assert order[0] == "b"  # square
    assert order[1:3] == ["c", "a"]  # landscapes, least wide first
    assert order[3:] == ["d", "e"]  # then portrait, then unknown


def test_split_is_patient_level_deterministic_and_proportional():
    frame = pd.DataFrame({"uid": [str(i // 2) for i in range(2000)], "is_normal": [i % 3 == 0 for i in range(2000)]})
    a = assign_splits(frame, {"train": 0.7, "val": 0.1, "test": 0.2, "seed": 1})
    b = assign_splits(frame, {"train": 0.7, "val": 0.1, "test": 0.2, "seed": 1})
    assert (a == b).all()
    assert frame.assign(s=a).groupby("uid")["s"].nunique().max() == 1  # no patient in two splits
    shares = a.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["test"] - 0.2) < 0.02
    c = assign_splits(frame, {"train": 0.7, "val": 0.1, "test": 0.2, "seed": 2})
    assert (a != c).any()
