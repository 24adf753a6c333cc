"""kohya / AUTOMATIC1111 / ComfyUI export of a LoRA made by ``synthex train lora``.

:func:`export_kohya` renames the tensors to kohya's names (``lora_unet_..._to_q.lora_down.weight``,
``.lora_up.weight``, ``.alpha``) and writes kohya sd-scripts' training metadata: the ``ss_*`` keys
of ``train_network.py`` that have a meaning for our runs, all strings, filled from the run's real
configuration (stored as ``synthex.config`` and other ``synthex.*`` keys in the LoRA file's
header by the trainer), plus ``sshs_model_hash`` / ``sshs_legacy_hash`` computed as kohya's
``train_util.precalculate_safetensors_hashes`` does: on the bytes of the file saved with only
its ``ss_*`` metadata. The ``synthex.*`` keys are kept (the model registry reads them).

Keys kohya writes that mean nothing here are left out (regularisation images, aspect-ratio
buckets, multires noise discount, Huber loss, fp8, the sd-scripts commit, the legacy
``ss_sd_model_hash``: our base models are diffusers folders, not one checkpoint file).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from synthex.errors import OutputExistsError, SynthexError

_KOHYA_PREFIX = {"sd": {"unet": "lora_unet", "text_encoder": "lora_te"},
                 "sdxl": {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}
BASE_MODEL_VERSIONS = {"sdxl": "sdxl_base_v1-0", "sd": "sd_v1", "sd2": "sd_v2"}
TRAINING_COMMENT = "SynTheX-Ray; synthetic X-rays are for research, not diagnosis"


def to_kohya(tensors: dict[str, Any], family: str) -> dict[str, Any]:
    """diffusers-format LoRA tensors -> kohya names (``lora_unet_..._to_q.lora_down.weight``,
    ``.lora_up.weight`` and ``.alpha`` = rank, i.e. scale 1, since alpha is already folded in)."""
    import torch

    out: dict[str, Any] = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        prefix = _KOHYA_PREFIX.get(family, {}).get(component)
        if prefix is None:
            raise SynthexError(f"cannot export tensor {key!r} to kohya format: unknown component {component!r}")
        for marker, kind in ((".lora.down.weight", "lora_down"), (".lora_A.weight", "lora_down"),
                             (".lora_linear_layer.down.weight", "lora_down"), (".lora.up.weight", "lora_up"),
                             (".lora_B.weight", "lora_up"), (".lora_linear_layer.up.weight", "lora_up")):
            if rest.endswith(marker):
                module = rest[: -len(marker)]
                break
        else:
            raise SynthexError(f"cannot export tensor {key!r} to kohya format: not a LoRA down/up weight")
        if component != "unet" and not module.startswith("text_model."):
            module = "text_model." + module  # kohya names CLIP layers from the text_model root
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.{kind}.weight"] = value
        if kind == "lora_down":
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    return out


def read_lora_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, header metadata) of a LoRA ``.safetensors`` file; anything else is an error
    naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SynthexError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as err:  # noqa: BLE001 - SafetensorError (not a safetensors file, truncated), OSError
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SynthexError(f"{path} is not a readable .safetensors LoRA file ({reason}); pass the "
                           "pytorch_lora_weights.safetensors that 'synthex train lora' wrote") from err


def _str(value: Any) -> str:
    return "None" if value is None else str(value)


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's tag count of a dataset: captions split at commas, stripped, empty tags skipped."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in (t.strip() for t in str(caption).split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def kohya_metadata(meta: dict[str, str], output_name: str) -> dict[str, str]:
    """The ``ss_*`` keys (strings) of a LoRA from the ``synthex.*`` header the trainer wrote.

    Files from versions without ``synthex.config`` get the keys their header can tell."""
    cfg: dict[str, Any] = {}
    try:
        cfg = json.loads(meta.get("synthex.config") or "{}")
    except json.JSONDecodeError:
        cfg = {}
    family = meta.get("synthex.family", "sd")
    rank = cfg.get("rank", meta.get("synthex.rank"))
    version = meta.get("synthex.base_model_version") or BASE_MODEL_VERSIONS.get(family, family)
    resolution = meta.get("synthex.resolution")
    ss: dict[str, Any] = {
        "ss_session_id": meta.get("synthex.session_id"),
        "ss_training_started_at": meta.get("synthex.training_started_at"),
        "ss_training_finished_at": meta.get("synthex.saved_at"),
        "ss_output_name": output_name,
        "ss_network_module": "networks.lora",
        # alpha/rank is folded into the up weights and every .alpha tensor is the rank: scale 1
        "ss_network_dim": rank, "ss_network_alpha": rank,
        "ss_v2": version == BASE_MODEL_VERSIONS["sd2"],
        "ss_base_model_version": version,
        "ss_resolution": f"({resolution}, {resolution})" if resolution else None,
        "ss_steps": meta.get("synthex.steps"),
        "ss_num_train_images": meta.get("synthex.images"),
        "ss_num_reg_images": 0,
        "ss_training_comment": TRAINING_COMMENT,
        "ss_clip_skip": None, "ss_max_token_length": None, "ss_lowram": False, "ss_full_fp16": False,
        "ss_full_bf16": False, "ss_multires_noise_iterations": None, "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False, "ss_ip_noise_gamma": None, "ss_debiased_estimation": False,
        "ss_scale_weight_norms": None, "ss_loss_type": "l2", "ss_face_crop_aug_range": None,
        "ss_color_aug": False, "ss_random_crop": False, "ss_shuffle_caption": False, "ss_keep_tokens": 0,
        "ss_enable_bucket": False, "ss_bucket_info": "null", "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0, "ss_reg_dataset_dirs": "{}",
    }
    model = cfg.get("model") or meta.get("synthex.base_model")
    if model:
        ss["ss_sd_model_name"] = os.path.basename(str(model).rstrip("/\\")) or str(model)
    if cfg.get("vae"):
        ss["ss_vae_name"] = os.path.basename(str(cfg["vae"]).rstrip("/\\"))
    if meta.get("synthex.dataset_dir"):
        ss["ss_dataset_dirs"] = json.dumps({meta["synthex.dataset_dir"]: {
            "n_repeats": 1, "img_count": int(meta.get("synthex.images") or 0)}})
    if meta.get("synthex.tag_frequency"):
        ss["ss_tag_frequency"] = meta["synthex.tag_frequency"]
    if cfg:
        lr = cfg["learning_rate"]
        te_lr = (cfg.get("text_encoder_lr") or lr) if cfg.get("train_text_encoder") else 0.0
        world = int(meta.get("synthex.world_size") or 1)
        batch, accum = int(cfg["batch_size"]), int(cfg["gradient_accumulation"])
        n_images = int(meta.get("synthex.images") or 0)
        max_steps = int(meta.get("synthex.max_steps") or cfg.get("max_steps") or 0)
        batches_per_epoch = max(1, math.ceil(n_images / (batch * world))) if n_images else None
        steps_per_epoch = max(1, math.ceil(batches_per_epoch / accum)) if batches_per_epoch else None
        steps = int(meta.get("synthex.steps") or max_steps)
        args = {"target_modules": ",".join(cfg.get("target_modules") or []),
                "trained_alpha": str(float(cfg["alpha"] if cfg.get("alpha") is not None else cfg["rank"])),
                "alpha_folded": "true"}
        if cfg.get("text_encoder_rank"):
            args["text_encoder_rank"] = str(cfg["text_encoder_rank"])
        ss.update({
            "ss_learning_rate": lr, "ss_unet_lr": lr, "ss_text_encoder_lr": te_lr,
            "ss_num_batches_per_epoch": batches_per_epoch,
            "ss_num_epochs": cfg.get("epochs") or (math.ceil(max_steps / steps_per_epoch) if steps_per_epoch else None),
            "ss_epoch": math.ceil(steps / steps_per_epoch) if steps_per_epoch else None,
            "ss_batch_size_per_device": batch, "ss_total_batch_size": batch * world * accum,
            "ss_gradient_checkpointing": bool(cfg.get("gradient_checkpointing")),
            "ss_gradient_accumulation_steps": accum, "ss_max_train_steps": max_steps,
            "ss_lr_warmup_steps": cfg.get("warmup_steps", 0), "ss_lr_scheduler": cfg.get("lr_scheduler"),
            "ss_network_dropout": cfg.get("dropout", 0.0), "ss_network_args": json.dumps(args),
            "ss_mixed_precision": cfg.get("mixed_precision"), "ss_cache_latents": bool(cfg.get("cache_latents")),
            "ss_seed": cfg.get("seed"), "ss_noise_offset": cfg.get("noise_offset") or None,
            "ss_optimizer": meta.get("synthex.optimizer") or optimizer_name(cfg),
            "ss_max_grad_norm": cfg.get("grad_clip"), "ss_caption_dropout_rate": cfg.get("caption_dropout", 0.0),
            "ss_min_snr_gamma": cfg.get("min_snr_gamma") or None, "ss_flip_aug": bool(cfg.get("hflip")),
        })
    return {k: _str(v) for k, v in ss.items() if v is not None or k in _NONE_MEANS_OFF}


# keys whose "None" is kohya's own value for "off" (written even when None)
_NONE_MEANS_OFF = {"ss_clip_skip", "ss_max_token_length", "ss_multires_noise_iterations", "ss_adaptive_noise_scale",
                   "ss_ip_noise_gamma", "ss_scale_weight_norms", "ss_face_crop_aug_range", "ss_noise_offset",
                   "ss_min_snr_gamma"}


def optimizer_name(cfg: dict[str, Any]) -> str:
    """kohya's ``ss_optimizer``: the optimizer class path and its arguments."""
    name = "bitsandbytes.optim.adamw.AdamW8bit" if cfg.get("use_8bit_adam") else "torch.optim.adamw.AdamW"
    return f"{name}(weight_decay={cfg.get('weight_decay', 0.01)})"


