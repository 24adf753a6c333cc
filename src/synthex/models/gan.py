"""A DCGAN baseline for 1-channel chest X-rays, optionally conditioned on findings.

- :class:`Generator`: DCGAN (Radford et al. 2016): ``z`` -> 4x4 -> transposed convolutions with
  batch norm and ReLU -> ``tanh`` image in [-1, 1] at 32, 64 or 128 px. Conditional: a learned
  embedding of the multi-hot finding vector is concatenated to ``z`` ("normal" = all zeros).
- :class:`Discriminator`: strided 4x4 convolutions with LeakyReLU (no batch norm), optional
  spectral norm (Miyato et al. 2018) on every layer, sum-pooled features ``phi(x)`` and a linear
  head; conditional: the projection head of Miyato & Koyama (2018),
  ``D(x, y) = w . phi(x) + <E y, phi(x)>`` with ``E y`` the sum of the findings' embeddings.
- losses: non-saturating (``softplus``) or hinge; the R1 penalty (Mescheder et al. 2018).
- :func:`save_gan` / :func:`load_gan`: a model folder with ``generator.safetensors``,
  ``discriminator.safetensors`` and ``config.json`` (architecture and label vocabulary).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthex.errors import ConfigError, SynthexError

GAN_RESOLUTIONS = (32, 64, 128)
GAN_FORMAT = "synthex-gan"
GAN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"
LOSSES = ("non_saturating", "hinge")


def default_labels() -> list[str]:
    """The finding vocabulary of the phantom classifier (what ``synthex evaluate`` scores)."""
    from synthex.phantom.classifier import PHANTOM_LABELS

    return list(PHANTOM_LABELS)


@dataclass
class GanArch:
    """The architecture of a GAN (saved in its ``config.json``)."""

    resolution: int = 64
    z_dim: int = 128
    g_channels: int = 64
    """Channels of the generator's last block; they double toward 4x4 (capped at max_channels)."""
    d_channels: int = 64
    """Channels of the discriminator's first block; they double toward 4x4."""
    max_channels: int = 512
    conditional: bool = True
    embed_dim: int = 64
    """Size of the generator's finding embedding (concatenated to z)."""
    spectral_norm: bool = True
    labels: list[str] = field(default_factory=default_labels)

    @property
    def n_blocks(self) -> int:
        """Doublings from 4x4 to the resolution."""
        return int(round(math.log2(self.resolution))) - 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "") -> "GanArch":
        """Build and validate; an unknown key or a bad value raises ConfigError naming it."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}unknown config key(s) {['arch.' + k for k in unknown]}; known: "
                              f"{sorted('arch.' + k for k in known)}")
        if values.get("labels") is None:
            values.pop("labels", None)
        arch = cls(**values)
        arch.validate(where)
        return arch

    def validate(self, where: str = "") -> None:
        """One ConfigError listing every problem."""
        problems = []
        if self.resolution not in GAN_RESOLUTIONS:
            problems.append(f"arch.resolution {self.resolution!r} must be one of {GAN_RESOLUTIONS}")
        for key in ("z_dim", "g_channels", "d_channels", "max_channels", "embed_dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"arch.{key} {value!r} must be an integer >= 1")
        for key in ("conditional", "spectral_norm"):
            if not isinstance(getattr(self, key), bool):
                problems.append(f"arch.{key} {getattr(self, key)!r} must be true or false")
        labels = self.labels
        if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) and x for x in labels):
            problems.append(f"arch.labels {labels!r} must be a non-empty list of finding names")
        elif len(set(labels)) != len(labels) or "normal" in labels:
            problems.append(f"arch.labels {labels!r} must not repeat names or hold 'normal' (= no finding)")
        if problems:
            raise ConfigError(f"{where}invalid GAN architecture: " + "; ".join(problems))


# =============================================================================================
# Networks
# =============================================================================================
def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, batch-norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _channels(arch: GanArch, base: int) -> list[int]:
    """Block widths from the image side toward 4x4: base, 2 base, 4 base... (capped)."""
    return [min(arch.max_channels, base * 2 ** i) for i in range(arch.n_blocks)]


class Generator(nn.Module):
    """``forward(z, labels=None)``: z (B, z_dim), labels (B, K) multi-hot -> (B, 1, R, R) in [-1, 1]."""

    def __init__(self, arch: GanArch) -> None:
        super().__init__()
        self.arch = arch
        ch = _channels(arch, arch.g_channels)[::-1]
        self.embed = nn.Linear(len(arch.labels), arch.embed_dim) if arch.conditional else None
        in_dim = arch.z_dim + (arch.embed_dim if arch.conditional else 0)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]),
                                   nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs labels (all zeros = normal)")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """``forward(x, labels=None)`` -> logits (B,), x (B, 1, R, R) in [-1, 1]; with a projection
    head when conditional and spectral norm on every layer when ``arch.spectral_norm``."""

    def __init__(self, arch: GanArch) -> None:
        super().__init__()
        self.arch = arch
        sn = nn.utils.parametrizations.spectral_norm if arch.spectral_norm else (lambda m: m)
        ch = _channels(arch, arch.d_channels)
        convs = [nn.Conv2d(a, b, 4, 2, 1) for a, b in zip([1] + ch[:-1], ch)]
        head = nn.Linear(ch[-1], 1)
        embed = nn.Linear(len(arch.labels), ch[-1], bias=False) if arch.conditional else None
        for module in (*convs, head, *([embed] if embed is not None else [])):
            _dcgan_init(module)
        self.convs = nn.ModuleList(sn(c) for c in convs)
        self.head = sn(head)
        self.embed = sn(embed) if embed is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``phi(x)``: the last block's activations summed over space, (B, C)."""
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), 0.2)
        return x.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(x)
        out = self.head(phi).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs labels (all zeros = normal)")
            out = out + (self.embed(labels) * phi).sum(dim=1)
        return out


