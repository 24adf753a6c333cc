"""The Streamlit page (synthex/ui/app.py) driven with streamlit.testing.v1.AppTest.

A spy engine records every request so each control can be checked where it reaches the engine;
one test runs the real engine on a tiny model folder.
"""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("streamlit", reason="the web app needs streamlit: pip install 'synthex[ui]'")

from PIL import Image  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from synthex.errors import OutOfMemoryError, SynthexError  # noqa: E402
from synthex.generate.engine import GenerationResult, resolve_seeds  # noqa: E402
from synthex.generate.infotext import GenerationParameters  # noqa: E402
from synthex.models.registry import LoraError, ModelRegistry  # noqa: E402
from synthex.ui import APP_PATH, state  # noqa: E402
from tests.helpers_tiny import make_lora, one_thread, tiny_model_dir  # noqa: E402,F401

TIMEOUT = 60


class SpyEngine:
    """Records loads, unloads and requests; makes flat images with the engine's parameters."""

    def __init__(self) -> None:
        self.loaded = None
        self.loads: list[tuple[str, list]] = []
        self.requests: list = []
        self.events: list[str] = []
        self.registry = ModelRegistry()

    def load(self, model, loras=(), device=None, dtype=None):
        self.events.append("load")
        self.loads.append((str(model), list(loras)))
        if not Path(str(model)).is_dir():
            self.registry.locate(self.registry.resolve(model))  # a missing preset raises here
        self.loaded = SimpleNamespace(spec=SimpleNamespace(name=Path(str(model)).name))
        for path, _ in loras:
            if "notalora" in str(path):
                raise LoraError(f"{path} is not a LoRA adapter: none of its tensors is a LoRA weight")
        return self.loaded

    def unload(self) -> None:
        self.events.append("unload")
        self.loaded = None

    def generate(self, request, callback=None):
        request.validate()
        self.requests.append(request)
        if "OOM" in request.prompt:
            raise OutOfMemoryError("Out of GPU memory generating 1024x1024 with model 'x', even with "
                               "VAE tiling and model CPU offload.")
        for step in range(1, request.steps + 1):
            if callback:
                callback(step, request.steps, None)
        seeds, drawn = resolve_seeds(request.seed, request.n)
        size = (request.width or 64, request.height or 64)
        images = [Image.new("L", size, (40 * k + len(request.prompt)) % 256) for k in range(request.n)]
        params = [GenerationParameters(
            prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
            sampler="DPM++ 2M", schedule_type="Karras", cfg_scale=request.guidance, seed=seed,
            width=size[0], height=size[1], model=self.loaded.spec.name) for seed in seeds]
        return GenerationResult(images, seeds, params, {}, drawn)


