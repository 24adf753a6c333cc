"""Train the embedded model from scratch: ``synthex train base``.

One call runs five stages into one run folder; each stage is skipped when already done, and an
interrupted stage resumes from its last checkpoint with nothing lost:

1. ``data``      read the imagefolder once (uint8 tensors cached in ``cache/``; rejects listed
                 in ``rejects.csv``);
2. ``tokenizer`` train a CLIP-style BPE on the training captions (``tokenizer/``);
3. ``vae``       train the 1-channel AutoencoderKL (L1 + L2 + edge + small KL);
4. ``latents``   encode every training image ONCE (posterior mean and std in
                 ``cache/latents.safetensors``) and set the VAE's ``scaling_factor`` to 1/std;
5. ``unet``      train the UNet and the text encoder jointly on the cached latents (epsilon or
                 v MSE, min-SNR weighting, 10% empty captions for classifier-free guidance,
                 AdamW, warm-up + cosine LR, EMA), validation grids at fixed seeds;
6. ``export``    ``pipeline/``: a diffusers ``StableDiffusionPipeline`` folder (safetensors).

Exact resume: the batch of step ``k`` and all of its noise come from generators seeded by
``(seed, stage, k)`` and the LR is a function of ``k``, so a checkpoint needs only weights,
EMA weights and the optimizer state (all safetensors; nothing is pickled). The CSV log is cut
back to the checkpoint's step on resume, so it has every step once.

Run folder::

    config.yaml  state.json  training_log.csv  rejects.csv
    cache/{images.safetensors, captions.json, latents.safetensors}
    tokenizer/  vae/  checkpoints/{vae,unet}/step_0000200/  samples/*.png  pipeline/
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex.errors import ConfigError, OutputExistsError, SynthexError
from synthex.models.embedded import EmbeddedArch
from synthex.train.caching import (
    LATENTS_FILE,
    _readable_safetensors,
    read_image_cache,
    read_scaled_latents,
    write_image_cache,
    write_scaled_latents,
)
from synthex.train.data import Reject
from synthex.train.loop import (  # noqa: F401 (re-exported: the loop lives in train/loop.py)
    LOG_COLUMNS,
    BatchOrder,
    Ema,
    LoopSpec,
    RunContext,
    StepEvent,
    TrainingLog,
    _checkpoint_dirs,
    _load_module,
    _save_tensors,
    _write_text,
    derived_seed,
    load_optimizer,
    lr_factor,
    restore_checkpoint,
    run_loop,
    save_checkpoint,
    save_optimizer,
    step_generator,
)

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "embedded_base.yaml"
STAGES = ("data", "tokenizer", "vae", "latents", "unet", "export")
# Keys that may change between an interrupted run and its resume (they do not change the weights).
RUNTIME_KEYS = {"data_workers", "keep_checkpoints", "vae.checkpoint_every", "unet.checkpoint_every",
                "unet.validate_every"}
RUNTIME_PREFIXES = ("validation.",)
# Budgets that a resume may raise (never lower): the run continues to the new number of steps.
EXTENDABLE_KEYS = ("vae.max_steps", "unet.max_steps")


# =============================================================================================
# 1. Configuration
# =============================================================================================
@dataclass
class VaeStage:
    max_steps: int = 1200
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 0.5
    kl_weight: float = 1e-5
    checkpoint_every: int = 200


@dataclass
class UnetStage:
    max_steps: int = 2400
    batch_size: int = 32
    lr: float = 5e-4
    text_lr: float | None = None
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    validate_every: int = 0


@dataclass
class ValidationSpec:
    prompts: list[str] = field(default_factory=lambda: [
        "Chest x-ray. Normal. The heart size is normal. The lungs are clear.",
        "Chest x-ray. Cardiomegaly. The heart is enlarged. No pleural effusion.",
        "Chest x-ray. Opacity lung base right. Right basilar airspace opacity.",
        "Chest x-ray. Pleural Effusion left. Moderate left pleural effusion.",
    ])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 20
    guidance_scale: float = 4.0


@dataclass
class ScratchConfig:
    """Everything that defines a ``train base`` run (saved as the run's ``config.yaml``)."""

    resolution: int = 128
    seed: int = 42
    split: str | None = "train"
    text_column: str = "text"
    caption_columns: list[str] = field(default_factory=list)  # alternative captions, one drawn per step
    init_from: str | None = None  # a diffusers folder of the same architecture (or "embedded") to start from
    train_vae: bool = False  # with init_from: also fine-tune its VAE (otherwise it is kept as it is)
    vocab_size: int = 3000
    arch: EmbeddedArch = field(default_factory=EmbeddedArch)
    vae: VaeStage = field(default_factory=VaeStage)
    unet: UnetStage = field(default_factory=UnetStage)
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    save_dtype: str = "float32"
    keep_checkpoints: int = 2
    data_workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["arch"] = self.arch.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> "ScratchConfig":
        """Build from a (YAML) mapping; unknown keys, wrong types and bad values raise
        :class:`~synthex.errors.ConfigError` naming the key (and ``where`` it came from)."""
        values = _typed_values(dict(values or {}), where)
        for key, kind in (("vae", VaeStage), ("unet", UnetStage), ("validation", ValidationSpec)):
            if not isinstance(values.get(key), kind):
                values[key] = kind(**(values.get(key) or {}))
        if not isinstance(values.get("arch"), EmbeddedArch):
            values["arch"] = EmbeddedArch.from_dict(values.get("arch"))
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "") -> None:
        """Every setting checked (types, ranges, nan/inf, a resolution the VAE and UNet can
        take); one :class:`~synthex.errors.ConfigError` lists every problem."""
        from synthex.models.embedded import embedded_configs

        sections = {"arch": self.arch, "vae": self.vae, "unet": self.unet, "validation": self.validation}
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in sections}
        check_types(top, ScratchConfig, where=where)
        for key, section in sections.items():
            check_types(dataclasses.asdict(section), type(section), prefix=key + ".", where=where)
        problems = []
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            problems.append(f"save_dtype {self.save_dtype!r} must be float32, float16 or bfloat16")
        for name, stage in (("vae", self.vae), ("unet", self.unet)):
            if stage.schedule not in ("cosine", "constant"):
                problems.append(f"{name}.schedule {stage.schedule!r} must be 'cosine' or 'constant'")
            problems += check_numbers([
                (f"{name}.max_steps", stage.max_steps, ">=1"), (f"{name}.batch_size", stage.batch_size, ">=1"),
                (f"{name}.lr", stage.lr, ">0"), (f"{name}.warmup_steps", stage.warmup_steps, ">=0"),
                (f"{name}.min_lr_ratio", stage.min_lr_ratio, "[0,1]"),
                (f"{name}.weight_decay", stage.weight_decay, ">=0"), (f"{name}.grad_clip", stage.grad_clip, ">=0"),
                (f"{name}.checkpoint_every", stage.checkpoint_every, ">=1")])
        v, u = self.vae, self.unet
        problems += check_numbers([
            ("vae.l1_weight", v.l1_weight, ">=0"), ("vae.l2_weight", v.l2_weight, ">=0"),
            ("vae.edge_weight", v.edge_weight, ">=0"), ("vae.kl_weight", v.kl_weight, ">=0"),
            ("unet.text_lr", u.text_lr, ">0"), ("unet.caption_dropout", u.caption_dropout, "[0,1)"),
            ("unet.min_snr_gamma", u.min_snr_gamma, ">=0"), ("unet.noise_offset", u.noise_offset, ">=0"),
            ("unet.ema_decay", u.ema_decay, "[0,1)"), ("unet.validate_every", u.validate_every, ">=0"),
            ("validation.steps", self.validation.steps, ">=1"),
            ("validation.guidance_scale", self.validation.guidance_scale, ">=0"),
            ("resolution", self.resolution, ">=1"), ("keep_checkpoints", self.keep_checkpoints, ">=1"),
            ("data_workers", self.data_workers, ">=0")])
        if self.vocab_size < 600:
            problems.append(f"vocab_size {self.vocab_size} must be >= 600 (512 byte symbols + merges)")
        if not self.validation.prompts or not self.validation.seeds:
            problems.append("validation.prompts and validation.seeds must not be empty")
        if problems:
            raise ConfigError(f"{where}invalid training options: " + "; ".join(problems))
        try:
            embedded_configs(self.resolution, self.arch)  # the resolution the VAE and UNet levels need
        except ConfigError as err:
            raise ConfigError(f"{where}{err}; pick another --resolution (resolution:) or arch") from err


