"""Train the dual encoder: ``synthex train search`` (a client of :mod:`synthex.train.loop`).

Data: an imagefolder (``metadata.csv`` with ``file_name`` and ``text``; optional alternative
captions named in ``caption_columns``, one drawn per image per step; labels from a ``findings``
JSON column, else the ``mesh`` column, else the text parsed with the phantom finding parser).
``synthex phantom caption-set --iu DIR`` writes exactly this: phantoms with captions in several
styles plus the real IU X-ray reports of the phantom IU set's train split.

Loss: CLIP's symmetric cross-entropy over the batch, with soft targets: half of each row's mass
on its own pair, half spread over the batch items with the same label set (side included), so
that two normal studies in one batch are not pushed apart (``label_weight`` sets the share).
Images get small shifts and contrast jitter, never flips (laterality is the point).

Warm starts (defaults): the image tower from the shipped phantom finding classifier, the text
tower and tokenizer from the embedded model's text encoder. Everything else is the common loop:
exact resume, a larger ``--max-steps`` extends a finished run, safetensors checkpoints, CSV log.
On GPUs the same trainer runs through accelerate (``device: auto``).

Run folder: ``config.yaml state.json training_log.csv validation.csv rejects.csv
checkpoints/search/ model/`` (``model/`` is the folder :func:`~synthex.search.model.load_search_model`
reads).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synthex.errors import ConfigError, SynthexError

logger = logging.getLogger(__name__)

RUNTIME_KEYS = {"checkpoint_every", "validate_every", "keep_checkpoints", "workers", "device"}
EXTENDABLE_KEYS = ("max_steps",)


@dataclass
class SearchTrainConfig:
    """Everything that defines a ``train search`` run (saved as ``config.yaml``)."""

    max_steps: int = 1500
    batch_size: int = 96
    lr: float = 1e-3
    text_lr: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    label_weight: float = 0.5
    seed: int = 0
    split: str | None = "train"
    text_column: str = "text"
    caption_columns: list[str] = field(default_factory=lambda: ["caption_1", "caption_2", "caption_3"])
    val_fraction: float = 0.05
    init_image: str | None = "phantom_classifier"
    init_text: str | None = "embedded"
    init_from: str | None = None  # "shipped" or a search model folder: start from all its weights
    paraphrase: float = 0.0  # share of pairs whose caption is written fresh from the findings (search.paraphrase)
    freeze_image_stages: int = 1  # warm-started conv stages kept fixed (the first is the costliest to train)
    image_size: int = 128
    embed_dim: int = 256
    arch: dict[str, Any] = field(default_factory=dict)  # other DualEncoderConfig keys (channels, text_layers, ...)
    checkpoint_every: int = 100
    validate_every: int = 250
    keep_checkpoints: int = 2
    workers: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 2:
            raise ConfigError(f"max_steps must be >= 1 and batch_size >= 2 (got {self.max_steps}, {self.batch_size})")
        if not 0.0 <= self.label_weight < 1.0:
            raise ConfigError(f"label_weight must be in [0, 1), got {self.label_weight}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.init_image not in (None, "phantom_classifier"):
            raise ConfigError(f"init_image must be 'phantom_classifier' or null, got {self.init_image!r}")
        if not 0.0 <= self.paraphrase <= 1.0:
            raise ConfigError(f"paraphrase must be in [0, 1], got {self.paraphrase}")
        if self.init_text not in (None, "embedded"):
            raise ConfigError(f"init_text must be 'embedded' or null, got {self.init_text!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchTrainConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown search training key(s) {sorted(unknown)}; valid: "
                              f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**data)


def config_differences(old: dict, new: dict) -> list[str]:
    """Weight-changing keys that differ (a key an older run did not save counts as its default)."""
    old = {**asdict(SearchTrainConfig()), **old}
    keys = (set(old) | set(new)) - RUNTIME_KEYS - set(EXTENDABLE_KEYS)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(keys) if old.get(k) != new.get(k)]


@dataclass
class TrainingRows:
    """Training images (uint8 (N, S, S)), caption choices per image and label-set ids."""

    images: np.ndarray
    captions: list[list[str]]
    label_ids: np.ndarray
    rejects: list = field(default_factory=list)
    findings: list = field(default_factory=list)  # per row: resolved Finding list, or None when unknown


def _row_findings(row: dict, rules) -> list | None:
    """Resolved findings of a metadata row: its ``findings`` JSON, else its ``mesh``; None if neither."""
    from synthex.phantom.dataset import mesh_to_findings
    from synthex.phantom.findings import Finding

    if row.get("findings"):
        return [Finding.from_dict(d).resolved() for d in json.loads(str(row["findings"]))]
    if row.get("mesh"):
        return [f.resolved() for f in mesh_to_findings(row["mesh"], rules)[0]]
    return None


def _row_keys(row: dict, rules) -> frozenset[str] | None:
    from synthex.search.labels import label_keys

    found = _row_findings(row, rules)
    return None if found is None else label_keys(found)


def load_training_rows(data_dir: Path, cfg: SearchTrainConfig, progress: bool = True) -> TrainingRows:
    """Read the imagefolder rows of ``cfg.split`` with their captions and label sets."""
    from synthex.evaluate.data import text_findings
    from synthex.phantom.dataset import load_mesh_rules
    from synthex.search.labels import label_keys
    from synthex.train.data import load_imagefolder, read_metadata

    table = read_metadata(Path(data_dir), split=cfg.split, text_column=cfg.text_column)
    columns = tuple(c for c in cfg.caption_columns if c in table.columns)
    missing = [c for c in cfg.caption_columns if c not in table.columns]
    if missing:
        logger.warning("%s has no caption column(s) %s; training on %s only", data_dir, missing,
                       [cfg.text_column, *columns])
    extra = tuple(c for c in ("findings", "mesh") if c in table.columns)
    data = load_imagefolder(Path(data_dir), cfg.image_size, split=cfg.split, text_column=cfg.text_column,
                            workers=cfg.workers, progress=progress, columns=columns + extra)
    rules, keys, findings = load_mesh_rules(), [], []
    for i, text in enumerate(data.captions):
        found = _row_findings({c: data.columns[c][i] for c in extra}, rules)
        findings.append(found)
        keys.append(label_keys(found if found is not None else text_findings(text)[0]))
    names = {k: j for j, k in enumerate(sorted(set(keys), key=sorted))}
    captions = [[t] + [data.columns[c][i] for c in columns if str(data.columns[c][i]).strip()]
                for i, t in enumerate(data.captions)]
    return TrainingRows(data.images[:, 0].numpy(), captions, np.array([names[k] for k in keys]), data.rejects,
                        findings)


def soft_targets(label_ids, weight: float):
    """(B, B) rows summing to 1: ``1 - weight`` on the pair, ``weight`` over same-label items."""
    import torch

    same = (label_ids[:, None] == label_ids[None, :]).float()
    return (1 - weight) * torch.eye(len(label_ids)) + weight * same / same.sum(1, keepdim=True)


def contrastive_loss(image_emb, text_emb, scale, targets):
    """Symmetric soft-target cross-entropy of CLIP's similarity logits."""
    logits = scale * image_emb @ text_emb.T
    loss_i = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def build_model(cfg: SearchTrainConfig, tokenizer):
    """A fresh dual encoder with the configured warm starts."""
    from synthex.search.model import DualEncoder, DualEncoderConfig

    reserved = {"image_size", "embed_dim", "vocab_size", "bos_token_id", "eos_token_id", "info"} & set(cfg.arch)
    if reserved:
        raise ConfigError(f"arch may not set {sorted(reserved)} (they are top-level keys or come from the tokenizer)")
    config = DualEncoderConfig.from_dict({"image_size": cfg.image_size, "embed_dim": cfg.embed_dim,
                                          "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                          "eos_token_id": tokenizer.eos_token_id, **cfg.arch})
    import torch

    from synthex.train.loop import derived_seed

    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's global RNG is untouched
        torch.manual_seed(derived_seed(cfg.seed, "search", "init"))
        model = DualEncoder(config)
    if cfg.init_from:
        _load_all_weights(model, cfg.init_from)
    elif cfg.init_image == "phantom_classifier":
        from synthex.phantom.classifier import load_classifier

        clf = load_classifier()
        if list(clf.config.channels) != list(config.channels):
            raise ConfigError(f"init_image: the phantom classifier has channels {clf.config.channels}, "
                              f"the image tower {config.channels}")
        model.features.load_state_dict(clf.features.state_dict())
    if cfg.init_text == "embedded" and not cfg.init_from:
        from safetensors.torch import load_file

        from synthex.models.registry import embedded_dir

        from synthex.models.compat import remap_text_keys

        state = remap_text_keys(load_file(str(embedded_dir() / "text_encoder" / "model.safetensors")),
                                model.text_model.state_dict().keys())  # either transformers key naming
        missing, unexpected = model.text_model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise ConfigError(f"init_text: the embedded text encoder does not fit the text tower "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.freeze_image_stages(cfg.freeze_image_stages)
    return model


def _load_all_weights(model, source: str) -> None:
    from synthex.search.model import DEFAULT_SEARCH_DIR, load_search_model

    other = load_search_model(DEFAULT_SEARCH_DIR if source == "shipped" else source)
    try:
        model.load_state_dict(other.model.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"init_from {source!r}: its architecture differs from this run's "
                          f"({str(exc)[:200]}); use the same arch keys or leave init_from out") from exc


def _tokenizer(cfg: SearchTrainConfig):
    from synthex.models.embedded import load_tokenizer
    from synthex.models.registry import embedded_dir

    return load_tokenizer(embedded_dir() / "tokenizer")


def _split_validation(n: int, cfg: SearchTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + 17)
    order = rng.permutation(n)
    n_val = int(round(n * cfg.val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class SearchTrainResult:
    run_dir: Path
    model_dir: Path
    n_train: int
    n_val: int
    rejects: list
    validation: dict[str, float]
    parameters: int


def _prepare_run(run_dir: Path, cfg: SearchTrainConfig, data_dir: Path, resume: bool) -> dict:
    """New run: write config.yaml/state.json. Resume: check it matches; a larger max_steps
    extends a finished run (a smaller one is refused)."""
    import yaml

    from synthex.train.data import metadata_fingerprint
    from synthex.train.loop import _write_text
    from synthex.train.scratch import check_run_folder

    state = check_run_folder(run_dir, asdict(cfg), config_differences, data_dir, resume,
                             kind="search training run", error=ConfigError)
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"done": False, "data_sha256": metadata_fingerprint(data_dir)}
    else:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        if cfg.max_steps < int(saved["max_steps"]):
            raise ConfigError(f"cannot lower max_steps of {run_dir} from {saved['max_steps']} to {cfg.max_steps}; "
                              "resume with the same or a larger budget")
        if cfg.max_steps > int(saved["max_steps"]):
            logger.info("extending %s: max_steps %s -> %s", run_dir, saved["max_steps"], cfg.max_steps)
            state["done"] = False
    _write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    _write_text(run_dir / "state.json", json.dumps(state, indent=1))
    return state


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA GPU is visible; use device: cpu or auto")
    return torch.device(name)


def validation_metrics(model, tokenizer, images: np.ndarray, texts: list[str], label_ids: np.ndarray) -> dict:
    """Held-out image <-> caption retrieval: exact-pair R@1/R@10 both ways, label MAP text->image."""
    import torch

    from synthex.evaluate.retrieval import score_rankings
    from synthex.search.model import SearchModel

    was_training = model.training
    device = next(model.parameters()).device
    sm = SearchModel(model.cpu(), tokenizer)
    img, txt = sm.embed_images(images), sm.embed_texts(texts)
    model.to(device).train(was_training)
    sim = torch.from_numpy(img @ txt.T)
    exact = torch.eye(len(texts), dtype=torch.bool)
    same = torch.from_numpy(label_ids[:, None] == label_ids[None, :])
    out = {f"i2t_{k}": v for k, v in score_rankings(sim, exact, ks=(1, 10)).items() if k in ("R@1", "R@10")}
    out |= {f"t2i_{k}": v for k, v in score_rankings(sim.T, exact, ks=(1, 10)).items() if k in ("R@1", "R@10")}
    out["t2i_label_MAP"] = score_rankings(sim.T, same.T, ks=(10,))["MAP"]
    return out


def train_search(data_dir: str | Path, run_dir: str | Path, cfg: SearchTrainConfig | None = None, *,
                 resume: bool = False, progress: bool = True,
                 callback: Callable[[Any], None] | None = None) -> SearchTrainResult:
    """Train (or resume / extend) a dual encoder on ``data_dir``; the model goes to ``run_dir/model``."""
    import torch

    from synthex.phantom.classifier import augment_images
    from synthex.search.model import images_to_tensor, save_search_model
    from synthex.search.paraphrase import paraphrase
    from synthex.train.data import save_rejects
    from synthex.train.loop import LoopSpec, RunContext, TrainingLog, _write_text, run_loop

    cfg, run_dir, data_dir = cfg or SearchTrainConfig(), Path(run_dir), Path(data_dir)
    state = _prepare_run(run_dir, cfg, data_dir, resume)
    rows = load_training_rows(data_dir, cfg, progress)
    save_rejects(rows.rejects, run_dir / "rejects.csv")
    train_idx, val_idx = _split_validation(len(rows.images), cfg)
    if len(train_idx) < cfg.batch_size:
        raise SynthexError(f"{data_dir}: {len(train_idx)} training images, fewer than batch_size {cfg.batch_size}; "
                           "add images or lower batch_size")
    tokenizer, device = _tokenizer(cfg), _device(cfg.device)
    model = build_model(cfg, tokenizer).to(device)
    labels = torch.from_numpy(rows.label_ids)

    def loss_fn(indices, gen):
        idx = train_idx[indices.numpy()]
        x = augment_images(images_to_tensor(rows.images[idx], cfg.image_size), gen).to(device)
        picks = torch.randint(0, 1 << 30, (len(idx),), generator=gen).tolist()
        texts = [rows.captions[i][p % len(rows.captions[i])] for i, p in zip(idx, picks)]
        if cfg.paraphrase > 0:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
            texts = [paraphrase(rows.findings[i], rng) if rows.findings[i] is not None
                     and rng.random() < cfg.paraphrase else t for i, t in zip(idx, texts)]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        targets = soft_targets(labels[idx], cfg.label_weight).to(device)
        return contrastive_loss(model.encode_image(x), model.encode_text(enc["input_ids"].to(device),
                                enc["attention_mask"].to(device)), model.scale(), targets)

    val_texts = [rows.captions[i][0] for i in val_idx]
    log_path = run_dir / "validation.csv"

    def on_step_end(step: int, modules: dict) -> None:
        if len(val_idx) < 2 or not (step % max(1, cfg.validate_every) == 0 or step == cfg.max_steps):
            return
        metrics = validation_metrics(model, tokenizer, rows.images[val_idx], val_texts, rows.label_ids[val_idx])
        header = not log_path.exists()
        with log_path.open("a", encoding="utf-8") as fh:
            if header:
                fh.write("step," + ",".join(metrics) + "\n")
            fh.write(f"{step}," + ",".join(f"{v:.4f}" for v in metrics.values()) + "\n")
        state["validation"] = {"step": step, **{k: round(v, 4) for k, v in metrics.items()}}

    text_params = list(model.text_model.parameters()) + list(model.text_proj.parameters())
    text_ids = {id(p) for p in text_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in text_ids and p.requires_grad],
               "base_lr": cfg.lr},
              {"params": text_params, "base_lr": cfg.text_lr}]
    spec = LoopSpec("search", {"model": model}, groups, loss_fn, len(train_idx), cfg, on_step_end=on_step_end)
    ctx = RunContext(run_dir, cfg.seed, TrainingLog(run_dir / "training_log.csv"), cfg.keep_checkpoints,
                     progress, callback)
    run_loop(spec, ctx)
    model.cpu().eval()
    model.config.info = {"trained_by": "synthex train search", "data": str(data_dir), "steps": cfg.max_steps,
                         "batch_size": cfg.batch_size, "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
                         "validation": state.get("validation", {})}
    tmp, final = run_dir / ".tmp_model", run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    save_search_model(model, tokenizer, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    state["done"] = True
    _write_text(run_dir / "state.json", json.dumps(state, indent=1))
    return SearchTrainResult(run_dir, final, len(train_idx), len(val_idx), rows.rejects,
                             state.get("validation", {}), sum(p.numel() for p in model.parameters()))


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SearchTrainConfig:
    """A YAML file of :class:`SearchTrainConfig` keys (default: all defaults) plus CLI overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search training config {path} not found")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of search training keys")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return SearchTrainConfig.from_dict(data)
