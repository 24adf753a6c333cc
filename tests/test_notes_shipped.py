"""The shipped note models: they load offline from the package, are labelled synthetic, stay
inside the size budget, and their notes are on the diagnosis's topic."""
from __future__ import annotations

import json

import pytest
from tests.helpers_tiny import one_thread  # noqa: F401 - one_thread is an autouse fixture

from synthex.notes.model import KINDS, NoteModel, shipped_model_dir


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_model_loads_and_is_labelled(kind):
    folder = shipped_model_dir(kind)
    body = json.loads((folder / "note_model.json").read_text())
    assert body["kind"] == kind and body["synthetic"] is True and body["train_pairs"] == 2676
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 30 * 1024 * 1024
    model = NoteModel.load(kind)
    note = model.generate(["normal"], steps=10)[0]
    assert note.synthetic and note.text


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_notes_name_the_prompted_finding(kind):
    """Across 4 seeds and 3 single-finding diagnoses, most notes name the finding they were asked
    for (read back by the finding parser); a model that ignores its condition fails this."""
    from synthex.phantom.labels import text_findings

    model = NoteModel.load(kind)
    wanted = {"Cardiomegaly/mild": "cardiomegaly", "Pleural Effusion/right": "pleural_effusion",
              "Calcified Granuloma": "calcified_granuloma"}
    notes = model.generate(list(wanted), n=4, seed=0)
    hits = sum(wanted[n.diagnosis] in {f.name for f in text_findings(n.text)[0]} for n in notes)
    assert hits >= 6, [n.text for n in notes]  # ~2 of 12 by chance (how often real notes name each)
