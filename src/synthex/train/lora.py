"""LoRA fine-tuning of SD 1.x/2.x, SDXL and the embedded model: ``synthex train lora``.

The thesis ran diffusers' downloaded example script through ``accelerate launch``; this module
is our own loop with the same recipe (every option of the thesis has a field in
:class:`LoraTrainConfig`, see ``config/lora_thesis_sdxl.yaml``) plus what modern trainers add.

Procedure (one run folder, resumable at any point)::

    data     read the imagefolder (rows of one split, rejects listed in rejects.csv)
    model    load the base through the model registry (preset name or local folder), freeze
             it, add LoRA adapters (peft) to the UNet attention projections (to_q, to_k, to_v,
             to_out.0) and optionally to the text encoder(s)
    cache    VAE posterior (mean, std) of every image and, when the text encoder is frozen,
             the text embeddings of every distinct caption, once, to cache/*.safetensors
    train    epsilon / v MSE with min-SNR weighting, noise offset, caption dropout, optional
             class-balanced sampling and EMA; gradient accumulation, mixed precision,
             gradient checkpointing, 8-bit Adam; one process or many (accelerate DDP)
    save     pytorch_lora_weights.safetensors (diffusers format, loads with
             ``pipe.load_lora_weights``; alpha/rank is folded into the up weights so the file
             needs no alpha), metadata in the safetensors header, optional kohya export, the
             validation grid, and a preset in the user's model registry

Exact resume: the batch of optimizer step ``k`` (all its micro-batches on all processes) and all
of its noise are functions of ``(seed, k, process, micro-batch)``, and the LR is a function of
``k``; a checkpoint holds the LoRA weights, EMA weights and optimizer state as safetensors, so a
run killed at any moment continues from its last checkpoint to the same weights.

Run folder::

    config.yaml  state.json  training_log.csv  rejects.csv  tensorboard/
    cache/{latents.safetensors, text.safetensors}
    checkpoints/step_0000500/{lora.safetensors, optimizer.safetensors, pytorch_lora_weights.safetensors}
    samples/validation_step_*.png  validation.png
    pytorch_lora_weights.safetensors  [lora_kohya.safetensors]
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex import __version__
from synthex.errors import ConfigError, SynthexError
from synthex.train.scratch import (
    BatchOrder,
    _flatten,
    _save_image,
    _save_tensors,
    _write_text,
    caption_dropout_mask,
    check_numbers,
    check_run_folder,
    check_types,
    derived_seed,
    image_grid,
    min_snr_weights,
    read_config_file,
    save_optimizer,
)

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("no", "fp16", "bf16")
LOG_COLUMNS = ("step", "loss", "lr", "seconds", "images_per_s", "peak_memory_mb")
THESIS_CONFIG = Path(__file__).resolve().parent.parent / "config" / "lora_thesis_sdxl.yaml"
# Keys that may change between an interrupted run and its resume (they do not change the weights).
RUNTIME_KEYS = {"checkpoint_every", "keep_checkpoints", "validation_every", "validation_prompts",
                "validation_seeds", "validation_steps", "validation_guidance", "kohya", "data_workers",
                "register", "max_steps", "epochs"}


class LoraTrainingError(SynthexError):
    """A LoRA run cannot start or continue (bad option, data, model or resume)."""


class LoraConfigError(LoraTrainingError, ConfigError):
    """A LoRA option or config file is invalid (also a :class:`~synthex.errors.ConfigError`)."""


# =============================================================================================
# Configuration
# =============================================================================================
@dataclass
class LoraTrainConfig:
    """Everything that defines a ``train lora`` run (saved as the run's ``config.yaml``)."""

    model: str = "embedded"
    vae: str | None = None
    resolution: int | None = None          # None: the model's native size
    crop: str = "center"                   # center | smart (the thesis crop)
    split: str | None = "train"
    text_column: str = "text"
    trigger: str | None = None             # None: the dataset preset's trigger, if any
    rank: int = 8
    alpha: float | None = None             # None: = rank
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(UNET_TARGETS))
    train_text_encoder: bool = False
    text_encoder_rank: int | None = None
    batch_size: int = 1
    gradient_accumulation: int = 4
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 1500
    epochs: int | None = None              # when set, overrides max_steps
    mixed_precision: str = "no"
    use_8bit_adam: bool = False
    gradient_checkpointing: bool = False
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    seed: int = 42
    cache_latents: bool = True
    cache_text: bool = True
    caption_dropout: float = 0.0
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    balance_by: str | None = None          # metadata.csv column for class-balanced sampling
    ema_decay: float = 0.0
    hflip: bool = False                    # medical default: never flip (laterality is a finding)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    validation_steps: int = 20
    validation_guidance: float = 7.0
    kohya: bool = False
    register: str | None = None            # preset name to add to the user's model registry
    data_workers: int = 2

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "") -> "LoraTrainConfig":
        """Build from a (YAML) mapping; unknown keys, wrong types and bad values raise
        :class:`LoraConfigError` naming the key (and ``where`` it came from)."""
        cfg = cls(**_typed_lora_values(dict(values or {}), where))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "") -> None:
        """Every option checked: types, ranges, nan/inf, names of choices; one error lists all."""
        check_types(self.to_dict(), LoraTrainConfig, where=where, error=LoraConfigError)
        problems = check_numbers([
            ("rank", self.rank, ">=1"), ("text_encoder_rank", self.text_encoder_rank, ">=1"),
            ("alpha", self.alpha, ">0"), ("batch_size", self.batch_size, ">=1"),
            ("gradient_accumulation", self.gradient_accumulation, ">=1"),
            ("learning_rate", self.learning_rate, ">0"), ("text_encoder_lr", self.text_encoder_lr, ">0"),
            ("warmup_steps", self.warmup_steps, ">=0"), ("epochs", self.epochs, ">=1"),
            ("weight_decay", self.weight_decay, ">=0"), ("grad_clip", self.grad_clip, ">=0"),
            ("caption_dropout", self.caption_dropout, "[0,1)"), ("dropout", self.dropout, "[0,1)"),
            ("ema_decay", self.ema_decay, "[0,1)"), ("min_snr_gamma", self.min_snr_gamma, ">=0"),
            ("noise_offset", self.noise_offset, ">=0"), ("checkpoint_every", self.checkpoint_every, ">=1"),
            ("keep_checkpoints", self.keep_checkpoints, ">=1"), ("validation_every", self.validation_every, ">=0"),
            ("validation_steps", self.validation_steps, ">=1"),
            ("validation_guidance", self.validation_guidance, ">=0"), ("data_workers", self.data_workers, ">=0")])
        if self.max_steps < 1 and not self.epochs:
            problems.append(f"max_steps {self.max_steps} must be >= 1 (or set epochs)")
        if self.lr_scheduler not in SCHEDULES:
            problems.append(f"lr_scheduler {self.lr_scheduler!r} must be one of {SCHEDULES}")
        if self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed_precision {self.mixed_precision!r} must be one of {PRECISIONS}")
        if self.crop not in ("center", "smart"):
            problems.append(f"crop {self.crop!r} must be 'center' or 'smart'")
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 8):
            problems.append(f"resolution {self.resolution} must be a multiple of 8 and >= 32")
        if not self.target_modules:
            problems.append("target_modules is empty; the default is to_q, to_k, to_v, to_out.0")
        if not self.validation_seeds:
            problems.append("validation_seeds is empty")
        if problems:
            raise LoraConfigError(f"{where}invalid LoRA options: " + "; ".join(problems))


