"""SynTheX-Ray web app: ``synthex ui`` (or ``streamlit run src/synthex/ui/app.py``).

The page parses widget values (helpers in :mod:`synthex.ui.state`) and calls the generation
engine; it holds no model logic. The engine (one loaded model) is cached across reruns and
sessions with ``st.cache_resource``; a lock serialises its use.
"""
from __future__ import annotations

import contextlib
import html
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from synthex.errors import SynthexError
from synthex.ui import state

log = logging.getLogger("synthex.ui")

CSS = """
<style>
.sx-banner {background:#7a1f1f;color:#fff;padding:0.45rem 0.9rem;border-radius:0.4rem;
            font-weight:600;margin-bottom:0.6rem;}
.sx-badge {display:inline-block;background:#1f4e79;color:#fff;padding:0.15rem 0.6rem;
           border-radius:1rem;font-size:0.85rem;}
.sx-badge.off {background:#777;}
</style>
"""


# --------------------------------------------------------------------------------------------
# Cached resources
# --------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def get_engine() -> Any:
    return state.make_engine()


@st.cache_resource(show_spinner=False)
def get_lock() -> threading.Lock:
    return threading.Lock()


@st.cache_resource(show_spinner=False)
def get_registry() -> Any:
    from synthex.models.registry import ModelRegistry

    return ModelRegistry()


@st.cache_data(ttl=300, show_spinner=False)
def preset_info(name: str) -> tuple[bool, str, str, list[str]]:
    """(available, where or why, explanation when missing, the preset's LoRA names)."""
    registry = get_registry()
    try:
        spec = registry.resolve(name)
        ok, why = registry.available(spec)
    except SynthexError as exc:
        return False, state.short_error(exc), state.short_error(exc), []
    return ok, why, state.describe_missing(ok, why, spec.obtain), state.lora_names(spec)


def init_state() -> None:
    defaults = {
        "active": None, "load_status": None, "results": [], "history": [], "compare_result": None,
        "prompt": state.templates().get("Normal (Healthy)", ""), "negative": "",
        "template": "Normal (Healthy)", "seed": state.DEFAULT_SEED, "ui_lang": "en",
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------
def lang() -> str:
    """The interface language chosen in the sidebar (en, uk, ru)."""
    return st.session_state.get("ui_lang", "en")


def t(key: str) -> str:
    return state.tr(key, lang())


def apply_template() -> None:
    name = st.session_state.get("template", state.CUSTOM_TEMPLATE)
    if name != state.CUSTOM_TEMPLATE:
        st.session_state["prompt"] = state.templates(lang())[name]


def switch_language() -> None:
    """A template prompt follows the interface language; a typed prompt is kept."""
    name = st.session_state.get("template", state.CUSTOM_TEMPLATE)
    if name != state.CUSTOM_TEMPLATE and st.session_state.get("prompt") in {
            state.templates(code).get(name) for code in state.UI_LANGUAGES}:
        apply_template()


def use_structured_prompt() -> None:
    st.session_state["prompt"] = state.build_structured_prompt(
        st.session_state.get("sb_findings", []), st.session_state.get("sb_side", ""),
        st.session_state.get("sb_severity", ""))
    st.session_state["template"] = state.CUSTOM_TEMPLATE


def reuse_seed(seed: int) -> None:
    st.session_state["seed"] = str(seed)


# --------------------------------------------------------------------------------------------
# Sidebar: model
# --------------------------------------------------------------------------------------------
def model_section() -> None:
    registry = get_registry()
    default = state.default_model(registry.default)
    choice = st.selectbox(t("model_preset"), state.model_choices(registry.names(), default),
                          key="model_choice", help="Presets from config/models.yaml (and "
                          "$SYNTHEX_MODELS_FILE); 'Custom path...' takes a diffusers folder.")
    preset_loras: list[str] = []
    if choice == state.CUSTOM_MODEL:
        model = st.text_input("Custom model path", key="custom_path",
                              help="A diffusers model folder or a .safetensors checkpoint.").strip()
    else:
        model = choice
        ok, where, missing, preset_loras = preset_info(choice)
        st.text_input("Path", value=where if ok else "(not on this machine)", disabled=True)
        if not ok:
            st.warning(missing)
    strength = st.slider("LoRA strength", *state.LORA_RANGE[:2], value=state.LORA_RANGE[2], step=0.1,
                         key="lora_strength", help="Strength of the preset's own LoRA(s).",
                         disabled=not preset_loras)
    count = st.number_input("Extra LoRA adapters", 0, 4, 0, key="n_loras")
    rows = []
    for i in range(int(count)):
        path = st.text_input(f"LoRA {i + 1} path (.safetensors)", key=f"lora_path_{i}")
        scale = st.slider(f"LoRA {i + 1} strength", 0.0, 1.0, 0.8, 0.1, key=f"lora_scale_{i}")
        rows.append((path, scale))
    if st.button(t("load_model"), type="primary", key="load"):
        load_model(model, choice == state.CUSTOM_MODEL, rows, preset_loras, strength)
    show_status()
    st.session_state["_wanted_loras"] = (rows, preset_loras, strength)


def load_model(model: str, custom: bool, rows: list, preset_loras: list[str], strength: float) -> None:
    from synthex.models.registry import LoraError

    roots = state.allowed_roots(get_registry())
    problems = (state.check_model_path(model, roots) if custom else []) + state.check_lora_paths(rows, roots)
    if problems:
        st.session_state["load_status"] = ("error", "\n\n".join(problems))
        return
    loras = state.active_loras(rows, preset_loras, strength if preset_loras else None)
    engine = get_engine()
    with get_lock(), st.spinner(f"Loading {model}..."):
        engine.unload()  # free the previous pipeline first (references, gc, CUDA cache)
        st.session_state["active"] = None
        try:
            engine.load(model, loras)
            status = ("success", f"Model loaded: {model}")
            files = [p for p, _ in loras if p not in preset_loras]
        except LoraError as exc:
            if getattr(engine, "loaded", None) is None:
                st.session_state["load_status"] = ("error", f"LoRA failed: {state.short_error(exc)}")
                return
            status = ("warning", f"Base Model OK, LoRA failed: {state.short_error(exc)}")
            files = []
        except SynthexError as exc:
            st.session_state["load_status"] = ("error", f"Could not load {model}: {state.short_error(exc)}")
            return
        except Exception as exc:  # out of memory, broken files...
            engine.unload()
            st.session_state["load_status"] = ("error", f"Could not load {model}: "
                                               f"{type(exc).__name__}: {state.short_error(exc)}")
            return
    loaded = getattr(engine, "loaded", None)
    name = getattr(getattr(loaded, "spec", None), "name", None) or model
    st.session_state["active"] = {"model": model, "name": name, "files": files,
                                  "preset_loras": preset_loras if status[0] == "success" else []}
    st.session_state["load_status"] = status


def show_status() -> None:
    active = st.session_state.get("active")
    if active:
        st.markdown(f"<span class='sx-badge' data-testid='sx-active'>{t('active_model')}: "
                    f"{html.escape(active['name'])}</span>", unsafe_allow_html=True)
    else:
        st.markdown(f"<span class='sx-badge off'>{t('no_model')}</span>", unsafe_allow_html=True)
    status = st.session_state.get("load_status")
    if status:
        getattr(st, status[0])(status[1])


def generation_loras() -> list[tuple[str, float]]:
    """The loaded LoRAs at the strengths the sliders show now."""
    active = st.session_state.get("active") or {}
    rows, _, strength = st.session_state.get("_wanted_loras", ([], [], 0.8))
    scales = {p.strip(): s for p, s in rows if p.strip()}
    out = [(name, float(strength)) for name in active.get("preset_loras", [])]
    return out + [(p, float(scales.get(p, 0.8))) for p in active.get("files", [])]


# --------------------------------------------------------------------------------------------
# Sidebar: parameters
# --------------------------------------------------------------------------------------------
def parameter_section() -> dict[str, Any]:
    from synthex.generate.samplers import SAMPLERS, SCHEDULE_TYPES

    low, high, default = state.STEPS_RANGE
    values = {
        "steps": st.slider(t("steps"), low, high, default, 1, key="steps"),
        "guidance": st.slider(t("guidance"), *state.GUIDANCE_RANGE[:2],
                              value=state.GUIDANCE_RANGE[2], step=0.1, key="guidance"),
        "seed": st.text_input(t("seed"), key="seed", help="Empty = random in [0, 2^32-1]."),
        "sampler": st.selectbox(t("sampler"), SAMPLERS, key="sampler"),
        "schedule_type": st.selectbox("Schedule type", SCHEDULE_TYPES, key="schedule_type",
                                      help="A1111's 'Schedule type'; automatic = the sampler's own."),
        "size": st.selectbox(t("size"), state.SIZES, key="size",
                             help="The embedded model was trained at 128x128."),
        "n": st.number_input(t("n"), 1, state.MAX_BATCH, 1, key="n",
                             help="Image k uses seed + k."),
    }
    return values


def controls(params: dict[str, Any], prompt: str, negative: str) -> state.Controls:
    active = st.session_state.get("active") or {}
    return state.Controls(prompt=prompt, negative_prompt=negative, steps=params["steps"],
                          guidance=params["guidance"], seed=params["seed"],
                          sampler=params["sampler"], schedule_type=params.get("schedule_type", "automatic"),
                          size=params["size"], n=params["n"],
                          model=active.get("model", ""), loras=generation_loras())


# --------------------------------------------------------------------------------------------
# Running the engine
# --------------------------------------------------------------------------------------------
def run_engine(request: Any, what: str = "Generating Image...") -> Any | None:
    """``engine.generate`` with a per-step progress bar; errors become page messages."""
    from synthex.generate.engine import RequestError

    bar = st.progress(0.0, text=what)

    def callback(step: int, total: int, latents: Any) -> None:
        bar.progress(min(step / max(total, 1), 1.0), text=f"{what} denoising step {step}/{total}")

    engine = get_engine()
    try:
        with get_lock(), st.spinner(what):
            result = engine.generate(request, callback)
    except RequestError as exc:
        for problem in exc.problems:
            st.error(problem)
        return None
    except Exception as exc:  # SynthexError, CUDA out of memory, anything from the pipeline
        recover(engine, exc)
        return None
    finally:
        bar.empty()
    return result


@contextlib.contextmanager
def guard(where: str) -> Iterator[None]:
    """The page's error boundary: a failure inside one part of the page becomes one message in
    that part (the same reading as the CLI's, :func:`synthex.errors.explain`); the rest of the
    page keeps working and a remote user never sees a traceback (the server log has it)."""
    from synthex.errors import explain

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the boundary; Streamlit's rerun/stop are BaseException
        text = explain(exc)
        if text is None:
            log.exception("%s failed", where)
            st.error(f"{where} failed (a bug in synthex; the server log has the details): "
                     f"{type(exc).__name__}: {state.short_error(exc)}")
        else:
            st.error(text)


def recover(engine: Any, exc: BaseException) -> None:
    from synthex.errors import explain, is_out_of_memory

    text = state.short_error(exc)
    if is_out_of_memory(exc):
        engine.unload()
        st.session_state["active"] = None
        st.session_state["flash"] = (
            "Out of memory: the model was freed to recover. Load it again, then try a smaller "
            f"image size or fewer images. ({text.splitlines()[0]})")
        st.rerun()  # redraw with Generate disabled; the message is shown at the top
    elif explain(exc) is not None:
        st.error(explain(exc))
    else:
        log.exception("generation failed")
        st.error(f"Generation failed (a bug in synthex; the server log has the details): {type(exc).__name__}: {text}")


def store_result(result: Any) -> None:
    pngs = [state.png_bytes(image, params) for image, params in zip(result.images, result.parameters)]
    st.session_state["results"] = [
        {"png": png, "seed": seed, "prompt": params.prompt, "name": state.download_name(seed)}
        for png, seed, params in zip(pngs, result.seeds, result.parameters)]
    st.session_state["history"] = state.add_history(
        st.session_state["history"], state.history_records(result, pngs))


def show_gallery(items: list[dict[str, Any]], prefix: str) -> None:
    columns = st.columns(2 if len(items) > 1 else [3, 1])
    for i, item in enumerate(items):
        with columns[i % 2 if len(items) > 1 else 0]:
            st.image(item["png"], caption=f"{item['prompt']} (seed {item['seed']})",
                     width="stretch")
            st.download_button(t("download"), data=item["png"], file_name=item["name"],
                               mime="image/png", key=f"{prefix}_dl_{i}", on_click="ignore")
            st.button(f"Reuse seed {item['seed']}", key=f"{prefix}_reuse_{i}",
                      on_click=reuse_seed, args=(item["seed"],))


# --------------------------------------------------------------------------------------------
# Tabs
# --------------------------------------------------------------------------------------------
def generate_tab(params: dict[str, Any], loaded: bool) -> None:
    inputs, output = st.columns([1, 1], gap="large")
    with inputs:
        prompt, negative, clicked = prompt_inputs(loaded)
    with output:
        if clicked:
            request, problems = state.build_request(controls(params, prompt, negative))
            for problem in problems:
                st.error(problem)
            if request is not None:
                result = run_engine(request)
                if result is not None:
                    store_result(result)
        if st.session_state["results"]:
            show_gallery(st.session_state["results"], "gen")
        else:
            st.caption(t("results_placeholder"))


def prompt_inputs(loaded: bool) -> tuple[str, str, bool]:
    code = lang()
    st.selectbox(t("template"), list(state.templates(code)), key="template", on_change=apply_template,
                 format_func=lambda name: state.template_label(name, code))
    with st.expander(t("builder")):
        st.multiselect(t("findings"), list(state.FINDINGS), key="sb_findings")
        left, right = st.columns(2)
        left.selectbox(t("side"), state.SIDES, key="sb_side", format_func=lambda s: s or "(none)")
        right.selectbox(t("severity"), state.SEVERITIES, key="sb_severity",
                        format_func=lambda s: s or "(none)")
        st.code(state.build_structured_prompt(st.session_state.get("sb_findings", []),
                                              st.session_state.get("sb_side", ""),
                                              st.session_state.get("sb_severity", "")),
                language=None, wrap_lines=True)
        st.button(t("use_prompt"), key="sb_use", on_click=use_structured_prompt)
    prompt = st.text_area(t("prompt"), key="prompt", height=150,
                          help='"Chest x-ray." is appended when missing. Russian and Ukrainian text is '
                               'mapped to the English finding vocabulary (synthex translate).')
    shown, unknown, problem = state.prompt_mapping(prompt)
    if shown:
        st.caption(f"{t('mapped')}: {shown}")
    if unknown:
        st.warning(f"{t('unknown_words')}: {', '.join(unknown)}")
    if problem:
        st.error(problem)
    negative = st.text_area(t("negative"), key="negative", height=68)
    clicked = st.button(t("generate"), type="primary", key="generate", disabled=not loaded,
                        help=None if loaded else "Load a model first (sidebar).")
    if not loaded:
        st.info(t("load_first"))
    return prompt, negative, clicked


def compare_tab(params: dict[str, Any], loaded: bool) -> None:
    templates = state.templates(lang())
    st.caption(t("compare_caption"))
    st.session_state.setdefault("cmp_a", templates.get("Normal (Healthy)", ""))
    st.session_state.setdefault("cmp_b", templates.get("Cardiomegaly", ""))
    a = st.text_area("Prompt A", key="cmp_a", height=100)
    b = st.text_area("Prompt B", key="cmp_b", height=100)
    if st.button(t("compare"), key="compare", disabled=not loaded):
        base, problems = state.build_request(controls({**params, "n": 1}, a, ""))
        problems += state.check_prompt(b, "Prompt B")
        for problem in problems:
            st.error(problem)
        if not problems:
            run_compare(base, state.ensure_suffix(b))
    shown = st.session_state.get("compare_result")
    if shown:
        cols = st.columns(3)
        cols[0].image(shown["a"], caption="A", width="stretch")
        cols[1].image(shown["b"], caption="B", width="stretch")
        cols[2].metric("mean |A - B|", f"{shown['mean']:.4f}")
        st.image(shown["figure"], caption=f"Seed {shown['seed']}", width="stretch")


def run_compare(base: Any, prompt_b: str) -> None:
    from synthex.generate.compare import compare_prompts

    bar = st.progress(0.0, text="Comparing...")

    def callback(step: int, total: int, latents: Any) -> None:
        bar.progress(min(step / max(total, 1), 1.0), text=f"Comparing... step {step}/{total}")

    engine = get_engine()
    try:
        with tempfile.TemporaryDirectory() as tmp, get_lock(), st.spinner("Generating both images..."):
            result = compare_prompts(base.prompt, prompt_b, Path(tmp) / "compare.png", base=base,
                                     engine=engine, overwrite=True, callback=callback)
            shown = {"figure": result.figure.read_bytes(), "a": result.images[0].read_bytes(),
                     "b": result.images[1].read_bytes(), "seed": result.seed,
                     "mean": float(result.diff.mean())}
    except Exception as exc:
        recover(engine, exc)
        return
    finally:
        bar.empty()
    st.session_state["compare_result"] = shown


def info_tab(loaded: bool) -> None:
    upload = st.file_uploader("Upload a PNG made by SynTheX-Ray or AUTOMATIC1111", key="upload")
    if upload is not None:
        data, name = upload.getvalue(), upload.name
    elif st.session_state.get("info_external"):
        data, name = st.session_state["info_external"]  # opened from the Search tab
        st.caption(f"Showing {name} (opened from Search)")
    else:
        return
    params, problems = state.parameters_from_upload(data, name)
    for problem in problems:
        st.error(problem)
    if params is None:
        return
    from synthex.generate.infotext import format_infotext

    st.code(format_infotext(params), language=None, wrap_lines=True)
    st.json(state.as_mapping(params), expanded=False)
    active = st.session_state.get("active") or {}
    if active and params.model and params.model != active.get("name"):
        st.info(f"Stored model {params.model!r}; regenerating with the loaded model "
                f"{active.get('name')!r}.")
    if st.button("Regenerate", key="regenerate", disabled=not loaded):
        from synthex.generate.engine import request_from_parameters

        try:
            request = request_from_parameters(params, model=active.get("model"),
                                              loras=generation_loras())
        except SynthexError as exc:
            st.error(state.short_error(exc))
            return
        result = run_engine(request, "Regenerating...")
        if result is not None:
            store_result(result)
            show_gallery(st.session_state["results"], "regen")


def history_tab() -> None:
    history = st.session_state["history"]
    if not history:
        st.caption(t("history_empty"))
        return
    for record in history:
        key = f"hist_{int(record.created * 1e6)}_{record.seed}"
        left, right = st.columns([1, 3])
        left.image(record.png, width="stretch")
        with right:
            st.markdown(f"**{html.escape(record.label)}** · {record.sampler} · {record.size}")
            st.code(record.prompt, language=None, wrap_lines=True)
            st.download_button(t("download"), data=record.png, key=f"{key}_dl", on_click="ignore",
                               file_name=state.download_name(record.seed), mime="image/png")
            st.button(f"Reuse seed {record.seed}", key=f"{key}_reuse", on_click=reuse_seed,
                      args=(record.seed,))


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="SynTheX-Ray", page_icon="🩻", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    init_state()
    st.title("SynTheX-Ray")
    with st.sidebar:
        st.selectbox("🌐 " + t("language"), list(state.UI_LANGUAGES), key="ui_lang",
                     format_func=state.UI_LANGUAGES.get, on_change=switch_language)
    st.markdown(f"<div class='sx-banner'>⚠️ {html.escape(t('banner'))}</div>", unsafe_allow_html=True)
    if st.session_state.get("flash"):
        st.error(st.session_state.pop("flash"))
    with st.sidebar:
        st.header(t("model_header"))
        with guard("The model section"):
            model_section()
        st.header(t("params_header"))
        params = parameter_section()
    loaded = st.session_state.get("active") is not None
    names = ("tab_generate", "tab_img2img", "tab_inpaint", "tab_compare", "tab_info", "tab_history", "tab_search",
             "tab_notes", "tab_report")
    tabs = st.tabs([t(k) for k in names])
    from synthex.ui.edit_tab import edit_tab
    from synthex.ui.notes_tab import notes_tab
    from synthex.ui.report_tab import report_tab
    from synthex.ui.search_tab import search_tab

    def edit(mode: str) -> Callable[[], None]:
        return lambda: edit_tab(mode, params, loaded, controls, run_engine, show_gallery)

    bodies = (lambda: generate_tab(params, loaded), edit("img2img"), edit("inpaint"),
              lambda: compare_tab(params, loaded), lambda: info_tab(loaded), history_tab, search_tab,
              notes_tab, report_tab)
    for tab, key, body in zip(tabs, names, bodies):
        with tab, guard(f"The {t(key)} tab"):
            body()


main()
