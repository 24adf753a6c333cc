"""A trained note model on disk and the one way to generate notes with it.

Folder (what ``synthex train note`` writes to ``RUN/model`` and what ships in
``synthex/weights/notes/{diffusion,ar}``)::

    note_model.json    kind (diffusion | ar), arch, training info, "synthetic": true
    model.safetensors  the weights
    tokenizer.json     the word-level tokenizer (Hugging Face tokenizers)

:class:`NoteModel` generates notes for diagnoses (:meth:`NoteModel.generate`); every note is
labelled synthetic in the records it returns and in every file the CLI writes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthex.errors import SynthexError

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "note_model.json", "model.safetensors", "tokenizer.json"
NOTE_FORMAT = "synthex-note-model"
KINDS = ("diffusion", "ar")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "notes"
DEFAULT_STEPS = {"ddim": 50, "ddpm": 1000}
DEFAULT_GUIDANCE = 3.0  # CFG on the diagnosis: 8/12 vs 4/12 notes name their finding at 1.0 (README)


def shipped_model_dir(kind: str = "diffusion") -> Path:
    return WEIGHTS_DIR / kind


@dataclass
class Note:
    """One generated note."""

    diagnosis: str
    condition: str
    text: str
    seed: int
    model: str
    sampler: str
    steps: int
    seconds: float
    trace: list[tuple[int, str]] = field(default_factory=list)
    synthetic: bool = True


def _build(kind: str, arch_values: dict, vocab: int, where: str):
    from synthex.notes.ar import NoteArArch, build_ar
    from synthex.notes.diffusion import NoteDiffusionArch, build_denoiser

    cls = NoteDiffusionArch if kind == "diffusion" else NoteArArch
    unknown = sorted(set(arch_values) - {f for f in cls.__dataclass_fields__})
    if unknown:
        raise SynthexError(f"{where}: unknown arch keys {unknown}; the folder was made by another version")
    arch = cls(**arch_values)
    arch.validate(f"{where}: ")
    return arch, (build_denoiser(arch, vocab) if kind == "diffusion" else build_ar(arch, vocab))


def save_note_model(folder: Path, kind: str, arch, module, tok, info: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically file by file."""
    from safetensors.torch import save

    from synthex.io import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    blob = save(tensors, metadata={"format": NOTE_FORMAT, "synthetic_outputs": "true"})
    atomic_write(folder / WEIGHTS_FILE, lambda fh: fh.write(blob))
    atomic_write(folder / TOKENIZER_FILE, lambda fh: fh.write(tok.to_str().encode("utf-8")))
    body = {"format": NOTE_FORMAT, "kind": kind, "arch": arch.to_dict(), "synthetic": True,
            "intended_use": "research only; generated notes are synthetic, not clinical documents", **(info or {})}
    atomic_write(folder / CONFIG_FILE, lambda fh: fh.write((json.dumps(body, indent=1) + "\n").encode("utf-8")))
    return folder


