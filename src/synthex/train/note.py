"""Train a diagnosis -> note model: ``synthex train note`` (a client of :mod:`synthex.train.loop`).

``model: diffusion`` trains the embedding-space diffusion model of
:mod:`synthex.notes.diffusion`; ``model: ar`` the GPT-2 baseline of :mod:`synthex.notes.ar`, on
the same pairs and tokenizer. Data: ``iu`` (the real IU X-ray reports through the data pipeline,
split by patient) or a CSV with a diagnosis and a note column (:mod:`synthex.notes.data`).

The loop gives exact resume (the batch and noise of step ``k`` depend only on ``(seed, "note",
k)``), extension to a larger ``max_steps``, the CSV log and checkpoints. The tokenizer is built
once from the training split when the run starts and read back on resume.

Run folder::

    config.yaml  state.json  training_log.csv  rejects.csv  tokenizer.json  data.json
    checkpoints/note/step_0000500/{model,ema_model,optimizer}.safetensors
    model/{note_model.json, model.safetensors, tokenizer.json}   (what ``synthex note`` reads)
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
from synthex.notes.ar import NoteArArch
from synthex.notes.diffusion import NoteDiffusionArch
from synthex.train.loop import LoopSpec, RunContext, StepEvent, TrainingLog, _write_text, derived_seed, run_loop

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "note_iu.yaml"
STAGE = "note"
RUNTIME_KEYS = {"checkpoint_every", "keep_checkpoints"}
NOTE_LOG_COLUMNS = ("mse", "nll")


@dataclass
class NoteConfig:
    """Everything that defines a ``train note`` run (saved as the run's ``config.yaml``)."""

    model: str = "diffusion"
    arch: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    diagnosis_column: str = "diagnosis"
    note_column: str = "note"
    min_count: int = 2
    pretrained_embeddings: str | None = None  # a local BERT-style folder (ClinicalBERT...) to initialise them
    max_steps: int = 4000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["arch"] = self.model_arch().to_dict()
        return out

    def model_arch(self) -> NoteDiffusionArch | NoteArArch:
        cls = NoteDiffusionArch if self.model == "diffusion" else NoteArArch
        unknown = sorted(set(self.arch) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown arch keys for a {self.model} note model: {', '.join(unknown)} "
                              f"(valid: {', '.join(cls.__dataclass_fields__)})")
        return cls(**self.arch)

    def validate(self, where: str = "") -> None:
        from synthex.train.scratch import check_numbers, check_types

        check_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arch"},
                    NoteConfig, where=where)
        if self.model not in ("diffusion", "ar"):
            raise ConfigError(f"{where}model {self.model!r} must be 'diffusion' or 'ar'")
        if not isinstance(self.arch, dict):
            raise ConfigError(f"{where}arch is {self.arch!r}; it must be a mapping of arch.* settings")
        self.model_arch().validate(where)
        problems = check_numbers([
            ("max_steps", self.max_steps, ">=1"), ("batch_size", self.batch_size, ">=1"), ("lr", self.lr, ">0"),
            ("min_count", self.min_count, ">=1"), ("warmup_steps", self.warmup_steps, ">=0"),
            ("min_lr_ratio", self.min_lr_ratio, "[0,1]"), ("weight_decay", self.weight_decay, ">=0"),
            ("grad_clip", self.grad_clip, ">=0"), ("ema_decay", self.ema_decay, "[0,1)"),
            ("checkpoint_every", self.checkpoint_every, ">=1"), ("keep_checkpoints", self.keep_checkpoints, ">=1")])
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule {self.schedule!r} must be 'constant' or 'cosine'")
        if problems:
            raise ConfigError(f"{where}invalid note training options: " + "; ".join(problems))


def load_note_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> NoteConfig:
    """Read a YAML config (default: the packaged ``note_iu.yaml``) and apply dotted ``overrides``
    (``{"model": "ar", "arch.layers": 2}``; None values ignored)."""
    from synthex.train.scratch import _check_keys, apply_overrides, read_config_file

    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = read_config_file(path)
    where = f"config file {path}: "
    given = apply_overrides(values, overrides, where)
    where = "" if given else where
    _check_keys(values, NoteConfig, "", where)
    if values.get("model", "diffusion") == "ar" and "model" in given and "arch" in values:
        values["arch"] = {k: v for k, v in values["arch"].items() if k in NoteArArch.__dataclass_fields__}
    cfg = NoteConfig(**values)
    cfg.validate(where)
    return cfg