def _typed_lora_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(LoraTrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LoraConfigError(f"{where}unknown LoRA config key(s) {unknown}; known: {sorted(known)}")
    return check_types(values, LoraTrainConfig, where=where, error=LoraConfigError)


def load_lora_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LoraTrainConfig:
    """Read a YAML config (``thesis-sdxl`` names the packaged thesis recipe; None = defaults)
    and apply ``overrides`` (None values are ignored: unset CLI options). A malformed file, an
    unknown key, a wrong type or a bad value is a :class:`LoraConfigError` naming it."""
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = THESIS_CONFIG if str(path) == "thesis-sdxl" else Path(path)
        if not path.is_file():
            raise LoraConfigError(f"config file {path} does not exist (or use --config thesis-sdxl)")
        where = f"config file {path}: "
        values = _typed_lora_values(read_config_file(path, error=LoraConfigError), where)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    return LoraTrainConfig.from_dict(values, "" if given else where)


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every weight-changing key that differs."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k not in RUNTIME_KEYS)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def lr_multiplier(step: int, max_steps: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then constant, cosine to 0 or linear to 0 at ``max_steps``."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


# =============================================================================================
# Data: captions, trigger, class-balanced sampling
# =============================================================================================
def dataset_trigger(data_dir: Path) -> str | None:
    """The trigger phrase of the preset a dataset was prepared with (``prepare.json``), if any."""
    info = Path(data_dir) / "prepare.json"
    if not info.is_file():
        return None
    try:
        preset = json.loads(info.read_text(encoding="utf-8")).get("options", {}).get("preset")
        if not preset:
            return None
        from synthex.data.selection import get_preset

        return get_preset(preset).get("trigger")
    except Exception as exc:  # a custom presets file may be gone: the trigger is only metadata
        logger.info("could not read the trigger of %s (%s)", info, exc)
        return None


def class_weights(values: list[str]) -> "torch.Tensor":  # noqa: F821
    """Sampling weights that give every class the same total weight.

    A value may hold several classes joined by ``;`` (the ``labels`` column): the item then
    counts for each of them, and its weight is the mean of its classes' weights.
    """
    import torch

    groups = [[g.strip() or "(empty)" for g in str(v).split(";")] for v in values]
    counts: dict[str, int] = {}
    for g in groups:
        for c in g:
            counts[c] = counts.get(c, 0) + 1
    return torch.tensor([sum(1.0 / counts[c] for c in g) / len(g) for g in groups], dtype=torch.float64)


class StepBatches:
    """Row indices of every micro-batch of optimizer step ``k``: shape (accum, world, batch).

    Shuffled epochs (:class:`~synthex.train.scratch.BatchOrder`) or, with weights, sampling
    with replacement; either way a function of ``(seed, k)`` only.
    """

    def __init__(self, seed: int, n_items: int, batch: int, accum: int, world: int, weights=None):
        self.seed, self.shape, self.weights = seed, (accum, world, batch), weights
        self.order = BatchOrder(seed, "lora", n_items, batch * accum * world)

    def __call__(self, step: int):
        import torch

        if self.weights is None:
            flat = self.order.indices(step)
        else:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "balanced", step))
            flat = torch.multinomial(self.weights, math.prod(self.shape), replacement=True, generator=gen)
        return flat.reshape(self.shape)