def build_generator(arch: GanArch) -> Generator:
    """The generator of ``arch`` (DCGAN-initialised from torch's global random state)."""
    return Generator(arch)


def build_discriminator(arch: GanArch) -> Discriminator:
    """The discriminator of ``arch``."""
    return Discriminator(arch)


# =============================================================================================
# Losses
# =============================================================================================
def d_loss(real_logits, fake_logits, kind: str = "non_saturating"):
    """Discriminator loss: ``softplus(-D(x)) + softplus(D(G(z)))`` or the hinge loss."""
    f = nn.functional
    if kind == "hinge":
        return f.relu(1 - real_logits).mean() + f.relu(1 + fake_logits).mean()
    return f.softplus(-real_logits).mean() + f.softplus(fake_logits).mean()


def g_loss(fake_logits, kind: str = "non_saturating"):
    """Generator loss: non-saturating ``softplus(-D(G(z)))`` or hinge ``-D(G(z))``."""
    if kind == "hinge":
        return -fake_logits.mean()
    return nn.functional.softplus(-fake_logits).mean()


def r1_penalty(real_logits, real_images):
    """``E ||grad_x D(x)||^2`` over real images (``real_images`` must require grad); the caller
    scales it by ``gamma / 2``."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# =============================================================================================
# Model folder
# =============================================================================================
def _atomic_bytes(path: Path, data: bytes) -> None:
    from synthex.io import atomic_write

    atomic_write(Path(path), lambda fh: fh.write(data))


def save_gan(folder: Path, generator, discriminator, info: dict[str, Any] | None = None) -> Path:
    """Write ``folder/{generator,discriminator}.safetensors`` and ``config.json`` (the
    architecture, label vocabulary and ``info`` such as the training step)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for module, name in ((generator, GENERATOR_FILE), (discriminator, DISCRIMINATOR_FILE)):
        tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        _atomic_bytes(folder / name, save(tensors, metadata={"format": GAN_FORMAT}))
    body = {"format": GAN_FORMAT, "version": GAN_FORMAT_VERSION, "arch": generator.arch.to_dict(),
            "labels": list(generator.arch.labels), **(info or {})}
    _atomic_bytes(folder / CONFIG_FILE, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
    return folder


def read_gan_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of a GAN model folder, checked; a missing or foreign folder raises
    SynthexError saying what was expected."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise SynthexError(f"GAN model folder {folder} does not exist; pass RUN/model of a "
                           "'synthex train gan' run")
    if not path.is_file() or not (folder / GENERATOR_FILE).is_file():
        raise SynthexError(f"{folder} is not a GAN model folder (it needs {CONFIG_FILE} and {GENERATOR_FILE}); "
                           "pass RUN/model of a 'synthex train gan' run")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SynthexError(f"{path} is empty or corrupt ({err}); copy the model folder again") from err
    if not isinstance(body, dict) or body.get("format") != GAN_FORMAT:
        raise SynthexError(f"{path} is not a {GAN_FORMAT} config (format {body.get('format') if isinstance(body, dict) else None!r})")
    return body


def load_gan(folder: Path, *, discriminator: bool = False):
    """(generator, discriminator or None, config.json) of a model folder, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    body = read_gan_config(folder)
    arch = GanArch.from_dict(body.get("arch"), where=f"{folder / CONFIG_FILE}: ")
    generator = build_generator(arch)
    try:
        generator.load_state_dict(load_file(str(folder / GENERATOR_FILE)), strict=True)
        disc = None
        if discriminator:
            disc = build_discriminator(arch)
            disc.load_state_dict(load_file(str(folder / DISCRIMINATOR_FILE)), strict=True)
            disc.eval()
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, a mismatch: a broken model folder
        raise SynthexError(f"{folder}: the weights do not load ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''}); copy the model folder again") from err
    return generator.eval(), disc, body


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
