"""Model presets and loading: the ONLY place in SynTheX-Ray that calls ``from_pretrained``.

A model is named by a preset (``config/models.yaml``: ``embedded``, ``sdxl-base``,
``all-classes``, ``opacity``, ``sd15``, ``roentgen``; add your own with ``SYNTHEX_MODELS_FILE``),
by a local diffusers folder, by a Hugging Face hub id, or by a single ``.safetensors`` checkpoint.

- Offline first: everything loads with ``local_files_only=True``; downloads happen only when the
  user opts in (``allow_download=True`` or ``SYNTHEX_ALLOW_DOWNLOAD=1``). Missing weights give a
  :class:`ModelNotFoundError` listing the missing files and the command that fetches them.
- The pipeline family (SD 1.x/2.x vs SDXL) is read from ``model_index.json``.
- LoRA adapters (``.safetensors`` only) load with ``load_lora_weights`` under their own adapter
  names and are mixed with ``set_adapters(names, scales)``; a file that is not a LoRA, or does
  not fit the model, gives a :class:`LoraError`.
- :func:`free_model` drops a pipeline completely (hooks, references, gc, CUDA cache).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch

from synthex.errors import SynthexError

logger = logging.getLogger(__name__)

ALLOW_DOWNLOAD_ENV = "SYNTHEX_ALLOW_DOWNLOAD"
MODELS_FILE_ENV = "SYNTHEX_MODELS_FILE"
EMBEDDED = "embedded"
Family = Literal["sd", "sdxl"]
SourceKind = Literal["folder", "hub", "file"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ENV_REF = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_SKIPPED_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}
_PIPELINE_FAMILY = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
_TEMPLATE = {
    "sd": ("scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sdxl": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"),
}
_HUB_PATTERNS = ("model_index.json", "*/*.json", "*/*.txt", "*/diffusion_pytorch_model.safetensors",
                 "*/model.safetensors")


class ModelNotFoundError(SynthexError):
    """The weights of a model are not on this machine (or the name/path is wrong)."""


class LoraError(SynthexError):
    """A LoRA file is missing, not a LoRA, or does not fit the loaded model."""


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    """One LoRA adapter: its adapter name, file and strength."""

    name: str
    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what to load and how to name it in the PNG parameters."""

    name: str
    source: str
    kind: SourceKind
    family: Family | None = None
    vae: str | None = None
    loras: tuple[LoraSpec, ...] = ()
    config: str | None = None
    obtain: str | None = None
    local_env: str | None = None
    vae_env: str | None = None
    description: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies the base pipeline (LoRAs excluded: they are swapped in place)."""
        return (self.source, self.kind, self.family, self.vae, self.config)


@dataclass
class LoadedModel:
    """A pipeline in memory plus what the PNG parameters need to know about it."""

    spec: ModelSpec
    pipe: Any
    family: Family
    device: torch.device
    dtype: torch.dtype
    weights_file: Path | None = None
    model_hash: str | None = None
    loras: dict[str, LoraSpec] = field(default_factory=dict)
    lora_hashes: dict[str, str] = field(default_factory=dict)
    low_memory: bool = False
    vae_upcast: bool = False
    base_scheduler: Any = None
    """The scheduler the model was saved with: samplers are built from its config."""

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the UNet was built for."""
        size = self.pipe.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(w) * self.vae_scale_factor, int(h) * self.vae_scale_factor


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
def embedded_dir() -> Path:
    """Folder of the shipped default model (``synthex.models.embedded.EMBEDDED_DIR``)."""
    try:
        from synthex.models.embedded import EMBEDDED_DIR
    except ImportError:
        import synthex

        return Path(synthex.__file__).parent / "weights" / "embedded"
    return Path(EMBEDDED_DIR)