# =============================================================================================
# The model: loading, text encoding, LoRA adapters
# =============================================================================================
@dataclass
class BaseModel:
    """The frozen base pipeline and what training needs to know about it."""

    loaded: Any                 # synthex.models.registry.LoadedModel
    family: str                 # sd | sdxl
    noise_scheduler: Any
    resolution: int
    weight_dtype: Any = None    # half precision of the frozen UNet / text encoders, if any

    @property
    def pipe(self):
        return self.loaded.pipe

    @property
    def text_encoders(self) -> list:
        pipe = self.pipe
        return [pipe.text_encoder] + ([pipe.text_encoder_2] if self.family == "sdxl" else [])

    @property
    def tokenizers(self) -> list:
        pipe = self.pipe
        return [pipe.tokenizer] + ([pipe.tokenizer_2] if self.family == "sdxl" else [])


def load_base(cfg: LoraTrainConfig, device) -> BaseModel:
    """Load the base model through the registry (offline), frozen, in float32."""
    import torch
    from diffusers import DDPMScheduler

    from synthex.models.registry import ModelRegistry

    registry = ModelRegistry()
    spec = registry.resolve(cfg.model)
    if cfg.vae:
        spec = dataclasses.replace(spec, vae=cfg.vae)
    loaded = registry.load(spec, device=device, dtype=torch.float32)
    pipe = loaded.pipe
    for module in (pipe.unet, pipe.vae, *([pipe.text_encoder] + ([pipe.text_encoder_2] if loaded.family == "sdxl" else []))):
        module.requires_grad_(False)
        module.eval()
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = cfg.resolution or loaded.native_size[0]
    factor = loaded.vae_scale_factor
    if resolution % factor:
        raise LoraTrainingError(f"resolution {resolution} must be a multiple of the VAE factor {factor}")
    return BaseModel(loaded, loaded.family, noise, resolution)


def tokenize_all(base: BaseModel, captions: list[str]) -> list:
    """Token ids (N, L) per tokenizer, padded/truncated like the diffusers pipelines."""
    return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").input_ids for tok in base.tokenizers]


def encode_text(base: BaseModel, ids: list, encoders: list | None = None):
    """(hidden states (N, L, D), pooled (N, D2) or None) as the pipelines compute them."""
    import torch

    encoders = encoders or base.text_encoders
    device = base.loaded.device
    if base.family == "sd":
        return encoders[0](ids[0].to(device))[0], None
    hidden, pooled = [], None
    for enc, tok_ids in zip(encoders, ids):
        out = enc(tok_ids.to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the projected pooled output of text_encoder_2 (the last one)
    return torch.cat(hidden, dim=-1), pooled


def add_adapters(base: BaseModel, cfg: LoraTrainConfig) -> dict[str, Any]:
    """Add LoRA adapters; returns the modules that train (name -> module)."""
    from peft import LoraConfig

    unet = base.pipe.unet
    try:
        unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                                    init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))
    except ValueError as exc:
        raise LoraTrainingError(f"target_modules {cfg.target_modules} do not match the UNet of "
                                f"{cfg.model!r}: {str(exc).splitlines()[0][:200]}") from exc
    trained = {"unet": unet}
    if cfg.train_text_encoder:
        rank = cfg.text_encoder_rank or cfg.rank
        names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
        for name, enc in zip(names, base.text_encoders):
            enc.add_adapter(LoraConfig(r=rank, lora_alpha=rank * cfg.lora_alpha / cfg.rank,
                                       lora_dropout=cfg.dropout, init_lora_weights="gaussian",
                                       target_modules=list(TEXT_TARGETS)))
            trained[name] = enc
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for name, module in trained.items():
            if name != "unet":
                module.gradient_checkpointing_enable()
    return trained


def lora_parameters(modules: dict[str, Any]) -> dict[str, Any]:
    """Trainable parameters by ``module.param`` name (the checkpoint's tensor names)."""
    return {f"{name}.{pname}": p for name, m in modules.items() for pname, p in m.named_parameters()
            if p.requires_grad}


