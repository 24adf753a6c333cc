"""Continuous diffusion over token embeddings (Diffusion-LM style) for diagnosis -> note.

A note of ``max_len`` tokens ([PAD]-filled) is the sequence of its token embeddings
``x0 = E[w]`` (``emb_dim`` per token, learned with the model, or initialised from a pretrained
encoder's word embeddings). Training noises it with a 1,000-step schedule ("sqrt" as in
Diffusion-LM, or "cosine"); a Transformer denoiser, told the step and the diagnosis, predicts
``x0`` (``objective: x0``, default: Diffusion-LM's finding that it rounds better) or the noise
(``objective: eps``). The loss is the MSE of that prediction plus the rounding term: the
cross-entropy of the tokens read back from the true and from the predicted ``x0`` through
logits ``x . E^T`` (this keeps the embeddings apart; without it they collapse), plus the
prior term ``|sqrt(alpha_bar_T) x0|^2``.

The diagnosis (:func:`synthex.notes.data.condition_text`, tokenised) is encoded by a small
Transformer and read either by cross-attention in every denoiser layer (``conditioning:
cross``) or as prefix tokens in the same self-attention (``conditioning: prefix``).
Self-conditioning (Chen et al. 2022, "Analog Bits"): with probability 0.5 in training the
denoiser also sees its own detached ``x0`` estimate; in sampling, the previous step's estimate.
Classifier-free guidance: the condition is replaced by [NULL] with probability
``cond_dropout``; sampling mixes ``x0_u + w (x0_c - x0_u)``.

Sampling (:func:`sample`): DDIM (eta 0, any number of steps) or DDPM (the ancestral sampler;
eta 1 on the chosen steps: all 1,000 by default), optionally with the clamping trick (``clamp``: each ``x0`` estimate replaced by the
embeddings of the tokens it rounds to before the update; off by default, it made notes worse at
our training budget), and rounding at the end (``rounding``: ``logits`` = argmax ``x . E^T``, the
decoder the rounding term trains, default; or ``l2`` = the nearest embedding). ``trace`` records the rounded text at chosen steps (the app shows it).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from synthex.errors import ConfigError

OBJECTIVES = ("x0", "eps")
CONDITIONINGS = ("cross", "prefix")
SCHEDULES = ("sqrt", "cosine")
SAMPLERS = ("ddim", "ddpm")
ROUNDINGS = ("logits", "l2")


@dataclass
class NoteDiffusionArch:
    """The shape of the denoiser and its diffusion (saved with the weights)."""

    max_len: int = 80
    cond_len: int = 32
    emb_dim: int = 32
    d_model: int = 128
    layers: int = 4
    cond_layers: int = 1
    heads: int = 4
    dropout: float = 0.0  # 0.1 costs ~20% of a CPU step (attention dropout) for no measured gain here
    conditioning: str = "cross"
    objective: str = "x0"
    schedule: str = "sqrt"
    diffusion_steps: int = 1000
    self_condition: bool = True
    cond_dropout: float = 0.1
    rounding_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, where: str = "") -> None:
        problems = []
        for name in ("max_len", "cond_len", "emb_dim", "d_model", "layers", "heads", "diffusion_steps"):
            if getattr(self, name) < 1:
                problems.append(f"arch.{name} must be >= 1")
        if self.cond_layers < 0:
            problems.append("arch.cond_layers must be >= 0")
        if self.d_model % max(1, self.heads):
            problems.append(f"arch.d_model {self.d_model} must be a multiple of arch.heads {self.heads}")
        for name, value, choices in (("conditioning", self.conditioning, CONDITIONINGS),
                                     ("objective", self.objective, OBJECTIVES), ("schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                problems.append(f"arch.{name} {value!r} must be one of {', '.join(choices)}")
        for name in ("dropout", "cond_dropout"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"arch.{name} must be in [0, 1)")
        if self.rounding_weight < 0:
            problems.append("arch.rounding_weight must be >= 0")
        if problems:
            raise ConfigError(f"{where}invalid note model: " + "; ".join(problems))


def alpha_bars(schedule: str, steps: int):
    """``alpha_bar_t`` for t = 0..steps (float64 tensor; t=0 is ~1)."""
    import torch

    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    if schedule == "sqrt":
        ab = 1 - torch.sqrt(t + 1e-4)
    else:
        f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        ab = f / f[0]
    return ab.clamp(1e-5, 1 - 1e-6)


def _timestep_embedding(t, dim: int):
    import torch

    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def build_denoiser(arch: NoteDiffusionArch, vocab_size: int):
    """The denoiser (token embeddings, condition encoder, Transformer) as one ``nn.Module``."""
    import torch
    from torch import nn

    class NoteDenoiser(nn.Module):
        def __init__(self):
            super().__init__()
            a, d = arch, arch.d_model
            self.arch = a
            self.embedding = nn.Embedding(vocab_size, a.emb_dim)
            nn.init.normal_(self.embedding.weight, std=1.0)
            self.cond_embedding = nn.Embedding(vocab_size, d)
            self.cond_pos = nn.Parameter(torch.zeros(a.cond_len, d))
            layer = lambda: nn.TransformerEncoderLayer(d, a.heads, 4 * d, a.dropout, batch_first=True, norm_first=True)
            self.cond_encoder = nn.TransformerEncoder(layer(), a.cond_layers, enable_nested_tensor=False) if a.cond_layers else nn.Identity()
            self.input = nn.Linear(a.emb_dim * (2 if a.self_condition else 1), d)
            self.pos = nn.Parameter(torch.zeros(a.max_len, d))
            nn.init.normal_(self.pos, std=0.02)
            nn.init.normal_(self.cond_pos, std=0.02)
            self.time = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
            if a.conditioning == "cross":
                self.blocks = nn.TransformerDecoder(
                    nn.TransformerDecoderLayer(d, a.heads, 4 * d, a.dropout, batch_first=True, norm_first=True), a.layers)
            else:
                self.blocks = nn.TransformerEncoder(layer(), a.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.output = nn.Linear(d, a.emb_dim)

        def encode_condition(self, cond_ids):
            pad = cond_ids == 0
            h = self.cond_embedding(cond_ids) + self.cond_pos[: cond_ids.shape[1]]
            if isinstance(self.cond_encoder, nn.Identity):
                return h, pad
            return self.cond_encoder(h, src_key_padding_mask=pad), pad

        def forward(self, x_t, t, cond, self_cond=None):
            a = self.arch
            if a.self_condition:
                x_t = torch.cat([x_t, torch.zeros_like(x_t) if self_cond is None else self_cond], dim=-1)
            h = self.input(x_t) + self.pos[: x_t.shape[1]]
            h = h + self.time(_timestep_embedding(t, a.d_model))[:, None]
            memory, pad = cond
            if a.conditioning == "cross":
                h = self.blocks(h, memory, memory_key_padding_mask=pad)
            else:
                n = memory.shape[1]
                mask = torch.cat([pad, torch.zeros(h.shape[:2], dtype=torch.bool)], dim=1)
                h = self.blocks(torch.cat([memory, h], dim=1), src_key_padding_mask=mask)[:, n:]
            return self.output(self.norm(h))

        def logits(self, x):
            """Rounding logits ``x . E^T`` (one per vocabulary token)."""
            return x @ self.embedding.weight.t()

    return NoteDenoiser()


class NoteDiffusion:
    """Training loss and samplers of a denoiser (holds the schedule)."""

    def __init__(self, model, arch: NoteDiffusionArch):
        self.model, self.arch = model, arch
        self.ab = alpha_bars(arch.schedule, arch.diffusion_steps).float()

    # ----------------------------------------------------------------------------- training
    def _x0_and_eps(self, out, x_t, ab):
        if self.arch.objective == "x0":
            return out, (x_t - ab.sqrt() * out) / (1 - ab).sqrt()
        return (x_t - (1 - ab).sqrt() * out) / ab.sqrt(), out

    def loss(self, ids, cond_ids, gen) -> tuple[Any, dict[str, float]]:
        """The training loss of a batch of token ids (B, L) with conditions (B, C)."""
        import torch
        import torch.nn.functional as F

        a, model = self.arch, self.model
        b = ids.shape[0]
        drop = torch.rand(b, generator=gen) < a.cond_dropout
        cond_ids = torch.where(drop[:, None], null_condition(cond_ids), cond_ids)
        emb = model.embedding(ids)
        x0 = emb + 0.1 * (1 - self.ab[1]).sqrt() * torch.randn(emb.shape, generator=gen)
        t = torch.randint(1, a.diffusion_steps + 1, (b,), generator=gen)
        ab = self.ab[t][:, None, None]
        noise = torch.randn(x0.shape, generator=gen)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        cond = model.encode_condition(cond_ids)
        sc = None
        if a.self_condition and bool(torch.rand((), generator=gen) < 0.5):
            with torch.no_grad():
                sc = self._x0_and_eps(model(x_t, t, cond), x_t, ab)[0].detach()
        out = model(x_t, t, cond, sc)
        target = x0 if a.objective == "x0" else noise
        mse = F.mse_loss(out, target)
        x0_hat = self._x0_and_eps(out, x_t, ab)[0]
        vocab = model.embedding.weight.shape[0]
        nll_true = F.cross_entropy(model.logits(x0).reshape(-1, vocab), ids.reshape(-1))
        nll_pred = F.cross_entropy(model.logits(x0_hat).reshape(-1, vocab), ids.reshape(-1))
        prior = (self.ab[-1] * emb.pow(2).mean())
        total = mse + a.rounding_weight * (nll_true + nll_pred) + prior
        return total, {"mse": mse.item(), "nll": nll_pred.item()}

    # ----------------------------------------------------------------------------- sampling
    def _predict(self, x_t, t: int, cond, uncond, sc, guidance: float):
        import torch

        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        ab = self.ab[t]
        x0 = self._x0_and_eps(self.model(x_t, tt, cond, sc), x_t, ab)[0]
        if uncond is not None and guidance != 1.0:
            x0_u = self._x0_and_eps(self.model(x_t, tt, uncond, sc), x_t, ab)[0]
            x0 = x0_u + guidance * (x0 - x0_u)
        return x0

    def nearest(self, x, rounding: str = "logits"):
        """Token ids read from ``x`` and their embeddings: ``logits`` = argmax of ``x . E^T`` (the
        decoder the rounding term trains; measured better here), ``l2`` = the nearest embedding."""
        e = self.model.embedding.weight
        if rounding == "logits":
            ids = self.model.logits(x).argmax(-1)
        else:
            dist = (x.pow(2).sum(-1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(-1)[None, None])
            ids = dist.argmin(-1)
        return ids, e[ids]

    def sample(self, cond_ids, *, steps: int, sampler: str = "ddim", guidance: float = 1.0, clamp: bool = False,
               rounding: str = "logits", self_condition: bool = True, gen=None, trace_every: int = 0, callback: Callable[[int, int], None] | None = None):
        """Token ids (B, max_len) for conditions (B, C) (``gen``: a generator or one per row);
        with ``trace_every`` also a list of
        ``(t, ids)`` of the rounded ``x0`` estimate every that many steps."""
        import torch

        a, model = self.arch, self.model
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler {sampler!r} must be one of {', '.join(SAMPLERS)}")
        if rounding not in ROUNDINGS:
            raise ConfigError(f"rounding {rounding!r} must be one of {', '.join(ROUNDINGS)}")
        steps = max(1, min(int(steps), a.diffusion_steps))
        times = torch.linspace(a.diffusion_steps, 1, steps).round().long().unique_consecutive().tolist()
        eta = 1.0 if sampler == "ddpm" else 0.0
        b = cond_ids.shape[0]
        with torch.no_grad():
            cond = model.encode_condition(cond_ids)
            uncond = model.encode_condition(null_condition(cond_ids)) if guidance != 1.0 else None
            x = _randn((b, a.max_len, a.emb_dim), gen)
            sc, trace = None, []
            for i, t in enumerate(times):
                x0 = self._predict(x, t, cond, uncond, sc, guidance)
                if clamp:
                    x0 = self.nearest(x0, rounding)[1]
                sc = x0 if a.self_condition and self_condition else None  # off: the input stays zeros
                if trace_every and (i % trace_every == 0 or i == len(times) - 1):
                    trace.append((t, self.nearest(x0, rounding)[0]))
                x = self._step(x, x0, t, times[i + 1] if i + 1 < len(times) else 0, eta, gen)
                if callback is not None:
                    callback(i + 1, len(times))
            ids = self.nearest(x0, rounding)[0]
        return (ids, trace) if trace_every else ids

    def _step(self, x, x0, t: int, t_prev: int, eta: float, gen):
        """DDIM update from ``t`` to ``t_prev`` (eta 1 = the DDPM posterior on these steps)."""
        import torch

        if t_prev == 0:
            return x0
        ab, ab_prev = self.ab[t], self.ab[t_prev]
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        noise = _randn(x.shape, gen) if eta > 0 else 0.0
        return ab_prev.sqrt() * x0 + direction + sigma * noise


def _randn(shape, gen):
    """Gaussian noise; ``gen`` one generator, or a list with one per row (a row's noise then does
    not depend on the other rows of the batch)."""
    import torch

    if isinstance(gen, (list, tuple)):
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gen])
    return torch.randn(tuple(shape), generator=gen)


def null_condition(cond_ids):
    """The unconditional input: [NULL] then padding (id 5 is [NULL], 0 is [PAD])."""
    import torch

    out = torch.zeros_like(cond_ids)
    out[:, 0] = 5
    return out
