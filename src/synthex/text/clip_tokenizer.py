"""The real CLIP BPE tokenizer, built offline.

OpenAI CLIP's tokenizer (used by Stable Diffusion 1.x/2.x and both SDXL text encoders) is fully
defined by its 48,894 BPE merges. The ``open_clip_torch`` wheel ships those merges as
``open_clip/bpe_simple_vocab_16e6.txt.gz``; from them the 49,408-entry vocabulary is rebuilt
(256 byte symbols, the same with ``</w>``, one entry per merge, then the two special tokens) and
handed to :class:`transformers.CLIPTokenizer`. Only the data file is read: open_clip's code (which
needs torchvision) is never imported, so install it with ``pip install --no-deps open_clip_torch``.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import re
from pathlib import Path

from synthex.errors import SynthexError

CLIP_MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> Path | None:
    """Path of open_clip's merges file, or None when open_clip_torch is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _BPE_FILE
    return path if path.is_file() else None


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte -> printable unicode symbol table, in CLIP's vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=2)
def load_clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """Build ``transformers.CLIPTokenizer`` from the packaged merges (cached)."""
    from transformers import CLIPTokenizer

    path = clip_bpe_path()
    if path is None:
        raise SynthexError(
            "The CLIP vocabulary ships in the open_clip_torch wheel, which is not installed; "
            "install it with: pip install --no-deps open_clip_torch"
        )
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1 : _N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges, model_max_length=max_length
    )


_APPROX = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def count_tokens(texts: list[str]) -> tuple[list[int], bool]:
    """CLIP token counts without the start/end tokens; (counts, exact).

    Falls back to a word/digit/punctuation count (a lower bound of the BPE count) when the CLIP
    vocabulary is not installed; ``exact`` says which was used.
    """
    try:
        tok = load_clip_tokenizer()
    except SynthexError:
        return [len(_APPROX.findall(t)) for t in texts], False
    ids = tok(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [len(i) for i in ids], True
