"""The web app's img2img and Inpaint tabs: an uploaded init image, a denoising strength and, for
inpainting, a mask that is a rectangle, an uploaded mask image (white = repaint) or painted in
the page (with the optional ``streamlit-drawable-canvas``: ``pip install 'synthex[paint]'``).

The page's own pieces (the sidebar's controls, the engine runner, the gallery) are passed in by
:mod:`synthex.ui.app`, so this module holds no engine logic; the request is the same
``GenerationRequest`` the CLI's ``--init-image`` / ``--mask`` build.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable

import numpy as np
import streamlit as st
from PIL import Image

from synthex.ui import state

MASK_SOURCES = ("Rectangle", "Upload a mask", "Paint")


def read_upload(upload: Any, what: str) -> Image.Image | None:
    """The uploaded file as a PIL image, or None with one message naming the file."""
    if upload is None:
        return None
    data = upload.getvalue()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # noqa: BLE001 - any undecodable upload is one message
        st.error(f"{what} {upload.name!r} is not an image PIL can read ({type(exc).__name__}); "
                 "upload a PNG or JPEG.")
        return None
    return image


def rect_mask_input(key: str, size: tuple[int, int]) -> Image.Image:
    """Four number inputs (pixels of the init image) -> an L-mode rectangle mask."""
    from synthex.generate.masks import rect_mask

    w, h = size
    cols = st.columns(4)
    box = (cols[0].number_input("x0", 0, w - 1, w // 8, key=f"{key}x0"),
           cols[1].number_input("y0", 0, h - 1, h // 2, key=f"{key}y0"),
           cols[2].number_input("x1", 1, w, w // 2, key=f"{key}x1"),
           cols[3].number_input("y1", 1, h, (7 * h) // 8, key=f"{key}y1"))
    return rect_mask(size, tuple(int(v) for v in box))


def painted_mask(key: str, init: Image.Image) -> Image.Image | None:
    """A mask painted over the init image (white strokes = repaint), or None with a hint."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception:  # noqa: BLE001 - optional component
        st.info("Painting a mask needs streamlit-drawable-canvas: pip install 'synthex[paint]'. "
                "Use a rectangle or upload a mask meanwhile.")
        return None
    scale = max(1, 384 // max(init.size))
    width, height = init.size[0] * scale, init.size[1] * scale
    brush = st.slider("Brush", 2, 60, 20, key=f"{key}brush")
    canvas = st_canvas(fill_color="rgba(255,255,255,1)", stroke_width=brush, stroke_color="#ffffff",
                       background_image=init.convert("RGB").resize((width, height)), drawing_mode="freedraw",
                       width=width, height=height, key=f"{key}canvas")
    if canvas is None or canvas.image_data is None:
        return None
    alpha = np.asarray(canvas.image_data)[..., 3] > 0
    if not alpha.any():
        return None
    return Image.fromarray(alpha.astype(np.uint8) * 255).resize(init.size, Image.NEAREST)


def mask_inputs(key: str, init: Image.Image | None) -> tuple[Image.Image | None, dict[str, Any]]:
    """The inpaint controls: mask source, blur, only-masked padding and invert."""
    from synthex.generate.defaults import DEFAULT_MASK_BLUR

    source = st.radio("Mask", MASK_SOURCES, horizontal=True, key=f"{key}source")
    mask = None
    if source == "Upload a mask":
        mask = read_upload(st.file_uploader("Mask image (white = repaint)", key=f"{key}mask"), "Mask")
    elif init is not None:
        mask = rect_mask_input(key, init.size) if source == "Rectangle" else painted_mask(key, init)
    options = {"mask_blur": int(st.slider("Mask blur", 0, 32, DEFAULT_MASK_BLUR, key=f"{key}blur")),
               "invert_mask": bool(st.checkbox("Inpaint not masked (invert the mask)", key=f"{key}invert"))}
    if st.checkbox("Only masked (inpaint a crop around the mask at full resolution)", key=f"{key}only"):
        options["mask_padding"] = int(st.number_input("Masked area padding (px)", 0, 256, 32, key=f"{key}pad"))
    return mask, options


def edit_tab(mode: str, params: dict[str, Any], loaded: bool, make_controls: Callable[..., Any],
             run_engine: Callable[..., Any], show_gallery: Callable[..., None]) -> None:
    """One tab: ``mode`` is ``"img2img"`` or ``"inpaint"``."""
    from synthex.generate.defaults import DEFAULT_STRENGTH

    key = f"{mode}_"
    inputs, output = st.columns([1, 1], gap="large")
    with inputs:
        init = read_upload(st.file_uploader("Init image (PNG or JPEG)", key=f"{key}init"), "Init image")
        prompt = st.text_area("Prompt", key=f"{key}prompt", height=100,
                              placeholder="Chest x-ray. Right pleural effusion.")
        negative = st.text_input("Negative prompt", key=f"{key}negative")
        strength = st.slider("Denoising strength", 0.05, 1.0, DEFAULT_STRENGTH, 0.05, key=f"{key}strength",
                             help="0 keeps the init image, 1 repaints it from noise (A1111's meaning).")
        mask, options = mask_inputs(key, init) if mode == "inpaint" else (None, {})
        st.caption("The output has the init image's size (a multiple of 8 for the embedded model).")
        clicked = st.button("Generate", type="primary", key=f"{key}go", disabled=not loaded or init is None,
                            help=None if loaded else "Load a model first (sidebar).")
    with output:
        if init is not None:
            shown = [init.convert("L")] + ([mask.convert("L")] if mask is not None else [])
            st.image(shown, caption=["init image", "mask (white = repaint)"][:len(shown)], width=180)
        if clicked:
            _run(key, make_controls(params, prompt, negative), init, mask, strength, options, run_engine)
        if st.session_state.get(f"{key}results"):
            show_gallery(st.session_state[f"{key}results"], key.rstrip("_"))


def _run(key: str, controls: Any, init: Image.Image, mask: Image.Image | None, strength: float,
         options: dict[str, Any], run_engine: Callable[..., Any]) -> None:
    from synthex.generate.engine import RequestError

    if key.startswith("inpaint") and mask is None:
        st.error("No mask yet: draw a rectangle, upload a mask or paint one (white = repaint).")
        return
    request, problems = state.build_request(dataclasses.replace(controls, size=state.NATIVE_SIZE))
    if request is not None:
        request = dataclasses.replace(request, init_image=init, strength=float(strength), mask=mask,
                                      width=None, height=None, **options)
        try:
            request.validate()
        except RequestError as exc:
            request, problems = None, list(exc.problems)
    for problem in problems:
        st.error(problem)
    if request is None:
        return
    result = run_engine(request, "Inpainting..." if mask is not None else "img2img...")
    if result is not None:
        st.session_state[f"{key}results"] = [
            {"png": state.png_bytes(image, p), "seed": seed, "prompt": p.prompt, "name": state.download_name(seed)}
            for image, seed, p in zip(result.images, result.seeds, result.parameters)]