@pytest.fixture()
def spy(monkeypatch, tmp_path):
    import streamlit as st

    model = tmp_path / "tiny-model"
    model.mkdir()
    engine = SpyEngine()
    monkeypatch.setattr(state, "make_engine", lambda: engine)
    monkeypatch.setenv(state.MODEL_ENV, str(model))
    monkeypatch.setenv(state.ROOTS_ENV, str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield engine
    st.cache_resource.clear()
    st.cache_data.clear()


def app() -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def loaded_app() -> AppTest:
    at = app()
    at.button(key="load").click().run()
    assert not at.exception
    return at


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


# --------------------------------------------------------------------------------------------
def test_defaults_banner_and_generate_disabled(spy):
    at = app()
    assert any("Synthetic images for research, not diagnosis" in m.value for m in at.markdown)
    assert at.button(key="generate").disabled and at.button(key="compare").disabled
    steps, guidance = at.slider(key="steps"), at.slider(key="guidance")
    strength = at.slider(key="lora_strength")
    assert (steps.min, steps.max, steps.value) == (10, 50, 30)
    assert (guidance.min, guidance.max, guidance.value, guidance.step) == (1.0, 15.0, 7.5, 0.1)
    assert (strength.min, strength.max, strength.value, strength.step) == (0.0, 1.0, 0.8, 0.1)
    assert at.text_input(key="seed").value == "42"
    options = at.selectbox(key="model_choice").options
    assert options[0].endswith("tiny-model") and "sdxl-base" in options and options[-1] == state.CUSTOM_MODEL
    assert at.text_area(key="prompt").value == state.templates()["Normal (Healthy)"]


def test_load_frees_the_previous_model_first_and_shows_the_badge(spy):
    at = loaded_app()
    assert spy.events == ["unload", "load"]
    assert not at.button(key="generate").disabled
    assert any("Active model: tiny-model" in m.value for m in at.sidebar.markdown)
    at.button(key="load").click().run()
    assert spy.events == ["unload", "load", "unload", "load"]


def test_every_control_reaches_the_engine_request(spy):
    at = loaded_app()
    at.text_area(key="prompt").set_value("Cardiomegaly")
    at.text_area(key="negative").set_value("blurry")
    at.slider(key="steps").set_value(12)
    at.slider(key="guidance").set_value(3.5)
    at.text_input(key="seed").input("9")
    at.selectbox(key="sampler").select("Euler")
    at.selectbox(key="schedule_type").select("karras")
    at.selectbox(key="size").select("128x128")
    at.number_input(key="n").set_value(3)
    at.button(key="generate").click().run()
    assert not at.exception and errors(at) == ""
    request = spy.requests[-1]
    assert request.prompt == "Cardiomegaly. Chest x-ray." and request.negative_prompt == "blurry"
    assert (request.steps, request.guidance, request.seed, request.sampler) == (12, 3.5, 9, "Euler")
    assert request.schedule_type == "karras"
    assert (request.width, request.height, request.n) == (128, 128, 3)
    assert request.model.endswith("tiny-model") and list(request.loras) == []
    # gallery: 3 images with their seeds, a download each, "reuse this seed"
    captions = [c for image in at.image for c in image.captions if "(seed " in c]
    assert sorted(int(c.rsplit("(seed ", 1)[1].rstrip(")")) for c in captions) == [9, 10, 11]
    downloads = [b for b in at.get("download_button") if b.key.startswith("gen_dl")]
    assert len(downloads) == 3
    png = at.session_state["results"][1]["png"]
    assert b"Synthetic" in png and b"Seed: 10" in png
    assert len(at.session_state["history"]) == 3
    at.button(key="gen_reuse_2").click().run()
    assert at.text_input(key="seed").value == "11"


def test_empty_seed_is_random_and_reported(spy):
    at = loaded_app()
    at.text_input(key="seed").input("")
    at.button(key="generate").click().run()
    assert spy.requests[-1].seed is None
    assert at.session_state["results"][0]["seed"] >= 0


def test_templates_and_structured_builder_fill_the_prompt(spy):
    at = app()
    at.selectbox(key="template").select("Cardiomegaly").run()
    assert at.text_area(key="prompt").value == state.templates()["Cardiomegaly"]
    at.multiselect(key="sb_findings").select("Pleural effusion")
    at.selectbox(key="sb_side").select("left")
    at.selectbox(key="sb_severity").select("moderate")
    at.button(key="sb_use").click().run()
    assert at.text_area(key="prompt").value == (
        "Chest x-ray. Pleural Effusion left. Moderate left pleural effusion.")


def test_lora_adapters_with_separate_strengths(spy, tmp_path):
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for f in files:
        f.write_bytes(b"x")
    at = app()
    at.number_input(key="n_loras").set_value(2).run()
    at.text_input(key="lora_path_0").input(str(files[0]))
    at.slider(key="lora_scale_0").set_value(0.3)
    at.text_input(key="lora_path_1").input(str(files[1]))
    at.slider(key="lora_scale_1").set_value(1.0)
    at.button(key="load").click().run()
    assert spy.loads[-1][1] == [(str(files[0]), 0.3), (str(files[1]), 1.0)]
    at.slider(key="lora_scale_0").set_value(0.6)
    at.button(key="generate").click().run()
    assert list(spy.requests[-1].loras) == [(str(files[0]), 0.6), (str(files[1]), 1.0)]


# --------------------------------------------------------------------------------------------
# Bad input: a message in the page, and the app keeps working
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, seed, needle", [
    ("", "42", "Prompt is empty"),
    ("x" * 10_000, "42", "10,000 characters"),
    ("Cardiomegaly.", "forty-two", "Invalid seed"),
])
def test_bad_generation_input_is_reported_and_the_app_recovers(spy, prompt, seed, needle):
    at = loaded_app()
    at.text_area(key="prompt").set_value(prompt)
    at.text_input(key="seed").input(seed)
    at.button(key="generate").click().run()
    assert not at.exception and needle in errors(at) and spy.requests == []
    at.text_area(key="prompt").set_value("Cardiomegaly.")
    at.text_input(key="seed").input("42")
    at.button(key="generate").click().run()
    assert errors(at) == "" and len(spy.requests) == 1