def allow_download_from_env() -> bool:
    """True when ``SYNTHEX_ALLOW_DOWNLOAD`` is 1/true/yes."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def expand(text: str) -> str:
    """``${VAR}`` / ``${VAR:-default}`` and ``~`` expansion of a path setting."""
    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        return value if value else (match.group(2) or "")

    return os.path.expanduser(_ENV_REF.sub(sub, text))


def _read_yaml(path: Path | None, text: str | None = None) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text if text is not None else path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SynthexError(f"{path}: cannot read model presets ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise SynthexError(f"{path}: model presets need a top-level 'models:' mapping")
    return data


def user_models_file() -> Path:
    """The user's own presets: ``$SYNTHEX_MODELS_FILE``, else ``$XDG_CONFIG_HOME/synthex/models.yaml``
    (``~/.config/synthex/models.yaml``). ``synthex train lora --register NAME`` writes here."""
    if os.environ.get(MODELS_FILE_ENV):
        return Path(os.path.expanduser(os.environ[MODELS_FILE_ENV]))
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "synthex" / "models.yaml"


def load_presets(presets_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The packaged presets, updated with ``presets_file`` or else the user's file
    (:func:`user_models_file`, when it exists)."""
    text = resources.files("synthex.config").joinpath("models.yaml").read_text(encoding="utf-8")
    data = _read_yaml(None, text)
    extra = presets_file or os.environ.get(MODELS_FILE_ENV)
    if not extra and user_models_file().is_file():
        extra = user_models_file()
    if extra:
        user = _read_yaml(Path(extra))
        data["models"] = {**data.get("models", {}), **(user.get("models") or {})}
        data["default"] = user.get("default", data.get("default"))
    return data


def register_lora_preset(name: str, base_model: str, lora_file: str | os.PathLike[str], *,
                         scale: float = 1.0, description: str = "", overwrite: bool = True) -> str:
    """Add (or replace) preset ``name`` = ``base_model`` + one LoRA in the user's presets file,
    so that ``synthex generate --model NAME`` and the web app list it. Returns the file path."""
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise SynthexError(f"preset name {name!r} must be letters, digits, '.', '_' or '-'")
    packaged = _read_yaml(None, resources.files("synthex.config").joinpath("models.yaml").read_text(encoding="utf-8"))
    if name in (packaged.get("models") or {}):
        raise SynthexError(f"preset name {name!r} is a packaged preset; choose another --register name")
    path = user_models_file()
    data = _read_yaml(path) if path.is_file() else {"models": {}}
    models = data.setdefault("models", {}) or {}
    if name in models and not overwrite:
        raise SynthexError(f"preset {name!r} already exists in {path}; choose another name")
    presets = load_presets()["models"]
    base_path = Path(os.path.expanduser(str(base_model)))
    entry: dict[str, Any] = ({"base": str(base_model)} if str(base_model) in presets and str(base_model) != name
                             else {"source": str(base_path.resolve())})
    entry.update(description=description or f"{base_model} + LoRA {Path(lora_file).name}",
                 loras=[{"name": _safe_name(name), "path": str(Path(lora_file).resolve()), "scale": float(scale)}])
    models[name] = entry
    data["models"] = models
    path.parent.mkdir(parents=True, exist_ok=True)
    from synthex.io import atomic_write

    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))  # a unique temp name beside models.yaml
    return str(path)


# --------------------------------------------------------------------------------------------
# Files: what a model folder needs, what is missing
# --------------------------------------------------------------------------------------------
def detect_family(folder: str | os.PathLike[str]) -> Family:
    """``"sd"`` or ``"sdxl"`` from ``model_index.json``'s ``_class_name``."""
    index = Path(folder) / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{index}: cannot read the model index ({exc})") from exc
    if name in _PIPELINE_FAMILY:
        return _PIPELINE_FAMILY[name]  # type: ignore[return-value]
    if name.startswith("StableDiffusionXL"):
        return "sdxl"
    if name.startswith("StableDiffusion"):
        return "sd"
    raise SynthexError(
        f"{folder}: pipeline class {name!r} is not supported; SynTheX-Ray runs "
        "StableDiffusionPipeline (SD 1.x/2.x, the embedded model) and StableDiffusionXLPipeline"
    )


def _components(folder: Path) -> dict[str, tuple[str, str]]:
    data = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out = {}
    for name, value in data.items():
        if name.startswith("_") or name in _SKIPPED_COMPONENTS or not isinstance(value, list):
            continue
        if len(value) == 2 and value[0] and value[1]:
            out[name] = (str(value[0]), str(value[1]))
    return out


def _weights_name(library: str) -> str:
    return "model.safetensors" if library == "transformers" else "diffusion_pytorch_model.safetensors"


def _component_missing(folder: Path, name: str, library: str, cls: str) -> list[str]:
    sub = folder / name
    if "Scheduler" in cls:
        return [] if (sub / "scheduler_config.json").is_file() else [f"{name}/scheduler_config.json"]
    if "Tokenizer" in cls:
        if (sub / "tokenizer.json").is_file() or (sub / "vocab.txt").is_file():
            return []
        need = ["vocab.json", "merges.txt"] if "CLIP" in cls else ["vocab.json"]
        return [f"{name}/{f}" for f in need if not (sub / f).is_file()] or []
    missing = [] if (sub / "config.json").is_file() else [f"{name}/config.json"]
    if not any(sub.glob("*.safetensors")):
        note = " (only pickled .bin weights found; convert them to safetensors)" if any(
            sub.glob("*.bin")) else ""
        missing.append(f"{name}/{_weights_name(library)}{note}")
    return missing


def missing_files(folder: str | os.PathLike[str], family: Family | None = None) -> list[str]:
    """Files a diffusers folder lacks for loading (relative paths); empty when complete."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        out = ["model_index.json"]
        for name in _TEMPLATE[family or "sd"]:
            library = "transformers" if name.startswith(("text_encoder", "tokenizer")) else "diffusers"
            cls = "CLIPTokenizer" if name.startswith("tokenizer") else (
                "Scheduler" if name == "scheduler" else "Model")
            out += _component_missing(folder, name, library, cls)
        return out
    out = []
    for name, (library, cls) in _components(folder).items():
        out += _component_missing(folder, name, library, cls)
    return out


def main_weights_file(folder: Path) -> Path | None:
    """The UNet weights (what ``Model hash`` is computed from)."""
    unet = folder / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (unet / name).is_file():
            return unet / name
    files = sorted(unet.glob("*.safetensors"))
    return files[0] if files else None


def _hub_hint(repo_id: str, spec: ModelSpec | None) -> str:
    target = f"~/models/{repo_id.split('/')[-1]}"
    patterns = " ".join(f'"{p}"' for p in _HUB_PATTERNS)
    env = f" (or set {spec.local_env}={target})" if spec and spec.local_env else ""
    return (
        f"Get the files on a machine with network access:\n"
        f"  huggingface-cli download {repo_id} --include {patterns} --local-dir {target}\n"
        f"then pass the folder: --model {target}{env}; or allow downloads into the Hugging Face "
        f"cache with {ALLOW_DOWNLOAD_ENV}=1 (or --allow-download)."
    )


def _vae_note(spec: ModelSpec) -> str:
    """A reminder about the preset's separate VAE, when that is missing too."""
    vae = spec.vae
    if not vae or Path(vae).is_dir() or not _HUB_ID.match(vae) or _cached_snapshot(vae):
        return ""
    target = f"~/models/{vae.split('/')[-1]}"
    where = f"set {spec.vae_env}={target}" if spec.vae_env else "set the preset's vae to it"
    return (f"\nThis preset also uses the VAE {vae}: huggingface-cli download {vae} --local-dir "
            f"{target}, then {where}.")


def _missing_error(what: str, missing: Sequence[str], hint: str) -> ModelNotFoundError:
    listed = "\n".join(f"  {m}" for m in missing)
    return ModelNotFoundError(f"{what}\nMissing files:\n{listed}\n{hint}")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return name or "lora"


