"""The embedded default model: a small grayscale text-to-X-ray latent diffusion model.

It is a plain diffusers ``StableDiffusionPipeline`` made of small components, so that every tool
that reads diffusers folders (our engine, samplers, LoRA code) works on it unchanged:

- ``AutoencoderKL`` with 1 input/output channel (grayscale) and 4 latent channels, 3 levels
  (downsampling 4x: 128 px -> 32x32x4 latents), no attention in its mid block (fully
  convolutional, cheap on CPU);
- ``UNet2DConditionModel`` on the 32x32x4 latents, cross-attention on the two coarser levels
  (16x16 and 8x8) and in the mid block; self-attention at 32x32 costs ~1.8x the training step on
  CPU for little gain at this size (see ``benchmarks/bench_embedded.py``);
- a small ``CLIPTextModel`` with its own byte-level BPE vocabulary trained on the captions
  (:func:`train_tokenizer`), saved as a standard ``CLIPTokenizer`` (pads/truncates to 77);
- a ``DDPMScheduler`` with Stable Diffusion's noise schedule (the engine swaps samplers).

The pipeline's output is a grayscale PIL image (mode ``"L"``): diffusers' image processor turns
single-channel images into mode ``"L"`` itself, so no wrapper is needed (checked by the tests).

Nothing here seeds global random state: weights are initialised inside
``torch.random.fork_rng`` from a seed drawn from the caller's ``torch.Generator``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import synthex
from synthex.errors import ConfigError

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(synthex.__file__).parent / "weights" / "embedded"
"""Where the trained embedded pipeline ships (a diffusers folder, ``model_index.json`` inside)."""
MAX_TOKENS = 77
"""Text length of the text encoder, as in Stable Diffusion (start + 75 tokens + end)."""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class EmbeddedArch:
    """Widths and depths of the embedded model (the defaults are the shipped model).

    Channel tuples list the levels from the highest resolution down. ``unet_attention`` says
    which UNet levels have (self + cross) attention blocks. ``head_dim`` is the number of
    channels per attention head.
    """

    vae_channels: tuple[int, ...] = (32, 64, 128)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 2
    unet_attention: tuple[bool, ...] = (False, True, True)
    head_dim: int = 32
    norm_groups: int = 16
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    prediction_type: str = "epsilon"

    @classmethod
    def tiny(cls) -> "EmbeddedArch":
        """A very small variant for tests (builds and runs in milliseconds)."""
        return cls(vae_channels=(8, 16), unet_channels=(16, 32), unet_layers_per_block=1,
                   unet_attention=(False, True), head_dim=8, norm_groups=4, text_hidden=16,
                   text_layers=1, text_heads=2, text_intermediate=32)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "EmbeddedArch":
        """Build from a (YAML) mapping; unknown keys raise :class:`~synthex.errors.ConfigError` naming them."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown architecture keys {unknown}; known keys: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def vae_scale_factor(arch: EmbeddedArch) -> int:
    """Pixels per latent cell along one side (4 for three VAE levels)."""
    return 2 ** (len(arch.vae_channels) - 1)