def test_custom_path_that_does_not_exist(spy, tmp_path):
    at = app()
    at.selectbox(key="model_choice").select(state.CUSTOM_MODEL).run()
    at.text_input(key="custom_path").input(str(tmp_path / "nowhere"))
    at.button(key="load").click().run()
    assert not at.exception and "was not found in the folders this app may read" in errors(at) and spy.loads == []
    assert at.button(key="generate").disabled
    at.text_input(key="custom_path").input(str(tmp_path))
    at.button(key="load").click().run()
    assert errors(at) == "" and not at.button(key="generate").disabled


def test_paths_outside_the_allowed_folders_read_like_missing_ones(spy, tmp_path, tmp_path_factory):
    """Issue 13 item 3: a remote user could load any server model and probe which files exist."""
    elsewhere = tmp_path_factory.mktemp("server")
    (elsewhere / "model_index.json").write_text("{}")
    secret = elsewhere / "secret.safetensors"
    secret.write_bytes(b"x")
    (tmp_path / "escape").symlink_to(elsewhere)  # a symlink inside the allowed folder does not help
    at = app()
    at.selectbox(key="model_choice").select(state.CUSTOM_MODEL).run()
    shown = []
    for path in (elsewhere, elsewhere / "nothing-here", tmp_path / "escape", "/etc"):
        at.text_input(key="custom_path").input(str(path))
        at.button(key="load").click().run()
        shown.append(errors(at).replace(str(path), "PATH"))
    assert spy.loads == [] and len(set(shown)) == 1 and "--allow-root" in shown[0]
    at.number_input(key="n_loras").set_value(1).run()
    box = at.selectbox(key="model_choice")
    box.select(box.options[0]).run()
    for path in (secret, elsewhere / "missing.safetensors"):
        at.text_input(key="lora_path_0").input(str(path))
        at.button(key="load").click().run()
        assert "was not found in the folders" in errors(at) and spy.loads == []
    at.text_input(key="search_index").input(str(elsewhere)).run()  # the search tab writes and reads indexes
    assert "Index folder" in errors(at) and "was not found in the folders" in errors(at)
    assert not (elsewhere / "index.json").exists()


def test_lora_that_is_not_a_lora_or_missing(spy, tmp_path):
    bad = tmp_path / "notalora.safetensors"
    bad.write_bytes(b"x")
    at = app()
    at.number_input(key="n_loras").set_value(1).run()
    at.text_input(key="lora_path_0").input(str(tmp_path / "missing.safetensors"))
    at.button(key="load").click().run()
    assert "was not found in the folders" in errors(at) and spy.loads == []
    at.text_input(key="lora_path_0").input(str(bad))
    at.button(key="load").click().run()
    warnings = "\n".join(w.value for w in at.warning)
    assert "Base Model OK, LoRA failed" in warnings and "not a LoRA" in warnings
    at.button(key="generate").click().run()  # the base model keeps working, without the LoRA
    assert list(spy.requests[-1].loras) == []


