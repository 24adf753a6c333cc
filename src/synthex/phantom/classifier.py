"""A small multi-label finding classifier for chest images (phantom-trained by default).

It answers "which findings does this image show?" offline, with no downloaded weights, so that
the phantom renderer can be checked (per-finding AUROC on held-out phantoms) and generated images
can be scored for text faithfulness (the evaluation stage reuses it). Weights are saved as
safetensors plus a JSON config; nothing is pickled.

Inputs are uint8 grayscale arrays (N, H, W) of any size; they are resized to ``config.size``.
No horizontal flips are used in training: laterality is part of the label.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthex.errors import SynthexError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The shipped classifier: `synthex phantom classifier --out ... --n-train 3000 --n-test 1000 --epochs 6`
# (its held-out AUROCs are stored in config.json under "metrics").
DEFAULT_CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "weights" / "phantom_classifier"


@dataclass
class ClassifierConfig:
    """Architecture and label names of a :class:`FindingClassifier`."""

    names: list[str]
    size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 96)
    metrics: dict[str, float] = field(default_factory=dict)


def conv_blocks(channels) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU per stage, then 2x max-pool (shared with the search image tower)."""
    layers: list[nn.Module] = []
    c_in = 1
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                   nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers)


class FindingClassifier(nn.Module):
    """conv-BN-ReLU-pool blocks, global average pooling, one logit per finding."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.features = conv_blocks(config.channels)
        self.head = nn.Linear(config.channels[-1], len(config.names))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, C): also usable as an image embedding."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, 1, size, size) in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 4:
        arr = arr.mean(axis=-1)
    if arr.ndim != 3:
        raise SynthexError(f"classifier input must be (N, H, W) grayscale images, got shape {arr.shape}.")
    x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small shifts and contrast/brightness jitter; never flips (laterality matters)."""
    n = x.shape[0]
    shift = torch.randint(-4, 5, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    gain = 1 + 0.15 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 2
    bias = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 2
    return x * gain + bias


_augment = augment_images


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    config: ClassifierConfig,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> FindingClassifier:
    """Train with BCE loss and AdamW; ``callback(epoch, mean_loss)`` after each epoch."""
    if len(images) != len(labels) or labels.shape[1] != len(config.names):
        raise SynthexError(f"images ({len(images)}) and labels {labels.shape} do not match {len(config.names)} names.")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded parameter init without touching global state
        torch.manual_seed(seed)
        model = FindingClassifier(config)
    x_all = to_tensor(images, config.size)
    y_all = torch.from_numpy(labels.astype(np.float32))
    pos = y_all.mean(0).clamp(1e-3, 1 - 1e-3)
    criterion = nn.BCEWithLogitsLoss(pos_weight=((1 - pos) / pos).clamp(max=10.0))
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, len(x_all) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            loss = criterion(model(_augment(x_all[idx], gen)), y_all[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            losses.append(loss.item())
        if callback is not None:
            callback(epoch, float(np.mean(losses)) if losses else float("nan"))
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: FindingClassifier, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, K) per finding."""
    model.eval()
    x = to_tensor(images, model.config.size)
    out = [torch.sigmoid(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.config.names)))


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties averaged); NaN if one class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_finding_auroc(labels: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, float]:
    """AUROC of each finding column."""
    return {name: auroc(labels[:, k], probs[:, k]) for k, name in enumerate(names)}


def save_classifier(model: FindingClassifier, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    return out


def load_classifier(folder: str | Path | None = None) -> FindingClassifier:
    """Load a classifier saved by :func:`save_classifier` (safetensors only); None = the shipped one."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_CLASSIFIER_DIR
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / n).is_file()]
    if missing:
        raise SynthexError(f"{folder}: missing {', '.join(missing)}; train one with 'synthex phantom classifier'.")
    raw = json.loads((folder / CONFIG_FILE).read_text())
    raw["channels"] = tuple(raw["channels"])
    model = FindingClassifier(ClassifierConfig(**raw))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    return model


