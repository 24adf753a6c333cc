"""The web app's Report tab (synthex/ui/report_tab.py): its pure helpers, and the tab driven with
AppTest on a tiny randomly initialised Idefics3 report model saved here (the embedded report model
may not be shipped yet)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("streamlit", reason="the web app needs streamlit: pip install 'synthex[ui]'")

from PIL import Image  # noqa: E402

from synthex.errors import SynthexError  # noqa: E402
from synthex.report.format import StructuredReport, parse_report  # noqa: E402
from synthex.ui import state  # noqa: E402
from synthex.ui.report_tab import (EMBEDDED, SYNTHETIC_CAPTION, download_stem, load_error_message,  # noqa: E402
                                   read_image, report_json, report_txt, resolve_model, session_images)
from tests.helpers_tiny import one_thread  # noqa: E402,F401 - an autouse fixture
from tests.test_ui_apptest import app, errors, spy  # noqa: E402,F401

TEXTS = ["Image Labels: [thorax, radiology, chest x-ray, cardiomegaly] | Gender: Unknown | Age: Unknown | "
         "Image Caption: Findings: The heart is enlarged. The lungs are clear. Impression: Cardiomegaly.",
         "Image Labels: [thorax, radiology, chest x-ray, normal] | Gender: Unknown | Age: Unknown | "
         "Image Caption: Findings: No effusion or pneumothorax. Impression: No acute disease."] * 10


@pytest.fixture(scope="module")
def report_model(tmp_path_factory) -> Path:
    import torch

    from synthex.report.model import ReportArch, build_model, build_processor, build_tokenizer

    torch.manual_seed(0)
    arch = ReportArch(image_size=32, patch_size=8, vision_hidden=16, vision_layers=1, vision_heads=2,
                      text_hidden=32, text_layers=1, text_heads=2, intermediate=64, vocab_size=300)
    tok = build_tokenizer(TEXTS, arch.vocab_size)
    folder = tmp_path_factory.mktemp("report_ui") / "model"
    build_model(arch, tok).save_pretrained(folder)
    build_processor(tok, arch).save_pretrained(folder)
    return folder


def png(value: int = 128, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_report() -> StructuredReport:
    return parse_report(TEXTS[0], "A 65-year-old woman with dyspnoea.")


# --------------------------------------------------------------------------------------------
def test_download_payloads_hold_both_forms_and_the_synthetic_flag():
    report = sample_report()
    txt = report_txt(report, "tiny", "chest.png").decode("utf-8")
    assert txt.startswith(report.line()) and report.sections() in txt
    assert "IMPRESSION: Cardiomegaly." in txt and "Model: tiny" in txt and SYNTHETIC_CAPTION in txt
    data = json.loads(report_json(report, "tiny", "chest.png", "A 65-year-old woman."))
    assert data["synthetic"] is True and data["report"] == report.line() and data["model"] == "tiny"
    assert data["gender"] == "Female" and data["age"] == "65" and data["case"] == "A 65-year-old woman."
    assert "cardiomegaly" in [label.lower() for label in data["labels"]]
    assert "case" not in json.loads(report_json(report))  # no case given: not written
    assert download_stem("my chest.png") == "my_chest_report" and download_stem("") == "image_report"


def test_model_choice_and_load_error_messages(tmp_path, monkeypatch):
    import synthex.models.registry as registry
    from synthex.report.model import ReportModel

    roots = [tmp_path.resolve()]
    source, folder, problem = resolve_model("", roots, [EMBEDDED, "smolvlm-instruct"])
    assert source is None and folder == registry.embedded_report_dir() and problem is None
    assert resolve_model(EMBEDDED, roots, [EMBEDDED])[0] is None
    assert resolve_model("smolvlm-instruct", roots, [EMBEDDED, "smolvlm-instruct"]) == ("smolvlm-instruct", None, None)
    assert resolve_model(str(tmp_path), roots, [])[:2] == (str(tmp_path.resolve()), tmp_path.resolve())
    source, folder, problem = resolve_model("/etc", roots, [])
    assert source is None and "was not found in the folders this app may read" in problem

    # the embedded model not shipped: a SynthexError with a clear message, shown by the tab
    monkeypatch.setattr(registry, "embedded_report_dir", lambda: tmp_path / "report")
    with pytest.raises(SynthexError) as caught:
        ReportModel.load(None)
    message = load_error_message("", caught.value)
    assert message.startswith(f"Could not load the report model {EMBEDDED!r}:")
    assert "not a report model folder" in message


def test_session_images_and_unreadable_images():
    a, b = png(10), png(200)
    session = {"results": [{"png": a, "seed": 7, "prompt": "Chest x-ray. Cardiomegaly."}],
               "inpaint_results": [{"png": b, "seed": 8, "prompt": "Chest x-ray."}],
               "history": [SimpleNamespace(png=a, label="12:00 · seed 7", prompt="same image")]}
    images = session_images(session)
    assert [data for _, data in images] == [a, b]  # the history's copy of a is not repeated
    assert images[0][0].startswith("Generate · seed 7") and images[1][0].startswith("Inpaint · seed 8")
    assert session_images({}) == []
    image, problem = read_image(a, "x.png")
    assert problem is None and image.size == (40, 40)
    assert read_image(b"not a png", "bad.png")[0] is None and "bad.png" in read_image(b"nope", "bad.png")[1]
    assert "is empty" in read_image(b"", "empty.png")[1]


def test_tiny_model_report_round_trip(report_model):
    from synthex.report.model import ReportModel

    model = ReportModel.load(str(report_model))
    report = model.generate([Image.open(io.BytesIO(png()))], ["A 40-year-old man."], max_new_tokens=8)[0]
    assert report.gender == "Male" and report.age == "40"  # from the case, never the model
    assert json.loads(report_json(report, model.name))["synthetic"] is True
    assert report.line() in report_txt(report).decode("utf-8")


def test_report_tab_writes_a_report_for_a_generated_image(spy, report_model, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv(state.ROOTS_ENV, os.pathsep.join((str(tmp_path), str(report_model.parent))))
    at = app()
    assert [tab.label for tab in at.tabs][-1] == "Report"
    assert at.text_input(key="report_model").value == EMBEDDED
    assert at.button(key="report_go").disabled  # no image yet
    at.session_state["results"] = [{"png": png(90), "seed": 42, "prompt": "Chest x-ray. Normal.",
                                    "name": "synthetic_xray_0042.png"}]
    at.radio(key="report_source").set_value("Generated in this session").run()
    at.text_input(key="report_model").input(str(tmp_path))  # not a report model folder
    at.run()
    assert not at.button(key="report_go").disabled
    at.button(key="report_go").click().run()
    assert not at.exception and "Could not load the report model" in errors(at)
    assert "report_result" not in at.session_state

    at.text_input(key="report_model").input(str(report_model))
    at.text_area(key="report_case").input("A 70-year-old woman with cough.")
    at.button(key="report_go").click().run()
    assert not at.exception and errors(at) == ""
    result = at.session_state["report_result"]
    assert result["report"].gender == "Female" and result["report"].age == "70"
    assert SYNTHETIC_CAPTION in [c.value for c in at.caption]
    codes = [c.value for c in at.code]
    assert result["report"].sections() in codes and result["report"].line() in codes
    assert {b.key for b in at.get("download_button")} >= {"report_dl_txt", "report_dl_json"}

    at.text_input(key="report_model").input("/etc")
    at.run()
    assert not at.exception and "was not found in the folders this app may read" in errors(at)
    assert at.button(key="report_go").disabled