def lora_state_dicts(modules: dict[str, Any], cfg: LoraTrainConfig) -> dict[str, dict]:
    """LoRA state dicts per module in peft naming (``<layer>.lora_A.weight`` / ``lora_B``), with
    alpha/rank folded into the B (up) weights.

    The peft naming is kept for every layer: diffusers' older ``lora.down``/``lora.up`` naming
    only covers attention projections, and a file mixing both namings (e.g. with ``proj_in``
    or feed-forward targets) silently loses its attention weights on load.
    """
    from peft.utils import get_peft_model_state_dict

    out = {}
    for name, module in modules.items():
        rank = cfg.rank if name == "unet" else (cfg.text_encoder_rank or cfg.rank)
        alpha = cfg.lora_alpha if name == "unet" else rank * cfg.lora_alpha / cfg.rank
        out[name] = {k: (v * (alpha / rank) if "lora_B" in k else v).detach().float().cpu().contiguous()
                     for k, v in get_peft_model_state_dict(module).items()}
    return out


def save_lora(path: Path, modules: dict[str, Any], cfg: LoraTrainConfig, family: str,
              metadata: dict[str, str]) -> Path:
    """Write a diffusers-format LoRA file (atomically) with ``metadata`` in its header."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import load_file

    states = lora_state_dicts(modules, cfg)
    tmp_dir = path.parent / f".tmp_{path.stem}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    kwargs = {"unet_lora_layers": states["unet"]}
    if "text_encoder" in states:
        kwargs["text_encoder_lora_layers"] = states["text_encoder"]
    if "text_encoder_2" in states:
        kwargs["text_encoder_2_lora_layers"] = states["text_encoder_2"]
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    cls.save_lora_weights(str(tmp_dir), weight_name=LORA_FILE, safe_serialization=True, **kwargs)
    tensors = load_file(str(tmp_dir / LORA_FILE))
    _save_tensors(tensors, path, {"format": "pt", **metadata, "synthex.saved_at": str(time.time())})
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a LoRA file (empty when none); a file that is not safetensors is
    an error naming it."""
    from synthex.train.kohya import read_lora_file

    return read_lora_file(Path(path))[1]


# kohya / AUTOMATIC1111 / ComfyUI export: synthex.train.kohya; the caches: synthex.train.caching
# (both re-exported here)
from synthex.train.caching import (  # noqa: F401
    _encode_latents,
    _read_cache,
    build_latent_cache,
    build_text_cache,
    cache_key,
)
from synthex.train.kohya import _KOHYA_PREFIX, export_kohya, to_kohya  # noqa: F401


# =============================================================================================
# Caches (latents, text embeddings)
# =============================================================================================
def read_pixels(data_dir: Path, names: list[str], resolution: int, crop: str):
    """Read, decode, resize and crop images from disk into [-1, 1] tensors (N, 1, R, R)."""
    import numpy as np
    import torch
    from PIL import Image

    from synthex.train.data import prepare_image, to_model_range

    arrays = []
    for name in names:
        with Image.open(Path(data_dir) / name) as image:
            arrays.append(prepare_image(image, resolution, crop))
    return to_model_range(torch.from_numpy(np.stack(arrays))[:, None])


# =============================================================================================
# Files of a run: log, checkpoints, TensorBoard
# =============================================================================================
class LoraLog:
    """``training_log.csv`` (one row per optimizer step, cut back to the checkpoint on resume)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            _write_text(path, ",".join(LOG_COLUMNS) + "\n")

    def truncate(self, last_step: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= last_step]
        _write_text(self.path, "\n".join(keep) + "\n")

    def append(self, row: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in LOG_COLUMNS) + "\n")


def peak_memory_mb(device) -> float:
    """Peak CUDA memory allocated, or this process's peak resident memory on CPU (MB)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _checkpoints(folder: Path) -> list[Path]:
    from synthex.train.checkpoints import complete_checkpoint_dirs

    return complete_checkpoint_dirs(folder)


# =============================================================================================
# The run
# =============================================================================================
@dataclass
class LoraResult:
    """What ``train_lora`` made."""

    run_dir: Path
    lora_file: Path
    kohya_file: Path | None
    steps: int
    n_images: int
    rejects: list
    trainable_parameters: int
    validation_grid: Path | None
    preset: str | None
    metadata: dict[str, str]


@dataclass
class StepInfo:
    """What the per-step callback receives (progress bars, UIs, tests that interrupt a run)."""

    step: int
    max_steps: int
    loss: float
    lr: float


def check_run_dir(run_dir: Path, cfg: LoraTrainConfig, data_dir: Path, resume: bool, world: int) -> bool:
    """Read-only checks (every process runs them); True when the run is new."""
    state = check_run_folder(run_dir, cfg.to_dict(), config_differences, data_dir, resume, kind="LoRA run",
                             error=LoraTrainingError, trainer="lora")
    if state is None:
        return True
    if state.get("world_size", world) != world:
        raise LoraTrainingError(f"cannot resume {run_dir} with {world} process(es): it started with "
                                f"{state['world_size']} (the batch of each step depends on it)")
    return False


