"""``synthex train``: the embedded model from scratch (``base``), LoRA fine-tuning (``lora``), the
search dual encoder (``search``), the GAN baseline (``gan``) and the note models (``note``)."""
from __future__ import annotations

from pathlib import Path

import typer

from synthex.cli.boundary import BoundaryGroup

app = typer.Typer(cls=BoundaryGroup, help="Train models: the embedded model from scratch, LoRA adapters, the search dual "
                  "encoder, the GAN baseline.",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Train models: the embedded model from scratch (``base``), LoRA adapters (``lora``), the GAN baseline (``gan``)."""


def _set_threads(threads: int | None) -> None:
    """``--threads``: None = torch's choice; otherwise a count >= 1."""
    if threads is None:
        return
    if threads < 1:
        from synthex.errors import ConfigError

        raise ConfigError(f"--threads {threads} must be >= 1 (or left out for torch's choice)")
    import torch

    torch.set_num_threads(threads)


@app.command()
def base(
    data: Path = typer.Option(..., "--data", "-d", help="Imagefolder: metadata.csv (file_name,text[,split]) + images."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, log, samples, pipeline/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Training YAML (default: the packaged embedded_base.yaml)."),
    max_steps_vae: int = typer.Option(None, "--max-steps-vae", help="VAE training steps."),
    max_steps_unet: int = typer.Option(None, "--max-steps-unet", help="UNet + text encoder training steps."),
    resolution: int = typer.Option(None, "--resolution", help="Image side in pixels (default 128)."),
    batch_size: int = typer.Option(None, "--batch-size", help="UNet-stage batch size."),
    batch_size_vae: int = typer.Option(None, "--batch-size-vae", help="VAE-stage batch size."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation, batches and noise (default 42)."),
    split: str = typer.Option(None, "--split", help="metadata.csv split to train on (default 'train')."),
    init_from: str = typer.Option(None, "--init-from", help="Warm start: 'embedded' (the shipped model) or a "
                                  "pipeline/ folder of an earlier run (same arch); its tokenizer and VAE are kept."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                "(a larger --max-steps-unet extends a finished run)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train the embedded text-to-X-ray model: tokenizer, VAE, latent cache, UNet + text encoder."""
    from synthex.train.scratch import load_config, train_base

    overrides = {
        "vae.max_steps": max_steps_vae, "unet.max_steps": max_steps_unet, "resolution": resolution,
        "unet.batch_size": batch_size, "vae.batch_size": batch_size_vae, "seed": seed, "split": split,
        "init_from": init_from,
    }
    cfg = load_config(config, overrides)
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    _set_threads(threads)
    result = train_base(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"images: {result.n_images} ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'})")
    typer.echo("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in result.parameters.items()))
    typer.echo(f"pipeline: {result.pipeline_dir} ({result.size_mb:.1f} MB)")
    typer.echo(f"validation grid: {result.validation_grid}; log: {out / 'training_log.csv'}")


@app.command()
def lora(
    data: Path = typer.Option(..., "--data", "-d", help="Imagefolder: metadata.csv (file_name,text[,split]) + images."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, log, checkpoints, the LoRA file)."),
    model: str = typer.Option(None, "--model", "-m", help="Base model: a preset (embedded, sdxl-base, sd15...) or a diffusers folder. Default: embedded."),
    config: str = typer.Option(None, "--config", "-c", help="LoRA YAML, or 'thesis-sdxl' for the thesis recipe; options below override it."),
    vae: str = typer.Option(None, "--vae", help="VAE folder that replaces the model's own (e.g. the SDXL fp16-fix VAE)."),
    resolution: int = typer.Option(None, "--resolution", help="Training side in pixels (default: the model's native size)."),
    crop: str = typer.Option(None, "--crop", help="center | smart (the thesis crop: portrait films keep their top)."),
    split: str = typer.Option(None, "--split", help="metadata.csv split to train on (default 'train'; 'all' = every row)."),
    trigger: str = typer.Option(None, "--trigger", help="Trigger phrase recorded in the LoRA (default: the dataset preset's)."),
    rank: int = typer.Option(None, "--rank", help="LoRA rank (default 8)."),
    alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (default = rank; scale = alpha / rank)."),
    targets: str = typer.Option(None, "--target-modules", help="Comma list of UNet layers to adapt (default to_q,to_k,to_v,to_out.0; e.g. add proj_in,proj_out,ff.net.0.proj,ff.net.2)."),
    train_text_encoder: bool = typer.Option(None, "--train-text-encoder/--no-train-text-encoder", help="Also add LoRA to the text encoder(s)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per process per micro-batch (default 1)."),
    grad_accum: int = typer.Option(None, "--gradient-accumulation", help="Micro-batches per optimizer step (default 4)."),
    lr: float = typer.Option(None, "--learning-rate", "--lr", help="Learning rate (default 1e-4)."),
    lr_scheduler: str = typer.Option(None, "--lr-scheduler", help="constant | cosine | linear (default constant)."),
    warmup: int = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (default 0)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps (default 1500)."),
    epochs: int = typer.Option(None, "--epochs", help="Train this many epochs instead of --max-steps."),
    mixed_precision: str = typer.Option(None, "--mixed-precision", help="no | fp16 (CUDA) | bf16."),
    adam8bit: bool = typer.Option(None, "--use-8bit-adam/--no-8bit-adam", help="bitsandbytes 8-bit AdamW."),
    checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory."),
    seed: int = typer.Option(None, "--seed", help="Seed of LoRA init, batches and noise (default 42)."),
    cache: bool = typer.Option(None, "--cache/--no-cache", help="Cache VAE latents and text embeddings on disk (default on)."),
    caption_dropout: float = typer.Option(None, "--caption-dropout", help="Share of captions emptied (default 0)."),
    min_snr: float = typer.Option(None, "--min-snr-gamma", help="Min-SNR loss weighting gamma (0 = off)."),
    noise_offset: float = typer.Option(None, "--noise-offset", help="Noise offset (default 0)."),
    balance_by: str = typer.Option(None, "--balance-by", help="metadata.csv column for class-balanced sampling (e.g. labels, is_normal)."),
    ema: float = typer.Option(None, "--ema-decay", help="EMA decay of the LoRA weights (0 = off)."),
    hflip: bool = typer.Option(None, "--hflip/--no-hflip", help="Random horizontal flips (off: they swap left/right findings)."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints (default 500)."),
    keep: int = typer.Option(None, "--keep-checkpoints", help="Checkpoints kept (default 3)."),
    validation_prompt: list[str] = typer.Option(None, "--validation-prompt", help="Validation prompt (repeatable)."),
    validation_every: int = typer.Option(None, "--validation-every", help="Steps between validation grids (0 = only at the end)."),
    kohya: bool = typer.Option(None, "--kohya/--no-kohya", help="Also write lora_kohya.safetensors (AUTOMATIC1111 / ComfyUI)."),
    register: str = typer.Option(None, "--register", help="Add a model preset of this name (base + this LoRA) to your presets file."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fine-tune a LoRA (SDXL, SD 1.x/2.x or the embedded model) on an imagefolder."""
    from synthex.train.lora import load_lora_config, train_lora

    overrides = {
        "model": model, "vae": vae, "resolution": resolution, "crop": crop, "trigger": trigger, "rank": rank,
        "alpha": alpha, "target_modules": [t.strip() for t in targets.split(",") if t.strip()] if targets else None,
        "train_text_encoder": train_text_encoder, "batch_size": batch_size,
        "gradient_accumulation": grad_accum, "learning_rate": lr, "lr_scheduler": lr_scheduler,
        "warmup_steps": warmup, "max_steps": max_steps, "epochs": epochs, "mixed_precision": mixed_precision,
        "use_8bit_adam": adam8bit, "gradient_checkpointing": checkpointing, "seed": seed,
        "cache_latents": cache, "cache_text": cache, "caption_dropout": caption_dropout, "min_snr_gamma": min_snr,
        "noise_offset": noise_offset, "balance_by": balance_by, "ema_decay": ema, "hflip": hflip,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": keep,
        "validation_prompts": list(validation_prompt) if validation_prompt else None,
        "validation_every": validation_every, "kohya": kohya, "register": register,
    }
    cfg = load_lora_config(config, overrides)
    if split is not None:
        cfg.split = None if split == "all" else split
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    _set_threads(threads)
    result = train_lora(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"images: {result.n_images} ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'})")
    typer.echo(f"trained {result.trainable_parameters:,} LoRA parameters for {result.steps} steps")
    typer.echo(f"LoRA: {result.lora_file}" + (f" (kohya copy: {result.kohya_file})" if result.kohya_file else ""))
    if result.validation_grid:
        typer.echo(f"validation grid: {result.validation_grid}; log: {out / 'training_log.csv'}")
    if result.preset:
        typer.echo(f"registered model preset {cfg.register!r} in {result.preset}: "
                   f"synthex generate \"...\" --model {cfg.register}")


@app.command("export-kohya")
def export_kohya_cmd(
    lora_file: Path = typer.Argument(..., help="A diffusers-format LoRA made by 'synthex train lora'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors (kohya names: lora_unet_..., lora_te_...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    name: str = typer.Option(None, "--name", help="ss_output_name (default: the run's name recorded in the LoRA)."),
) -> None:
    """Convert a LoRA to the kohya format read by AUTOMATIC1111 and ComfyUI (with kohya's ss_* metadata)."""
    from synthex.train.kohya import export_kohya

    typer.echo(f"wrote {export_kohya(lora_file, out, overwrite=overwrite, name=name)}")


@app.command()
def search(
    data: Path = typer.Option(..., "--data", "-d", help="Imagefolder: metadata.csv (file_name,text[,caption_1..,"
                              "findings|mesh,split]) + images, e.g. 'synthex phantom caption-set' output."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, log, checkpoints, model/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Training YAML (default: built-in defaults; the shipped "
                                "model used src/synthex/config/search_embedded.yaml)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps (a larger value extends a finished run)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Pairs per step (contrastive batch)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate of the image tower and projections."),
    seed: int = typer.Option(None, "--seed", help="Seed of batches, caption picks and augmentation."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train the search dual encoder (image tower + text tower, contrastive) on images and reports."""
    from dataclasses import asdict

    from synthex.search.train import load_train_config, train_search

    cfg = load_train_config(config, {"max_steps": max_steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                                     "device": device})
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(asdict(cfg), sort_keys=False))
        return
    _set_threads(threads)
    result = train_search(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"pairs: {result.n_train} train, {result.n_val} held out ({len(result.rejects)} rejected rows, "
               f"see {out / 'rejects.csv'}); parameters {result.parameters / 1e6:.2f}M")
    typer.echo("held-out: " + ", ".join(f"{k} {v}" for k, v in result.validation.items()))
    typer.echo(f"model: {result.model_dir}; log: {out / 'training_log.csv'}, {out / 'validation.csv'}")


@app.command()
def gan(
    data: Path = typer.Option(..., "--data", "-d", help="Imagefolder: metadata.csv (file_name,text[,mesh|finding "
                              "columns,split]) + images, e.g. a 'synthex data prepare' folder of the phantom set."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, log, checkpoints, samples/, model/)."),
    config: Path = typer.Option(None, "--config", "-c", help="GAN YAML (default: the packaged gan_phantom.yaml)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps (a larger value extends a finished run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    unconditional: bool = typer.Option(False, "--unconditional", help="No finding labels (plain DCGAN)."),
    k_disc: int = typer.Option(None, "--k-disc", help="Discriminator updates per generator update (default 1)."),
    r1: float = typer.Option(None, "--r1", help="R1 penalty gamma (default 0 = off)."),
    no_spectral_norm: bool = typer.Option(False, "--no-spectral-norm", help="No spectral norm in the discriminator."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation, batches and noise (default 42)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per discriminator batch (default 64)."),
    resolution: int = typer.Option(None, "--resolution", help="Image side: 32, 64 or 128 (default 64)."),
    split: str = typer.Option(None, "--split", help="metadata.csv split to train on (default 'train'; 'all' = every row)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train the GAN baseline (DCGAN, finding-conditional with a projection discriminator)."""
    from synthex.train.gan import load_gan_config, train_gan

    overrides = {
        "max_steps": max_steps, "k_disc": k_disc, "r1_gamma": r1, "seed": seed, "batch_size": batch_size,
        "arch.resolution": resolution, "arch.conditional": False if unconditional else None,
        "arch.spectral_norm": False if no_spectral_norm else None, "split": split,
    }
    cfg = load_gan_config(config, overrides)
    if split == "all":
        cfg.split = None
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    _set_threads(threads)
    result = train_gan(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"images: {result.n_images} ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'}); "
               f"labels: {result.label_source or 'none (unconditional)'}")
    typer.echo("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in result.parameters.items()))
    typer.echo(f"model: {result.model_dir} ({result.steps} steps); samples: {result.samples}; "
               f"log: {out / 'training_log.csv'}")
    typer.echo(f"sample it: synthex gan sample --model {result.model_dir} --n 16 --out SAMPLES")


@app.command()
def note(
    data: str = typer.Option("iu", "--data", "-d", help="'iu' (the bundled IU X-ray reports, split by patient), "
                             "'iu:FOLDER' (a Kaggle/Open-i IU X-ray folder) or a CSV with diagnosis and note columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, log, checkpoints, tokenizer, model/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Note YAML (default: the packaged note_iu.yaml)."),
    model: str = typer.Option(None, "--model", help="diffusion (default) or ar (the GPT-2 baseline)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps (a larger value extends a finished run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    diagnosis_column: str = typer.Option(None, "--diagnosis-column", help="CSV column of the diagnoses."),
    note_column: str = typer.Option(None, "--note-column", help="CSV column of the notes."),
    conditioning: str = typer.Option(None, "--conditioning", help="Diffusion: cross (cross-attention) or prefix."),
    no_self_condition: bool = typer.Option(False, "--no-self-condition", help="Diffusion: no self-conditioning."),
    objective: str = typer.Option(None, "--objective", help="Diffusion: x0 (default) or eps."),
    pretrained_embeddings: str = typer.Option(None, "--pretrained-embeddings", help="A local BERT-style folder "
                                              "(e.g. ClinicalBERT) to initialise the token embeddings from."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation, batches and noise (default 42)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Pairs per step (default 32)."),
    set_values: list[str] = typer.Option(None, "--set", help="KEY=VALUE config override (dotted, e.g. arch.layers=2)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a diagnosis -> note model: text diffusion over token embeddings, or the GPT-2 baseline."""
    import yaml

    from synthex.train.note import load_note_config, train_note

    overrides = {"model": model, "max_steps": max_steps, "diagnosis_column": diagnosis_column,
                 "note_column": note_column, "seed": seed, "batch_size": batch_size,
                 "arch.conditioning": conditioning, "arch.objective": objective,
                 "arch.self_condition": False if no_self_condition else None,
                 "pretrained_embeddings": pretrained_embeddings}
    overrides.update(_set_overrides(set_values))
    cfg = load_note_config(config, overrides)
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    _set_threads(threads)
    result = train_note(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"pairs: {result.n_pairs} train ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'}; "
               f"{result.truncated} notes longer than arch.max_len were cut); vocabulary {result.vocab_size}; "
               f"parameters {result.parameters / 1e6:.2f}M")
    typer.echo(f"model: {result.model_dir} ({result.steps} steps); log: {out / 'training_log.csv'}")
    typer.echo(f"use it: synthex note 'Cardiomegaly/mild' --model {result.model_dir}")


def _set_overrides(set_values: list[str] | None) -> dict:
    """``--set KEY=VALUE`` options as dotted overrides (values read as YAML)."""
    import yaml

    from synthex.errors import ConfigError

    out = {}
    for item in set_values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must be KEY=VALUE, e.g. --set arch.layers=2")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def report(
    data: Path = typer.Option(..., "--data", "-d", help="A 'synthex data prepare' folder (e.g. the phantom IU "
                              "X-ray set runs/phantom-ds-128) or a CSV with clinical_case, image_path, expected_output."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, log, checkpoints, model/)."),
    config: Path = typer.Option(None, "--config", "-c", help="Report YAML (default: the packaged report_phantom.yaml)."),
    base: str = typer.Option(None, "--base", help="Fine-tune this model (a report_models preset such as "
                             "smolvlm-instruct, a folder or a hub id in the local cache) instead of training the "
                             "small embedded Idefics3 from scratch."),
    lora: bool = typer.Option(False, "--lora", help="With --base: train LoRA adapters on q/k/v/o/gate/up/down_proj."),
    load_in_4bit: bool = typer.Option(False, "--4bit", help="With --base --lora: QLoRA (NF4, double quantisation, "
                                      "bf16 compute; needs bitsandbytes)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps (a larger value extends a finished run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation, batches and the CSV split (default 42)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per step (default 16)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    set_values: list[str] = typer.Option(None, "--set", help="KEY=VALUE config override (e.g. arch.text_layers=2)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train an image -> structured report model (embedded Idefics3, or LoRA/QLoRA on SmolVLM)."""
    import yaml

    from synthex.train.report import load_report_config, train_report

    overrides = {"base": base, "lora": True if lora else None, "load_in_4bit": True if load_in_4bit else None,
                 "max_steps": max_steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                 **_set_overrides(set_values)}
    cfg = load_report_config(config, overrides)
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    _set_threads(threads)
    result = train_report(data, out, cfg, resume=resume, progress=not quiet)
    typer.echo(f"examples: {result.n_train} train ({len(result.rejects)} rejected rows, see {out / 'rejects.csv'}); "
               f"parameters: {result.trainable / 1e6:.2f}M trained of {result.parameters / 1e6:.2f}M")
    typer.echo(f"model: {result.model_dir} ({result.steps} steps); log: {out / 'training_log.csv'}")
    typer.echo(f"use it: synthex report IMAGE.png --model {result.model_dir}")
