"""The dual encoder: an image tower and a text tower that map into one normalised space.

- image tower: conv-BN-ReLU blocks (the layout of the phantom finding classifier, so its weights
  can warm-start it), average-pooled to a ``pool_grid x pool_grid`` map that keeps left and
  right apart, then a linear projection;
- text tower: a transformers ``CLIPTextModel`` built from a config (the embedded model's
  domain BPE tokenizer, its weights optionally warm-started from the embedded text encoder),
  its pooled end-of-text state projected linearly;
- a learnable temperature (CLIP's ``logit_scale``).

A model folder holds ``config.json``, ``model.safetensors`` and ``tokenizer/`` (vocab + merges):
nothing is pickled and nothing is downloaded. :func:`load_search_model` with no folder loads the
shipped one (``synthex/weights/search``).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthex.errors import ConfigError, SynthexError
from synthex.phantom.classifier import conv_blocks

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_SEARCH_DIR = Path(__file__).resolve().parent.parent / "weights" / "search"


@dataclass
class DualEncoderConfig:
    """Architecture of a :class:`DualEncoder` (saved as ``config.json``)."""

    image_size: int = 128
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    pool_grid: int = 2
    embed_dim: int = 256
    vocab_size: int = 2961
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_length: int = 77
    bos_token_id: int = 2959
    eos_token_id: int = 2960
    logit_scale_init: float = math.log(1 / 0.07)
    info: dict[str, Any] = field(default_factory=dict)  # training summary and held-out metrics

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown search model config key(s) {sorted(unknown)}; "
                              f"valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**data)

    def text_config(self):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(vocab_size=self.vocab_size, hidden_size=self.text_hidden,
                              intermediate_size=self.text_intermediate, num_hidden_layers=self.text_layers,
                              num_attention_heads=self.text_heads, max_position_embeddings=self.max_length,
                              bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
                              pad_token_id=self.eos_token_id, projection_dim=self.embed_dim)


class DualEncoder(nn.Module):
    """Image tower + text tower + temperature; ``encode_*`` return L2-normalised embeddings."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        from transformers import CLIPTextModel

        self.config = config
        self.features = conv_blocks(config.channels)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_grid)
        self.image_proj = nn.Linear(config.channels[-1] * config.pool_grid ** 2, config.embed_dim)
        self.text_model = CLIPTextModel(config.text_config())
        self.text_proj = nn.Linear(config.text_hidden, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.frozen_stages = 0

    def freeze_image_stages(self, n: int) -> None:
        """Fix the first ``n`` conv stages (weights and BatchNorm statistics), e.g. after a warm start."""
        if not 0 <= n <= len(self.config.channels):
            raise ConfigError(f"freeze_image_stages must be in 0..{len(self.config.channels)}, got {n}")
        self.frozen_stages = n
        for i, layer in enumerate(self.features):
            layer.requires_grad_(i >= 7 * n)
        self.train(self.training)

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        for layer in list(self.features)[: 7 * self.frozen_stages]:
            layer.eval()
        return self

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float (N, 1, S, S) in [-1, 1] -> (N, D) unit vectors."""
        return F.normalize(self.image_proj(self.pool(self.features(x)).flatten(1)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L) -> (N, D) unit vectors (the end-of-text state, CLIP's pooling)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.text_proj(out.pooler_output), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, math.log(100)).exp()


def images_to_tensor(images: np.ndarray | Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 grayscale images (N, H, W) -> float (N, 1, size, size) in [-1, 1] (area resize)."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise SynthexError(f"search images must be (N, H, W) grayscale arrays, got shape {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


class SearchModel:
    """A loaded dual encoder with its tokenizer: embeds images and texts (no gradients)."""

    def __init__(self, model: DualEncoder, tokenizer, folder: Path | None = None, model_id: str = "untrained"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.folder = folder
        self.model_id = model_id

    @property
    def config(self) -> DualEncoderConfig:
        return self.model.config

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer([str(t) for t in texts], padding="max_length", truncation=True,
                             max_length=self.config.max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, D) float32 unit vectors; an empty text is an error (say what to search for)."""
        texts = list(texts)
        empty = [i for i, t in enumerate(texts) if not str(t).strip()]
        if empty:
            raise SynthexError(f"text {empty[0]} is empty; give words to search for, e.g. 'left pleural effusion'")
        out = [self.model.encode_text(*self.tokenize(texts[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.embed_dim), np.float32)

    @torch.no_grad()
    def embed_images(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 128,
                     callback: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 grayscale (N, H, W) -> (N, D) float32 unit vectors."""
        arr = np.asarray(images)
        out = []
        for i in range(0, len(arr), batch_size):
            out.append(self.model.encode_image(images_to_tensor(arr[i:i + batch_size], self.config.image_size)))
            if callback:
                callback(min(len(arr), i + batch_size) - i)
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.embed_dim), np.float32)


def save_search_model(model: DualEncoder, tokenizer, folder: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``tokenizer/`` (each atomically)."""
    from safetensors.torch import save

    from synthex.io import atomic_write
    from synthex.models.embedded import save_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": "pt", "synthex": "search-dual-encoder"})
    atomic_write(folder / WEIGHTS_FILE, lambda fh: fh.write(data))
    atomic_write(folder / CONFIG_FILE, lambda fh: fh.write(json.dumps(asdict(model.config), indent=1).encode()))
    save_tokenizer(tokenizer, folder / "tokenizer")
    return folder


def load_search_model(folder: str | Path | None = None) -> SearchModel:
    """Load a model folder written by :func:`save_search_model` (default: the shipped model)."""
    from safetensors.torch import load_file

    from synthex.io import short_hash
    from synthex.models.embedded import load_tokenizer

    folder = Path(folder) if folder else DEFAULT_SEARCH_DIR
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, "tokenizer/vocab.json", "tokenizer/merges.txt")
               if not (folder / n).is_file()]
    if missing:
        raise SynthexError(f"{folder} is not a search model folder (missing {', '.join(missing)}); train one with "
                           "'synthex train search' or leave --model out to use the shipped one")
    config = DualEncoderConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
    model = DualEncoder(config)
    try:
        from synthex.models.compat import remap_text_keys

        tensors = remap_text_keys(load_file(str(folder / WEIGHTS_FILE)), model.state_dict().keys())
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise SynthexError(f"{folder / WEIGHTS_FILE} does not match its config.json: {str(exc)[:300]}") from exc
    tokenizer = load_tokenizer(folder / "tokenizer")
    return SearchModel(model, tokenizer, folder, model_id=short_hash(folder / WEIGHTS_FILE, 12))
