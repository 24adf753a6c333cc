"""The autoregressive baseline: a small GPT-2 (transformers, built from a config) on the same
pairs and the same tokenizer as the diffusion model.

A sequence is ``[BOS] condition [SEP] note [EOS]`` ([PAD] after); the loss covers the note and
its [EOS] only. :func:`generate` samples the note after ``[BOS] condition [SEP]`` (nucleus
sampling, or greedy with ``top_p=0``); :func:`perplexity` scores any note given its condition,
which is the fluency measure of the diffusion model's notes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from synthex.errors import ConfigError


@dataclass
class NoteArArch:
    max_len: int = 80
    cond_len: int = 32
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, where: str = "") -> None:
        bad = [f"arch.{k} must be >= 1" for k in ("max_len", "cond_len", "n_embd", "n_layer", "n_head")
               if getattr(self, k) < 1]
        if self.n_embd % max(1, self.n_head):
            bad.append(f"arch.n_embd {self.n_embd} must be a multiple of arch.n_head {self.n_head}")
        if not 0 <= self.dropout < 1:
            bad.append("arch.dropout must be in [0, 1)")
        if bad:
            raise ConfigError(f"{where}invalid AR note model: " + "; ".join(bad))

    @property
    def length(self) -> int:
        return self.cond_len + self.max_len + 3  # [BOS] condition [SEP] note [EOS]


def build_ar(arch: NoteArArch, vocab_size: int):
    """A ``GPT2LMHeadModel`` from a config (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=arch.length, n_embd=arch.n_embd, n_layer=arch.n_layer,
                        n_head=arch.n_head, resid_pdrop=arch.dropout, embd_pdrop=arch.dropout,
                        attn_pdrop=arch.dropout, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return GPT2LMHeadModel(config)


def prompt_ids(tok, condition: str, cond_len: int) -> list[int]:
    """``[BOS] condition [SEP]`` (the condition cut to ``cond_len`` tokens)."""
    from synthex.notes.data import BOS, SEP

    return [tok.token_to_id(BOS), *tok.encode(condition).ids[:cond_len], tok.token_to_id(SEP)]


def training_tensors(tok, conditions: list[str], notes: list[str], arch: NoteArArch):
    """(input_ids, attention_mask, labels) for the pairs; labels are -100 outside the note."""
    import torch

    from synthex.notes.data import EOS, PAD

    pad, eos = tok.token_to_id(PAD), tok.token_to_id(EOS)
    ids = torch.full((len(notes), arch.length), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (c, n) in enumerate(zip(conditions, notes)):
        head = prompt_ids(tok, c, arch.cond_len)
        body = tok.encode(n).ids[: arch.max_len] + [eos]
        row = head + body
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(head): len(row)] = torch.tensor(body)
    return ids, (ids != pad) | (labels != -100), labels


def generate(model, tok, conditions: list[str], arch: NoteArArch, *, top_p: float = 0.9,
             temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """Note token ids for each condition (stops at [EOS] or ``max_len``); the global random state
    is restored afterwards."""
    import torch

    from synthex.notes.data import EOS, PAD

    from synthex.train.loop import derived_seed

    out = []
    with torch.random.fork_rng(devices=[]):
        for c in conditions:
            torch.manual_seed(derived_seed(int(seed), "note", c))  # a note does not depend on the batch
            head = torch.tensor([prompt_ids(tok, c, arch.cond_len)])
            kwargs = dict(do_sample=True, top_p=top_p, temperature=temperature) if top_p > 0 else dict(do_sample=False)
            with torch.no_grad():
                seq = model.generate(head, attention_mask=torch.ones_like(head), max_new_tokens=arch.max_len + 1,
                                     eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD), **kwargs)
            out.append(seq[0, head.shape[1]:].tolist())
    return out


def perplexity(model, tok, conditions: list[str], notes: list[str], arch: NoteArArch) -> float:
    """exp(mean token NLL) of ``notes`` (with [EOS]) given their conditions."""
    import math

    import torch

    ids, mask, labels = training_tensors(tok, conditions, notes, arch)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids), 64):
            logits = model(input_ids=ids[s:s + 64], attention_mask=mask[s:s + 64]).logits[:, :-1]
            target = labels[s:s + 64, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total, count = total + nll.item(), count + int((target != -100).sum())
    return math.exp(total / max(1, count))