# --------------------------------------------------------------------------- phantom training
# Label columns: finding families the classifier separates, effusion/opacity per side so that
# laterality can be checked in generated images.
PHANTOM_LABELS = (
    "cardiomegaly", "pleural_effusion_right", "pleural_effusion_left", "opacity_right", "opacity_left",
    "atelectasis", "edema", "pneumothorax", "nodule", "calcified_granuloma", "emphysema",
    "elevated_hemidiaphragm", "scoliosis", "pacemaker", "central_line", "sternotomy",
)
_FAMILY_LABEL = {"consolidation": "opacity", "airspace_disease": "opacity", "pneumonia": "opacity",
                 "congestion": "edema", "mass": "nodule"}
_SIDED = ("pleural_effusion", "opacity")


def finding_labels(findings, names: tuple[str, ...] = PHANTOM_LABELS) -> np.ndarray:
    """Multi-hot label vector of resolved phantom findings over ``names``."""
    vec = np.zeros(len(names), dtype=np.float32)
    index = {n: i for i, n in enumerate(names)}
    for f in findings:
        base = _FAMILY_LABEL.get(f.name, f.name)
        keys = [base]
        if base in _SIDED:
            side = f.side or "right"
            keys = [f"{base}_{s}" for s in (("right", "left") if side == "bilateral" else (side,))]
        for key in keys:
            if key in index:
                vec[index[key]] = 1.0
    return vec


def sample_findings(rng: np.random.Generator, pool: tuple[str, ...] | None = None, p_normal: float = 0.3):
    """Random findings for classifier training: normal with ``p_normal``, else 1-2 findings
    with random side, zone and grade (from the finding's allowed values)."""
    from synthex.phantom.findings import REGISTRY, SEVERITIES, ZONES, Finding

    names = [n for n in (pool or tuple(REGISTRY)) if n != "normal"]
    if rng.random() < p_normal or not names:
        return []
    chosen = rng.choice(names, size=min(len(names), 1 + int(rng.random() < 0.35)), replace=False)
    out = []
    for name in chosen:
        spec = REGISTRY[str(name)]
        side = str(rng.choice(spec.sides)) if spec.sides else None
        zone = str(rng.choice(ZONES)) if spec.zoned else None
        severity = str(rng.choice(SEVERITIES)) if spec.graded else None
        out.append(Finding(str(name), side, zone, severity))
    return out


def render_training_set(n: int, size: int, seed: int, pool: tuple[str, ...] | None = None,
                        names: tuple[str, ...] = PHANTOM_LABELS, progress: bool = False):
    """Render ``n`` random phantoms: (images uint8 (n, size, size), labels (n, K), findings)."""
    from tqdm.auto import tqdm

    from synthex.phantom.render import render_phantom

    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.zeros((n, len(names)), dtype=np.float32)
    all_findings = []
    for i in tqdm(range(n), desc="rendering", disable=not progress):
        findings = sample_findings(rng, pool)
        result = render_phantom(findings or "normal", int(rng.integers(0, 2**31 - 1)), size)
        images[i] = result.image
        labels[i] = finding_labels(result.findings, names)
        all_findings.append(result.findings)
    return images, labels, all_findings


def train_phantom_classifier(
    n_train: int = 4000, n_test: int = 1000, size: int = 128, epochs: int = 8, seed: int = 0,
    pool: tuple[str, ...] | None = None, names: tuple[str, ...] = PHANTOM_LABELS, progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[FindingClassifier, dict[str, float]]:
    """Train on random phantoms, evaluate per-label AUROC on held-out phantoms (other seeds)."""
    x_train, y_train, _ = render_training_set(n_train, size, seed, pool, names, progress)
    x_test, y_test, _ = render_training_set(n_test, size, seed + 1_000_003, pool, names, progress)
    config = ClassifierConfig(names=list(names), size=size)
    model = train_classifier(x_train, y_train, config, epochs=epochs, seed=seed, callback=callback)
    metrics = per_finding_auroc(y_test, predict_proba(model, x_test), list(names))
    model.config.metrics = {k: round(v, 4) for k, v in metrics.items()}
    model.config.metrics["_n_train"], model.config.metrics["_n_test"] = n_train, n_test
    return model, metrics
