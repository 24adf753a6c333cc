"""One generation engine: :class:`GenerationRequest` -> :class:`GenerationResult`.

The CLI, the web app and batch jobs all call :meth:`Engine.generate`. It

1. validates the request up front (:meth:`GenerationRequest.validate`: one line per bad value);
2. picks device and dtype (CUDA bf16/fp16, MPS fp16, CPU fp32) unless given;
3. loads the model through :mod:`synthex.models.registry` (cached for the same model; LoRAs
   swapped or re-scaled in place; switching models frees the previous one);
4. encodes the prompts with AUTOMATIC1111 weighting and 75-token chunks
   (:func:`~synthex.generate.weighting.prompt_embeds_for_pipeline`);
5. denoises with the chosen sampler (img2img and inpainting from an ``init_image``/``mask``:
   :mod:`synthex.generate.img2img`), one ``torch.Generator`` (on the CPU) per image seeded
   ``seed + k``; images are made ``batch_size`` at a time (default 1, so image k is bit-identical
   whatever ``n``);
6. decodes the latents itself so NaN/black images from a half-precision VAE are caught and
   decoded again in fp32; on CUDA out-of-memory it retries once with VAE tiling + CPU offload;
7. fills one :class:`~synthex.generate.infotext.GenerationParameters` per image.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from synthex.errors import SynthexError
from synthex.generate.defaults import (
    DEFAULT_CLIP_SKIP,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_MASK_BLUR,
    DEFAULT_MODEL,
    DEFAULT_N,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DEFAULT_WIDTH,
)
from synthex.generate.infotext import GenerationParameters
from synthex.generate.samplers import (
    make_scheduler,
    resolve_sampler,
    scheduler_overrides,
    split_sampler_name,
)

logger = logging.getLogger(__name__)

MAX_STEPS = 150
MAX_CLIP_SKIP = 12
LORA_DIR_ENV = "SYNTHEX_LORA_DIR"
DEFAULT_LORA_DIR = "~/.cache/synthex/loras"
_GENERIC_LORA_STEMS = {"pytorch_lora_weights", "lora", "adapter_model", "model", "last",
                       "diffusion_pytorch_model"}
MAX_SIDE = 4096
MAX_SEED = 2**63 - 1
RANDOM_SEED_RANGE = 2**32
"""Random seeds are drawn from [0, 2**32 - 1], as in AUTOMATIC1111 and the thesis app."""

StepCallback = Callable[[int, int, "torch.Tensor | None"], None]
"""``callback(step, total, latents_or_none)``; ``step`` runs 1..total over the whole request."""

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class RequestError(SynthexError, ValueError):
    """A request with bad values; ``problems`` holds one message per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid generation request:\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------------------------