def embedded_configs(resolution: int = 128, arch: EmbeddedArch | None = None) -> dict[str, dict]:
    """Component configs (constructor kwargs) of the embedded model at ``resolution`` pixels.

    Returns ``{"vae", "unet", "text_encoder", "scheduler"}``; the text encoder's vocabulary size
    and special token ids are filled in from the tokenizer by :func:`build_components`.
    """
    arch = arch or EmbeddedArch()
    _check_arch(arch, resolution)
    levels = len(arch.vae_channels)
    vae = dict(
        in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels, block_out_channels=list(arch.vae_channels),
        layers_per_block=arch.vae_layers_per_block, latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_groups, sample_size=resolution, scaling_factor=1.0,
        mid_block_add_attention=False, force_upcast=False,
    )
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.unet_attention]
    unet = dict(
        sample_size=resolution // vae_scale_factor(arch), in_channels=arch.latent_channels,
        out_channels=arch.latent_channels, block_out_channels=list(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block, down_block_types=down,
        up_block_types=[b.replace("Down", "Up") for b in reversed(down)],
        cross_attention_dim=arch.text_hidden, norm_num_groups=arch.norm_groups,
        # diffusers' legacy naming: ``attention_head_dim`` holds the number of heads per level.
        attention_head_dim=[max(1, c // arch.head_dim) for c in arch.unet_channels],
    )
    text = dict(
        hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu", projection_dim=arch.text_hidden,
    )
    scheduler = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=arch.prediction_type, clip_sample=False,
        steps_offset=1, timestep_spacing="leading",
    )
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": scheduler}


def _check_arch(arch: EmbeddedArch, resolution: int) -> None:
    if len(arch.unet_attention) != len(arch.unet_channels):
        raise ConfigError(f"unet_attention {arch.unet_attention} must have one flag per UNet level "
                         f"{arch.unet_channels}")
    if arch.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"prediction_type {arch.prediction_type!r} must be 'epsilon' or 'v_prediction'")
    factor = vae_scale_factor(arch) * 2 ** (len(arch.unet_channels) - 1)
    if resolution <= 0 or resolution % factor:
        raise ConfigError(f"resolution {resolution} must be a positive multiple of {factor} for this "
                         f"architecture (VAE x{vae_scale_factor(arch)}, UNet {len(arch.unet_channels)} levels)")
    for name in ("vae_channels", "unet_channels"):
        bad = [c for c in getattr(arch, name) if c % arch.norm_groups]
        if bad:
            raise ConfigError(f"{name} {bad} must be multiples of norm_groups={arch.norm_groups}")


def build_components(configs: dict[str, dict], tokenizer, generator=None) -> dict[str, Any]:
    """Randomly initialised components, ready for ``StableDiffusionPipeline(**components)``.

    Weights are initialised from a seed drawn from ``generator`` (a ``torch.Generator``; None
    means seed 0) inside ``torch.random.fork_rng``: the global random state is left untouched.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    seed = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    text_config = CLIPTextConfig(
        **configs["text_encoder"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**configs["vae"])
        unet = UNet2DConditionModel(**configs["unet"])
        text_encoder = CLIPTextModel(text_config)
    return {
        "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
        "scheduler": DDPMScheduler(**configs["scheduler"]), "safety_checker": None,
        "feature_extractor": None, "image_encoder": None, "requires_safety_checker": False,
    }


def build_pipeline(components: dict[str, Any]):
    """``StableDiffusionPipeline`` from :func:`build_components`' dict (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    parts = {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
             "requires_safety_checker": False, **components}
    pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_parameters(components: dict[str, Any]) -> dict[str, int]:
    """Number of parameters of each torch module among the components."""
    import torch

    return {name: sum(p.numel() for p in module.parameters())
            for name, module in components.items() if isinstance(module, torch.nn.Module)}


# ---------------------------------------------------------------------------------------------
# Tokenizer: a CLIP-style byte-level BPE trained on our captions
# ---------------------------------------------------------------------------------------------
def _byte_symbols() -> list[str]:
    """The 256 byte symbols of byte-level BPE, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def train_tokenizer(captions: Iterable[str], vocab_size: int = 3000, min_frequency: int = 2):
    """Train a CLIP-style BPE on ``captions`` and return a ``transformers.CLIPTokenizer``.

    The normaliser and pre-tokeniser are CLIP's own (lower case, CLIP's word regex, byte level,
    ``</w>`` word ends), so the result behaves like Stable Diffusion's tokenizer with a smaller,
    domain vocabulary: all 256 bytes (with and without ``</w>``) are in it, so any text encodes
    without unknown tokens. The vocabulary is ordered like CLIP's: bytes, bytes + ``</w>``, one
    entry per merge, then the start/end tokens. Deterministic for the same captions.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    texts = [str(c) for c in captions]
    if not texts:
        raise ConfigError("cannot train a tokenizer on zero captions")
    clip_backend = CLIPTokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer, bpe.pre_tokenizer = clip_backend.normalizer, clip_backend.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - 256, 1), min_frequency=min_frequency, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save as a diffusers ``tokenizer/`` subfolder (``tokenizer.json`` + vocab/merges files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(backend["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def load_tokenizer(folder: Path):
    """Load a tokenizer saved by :func:`save_tokenizer` from its vocab/merges files (offline)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ", 1)) for line in lines if line and not line.startswith("#version")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def tokenize(tokenizer, texts: list[str]):
    """Token ids ``(len(texts), 77)`` padded and truncated exactly as the SD pipeline does."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids
