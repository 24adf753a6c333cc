"""The web app's Report tab: a chest X-ray image (uploaded, or one generated in this session) ->
a structured radiology report from a report model (the embedded one shipped at
``synthex/weights/report``, a preset of ``report_models:``, or the ``RUN/model`` folder of a
``synthex train report`` run).

Library calls only (:class:`synthex.report.model.ReportModel`); no model logic here. The pure
helpers (model choice, session images, download payloads, messages) are tested without a browser.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from synthex.errors import SynthexError
from synthex.ui import state

EMBEDDED = "embedded-report"
SYNTHETIC_CAPTION = "Synthetic report written by a model — for research, not diagnosis"
SOURCES = ("Upload", "Generated in this session")
IMAGE_TYPES = ["png", "jpg", "jpeg"]
# session keys holding generated images: Generate, img2img, Inpaint (lists of {"png", "seed", "prompt"})
RESULT_KEYS = (("results", "Generate"), ("img2img_results", "img2img"), ("inpaint_results", "Inpaint"))


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_model(source: str | None, stamp: float) -> Any:
    """The loaded report model (``source`` None: the embedded one); ``stamp`` reloads a
    retrained (or newly shipped) folder. Errors are not cached, so a fixed folder loads next time."""
    from synthex.report.model import ReportModel

    return ReportModel.load(source)


@st.cache_resource(show_spinner=False)
def _lock() -> threading.Lock:
    return threading.Lock()


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------
def folder_stamp(folder: Path | None) -> float:
    """Newest modification time of a model folder's config and weights (0 when unreadable)."""
    if folder is None:
        return 0.0
    try:
        files = [folder / "config.json", *folder.glob("*.safetensors")]
        return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)
    except OSError:
        return 0.0


def resolve_model(text: str, roots: Sequence[Path] | None, presets: Sequence[str]
                  ) -> tuple[str | None, Path | None, str | None]:
    """``(what ReportModel.load gets, the folder when known, an error message or None)``.

    Empty or ``embedded-report`` -> the embedded model (None); a preset name of
    ``report_models:`` -> that name; anything else must be a folder under the folders this app
    may read (the same rule as every other path the page takes; ``roots`` None: the app's own,
    looked up only for a path)."""
    from synthex.models.registry import embedded_report_dir

    text = (text or "").strip()
    if not text or text == EMBEDDED:
        return None, embedded_report_dir(), None
    if text in presets:
        return text, None, None
    roots = state.allowed_roots() if roots is None else roots
    path = state.allowed_path(text, roots, must_exist=False)
    if path is None:
        return None, None, state.not_allowed("Report model", text, roots)
    return str(path), path, None


def load_error_message(model: str, exc: BaseException) -> str:
    """The message shown when the report model cannot be loaded."""
    shown = (model or "").strip() or EMBEDDED
    return f"Could not load the report model {shown!r}: {state.short_error(exc)}"


def session_images(session: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """``(label, PNG bytes)`` of the images generated in this session, newest results first,
    then the history; the same image once."""
    out: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()

    def add(label: str, png: Any) -> None:
        if isinstance(png, (bytes, bytearray)) and png and bytes(png) not in seen:
            seen.add(bytes(png))
            out.append((label, bytes(png)))

    for key, where in RESULT_KEYS:
        for item in session.get(key) or []:
            if isinstance(item, Mapping):
                add(f"{where} · seed {item.get('seed')} · {_short(item.get('prompt', ''))}", item.get("png"))
    for record in session.get("history") or []:
        add(f"History · {_short(getattr(record, 'label', ''), 60)} · {_short(getattr(record, 'prompt', ''))}",
            getattr(record, "png", None))
    return out


def _short(text: Any, limit: int = 50) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def read_image(data: bytes, name: str) -> tuple[Any, str | None]:
    """``(PIL image or None, message)`` for an uploaded or generated image's bytes."""
    from synthex.errors import ImageReadError
    from synthex.io import open_image

    if not data:
        return None, f"{name} is empty; upload a PNG or JPEG."
    try:
        return open_image(bytes(data), name=name), None
    except ImageReadError as exc:
        return None, f"{name} is not an image this app can read ({exc.reason}); upload a PNG or JPEG."


def report_txt(report: Any, model: str = "", image: str = "") -> bytes:
    """The .txt download: the one-line form, the sections, where it came from and the note that
    it is synthetic."""
    head = [f"{k}: {v}" for k, v in (("Model", model), ("Image", image)) if v]
    parts = [report.line(), report.sections(), "\n".join(head + [f"Note: {SYNTHETIC_CAPTION}."])]
    return ("\n\n".join(parts) + "\n").encode("utf-8")


def report_json(report: Any, model: str = "", image: str = "", case: str | None = None) -> bytes:
    """The .json download: ``report.to_dict()`` (``synthetic: true``) plus model, image and case."""
    data = dict(report.to_dict())
    data.update({k: v for k, v in (("model", model), ("image", image), ("case", case)) if v})
    data["synthetic"] = True
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def download_stem(image: str) -> str:
    """``chest.png`` -> ``chest_report`` (the names of the two downloads)."""
    stem = Path(image or "image").stem or "image"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) + "_report"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _model_input() -> tuple[str, str | None, Path | None, bool]:
    """(the text typed, what ReportModel.load gets, the folder, whether it may be used)."""
    from synthex.models.registry import report_presets

    try:
        presets = sorted(report_presets())
    except SynthexError:
        presets = [EMBEDDED]
    text = st.text_input("Report model", value=EMBEDDED, key="report_model",
                         help=f"A preset ({', '.join(presets)}), or a folder: RUN/model of a "
                              "'synthex train report' run, or a transformers Idefics3/SmolVLM folder.")
    source, folder, problem = resolve_model(text, None, presets)
    if problem:
        st.error(problem)
        return text, None, None, False
    return text, source, folder, True