def _check_keys(values: dict, kind, prefix: str, where: str = "") -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        raise ConfigError(f"{where}unknown config key(s) {[prefix + k for k in unknown]}; known: "
                           f"{sorted(prefix + f.name for f in dataclasses.fields(kind))}")


def _is_union(hint) -> bool:
    import types
    import typing

    origin = typing.get_origin(hint)
    return origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType)


def _type_name(hint) -> str:
    import typing

    args = typing.get_args(hint)
    if _is_union(hint):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint) -> tuple[bool, Any]:
    """(fits, value) for a YAML / CLI value and a field annotation. A number written as a string
    (YAML 1.1 reads ``1e-4`` as a string) becomes a float; an int is a valid float."""
    import typing

    args = typing.get_args(hint)
    if _is_union(hint):
        if value is None:
            return type(None) in args, None
        for arg in args:
            if arg is not type(None):
                ok, out = _coerce(value, arg)
                if ok:
                    return True, out
        return False, value
    if typing.get_origin(hint) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        coerced = [_coerce(v, args[0] if args else Any) for v in value]
        if not all(ok for ok, _ in coerced):
            return False, value
        return True, type(value)(v for _, v in coerced)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value.strip())
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def check_types(values: dict, kind, *, prefix: str = "", where: str = "",
                error: type[SynthexError] = ConfigError) -> dict:
    """``values`` with every key of the dataclass ``kind`` type-checked against its annotation
    (integers, numbers, true/false, strings, lists, null where optional); a wrong type raises
    ``error`` naming the key and ``where`` it came from (e.g. "config file x.yaml: ")."""
    import typing

    hints = typing.get_type_hints(kind)
    out = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            continue
        ok, coerced = _coerce(value, hint)
        if not ok:
            raise error(f"{where}{prefix}{key} is {value!r}, which is not {_type_name(hint)}; fix {prefix}{key}")
        out[key] = coerced
    return out