def test_sdxl_preset_without_weights_explains_what_is_missing(spy):
    at = app()
    at.selectbox(key="model_choice").select("sdxl-base").run()
    assert not at.exception
    assert any("Not available on this machine" in w.value for w in at.sidebar.warning)
    at.button(key="load").click().run()
    assert not at.exception and "Missing files" in errors(at)
    assert at.button(key="generate").disabled


def test_out_of_memory_frees_the_model_with_a_message(spy):
    at = loaded_app()
    at.text_area(key="prompt").set_value("OOM please")
    at.button(key="generate").click().run()
    assert not at.exception and "Out of memory" in errors(at)
    assert spy.events[-1] == "unload" and at.button(key="generate").disabled


def test_png_info_tab_reads_regenerates_and_rejects_non_pngs(spy):
    at = loaded_app()
    at.file_uploader(key="upload").set_value(("notes.txt", b"hello", "text/plain")).run()
    assert not at.exception and "notes.txt" in errors(at)
    params = GenerationParameters(prompt="Chest x-ray. Cardiomegaly.", steps=11, sampler="Euler",
                                  cfg_scale=4.0, seed=77, width=64, height=64, model="tiny-model")
    data = state.png_bytes(Image.new("L", (64, 64)), params)
    at.file_uploader(key="upload").set_value(("x.png", data, "image/png")).run()
    assert errors(at) == "" and any("Seed: 77" in c.value for c in at.code)
    at.button(key="regenerate").click().run()
    request = spy.requests[-1]
    assert (request.prompt, request.seed, request.steps, request.sampler, request.guidance) == (
        "Chest x-ray. Cardiomegaly.", 77, 11, "Euler", 4.0)


def test_compare_tab_shows_both_images_and_the_heat_map(spy):
    at = loaded_app()
    at.text_area(key="cmp_a").set_value("Normal.")
    at.text_area(key="cmp_b").set_value("Cardiomegaly.")
    at.text_input(key="seed").input("5")
    at.button(key="compare").click().run()
    assert not at.exception and errors(at) == ""
    shown = at.session_state["compare_result"]
    assert shown["seed"] == 5 and shown["mean"] > 0
    assert [r.seed for r in spy.requests] == [5, 5]
    assert [r.prompt for r in spy.requests] == ["Normal. Chest x-ray.", "Cardiomegaly. Chest x-ray."]
    assert shown["figure"].startswith(b"\x89PNG")
    at.text_area(key="cmp_b").set_value("")
    at.button(key="compare").click().run()
    assert "Prompt B is empty" in errors(at)


