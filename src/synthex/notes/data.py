"""Diagnosis -> note pairs, the condition text the note models read, and their tokenizer.

Sources (:func:`load_pairs`):

- ``iu`` (default): the real IU X-ray reports through the data pipeline
  (:func:`synthex.data.sources.load_source` + the cleaning rules): one pair per report (patient),
  the diagnosis is the MeSH field ("Cardiomegaly/mild;Pleural Effusion/right", "normal"), the
  note is the cleaned findings + impression. Splits are the pipeline's patient-level 70/10/20
  (:func:`synthex.data.selection.assign_splits`), so a note model never sees a test patient.
- any CSV with a diagnosis column and a note column (the seed project's ``medical_dataset.csv``
  shape: ``diagnosis,note``; other names with ``diagnosis_column`` / ``note_column``), with an
  optional ``split`` column (else a seeded 70/10/20 split by row).

Rows with an empty diagnosis or note are rejects: counted and listed, never silently dropped.

The condition a model reads is :func:`condition_text`: the findings the project's finding
parser reads from the diagnosis, written canonically ("cardiomegaly mild ; pleural effusion
right"), followed by the MeSH terms it does not know (kept as words). Different phrasings of the
same diagnosis ("Pleural Effusion/right", "right pleural effusion", "effusion, right") give the
same condition; Russian/Ukrainian diagnoses are read by :func:`synthex.text.lang.localise`.

The tokenizer is a Hugging Face ``tokenizers`` word-level model (lowercase, words and punctuation
split), built from the training notes and conditions, saved as ``tokenizer.json``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthex.errors import DataSourceError, SynthexError

PAD, UNK, BOS, EOS, SEP, NULL = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[NULL]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SEP, NULL)
SPLITS = ("train", "val", "test")
_SPACES = re.compile(r"\s+")


@dataclass
class NotePair:
    diagnosis: str
    note: str
    split: str
    uid: str = ""


@dataclass
class NoteData:
    """Pairs with their split, the rejects (row, reason) and where they came from."""

    pairs: list[NotePair]
    rejects: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def split(self, name: str) -> list[NotePair]:
        return [p for p in self.pairs if p.split == name]


# =============================================================================================
# 1. Condition text
# =============================================================================================
def _finding_words(finding: Any) -> str:
    parts = [finding.name.replace("_", " ")]
    parts += [v for v in (finding.side, finding.zone, finding.severity) if v]
    return " ".join(parts)


def _unknown_mesh_terms(diagnosis: str) -> list[str]:
    """MeSH-style terms (``;``-separated) that name no finding the parser knows."""
    from synthex.phantom.labels import text_findings

    out = []
    for term in diagnosis.split(";"):
        term = term.strip()
        if not term or term.lower() in ("normal", "no indexing"):
            continue
        found, _ = text_findings(term)
        if not found:
            out.append(_SPACES.sub(" ", term.replace("/", " ").replace(",", " ")).strip().lower())
    return out


def condition_text(diagnosis: str, lang: str = "auto") -> str:
    """The canonical condition a note model reads for ``diagnosis`` (see the module docstring);
    "normal" for a normal diagnosis. Empty input raises :class:`SynthexError`."""
    from synthex.phantom.labels import text_findings
    from synthex.text.lang import has_cyrillic, localise

    if not isinstance(diagnosis, str) or not diagnosis.strip():
        raise SynthexError("the diagnosis is empty; write findings such as "
                           "'Cardiomegaly/mild; Pleural Effusion/right' or 'normal'")
    text = diagnosis.strip()
    if has_cyrillic(text):
        text, _ = localise(text, lang)
    found, _ = text_findings(re.sub(r"\s*;\s*", ". ", text))
    words = [_finding_words(f) for f in found]
    words += [t for t in _unknown_mesh_terms(text) if t not in words]
    return " ; ".join(dict.fromkeys(words)) if words else "normal"


# =============================================================================================
# 2. Sources
# =============================================================================================
def _clean(text: Any) -> str:
    return _SPACES.sub(" ", str(text)).strip() if isinstance(text, str) else ""


def _pairs_from_rows(rows: list[tuple[str, Any, Any, str]]) -> tuple[list[NotePair], list[tuple[str, str]]]:
    pairs, rejects = [], []
    for uid, diagnosis, note, split in rows:
        diagnosis, note = _clean(diagnosis), _clean(note)
        if not diagnosis:
            rejects.append((uid, "empty diagnosis"))
        elif not note:
            rejects.append((uid, "empty note"))
        else:
            pairs.append(NotePair(diagnosis, note, split, uid))
    return pairs, rejects


def load_iu_pairs(source: str | Path = "bundled") -> NoteData:
    """The IU X-ray reports (one per patient) as diagnosis -> note pairs (module docstring)."""
    from synthex.data.cleaning import Cleaner
    from synthex.data.mesh import is_normal
    from synthex.data.pipeline import clean_table
    from synthex.data.selection import DEFAULT_SPLIT, assign_splits, report_text
    from synthex.data.sources import load_source

    frame = load_source(source).drop_duplicates("uid").reset_index(drop=True)
    frame, _ = clean_table(frame, Cleaner())
    frame["is_normal"] = frame["mesh"].map(is_normal)
    split = dict(zip(SPLITS, DEFAULT_SPLIT)) | {"seed": 42}
    frame["split"] = assign_splits(frame, split)
    notes = report_text(frame)
    rows = [(str(u), m, n, s) for u, m, n, s in zip(frame["uid"], frame["mesh"], notes, frame["split"])]
    pairs, rejects = _pairs_from_rows(rows)
    return NoteData(pairs, rejects, f"IU X-ray reports ({source})")


def _csv_splits(frame, seed: int) -> list[str]:
    import numpy as np

    if "split" in frame.columns:
        bad = sorted(set(frame["split"].astype(str)) - set(SPLITS))
        if bad:
            raise DataSourceError(f"split column has {bad}; use train, val or test")
        return frame["split"].astype(str).tolist()
    order = np.random.default_rng(seed).permutation(len(frame))
    bounds = [round(0.7 * len(frame)), round(0.8 * len(frame))]
    out = [""] * len(frame)
    for rank, row in enumerate(order):
        out[row] = "train" if rank < bounds[0] else "val" if rank < bounds[1] else "test"
    return out


def load_csv_pairs(path: str | Path, diagnosis_column: str = "diagnosis", note_column: str = "note",
                   seed: int = 42) -> NoteData:
    """Pairs from a CSV with a diagnosis and a note column (optional ``split``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"note data {path} does not exist; pass a CSV with '{diagnosis_column}' and "
                              f"'{note_column}' columns, or --data iu for the IU X-ray reports")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataSourceError(f"{path} is not a readable UTF-8 CSV ({err}); save it as CSV (UTF-8)") from err
    missing = [c for c in (diagnosis_column, note_column) if c not in frame.columns]
    if missing:
        raise DataSourceError(f"{path} has no column {', '.join(map(repr, missing))} (columns: "
                              f"{', '.join(frame.columns) or 'none'}); pass --diagnosis-column / --note-column")
    splits = _csv_splits(frame, seed)
    rows = [(f"row {i + 2}", d, n, s) for i, (d, n, s) in
            enumerate(zip(frame[diagnosis_column], frame[note_column], splits))]
    pairs, rejects = _pairs_from_rows(rows)
    if not pairs:
        raise DataSourceError(f"{path}: no usable rows ({len(rejects)} rejected: "
                              f"{'; '.join(f'{r}: {why}' for r, why in rejects[:5])})")
    return NoteData(pairs, rejects, str(path))


def load_pairs(data: str | Path = "iu", **kwargs: Any) -> NoteData:
    """``"iu"`` (the bundled IU X-ray reports), ``"iu:SOURCE"`` (a Kaggle / Open-i folder), or a CSV."""
    text = str(data)
    if text == "iu" or text.startswith("iu:"):
        return load_iu_pairs(text[3:] or "bundled")
    return load_csv_pairs(data, **kwargs)


# =============================================================================================
# 3. Tokenizer
# =============================================================================================
def build_tokenizer(texts: list[str], min_count: int = 2, max_vocab: int = 8000):
    """A word-level ``tokenizers.Tokenizer`` (lowercase; words, numbers and punctuation split)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    trainer = WordLevelTrainer(vocab_size=max_vocab, min_frequency=min_count, special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise SynthexError(f"tokenizer {path} is missing; the note model folder must hold tokenizer.json")
    return Tokenizer.from_file(str(path))


def encode(tok, text: str, length: int, *, bos: bool = False, eos: bool = True) -> tuple[list[int], bool]:
    """Token ids padded with [PAD] to ``length``; (ids, truncated)."""
    ids = tok.encode(text).ids
    ids = ([tok.token_to_id(BOS)] if bos else []) + ids + ([tok.token_to_id(EOS)] if eos else [])
    truncated = len(ids) > length
    ids = ids[:length]
    return ids + [tok.token_to_id(PAD)] * (length - len(ids)), truncated


_NO_SPACE_BEFORE = re.compile(r"\s+([.,;:)%])")
_NO_SPACE_AFTER = re.compile(r"([(])\s+")


def decode(tok, ids: list[int]) -> str:
    """Text of ``ids`` up to the first [EOS]/[PAD]; sentences capitalised, punctuation attached."""
    stop = {tok.token_to_id(PAD), tok.token_to_id(EOS)}
    skip = {tok.token_to_id(t) for t in (BOS, SEP, NULL)}
    words = []
    for i in ids:
        if i in stop:
            break
        if i not in skip:
            words.append(tok.id_to_token(int(i)))
    text = _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", " ".join(words)))
    text = re.sub(r"(\d) \. (\d)", r"\1.\2", text)
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