def create_run_dir(run_dir: Path, cfg: LoraTrainConfig, data_dir: Path, world: int) -> None:
    """Write the new run's config.yaml and state.json (main process only)."""
    import yaml

    from synthex.train.data import metadata_fingerprint

    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _write_text(run_dir / "state.json", json.dumps({
        "trainer": "lora", "data_sha256": metadata_fingerprint(data_dir), "world_size": world,
        "session_id": random.SystemRandom().randrange(2**32), "training_started_at": time.time()}, indent=1))


def _make_optimizer(cfg: LoraTrainConfig, groups: list[dict]):
    import torch

    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb  # noqa: F401
        except ImportError as exc:
            raise LoraTrainingError("use_8bit_adam needs the bitsandbytes package (CUDA GPUs); "
                                    "pip install bitsandbytes, or train without --use-8bit-adam") from exc
        return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


class _ParamEma:
    """EMA of the LoRA parameters only (decay warms up as (1+k)/(10+k))."""

    def __init__(self, params: dict[str, Any], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in params.items()}

    def update(self, params: dict[str, Any], step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, p in params.items():
                self.shadow[k].lerp_(p.detach().float(), 1 - d)

    @contextlib.contextmanager
    def swapped_in(self, params: dict[str, Any]):
        """Temporarily put the EMA weights into the model (validation, final save)."""
        import torch

        backup = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(backup[k])


def train_lora(data_dir: str | Path, run_dir: str | Path, cfg: LoraTrainConfig | None = None, *,
               resume: bool = False, progress: bool = True,
               callback: Callable[[StepInfo], None] | None = None) -> LoraResult:
    """Fine-tune a LoRA on an imagefolder; see the module docstring. Works unchanged under
    ``accelerate launch`` (every process calls it with the same arguments)."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from synthex.train.data import load_imagefolder, metadata_fingerprint, read_metadata, save_rejects

    cfg = cfg or LoraTrainConfig()
    cfg.validate()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise LoraTrainingError("mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    # Mixed precision as in diffusers' scripts: frozen UNet / text encoders in half precision,
    # LoRA weights in float32, forward under autocast, fp16 gradients scaled by accelerate.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a process-wide singleton: let each run pick its precision
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=1)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    # --- run folder and data ------------------------------------------------------------
    columns = (cfg.balance_by,) if cfg.balance_by else ()
    read_metadata(data_dir, split=cfg.split, text_column=cfg.text_column)  # bad dataset: fail before the model loads
    is_new = check_run_dir(run_dir, cfg, data_dir, resume, world)  # every process fails alike
    accelerator.wait_for_everyone()
    if is_new and main:
        create_run_dir(run_dir, cfg, data_dir, world)
    accelerator.wait_for_everyone()
    base = load_base(cfg, device)
    resolution = base.resolution
    data = load_imagefolder(data_dir, resolution, split=cfg.split, text_column=cfg.text_column,
                            workers=cfg.data_workers, progress=progress and main, crop=cfg.crop, columns=columns)
    if main:
        save_rejects(data.rejects, run_dir / "rejects.csv")
    if cfg.hflip:
        logger.warning("hflip is on: horizontal flips swap left- and right-sided findings and the heart's side")
    trigger = cfg.trigger if cfg.trigger is not None else dataset_trigger(data_dir)
    global_batch = cfg.batch_size * cfg.gradient_accumulation * world
    max_steps = math.ceil(cfg.epochs * len(data) / global_batch) if cfg.epochs else cfg.max_steps

    # --- caches (main process computes them, the others read them) ----------------------
    loaded = base.loaded
    key_base = cache_key(loaded.model_hash, cfg, resolution, metadata_fingerprint(data_dir))
    latents = text = None
    use_text_cache = cfg.cache_text and not cfg.train_text_encoder
    if cfg.cache_text and cfg.train_text_encoder:
        logger.info("text-embedding cache off: the text encoder trains")
    for turn in ("main", "others"):
        if (turn == "main") == main:
            if cfg.cache_latents:
                latents = build_latent_cache(base, data, run_dir / "cache" / "latents.safetensors", key_base,
                                             progress and main)
            if use_text_cache:
                text = build_text_cache(base, data.captions, run_dir / "cache" / "text.safetensors",
                                        key_base + f"|{cfg.text_column}", progress and main)
        accelerator.wait_for_everyone()

    data.images = None  # pixels are not needed any more: latents are cached or read per step
    if weight_dtype != torch.float32:  # the VAE stays float32 (it encodes once, or per step uncached)
        for module in (base.pipe.unet, *base.text_encoders):
            module.to(dtype=weight_dtype)
        base.weight_dtype = weight_dtype

    # --- adapters, optimizer -------------------------------------------------------------
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):  # seeded init, the global random state untouched
        torch.manual_seed(derived_seed(cfg.seed, "lora-init"))
        trained = add_adapters(base, cfg)
    for module in trained.values():
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    params = lora_parameters(trained)
    n_trainable = sum(p.numel() for p in params.values())
    groups = [{"params": [p for k, p in params.items() if k.startswith("unet.")], "base_lr": cfg.learning_rate}]
    text_params = [p for k, p in params.items() if not k.startswith("unet.")]
    if text_params:
        groups.append({"params": text_params, "base_lr": cfg.text_encoder_lr or cfg.learning_rate})
    optimizer = _make_optimizer(cfg, groups)
    names = list(trained)
    prepared = accelerator.prepare(*trained.values(), optimizer)
    wrapped, optimizer = dict(zip(names, prepared[:-1])), prepared[-1]
    ema = _ParamEma(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    # --- resume ---------------------------------------------------------------------------
    ckpt_dir = run_dir / "checkpoints"
    start = resume_lora(ckpt_dir, params, ema, optimizer, main=main)
    if start and main:
        logger.info("resumed at step %d of %d", start, max_steps)
    log = LoraLog(run_dir / "training_log.csv") if main else None
    if log is not None:
        log.truncate(start)
    tb = _tensorboard(run_dir / "tensorboard") if main else None

    # --- the loop ---------------------------------------------------------------------------
    run_info = run_metadata(cfg, base, run_dir, data_dir, data.captions, world, max_steps)
    weights = class_weights(data.columns[cfg.balance_by]) if cfg.balance_by else None
    batches = StepBatches(cfg.seed, len(data), cfg.batch_size, cfg.gradient_accumulation, world, weights)
    pipe, sched = base.pipe, base.noise_scheduler
    scale = pipe.vae.config.scaling_factor
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    predict_v = sched.config.prediction_type == "v_prediction"
    ids_cache = tokenize_all(base, data.captions) if not use_text_cache else None
    empty_ids = tokenize_all(base, [""]) if not use_text_cache else None
    sizes = torch.tensor([[*hw, *tl] for hw, tl in zip(data.original_sizes, data.crops)], dtype=torch.float32)

    def micro_loss(indices, gen):
        n = len(indices)
        if latents is not None:
            mean, std = latents["mean"][indices], latents["std"][indices]
        else:  # the uncached path of diffusers' example scripts: read, decode, resize, encode
            pixels = read_pixels(data_dir, [data.file_names[i] for i in indices.tolist()], resolution, cfg.crop)
            with torch.no_grad():
                mean, std = _encode_latents(base, pixels)
            mean, std = mean.cpu(), std.cpu()
        x0 = (mean + std * torch.randn(mean.shape, generator=gen) - shift) * scale
        if cfg.hflip:
            flip = torch.rand(n, generator=gen) < 0.5
            x0[flip] = x0[flip].flip(-1)
        noise = torch.randn(x0.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((*x0.shape[:2], 1, 1), generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen)
        drop = caption_dropout_mask(n, cfg.caption_dropout, gen)
        if text is not None:
            rows = text["row"][indices].clone()
            rows[drop] = text["empty"]
            hidden = text["hidden"][rows].float().to(device)
            pooled = text["pooled"][rows].float().to(device) if "pooled" in text else None
        else:
            ids = [c[indices].clone() for c in ids_cache]
            for c, e in zip(ids, empty_ids):
                c[drop] = e[0]
            encs = [wrapped.get(k, enc) for k, enc in zip(("text_encoder", "text_encoder_2"), base.text_encoders)]
            with contextlib.nullcontext() if cfg.train_text_encoder else torch.no_grad():
                hidden, pooled = encode_text(base, ids, encs)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        kwargs = {}
        if base.family == "sdxl":
            time_ids = torch.cat([sizes[indices][:, :4], torch.full((n, 2), float(resolution))], dim=1)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(weight_dtype),
                                           "time_ids": time_ids.to(device, weight_dtype)}
        noisy = sched.add_noise(x0, noise, t)
        with accelerator.autocast():
            pred = wrapped["unet"](noisy.to(weight_dtype), t, hidden.to(weight_dtype), **kwargs).sample
        target = sched.get_velocity(x0, noise, t) if predict_v else noise
        per = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        return (per * min_snr_weights(sched, t.cpu(), cfg.min_snr_gamma, sched.config.prediction_type).to(device)).mean()

    train_params = list(params.values())
    for m in wrapped.values():
        m.train()
    bar = tqdm(total=max_steps, initial=start, desc="lora", unit="step", disable=not (progress and main))
    for step in range(start + 1, max_steps + 1):
        t0 = time.perf_counter()
        factor = lr_multiplier(step, max_steps, cfg.warmup_steps, cfg.lr_scheduler)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        step_idx = batches(step)
        total = 0.0
        rng = contextlib.ExitStack()
        if cfg.dropout > 0:  # peft's LoRA dropout draws from the global generator: fork it, seeded by the step
            rng.enter_context(torch.random.fork_rng(devices=rng_devices))
            torch.manual_seed(derived_seed(cfg.seed, "dropout", step, rank))
        with rng:
            for micro in range(cfg.gradient_accumulation):
                gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "noise", step, rank, micro))
                sync = micro == cfg.gradient_accumulation - 1
                with contextlib.ExitStack() as stack:
                    if not sync:
                        for m in wrapped.values():
                            stack.enter_context(accelerator.no_sync(m))
                    loss = micro_loss(step_idx[micro, rank], gen) / cfg.gradient_accumulation
                    if not torch.isfinite(loss):
                        raise LoraTrainingError(f"loss is {loss.item()} at step {step}; lower the learning rate "
                                                f"({cfg.learning_rate}) or resume from the last checkpoint")
                    accelerator.backward(loss)
                total += loss.detach()
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(train_params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(params, step)
        mean_loss = accelerator.reduce(total.reshape(1), reduction="mean").item()
        seconds, lr = time.perf_counter() - t0, cfg.learning_rate * factor
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        if main:
            row = {"step": step, "loss": mean_loss, "lr": lr, "seconds": seconds,
                   "images_per_s": global_batch / max(seconds, 1e-9), "peak_memory_mb": peak_memory_mb(device)}
            log.append(row)
            if tb is not None:
                tb.scalars(step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": row["images_per_s"],
                                  "train/peak_memory_mb": row["peak_memory_mb"]})
        if step % cfg.checkpoint_every == 0 or step == max_steps:
            if main:
                _save_checkpoint(ckpt_dir, step, params, ema, optimizer, cfg, trained, base, _metadata(
                    cfg, base, data_dir, trigger, step, len(data), run_info))
            accelerator.wait_for_everyone()
        if main and cfg.validation_every and step % cfg.validation_every == 0 and step != max_steps:
            with ema.swapped_in(params) if ema else contextlib.nullcontext():
                validation_grid(base, cfg, _validation_prompts(cfg, data, trigger),
                                run_dir / "samples" / f"validation_step_{step:07d}.png")
            for m in wrapped.values():
                m.train()
        if callback is not None:
            callback(StepInfo(step, max_steps, mean_loss, lr))
    bar.close()
    if tb is not None:
        tb.close()

    # --- outputs (main process) --------------------------------------------------------------
    for m in wrapped.values():
        m.eval()
    metadata = _metadata(cfg, base, data_dir, trigger, max_steps, len(data), run_info)
    lora_file, kohya_file, grid, preset = run_dir / LORA_FILE, None, None, None
    if main:
        with ema.swapped_in(params) if ema else contextlib.nullcontext():
            save_lora(lora_file, trained, cfg, base.family, metadata)
            prompts = _validation_prompts(cfg, data, trigger)
            if prompts:
                grid = validation_grid(base, cfg, prompts, run_dir / "validation.png")
        if cfg.kohya:
            kohya_file = export_kohya(lora_file, run_dir / KOHYA_FILE, overwrite=True)
        if cfg.register:
            from synthex.models.registry import register_lora_preset

            preset = register_lora_preset(cfg.register, cfg.model, lora_file, description=(
                f"LoRA {cfg.register} on {cfg.model} ({max_steps} steps, rank {cfg.rank}"
                + (f", trigger {trigger!r}" if trigger else "") + ")"))
    accelerator.wait_for_everyone()
    return LoraResult(run_dir, lora_file, kohya_file, max_steps, len(data), data.rejects, n_trainable, grid,
                      preset, metadata)


def _metadata(cfg: LoraTrainConfig, base: BaseModel, data_dir: Path, trigger: str | None, steps: int,
              n_images: int, run: dict[str, str] | None = None) -> dict[str, str]:
    """The ``synthex.*`` header of a LoRA file; ``run`` adds the run's facts (name, session,
    start time, processes, budget, tag counts) that the kohya export turns into ``ss_*`` keys."""
    from synthex.train.data import metadata_fingerprint

    spec = base.loaded.spec
    return {
        "synthex.software": f"SynTheX-Ray {__version__}",
        "synthex.base_model": spec.name, "synthex.base_model_source": str(spec.source),
        "synthex.base_model_hash": str(base.loaded.model_hash or ""), "synthex.family": base.family,
        "synthex.rank": str(cfg.rank), "synthex.alpha": str(cfg.lora_alpha), "synthex.alpha_folded": "true",
        "synthex.target_modules": ",".join(cfg.target_modules),
        "synthex.text_encoder": str(cfg.train_text_encoder).lower(), "synthex.steps": str(steps),
        "synthex.resolution": str(base.resolution), "synthex.images": str(n_images),
        "synthex.dataset_sha256": metadata_fingerprint(data_dir), "synthex.trigger": trigger or "",
        "synthex.note": "Images made with this adapter are synthetic; for research, not diagnosis.",
        **(run or {}),
    }


def run_metadata(cfg: LoraTrainConfig, base: BaseModel, run_dir: Path, data_dir: Path, captions: list[str],
                 world: int, max_steps: int) -> dict[str, str]:
    """The run's facts recorded in every LoRA file it writes (see :func:`_metadata`)."""
    from synthex.train.kohya import optimizer_name, tag_frequency
    from synthex.train.scratch import read_run_file

    state = read_run_file(run_dir / "state.json", error=LoraTrainingError) if (run_dir / "state.json").is_file() else {}
    started = state.get("training_started_at") or (run_dir / "config.yaml").stat().st_mtime
    session = state.get("session_id", derived_seed(cfg.seed, metadata_fingerprint_or_empty(data_dir)) % 2**32)
    cross = getattr(base.pipe.unet.config, "cross_attention_dim", None)
    version = "sdxl_base_v1-0" if base.family == "sdxl" else ("sd_v2" if cross == 1024 else "sd_v1")
    dataset = Path(data_dir).resolve().name
    return {
        "synthex.run_name": Path(run_dir).resolve().name, "synthex.session_id": str(session),
        "synthex.training_started_at": str(started), "synthex.world_size": str(world),
        "synthex.max_steps": str(max_steps), "synthex.base_model_version": version,
        "synthex.optimizer": optimizer_name(cfg.to_dict()), "synthex.dataset_dir": dataset,
        "synthex.tag_frequency": json.dumps({dataset: tag_frequency(captions)}),
        "synthex.config": json.dumps(cfg.to_dict()),
    }


