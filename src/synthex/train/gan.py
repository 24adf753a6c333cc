"""Train the GAN baseline: ``synthex train gan`` (a client of :mod:`synthex.train.loop`).

One stage, ``gan``: per step ``k_disc`` discriminator updates (each on its own batch of real
images and fresh ``z``) and one generator update, with Adam for both networks
(:mod:`synthex.models.gan`: DCGAN, finding-conditional with a projection discriminator,
spectral norm, R1, non-saturating or hinge loss). The loop gives what every trainer has: the
batch and noise of step ``k`` are functions of ``(seed, "gan", k)``, so a run interrupted and
resumed ends with the same weights as one that was not; a larger ``max_steps`` extends a
finished run; a CSV log with ``d_loss, g_loss, d_real, d_fake, r1`` (``d_real`` / ``d_fake``:
the mean of ``sigmoid(D(x))`` and ``sigmoid(D(G(z)))`` in the discriminator step; ``loss`` is
``d_loss + g_loss``).

Labels (conditional runs): multi-hot over ``arch.labels`` (the phantom classifier's findings by
default; "normal" = all zeros), read from the dataset's ``metadata.csv`` by the rules of
``synthex evaluate`` (:mod:`synthex.phantom.labels`: finding columns, else ``mesh``, else the
text; ``label_source`` forces one).

Run folder::

    config.yaml  state.json  training_log.csv  rejects.csv
    checkpoints/gan/step_0000250/{generator,discriminator,optimizer_g,optimizer_d}.safetensors
    samples/step_000250.png   (fixed z; conditional: one row per finding, the first "normal")
    model/{generator,discriminator}.safetensors, config.json   (what ``synthex gan sample`` reads)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex.errors import ConfigError, DataSourceError
from synthex.models.gan import LOSSES, GanArch
from synthex.train.data import Reject
from synthex.train.loop import LoopSpec, RunContext, StepEvent, TrainingLog, _write_text, derived_seed, run_loop

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gan_phantom.yaml"
STAGE = "gan"
GAN_LOG_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake", "r1")
RUNTIME_KEYS = {"checkpoint_every", "sample_every", "sample_columns", "keep_checkpoints", "data_workers"}
EXTENDABLE_KEYS = ("max_steps",)


# =============================================================================================
# 1. Configuration
# =============================================================================================
@dataclass
class GanConfig:
    """Everything that defines a ``train gan`` run (saved as the run's ``config.yaml``)."""

    arch: GanArch = field(default_factory=GanArch)
    seed: int = 42
    split: str | None = "train"
    text_column: str = "text"
    label_source: str | None = None  # columns | mesh | text; None = the best the dataset offers
    max_steps: int = 2400
    batch_size: int = 64
    lr: float = 2e-4
    d_lr: float | None = None  # the discriminator's learning rate (None = lr)
    beta1: float = 0.5
    beta2: float = 0.999
    k_disc: int = 1
    r1_gamma: float = 0.0
    loss: str = "non_saturating"
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    checkpoint_every: int = 300
    sample_every: int = 300
    sample_columns: int = 8
    keep_checkpoints: int = 2
    data_workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["arch"] = self.arch.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "") -> "GanConfig":
        """Build from a (YAML) mapping; unknown keys, wrong types and bad values raise
        :class:`~synthex.errors.ConfigError` naming the key (and ``where`` it came from)."""
        values = _typed_values(dict(values or {}), where)
        if not isinstance(values.get("arch"), GanArch):
            values["arch"] = GanArch.from_dict(values.get("arch"), where)
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "") -> None:
        """Every setting checked; one ConfigError lists every problem."""
        from synthex.train.scratch import check_numbers, check_types

        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arch"}
        check_types(top, GanConfig, where=where)
        self.arch.validate(where)
        problems = check_numbers([
            ("max_steps", self.max_steps, ">=1"), ("batch_size", self.batch_size, ">=1"), ("lr", self.lr, ">0"),
            ("d_lr", self.d_lr, ">0"), ("beta1", self.beta1, "[0,1)"), ("beta2", self.beta2, "[0,1)"),
            ("k_disc", self.k_disc, ">=1"), ("r1_gamma", self.r1_gamma, ">=0"),
            ("warmup_steps", self.warmup_steps, ">=0"), ("min_lr_ratio", self.min_lr_ratio, "[0,1]"),
            ("weight_decay", self.weight_decay, ">=0"), ("grad_clip", self.grad_clip, ">=0"),
            ("checkpoint_every", self.checkpoint_every, ">=1"), ("sample_every", self.sample_every, ">=0"),
            ("sample_columns", self.sample_columns, ">=1"), ("keep_checkpoints", self.keep_checkpoints, ">=1"),
            ("data_workers", self.data_workers, ">=0")])
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} must be one of {', '.join(LOSSES)}")
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule {self.schedule!r} must be 'constant' or 'cosine'")
        if self.label_source not in (None, "columns", "mesh", "text"):
            problems.append(f"label_source {self.label_source!r} must be columns, mesh, text or null")
        if problems:
            raise ConfigError(f"{where}invalid GAN training options: " + "; ".join(problems))


