"""The on-disk caches of the two trainers (issue 12, item 1).

One reader for every cache (:func:`read_safetensors`, :func:`read_cache`): a safetensors file,
optionally made with a ``key`` (stored in its header metadata); an absent, stale or unreadable
(truncated) file reads as None and is rebuilt by its caller. The file names and header keys are
those the trainers always wrote, so existing caches stay valid:

    base trainer (``synthex.train.scratch``)
        cache/images.safetensors  {"images": uint8 (N, 1, R, R)}
        cache/captions.json       captions, file_names, rejects, alternatives
        cache/latents.safetensors {"mean", "std"}, metadata {"scaling_factor": repr(float)}
    LoRA trainer (``synthex.train.lora``)
        cache/latents.safetensors {"mean", "std"}, metadata {"key": key}
        cache/text.safetensors    {"hidden", "row", "empty"[, "pooled"]}, metadata {"key": key}
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthex.train.loop import _save_tensors, _write_text

if TYPE_CHECKING:
    from synthex.train.lora import BaseModel

logger = logging.getLogger(__name__)

IMAGES_FILE = "images.safetensors"
CAPTIONS_FILE = "captions.json"
LATENTS_FILE = "latents.safetensors"
TEXT_FILE = "text.safetensors"


# =============================================================================================
# Reading (shared): a safetensors cache, validated, or None
# =============================================================================================
def read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensors and header metadata of a safetensors file; raises when it is missing or unreadable."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118


def read_cache(path: Path, key: str | None = None, *, warn: bool = True) -> tuple[dict, dict[str, str]] | None:
    """Tensors and metadata of a cache file (made with ``key`` when one is given); None when
    absent, stale or unreadable (a truncated cache is rebuilt, with a warning when ``warn``)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            if key is None or metadata.get("key") == key:
                return {k: fh.get_tensor(k) for k in fh.keys()}, metadata  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: rebuild it
        if warn:
            logger.warning("cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__,
                           str(err)[:120])
    return None


def _read_cache(path: Path, key: str) -> dict | None:
    """The tensors of a cache file made with ``key``; None when absent, stale or unreadable (a
    truncated cache is rebuilt, with a warning)."""
    found = read_cache(path, key)
    return None if found is None else found[0]


def _readable_safetensors(path: Path) -> bool:
    """Whether ``path`` is a complete safetensors file."""
    return read_cache(path, warn=False) is not None


# =============================================================================================
# Base trainer: images + captions, latents with their scaling factor
# =============================================================================================
def read_image_cache(cache: Path) -> tuple[Any, dict]:
    """uint8 images and the captions/file names/rejects record; raises when either is unreadable."""
    from safetensors.torch import load_file

    images = load_file(str(cache / IMAGES_FILE))["images"]
    meta = json.loads((cache / CAPTIONS_FILE).read_text(encoding="utf-8"))
    return images, meta


def write_image_cache(cache: Path, images, meta: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    _save_tensors({"images": images}, cache / IMAGES_FILE)
    _write_text(cache / CAPTIONS_FILE, json.dumps(meta))


def write_scaled_latents(path: Path, mean, std, scaling: float) -> None:
    _save_tensors({"mean": mean, "std": std}, path, {"scaling_factor": repr(scaling)})


def read_scaled_latents(path: Path) -> tuple[dict, float]:
    """The latent tensors and the VAE scaling factor stored with them; raises when unreadable."""
    tensors, metadata = read_safetensors(path)
    return tensors, float(metadata["scaling_factor"])


# =============================================================================================
# LoRA trainer: keyed latents and text embeddings
# =============================================================================================
def cache_key(model_hash: str, cfg, resolution: int, fingerprint: str) -> str:
    """The key of the LoRA latent cache (the text cache adds ``|text_column``)."""
    return f"{model_hash}|{cfg.model}|{cfg.vae}|{resolution}|{cfg.crop}|{fingerprint}|{cfg.split}"


def _encode_latents(base: BaseModel, pixels):
    """VAE posterior mean and std of pixels in [-1, 1] (grayscale repeated for RGB VAEs)."""
    vae = base.pipe.vae
    if vae.config.in_channels != pixels.shape[1]:
        pixels = pixels.repeat(1, vae.config.in_channels, 1, 1)
    dist = vae.encode(pixels.to(base.loaded.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def build_latent_cache(base: BaseModel, data, path: Path, key: str, progress: bool, batch: int = 16) -> dict:
    """Encode every image once (or read ``path`` when it was made with the same ``key``)."""
    import torch
    from tqdm.auto import tqdm

    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    means, stds = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(data), batch), desc="caching latents", unit="batch", disable=not progress):
            m, s = _encode_latents(base, data.pixels(torch.arange(start, min(start + batch, len(data)))))
            means.append(m.cpu())
            stds.append(s.cpu())
    cache = {"mean": torch.cat(means), "std": torch.cat(stds)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_tensors(cache, path, {"key": key})
    return cache


def build_text_cache(base: BaseModel, captions: list[str], path: Path, key: str, progress: bool,
                     batch: int = 32) -> dict:
    """Embeddings of every distinct caption plus the empty caption (last row)."""
    import torch
    from tqdm.auto import tqdm

    from synthex.train.lora import encode_text, tokenize_all

    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    texts = list(dict.fromkeys(captions)) + [""]
    index = {t: i for i, t in enumerate(texts)}
    hidden, pooled = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch), desc="caching text", unit="batch", disable=not progress):
            h, p = encode_text(base, tokenize_all(base, texts[start:start + batch]))
            hidden.append(h.cpu().half())
            if p is not None:
                pooled.append(p.cpu().half())
    cache = {"hidden": torch.cat(hidden), "row": torch.tensor([index[c] for c in captions]),
             "empty": torch.tensor(len(texts) - 1)}
    if pooled:
        cache["pooled"] = torch.cat(pooled)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_tensors(cache, path, {"key": key})
    return cache
