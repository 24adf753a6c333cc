"""The web app's img2img and Inpaint tabs (synthex/ui/edit_tab.py), driven with AppTest and the
spy engine of test_ui_apptest: what the widgets set must reach the engine's request."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("streamlit", reason="the web app needs streamlit: pip install 'synthex[ui]'")

from PIL import Image  # noqa: E402

from tests.test_ui_apptest import errors, loaded_app, spy  # noqa: E402,F401


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


INIT = Image.fromarray((np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8))


def test_img2img_tab_sends_the_init_image_and_strength(spy):
    at = loaded_app()
    at.file_uploader(key="img2img_init").set_value(("x.png", png(INIT), "image/png")).run()
    at.text_area(key="img2img_prompt").set_value("Right pleural effusion.")
    at.slider(key="img2img_strength").set_value(0.4)
    at.text_input(key="seed").input("9")
    at.button(key="img2img_go").click().run()
    assert not at.exception and errors(at) == ""
    request = spy.requests[-1]
    assert request.strength == pytest.approx(0.4) and request.mask is None and request.seed == 9
    assert np.array_equal(np.asarray(request.init_image.convert("L")), np.asarray(INIT))
    assert request.prompt == "Right pleural effusion. Chest x-ray."
    assert at.session_state["img2img_results"][0]["png"].startswith(b"\x89PNG")


def test_inpaint_tab_rectangle_mask_and_options_reach_the_request(spy):
    at = loaded_app()
    at.file_uploader(key="inpaint_init").set_value(("x.png", png(INIT), "image/png")).run()
    at.text_area(key="inpaint_prompt").set_value("Right pleural effusion.")
    for name, value in (("x0", 4), ("y0", 30), ("x1", 28), ("y1", 60)):
        at.number_input(key=f"inpaint_{name}").set_value(value)
    at.slider(key="inpaint_blur").set_value(2)
    at.checkbox(key="inpaint_invert").check()
    at.checkbox(key="inpaint_only").check().run()
    at.number_input(key="inpaint_pad").set_value(8)
    at.button(key="inpaint_go").click().run()
    assert not at.exception and errors(at) == ""
    request = spy.requests[-1]
    mask = np.asarray(request.mask.convert("L")) > 127
    assert mask[30:60, 4:28].all() and mask.sum() == 30 * 24
    assert (request.mask_blur, request.invert_mask, request.mask_padding) == (2, True, 8)


def test_inpaint_tab_bad_inputs_are_messages(spy):
    at = loaded_app()
    at.file_uploader(key="inpaint_init").set_value(("notes.png", b"not an image", "image/png")).run()
    assert "notes.png" in errors(at) and not at.exception
    at.file_uploader(key="inpaint_init").set_value(("x.png", png(INIT), "image/png")).run()
    at.radio(key="inpaint_source").set_value("Upload a mask").run()
    at.text_area(key="inpaint_prompt").set_value("Effusion.")
    at.button(key="inpaint_go").click().run()
    assert "No mask yet" in errors(at) and not spy.requests
    black = Image.new("L", (64, 64), 0)
    at.file_uploader(key="inpaint_mask").set_value(("m.png", png(black), "image/png")).run()
    at.button(key="inpaint_go").click().run()
    assert "selects nothing" in errors(at).lower() or "nothing" in errors(at).lower()
    assert not spy.requests