def _typed_values(values: dict, where: str) -> dict:
    """Known keys with the right types only (the ``arch`` section included)."""
    from synthex.train.scratch import _check_keys, check_types

    _check_keys(values, GanConfig, "", where)
    values = check_types(values, GanConfig, where=where)
    arch = values.get("arch")
    if arch is not None and not isinstance(arch, GanArch):
        if not isinstance(arch, dict):
            raise ConfigError(f"{where}arch is {arch!r}; it must be a mapping of arch.* settings")
        _check_keys(arch, GanArch, "arch.", where)
        arch = {k: v for k, v in arch.items() if not (k == "labels" and v is None)}  # null = the default vocabulary
        values["arch"] = check_types(arch, GanArch, prefix="arch.", where=where)
    return values


def load_gan_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> GanConfig:
    """Read a YAML config (default: the packaged ``gan_phantom.yaml``) and apply ``overrides``
    (dotted keys such as ``{"arch.conditional": False, "max_steps": 10}``; None values ignored)."""
    from synthex.train.scratch import apply_overrides, read_config_file

    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = read_config_file(path)
    where = f"config file {path}: "
    _typed_values(copy.deepcopy(values), where)
    given = apply_overrides(values, overrides, where)
    return GanConfig.from_dict(values, "" if given else where)


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every weight-changing key that differs (a larger max_steps is
    an extension, not a difference)."""
    from synthex.train.scratch import _flatten

    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(k for k in set(a) | set(b) if k not in RUNTIME_KEYS):
        if a.get(k) == b.get(k):
            continue
        if k in EXTENDABLE_KEYS and isinstance(a.get(k), int) and isinstance(b.get(k), int) and b[k] > a[k]:
            continue
        suffix = " (max_steps can be raised on resume, not lowered)" if k in EXTENDABLE_KEYS else ""
        out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}{suffix}")
    return out


# =============================================================================================
# 2. Data and labels
# =============================================================================================
@dataclass
class GanData:
    """Training images (uint8 (N, 1, R, R)), their multi-hot labels (N, K) and the rejects."""

    images: Any
    labels: Any
    label_source: str | None
    rejects: list[Reject]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pixels(self, indices) -> Any:
        from synthex.train.data import to_model_range

        return to_model_range(self.images[indices])


def load_gan_data(data_dir: Path, cfg: GanConfig, progress: bool = False) -> GanData:
    """Read the imagefolder at the GAN's resolution with its labels (zeros when unconditional)."""
    import pandas as pd
    import torch

    from synthex.phantom.labels import available_sources, frame_labels
    from synthex.train.data import load_imagefolder, read_metadata

    names = cfg.arch.labels
    table = read_metadata(data_dir, split=cfg.split, text_column=cfg.text_column)
    sources = available_sources([c if c != cfg.text_column else "text" for c in table.columns], names)
    source = cfg.label_source or (sources[0] if sources else None)
    if cfg.arch.conditional and source not in sources:
        raise DataSourceError(f"{Path(data_dir) / 'metadata.csv'} offers no {source or ''} labels for a conditional "
                              f"GAN (sources found: {sources or 'none'}); add finding columns or a 'mesh' column, "
                              "or train with --unconditional")
    columns = tuple(names) if source == "columns" else ("mesh",) if source == "mesh" else ()
    data = load_imagefolder(data_dir, cfg.arch.resolution, split=cfg.split, text_column=cfg.text_column,
                            workers=cfg.data_workers, progress=progress, columns=columns)
    labels = torch.zeros(len(data), len(names))
    if cfg.arch.conditional:
        frame = pd.DataFrame(data.columns) if columns else pd.DataFrame({"text": data.captions})
        try:
            found, source, unparsed = frame_labels(frame, names, source)
        except Exception as err:  # a SynthexError naming the bad column
            raise DataSourceError(f"{Path(data_dir) / 'metadata.csv'}: {err}") from err
        labels = torch.from_numpy(found)
        if unparsed:
            logger.info("labels: %d caption sentences named no finding (ignored)", unparsed)
    return GanData(data.images, labels, source if cfg.arch.conditional else None, data.rejects)


