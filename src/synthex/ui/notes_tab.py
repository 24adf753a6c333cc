"""The web app's Notes tab: synthetic radiology notes for a diagnosis from a note model (the
shipped diffusion or AR model, or the ``RUN/model`` folder of a ``synthex train note`` run).

The diagnosis is picked from common findings with a side and a severity (composed MeSH-style,
e.g. ``Pleural Effusion/right/mild; Cardiomegaly``) or written as free text in English, Russian
or Ukrainian. Library calls only (:class:`synthex.notes.model.NoteModel`); no model logic here.
"""
from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from synthex.errors import SynthexError
from synthex.notes.model import DEFAULT_GUIDANCE
from synthex.ui import state

SYNTHETIC_CAPTION = "Synthetic text — for research, not diagnosis"
MODEL_CHOICES = ("diffusion", "ar", "folder")
SIDES = ("none", "right", "left", "bilateral")
SEVERITIES = ("none", "mild", "moderate", "severe")
SAMPLERS = ("ddim", "ddpm")
CSV_COLUMNS = ("diagnosis", "condition", "note", "seed", "model", "sampler", "steps", "synthetic")
TRACE_SNAPSHOTS = 10


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_model(folder: str | None, stamp: float) -> Any:
    """The loaded model (``folder`` None/"diffusion"/"ar": shipped); ``stamp`` reloads a
    retrained folder."""
    from synthex.notes.model import NoteModel

    return NoteModel.load(folder)


@st.cache_resource(show_spinner=False)
def _lock() -> threading.Lock:
    return threading.Lock()


def _stamp(folder: Path | None) -> float:
    from synthex.notes.model import CONFIG_FILE, WEIGHTS_FILE

    if folder is None:
        return 0.0
    try:
        return max((folder / name).stat().st_mtime for name in (CONFIG_FILE, WEIGHTS_FILE))
    except OSError:
        return 0.0


def _folder_kind(folder: Path | None) -> str | None:
    """The kind written in a folder's note_model.json (None when unreadable: load says why)."""
    from synthex.notes.model import CONFIG_FILE

    if folder is None:
        return None
    try:
        kind = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def finding_labels() -> list[str]:
    """Common diagnoses for the picker: the phantom's findings, "normal" left out, in title case."""
    from synthex.phantom.findings import finding_names

    return [name.replace("_", " ").title() for name in finding_names() if name != "normal"]


def compose_diagnosis(findings: list[str], side: str = "none", severity: str = "none") -> str:
    """``["Pleural Effusion", "Cardiomegaly"], "right", "mild"`` ->
    ``"Pleural Effusion/right/mild; Cardiomegaly/right/mild"`` (the same qualifiers for all)."""
    qualifiers = "".join(f"/{q}" for q in (side, severity) if q and q != "none")
    return "; ".join(f"{f}{qualifiers}" for f in findings if f.strip())


def notes_csv(notes: list[Any]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for note in notes:
        writer.writerow([note.diagnosis, note.condition, note.text, note.seed, note.model, note.sampler,
                         note.steps, str(bool(note.synthetic)).lower()])
    return buffer.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------------
def _model_input() -> tuple[str | None, Path | None, bool]:
    """(what NoteModel.load gets, the folder when one is given, whether it may be used)."""
    choice = st.radio("Note model", MODEL_CHOICES, horizontal=True, key="notes_model_kind",
                      format_func={"diffusion": "Shipped diffusion", "ar": "Shipped autoregressive",
                                   "folder": "Folder"}.get)
    if choice != "folder":
        return choice, None, True
    text = st.text_input("Note model folder", key="notes_folder",
                         help="RUN/model of a 'synthex train note' run; empty = the shipped diffusion model.")
    if not text.strip():
        st.caption("No folder given: the shipped diffusion model is used.")
        return None, None, True
    roots = state.allowed_roots()
    path = state.allowed_path(text, roots, must_exist=False)
    if path is None:
        st.error(state.not_allowed("Note model folder", text, roots))
        return None, None, False
    return str(path), path, True


def _diagnosis_input() -> str:
    st.markdown("**Diagnosis**")
    left, mid, right = st.columns([3, 1, 1])
    findings = left.multiselect("Findings (MeSH)", finding_labels(), key="notes_findings")
    side = mid.selectbox("Side", SIDES, key="notes_side")
    severity = right.selectbox("Severity", SEVERITIES, key="notes_severity")
    free = st.text_input("Diagnosis (free text, English/Russian/Ukrainian)", key="notes_free",
                         placeholder="e.g. Cardiomegaly/mild; Pleural Effusion/right  ·  normal",
                         help="When not empty, this overrides the findings picked above.")
    diagnosis = free.strip() or compose_diagnosis(findings, side, severity)
    if diagnosis:
        from synthex.notes.data import condition_text

        try:
            st.caption(f"Diagnosis: {diagnosis} → the model reads: {condition_text(diagnosis)}")
        except SynthexError as exc:
            st.caption(state.short_error(exc))
    return diagnosis


def _sampling_inputs(kind: str | None) -> dict[str, Any]:
    from synthex.notes.model import DEFAULT_STEPS

    cols = st.columns(4)
    seed = int(cols[0].number_input("Seed", 0, 2**31 - 1, 0, step=1, key="notes_seed"))
    n = int(cols[1].number_input("Number of notes", 1, 8, 1, step=1, key="notes_n"))
    if kind == "ar":
        top_p = float(cols[2].number_input("Top-p", 0.05, 1.0, 0.9, step=0.05, key="notes_top_p"))
        return {"seed": seed, "n": n, "top_p": top_p, "trace_every": 0}
    sampler = st.radio("Sampler", SAMPLERS, horizontal=True, key="notes_sampler")
    steps = int(cols[2].number_input("Steps", 1, 1000, DEFAULT_STEPS[sampler], step=1,
                                     key=f"notes_steps_{sampler}"))
    guidance = float(cols[3].number_input("Guidance", 0.0, 20.0, DEFAULT_GUIDANCE, step=0.5, key="notes_guidance"))
    trace = st.checkbox("Show intermediate denoising steps", key="notes_trace",
                        help=f"About {TRACE_SNAPSHOTS} snapshots of the note while it is denoised.")
    return {"seed": seed, "n": n, "sampler": sampler, "steps": steps, "guidance": guidance,
            "trace_every": max(1, steps // TRACE_SNAPSHOTS) if trace else 0}


def _generate(source: str | None, folder: Path | None, diagnosis: str, options: dict[str, Any]) -> list[Any]:
    from synthex.notes.data import condition_text

    condition_text(diagnosis)  # an empty diagnosis is named before any model is loaded
    model = _load_model(source, _stamp(folder))
    bar = st.progress(0.0, text="generating notes...")
    with _lock():
        notes = model.generate([diagnosis], **options,
                               callback=lambda done, total: bar.progress(done / max(total, 1),
                                                                         text=f"note {done}/{total}"))
    bar.empty()
    return notes


def _show_notes(notes: list[Any], show_trace: bool) -> None:
    for i, note in enumerate(notes):
        with st.container(border=True):
            st.markdown(f"**{note.condition}** · seed {note.seed} · {note.seconds:.2f} s · "
                        f"{note.model} ({note.sampler}{f', {note.steps} steps' if note.steps else ''})")
            st.text(note.text or "(empty note)")
            st.caption(SYNTHETIC_CAPTION)
            if show_trace and note.trace:
                with st.expander(f"Intermediate denoising steps ({len(note.trace)})"):
                    st.table([{"t": t, "text": text} for t, text in note.trace])
    st.download_button("Download notes (CSV)", data=notes_csv(notes), file_name="synthetic_notes.csv",
                       mime="text/csv", key="notes_download", on_click="ignore")


def notes_tab() -> None:
    """The tab body."""
    st.caption("Synthetic radiology notes for a diagnosis from a note model; "
               "every note is synthetic text for research, not diagnosis.")
    source, folder, usable = _model_input()
    kind = "ar" if source == "ar" else _folder_kind(folder)
    diagnosis = _diagnosis_input()
    options = _sampling_inputs(kind)
    if st.button("Generate notes", key="notes_go", type="primary", disabled=not usable):
        try:
            notes = _generate(source, folder, diagnosis, options)
        except SynthexError as exc:
            st.session_state.pop("notes_result", None)
            st.error(state.short_error(exc))
            return
        st.session_state["notes_result"] = {"notes": notes, "trace": bool(options.get("trace_every"))}
    result = st.session_state.get("notes_result")
    if result:
        _show_notes(result["notes"], result["trace"])