def check_numbers(checks: list[tuple[str, Any, str]]) -> list[str]:
    """Problems of numeric settings ``(name, value, rule)``, rule one of ``>0``, ``>=0``, ``>=1``,
    ``[0,1)``, ``[0,1]``, ``finite``; None is skipped, nan and inf always fail."""
    texts = {">0": "a finite number > 0", ">=0": "a finite number >= 0", ">=1": ">= 1", "[0,1)": "in [0, 1)",
             "[0,1]": "in [0, 1]", "finite": "a finite number"}
    problems = []
    for name, value, rule in checks:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} {value!r} must be a number")
            continue
        fails = {">0": value <= 0, ">=0": value < 0, ">=1": value < 1, "[0,1)": not 0 <= value < 1,
                 "[0,1]": not 0 <= value <= 1, "finite": False}[rule]
        if fails or not math.isfinite(value):
            problems.append(f"{name} {value!r} must be {texts[rule]}")
    return problems


def read_config_file(path: Path, *, error: type[SynthexError] = ConfigError) -> dict:
    """A YAML config file as a mapping; a missing, non-UTF-8, malformed or non-mapping file is an
    error naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise error(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                    "save it as UTF-8") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"config file {path} is not valid YAML ({problem}{at}); fix the file") from err
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise error(f"config file {path} must hold a mapping (key: value lines), not {type(values).__name__}")
    return values


def _typed_values(values: dict, where: str) -> dict:
    """A ``train base`` mapping with known keys and types only (sections included)."""
    _check_keys(values, ScratchConfig, "", where)
    values = check_types(values, ScratchConfig, where=where)
    for key, kind in (("vae", VaeStage), ("unet", UnetStage), ("validation", ValidationSpec), ("arch", EmbeddedArch)):
        section = values.get(key)
        if section is None or isinstance(section, kind):
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{where}{key} is {section!r}; it must be a mapping of {key}.* settings")
        _check_keys(section, kind, key + ".", where)
        values[key] = check_types(section, kind, prefix=key + ".", where=where)
    return values


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> ScratchConfig:
    """Read a YAML config (default: the packaged ``embedded_base.yaml``) and apply overrides.

    ``overrides`` maps dotted keys to values, e.g. ``{"vae.max_steps": 10, "resolution": 64}``;
    None values are ignored (unset CLI options).
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = read_config_file(path)
    where = f"config file {path}: "
    _typed_values(copy.deepcopy(values), where)  # keys and types of the file, named with the file
    given = apply_overrides(values, overrides, where)
    return ScratchConfig.from_dict(values, "" if given else where)