def _image_input() -> tuple[Any, bytes | None, str]:
    """(PIL image or None, its bytes, its name)."""
    generated = session_images(st.session_state)
    kind = st.radio("Image", SOURCES, horizontal=True, key="report_source")
    if kind == SOURCES[0]:
        upload = st.file_uploader("A chest X-ray (PNG or JPEG)", type=IMAGE_TYPES, key="report_upload")
        if upload is None:
            return None, None, ""
        data, name = upload.getvalue(), upload.name
    else:
        if not generated:
            st.caption("No image generated in this session yet: generate one in the Generate tab, or upload one.")
            return None, None, ""
        labels = [label for label, _ in generated]
        index = st.selectbox("Generated image", range(len(labels)), format_func=labels.__getitem__,
                             key="report_pick")
        index = index if index is not None and index < len(generated) else 0
        data, name = generated[index][1], "generated.png"
    image, problem = read_image(data, name)
    if problem:
        st.error(problem)
        return None, None, name
    return image, data, name


def _write(text: str, source: str | None, folder: Path | None, image: Any, case: str) -> tuple[Any, Any] | None:
    """(model, report), or None after showing why not (the model not loading, or generation)."""
    try:
        with st.spinner("Loading the report model..."):
            model = _load_model(source, folder_stamp(folder))
    except SynthexError as exc:
        st.error(load_error_message(text, exc))
        return None
    try:
        with _lock(), st.spinner("Writing the report..."):
            report = model.generate([image], [case.strip() or None])[0]
    except SynthexError as exc:
        st.error(f"Could not write the report: {state.short_error(exc)}")
        return None
    return model, report


def _show(result: Mapping[str, Any]) -> None:
    report, name = result["report"], result["image"]
    left, right = st.columns([1, 2], gap="large")
    left.image(result["png"], caption=name, width="stretch")
    with right:
        st.markdown(f"**Structured report** · {result['model']}")
        st.code(report.sections(), language=None, wrap_lines=True)
        st.markdown("**One-line form**")
        st.code(report.line(), language=None, wrap_lines=True)
        if not report.parsed:
            st.warning("The model's answer did not hold the four fields (labels, gender, age, caption); "
                       "the report above is read from it as well as possible.")
            with st.expander("The model's raw answer"):
                st.text(report.raw or "(empty)")
        st.caption(SYNTHETIC_CAPTION)
        stem = download_stem(name)
        cols = st.columns(2)
        cols[0].download_button("Download report (.txt)", data=report_txt(report, result["model"], name),
                                file_name=f"{stem}.txt", mime="text/plain", key="report_dl_txt", on_click="ignore")
        cols[1].download_button("Download report (.json)",
                                data=report_json(report, result["model"], name, result.get("case")),
                                file_name=f"{stem}.json", mime="application/json", key="report_dl_json",
                                on_click="ignore")


def report_tab() -> None:
    """The tab body."""
    st.caption("A structured radiology report (image labels, gender, age, findings, impression) written "
               "by a report model for a chest X-ray; every report is synthetic text for research, not diagnosis.")
    text, source, folder, usable = _model_input()
    image, data, name = _image_input()
    case = st.text_area("Clinical case (optional)", key="report_case", height=90,
                        placeholder="e.g. 65-year-old woman with shortness of breath",
                        help="The model reads the first 500 characters; gender and age in the report "
                             "come only from this text (else Unknown).")
    if st.button("Write report", key="report_go", type="primary", disabled=not usable or image is None,
                 help=None if image is not None else "Upload or pick an image first."):
        written = _write(text, source, folder, image, case)
        if written is None:
            st.session_state.pop("report_result", None)
            return
        model, report = written
        st.session_state["report_result"] = {"report": report, "png": data, "image": name,
                                             "model": str(getattr(model, "name", "") or text),
                                             "case": case.strip() or None}
    result = st.session_state.get("report_result")
    if result:
        _show(result)
