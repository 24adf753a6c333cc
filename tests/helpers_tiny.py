"""Tiny randomly initialised SD / SDXL pipelines and LoRAs, saved like real model folders.

Tests go through :mod:`synthex.models.registry` exactly like users: build a pipeline from
configs, ``save_pretrained`` it into a folder, then load that folder by path. Folders are built
once per test process (``tiny_model_dir``) in a temporary directory removed at exit.

Kinds:
- ``"sd"``:    StableDiffusionPipeline, 3-channel VAE (like SD 1.x), 64x64 images.
- ``"sd-l"``:  StableDiffusionPipeline, 1-channel VAE (like the embedded model), 64x64 grayscale.
- ``"sdxl"``:  StableDiffusionXLPipeline, two text encoders, 64x64.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

WIDTH = 32
SIZE = 64
KINDS = ("sd", "sd-l", "sdxl")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the 2 cores are
    shared with other jobs (OpenMP threads then spin-wait). Import this fixture into a test
    module to apply it there; the previous thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tokenizer() -> Any:
    from synthex.text.clip_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def text_config(layers: int = 2) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=WIDTH,
    )


def vae(channels: int = 3) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=8, sample_size=SIZE,
    )


def unet(cross_attention_dim: int = WIDTH, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), norm_num_groups=8,
        **extra,
    )


def sdxl_unet() -> Any:
    time_dim = 8
    return unet(2 * WIDTH, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                projection_class_embeddings_input_dim=WIDTH + 6 * time_dim)


def scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(steps_offset=1, beta_schedule="scaled_linear",
                                  beta_start=0.00085, beta_end=0.012)


def sd_pipeline(channels: int = 3, seed: int = 0) -> Any:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)  # test helper: fixes the random init of the tiny weights
    return StableDiffusionPipeline(
        vae=vae(channels), text_encoder=CLIPTextModel(text_config()).eval(),
        tokenizer=tokenizer(), unet=unet(), scheduler=scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def sdxl_pipeline(seed: int = 0) -> Any:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return StableDiffusionXLPipeline(
        vae=vae(), text_encoder=CLIPTextModel(text_config()).eval(),
        text_encoder_2=CLIPTextModelWithProjection(text_config()).eval(),
        tokenizer=tokenizer(), tokenizer_2=tokenizer(), unet=sdxl_unet(), scheduler=scheduler(),
    )


def build(kind: str, seed: int = 0) -> Any:
    if kind == "sd":
        return sd_pipeline(3, seed)
    if kind == "sd-l":
        return sd_pipeline(1, seed)
    if kind == "sdxl":
        return sdxl_pipeline(seed)
    raise ValueError(f"unknown tiny kind {kind!r}; one of {KINDS}")


def save(kind: str, folder: Path, seed: int = 0) -> Path:
    build(kind, seed).save_pretrained(folder, safe_serialization=True)
    return folder


@functools.lru_cache(maxsize=None)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="synthex-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=None)
def tiny_model_dir(kind: str) -> Path:
    """A saved tiny model folder of ``kind``, built once per process. Treat it as read-only."""
    return save(kind, _root() / kind)


def make_lora(path: Path, kind: str = "sd", *, seed: int = 0, rank: int = 4,
              text_encoder: bool = False) -> Path:
    """A diffusers-format LoRA ``.safetensors`` for the tiny ``kind`` UNet (random, non-zero B)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    model = sdxl_unet() if kind == "sdxl" else unet()
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    model.add_adapter(config)
    layers: dict[str, Any] = {"unet_lora_layers": get_peft_model_state_dict(model)}
    if text_encoder:
        from transformers import CLIPTextModel

        encoder = CLIPTextModel(text_config())
        encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(encoder)
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(path.parent, weight_name=path.name, safe_serialization=True, **layers)
    return path
