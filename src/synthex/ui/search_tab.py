"""The web app's Search tab: build or open an index, query it by text or by an uploaded image,
and look at the top k with their scores, labels and reports. Library calls only
(:mod:`synthex.search`); no model logic here."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import streamlit as st

from synthex.errors import SynthexError
from synthex.ui import state


@st.cache_resource(show_spinner=False, max_entries=2)
def _open_index(folder: str, stamp: float) -> Any:
    from synthex.search.index import SearchIndex

    return SearchIndex(folder)


@st.cache_resource(show_spinner=False, max_entries=2)
def _open_model(folder: str | None) -> Any:
    from synthex.search.model import load_search_model

    return load_search_model(folder or None)


def _index_stamp(folder: str) -> float:
    meta = Path(folder) / "index.json"
    return meta.stat().st_mtime if meta.is_file() else 0.0


def _build_section(folder: str) -> None:
    with st.expander("Build or update an index"):
        source = st.text_input("Folder of images to index", key="search_source",
                               help="An imagefolder (metadata.csv), a phantom / IU X-ray set, a generated set "
                                    "or any folder of PNG/JPEG files. A re-run embeds only new or changed files.")
        if st.button("Index this folder", key="search_build", disabled=not source.strip()):
            from synthex.search.index import build_index

            roots = state.allowed_roots()
            if state.allowed_path(source, roots) is None:
                st.error(state.not_allowed("Folder", source, roots))
                return

            bar = st.progress(0.0, text="embedding images...")
            try:
                report = build_index(source.strip(), folder, _open_model(None), progress=False,
                                     callback=lambda done, total: bar.progress(done / max(total, 1),
                                                                               text=f"embedding {done}/{total}"))
            except SynthexError as exc:
                st.error(state.short_error(exc))
                return
            bar.progress(1.0, text="done")
            st.success(f"{report.n_items} images indexed ({report.n_new} new, {report.n_changed} changed, "
                       f"{report.n_reused} reused, {report.n_removed} removed) in {report.seconds:.1f} s")
            if report.rejects:
                st.warning(f"{len(report.rejects)} file(s) not indexed, e.g. {report.rejects[0]['file']}: "
                           f"{report.rejects[0]['reason']} (all listed in index.json)")


def _query_inputs() -> tuple[str | None, Any, str, int]:
    kind = st.radio("Search with", ["Text", "Image"], horizontal=True, key="search_kind")
    text, image = None, None
    if kind == "Text":
        text = st.text_input("What to look for", key="search_text",
                             placeholder="e.g. small left pleural effusion; blunting of the right costophrenic angle")
    else:
        upload = st.file_uploader("A chest X-ray to find similar ones", key="search_upload",
                                  type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"])
        if upload is not None:
            image = _upload_array(upload.getvalue(), upload.name)
    left, right = st.columns(2)
    mode = left.radio("Return", ["images", "reports"], horizontal=True, key="search_mode")
    k = right.slider("How many (k)", 1, 50, 10, key="search_k")
    return text, image, mode, k


def _upload_array(data: bytes, name: str) -> Any:
    import io

    import numpy as np

    from synthex.errors import ImageReadError
    from synthex.io import open_image

    try:
        with open_image(data, name=name) as img:
            return np.asarray(img.convert("L"))
    except ImageReadError as exc:
        st.error(f"{name} is not an image this app can read ({exc.reason}); upload a PNG or JPEG")
        return None


def _show_hits(result: Any) -> None:
    if not result.hits:
        st.info("No results: the index is empty, or holds no reports for 'reports'.")
        return
    cols = st.columns(5)
    for j, hit in enumerate(result.hits):
        with cols[j % 5]:
            if Path(hit.path).is_file():
                st.image(hit.path, width="stretch")
            else:
                st.caption(f"(file missing: {hit.key})")
            st.markdown(f"**#{hit.rank}** · {hit.score:.3f}<br><small>{html.escape(hit.labels or '-')}</small>",
                        unsafe_allow_html=True)
            with st.expander("report"):
                st.write(hit.report or "(no report)")
                st.caption(hit.key)
            if Path(hit.path).is_file() and st.button("Open in PNG info", key=f"search_open_{j}"):
                st.session_state["info_external"] = (Path(hit.path).read_bytes(), Path(hit.path).name)
                st.info("Open the PNG info tab to see this file.")


def search_tab() -> None:
    """The tab body."""
    folder = st.text_input("Index folder", value=os.environ.get("SYNTHEX_SEARCH_INDEX", "runs/search-index"),
                           key="search_index", help="Made by 'synthex search index DIR --out INDEX' or below.")
    roots = state.allowed_roots()
    if state.allowed_path(folder, roots, must_exist=False) is None:
        st.error(state.not_allowed("Index folder", folder, roots))
        return
    _build_section(folder)
    if not (Path(folder) / "index.json").is_file():
        st.caption(f"No index at {folder!r} yet: build one above or with 'synthex search index DIR --out {folder}'.")
        return
    try:
        index = _open_index(folder, _index_stamp(folder))
        model = _open_model(index.meta.get("model_dir"))
    except SynthexError as exc:
        st.error(state.short_error(exc))
        return
    st.caption(f"{len(index)} images from {index.source} · {int(index.has_text.sum())} reports · "
               f"model {index.model_id}")
    text, image, mode, k = _query_inputs()
    if st.button("Search", key="search_go", type="primary", disabled=not ((text or "").strip() or image is not None)):
        from synthex.search.query import search

        try:
            st.session_state["search_result"] = search(index, model, text if image is None else None, image,
                                                       k=k, mode=mode)
        except SynthexError as exc:
            st.session_state.pop("search_result", None)
            st.error(state.short_error(exc))
            return
    result = st.session_state.get("search_result")
    if result is not None and result.index_dir == str(index.folder):
        st.markdown(f"**{result.mode}** for *{html.escape(result.query)}*")
        _show_hits(result)
