"""Token embeddings initialised from a pretrained BERT-style encoder in a local folder
(ClinicalBERT, Bio_ClinicalBERT, all-MiniLM-L6-v2...; never downloaded).

Every word of the note tokenizer is split by the encoder's own tokenizer; its vector is the mean
of the encoder's input word embeddings of those pieces. The vectors are centred, projected to
the diffusion's ``emb_dim`` by PCA and scaled to unit variance per dimension (the scale the
noise schedule assumes), then trained on with the model. Special tokens keep random vectors.
"""
from __future__ import annotations

from pathlib import Path

from synthex.errors import SynthexError

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def check_encoder_folder(folder: str | Path) -> Path:
    """The folder, or a SynthexError naming what is missing (config, weights, tokenizer)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SynthexError(f"pretrained encoder folder {folder} does not exist; give a local Hugging Face folder "
                           "(config.json, model.safetensors or pytorch_model.bin, vocab.txt or tokenizer.json), "
                           "e.g. a ClinicalBERT copied from another machine; nothing is downloaded")
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        missing.append("vocab.txt or tokenizer.json")
    if missing:
        raise SynthexError(f"pretrained encoder folder {folder} lacks {', '.join(missing)}; copy the whole model "
                           "folder (nothing is downloaded)")
    return folder


def word_vectors(folder: str | Path, words: list[str], dim: int):
    """(len(words), dim) float tensor: the PCA-projected mean piece embeddings of ``words``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = check_encoder_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise SynthexError(f"pretrained encoder {folder} does not load ({err}); copy the whole model folder") from err
    table = encoder.get_input_embeddings().weight.detach().float()
    vectors = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id or 0]
        vectors.append(table[pieces].mean(0))
    matrix = torch.stack(vectors)
    matrix = matrix - matrix.mean(0, keepdim=True)
    k = min(dim, *matrix.shape)
    _, _, v = torch.linalg.svd(matrix, full_matrices=False)
    projected = matrix @ v[:k].t()
    projected = projected / projected.std(0, keepdim=True).clamp(min=1e-6)
    if k < dim:  # fewer words or encoder dimensions than emb_dim: pad with zeros
        projected = torch.cat([projected, torch.zeros(len(words), dim - k)], dim=1)
    return projected


def initialise_embeddings(module, tok, folder: str | Path, dim: int, skip: int = 6) -> int:
    """Overwrite ``module.embedding`` rows of ordinary words (ids >= ``skip``); returns how many."""
    import torch

    words = [tok.id_to_token(i) for i in range(skip, tok.get_vocab_size())]
    with torch.no_grad():
        module.embedding.weight[skip:] = word_vectors(folder, words, dim)
    return len(words)
