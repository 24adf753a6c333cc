from __future__ import annotations

import pandas as pd
import pytest

from synthex.data import mesh
from synthex.errors import SynthexError


def test_parse_mesh_structure():
    terms = mesh.parse_mesh("Diaphragm/right/elevated/mild; Opacity/lung/base/left ;;")
    assert terms == [mesh.MeshTerm("Diaphragm", ("right", "elevated", "mild")),
                     mesh.MeshTerm("Opacity", ("lung", "base", "left"))]
    assert str(terms[0]) == "Diaphragm/right/elevated/mild"
    assert mesh.parse_mesh(None) == [] and mesh.parse_mesh("") == []


def test_headings_case_insensitive_and_normal():
    assert mesh.headings("Opacity/lung;opacity/base;Cardiomegaly") == ["opacity", "cardiomegaly"]
    assert mesh.is_normal("normal") and mesh.is_normal("Normal")
    assert not mesh.is_normal("normal;Cardiomegaly")


def test_frequencies_exclude_no_indexing_and_count_images_once():
    s = pd.Series(["Opacity/a;Opacity/b", "opacity", "No Indexing", "normal"])
    freq = mesh.heading_frequencies(s)
    assert dict(zip(freq["heading"], freq["images"])) == {"Opacity": 2, "normal": 1}
    combos = mesh.combinations(pd.Series(["B;A", "A;B", "No Indexing"]))
    assert combos.iloc[0].tolist() == ["A + B", 2]
    assert "(none)" in set(combos["combination"])


def test_tree_counts_prefixes():
    s = pd.Series(["Diaphragm/right/elevated/mild", "Diaphragm/right/elevated", "Diaphragm/left/elevated", "x"])
    tree = mesh.mesh_tree(s, "diaphragm")
    assert tree["count"] == 3
    assert tree["children"]["right"]["count"] == 2
    assert tree["children"]["right"]["children"]["elevated"]["children"]["mild"]["count"] == 1
    text = mesh.render_tree(tree)
    assert text.splitlines()[0] == "Diaphragm (3)"
    assert "└── mild (1)" in text


def test_unknown_heading_suggests_close_names():
    with pytest.raises(SynthexError, match="Did you mean: Diaphragm"):
        mesh.mesh_tree(pd.Series(["Diaphragm/right"]), "Diafragm")


def test_real_diaphragm_tree_matches_thesis_shape():
    from synthex.data.sources import load_source

    table = load_source("bundled")
    frontal = table[table["projection"] == "Frontal"].drop_duplicates("uid")
    tree = mesh.mesh_tree(frontal["mesh"], "Diaphragm")
    assert tree["children"]["right"]["children"]["elevated"]["children"]["mild"]["count"] > 0
