"""Train an image -> report model: ``synthex train report`` (a client of :mod:`synthex.train.loop`).

Two recipes, one code path (an Idefics3 / SmolVLM through transformers):

- the **embedded model** (``base: null``): a small Idefics3 built from ``arch`` with a BPE trained
  on the training split's targets, every weight trained;
- **the paper's recipe** (``base: smolvlm-instruct`` or a folder): the base's weights through the
  registry, optional NF4 4-bit double quantisation with bf16 compute (``load_in_4bit``), LoRA
  (``lora: true``) on ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``.

Input: instruction + clinical case cut to 500 characters + image; target: the four-field report
(:mod:`synthex.report.data`). The loop gives exact resume and extension to a larger
``max_steps``; checkpoints hold only the trained tensors (the LoRA adapters for a LoRA run).

Run folder::

    config.yaml  state.json  training_log.csv  rejects.csv  data.json  processor/ (embedded)
    checkpoints/report/step_0000250/{model,optimizer}.safetensors
    model/  a transformers folder (embedded / full) or a peft adapter folder (LoRA), +
            synthex_report.json; what ``synthex report --model`` reads
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex.errors import ConfigError, DataSourceError
from synthex.report.model import ReportArch
from synthex.train.loop import LoopSpec, RunContext, StepEvent, TrainingLog, _write_text, derived_seed, run_loop

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "report_phantom.yaml"
STAGE = "report"
RUNTIME_KEYS = {"checkpoint_every", "keep_checkpoints"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ReportConfig:
    """Everything that defines a ``train report`` run (saved as the run's ``config.yaml``)."""

    base: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    load_in_4bit: bool = False
    max_target_tokens: int = 160
    seed: int = 42
    max_steps: int = 6000
    batch_size: int = 16
    lr: float = 6e-4
    warmup_steps: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def model_arch(self) -> ReportArch:
        unknown = sorted(set(self.arch) - set(ReportArch.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown arch keys {', '.join(unknown)} (valid: {', '.join(ReportArch.__dataclass_fields__)})")
        return ReportArch(**self.arch)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["arch"] = dataclasses.asdict(self.model_arch())
        return out

    def validate(self, where: str = "") -> None:
        from synthex.train.scratch import check_numbers, check_types

        check_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arch"},
                    ReportConfig, where=where)
        if not isinstance(self.arch, dict):
            raise ConfigError(f"{where}arch is {self.arch!r}; it must be a mapping of arch.* settings")
        self.model_arch().validate(where)
        problems = check_numbers([
            ("max_steps", self.max_steps, ">=1"), ("batch_size", self.batch_size, ">=1"), ("lr", self.lr, ">0"),
            ("warmup_steps", self.warmup_steps, ">=0"), ("min_lr_ratio", self.min_lr_ratio, "[0,1]"),
            ("weight_decay", self.weight_decay, ">=0"), ("grad_clip", self.grad_clip, ">=0"),
            ("ema_decay", self.ema_decay, "[0,1)"), ("checkpoint_every", self.checkpoint_every, ">=1"),
            ("keep_checkpoints", self.keep_checkpoints, ">=1"), ("lora_r", self.lora_r, ">=1"),
            ("lora_alpha", self.lora_alpha, ">0"), ("lora_dropout", self.lora_dropout, "[0,1)"),
            ("max_target_tokens", self.max_target_tokens, ">=1")])
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule {self.schedule!r} must be 'constant' or 'cosine'")
        if (self.lora or self.load_in_4bit) and not self.base:
            problems.append("lora / load_in_4bit need a base model (--base smolvlm-instruct or a folder)")
        if self.load_in_4bit and not self.lora:
            problems.append("load_in_4bit trains LoRA adapters on the frozen 4-bit base: set lora: true (--lora)")
        if self.lora and not self.target_modules:
            problems.append("target_modules is empty")
        if problems:
            raise ConfigError(f"{where}invalid report training options: " + "; ".join(problems))


def load_report_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> ReportConfig:
    """Read a YAML config (default: the packaged ``report_phantom.yaml``) and apply dotted ``overrides``."""
    from synthex.train.scratch import _check_keys, apply_overrides, read_config_file

    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = read_config_file(path)
    where = f"config file {path}: "
    given = apply_overrides(values, overrides, where)
    where = "" if given else where
    _check_keys(values, ReportConfig, "", where)
    cfg = ReportConfig(**values)
    cfg.validate(where)
    return cfg


def config_differences(old: dict, new: dict) -> list[str]:
    from synthex.train.gan import config_differences as differences

    return [d for d in differences(old, new) if d.split(":")[0] not in RUNTIME_KEYS]


def prepare_run_dir(run_dir: Path, cfg: ReportConfig, data_label: str, resume: bool) -> None:
    import yaml

    from synthex.train.scratch import check_run_folder

    state = check_run_folder(run_dir, cfg.to_dict(), config_differences, run_dir, resume, kind="report training run",
                             trainer="report")
    if state is not None and state.get("data") not in (None, data_label):
        raise DataSourceError(f"cannot resume {run_dir}: it was trained on {state.get('data')}, not {data_label}; "
                              "use the same --data or a new --out folder")
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text(run_dir / "state.json", json.dumps({"trainer": "report", "data": data_label}, indent=1))
    _write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# =============================================================================================
# Model set-up
# =============================================================================================
class TrainedTensors:
    """What a LoRA run checkpoints: only the trainable tensors of ``model`` (the adapters), as a
    module-like object the loop saves and restores."""

    def __init__(self, model):
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.names}

    def load_state_dict(self, tensors: dict, strict: bool = True) -> None:
        import torch

        missing = sorted(set(self.names) - set(tensors))
        if strict and (missing or set(tensors) - set(self.names)):
            raise KeyError(f"checkpoint tensors do not match the adapters (missing {missing[:3]})")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(tensors[n])

    def parameters(self):
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.names]

    def buffers(self):
        return []

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)