class NoteModel:
    """A loaded note model (diffusion or AR), in eval mode."""

    def __init__(self, folder: Path, kind: str, arch, module, tok, info: dict[str, Any]):
        self.folder, self.kind, self.arch, self.module, self.tok, self.info = folder, kind, arch, module, tok, info
        self.name = info.get("name") or folder.name

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "NoteModel":
        """``folder`` (None or "diffusion"/"ar": the shipped model of that kind)."""
        from safetensors.torch import load_file

        from synthex.notes.data import load_tokenizer

        folder = shipped_model_dir(str(folder or "diffusion")) if folder in (None, *KINDS) else Path(folder)
        path = folder / CONFIG_FILE
        if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise SynthexError(f"{folder} is not a note model folder (it needs {CONFIG_FILE}, {WEIGHTS_FILE} and "
                               f"{TOKENIZER_FILE}); pass RUN/model of a 'synthex train note' run, or omit --model")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SynthexError(f"{path} is not valid JSON ({err}); copy the model folder again") from err
        kind = body.get("kind")
        if body.get("format") != NOTE_FORMAT or kind not in KINDS:
            raise SynthexError(f"{path} is not a SynTheX-Ray note model (format {body.get('format')!r}, kind {kind!r})")
        tok = load_tokenizer(folder / TOKENIZER_FILE)
        arch, module = _build(kind, body.get("arch") or {}, tok.get_vocab_size(), str(path))
        try:
            module.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        except Exception as err:  # noqa: BLE001 - SafetensorError, a shape mismatch: a broken folder
            raise SynthexError(f"{folder}: the weights do not load ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200] if str(err) else ''}); copy the model folder again") from err
        return cls(folder, kind, arch, module.eval(), tok, body)

    # ------------------------------------------------------------------------------------
    def condition_ids(self, conditions: list[str]):
        import torch

        from synthex.notes.data import encode

        return torch.tensor([encode(self.tok, c, self.arch.cond_len, eos=False)[0] for c in conditions])

    def generate(self, diagnoses: list[str], *, n: int = 1, seed: int = 0, sampler: str = "ddim",
                 steps: int | None = None, guidance: float = DEFAULT_GUIDANCE, top_p: float = 0.9, clamp: bool = False,
                 trace_every: int = 0, lang: str = "auto", self_condition: bool = True,
                 callback: Callable[[int, int], None] | None = None) -> list[Note]:
        """``n`` notes per diagnosis; note k of a diagnosis uses seed ``seed + k`` (so a note is
        reproducible alone). ``steps`` defaults to 50 for DDIM and 1,000 for DDPM."""
        from synthex.notes.data import condition_text

        if n < 1:
            raise SynthexError(f"--n must be >= 1 (got {n})")
        steps = int(steps or DEFAULT_STEPS.get(sampler, 50))
        if steps < 1:
            raise SynthexError(f"--steps must be >= 1 (got {steps})")
        conditions = [condition_text(d, lang) for d in diagnoses]
        rows: list[list[Note]] = [[] for _ in diagnoses]
        total, done = len(diagnoses) * n, 0
        for k in range(n):
            t0 = time.perf_counter()
            texts, traces = self._texts(conditions, seed + k, sampler, steps, guidance, top_p, clamp, trace_every,
                                        self_condition)
            seconds = (time.perf_counter() - t0) / max(1, len(conditions))
            for i, (d, c, text, trace) in enumerate(zip(diagnoses, conditions, texts, traces)):
                rows[i].append(Note(d, c, text, seed + k, self.name, sampler if self.kind == "diffusion" else "ar",
                                    steps if self.kind == "diffusion" else 0, seconds, trace))
            done += len(conditions)
            if callback is not None:
                callback(done, total)
        return [note for row in rows for note in row]

    def _texts(self, conditions, seed, sampler, steps, guidance, top_p, clamp, trace_every, self_condition=True):
        import torch

        from synthex.notes.data import decode

        if self.kind == "ar":
            from synthex.notes.ar import generate

            ids = generate(self.module, self.tok, conditions, self.arch, top_p=top_p, seed=seed)
            return [decode(self.tok, i) for i in ids], [[] for _ in conditions]
        from synthex.notes.diffusion import NoteDiffusion
        from synthex.train.loop import derived_seed

        diffusion = NoteDiffusion(self.module, self.arch)
        gen = [torch.Generator().manual_seed(derived_seed(int(seed), "note", c)) for c in conditions]
        out = diffusion.sample(self.condition_ids(conditions), steps=steps, sampler=sampler, guidance=guidance,
                               clamp=clamp, gen=gen, trace_every=trace_every, self_condition=self_condition)
        ids, trace = out if trace_every else (out, [])
        texts = [decode(self.tok, row.tolist()) for row in ids]
        traces = [[(t, decode(self.tok, step_ids[i].tolist())) for t, step_ids in trace] for i in range(len(conditions))]
        return texts, traces