# --------------------------------------------------------------------------------------------
def test_real_engine_on_a_tiny_model(monkeypatch):
    """No spy: load a tiny 1-channel model folder and generate through the real engine."""
    import streamlit as st

    from synthex.generate.engine import Engine

    engines: list[Engine] = []
    monkeypatch.setattr(state, "make_engine", lambda: engines.append(Engine()) or engines[-1])
    monkeypatch.setenv(state.MODEL_ENV, str(tiny_model_dir("sd-l")))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = loaded_app()
        assert "Active model: sd-l" in "".join(m.value for m in at.sidebar.markdown)
        pipe = engines[0].loaded.pipe
        at.slider(key="steps").set_value(10)
        at.text_input(key="seed").input("3")
        at.button(key="generate").click().run()
        assert not at.exception and errors(at) == ""
        at.button(key="generate").click().run()  # another rerun: the same engine and pipeline
        assert len(engines) == 1 and engines[0].loaded.pipe is pipe
        item = at.session_state["results"][0]
        assert item["seed"] == 3 and item["name"] == "synthetic_xray_0003.png"
        with Image.open(io.BytesIO(item["png"])) as image:
            assert image.size == (64, 64) and image.text["Synthetic"] == "true"
            assert "Steps: 10" in image.text["parameters"] and image.text["Model"] == "sd-l"
        at.button(key="compare").click().run()  # the real compare_prompts through the page
        assert not at.exception and errors(at) == ""
        shown = at.session_state["compare_result"]
        assert shown["seed"] == 3 and shown["mean"] > 0 and shown["figure"].startswith(b"\x89PNG")
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def test_real_engine_lora_files(monkeypatch, tmp_path):
    """A safetensors file that is not a LoRA is refused with the base model kept; a real LoRA
    loads and its strength reaches the PNG parameters."""
    import streamlit as st
    import torch
    from safetensors.torch import save_file

    not_lora = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(not_lora))
    lora = make_lora(tmp_path / "lora" / "tiny_lora.safetensors", "sd")
    monkeypatch.setenv(state.MODEL_ENV, str(tiny_model_dir("sd-l")))
    monkeypatch.setenv(state.ROOTS_ENV, str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = app()
        at.number_input(key="n_loras").set_value(1).run()
        at.text_input(key="lora_path_0").input(str(not_lora))
        at.button(key="load").click().run()
        warnings = "\n".join(w.value for w in at.warning)
        assert "Base Model OK, LoRA failed" in warnings and "is not a LoRA adapter" in warnings
        assert not at.button(key="generate").disabled
        at.text_input(key="lora_path_0").input(str(lora))
        at.slider(key="lora_scale_0").set_value(0.5)
        at.button(key="load").click().run()
        assert errors(at) == "" and not any("LoRA failed" in w.value for w in at.warning)
        at.slider(key="steps").set_value(10)
        at.button(key="generate").click().run()
        assert not at.exception and errors(at) == ""
        with Image.open(io.BytesIO(at.session_state["results"][0]["png"])) as image:
            assert 'Lora scales: "tiny_lora: 0.5"' in image.text["parameters"]
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def test_interface_language_switch_translates_labels_and_template(spy):
    at = app()
    assert at.tabs[0].label == "Generate"
    at.selectbox(key="ui_lang").select("uk").run()
    assert not at.exception
    labels = [tab.label for tab in at.tabs]
    assert labels[0] == "Генерація" and "Порівняння" in labels and "Домальовування" in labels
    assert at.button(key="load").label == "Завантажити модель"
    # the chosen template follows the language, and its mapping to English is shown
    assert at.text_area(key="prompt").value == state.templates("uk")["Normal (Healthy)"]
    assert any("Прочитано як" in c.value and "Chest x-ray. Normal." in c.value for c in at.caption)
    at.selectbox(key="ui_lang").select("ru").run()
    at.selectbox(key="template").select("Cardiomegaly").run()
    assert at.text_area(key="prompt").value == state.templates("ru")["Cardiomegaly"]
    at.text_area(key="prompt").set_value("Кардиомегалия, абракадабра").run()
    assert any("абракадабра" in w.value for w in at.warning)
    at.button(key="load").click().run()
    at.button(key="generate").click().run()
    assert not at.exception
    assert spy.requests[-1].prompt.startswith("Кардиомегалия, абракадабра")  # the engine maps it


def test_a_failure_inside_a_tab_stays_in_that_tab(spy, monkeypatch):
    """The page's error boundary: no Streamlit traceback for a remote user, the other tabs work."""
    import errno

    def broken():
        raise RuntimeError("boom")

    real = state.allowed_roots
    monkeypatch.setattr(state, "allowed_roots", lambda *a: real(*a) if a else broken())  # the search tab's call
    at = loaded_app()
    assert not at.exception and "tab failed (a bug in synthex" in errors(at) and "boom" in errors(at)
    at.button(key="generate").click().run()
    assert not at.exception and len(spy.requests) == 1

    def full(*a):
        if a:
            return real(*a)
        raise OSError(errno.ENOSPC, "No space left on device", "runs/search-index/index.json")

    monkeypatch.setattr(state, "allowed_roots", full)
    at.run()
    assert not at.exception and "free space" in errors(at) and "a bug" not in errors(at)