def _embedded(cfg: ReportConfig, run_dir: Path, targets: list[str], resume: bool):
    """A new small Idefics3 and its processor (the processor is saved once and read back on resume)."""
    import torch
    from transformers import AutoProcessor

    from synthex.report.model import build_model, build_processor, build_tokenizer

    arch = cfg.model_arch()
    folder = run_dir / "processor"
    if resume and (folder / "tokenizer.json").is_file():
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        processor = build_processor(build_tokenizer(targets, arch.vocab_size), arch)
        processor.save_pretrained(str(folder))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "report-init"))
        model = build_model(arch, processor.tokenizer)
    return model, processor


def _from_base(cfg: ReportConfig):
    """The base model through the registry (4-bit when asked), with LoRA adapters when asked."""
    import torch

    from synthex.models.registry import load_report_model

    loaded = load_report_model(cfg.base, load_in_4bit=cfg.load_in_4bit)
    model = loaded.model
    if cfg.lora:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(cfg.seed, "report-lora"))
            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
                                                     init_lora_weights="gaussian"))
    return model, loaded.processor


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters (a 4-bit weight counts its unpacked size)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        total += p.numel() * (2 if p.dtype.itemsize == 1 and hasattr(p, "quant_state") else 1)
    return trainable, total


# =============================================================================================
# The trainer
# =============================================================================================
@dataclass
class ReportTrainResult:
    run_dir: Path
    model_dir: Path
    n_train: int
    rejects: list[tuple[str, str]]
    counts: dict[str, int]
    trainable: int
    parameters: int
    steps: int


def _loss_fn(model, processor, examples, cfg: ReportConfig) -> Callable:
    from synthex.report.model import prompt_text, rgb_image, training_batch

    images = [rgb_image(e.image) for e in examples]
    prompts = [prompt_text(processor, e.case) for e in examples]
    device = next(p.device for p in model.parameters())

    def loss(indices, gen):
        rows = [int(i) for i in indices]
        batch = training_batch(processor, [images[i] for i in rows], [prompts[i] for i in rows],
                               [examples[i].target for i in rows], cfg.max_target_tokens)
        return model(**{k: v.to(device) for k, v in batch.items()}).loss
    return loss


def save_report_model(folder: Path, model, processor, cfg: ReportConfig, info: dict[str, Any]) -> Path:
    """``folder``: the transformers model (or the peft adapters) + processor + synthex_report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    body = {"format": "synthex-report-model/1", "base": cfg.base, "lora": cfg.lora, "load_in_4bit": cfg.load_in_4bit,
            "synthetic_outputs": True, **info}
    _write_text(folder / "synthex_report.json", json.dumps(body, indent=1))
    return folder


def train_report(data: str | Path, run_dir: Path, config: ReportConfig | None = None, *, resume: bool = False,
                 progress: bool = True, callback: Callable[[StepEvent], None] | None = None) -> ReportTrainResult:
    """Train a report model on ``data`` (a prepared folder or a MultiCaRe-style CSV) into ``run_dir``."""
    from synthex.report.data import load_report_data, write_rejects

    cfg = config or load_report_config()
    cfg.validate()
    run_dir = Path(run_dir)
    if cfg.base:
        from synthex.models.registry import locate_report_model

        locate_report_model(cfg.base)  # a missing base fails before anything is written
    reports = load_report_data(data, seed=cfg.seed)
    train = reports.split("train")
    if not train:
        raise DataSourceError(f"{data}: no training examples (no rows of split 'train'; {len(reports.rejects)} rejects)")
    prepare_run_dir(run_dir, cfg, str(Path(data).resolve()), resume)
    write_rejects(run_dir / "rejects.csv", reports.rejects)
    _write_text(run_dir / "data.json", json.dumps({"source": reports.source, "train": len(train),
                                                   "rejects": len(reports.rejects), **reports.counts}, indent=1))
    model, processor = (_from_base(cfg) if cfg.base else _embedded(cfg, run_dir, [e.target for e in train], resume))
    module = TrainedTensors(model) if cfg.lora else model
    trainable, total = count_parameters(model)
    spec = LoopSpec(STAGE, {"model": module}, [{"params": list(module.parameters()), "base_lr": cfg.lr}],
                    _loss_fn(model, processor, train, cfg), len(train), cfg, ema_decay=cfg.ema_decay)
    log = TrainingLog(run_dir / "training_log.csv")
    evaluated = run_loop(spec, RunContext(run_dir, cfg.seed, log, cfg.keep_checkpoints, progress, callback))
    final = evaluated["model"]
    final = final.model if isinstance(final, TrainedTensors) else final
    info = {"name": run_dir.resolve().name, "step": cfg.max_steps, "train_examples": len(train),
            "data": reports.source, "seed": cfg.seed, "trainable_parameters": trainable, "parameters": total}
    model_dir = save_report_model(run_dir / "model", final, processor, cfg, info)
    return ReportTrainResult(run_dir, model_dir, len(train), reports.rejects, reports.counts, trainable, total,
                             cfg.max_steps)