# =============================================================================================
# 3. Run folder
# =============================================================================================
def prepare_run_dir(run_dir: Path, cfg: GanConfig, data_dir: Path, resume: bool) -> None:
    """Create the run folder, or check that a resume matches it (config and dataset) and record a
    raised ``max_steps``."""
    import yaml

    from synthex.train.data import metadata_fingerprint
    from synthex.train.scratch import check_run_folder

    run_dir = Path(run_dir)
    state = check_run_folder(run_dir, cfg.to_dict(), config_differences, data_dir, resume, kind="GAN run",
                             trainer="gan")
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"trainer": "gan", "data_sha256": metadata_fingerprint(data_dir)}
        _write_text(run_dir / "state.json", json.dumps(state, indent=1))
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# =============================================================================================
# 4. The step, the sample grids, the trainer
# =============================================================================================
def _clip(module, max_norm: float) -> None:
    import torch

    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(module.parameters()), max_norm)


def _d_step(g, d, opt, real, y, gen, cfg: GanConfig) -> dict[str, float]:
    """One discriminator update on a real batch and fakes of fresh z."""
    import torch

    from synthex.models.gan import d_loss, r1_penalty

    z = torch.randn(len(real), cfg.arch.z_dim, generator=gen)
    with torch.no_grad():
        fake = g(z, y)
    real = real.requires_grad_(cfg.r1_gamma > 0)
    real_logits, fake_logits = d(real, y), d(fake, y)
    loss = d_loss(real_logits, fake_logits, cfg.loss)
    r1 = r1_penalty(real_logits, real) if cfg.r1_gamma > 0 else torch.zeros(())
    opt.zero_grad(set_to_none=True)
    (loss + 0.5 * cfg.r1_gamma * r1).backward()
    _clip(d, cfg.grad_clip)
    opt.step()
    return {"d_loss": loss.item(), "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(), "r1": r1.item()}


def _g_step(g, d, opt, y, gen, cfg: GanConfig, n: int) -> float:
    """One generator update (the discriminator's weights frozen meanwhile)."""
    import torch

    from synthex.models.gan import g_loss

    z = torch.randn(n, cfg.arch.z_dim, generator=gen)
    d.requires_grad_(False)
    try:
        loss = g_loss(d(g(z, y), y), cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        d.requires_grad_(True)
    _clip(g, cfg.grad_clip)
    opt.step()
    return loss.item()


def make_step_fn(g, d, data: GanData, cfg: GanConfig) -> Callable[[Any, Any, dict], dict[str, float]]:
    """The loop's ``step_fn``: ``k_disc`` discriminator updates, then one generator update."""
    conditional = cfg.arch.conditional

    def step_fn(indices, gen, optimizers: dict) -> dict[str, float]:
        metrics: dict[str, float] = {}
        y = None
        for chunk in indices.view(cfg.k_disc, cfg.batch_size):
            y = data.labels[chunk] if conditional else None
            metrics = _d_step(g, d, optimizers["d"], data.pixels(chunk), y, gen, cfg)
        metrics["g_loss"] = _g_step(g, d, optimizers["g"], y, gen, cfg, cfg.batch_size)
        metrics["loss"] = metrics["d_loss"] + metrics["g_loss"]
        return metrics

    return step_fn


def sample_grid(g, cfg: GanConfig, path: Path) -> Path:
    """A grid of fixed-z samples: one row per finding ("normal" first) when conditional, else 8
    rows of different z. The generator is put back into training mode."""
    import torch
    from PIL import Image

    from synthex.train.scratch import _save_image, image_grid

    cols, names, was_training = cfg.sample_columns, cfg.arch.labels, g.training
    gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "gan-samples"))
    if cfg.arch.conditional:
        z = torch.randn(cols, cfg.arch.z_dim, generator=gen).repeat(len(names) + 1, 1)
        y = torch.cat([torch.zeros(1, len(names)), torch.eye(len(names))]).repeat_interleave(cols, dim=0)
        titles = ["normal", *names]
    else:
        z, y, titles = torch.randn(8 * cols, cfg.arch.z_dim, generator=gen), None, None
    g.eval()
    with torch.no_grad():
        images = ((g(z, y) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    g.train(was_training)
    pil = [Image.fromarray(a, mode="L") for a in images]
    rows = [pil[i:i + cols] for i in range(0, len(pil), cols)]
    _save_image(image_grid(rows, titles), Path(path))
    return Path(path)


@dataclass
class GanTrainResult:
    """What ``train_gan`` made."""

    run_dir: Path
    model_dir: Path
    n_images: int
    rejects: list[Reject]
    label_source: str | None
    label_counts: dict[str, int]
    parameters: dict[str, int]
    steps: int
    samples: Path | None


def _build(cfg: GanConfig, data: GanData):
    """Generator, discriminator (seeded init; the global random state untouched) and their Adams."""
    import torch

    from synthex.models.gan import build_discriminator, build_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "gan-init"))
        g, d = build_generator(cfg.arch), build_discriminator(cfg.arch)
    opts = {}
    for name, module, lr in (("g", g, cfg.lr), ("d", d, cfg.d_lr or cfg.lr)):
        groups = [{"params": list(module.parameters()), "base_lr": lr}]
        opts[name] = torch.optim.Adam(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return g, d, opts


def train_gan(data_dir: Path, run_dir: Path, config: GanConfig | None = None, *, resume: bool = False,
              progress: bool = True, callback: Callable[[StepEvent], None] | None = None) -> GanTrainResult:
    """Train the GAN baseline on an imagefolder into ``run_dir``; see the module docstring."""
    from synthex.models.gan import count_parameters, save_gan
    from synthex.train.data import read_metadata, save_rejects

    cfg = config or load_gan_config()
    cfg.validate()
    run_dir = Path(run_dir)
    read_metadata(data_dir, split=cfg.split, text_column=cfg.text_column)  # a bad dataset fails before --out
    data = load_gan_data(data_dir, cfg, progress)
    prepare_run_dir(run_dir, cfg, data_dir, resume)
    save_rejects(data.rejects, run_dir / "rejects.csv")
    g, d, opts = _build(cfg, data)
    samples = run_dir / "samples"

    def on_step_end(step: int, modules: dict) -> None:
        if step == cfg.max_steps or (cfg.sample_every and step % cfg.sample_every == 0):
            sample_grid(modules["generator"], cfg, samples / f"step_{step:06d}.png")

    spec = LoopSpec(STAGE, {"generator": g, "discriminator": d}, [], None, len(data), cfg, on_step_end=on_step_end,
                    optimizers=opts, step_fn=make_step_fn(g, d, data, cfg), batches_per_step=cfg.k_disc)
    ctx = RunContext(run_dir, cfg.seed, TrainingLog(run_dir / "training_log.csv", GAN_LOG_COLUMNS),
                     cfg.keep_checkpoints, progress, callback)
    run_loop(spec, ctx)
    counts = {n: int(c) for n, c in zip(cfg.arch.labels, data.labels.sum(0).tolist())}
    info = {"name": run_dir.resolve().name, "step": cfg.max_steps, "label_source": data.label_source,
            "label_counts": counts, "n_images": len(data), "seed": cfg.seed}
    model_dir = save_gan(run_dir / "model", g.eval(), d.eval(), info)
    last = samples / f"step_{cfg.max_steps:06d}.png"
    return GanTrainResult(run_dir, model_dir, len(data), data.rejects, data.label_source, counts,
                          {"generator": count_parameters(g), "discriminator": count_parameters(d)},
                          cfg.max_steps, last if last.is_file() else None)
