"""Pure helpers of the web app (no Streamlit, no model logic): widget values -> engine request,
seed and path checks with the messages the page shows, templates, the structured prompt builder,
PNG bytes with metadata, and session history records.

Every check returns a list of messages (empty when fine) so the page can show them all at once
and keep running.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from synthex.errors import SynthexError
from synthex.generate.defaults import APP_GUIDANCE, APP_STEPS, DEFAULT_MODEL, DEFAULT_N, DEFAULT_SAMPLER

SUFFIX = "Chest x-ray."
BANNER = "Synthetic images for research, not diagnosis."
CUSTOM_TEMPLATE = "Custom"
CUSTOM_MODEL = "Custom path..."
MODEL_ENV = "SYNTHEX_UI_MODEL"
MAX_PROMPT_CHARS = 3000
MAX_BATCH = 8
HISTORY_LIMIT = 50
STEPS_RANGE = (10, 50, APP_STEPS)  # min, max, default (the thesis app's, not the CLI's)
GUIDANCE_RANGE = (1.0, 15.0, APP_GUIDANCE)
LORA_RANGE = (0.0, 1.0, 0.8)
DEFAULT_SEED = "42"
NATIVE_SIZE = "Model's native size"
SIZES = (NATIVE_SIZE, "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024")
SIDES = ("", "right", "left", "bilateral")
SEVERITIES = ("", "mild", "moderate", "severe")


# --------------------------------------------------------------------------------------------
# Prompts and templates
# --------------------------------------------------------------------------------------------
def ensure_suffix(prompt: str) -> str:
    """``prompt`` with "Chest x-ray." appended when it does not mention a chest x-ray yet."""
    text = prompt.strip()
    if not text or "chest x-ray" in text.lower():
        return text
    if text[-1] not in ".!?":
        text += "."
    return f"{text} {SUFFIX}"


UI_LANGUAGES = {"en": "English", "uk": "Українська", "ru": "Русский"}


@lru_cache(maxsize=1)
def _template_file() -> dict[str, Any]:
    import yaml

    text = resources.files("synthex.config").joinpath("ui_templates.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


@lru_cache(maxsize=4)
def templates(lang: str = "en") -> dict[str, str]:
    """Template name -> clinical description in ``lang`` (en, uk, ru), "Custom" (empty) first.

    Names are the English ones in every language (they are widget values); see
    :func:`template_label` for the shown name."""
    data = _template_file()
    found = {str(k): " ".join(str(v).split()) for k, v in (data.get("templates") or {}).items()}
    if lang != "en":
        local = (data.get("localised") or {}).get(lang) or {}
        found = {k: " ".join(str(local[k]["text"]).split()) if k in local else v for k, v in found.items()}
    return {CUSTOM_TEMPLATE: "", **found}


def template_label(name: str, lang: str = "en") -> str:
    """The shown name of a template in ``lang``."""
    if name == CUSTOM_TEMPLATE:
        return {"uk": "Власний", "ru": "Свой"}.get(lang, name)
    local = ((_template_file().get("localised") or {}).get(lang) or {}).get(name) or {}
    return str(local.get("name", name))


@lru_cache(maxsize=1)
def ui_strings() -> dict[str, dict[str, str]]:
    import yaml

    text = resources.files("synthex.config").joinpath("ui_strings.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def tr(key: str, lang: str = "en") -> str:
    """Interface text ``key`` in ``lang`` (English when that language lacks it)."""
    entry = ui_strings().get(key)
    if entry is None:
        raise KeyError(f"no interface text {key!r} in ui_strings.yaml")
    return str(entry.get(lang) or entry["en"])


def prompt_mapping(prompt: str) -> tuple[str | None, list[str], str | None]:
    """(``original -> English`` line, unknown words, error) for a Russian/Ukrainian prompt;
    (None, [], None) for English text."""
    from synthex.text.lang import has_cyrillic, map_text

    if not prompt or not has_cyrillic(prompt):
        return None, [], None
    try:
        mapping = map_text(prompt)
    except SynthexError as exc:
        return None, [], short_error(exc)
    return mapping.shown(), mapping.unknown, None


_LRB = ("right", "left", "bilateral")
# Finding -> (MeSH-like caption heading, sentence noun, sides allowed)
FINDINGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Cardiomegaly": ("Cardiomegaly", "cardiomegaly", ()),
    "Lung opacity": ("Opacity lung base", "airspace opacity", _LRB),
    "Pleural effusion": ("Pleural Effusion", "pleural effusion", _LRB),
    "Pneumothorax": ("Pneumothorax", "pneumothorax", _LRB),
    "Atelectasis": ("Pulmonary Atelectasis lung base", "basilar atelectasis", _LRB),
    "Consolidation": ("Consolidation lung lower lobe", "lower lobe consolidation", _LRB),
    "Pneumonia": ("Pneumonia lung lower lobe", "pneumonia", _LRB),
    "Pulmonary edema": ("Pulmonary Edema", "pulmonary edema", ("bilateral",)),
    "Emphysema": ("Emphysema", "hyperinflated lungs", ()),
    "Nodule": ("Nodule lung upper lobe", "pulmonary nodule", ("right", "left")),
    "Mass": ("Mass lung upper lobe", "lung mass", ("right", "left")),
    "Calcified granuloma": ("Calcified Granuloma", "calcified granuloma", ("right", "left")),
    "Scoliosis": ("Spine curved", "thoracic scoliosis", ()),
    "Pacemaker": ("Pacemaker", "cardiac pacemaker", ("left", "right")),
}


def build_structured_prompt(findings: Sequence[str], side: str = "", severity: str = "") -> str:
    """Findings + side + severity -> a caption in the training format, e.g.
    ``"Chest x-ray. Pleural Effusion left. Moderate left pleural effusion."``. No findings ->
    the normal caption. A side a finding cannot have (e.g. left cardiomegaly) is left out."""
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise SynthexError(f"unknown finding(s) {unknown}; choose from {list(FINDINGS)}")
    if side not in SIDES or severity not in SEVERITIES:
        raise SynthexError(f"side must be one of {SIDES[1:]} and severity one of {SEVERITIES[1:]}")
    if not findings:
        return f"{SUFFIX} Normal. The heart size is normal. The lungs are clear."
    headings, sentences = [], []
    for name in findings:
        heading, noun, sides = FINDINGS[name]
        where = side if side in sides else (sides[0] if len(sides) == 1 else "")
        headings.append(" ".join(w for w in (heading, where) if w) + ".")
        words = " ".join(w for w in (severity, where, noun) if w)
        sentences.append(words[0].upper() + words[1:] + ".")
    return " ".join([SUFFIX, *headings, *sentences])


def check_prompt(prompt: str, label: str = "Prompt") -> list[str]:
    """Messages for an empty or too long prompt."""
    if not prompt or not prompt.strip():
        return [f"{label} is empty: describe the chest X-ray to generate (or pick a template)."]
    if len(prompt) > MAX_PROMPT_CHARS:
        return [f"{label} is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}. "
                "Shorten it (the model reads about 75 words per chunk)."]
    return []


# --------------------------------------------------------------------------------------------
# Seeds, sizes, paths
# --------------------------------------------------------------------------------------------
def parse_seed_text(text: str | None) -> tuple[int | None, list[str]]:
    """``(seed or None for random, messages)``: empty/-1 = random, else a whole number."""
    from synthex.generate.engine import parse_seed

    raw = "" if text is None else str(text).strip()
    try:
        return parse_seed(raw), []
    except SynthexError:
        return None, [f"Invalid seed {raw!r}: enter a whole number from 0 to 2^63-1, "
                      "or leave it empty for a random seed."]


def parse_size(choice: str) -> tuple[int | None, int | None]:
    """``"256x256"`` -> ``(256, 256)``; the native-size choice -> ``(None, None)``."""
    if choice == NATIVE_SIZE:
        return None, None
    width, _, height = choice.partition("x")
    return int(width), int(height)


ROOTS_ENV = "SYNTHEX_UI_ROOTS"


def allowed_roots(registry: Any = None) -> list[Path]:
    """The folders whose files the app may read or write by path (custom model, LoRA files,
    search index and source folders): the project's ``runs/``, the embedded weights, the folders
    the model registry names (local preset sources, preset LoRAs, the user's models.yaml folder),
    and those in ``$SYNTHEX_UI_ROOTS`` (``synthex ui --allow-root``, separated by ``os.pathsep``)."""
    from synthex.models.registry import embedded_dir, user_models_file

    env = os.environ.get(ROOTS_ENV, "").strip()
    roots = [Path(os.path.expanduser(p.strip())) for p in env.split(os.pathsep) if p.strip()]
    roots += [Path.cwd() / "runs", embedded_dir(), user_models_file().parent]
    roots += [Path(os.path.expanduser(os.environ[key])) for key in ("SYNTHEX_SEARCH_INDEX", MODEL_ENV)
              if os.environ.get(key) and Path(os.path.expanduser(os.environ[key])).exists()]
    if registry is not None:
        for name in registry.names():
            try:
                spec = registry.resolve(name)
            except Exception:  # noqa: BLE001 - a broken preset adds no root
                continue
            if spec.kind == "folder":
                roots.append(Path(spec.source))
            elif spec.kind == "file":
                roots.append(Path(spec.source).parent)
            roots += [Path(lora.path).parent for lora in spec.loras]
    out: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def allowed_path(text: str, roots: Sequence[Path], *, must_exist: bool = True) -> Path | None:
    """``text`` as a resolved path (symlinks followed) when it lies under one of ``roots`` (and
    exists, unless ``must_exist`` is false); otherwise None. Missing and not allowed are the
    same answer, so a remote user cannot probe which server files exist."""
    if not text or not text.strip():
        return None
    path = Path(os.path.expanduser(text.strip()))
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    if not any(real == root or root in real.parents for root in roots):
        return None
    if must_exist and not real.exists():
        return None
    return real


def not_allowed(what: str, text: str, roots: Sequence[Path]) -> str:
    """The one message for a path that is missing or outside the allowed folders."""
    shown = ", ".join(str(r) for r in roots[:4]) + (" ..." if len(roots) > 4 else "")
    return (f"{what} {text.strip()!r} was not found in the folders this app may read ({shown}); put it "
            "there, or start the app with 'synthex ui --allow-root DIR'.")


def check_model_path(text: str, roots: Sequence[Path] | None = None) -> list[str]:
    """Messages for the custom model path (a diffusers folder or a .safetensors checkpoint)."""
    roots = allowed_roots() if roots is None else roots
    if not text or not text.strip():
        return ["Custom path is empty: enter a diffusers model folder or a .safetensors file."]
    path = allowed_path(text, roots)
    if path is None:
        return [not_allowed("Custom path", text, roots)]
    if path.is_file() and path.suffix.lower() != ".safetensors":
        return [f"Custom path {text.strip()!r} is not a .safetensors file or a model folder "
                "(pickled .ckpt/.bin/.pt files are not read)."]
    return []


def check_lora_paths(loras: Sequence[tuple[str, float]], roots: Sequence[Path] | None = None) -> list[str]:
    """Messages for LoRA adapter rows (empty paths are skipped by :func:`active_loras`)."""
    roots = allowed_roots() if roots is None else roots
    problems = []
    for i, (text, _) in enumerate(loras, 1):
        if not text.strip():
            continue
        path = allowed_path(text, roots)
        if path is None or not path.is_file():
            problems.append(f"LoRA {i}: " + not_allowed("the LoRA file", text, roots)
                            + " Give the path of a LoRA .safetensors file.")
        elif path.suffix.lower() != ".safetensors":
            problems.append(f"LoRA {i}: {text.strip()!r} is not a .safetensors LoRA file.")
    return problems


def active_loras(rows: Sequence[tuple[str, float]], preset_loras: Sequence[str] = (),
                 preset_scale: float | None = None) -> list[tuple[str, float]]:
    """The engine's ``loras``: the preset's own LoRAs at the strength slider, then the rows."""
    out: list[tuple[str, float]] = []
    if preset_scale is not None:
        out += [(name, float(preset_scale)) for name in preset_loras]
    out += [(os.path.expanduser(p.strip()), float(s)) for p, s in rows if p.strip()]
    return out


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------
@dataclass
class Controls:
    """The values of the page's widgets that shape a generation."""

    prompt: str
    negative_prompt: str = ""
    steps: int = STEPS_RANGE[2]
    guidance: float = GUIDANCE_RANGE[2]
    seed: str = DEFAULT_SEED
    sampler: str = DEFAULT_SAMPLER
    schedule_type: str = "automatic"
    size: str = NATIVE_SIZE
    n: int = DEFAULT_N
    model: str = DEFAULT_MODEL
    loras: Sequence[tuple[str, float]] = ()


def build_request(controls: Controls) -> tuple[Any, list[str]]:
    """``(GenerationRequest or None, messages)``; "Chest x-ray." is appended to the prompt."""
    from synthex.generate.engine import GenerationRequest, RequestError

    problems = check_prompt(controls.prompt)
    problems += check_prompt(controls.negative_prompt or "x", "Negative prompt")
    seed, seed_problems = parse_seed_text(controls.seed)
    problems += seed_problems
    if not 1 <= int(controls.n) <= MAX_BATCH:
        problems.append(f"Number of images must be from 1 to {MAX_BATCH}, got {controls.n}.")
    if problems:
        return None, problems
    width, height = parse_size(controls.size)
    request = GenerationRequest(
        prompt=ensure_suffix(controls.prompt), negative_prompt=controls.negative_prompt.strip(),
        steps=int(controls.steps), guidance=float(controls.guidance), seed=seed,
        sampler=controls.sampler, width=width, height=height, n=int(controls.n),
        schedule_type=None if controls.schedule_type in (None, "", "automatic") else controls.schedule_type,
        model=controls.model, loras=list(controls.loras),
    )
    try:
        request.validate()
    except RequestError as exc:
        return None, list(exc.problems)
    return request, []


def default_model(registry_default: str = DEFAULT_MODEL) -> str:
    """The model the page offers first: ``$SYNTHEX_UI_MODEL`` or the registry default."""
    return os.environ.get(MODEL_ENV, "").strip() or registry_default


def model_choices(presets: Sequence[str], default: str) -> list[str]:
    """Options of the model picker: the default first, the presets, then "Custom path..."."""
    return list(dict.fromkeys([default, *presets])) + [CUSTOM_MODEL]


# --------------------------------------------------------------------------------------------
# PNG bytes and uploads
# --------------------------------------------------------------------------------------------
def png_bytes(image: Any, params: Any) -> bytes:
    """The image as PNG bytes carrying the A1111 ``parameters`` text, Description, Seed, Model,
    Software and the synthetic flag + disclaimer (the same chunks as ``write_png``)."""
    from PIL.PngImagePlugin import PngInfo

    from synthex.generate.infotext import png_text

    info = PngInfo()
    for key, value in png_text(params).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def download_name(seed: int, index: int = 0) -> str:
    """``synthetic_xray_<seed>.png`` (the thesis app's name pattern)."""
    return f"synthetic_xray_{seed:04d}.png" if index == 0 else f"synthetic_xray_{seed:04d}_{index}.png"


def parameters_from_upload(data: bytes, name: str = "upload") -> tuple[Any, list[str]]:
    """``(GenerationParameters or None, messages)`` for an uploaded file's bytes."""
    from synthex.generate.infotext import read_png_parameters

    if not data:
        return None, [f"{name} is empty."]
    handle = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    try:
        handle.write(data)
        handle.close()
        params = read_png_parameters(handle.name)
    except SynthexError as exc:
        text = str(exc).replace(handle.name, name)
        return None, [f"Cannot read parameters from {name}: {text}"]
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if not params.prompt.strip():
        return None, [f"{name} holds generation parameters but no prompt to regenerate from."]
    return params, []


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------
@dataclass
class HistoryRecord:
    """One generated image of this session."""

    png: bytes
    prompt: str
    negative_prompt: str
    seed: int
    model: str
    steps: int
    guidance: float
    sampler: str
    size: str
    loras: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.created))
        return f"{stamp} · seed {self.seed} · {self.model} · {self.steps} steps · CFG {self.guidance:g}"


def history_records(result: Any, pngs: Sequence[bytes]) -> list[HistoryRecord]:
    """Records for the images of an engine result (``pngs``: their PNG bytes)."""
    out = []
    for params, data in zip(result.parameters, pngs):
        sampler = " ".join(p for p in (params.sampler, params.schedule_type) if p)
        out.append(HistoryRecord(
            png=data, prompt=params.prompt, negative_prompt=params.negative_prompt,
            seed=int(params.seed), model=str(params.model), steps=int(params.steps),
            guidance=float(params.cfg_scale), sampler=sampler,
            size=f"{params.width}x{params.height}",
            loras={name: scale for name, (_, scale) in params.loras.items() if scale is not None}))
    return out


def add_history(history: list[HistoryRecord], records: Sequence[HistoryRecord],
                limit: int = HISTORY_LIMIT) -> list[HistoryRecord]:
    """Newest first, at most ``limit`` records."""
    return [*reversed(list(records)), *history][:limit]


def short_error(exc: BaseException) -> str:
    """The message of an exception for the page (full text; type name when empty)."""
    text = str(exc).strip()
    return text or type(exc).__name__


def lora_names(spec: Any) -> list[str]:
    """Names of a resolved model's own LoRAs."""
    return [lora.name for lora in getattr(spec, "loras", ())]


def describe_missing(ok: bool, why: str, obtain: str | None) -> str:
    """The explanation shown for a preset whose files are not on this machine."""
    if ok:
        return ""
    hint = f"\n\n{' '.join(obtain.split())}" if obtain else ""
    return f"Not available on this machine: {why}{hint}"


def as_mapping(params: Any) -> Mapping[str, Any]:
    """GenerationParameters as a plain dict for display."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(params).items()
            if v not in (None, "", {}, []) and v is not False}  # invert_mask False: not shown


def make_engine() -> Any:
    """The engine the page uses (one per server process; tests replace this function)."""
    from synthex.generate.engine import Engine

    return Engine()