# Request and result
# --------------------------------------------------------------------------------------------
@dataclass
class GenerationRequest:
    """What to generate. ``seed`` None, ``-1`` or ``""`` draws a random seed (reported back and
    stored); other negative seeds are refused. Image k uses ``seed + k``. ``width``/``height``
    None use the model's native size. ``loras`` holds ``(name_or_path, scale)``: a preset's LoRA
    name re-scales it, a path adds a file, a known LoRA name (a registered preset's LoRA, a file
    in ``$SYNTHEX_LORA_DIR``) loads it. ``<lora:name:weight>`` tags in the prompt do the same
    (A1111 syntax) and are removed from the text the model reads; a LoRA given both ways is
    loaded once, with the scale of ``loras``. ``schedule_type`` (automatic, karras,
    exponential, ...) overrides the schedule named by ``sampler``; ``clip_skip`` is A1111's
    "Clip skip" (1 = the usual layer, 2 = one earlier).

    img2img and inpainting (:mod:`synthex.generate.img2img`): ``init_image`` (a path or a PIL
    image) starts from that image, changed by ``strength`` (0 < strength <= 1); ``mask`` (white =
    repaint, black = keep; the init image's size) repaints part of it, blended back through the
    mask blurred by ``mask_blur`` pixels; ``mask_padding`` set inpaints only the mask's bounding
    box plus that padding at the working size (A1111's "Only masked"); ``invert_mask`` repaints
    the black part. Without ``width``/``height`` the init image's size is the working size."""

    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int | str | None = None
    sampler: str = DEFAULT_SAMPLER
    schedule_type: str | None = None
    width: int | None = DEFAULT_WIDTH
    height: int | None = DEFAULT_HEIGHT
    loras: Sequence[tuple[str | os.PathLike[str], float]] = ()
    model: str | os.PathLike[str] = DEFAULT_MODEL
    n: int = DEFAULT_N
    device: str | torch.device | None = None
    dtype: str | torch.dtype | None = None
    batch_size: int = 1
    lang: str = "auto"
    clip_skip: int = DEFAULT_CLIP_SKIP
    """Language of the prompts: "auto" maps Russian/Ukrainian (Cyrillic) text to English through
    the glossary (:mod:`synthex.text.lang`) and refuses transliterated text; "en" passes the
    text unchanged; "ru"/"uk" force that glossary."""
    init_image: Any = None
    strength: float = DEFAULT_STRENGTH
    mask: Any = None
    mask_blur: int = DEFAULT_MASK_BLUR
    mask_padding: int | None = None
    invert_mask: bool = False

    def validate(self) -> None:
        """Raise :class:`RequestError` listing every bad value (nothing is corrected silently)."""
        problems = [p for p in (
            _check_prompt(self.prompt), _check_negative(self.negative_prompt),
            _check_int("steps", self.steps, 1, MAX_STEPS), _check_guidance(self.guidance),
            _check_seed(self.seed, self.n), _check_sampler(self.sampler, self.schedule_type),
            _check_int("clip_skip", self.clip_skip, 1, MAX_CLIP_SKIP),
            _check_side("width", self.width), _check_side("height", self.height),
            _check_int("n", self.n, 1, 100_000), _check_int("batch_size", self.batch_size, 1, 1024),
            _check_model(self.model), _check_device(self.device), _check_dtype(self.dtype),
            _check_lang(self.lang),
        ) if p]
        problems += _check_loras(self.loras)
        from synthex.generate.img2img import check_request

        problems += check_request(self)
        if problems:
            raise RequestError(problems)


@dataclass
class GenerationResult:
    """Images (PIL; mode "L" for 1-channel models), their seeds and parameters, and timings in
    seconds (``load``, ``encode``, ``denoise``, ``decode``, ``total``)."""

    images: list[Any]
    seeds: list[int]
    parameters: list[GenerationParameters]
    timings: dict[str, float] = field(default_factory=dict)
    random_seed: bool = False


# --------------------------------------------------------------------------------------------
# Validation helpers: each returns None or one message naming the value
# --------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prompt(prompt: Any) -> str | None:
    if not isinstance(prompt, str):
        return f"prompt: must be text, got {type(prompt).__name__}"
    if not prompt.strip():
        return "prompt: is empty; describe the image to generate"
    return None


def _check_negative(negative: Any) -> str | None:
    if negative is not None and not isinstance(negative, str):
        return f"negative_prompt: must be text, got {type(negative).__name__}"
    return None


def _check_lang(lang: Any) -> str | None:
    from synthex.text.lang import LANG_CHOICES

    if lang not in LANG_CHOICES:
        return f"lang: {lang!r} is not one of {', '.join(LANG_CHOICES)}"
    return None


def localise_request(request: GenerationRequest) -> tuple[str, str, dict[str, str]]:
    """(English prompt, English negative prompt, PNG fields recording the original text).

    Russian/Ukrainian text is mapped to the English finding vocabulary; the original, its
    language and the words the glossary did not know go into the PNG parameters, so that the
    image's ``--from`` re-generates from the English text the model saw.
    """
    from synthex.text.lang import localise

    prompt, mapping = localise(request.prompt, request.lang)
    fields: dict[str, str] = {}
    if mapping is not None:
        fields["Original prompt"] = mapping.original.strip()
        fields["Prompt language"] = mapping.language
        if mapping.unknown:
            fields["Unmapped words"] = " ".join(mapping.unknown)
    negative, neg_mapping = localise(request.negative_prompt or "", request.lang)
    if neg_mapping is not None:
        # a negative prompt names what to avoid: the findings, without the caption frame
        negative = neg_mapping.english.removeprefix("Chest x-ray.").strip()
        fields["Original negative prompt"] = neg_mapping.original.strip()
        if neg_mapping.unknown:
            fields["Unmapped negative words"] = " ".join(neg_mapping.unknown)
    return prompt, negative, fields


