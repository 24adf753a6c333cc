"""The training loop every trainer of SynTheX-Ray is a client of.

A trainer describes one stage with a :class:`LoopSpec` (modules, parameter groups, the loss of
one batch of row indices, and settings with ``max_steps, batch_size, lr, warmup_steps,
schedule, min_lr_ratio, weight_decay, grad_clip, checkpoint_every``) and calls
:func:`run_loop`. The loop owns what every trainer needs and none should re-implement:

- exact resume: the batch of step ``k`` (:class:`BatchOrder`) and all of its randomness
  (:func:`step_generator`) are functions of ``(seed, stage, k)`` and the LR is a function of
  ``k`` (:func:`lr_factor`), so a checkpoint needs only weights, EMA weights and the optimizer
  state, all safetensors (:func:`save_checkpoint` / :func:`restore_checkpoint`; nothing is
  unpickled);
- extension: a larger ``max_steps`` continues a finished stage from its last checkpoint;
- the CSV log (:class:`TrainingLog`), cut back to the checkpoint's step on resume so it has every
  step once; a non-finite loss stops with a message naming the step and the learning rate;
- progress: a tqdm bar (``progress=False`` hides it) and a per-step :class:`StepEvent` callback
  that UIs use.

A trainer with several models (a GAN's generator and discriminator) gives ``optimizers`` (named
torch optimizers; their groups carry ``base_lr`` like ``param_groups``) and a ``step_fn`` that
does its own updates and returns its metrics; ``optimizer_{name}.safetensors`` then holds each
optimizer's state and ``log_columns`` names extra CSV columns. Without them nothing changes:
one AdamW, ``optimizer.safetensors`` and the six log columns.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from synthex.errors import SynthexError

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("step", "stage", "loss", "lr", "seconds", "images_per_s")


class LoopSettings(Protocol):
    """The settings :func:`run_loop` reads (a trainer's stage dataclass provides them)."""

    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    schedule: str
    min_lr_ratio: float
    weight_decay: float
    grad_clip: float
    checkpoint_every: int


# =============================================================================================
# 1. Seeds, batches, LR
# =============================================================================================
def derived_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (stable across runs)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_generator(seed: int, stage: str, step: int):
    """The generator of all the noise of one training step."""
    import torch

    return torch.Generator().manual_seed(derived_seed(seed, stage, "step", step))


class BatchOrder:
    """Epoch-wise shuffles: the batch of step ``k`` is a function of ``(seed, stage, k)``."""

    def __init__(self, seed: int, stage: str, n_items: int, batch_size: int):
        self.seed, self.stage, self.n, self.batch_size = seed, stage, n_items, batch_size
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int):
        import torch

        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, self.stage, "epoch", epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        return self._perms[epoch]

    def indices(self, step: int):
        """Row indices of 1-based training step ``step``."""
        import torch

        first = (step - 1) * self.batch_size
        positions = range(first, first + self.batch_size)
        return torch.stack([self._perm(p // self.n)[p % self.n] for p in positions])


def lr_factor(step: int, max_steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then constant or cosine decay to ``min_ratio`` at ``max_steps``."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# =============================================================================================
# 2. Files: atomic writes, safetensors state, optimizer state, the CSV log
# =============================================================================================
def _write_text(path: Path, text: str) -> None:
    """UTF-8 text, written atomically (:func:`synthex.io.atomic_write`)."""
    from synthex.io import atomic_write

    atomic_write(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def _save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    from synthex.io import atomic_write

    out, seen = {}, set()
    for key, value in tensors.items():  # tied weights (a GPT-2's lm_head = wte) are stored twice
        value = value.detach()
        pointer = value.untyped_storage().data_ptr()
        out[key] = (value.clone() if pointer in seen else value).contiguous()
        seen.add(pointer)
    data = save(out, metadata=metadata)
    atomic_write(Path(path), lambda fh: fh.write(data))


def _load_module(module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)), strict=True)


def save_optimizer(optimizer, path: Path) -> None:
    """AdamW state as safetensors: tensors ``state.{param}.{key}``, param groups as JSON."""
    import torch

    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{key}": (v if torch.is_tensor(v) else torch.tensor(v))
               for idx, st in sd["state"].items() for key, v in st.items()}
    _save_tensors(tensors, path, {"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(optimizer, path: Path) -> None:
    """Inverse of :func:`save_optimizer` (reads tensors and JSON only; nothing is unpickled)."""
    from synthex.train.checkpoints import read_optimizer_state

    optimizer.load_state_dict(read_optimizer_state(Path(path)))


class TrainingLog:
    """``training_log.csv``: one row per step and stage, appended and flushed as it goes;
    ``extra_columns`` (e.g. a GAN's ``d_loss``) follow the six :data:`LOG_COLUMNS`."""

    def __init__(self, path: Path, extra_columns: tuple[str, ...] = ()):
        self.path = Path(path)
        self.columns = LOG_COLUMNS + tuple(extra_columns)
        if not self.path.exists():
            _write_text(self.path, ",".join(self.columns) + "\n")

    def rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def truncate(self, stage: str, last_step: int) -> None:
        """Drop this stage's rows after ``last_step`` (steps redone after a resume)."""
        keep = [r for r in self.rows() if not (r["stage"] == stage and int(r["step"]) > last_step)]
        lines = [",".join(self.columns)] + [",".join(r.get(c) or "" for c in self.columns) for r in keep]
        _write_text(self.path, "\n".join(lines) + "\n")

    def append(self, step: int, stage: str, loss: float, lr: float, seconds: float, n_images: int,
               extra: dict[str, float] | None = None) -> None:
        """One row; ``extra`` holds the values of the extra columns (missing ones are left empty)."""
        values = [f"{(extra or {})[c]:.6g}" if c in (extra or {}) else "" for c in self.columns[len(LOG_COLUMNS):]]
        tail = "".join("," + v for v in values)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"{step},{stage},{loss:.6g},{lr:.6g},{seconds:.4f},{n_images / max(seconds, 1e-9):.2f}{tail}\n")


# =============================================================================================
# 3. The loop (checkpoints, resume, EMA, LR, log, progress)
# =============================================================================================
@dataclass
class StepEvent:
    """What the per-step callback receives (progress bars, UIs)."""

    stage: str
    step: int
    max_steps: int
    loss: float
    lr: float


@dataclass
class RunContext:
    run_dir: Path
    seed: int
    log: TrainingLog
    keep_checkpoints: int = 2
    progress: bool = True
    callback: Callable[[StepEvent], None] | None = None


@dataclass
class LoopSpec:
    """One stage's loop: which modules train, the loss of a batch, the optimizer settings."""

    stage: str
    modules: dict[str, Any]
    param_groups: list[dict]
    loss_fn: Callable[[Any, Any], Any]  # (indices, generator) -> scalar loss tensor
    n_items: int
    settings: LoopSettings
    ema_decay: float = 0.0
    on_step_end: Callable[[int, dict], None] | None = None  # (step, eval modules)
    optimizers: dict[str, Any] | None = None
    """Named optimizers made by the trainer (then ``param_groups`` and ``loss_fn`` are unused)."""
    step_fn: Callable[[Any, Any, dict[str, Any]], dict[str, float]] | None = None
    """(indices, generator, optimizers) -> metrics with ``loss``: one step's updates, done by the
    trainer (zero_grad, backward, clipping, step); needed with ``optimizers``."""
    batches_per_step: int = 1
    """Row indices per step = ``batch_size * batches_per_step`` (e.g. k discriminator batches)."""


class Ema:
    """Exponential moving average copies of modules (decay warms up as (1+k)/(10+k))."""

    def __init__(self, modules: dict[str, Any], decay: float):
        self.decay = decay
        self.modules = {n: copy.deepcopy(m).eval().requires_grad_(False) for n, m in modules.items()}

    def update(self, modules: dict[str, Any], step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, module in modules.items():
                for e, p in zip(self.modules[name].parameters(), module.parameters()):
                    e.lerp_(p, 1 - decay)
                for e, b in zip(self.modules[name].buffers(), module.buffers()):
                    e.copy_(b)


def _checkpoint_dirs(folder: Path) -> list[Path]:
    """The ``step_*`` folders with a ``state.json`` (not validated), oldest first."""
    from synthex.train.checkpoints import complete_checkpoint_dirs

    return complete_checkpoint_dirs(folder)


def optimizer_file(name: str) -> str:
    """The checkpoint file of an optimizer: ``optimizer.safetensors`` for the single unnamed one."""
    return f"optimizer_{name}.safetensors" if name else "optimizer.safetensors"


def _named(optimizer) -> dict[str, Any]:
    """``{"": optimizer}`` for a single optimizer, a dict of named optimizers as it is."""
    return optimizer if isinstance(optimizer, dict) else {"": optimizer}


def checkpoint_files(spec: LoopSpec, ema: Ema | None) -> list[str]:
    """The files of a checkpoint of ``spec``."""
    return ([f"{name}.safetensors" for name in spec.modules]
            + [f"ema_{name}.safetensors" for name in (ema.modules if ema else [])]
            + [optimizer_file(name) for name in (spec.optimizers or {"": None})])


def save_checkpoint(folder: Path, step: int, spec: LoopSpec, optimizer, ema: Ema | None, keep: int) -> Path:
    """Write ``folder/step_XXXXXXX`` atomically (temp folder, synced, then renamed); keep the last ``keep``.
    ``optimizer``: one optimizer or a dict of named ones (``spec.optimizers``)."""
    from synthex.train.checkpoints import write_checkpoint

    def write(tmp: Path) -> None:
        for name, module in spec.modules.items():
            _save_tensors(module.state_dict(), tmp / f"{name}.safetensors")
        for name, module in (ema.modules.items() if ema else []):
            _save_tensors(module.state_dict(), tmp / f"ema_{name}.safetensors")
        for name, opt in _named(optimizer).items():
            save_optimizer(opt, tmp / optimizer_file(name))

    return write_checkpoint(folder, step, {"stage": spec.stage}, write, keep)


def restore_checkpoint(folder: Path, spec: LoopSpec, optimizer, ema: Ema | None) -> int:
    """Load the newest readable checkpoint of ``folder`` (older ones when the newest is truncated
    or corrupt, with a warning; see :func:`synthex.train.checkpoints.load_latest_checkpoint});
    returns its step (0 when there is none)."""
    from synthex.train.checkpoints import load_latest_checkpoint, read_optimizer_state

    def apply(ckpt) -> None:
        for name, module in spec.modules.items():
            module.load_state_dict(ckpt.tensors[name], strict=True)
        for name, module in (ema.modules.items() if ema else []):
            module.load_state_dict(ckpt.tensors[f"ema_{name}"], strict=True)
        for name, opt in _named(optimizer).items():
            opt.load_state_dict(ckpt.optimizer if not name else read_optimizer_state(ckpt.path / optimizer_file(name)))

    ckpt = load_latest_checkpoint(folder, checkpoint_files(spec, ema), apply, state_fields={"stage": str},
                                  expect={"stage": spec.stage}, what=spec.stage)
    return ckpt.step if ckpt else 0


def _loss_step(spec: LoopSpec, optimizer, params: list, indices, gen, step: int) -> dict[str, float]:
    """The default step: ``loss_fn``, backward, gradient clipping, one AdamW step."""
    import torch

    s = spec.settings
    loss = spec.loss_fn(indices, gen)
    if not torch.isfinite(loss):
        raise SynthexError(f"{spec.stage}: loss is {loss.item()} at step {step}; lower the "
                           f"learning rate ({s.lr}) or resume from the last checkpoint")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
    optimizer.step()
    return {"loss": loss.item()}


def _custom_step(spec: LoopSpec, optimizers: dict, indices, gen, step: int) -> dict[str, float]:
    """A trainer's own step (``step_fn``); every metric must be finite."""
    metrics = spec.step_fn(indices, gen, optimizers)
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad or "loss" not in metrics:
        what = ", ".join(f"{k} is {v}" for k, v in bad.items()) or "no 'loss' metric"
        raise SynthexError(f"{spec.stage}: {what} at step {step}; lower the learning rate "
                           f"({spec.settings.lr}) or resume from the last checkpoint")
    return metrics


def _optimizers(spec: LoopSpec):
    """The optimizer(s) of ``spec``: one AdamW over ``param_groups``, or the trainer's named ones."""
    import torch

    if spec.optimizers is None:
        return torch.optim.AdamW(spec.param_groups, lr=spec.settings.lr, weight_decay=spec.settings.weight_decay)
    if spec.step_fn is None:
        raise ValueError(f"{spec.stage}: LoopSpec.optimizers needs a step_fn")
    return spec.optimizers


def run_loop(spec: LoopSpec, ctx: RunContext) -> dict[str, Any]:
    """Train ``spec`` to ``settings.max_steps`` from its last checkpoint; returns eval modules
    (the EMA copies when EMA is on)."""
    from tqdm.auto import tqdm

    s = spec.settings
    optimizer = _optimizers(spec)
    ema = Ema(spec.modules, spec.ema_decay) if spec.ema_decay > 0 else None
    folder = ctx.run_dir / "checkpoints" / spec.stage
    start = restore_checkpoint(folder, spec, optimizer, ema)
    ctx.log.truncate(spec.stage, start)
    n_batch = s.batch_size * spec.batches_per_step
    order = BatchOrder(ctx.seed, spec.stage, spec.n_items, n_batch)
    params = [p for g in spec.param_groups for p in g["params"]]
    for m in spec.modules.values():
        m.train()
    bar = tqdm(total=s.max_steps, initial=start, desc=spec.stage, unit="step", disable=not ctx.progress)
    for step in range(start + 1, s.max_steps + 1):
        t0 = time.perf_counter()
        factor = lr_factor(step, s.max_steps, s.warmup_steps, s.schedule, s.min_lr_ratio)
        for opt in _named(optimizer).values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        indices, gen = order.indices(step), step_generator(ctx.seed, spec.stage, step)
        if spec.step_fn is None:
            metrics = _loss_step(spec, optimizer, params, indices, gen, step)
        else:
            metrics = _custom_step(spec, optimizer, indices, gen, step)
        if ema is not None:
            ema.update(spec.modules, step)
        seconds, lr, loss = time.perf_counter() - t0, s.lr * factor, metrics["loss"]
        ctx.log.append(step, spec.stage, loss, lr, seconds, n_batch, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if ctx.callback is not None:
            ctx.callback(StepEvent(spec.stage, step, s.max_steps, loss, lr))
        if step % s.checkpoint_every == 0 or step == s.max_steps:
            save_checkpoint(folder, step, spec, optimizer, ema, ctx.keep_checkpoints)
        if spec.on_step_end is not None:
            spec.on_step_end(step, ema.modules if ema else spec.modules)
    bar.close()
    evaluated = ema.modules if ema else spec.modules
    for m in evaluated.values():
        m.eval()
    return evaluated