def config_differences(old: dict, new: dict) -> list[str]:
    from synthex.train.gan import config_differences as differences

    return [d for d in differences(old, new) if d.split(":")[0] not in RUNTIME_KEYS]


# =============================================================================================
# Data tensors and run folder
# =============================================================================================
@dataclass
class NoteTensors:
    ids: Any
    cond: Any
    mask: Any = None
    labels: Any = None
    truncated: int = 0


def make_tensors(tok, pairs, cfg: NoteConfig) -> NoteTensors:
    """Token tensors of the training pairs for the chosen model."""
    import torch

    from synthex.notes.ar import training_tensors
    from synthex.notes.data import condition_text, encode

    arch = cfg.model_arch()
    conditions = [condition_text(p.diagnosis) for p in pairs]
    notes = [p.note for p in pairs]
    truncated = sum(len(tok.encode(n).ids) + 1 > arch.max_len for n in notes)
    if cfg.model == "ar":
        ids, mask, labels = training_tensors(tok, conditions, notes, arch)
        return NoteTensors(ids, None, mask, labels, truncated)
    ids = torch.tensor([encode(tok, n, arch.max_len)[0] for n in notes])
    cond = torch.tensor([encode(tok, c, arch.cond_len, eos=False)[0] for c in conditions])
    return NoteTensors(ids, cond, truncated=truncated)


def _tokenizer(run_dir: Path, pairs, cfg: NoteConfig, resume: bool):
    from synthex.notes.data import build_tokenizer, condition_text, load_tokenizer

    path = run_dir / "tokenizer.json"
    if resume and path.is_file():
        return load_tokenizer(path)
    tok = build_tokenizer([p.note for p in pairs] + [condition_text(p.diagnosis) for p in pairs], cfg.min_count)
    _write_text(path, tok.to_str())
    return tok


def prepare_run_dir(run_dir: Path, cfg: NoteConfig, data_label: str, resume: bool) -> None:
    import yaml

    from synthex.train.scratch import check_run_folder

    state = check_run_folder(run_dir, cfg.to_dict(), config_differences, run_dir, resume, kind="note training run",
                             trainer="note")
    if state is not None and state.get("data") not in (None, data_label):
        raise DataSourceError(f"cannot resume {run_dir}: it was trained on {state.get('data')}, not {data_label}; "
                              "use the same --data or a new --out folder")
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text(run_dir / "state.json", json.dumps({"trainer": "note", "data": data_label}, indent=1))
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _write_rejects(path: Path, rejects: list[tuple[str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["row", "reason"])
    writer.writerows(rejects)
    _write_text(path, buf.getvalue())


# =============================================================================================
# The trainer
# =============================================================================================
@dataclass
class NoteTrainResult:
    run_dir: Path
    model_dir: Path
    n_pairs: int
    rejects: list[tuple[str, str]]
    truncated: int
    vocab_size: int
    parameters: int
    steps: int


def _build(cfg: NoteConfig, tok):
    """The model, seeded (the global random state untouched), its token embeddings optionally
    initialised from ``pretrained_embeddings`` (:mod:`synthex.notes.pretrained`)."""
    import torch

    from synthex.notes.ar import build_ar
    from synthex.notes.diffusion import build_denoiser

    vocab, arch = tok.get_vocab_size(), cfg.model_arch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "note-init"))
        module = build_denoiser(arch, vocab) if cfg.model == "diffusion" else build_ar(arch, vocab)
    if cfg.pretrained_embeddings:
        from synthex.notes.pretrained import initialise_embeddings

        target = module if cfg.model == "diffusion" else _WteView(module)
        dim = arch.emb_dim if cfg.model == "diffusion" else arch.n_embd
        n = initialise_embeddings(target, tok, cfg.pretrained_embeddings, dim)
        logger.info("note: %d token embeddings initialised from %s", n, cfg.pretrained_embeddings)
    return module