class ModelRegistry:
    """Resolves model names/paths to :class:`ModelSpec` and loads them."""

    def __init__(
        self, presets_file: str | os.PathLike[str] | None = None, allow_download: bool | None = None
    ) -> None:
        data = load_presets(presets_file)
        self.presets: dict[str, dict[str, Any]] = dict(data.get("models") or {})
        self.default: str = str(data.get("default") or EMBEDDED)
        self.allow_download = allow_download_from_env() if allow_download is None else allow_download

    def names(self) -> list[str]:
        return list(self.presets)

    # ---------------------------------------------------------------------------- resolving
    def resolve(self, model: str | os.PathLike[str] | None = None) -> ModelSpec:
        """A preset name, a local folder / ``.safetensors`` file, or a hub id -> ModelSpec."""
        text = str(model) if model not in (None, "") else self.default
        if text in self.presets:
            return self._from_preset(text)
        path = Path(os.path.expanduser(text))
        if path.is_dir():
            return ModelSpec(name=_safe_name(path.resolve().name), source=str(path), kind="folder")
        if path.is_file():
            return ModelSpec(name=_safe_name(path.stem), source=str(path), kind="file")
        if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
            return ModelSpec(name=text, source=text, kind="hub")
        raise ModelNotFoundError(
            f"Model {text!r} is neither a preset ({', '.join(self.presets)}), nor an existing "
            "folder or .safetensors file, nor a hub id (owner/name). Check the spelling or path."
        )

    def _from_preset(self, name: str, seen: tuple[str, ...] = ()) -> ModelSpec:
        preset = self.presets[name]
        if not isinstance(preset, Mapping):
            raise SynthexError(f"model preset {name!r} must be a mapping, got {preset!r}")
        if name in seen:
            raise SynthexError(f"model presets {' -> '.join((*seen, name))} form a loop")
        if preset.get("base"):
            base_name = str(preset["base"])
            if base_name not in self.presets:
                raise SynthexError(f"model preset {name!r}: base {base_name!r} is not a preset")
            base = self._from_preset(base_name, (*seen, name))
        else:
            base = self._source_spec(name, preset)
        loras = base.loras + tuple(self._preset_lora(name, item) for item in preset.get("loras") or [])
        return replace(
            base, name=name, loras=loras, description=str(preset.get("description", "")),
            obtain=preset.get("obtain") or base.obtain,
        )

    def _source_spec(self, name: str, preset: Mapping[str, Any]) -> ModelSpec:
        source = str(preset.get("source") or "")
        if not source:
            raise SynthexError(f"model preset {name!r} needs a 'source' or a 'base'")
        env = preset.get("local_env")
        if env and os.environ.get(env):
            source = os.environ[env]
        vae = preset.get("vae")
        if preset.get("vae_env") and os.environ.get(preset["vae_env"]):
            vae = os.environ[preset["vae_env"]]
        if source == EMBEDDED:
            source, kind = str(embedded_dir()), "folder"
        else:
            source = expand(source)
            kind = "file" if source.endswith(".safetensors") else (
                "hub" if _HUB_ID.match(source) and not Path(source).exists() else "folder")
        family = preset.get("family")
        if family not in (None, "sd", "sdxl"):
            raise SynthexError(f"model preset {name!r}: family must be sd or sdxl, got {family!r}")
        return ModelSpec(
            name=name, source=source, kind=kind, family=family, vae=expand(vae) if vae else None,
            config=expand(preset["config"]) if preset.get("config") else None,
            obtain=preset.get("obtain"), local_env=env, vae_env=preset.get("vae_env"),
        )

    def _preset_lora(self, preset: str, item: Any) -> LoraSpec:
        if not isinstance(item, Mapping) or not item.get("path"):
            raise SynthexError(f"model preset {preset!r}: each LoRA needs at least a 'path'")
        path = Path(expand(str(item["path"])))
        return LoraSpec(_safe_name(str(item.get("name") or path.stem)), path,
                        float(item.get("scale", 1.0)))

    def resolve_loras(
        self, spec: ModelSpec, requested: Sequence[tuple[str | os.PathLike[str], float]] = ()
    ) -> list[LoraSpec]:
        """The model's preset LoRAs (scales overridden by name) plus LoRA files from ``requested``."""
        loras = {lora.name: lora for lora in spec.loras}
        for entry, scale in requested:
            text = str(entry)
            if text in loras:
                loras[text] = replace(loras[text], scale=float(scale))
                continue
            path = Path(os.path.expanduser(text))
            if not path.is_file():
                known = f" ({', '.join(loras)})" if spec.loras else ""
                raise LoraError(f"LoRA {text!r}: no such file, and not a LoRA of model "
                                f"{spec.name!r}{known}")
            name = base = _safe_name(path.stem)
            suffix = 2
            while name in loras:
                name, suffix = f"{base}_{suffix}", suffix + 1
            loras[name] = LoraSpec(name, path, float(scale))
        return list(loras.values())

    # ---------------------------------------------------------------------------- locating
    def locate(self, spec: ModelSpec) -> Path:
        """The local folder/file holding ``spec`` (a hub model is downloaded first when
        downloads are allowed). Raises :class:`ModelNotFoundError` listing the missing files."""
        if spec.kind == "file":
            path = Path(spec.source)
            if not path.is_file():
                raise ModelNotFoundError(f"Model {spec.name!r}: checkpoint file {path} not found. "
                                         + (spec.obtain or ""))
            return path
        if spec.kind == "hub":
            folder = _cached_snapshot(spec.source)
            if folder is None and self.allow_download:
                folder = _download(spec.source, _HUB_PATTERNS)
            if folder is None:
                missing = missing_files(Path("/nonexistent"), spec.family)
                raise _missing_error(
                    f"Model {spec.name!r} ({spec.source}) is not on this machine: it is not in "
                    "the Hugging Face cache and downloads are off.", missing,
                    (spec.obtain or _hub_hint(spec.source, spec)) + _vae_note(spec))
        else:
            folder = Path(spec.source)
        self._check_folder(spec, folder)
        return folder

    def _check_folder(self, spec: ModelSpec, folder: Path) -> None:
        missing = missing_files(folder, spec.family)
        if not missing:
            return
        exists = "is incomplete" if folder.is_dir() else "does not exist"
        hint = spec.obtain or (
            _hub_hint(spec.source, spec) if spec.kind == "hub"
            else "Copy the complete diffusers folder there (save_pretrained layout), or pass "
                 "another folder with --model.")
        raise _missing_error(f"Model {spec.name!r}: folder {folder} {exists}.", missing, hint)

    def available(self, spec: ModelSpec) -> tuple[bool, str]:
        """(True, where) when the model can be loaded offline; (False, why) otherwise."""
        try:
            with _no_download(self):
                where = self.locate(spec)
        except SynthexError as exc:
            return False, str(exc).splitlines()[0]
        lost = [str(lora.path) for lora in spec.loras if not Path(lora.path).is_file()]
        if lost:
            return False, f"base model at {where}, but LoRA file(s) missing: {', '.join(lost)}"
        return True, str(where)

    # ---------------------------------------------------------------------------- loading
    def load(self, spec: ModelSpec, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> LoadedModel:
        """Load the base pipeline of ``spec`` (no LoRAs: see :meth:`apply_loras`)."""
        device = torch.device(device)
        location = self.locate(spec)
        if spec.kind == "file":
            pipe, family = self._load_single_file(spec, location, dtype)
            weights = location
        else:
            family = _family(spec, location)
            pipe = self._load_folder(spec, location, family, dtype)
            weights = main_weights_file(location)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        loaded = LoadedModel(spec=spec, pipe=pipe, family=family, device=device, dtype=dtype,
                             weights_file=weights, base_scheduler=pipe.scheduler)
        loaded.model_hash = cached_short_hash(weights, 10) if weights else None
        logger.info("loaded model %s (%s, %s) on %s/%s", spec.name, family, spec.source, device,
                    str(dtype).replace("torch.", ""))
        return loaded

    def _pipeline_kwargs(self, family: Family, dtype: torch.dtype) -> dict[str, Any]:
        kwargs: dict[str, Any] = {**_dtype_kwargs(dtype), "use_safetensors": True,
                                  "local_files_only": True}
        if family == "sd":
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return kwargs

    def _load_folder(self, spec: ModelSpec, folder: Path, family: Family, dtype: torch.dtype) -> Any:
        import diffusers

        cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
        kwargs = self._pipeline_kwargs(family, dtype)
        if spec.vae:
            kwargs["vae"] = self._load_vae(spec, dtype)
        variant = _variant(folder, dtype)
        if variant:
            kwargs["variant"] = variant
        with _loading(f"model {spec.name!r} from {folder}"):
            pipe = cls.from_pretrained(str(folder), **kwargs)
        from synthex.models.compat import check_loaded_weights

        check_loaded_weights(pipe, folder, f"model {spec.name!r}", skip=("vae",) if spec.vae else ())
        return pipe

    def _load_vae(self, spec: ModelSpec, dtype: torch.dtype) -> Any:
        from diffusers import AutoencoderKL

        source = spec.vae or ""
        if Path(source).is_dir():
            folder: Path | None = Path(source)
        elif _HUB_ID.match(source):
            folder = _cached_snapshot(source)
            if folder is None and self.allow_download:
                folder = _download(source, ("config.json", "diffusion_pytorch_model.safetensors"))
            if folder is None:
                raise _missing_error(
                    f"VAE {source} of model {spec.name!r} is not on this machine.",
                    ["config.json", "diffusion_pytorch_model.safetensors"],
                    _vae_note(spec).strip() or _hub_hint(source, None))
        else:
            raise ModelNotFoundError(f"VAE {source!r} of model {spec.name!r}: no such folder")
        missing = [f for f in ("config.json",) if not (folder / f).is_file()]
        if not any(folder.glob("*.safetensors")):
            missing.append("diffusion_pytorch_model.safetensors")
        if missing:
            raise _missing_error(f"VAE folder {folder} is incomplete.", missing,
                                 "Copy the complete VAE folder there.")
        with _loading(f"VAE {source}"):
            return AutoencoderKL.from_pretrained(str(folder), **_dtype_kwargs(dtype),
                                                 use_safetensors=True, local_files_only=True)

    def _load_single_file(self, spec: ModelSpec, path: Path, dtype: torch.dtype) -> tuple[Any, Family]:
        import diffusers

        keys = _safetensors_keys(path, SynthexError)
        if _looks_like_lora(keys):
            raise SynthexError(f"{path} is a LoRA adapter, not a model: pass it with --lora "
                               "on top of a base model")
        if any(k.startswith("conditioner.embedders.1") for k in keys):
            family: Family = "sdxl"
        elif any(k.startswith("model.diffusion_model.") for k in keys):
            family = spec.family or "sd"
        else:
            raise SynthexError(f"{path} is not a Stable Diffusion checkpoint (no "
                               "model.diffusion_model.* tensors); give a diffusers folder instead")
        if not spec.config and not self.allow_download:
            raise SynthexError(
                f"{path}: a single-file checkpoint needs the diffusers configs of its family "
                f"({family}); offline, add a preset with `config: <a diffusers folder of the same "
                f"family>` (see config/models.yaml), or convert it to a diffusers folder")
        cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
        kwargs = self._pipeline_kwargs(family, dtype)
        kwargs.pop("use_safetensors")
        kwargs["local_files_only"] = not self.allow_download  # configs may come from the hub
        if spec.config:
            kwargs["config"] = spec.config
        with _loading(f"checkpoint {path}"):
            return cls.from_single_file(str(path), **kwargs), family

    # ---------------------------------------------------------------------------- LoRAs
    def apply_loras(self, loaded: LoadedModel, loras: Sequence[LoraSpec]) -> None:
        """Make ``loras`` (with their scales) the active adapters of ``loaded.pipe``.

        The same files as before only change scales; another set unloads the old adapters
        first (the base weights are restored exactly). On failure no adapter stays loaded.
        """
        wanted = [(lora.name, Path(lora.path).resolve()) for lora in loras]
        current = [(name, Path(spec.path).resolve()) for name, spec in loaded.loras.items()]
        if wanted != current:
            unload_loras(loaded)
            for lora in loras:
                try:
                    _load_lora(loaded, lora)
                except Exception:
                    unload_loras(loaded)
                    raise
        loaded.loras = {lora.name: lora for lora in loras}
        if loras:
            loaded.pipe.set_adapters([lora.name for lora in loras], [lora.scale for lora in loras])


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers >= 0.36 takes ``dtype=`` (``torch_dtype=`` is deprecated); older ones only
    ``torch_dtype=``."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _family(spec: ModelSpec, folder: Path) -> Family:
    found = detect_family(folder)
    if spec.family and spec.family != found:
        logger.warning("model %s: preset says family %s, %s/model_index.json says %s; using %s",
                       spec.name, spec.family, folder, found, found)
    return found


def _variant(folder: Path, dtype: torch.dtype) -> str | None:
    unet = folder / "unet"
    has_fp16 = (unet / "diffusion_pytorch_model.fp16.safetensors").is_file()
    has_full = (unet / "diffusion_pytorch_model.safetensors").is_file()
    if has_fp16 and (not has_full or dtype in (torch.float16, torch.bfloat16)):
        return "fp16"
    return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache snapshot of ``repo_id``, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, offline mode, bad id...
        logger.debug("%s not in the Hugging Face cache: %s", repo_id, exc)
        return None


def _download(repo_id: str, patterns: Sequence[str]) -> Path:
    """Download the files of ``repo_id`` matching ``patterns`` into the Hugging Face cache
    (only called when the user allowed downloads)."""
    from huggingface_hub import snapshot_download

    logger.info("downloading %s (%s) from the Hugging Face hub", repo_id, ", ".join(patterns))
    with _loading(f"{repo_id} from the Hugging Face hub"):
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))