def metadata_fingerprint_or_empty(data_dir: Path) -> str:
    from synthex.train.data import metadata_fingerprint

    return metadata_fingerprint(data_dir) if (Path(data_dir) / "metadata.csv").is_file() else ""


def checkpoint_files(ema) -> list[str]:
    """The files a LoRA checkpoint must hold to resume from it."""
    return ["lora.safetensors", *(["ema.safetensors"] if ema is not None else []), "optimizer.safetensors"]


def resume_lora(folder: Path, params: dict, ema, optimizer, *, main: bool = True) -> int:
    """Load the newest readable LoRA checkpoint of ``folder`` into the LoRA parameters, EMA and
    optimizer (older ones when the newest is truncated, with a warning); returns its step."""
    import torch

    from synthex.train.checkpoints import load_latest_checkpoint

    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer

    def apply(ckpt) -> None:
        weights = ckpt.tensors["lora"]
        unknown = [k for k in params if k not in weights]
        if unknown or len(weights) != len(params):
            raise KeyError(f"lora.safetensors has {len(weights)} tensors, the model {len(params)} LoRA "
                           f"parameters (first missing: {unknown[:1]})")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])
        if ema is not None:
            shadow = {k: v.float() for k, v in ckpt.tensors["ema"].items()}
            if set(shadow) != set(params):
                raise KeyError("ema.safetensors does not hold the LoRA parameters")
            ema.shadow = shadow
        inner.load_state_dict(ckpt.optimizer)

    ckpt = load_latest_checkpoint(folder, checkpoint_files(ema), apply, what="lora", quarantine=main,
                                  error=LoraTrainingError)
    return ckpt.step if ckpt else 0