class _WteView:
    """A GPT-2 seen as having ``.embedding`` (its tied input/output word embeddings)."""

    def __init__(self, module):
        self.embedding = module.transformer.wte


def _loss_fn(module, data: NoteTensors, cfg: NoteConfig, metrics: dict) -> Callable:
    from synthex.notes.diffusion import NoteDiffusion

    if cfg.model == "ar":
        def ar_loss(indices, gen):
            out = module(input_ids=data.ids[indices], attention_mask=data.mask[indices], labels=data.labels[indices])
            metrics.update(nll=out.loss.item(), mse=0.0)
            return out.loss
        return ar_loss
    diffusion = NoteDiffusion(module, cfg.model_arch())

    def diffusion_loss(indices, gen):
        loss, parts = diffusion.loss(data.ids[indices], data.cond[indices], gen)
        metrics.update(parts)
        return loss
    return diffusion_loss


def train_note(data: str | Path, run_dir: Path, config: NoteConfig | None = None, *, resume: bool = False,
               progress: bool = True, callback: Callable[[StepEvent], None] | None = None) -> NoteTrainResult:
    """Train a note model on ``data`` ("iu", "iu:SOURCE" or a CSV) into ``run_dir``."""
    from synthex.notes.data import load_pairs
    from synthex.notes.model import save_note_model

    cfg = config or load_note_config()
    cfg.validate()
    run_dir = Path(run_dir)
    kwargs = {} if str(data).startswith("iu") else {"diagnosis_column": cfg.diagnosis_column,
                                                    "note_column": cfg.note_column, "seed": cfg.seed}
    if cfg.pretrained_embeddings:
        from synthex.notes.pretrained import check_encoder_folder

        check_encoder_folder(cfg.pretrained_embeddings)  # before anything is written
    pairs = load_pairs(data, **kwargs)
    train = pairs.split("train")
    if not train:
        raise DataSourceError(f"{data}: no training pairs (split column has no 'train' rows)")
    label = str(data) if str(data).startswith("iu") else str(Path(data).resolve())
    prepare_run_dir(run_dir, cfg, label, resume)
    _write_rejects(run_dir / "rejects.csv", pairs.rejects)
    tok = _tokenizer(run_dir, train, cfg, resume)
    tensors = make_tensors(tok, train, cfg)
    _write_text(run_dir / "data.json", json.dumps({"source": pairs.source, "train_pairs": len(train),
                                                   "rejects": len(pairs.rejects), "truncated": tensors.truncated,
                                                   "vocab_size": tok.get_vocab_size()}, indent=1))
    module = _build(cfg, tok)
    metrics: dict[str, float] = {}
    loss_fn = _loss_fn(module, tensors, cfg, metrics)
    spec = LoopSpec(STAGE, {"model": module}, [{"params": list(module.parameters()), "base_lr": cfg.lr}],
                    lambda idx, gen: loss_fn(idx, gen), len(train), cfg, ema_decay=cfg.ema_decay)
    log = _MetricLog(run_dir / "training_log.csv", NOTE_LOG_COLUMNS, metrics)
    evaluated = run_loop(spec, RunContext(run_dir, cfg.seed, log, cfg.keep_checkpoints, progress, callback))
    info = {"name": run_dir.resolve().name, "step": cfg.max_steps, "train_pairs": len(train), "data": pairs.source,
            "seed": cfg.seed}
    model_dir = save_note_model(run_dir / "model", cfg.model, cfg.model_arch(), evaluated["model"], tok, info)
    return NoteTrainResult(run_dir, model_dir, len(train), pairs.rejects, tensors.truncated, tok.get_vocab_size(),
                           sum(p.numel() for p in module.parameters()), cfg.max_steps)


class _MetricLog(TrainingLog):
    """The loop's CSV log plus this step's ``mse`` / ``nll`` (the default step reports only the loss)."""

    def __init__(self, path: Path, columns: tuple[str, ...], metrics: dict):
        super().__init__(path, columns)
        self._metrics = metrics

    def append(self, step, stage, loss, lr, seconds, n_images, metrics=None):  # noqa: D102
        return super().append(step, stage, loss, lr, seconds, n_images, {**self._metrics, **(metrics or {})})