@contextlib.contextmanager
def _no_download(registry: ModelRegistry) -> Iterator[None]:
    before = registry.allow_download
    registry.allow_download = False
    try:
        yield
    finally:
        registry.allow_download = before


@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """Turn loader exceptions (hub client, file layout, config) into one SynthexError."""
    try:
        yield
    except SynthexError:
        raise
    except (torch.cuda.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SynthexError(f"Could not load {what}: {type(exc).__name__}: {first}") from exc


def _safetensors_keys(path: Path, error: type[SynthexError] = LoraError) -> list[str]:
    if path.suffix.lower() != ".safetensors":
        raise error(f"{path}: only .safetensors files are read (pickled .bin/.pt/.ckpt files "
                    "can run code when loaded); convert it to safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:
        raise error(f"{path} is not a readable safetensors file ({exc})") from exc


def _looks_like_lora(keys: Sequence[str]) -> bool:
    marks = ("lora_a", "lora_b", "lora_down", "lora_up", "lora.down", "lora.up", "lora_te", "lora_unet")
    return any(any(m in key.lower() for m in marks) for key in keys)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers 5 prints a misleading 'MISSING' load report when adapters are injected."""
    loggers = [logging.getLogger(n) for n in ("transformers", "transformers.modeling_utils",
                                              # "No LoRA keys associated to CLIPTextModel": a UNet-only LoRA
                                              "diffusers.loaders.lora_base", "diffusers.loaders.peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _load_lora(loaded: LoadedModel, lora: LoraSpec) -> None:
    path = Path(lora.path)
    if not path.is_file():
        raise LoraError(f"LoRA {lora.name!r}: file {path} not found. " + (loaded.spec.obtain or ""))
    keys = _safetensors_keys(path)
    if not _looks_like_lora(keys):
        raise LoraError(
            f"{path} is not a LoRA adapter: none of its {len(keys)} tensors is a LoRA weight "
            f"(lora_A/lora_B or lora_down/lora_up), e.g. {keys[:1]}. A full model goes in --model.")
    _check_lora_base(loaded, path)
    pipe = loaded.pipe
    try:
        with _quiet_transformers():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=lora.name,
                                   local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise LoraError(
            f"LoRA {path} does not fit model {loaded.spec.name!r} ({loaded.family}): {first}. "
            "Was it trained for another base model?") from exc
    adapters = pipe.get_list_adapters()
    if not any(lora.name in names for names in adapters.values()):
        raise LoraError(
            f"LoRA {path} does not fit model {loaded.spec.name!r} ({loaded.family}): none of its "
            "tensors matched a layer of the model. Was it trained for another base model?")
    loaded.lora_hashes[lora.name] = cached_short_hash(path, 12, addnet=True)
    logger.info("loaded LoRA %s from %s", lora.name, path)


def _check_lora_base(loaded: LoadedModel, path: Path) -> None:
    """LoRAs made by ``synthex train lora`` name their base model in the header: refuse one
    made for another family, warn when the base weights differ (it may still work)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    family, base = meta.get("synthex.family"), meta.get("synthex.base_model", "?")
    if family and family != loaded.family:
        raise LoraError(f"LoRA {path} was trained for the {family} model {base!r}, but model "
                        f"{loaded.spec.name!r} is {loaded.family}; load it with --model {base}")
    base_hash = meta.get("synthex.base_model_hash")
    if base_hash and loaded.model_hash and base_hash != loaded.model_hash:
        logger.warning("LoRA %s was trained on %s (hash %s), not on %s (hash %s): results may differ",
                       path.name, base, base_hash, loaded.spec.name, loaded.model_hash)


def unload_loras(loaded: LoadedModel) -> None:
    """Remove every LoRA adapter from the pipeline (the base weights are untouched)."""
    pipe = loaded.pipe
    if pipe is not None and (loaded.loras or _has_adapters(pipe)):
        pipe.unload_lora_weights()
    loaded.loras = {}
    loaded.lora_hashes = {}


def _has_adapters(pipe: Any) -> bool:
    try:
        return any(pipe.get_list_adapters().values())
    except Exception:
        return False


def free_model(loaded: LoadedModel | None) -> None:
    """Release a pipeline completely: offload hooks, references, garbage, CUDA cache."""
    if loaded is None:
        return
    pipe, loaded.pipe = loaded.pipe, None
    if pipe is not None:
        with contextlib.suppress(Exception):
            pipe.remove_all_hooks()
        del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Hashes (cached: the SDXL UNet is 5-10 GB)
# --------------------------------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int, int], str] = {}


def _hash_cache_file() -> Path:
    root = os.environ.get("SYNTHEX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "synthex")
    return Path(root) / "hashes.json"


def cached_short_hash(path: str | os.PathLike[str], length: int = 10, *, addnet: bool = False) -> str:
    """:func:`~synthex.io.short_hash` of a file (or with ``addnet``, its
    :func:`~synthex.io.addnet_hash`: what A1111 writes in ``Lora hashes``), cached by
    (path, size, mtime) in memory and, for files over 64 MiB, in ``~/.cache/synthex/hashes.json``."""
    from synthex.io import addnet_hash, short_hash

    path = Path(path).resolve()
    stat = path.stat()
    kind = "addnet" if addnet else "sha256"
    key = (str(path), stat.st_size, stat.st_mtime_ns, length, kind)
    if key in _HASHES:
        return _HASHES[key]
    big = stat.st_size > 64 << 20
    disk_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{length}" + ("|addnet" if addnet else "")
    disk = _read_hash_cache() if big else {}
    value = disk.get(disk_key) or (addnet_hash(path)[:length] if addnet else short_hash(path, length))
    _HASHES[key] = value
    if big and disk_key not in disk:
        _write_hash_cache({**disk, disk_key: value})
    return value


def _read_hash_cache() -> dict[str, str]:
    try:
        data = json.loads(_hash_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_hash_cache(data: dict[str, str]) -> None:
    target = _hash_cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        from synthex.io import atomic_write

        atomic_write(target, lambda fh: fh.write(json.dumps(data, indent=0).encode("utf-8")))
    except OSError as exc:
        logger.debug("hash cache not written: %s", exc)


# --------------------------------------------------------------------------------------------
# Report models (image -> text): transformers folders, resolved and loaded here only
# --------------------------------------------------------------------------------------------
REPORT_FILES = ("config.json", "tokenizer.json")


@dataclass
class LoadedReportModel:
    model: Any
    processor: Any
    name: str
    folder: Path
    info: dict[str, Any]


def embedded_report_dir() -> Path:
    """Folder of the shipped report model (``synthex/weights/report``)."""
    import synthex

    return Path(synthex.__file__).parent / "weights" / "report"


def report_presets(presets_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The ``report_models:`` presets (packaged, then the user's file)."""
    return dict(load_presets(presets_file).get("report_models") or {})


def _report_missing(folder: Path) -> list[str]:
    missing = [str(folder / name) for name in REPORT_FILES if not (folder / name).is_file()]
    if not any((folder / n).is_file() for n in ("processor_config.json", "preprocessor_config.json")):
        missing.append(str(folder / "processor_config.json (or preprocessor_config.json)"))
    if not list(folder.glob("*.safetensors")):
        missing.append(str(folder / "model.safetensors (or model-0000x-of-0000y.safetensors)"))
    return missing


def locate_report_model(model: str | os.PathLike[str] | None = None, *, allow_download: bool | None = None
                        ) -> tuple[str, Path]:
    """(name, folder) of a report model: a preset of ``report_models`` (default
    ``embedded-report``), a local folder or a hub id in the local cache. Nothing is downloaded
    unless allowed; a missing model is one error naming the files and how to get them."""
    presets = report_presets()
    name = str(model or "embedded-report")
    preset = presets.get(name) or {}
    source = str(preset.get("source", name))
    if preset.get("local_env") and os.environ.get(preset["local_env"]):
        source = expand(os.environ[preset["local_env"]])
    if source == "embedded-report":
        folder = embedded_report_dir()
    elif Path(expand(source)).exists() or not _HUB_ID.match(source):
        folder = Path(expand(source))
    else:
        allow = allow_download_from_env() if allow_download is None else allow_download
        folder = _cached_snapshot(source) or (_download(source, ["*.json", "*.safetensors", "*.txt", "*.jinja"])
                                              if allow else None)
        if folder is None:
            spec = ModelSpec(name=name, source=source, kind="hub", local_env=preset.get("local_env"))
            raise _missing_error(f"Report model {name!r} ({source}) is not on this machine.",
                                 [f"{source}: {', '.join(REPORT_FILES)}, *.safetensors"], _hub_hint(source, spec))
    missing = _report_missing(folder) if folder.is_dir() else [str(folder)]
    if missing:
        hint = (f"Valid names: {', '.join(sorted(presets))}, a folder written by 'synthex train report' "
                "(RUN/model), or a transformers Idefics3/SmolVLM folder.")
        raise _missing_error(f"{folder} is not a report model folder.", missing, hint)
    return name, folder


def load_report_model(model: str | os.PathLike[str] | None = None, *, adapter: str | os.PathLike[str] | None = None,
                      load_in_4bit: bool = False, dtype: torch.dtype | None = None,
                      allow_download: bool | None = None) -> LoadedReportModel:
    """Load a report model folder (``AutoModelForImageTextToText`` + ``AutoProcessor``), offline;
    ``load_in_4bit``: NF4 with double quantisation and bf16 compute (bitsandbytes, as the paper);
    ``adapter``: a peft LoRA folder applied on top."""
    name, folder = locate_report_model(model, allow_download=allow_download)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if load_in_4bit:
        kwargs.update(quantization_config=nf4_config(), device_map={"": "cuda:0" if torch.cuda.is_available() else "cpu"})
    elif dtype is not None:
        kwargs["dtype"] = dtype
    with _loading(f"report model {folder}"), _quiet_transformers():
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        net = AutoModelForImageTextToText.from_pretrained(str(folder), **kwargs)
        if adapter is not None:
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise ModelNotFoundError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json); pass "
                                         "RUN/model of a 'synthex train report --lora' run")
            net = PeftModel.from_pretrained(net, str(adapter), local_files_only=True)
    info_file = folder / "synthex_report.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    return LoadedReportModel(net, processor, name, folder, info)


def nf4_config():
    """The paper's 4-bit setting: NF4, double quantisation, bf16 compute."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise SynthexError("4-bit loading needs bitsandbytes: pip install bitsandbytes "
                           "(on a CPU-only machine: pip install --no-deps bitsandbytes)") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)