def precalculate_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya's ``sshs_model_hash`` and ``sshs_legacy_hash``: the addnet hashes of the file as saved
    with only its ``ss_*`` metadata (so that user edits of other metadata keep them valid)."""
    from safetensors.torch import save

    from synthex.io import addnet_hash, addnet_legacy_hash

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return addnet_hash(data), addnet_legacy_hash(data)


def export_kohya(lora_file: str | Path, out_file: str | Path, *, overwrite: bool = False,
                 name: str | None = None) -> Path:
    """Write the kohya-format copy of a diffusers-format LoRA file made by ``train lora``, with
    kohya's ``ss_*`` training metadata and ``sshs_*`` hashes. ``name`` is ``ss_output_name``
    (default: the run's name recorded in the file, else the output file's stem)."""
    from synthex.io import atomic_write

    lora_file, out_file = Path(lora_file), Path(out_file)
    if out_file.suffix != ".safetensors":
        raise SynthexError(f"--out {out_file} must end with .safetensors (AUTOMATIC1111 and ComfyUI list only those)")
    if out_file.exists() and not overwrite:
        raise OutputExistsError(f"{out_file} exists; pass --overwrite or choose another output file")
    tensors, meta = read_lora_file(lora_file)
    if not tensors:
        raise SynthexError(f"{lora_file} holds no tensors; pass a LoRA made by 'synthex train lora'")
    if all(k.startswith(("lora_unet_", "lora_te")) for k in tensors):
        raise SynthexError(f"{lora_file} is already in kohya format; AUTOMATIC1111 and ComfyUI read it as it is")
    family = meta.get("synthex.family") or ("sdxl" if any(k.startswith("text_encoder_2.") for k in tensors) else "sd")
    kohya = to_kohya(tensors, family)
    ss = kohya_metadata(meta, name or meta.get("synthex.run_name") or out_file.stem)
    model_hash, legacy_hash = precalculate_hashes(kohya, ss)
    header = {k: v for k, v in meta.items() if not k.startswith(("ss_", "sshs_")) and k != "format"}
    header.update({"format": "pt", **ss, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in kohya.items()}, header)
    atomic_write(out_file, lambda fh: fh.write(data))
    return out_file
