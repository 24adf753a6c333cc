"""The web app's Notes tab (synthex/ui/notes_tab.py), driven with AppTest on a tiny note model
trained here (no note model is shipped yet)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the web app needs streamlit: pip install 'synthex[ui]'")

from synthex.ui import state  # noqa: E402
from synthex.ui.notes_tab import SYNTHETIC_CAPTION, compose_diagnosis, finding_labels  # noqa: E402
from tests.helpers_tiny import one_thread  # noqa: E402,F401 - an autouse fixture
from tests.test_ui_apptest import app, errors, spy  # noqa: E402,F401

ROWS = [("Cardiomegaly", "The heart is enlarged. No effusion."),
        ("normal", "The lungs are clear. No acute disease."),
        ("Pleural Effusion/right", "Small right pleural effusion."),
        ("Opacity/lung/base/left", "Left basilar opacity."),
        ("Cardiomegaly/mild", "Mild cardiomegaly. Lungs clear."),
        ("normal", "Heart size normal. No pneumothorax."),
        ("Atelectasis/left", "Left basilar atelectasis."),
        ("Nodule/right", "A small right nodule.")]


@pytest.fixture(scope="module")
def note_model(tmp_path_factory) -> Path:
    from synthex.train.note import load_note_config, train_note

    root = tmp_path_factory.mktemp("notes_ui")
    data = root / "notes.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("diagnosis", "note", "split"))
        writer.writerows((d, n, "train") for d, n in ROWS)
    cfg = load_note_config(None, {"arch.max_len": 16, "arch.cond_len": 8, "arch.emb_dim": 8, "arch.d_model": 32,
                                  "arch.layers": 1, "arch.heads": 2, "arch.diffusion_steps": 50, "batch_size": 4,
                                  "max_steps": 2, "checkpoint_every": 2, "warmup_steps": 0, "min_count": 1})
    return train_note(data, root / "run", cfg, progress=False).model_dir


@pytest.fixture()
def notes_app(spy, note_model, monkeypatch, tmp_path):
    monkeypatch.setenv(state.ROOTS_ENV, os.pathsep.join((str(tmp_path), str(note_model.parent.parent))))
    return app()


def use_folder(at, folder: Path):
    at.radio(key="notes_model_kind").set_value("folder").run()
    at.text_input(key="notes_folder").input(str(folder))
    return at


def test_picker_composes_mesh_style_diagnoses():
    labels = finding_labels()
    assert "Pleural Effusion" in labels and "Normal" not in labels and "Calcified Granuloma" in labels
    assert compose_diagnosis(["Pleural Effusion"], "right", "mild") == "Pleural Effusion/right/mild"
    assert compose_diagnosis(["Cardiomegaly", "Edema"], "none", "severe") == "Cardiomegaly/severe; Edema/severe"
    assert compose_diagnosis([], "left", "mild") == ""


def test_notes_tab_generates_labelled_notes_with_trace_and_csv(notes_app, note_model):
    at = notes_app
    assert [tab.label for tab in at.tabs][-3:] == ["Search", "Notes", "Report"]
    use_folder(at, note_model)
    at.text_input(key="notes_free").input("Кардиомегалия")
    at.number_input(key="notes_n").set_value(2)
    at.number_input(key="notes_steps_ddim").set_value(5)
    at.button(key="notes_go").click().run()
    assert not at.exception and errors(at) == ""
    captions = [c.value for c in at.caption]
    assert captions.count(SYNTHETIC_CAPTION) == 2
    assert any("seed 0" in m.value for m in at.markdown) and any("seed 1" in m.value for m in at.markdown)
    notes = at.session_state["notes_result"]["notes"]
    assert [n.condition for n in notes] == ["cardiomegaly"] * 2 and all(n.synthetic for n in notes)
    assert len(at.download_button) == 1 and not at.table  # no trace unless asked
    from synthex.ui.notes_tab import CSV_COLUMNS, notes_csv

    rows = list(csv.DictReader(notes_csv(notes).decode("utf-8").splitlines()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2 and rows[0]["synthetic"] == "true"
    assert rows[0]["steps"] == "5" and rows[0]["sampler"] == "ddim"

    # the picker (free text cleared) and the trace: ~10 snapshots of 5 steps -> every step
    at.text_input(key="notes_free").input("")
    at.multiselect(key="notes_findings").set_value(["Pleural Effusion"])
    at.selectbox(key="notes_side").set_value("right")
    at.number_input(key="notes_n").set_value(1)
    at.checkbox(key="notes_trace").check()
    at.button(key="notes_go").click().run()
    assert not at.exception and errors(at) == ""
    note = at.session_state["notes_result"]["notes"][0]
    assert note.diagnosis == "Pleural Effusion/right" and note.condition == "pleural effusion right"
    assert len(note.trace) >= 5 and len(at.table) == 1
    assert any("Intermediate denoising steps" in e.label for e in at.expander)


def test_notes_tab_errors_are_messages(notes_app, note_model, tmp_path):
    at = notes_app
    at.radio(key="notes_model_kind").set_value("ar").run()  # no sampler, steps or trace for an AR model
    assert not at.exception and "notes_sampler" not in [r.key for r in at.radio]
    assert "notes_top_p" in [w.key for w in at.number_input] and "notes_trace" not in [c.key for c in at.checkbox]
    at = use_folder(at, note_model)
    at.button(key="notes_go").click().run()  # nothing picked, no free text
    assert not at.exception and "diagnosis is empty" in errors(at)
    at.text_input(key="notes_free").input("normal")
    at.text_input(key="notes_folder").input(str(tmp_path))
    at.button(key="notes_go").click().run()
    assert not at.exception and "is not a note model folder" in errors(at)
    at.text_input(key="notes_folder").input("/etc")
    at.run()
    assert not at.exception and "was not found in the folders this app may read" in errors(at)
    assert at.button(key="notes_go").disabled