def apply_overrides(values: dict, overrides: dict | None, where: str) -> dict[str, Any]:
    """Set dotted ``overrides`` (``{"vae.max_steps": 10}``; None values = unset CLI options,
    ignored) in the nested config ``values``; returns the overrides that were applied."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{where}{part} must be a mapping of {part}.* settings")
            node = node.setdefault(part, {})
        node[leaf] = value
    return given


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every result-changing key that differs."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k not in RUNTIME_KEYS and not k.startswith(RUNTIME_PREFIXES))
    out = []
    for k in keys:
        if a.get(k) == b.get(k):
            continue
        if k in EXTENDABLE_KEYS and isinstance(a.get(k), int) and isinstance(b.get(k), int) and b[k] > a[k]:
            continue  # a larger budget: the run is extended, see extend_budget
        suffix = " (a budget can be raised on resume, not lowered)" if k in EXTENDABLE_KEYS else ""
        out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}{suffix}")
    return out


# =============================================================================================
# 2. Small pure helpers: caption dropout, losses (seeds, batches, LR, files and the loop: train/loop.py)
# =============================================================================================
def caption_dropout_mask(n: int, p: float, generator):
    """Boolean mask: True where a caption is replaced by the empty caption (probability p)."""
    import torch

    return torch.rand(n, generator=generator) < p


def drop_captions(captions: list[str], p: float, generator) -> list[str]:
    """Captions with each one emptied with probability ``p`` (for classifier-free guidance)."""
    mask = caption_dropout_mask(len(captions), p, generator)
    return ["" if m else c for c, m in zip(captions, mask.tolist())]


def min_snr_weights(scheduler, timesteps, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023); all ones when ``gamma <= 0``."""
    import torch

    if gamma <= 0:
        return torch.ones(len(timesteps))
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def edge_l1(a, b):
    """L1 distance between the horizontal and vertical finite differences of two images."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


# =============================================================================================
# 5. The stages
# =============================================================================================
@dataclass
class TrainResult:
    """What ``train_base`` made."""

    run_dir: Path
    pipeline_dir: Path
    parameters: dict[str, int]
    size_mb: float
    n_images: int
    rejects: list[Reject]
    validation_grid: Path
    scaling_factor: float


class _Run:
    """State shared by the stages of one run (paths, config, the components being built)."""

    def __init__(self, data_dir: Path, run_dir: Path, cfg: ScratchConfig, ctx: RunContext):
        import torch

        from synthex.models.embedded import embedded_configs

        self.data_dir, self.dir, self.cfg, self.ctx = Path(data_dir), Path(run_dir), cfg, ctx
        self.configs = embedded_configs(cfg.resolution, cfg.arch)
        self.state = read_run_file(self.dir / "state.json") if (self.dir / "state.json").exists() else {}
        self.state.setdefault("done", [])
        self.torch = torch
        self.data = self.tokenizer = self.components = self.latents = None
        self.alternatives: list[list[str]] = []

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def undo(self, stage: str, reason: str) -> None:
        """Reopen a finished stage whose output is unreadable (it is redone, or restored from its
        last checkpoint, to the same result)."""
        logger.warning("%s; redoing the %s stage", reason, stage)
        self.state["done"] = [d for d in self.state["done"] if d != stage]

    def mark_done(self, stage: str, **info: Any) -> None:
        if stage not in self.state["done"]:
            self.state["done"].append(stage)
        self.state.update(info)
        _write_text(self.dir / "state.json", json.dumps(self.state, indent=1))

    def build(self) -> dict[str, Any]:
        """Freshly initialised components (same init every time: seeded by the run's seed), or
        the weights of ``init_from`` (a warm start)."""
        from synthex.models.embedded import build_components

        gen = self.torch.Generator().manual_seed(derived_seed(self.cfg.seed, "init"))
        components = build_components(self.configs, self.tokenizer, gen)
        if self.cfg.init_from:
            folder = init_folder(self.cfg.init_from)
            for name, sub in (("vae", "vae"), ("unet", "unet"), ("text_encoder", "text_encoder")):
                _load_pretrained_into(components[name], folder / sub, name, folder)
        return components


def init_folder(value: str) -> Path:
    """The diffusers folder named by ``init_from``: "embedded" (the shipped model) or a path."""
    if value == "embedded":
        from synthex.models.embedded import EMBEDDED_DIR

        return Path(EMBEDDED_DIR)
    folder = Path(value)
    if not (folder / "model_index.json").is_file():
        raise SynthexError(f"init_from {value!r} is not a diffusers pipeline folder (no model_index.json); "
                           "pass 'embedded' or the pipeline/ folder of an earlier 'synthex train base' run")
    return folder


def _load_pretrained_into(module, sub: Path, name: str, folder: Path) -> None:
    """Copy the safetensors weights in ``sub`` into ``module``; a shape mismatch is an error."""
    from safetensors.torch import load_file

    files = sorted(sub.glob("*.safetensors"))
    if not files:
        raise SynthexError(f"init_from {folder}: {sub} has no .safetensors weights")
    own = module.state_dict()
    from synthex.models.compat import remap_text_keys

    state = remap_text_keys(load_file(str(files[0])), own.keys())  # either text-encoder key naming
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong:
        raise SynthexError(f"init_from {folder}: the {name} weights do not fit the configured architecture "
                           f"({len(wrong)} tensors missing or of another shape, first {wrong[0]!r}); use the "
                           "same arch: settings as the model you start from")
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def stage_data(run: _Run) -> None:
    """Read the imagefolder once; cache uint8 images and captions in the run folder."""
    from synthex.train.data import ImageTextData, load_imagefolder, save_rejects

    cache = run.dir / "cache"
    if run.done("data"):
        try:
            images, meta = read_image_cache(cache)
            run.data = ImageTextData(images, meta["captions"], meta["file_names"],
                                     [Reject(**r) for r in meta["rejects"]])
            run.alternatives = meta.get("alternatives") or [meta["captions"]]
            return
        except Exception as err:  # noqa: BLE001 - a truncated or missing cache is rebuilt, never fatal
            run.undo("data", f"{cache} is unreadable ({type(err).__name__}: {str(err)[:120]})")
    cfg = run.cfg
    data = load_imagefolder(run.data_dir, cfg.resolution, split=cfg.split, text_column=cfg.text_column,
                            workers=cfg.data_workers, progress=run.ctx.progress,
                            columns=tuple(cfg.caption_columns))
    # an empty alternative falls back to the main caption (never an accidental unconditional sample)
    run.alternatives = [data.captions] + [[alt.strip() or main for alt, main in zip(data.columns[c], data.captions)]
                                          for c in cfg.caption_columns]
    cache.mkdir(parents=True, exist_ok=True)
    save_rejects(data.rejects, run.dir / "rejects.csv")
    meta = {"captions": data.captions, "file_names": data.file_names,
            "rejects": [dataclasses.asdict(r) for r in data.rejects], "alternatives": run.alternatives}
    write_image_cache(cache, data.images, meta)
    run.data = data
    run.mark_done("data", n_images=len(data), n_rejects=len(data.rejects))
    logger.info("data: %d images (%d rejected rows listed in rejects.csv)", len(data), len(data.rejects))


def stage_tokenizer(run: _Run) -> None:
    from synthex.models.embedded import load_tokenizer, save_tokenizer, train_tokenizer

    folder = run.dir / "tokenizer"
    if not run.done("tokenizer"):
        if run.cfg.init_from:  # a warm start keeps the vocabulary its text encoder was trained with
            tok = load_tokenizer(init_folder(run.cfg.init_from) / "tokenizer")
        else:
            tok = train_tokenizer([c for alts in run.alternatives for c in alts], run.cfg.vocab_size)
        shutil.rmtree(folder, ignore_errors=True)
        save_tokenizer(tok, folder)
        run.mark_done("tokenizer", vocab_size=len(tok))
        logger.info("tokenizer: %d tokens", len(tok))
    run.tokenizer = load_tokenizer(folder)
    run.components = run.build()


def stage_vae(run: _Run) -> None:
    """Train the VAE (skipped when done); leaves the trained VAE in ``run.components``."""
    vae, folder = run.components["vae"], run.dir / "vae"
    if run.done("vae"):
        try:
            _load_module(vae, folder / "vae.safetensors")
            vae.eval()
            return
        except Exception as err:  # noqa: BLE001 - rebuilt from the stage's last checkpoint (or redone)
            run.undo("vae", f"{folder / 'vae.safetensors'} is unreadable ({type(err).__name__}: {str(err)[:120]})")
    if run.cfg.init_from and not run.cfg.train_vae:  # warm start: keep its autoencoder as it is
        vae.eval()
        folder.mkdir(parents=True, exist_ok=True)
        _save_tensors(vae.state_dict(), folder / "vae.safetensors")
        _save_reconstructions(run, vae)
        run.mark_done("vae", vae_from=str(run.cfg.init_from))
        return
    s, data = run.cfg.vae, run.data

    def loss_fn(indices, gen):
        x = data.pixels(indices)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = s.l1_weight * (rec - x).abs().mean() + s.l2_weight * (rec - x).pow(2).mean()
        if s.edge_weight:
            loss = loss + s.edge_weight * edge_l1(rec, x)
        return loss + s.kl_weight * posterior.kl().mean() / x[0].numel()

    spec = LoopSpec("vae", {"vae": vae}, [{"params": list(vae.parameters()), "base_lr": s.lr}],
                    loss_fn, len(data), s)
    run_loop(spec, run.ctx)
    vae.eval()
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors(vae.state_dict(), folder / "vae.safetensors")
    _save_reconstructions(run, vae)
    run.mark_done("vae")


def _save_reconstructions(run: _Run, vae) -> None:
    """``samples/vae_reconstructions.png``: originals (top) over reconstructions (bottom)."""
    torch = run.torch
    idx = torch.arange(min(8, len(run.data)))
    with torch.no_grad():
        x = run.data.pixels(idx)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    row = torch.cat([x, rec.clamp(-1, 1)], dim=2)  # stack vertically
    strip = torch.cat(list(row), dim=2)[0]
    from PIL import Image

    arr = ((strip + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    _save_image(Image.fromarray(arr, mode="L"), run.dir / "samples" / "vae_reconstructions.png")


def _save_image(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    image.save(tmp, format="PNG")
    tmp.replace(path)


def stage_latents(run: _Run, batch_size: int = 64) -> None:
    """Encode every training image once; set the VAE scaling factor to 1 / latent std."""
    torch = run.torch
    path = run.dir / "cache" / LATENTS_FILE
    vae = run.components["vae"]
    if run.done("latents") and not _readable_safetensors(path):
        run.undo("latents", f"{path} is unreadable (truncated or missing)")
    if not run.done("latents"):
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(run.data), batch_size):
                posterior = vae.encode(run.data.pixels(torch.arange(start, min(start + batch_size, len(run.data))))).latent_dist
                means.append(posterior.mean)
                stds.append(posterior.std)
        mean, std = torch.cat(means), torch.cat(stds)
        gen = torch.Generator().manual_seed(derived_seed(run.cfg.seed, "scaling"))
        sample = mean + std * torch.randn(mean.shape, generator=gen)
        scaling = float(1.0 / sample.std())
        if run.cfg.init_from and not run.cfg.train_vae:  # the warm-started UNet learnt this latent scale
            vae_config = json.loads((init_folder(run.cfg.init_from) / "vae" / "config.json").read_text())
            scaling = float(vae_config.get("scaling_factor", scaling))
        write_scaled_latents(path, mean, std, scaling)
        run.mark_done("latents", scaling_factor=scaling)
        logger.info("latents: %s cached, scaling factor %.4f", tuple(mean.shape), scaling)
    run.latents, scaling = read_scaled_latents(path)
    vae.register_to_config(scaling_factor=scaling)


def stage_unet(run: _Run) -> dict[str, Any]:
    """Train UNet + text encoder on the cached latents; returns the eval (EMA) modules."""
    from synthex.models.embedded import tokenize

    torch, s, c = run.torch, run.cfg.unet, run.components
    unet, text_encoder, scheduler = c["unet"], c["text_encoder"], c["scheduler"]
    alternatives = run.alternatives or [run.data.captions]
    ids_all = torch.stack([tokenize(run.tokenizer, alts) for alts in alternatives], dim=1)  # (N, K, 77)
    empty = tokenize(run.tokenizer, [""])[0]
    scale = run.components["vae"].config.scaling_factor
    mean, std = run.latents["mean"], run.latents["std"]
    predict_v = scheduler.config.prediction_type == "v_prediction"

    def loss_fn(indices, gen):
        latents = (mean[indices] + std[indices] * torch.randn(mean[indices].shape, generator=gen)) * scale
        noise = torch.randn(latents.shape, generator=gen)
        if s.noise_offset:
            noise = noise + s.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=gen)
        if ids_all.shape[1] > 1:  # one of the caption alternatives per sample
            ids = ids_all[indices, torch.randint(0, ids_all.shape[1], (len(indices),), generator=gen)].clone()
        else:
            ids = ids_all[indices, 0].clone()
        ids[caption_dropout_mask(len(indices), s.caption_dropout, gen)] = empty
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        target = scheduler.get_velocity(latents, noise, t) if predict_v else noise
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * min_snr_weights(scheduler, t, s.min_snr_gamma, scheduler.config.prediction_type)).mean()

    groups = [{"params": list(unet.parameters()), "base_lr": s.lr},
              {"params": list(text_encoder.parameters()), "base_lr": s.text_lr or s.lr}]

    def on_step_end(step: int, modules: dict) -> None:
        if s.validate_every and step % s.validate_every == 0 and step != s.max_steps:
            save_validation_grid(run, modules, run.dir / "samples" / f"validation_step_{step:07d}.png")

    spec = LoopSpec("unet", {"unet": unet, "text_encoder": text_encoder}, groups, loss_fn,
                    len(run.data), s, ema_decay=s.ema_decay, on_step_end=on_step_end)
    modules = run_loop(spec, run.ctx)
    if not run.done("unet"):
        run.mark_done("unet")
    return modules


def _pipeline(run: _Run, modules: dict):
    from synthex.models.embedded import build_pipeline

    return build_pipeline({**run.components, **modules})


def save_validation_grid(run: _Run, modules: dict, path: Path) -> Path:
    """Prompts (rows) x seeds (columns) at the validation settings, with DPM++ 2M."""
    from diffusers import DPMSolverMultistepScheduler

    v = run.cfg.validation
    pipe = _pipeline(run, modules)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    rows = []
    with run.torch.no_grad():
        for prompt in v.prompts:
            gens = [run.torch.Generator().manual_seed(seed) for seed in v.seeds]
            rows.append(pipe([prompt] * len(v.seeds), num_inference_steps=v.steps, guidance_scale=v.guidance_scale,
                             generator=gens, height=run.cfg.resolution, width=run.cfg.resolution).images)
    _save_image(image_grid(rows, v.prompts), path)
    return path


def image_grid(rows: list[list], labels: list[str] | None = None):
    """Grid of PIL images (one row per list) with an optional text label above each row."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    label_h = 12 if labels else 0
    grid = Image.new("L", (w * max(len(r) for r in rows), (h + label_h) * len(rows)), color=0)
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = i * (h + label_h)
        if labels:
            draw.text((2, y), labels[i][: max(8, grid.width // 6)], fill=255)
        for j, image in enumerate(row):
            grid.paste(image.convert("L"), (j * w, y + label_h))
    return grid


def stage_export(run: _Run, modules: dict) -> Path:
    """Save the final pipeline (EMA weights) as a diffusers folder, atomically."""
    from synthex.models.embedded import save_tokenizer

    final, tmp = run.dir / "pipeline", run.dir / ".tmp_pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    parts = {"vae": run.components["vae"], **modules}
    if run.cfg.save_dtype != "float32":
        # Half-precision UNet/VAE files load as float32 by default in diffusers; transformers
        # would load a half-precision text encoder as half, so it stays float32 (1.2M params).
        dtype = getattr(run.torch, run.cfg.save_dtype)
        parts.update({k: copy.deepcopy(parts[k]).to(dtype) for k in ("vae", "unet")})
    pipe = _pipeline(run, parts)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    from synthex.models.compat import portable_text_encoders

    portable_text_encoders(tmp)  # keys transformers 4 and 5 both read
    save_tokenizer(run.tokenizer, tmp / "tokenizer")
    _write_text(tmp / "README.md", _model_card(run))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _model_card(run: _Run) -> str:
    from synthex.models.embedded import count_parameters

    params = count_parameters(run.components)
    cfg = run.cfg
    return (
        "# SynTheX-Ray embedded model\n\n"
        "A small text-to-chest-X-ray latent diffusion model trained "
        + (f"from `{cfg.init_from}` (warm start; its tokenizer and VAE kept) " if cfg.init_from else "from scratch ")
        + "by `synthex train base`. Images it makes are SYNTHETIC, for research, not diagnosis.\n\n"
        f"- resolution: {cfg.resolution} px, grayscale; latents {cfg.resolution // 4}x{cfg.resolution // 4}x"
        f"{cfg.arch.latent_channels}\n- parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items())
        + f"\n- training images: {len(run.data)} (rows of split {cfg.split!r} of the dataset with "
        f"metadata sha256 {run.state.get('data_sha256', '?')[:12]})\n"
        + (f"- captions: column {cfg.text_column!r} and alternatives {cfg.caption_columns} (one drawn per step)\n"
           if cfg.caption_columns else "")
        + f"- steps: VAE {cfg.vae.max_steps if not cfg.init_from or cfg.train_vae else 0} x {cfg.vae.batch_size}, "
        f"UNet+text {cfg.unet.max_steps} x "
        f"{cfg.unet.batch_size}; seed {cfg.seed}\n- weights: {cfg.save_dtype} safetensors; UNet and "
        "text encoder are EMA weights\n"
    )


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# =============================================================================================
# 6. Entry point
# =============================================================================================
# What each trainer's run folder is called and how to resume it (see run_folder_kind).
TRAINERS = {
    "base": ("base-model training folder", "synthex train base"),
    "lora": ("LoRA training folder", "synthex train lora"),
    "search": ("search-model training folder", "synthex train search"),
    "gan": ("GAN training folder", "synthex train gan"),
    "note": ("note-model training folder", "synthex train note"),
    "report": ("report-model training folder", "synthex train report"),
}
_KIND_TO_TRAINER = {"training run": "base", "LoRA run": "lora", "search training run": "search", "GAN run": "gan",
                    "note training run": "note", "report training run": "report"}


def read_run_file(path: Path, *, error: type[SynthexError] = SynthexError) -> Any:
    """The parsed ``state.json`` / ``config.yaml`` of a run folder; an empty, truncated or
    non-UTF-8 file is an error naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise error(f"{path} is empty or corrupt ({reason}); restore it from a backup, or start a new --out "
                    "folder") from err
    if not isinstance(value, dict):
        raise error(f"{path} is empty or corrupt (it holds {type(value).__name__}, not a mapping); restore it "
                    "from a backup, or start a new --out folder")
    return value


def run_folder_kind(run_dir: Path) -> str | None:
    """Which trainer made ``run_dir``: "base", "lora", "search", "gan", "note", or None (not a run
    folder).

    ``state.json`` names it (``"trainer"``) in folders made by this version; older folders are
    recognised by the keys of their ``config.yaml``."""
    import yaml

    run_dir = Path(run_dir)
    try:
        state = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
        if isinstance(state, dict) and state.get("trainer") in TRAINERS:
            return state["trainer"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    keys = set(config)
    if {"rank", "target_modules"} <= keys:
        return "lora"
    if {"arch", "vae", "unet"} <= keys:
        return "base"
    if {"embed_dim", "image_size"} <= keys or {"init_image", "init_text"} <= keys:
        return "search"
    return None


def _other_kind_error(run_dir: Path, found: str, trainer: str, resume: bool) -> OutputExistsError:
    name, command = TRAINERS[found]
    if resume:
        return OutputExistsError(f"{run_dir} is a {name}, not a {TRAINERS[trainer][0]}; resume it with "
                                 f"`{command} --resume`, or choose another --out folder for `{TRAINERS[trainer][1]}`")
    return OutputExistsError(f"{run_dir} already holds a {name} (made by `{command}`); choose another --out "
                             "folder")


def check_run_folder(run_dir: Path, config: dict, differences: Callable[[dict, dict], list[str]],
                     data_dir: Path, resume: bool, *, kind: str = "training run",
                     error: type[SynthexError] = SynthexError, trainer: str | None = None) -> dict | None:
    """Read-only checks shared by the trainers: None for a new run (folder absent or empty),
    the saved ``state.json`` for a valid resume; otherwise one clear error (a folder of another
    trainer, named with the command that resumes it; an existing run without ``resume``; a
    foreign non-empty folder; other weight-changing options; another dataset).

    ``trainer`` ("base", "lora", "search"; default: from ``kind``) is the calling trainer."""
    from synthex.train.data import metadata_fingerprint

    run_dir, saved = Path(run_dir), Path(run_dir) / "config.yaml"
    trainer = trainer or _KIND_TO_TRAINER.get(kind)
    found = run_folder_kind(run_dir) if run_dir.is_dir() else None
    if found is not None and trainer is not None and found != trainer:
        raise _other_kind_error(run_dir, found, trainer, resume)
    if not saved.exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise OutputExistsError(f"{run_dir} is not empty and holds no {kind}; choose an empty --out folder")
        return None
    if not resume:
        raise OutputExistsError(f"{run_dir} already holds a {kind}; pass --resume to continue it "
                                "or choose another --out folder")
    diffs = differences(read_run_file(saved, error=error), config)
    if diffs:
        raise error(f"cannot resume {run_dir} with a different configuration ({'; '.join(diffs)}); "
                    "resume with the same options or start a new --out folder")
    state = read_run_file(run_dir / "state.json", error=error)
    fingerprint = metadata_fingerprint(data_dir) if (Path(data_dir) / "metadata.csv").is_file() else None
    if fingerprint and state.get("data_sha256") not in (None, fingerprint):
        raise error(f"cannot resume {run_dir}: {data_dir}/metadata.csv differs from the dataset "
                    "the run started with; use the same dataset or a new --out folder")
    return state


def prepare_run_dir(run_dir: Path, cfg: ScratchConfig, data_dir: Path, resume: bool) -> None:
    """Create the run folder or check that a resume matches it (config and dataset)."""
    import yaml

    from synthex.train.data import metadata_fingerprint

    run_dir = Path(run_dir)
    state = check_run_folder(run_dir, cfg.to_dict(), config_differences, data_dir, resume)
    if state is not None:
        extend_budget(run_dir, cfg, state)
        return
    fingerprint = metadata_fingerprint(data_dir) if (Path(data_dir) / "metadata.csv").is_file() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _write_text(run_dir / "state.json", json.dumps({"trainer": "base", "done": [], "data_sha256": fingerprint},
                                                   indent=1))


def extend_budget(run_dir: Path, cfg: ScratchConfig, state: dict) -> list[str]:
    """On a resume with a larger ``vae.max_steps`` / ``unet.max_steps``: record the new budget in
    ``config.yaml`` and reopen the stages that must go on (the UNet continues from its last
    checkpoint; the export is redone). The LR schedule is re-planned over the new budget (with
    a cosine schedule the LR rises from where the old plan ended; ``schedule: constant`` avoids
    that). Raising the VAE budget after its stage finished is refused: the cached latents and
    the UNet trained on them would no longer match it. Returns the extended keys."""
    import yaml

    old = _flatten(read_run_file(run_dir / "config.yaml"))
    extended = [k for k in EXTENDABLE_KEYS if cfg.to_dict()[k.split(".")[0]][k.split(".")[1]] != old.get(k)]
    if not extended:
        return []
    if "vae.max_steps" in extended and "vae" in state.get("done", []):
        raise SynthexError(f"cannot raise vae.max_steps of {run_dir}: its VAE stage is finished and the UNet "
                           "was trained on its latents; start a new run (init_from: the old pipeline/ folder, "
                           "train_vae: true) instead")
    reopen = {"unet", "export"}
    state["done"] = [d for d in state.get("done", []) if d not in reopen]
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _write_text(run_dir / "state.json", json.dumps(state, indent=1))
    logger.info("extending %s: %s", run_dir, ", ".join(f"{k} {old.get(k)} -> "
                                                      f"{_flatten(cfg.to_dict())[k]}" for k in extended))
    return extended


def train_base(data_dir: Path, run_dir: Path, config: ScratchConfig | None = None, *, resume: bool = False,
               progress: bool = True, callback: Callable[[StepEvent], None] | None = None) -> TrainResult:
    """Train the embedded model from scratch on an imagefolder; see the module docstring."""
    cfg = config or load_config()
    cfg.validate()
    run_dir = Path(run_dir)
    from synthex.train.data import read_metadata

    read_metadata(data_dir, split=cfg.split, text_column=cfg.text_column)  # a bad dataset fails before --out is made
    prepare_run_dir(run_dir, cfg, data_dir, resume)
    ctx = RunContext(run_dir, cfg.seed, TrainingLog(run_dir / "training_log.csv"), cfg.keep_checkpoints,
                     progress, callback)
    run = _Run(data_dir, run_dir, cfg, ctx)
    stage_data(run)                                     # 1. images + captions, cached once
    stage_tokenizer(run)                                # 2. BPE vocabulary; builds the components
    stage_vae(run)                                      # 3. autoencoder
    stage_latents(run)                                  # 4. latent cache + scaling factor
    modules = stage_unet(run)                           # 5. UNet + text encoder (EMA)
    grid = save_validation_grid(run, modules, run_dir / "validation.png")
    pipeline_dir = stage_export(run, modules)           # 6. diffusers folder
    if not run.done("export"):
        run.mark_done("export")
    size = _folder_mb(pipeline_dir)
    if size > 50:
        logger.warning("pipeline folder is %.1f MB (> 50 MB); set save_dtype: float16", size)
    from synthex.models.embedded import count_parameters

    return TrainResult(run_dir, pipeline_dir, count_parameters(run.components), size, len(run.data),
                       run.data.rejects, grid, float(run.components["vae"].config.scaling_factor))