def _save_checkpoint(folder: Path, step: int, params: dict, ema, optimizer, cfg: LoraTrainConfig,
                     trained: dict, base: BaseModel, metadata: dict[str, str]) -> Path:
    """``folder/step_XXXXXXX`` written to a temp folder, synced, then renamed; keeps the last N."""
    from synthex.train.checkpoints import write_checkpoint

    def write(tmp: Path) -> None:
        _save_tensors({k: p.detach().float().cpu() for k, p in params.items()}, tmp / "lora.safetensors")
        if ema is not None:
            _save_tensors(ema.shadow, tmp / "ema.safetensors")
        save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                       tmp / "optimizer.safetensors")
        with ema.swapped_in(params) if ema else contextlib.nullcontext():
            save_lora(tmp / LORA_FILE, trained, cfg, base.family, {**metadata, "synthex.steps": str(step)})

    return write_checkpoint(folder, step, {}, write, cfg.keep_checkpoints)


def _validation_prompts(cfg: LoraTrainConfig, data, trigger: str | None) -> list[str]:
    if cfg.validation_prompts:
        return list(cfg.validation_prompts)
    prompts = list(dict.fromkeys(data.captions))[:2]
    if trigger:
        positives = [c for c in data.captions if trigger in c]
        prompts = positives[:1] + [c for c in data.captions if trigger not in c][:1]
    return prompts


def validation_grid(base: BaseModel, cfg: LoraTrainConfig, prompts: list[str], path: Path) -> Path:
    """Prompts (rows) x fixed seeds (columns) with DPM++ 2M at the validation settings."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    pipe = base.pipe
    original = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    rows = []
    half = base.weight_dtype is not None and base.weight_dtype != torch.float32
    autocast = torch.autocast(base.loaded.device.type, dtype=base.weight_dtype) if half else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            for prompt in prompts:
                gens = [torch.Generator().manual_seed(s) for s in cfg.validation_seeds]
                rows.append(pipe([prompt] * len(gens), num_inference_steps=cfg.validation_steps,
                                 guidance_scale=cfg.validation_guidance, generator=gens,
                                 height=base.resolution, width=base.resolution).images)
    finally:
        pipe.scheduler = original
    _save_image(image_grid(rows, prompts), path)
    return path


def _tensorboard(folder: Path):
    """A TensorBoard event writer (our own minimal one; no tensorboard package needed)."""
    from synthex.train.tblog import EventWriter

    return EventWriter(folder)