def _check_int(name: str, value: Any, low: int, high: int) -> str | None:
    if not _is_int(value) or not low <= value <= high:
        return f"{name}: must be a whole number from {low} to {high}, got {value!r}"
    return None


def _check_guidance(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        return (f"guidance: must be a number >= 0 (1.0 or less turns classifier-free guidance "
                f"off), got {value!r}")
    return None


def parse_seed(seed: int | str | None) -> int | None:
    """None for a random seed (None, -1, "", "-1", "random"), else the integer seed.

    Raises :class:`SynthexError` for anything else that is not a whole number from 0 to
    ``MAX_SEED``.
    """
    if seed is None or (isinstance(seed, str) and seed.strip().lower() in {"", "-1", "random"}):
        return None
    value = int(seed.strip()) if isinstance(seed, str) and seed.strip().isdigit() else seed
    if _is_int(value) and value == -1:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise SynthexError(f"seed: must be a whole number from 0 to {MAX_SEED}, or -1/empty for "
                           f"random, got {seed!r}")
    return value


def _check_seed(seed: Any, n: Any) -> str | None:
    try:
        value = parse_seed(seed)
    except SynthexError as exc:
        return str(exc)
    if value is not None and _is_int(n) and value + max(n - 1, 0) > MAX_SEED:
        return f"seed: {value} + n - 1 exceeds {MAX_SEED}"
    return None


def _check_sampler(name: Any, schedule_type: Any = None) -> str | None:
    try:
        spec, schedule = resolve_sampler(name, schedule_type)
        scheduler_overrides(spec.name, schedule_type=schedule)
    except SynthexError as exc:
        return f"sampler: {exc}"
    return None


def _check_side(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not _is_int(value) or not 8 <= value <= MAX_SIDE or value % 8:
        return f"{name}: must be a multiple of 8 from 8 to {MAX_SIDE} (or None for the model's " \
               f"native size), got {value!r}"
    return None


def _check_model(model: Any) -> str | None:
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        return f"model: must be a preset name or a path, got {model!r}"
    return None


def _check_device(device: Any) -> str | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return f"device: {device!r} is not a device (use cpu, cuda, cuda:1, mps)"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"device: {device!r} asked for, but CUDA is not available on this machine"
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return f"device: {device!r} asked for, but MPS is not available on this machine"
    return None


def _check_dtype(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return None
    if isinstance(dtype, str) and dtype.strip().lower().replace("torch.", "") in _DTYPES:
        return None
    return f"dtype: must be float32, float16 or bfloat16 (or None for automatic), got {dtype!r}"


def _check_loras(loras: Any) -> list[str]:
    if isinstance(loras, (str, bytes)) or not isinstance(loras, Sequence):
        return [f"loras: must be a list of (name_or_path, scale) pairs, got {loras!r}"]
    problems = []
    for i, entry in enumerate(loras):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            problems.append(f"loras[{i}]: must be a (name_or_path, scale) pair, got {entry!r}")
            continue
        name, scale = entry
        if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
            problems.append(f"loras[{i}]: name or path must be non-empty text, got {name!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            problems.append(f"loras[{i}]: scale must be a finite number, got {scale!r}")
    return problems


# --------------------------------------------------------------------------------------------
# Device, dtype, seeds
# --------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA, else MPS, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The given dtype, else bf16 (fp16 on older GPUs) on CUDA, fp16 on MPS, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        return _DTYPES[dtype.strip().lower().replace("torch.", "")]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def random_seed() -> int:
    """A fresh seed in [0, 2**32 - 1] from the OS entropy source (global RNGs untouched)."""
    return random.SystemRandom().randrange(RANDOM_SEED_RANGE)


def resolve_seeds(seed: int | str | None, n: int) -> tuple[list[int], bool]:
    """``([seed, seed + 1, ...], was_random)``."""
    value = parse_seed(seed)
    drawn = value is None
    base = random_seed() if drawn else value
    return [base + k for k in range(n)], drawn


# --------------------------------------------------------------------------------------------
# LoRA files: names and hashes
# --------------------------------------------------------------------------------------------


def _is_file(entry: Any) -> bool:
    try:
        return Path(os.path.expanduser(str(entry))).is_file()
    except (OSError, ValueError):
        return False


def _lora_key(target: Any, own: set[str]) -> str:
    text = str(target)
    return f"preset:{text}" if text in own else str(Path(os.path.expanduser(text)).resolve())


def lora_file_name(path: str | os.PathLike[str]) -> str:
    """A LoRA file's name for ``<lora:name:...>`` tags and ``Lora hashes``: the file stem, or the
    run folder's name for the generic names training writes (``pytorch_lora_weights``...)."""
    path = Path(os.path.expanduser(str(path)))
    stem = path.stem
    if stem.lower() in _GENERIC_LORA_STEMS and path.parent.name:
        stem = path.resolve().parent.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_")
    return name or "lora"


def lora_hash(path: str | os.PathLike[str]) -> str:
    """12 hex digits of the addnet hash (SHA-256 after the safetensors header): what A1111
    writes in ``Lora hashes`` and civitai looks LoRAs up by. Cached by (path, size, mtime)."""
    from synthex.models.registry import cached_short_hash

    return cached_short_hash(path, 12, addnet=True)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
class Engine:
    """Holds at most one loaded model and generates with it; see the module docstring."""

    def __init__(self, registry: Any | None = None) -> None:
        if registry is None:
            from synthex.models.registry import ModelRegistry

            registry = ModelRegistry()
        self.registry = registry
        self.loaded: Any | None = None  # registry.LoadedModel
        self._key: tuple[Any, ...] | None = None

    # ---------------------------------------------------------------------------- models
    def load(self, model: str | os.PathLike[str] = DEFAULT_MODEL,
             loras: Sequence[tuple[str | os.PathLike[str], float]] = (),
             device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Any:
        """Make ``model`` (+ LoRAs) the loaded model; reuses the cached pipeline when it is the
        same model on the same device/dtype, frees the previous one otherwise."""
        from synthex.models.registry import LoraError

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        spec = self.registry.resolve(model)
        lora_specs = self.registry.resolve_loras(spec, loras)
        key = (spec.key, str(dev), str(dt))
        if self.loaded is None or key != self._key:
            self.unload()
            self.loaded = self.registry.load(spec, dev, dt)
            self._key = key
        self.loaded.spec = spec
        try:
            self.registry.apply_loras(self.loaded, lora_specs)
        except LoraError:
            logger.warning("base model %s loaded; LoRA failed", spec.name)
            raise
        return self.loaded

    def load_for(self, request: GenerationRequest) -> Any:
        """Load what ``request`` needs, its ``<lora:...>`` prompt tags included."""
        clean = self.prepare(request)
        return self.load(clean.model, clean.loras, clean.device, clean.dtype)

    # ---------------------------------------------------------------------------- LoRA names
    def known_loras(self, spec: Any | None = None) -> dict[str, str]:
        """LoRA name -> what to pass in ``loras``: the model's own preset LoRAs (by name), every
        preset's LoRAs whose file is here and the ``*.safetensors`` files in
        ``$SYNTHEX_LORA_DIR`` (default ``~/.cache/synthex/loras``, A1111's models/Lora folder)
        by path."""
        known: dict[str, str] = {lora.name: lora.name for lora in getattr(spec, "loras", ())}
        for preset in self.registry.names():
            try:
                loras = self.registry.resolve(preset).loras
            except SynthexError:
                continue
            for lora in loras:  # only files that are here: a missing one cannot be loaded
                if _is_file(lora.path):
                    known.setdefault(lora.name, str(lora.path))
        folder = Path(os.path.expanduser(os.environ.get(LORA_DIR_ENV) or DEFAULT_LORA_DIR))
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            known.setdefault(lora_file_name(path), str(path))
        return known

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` as the model runs it: ``<lora:name:weight>`` tags removed from the prompt
        and added to ``loras`` (unless the same LoRA is already there, whose scale then wins),
        LoRA names that are neither the model's nor files resolved through :meth:`known_loras`.
        Unknown names raise :class:`~synthex.models.registry.LoraError` listing the known ones."""
        from dataclasses import replace

        from synthex.generate.infotext import lora_tags, strip_lora_tags

        if lora_tags(request.negative_prompt or ""):
            raise SynthexError("negative prompt: <lora:...> tags work in the prompt only (as in "
                               "A1111); move them to the prompt or use --lora")
        tags = lora_tags(request.prompt)
        prompt = strip_lora_tags(request.prompt)
        plain = all(str(entry) in self._spec_lora_names(request) or _is_file(entry)
                    for entry, _ in request.loras)
        if not tags and plain:
            return request if prompt == request.prompt else replace(request, prompt=prompt)
        spec = self.registry.resolve(request.model)
        own = {lora.name for lora in spec.loras}
        known: dict[str, str] | None = None
        entries: list[tuple[str | os.PathLike[str], float]] = []
        keys: set[str] = set()
        names: set[str] = set()

        def resolve(name: str, what: str) -> str:
            nonlocal known
            if name in own or _is_file(name):
                return name
            known = self.known_loras(spec) if known is None else known
            if name in known:
                return known[name]
            from synthex.models.registry import LoraError

            listing = ", ".join(known) or "none"
            raise LoraError(
                f"LoRA {name!r} ({what}): no such file, and not a LoRA of model {spec.name!r}, of a "
                f"preset, or in ${LORA_DIR_ENV}; known LoRA names: {listing}. Pass the file with "
                "--lora PATH:SCALE, or copy it into that folder")

        for entry, scale in request.loras:
            target = resolve(str(entry), "from the LoRA list") if not isinstance(entry, os.PathLike) else entry
            key = _lora_key(target, own)
            if key in keys:
                continue
            keys.add(key)
            names.update({str(entry), str(target) if str(target) in own else lora_file_name(target)})
            entries.append((target, scale))
        for name, scale in tags:
            if name in names:
                logger.info("<lora:%s:...> in the prompt: the LoRA list gives it already", name)
                continue
            target = resolve(name, "a <lora:...> tag of the prompt")
            key = _lora_key(target, own)
            if key in keys:
                continue
            keys.add(key)
            names.add(name)
            entries.append((target, scale))
        return replace(request, prompt=prompt, loras=entries)

    def _spec_lora_names(self, request: GenerationRequest) -> set[str]:
        try:
            return {lora.name for lora in self.registry.resolve(request.model).loras}
        except SynthexError:
            return set()

    def lora_names(self, loaded: Any) -> dict[str, str]:
        """Adapter name -> the LoRA's name in the infotext: a preset's LoRA name (``--register``
        name), a known name for the file (:meth:`known_loras`), else the file's run name
        (:func:`lora_file_name`)."""
        own = {lora.name for lora in loaded.spec.loras}
        by_path: dict[str, str] | None = None
        out: dict[str, str] = {}
        for adapter, lora in loaded.loras.items():
            if adapter in own:
                name = adapter
            else:
                if by_path is None:
                    by_path = {}
                    for known_name, target in self.known_loras().items():
                        if _is_file(target):
                            by_path.setdefault(str(Path(target).resolve()), known_name)
                name = by_path.get(str(Path(lora.path).resolve())) or lora_file_name(lora.path)
            base, k = name, 2
            while name in out.values():
                name, k = f"{base}_{k}", k + 1
            out[adapter] = name
        return out

    def unload(self) -> None:
        """Free the loaded model completely (references, hooks, gc, CUDA cache)."""
        from synthex.models.registry import free_model

        loaded, self.loaded, self._key = self.loaded, None, None
        free_model(loaded)

    # ---------------------------------------------------------------------------- generate
    def generate(self, request: GenerationRequest, callback: StepCallback | None = None) -> GenerationResult:
        """Run ``request``; ``callback(step, total, latents)`` is called after every step."""
        request.validate()
        original, request = request, self.prepare(request)
        start = time.perf_counter()
        timings: dict[str, float] = {}
        loaded = self.load(request.model, request.loras, request.device, request.dtype)
        timings["load"] = time.perf_counter() - start
        source = _init_source(request, loaded)
        width, height = source.size if source is not None else _size(request, loaded)
        seeds, drawn = resolve_seeds(request.seed, request.n)
        if drawn:
            logger.info("random seed %d", seeds[0])
        tick = time.perf_counter()
        prompt, negative, lang_fields = localise_request(request)
        embeds = _encode(loaded.pipe, prompt, negative, request.clip_skip)
        timings["encode"] = time.perf_counter() - tick
        images: list[Any] = []
        timings["denoise"] = timings["decode"] = 0.0
        batches = [seeds[i:i + request.batch_size] for i in range(0, len(seeds), request.batch_size)]
        for index, batch in enumerate(batches):
            progress = _Progress(callback, index, len(batches))
            images += self._run_batch(loaded, request, embeds, batch, (width, height), progress, timings,
                                      source)
        timings["total"] = time.perf_counter() - start
        params = [self.parameters(original, loaded, seed, width, height) for seed in seeds]
        for p in params if source is not None else ():
            source.annotate(p)
        if lang_fields:
            from synthex.generate.infotext import with_lora_tags

            for p in params:
                p.prompt = with_lora_tags(prompt, {n: s for n, (_, s) in p.loras.items()})
                p.negative_prompt = negative
                p.extra.update(lang_fields)
        return GenerationResult(images, seeds, params, timings, drawn)

    def _run_batch(self, loaded: Any, request: GenerationRequest, embeds: dict[str, torch.Tensor],
                   seeds: list[int], size: tuple[int, int], progress: _Progress,
                   timings: dict[str, float], source: Any = None) -> list[Any]:
        def attempt() -> list[Any]:
            tick = time.perf_counter()
            if source is None:
                latents = _denoise(loaded, request, embeds, seeds, size, progress)
            else:  # img2img / inpainting (synthex.generate.img2img)
                latents = source.denoise(loaded, request, embeds, seeds, progress)
            mid = time.perf_counter()
            images = decode_latents(loaded, latents)
            if source is not None:
                images = source.finish(images)
            timings["denoise"] += mid - tick
            timings["decode"] += time.perf_counter() - mid
            return images

        try:
            return attempt()
        except _OOM:
            if loaded.low_memory:
                raise _oom_error(loaded, size) from None
            logger.warning("CUDA out of memory; retrying with VAE tiling and model CPU offload")
            _free_cuda()
            enable_low_memory(loaded)
        try:
            return attempt()
        except _OOM:
            _free_cuda()
            raise _oom_error(loaded, size) from None

    def parameters(self, request: GenerationRequest, loaded: Any, seed: int, width: int,
                   height: int) -> GenerationParameters:
        """The PNG parameters of one image of ``request``: the prompt with a ``<lora:name:scale>``
        tag per LoRA and ``Lora hashes`` of 12 addnet digits, as A1111 writes them."""
        from synthex.generate.infotext import with_lora_tags

        sampler, schedule = split_sampler_name(request.sampler, request.schedule_type)
        names = self.lora_names(loaded)
        loras = {names[adapter]: (lora_hash(spec.path), float(spec.scale))
                 for adapter, spec in loaded.loras.items()}
        return GenerationParameters(
            prompt=with_lora_tags(request.prompt, {n: s for n, (_, s) in loras.items()}),
            negative_prompt=request.negative_prompt or "",
            steps=request.steps, sampler=sampler, schedule_type=schedule,
            cfg_scale=float(request.guidance), seed=seed, width=width, height=height,
            model=loaded.spec.name, model_hash=loaded.model_hash, clip_skip=request.clip_skip,
            loras=loras,
        )


# --------------------------------------------------------------------------------------------
# Steps of one generation
# --------------------------------------------------------------------------------------------
class _Progress:
    """Turns diffusers' ``callback_on_step_end`` into ``callback(step, total, latents)``."""

    def __init__(self, callback: StepCallback | None, batch: int, n_batches: int) -> None:
        self.callback, self.batch, self.n_batches = callback, batch, n_batches

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.callback is not None:
            per = int(getattr(pipe, "num_timesteps", 0) or 0) or i + 1
            self.callback(self.batch * per + i + 1, per * self.n_batches, kwargs.get("latents"))
        return kwargs


def _init_source(request: GenerationRequest, loaded: Any) -> Any:
    """The prepared init image and mask (:func:`synthex.generate.img2img.prepare`), or None."""
    from synthex.generate.img2img import prepare

    return prepare(request, loaded)


def _size(request: GenerationRequest, loaded: Any) -> tuple[int, int]:
    native_w, native_h = loaded.native_size
    width, height = request.width or native_w, request.height or native_h
    factor = loaded.vae_scale_factor
    if width % factor or height % factor:
        raise RequestError([f"size {width}x{height}: model {loaded.spec.name!r} needs multiples "
                            f"of {factor}"])
    return width, height


def _encode(pipe: Any, prompt: str, negative: str, clip_skip: int = DEFAULT_CLIP_SKIP) -> dict[str, torch.Tensor]:
    from synthex.generate.weighting import prompt_embeds_for_pipeline

    if clip_skip in (None, 1):
        return prompt_embeds_for_pipeline(pipe, prompt, negative)
    try:  # A1111's "Clip skip: 2" is diffusers' clip_skip=1
        return prompt_embeds_for_pipeline(pipe, prompt, negative, clip_skip=clip_skip - 1)
    except ValueError as exc:
        raise RequestError([f"clip_skip: {clip_skip} is too deep for this model's text encoder "
                            f"({exc}); use a smaller Clip skip (1 = off)"]) from None


def _denoise(loaded: Any, request: GenerationRequest, embeds: dict[str, torch.Tensor],
             seeds: list[int], size: tuple[int, int], progress: _Progress) -> torch.Tensor:
    pipe = loaded.pipe
    pipe.scheduler = make_scheduler(request.sampler, loaded.base_scheduler or pipe.scheduler,
                                    request.schedule_type)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    output = pipe(
        **embeds, num_images_per_prompt=len(seeds), num_inference_steps=request.steps,
        guidance_scale=float(request.guidance), width=size[0], height=size[1],
        generator=generators, output_type="latent", callback_on_step_end=progress,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    return output.images


def _unscale(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        channels = latents.shape[1]
        mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        return latents * std_t / config.scaling_factor + mean_t
    shift = getattr(config, "shift_factor", None) or 0.0
    return latents / config.scaling_factor + shift


def _vae_device(pipe: Any) -> torch.device:
    try:
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(pipe.vae)
    except (ImportError, AttributeError):
        return next(pipe.vae.parameters()).device


def _bad_pixels(image: torch.Tensor, half: bool) -> bool:
    if not bool(torch.isfinite(image).all()):
        return True
    return half and float(image.float().std()) < 1e-6  # a flat (black) image from overflow


@torch.no_grad()
def decode_latents(loaded: Any, latents: torch.Tensor) -> list[Any]:
    """VAE-decode ``latents`` to PIL images; NaN/flat output of a half VAE is decoded again in
    fp32 (and the VAE is kept in fp32 from then on)."""
    pipe = loaded.pipe
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast or loaded.vae_upcast:
        vae.to(torch.float32)
    z = _unscale(vae, latents.to(_vae_device(pipe), vae.dtype))
    image = vae.decode(z, return_dict=False)[0]
    half = vae.dtype in (torch.float16, torch.bfloat16)
    if half and _bad_pixels(image, half):
        logger.warning("the %s VAE gave NaN/black pixels; decoding again in float32", vae.dtype)
        vae.to(torch.float32)
        loaded.vae_upcast = True
        image = vae.decode(z.float(), return_dict=False)[0]
    if upcast and not loaded.vae_upcast:
        vae.to(torch.float16)
    if not bool(torch.isfinite(image).all()):
        raise SynthexError(f"model {loaded.spec.name!r} produced NaN pixels even in float32; "
                           "try another sampler, fewer steps or a lower guidance")
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


def enable_low_memory(loaded: Any) -> None:
    """VAE tiling + model CPU offload (CUDA), for a retry after out-of-memory."""
    pipe = loaded.pipe
    pipe.vae.enable_tiling()
    if loaded.device.type == "cuda":
        pipe.enable_model_cpu_offload(device=loaded.device)
    loaded.low_memory = True


def _free_cuda() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_error(loaded: Any, size: tuple[int, int]) -> SynthexError:
    from synthex.errors import OutOfMemoryError

    return OutOfMemoryError(
        f"Out of GPU memory generating {size[0]}x{size[1]} with model {loaded.spec.name!r}, even "
        "with VAE tiling and model CPU offload. Lower width/height or batch_size, close other GPU "
        "programs, or use device='cpu'.")


def request_from_parameters(params: GenerationParameters, **overrides: Any) -> GenerationRequest:
    """The request that re-makes an image from its PNG parameters (``synthex generate --from``).

    ``overrides`` that are not None replace the stored values (``loras`` replaces the LoRAs not
    named by ``<lora:...>`` tags of the prompt; the tags stay and are resolved by name, unless the
    override holds the same LoRA). A stored sampler or schedule type this installation cannot
    run is only an error when no ``sampler`` override replaces it. A ``Clip skip`` that is not a
    whole number >= 1 is refused rather than dropped. ``Seed: -1`` (A1111's "random") draws a
    new random seed, reported back. An image made by img2img/inpainting (``Init image hash``,
    ``Mask hash``) needs ``init_image`` (and ``mask``) overrides of the same pixels; its
    strength and mask settings are kept (:func:`~synthex.generate.img2img.fields_from_parameters`).
    """
    from synthex.generate.infotext import lora_tags
    from synthex.generate.samplers import get_sampler, sampler_from_infotext

    if not params.prompt.strip():
        raise SynthexError("the PNG parameters hold no prompt to re-generate from")
    if "Clip skip" in params.extra:
        raise SynthexError(f"the PNG parameters hold Clip skip {params.extra['Clip skip']!r}, not a "
                           "whole number >= 1; pass --clip-skip N to choose one")
    tagged = {name for name, _ in lora_tags(params.prompt)}
    fields: dict[str, Any] = {
        "prompt": params.prompt, "negative_prompt": params.negative_prompt,
        "steps": params.steps or DEFAULT_STEPS,
        "guidance": DEFAULT_GUIDANCE if params.cfg_scale is None else params.cfg_scale,
        "seed": params.seed, "width": params.width, "height": params.height,
        "model": params.model or DEFAULT_MODEL, "clip_skip": params.clip_skip or DEFAULT_CLIP_SKIP,
        "loras": [(name, 1.0 if scale is None else scale)
                  for name, (_, scale) in params.loras.items() if name not in tagged],
    }
    if overrides.get("sampler") is None:
        if not params.sampler:
            fields["sampler"] = DEFAULT_SAMPLER
        elif overrides.get("schedule_type") is not None:  # keep the algorithm, change the schedule
            fields["sampler"] = get_sampler(params.sampler).name
        else:
            fields["sampler"] = sampler_from_infotext(params.sampler, params.schedule_type)
    if params.seed is not None and params.seed < 0 and overrides.get("seed") is None:
        logger.warning("the parameters hold Seed %d (random): a new random seed is drawn",
                       params.seed)
        fields["seed"] = None
    from synthex.generate.img2img import fields_from_parameters

    fields.update(fields_from_parameters(params, overrides))
    fields.update({key: value for key, value in overrides.items() if value is not None})
    return GenerationRequest(**fields)


_DEFAULT_ENGINE: Engine | None = None


def default_engine() -> Engine:
    """A process-wide engine (one cached model), created on first use."""
    global _DEFAULT_ENGINE
    if _DEFAULT_ENGINE is None:
        _DEFAULT_ENGINE = Engine()
    return _DEFAULT_ENGINE


def generate(request: GenerationRequest, callback: StepCallback | None = None) -> GenerationResult:
    """:meth:`Engine.generate` on :func:`default_engine`."""
    return default_engine().generate(request, callback)


__all__ = [
    "Engine", "GenerationRequest", "GenerationResult", "RequestError", "StepCallback",
    "decode_latents", "default_engine", "generate", "lora_file_name", "lora_hash", "parse_seed",
    "random_seed",
    "request_from_parameters", "resolve_device",
    "resolve_dtype", "resolve_seeds",
]
