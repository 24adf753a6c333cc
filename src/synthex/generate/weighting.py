"""Prompt weighting in AUTOMATIC1111 syntax, long prompts in chunks, embeddings for diffusers.

Syntax (see ``docs/generation-formats.md``)::

    (word)        weight x 1.1          ((word))  x 1.21      [word]  / 1.1
    (word:1.5)    weight x 1.5          \\( \\) \\[ \\] \\\\  literal brackets / backslash
    BREAK         start a new 75-token chunk

Nesting multiplies; brackets left open at the end of the prompt are closed there; a closing
bracket without an opener is literal text. The compel library does not read this syntax, hence
this module.

A prompt is tokenized fragment by fragment (each fragment keeps its weight), then cut into
chunks of 75 tokens: when a chunk is full and a comma lies within the last 20 tokens, the chunk
is cut after that comma so a phrase is not split. Each chunk is framed ``[BOS] tokens [EOS]`` and
padded to 77, encoded on its own, weighted (embeddings x weight, then rescaled so the chunk's
mean is unchanged), and the chunks are concatenated along the sequence: a prompt of n chunks
gives ``[1, 77 n, D]`` embeddings instead of being cut at 77 tokens.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from synthex.errors import SynthexError

logger = logging.getLogger(__name__)

BREAK = "BREAK"
BREAK_WEIGHT = -1.0
"""``parse_weighted`` marks a BREAK as the piece ``(BREAK, BREAK_WEIGHT)``, as A1111 does."""
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20

HiddenState = Literal["last", "penultimate"]

# One lexical unit per match; the named group says which.
_LEXER = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])                       # \( \) \[ \] \\  -> literal character
    | (?P<weight_close>:\s*(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))\s*\))   # :1.5)
    | (?P<open_round>\()
    | (?P<open_square>\[)
    | (?P<close_round>\))
    | (?P<close_square>\])
    | (?P<text>[^\\()\[\]:]+|:|\\)                 # plain text, a lone colon or backslash
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


def is_break(piece: tuple[str, float]) -> bool:
    """True for the BREAK marker piece produced by :func:`parse_weighted`."""
    return piece[0] == BREAK and piece[1] == BREAK_WEIGHT


# --------------------------------------------------------------------------------------------
# 1. Parsing
# --------------------------------------------------------------------------------------------
class _Pieces:
    """The growing list of [text, weight] pieces plus the open-bracket stacks."""

    def __init__(self) -> None:
        self.items: list[list[Any]] = []
        self.round: list[int] = []
        self.square: list[int] = []

    def add_text(self, text: str) -> None:
        parts = _BREAK_SPLIT.split(text)
        for i, part in enumerate(parts):
            if i > 0:
                self.items.append([BREAK, None])  # weight None: never multiplied
            if part:
                self.items.append([part, 1.0])

    def scale_from(self, start: int, factor: float) -> None:
        for item in self.items[start:]:
            if item[1] is not None:
                item[1] *= factor


def _merged(items: list[list[Any]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for text, weight in items:
        if weight is None:
            out.append((BREAK, BREAK_WEIGHT))
        elif out and out[-1][1] == weight and not is_break(out[-1]):
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out or [("", 1.0)]


def parse_weighted(prompt: str) -> list[tuple[str, float]]:
    """Split an A1111-weighted prompt into ``(text, weight)`` pieces.

    Adjacent pieces of equal weight are merged; a BREAK is the piece ``("BREAK", -1.0)``
    (see :func:`is_break`). An empty prompt gives ``[("", 1.0)]``.

    >>> parse_weighted("Normal. (The lungs are clear:1.5) bilaterally.")
    [('Normal. ', 1.0), ('The lungs are clear', 1.5), (' bilaterally.', 1.0)]
    """
    state = _Pieces()
    for match in _LEXER.finditer(prompt):
        kind, value = match.lastgroup, match.group(0)
        if kind == "escape":
            state.add_text(value[1])
        elif kind == "open_round":
            state.round.append(len(state.items))
        elif kind == "open_square":
            state.square.append(len(state.items))
        elif kind == "weight_close" and state.round:
            state.scale_from(state.round.pop(), float(match.group("number")))
        elif kind == "close_round" and state.round:
            state.scale_from(state.round.pop(), ROUND_FACTOR)
        elif kind == "close_square" and state.square:
            state.scale_from(state.square.pop(), SQUARE_FACTOR)
        else:  # text, or a closing bracket with nothing open: literal
            state.add_text(value)
    for start in reversed(state.round):  # unbalanced: close at the end
        state.scale_from(start, ROUND_FACTOR)
    for start in reversed(state.square):
        state.scale_from(start, SQUARE_FACTOR)
    return _merged(state.items)


# --------------------------------------------------------------------------------------------
# 2. Tokenizing into chunks
# --------------------------------------------------------------------------------------------
@dataclass
class WeightedTokens:
    """Token ids and weights of a prompt, one row per chunk of ``chunk_length + 2`` positions.

    ``chunks[i]`` is ``[BOS] + up to chunk_length token ids + [EOS] + padding``; ``weights[i]``
    holds one weight per position (1.0 on BOS, EOS and padding). ``token_ids`` lists the prompt's
    real tokens in order, ``texts`` the parsed pieces.
    """

    chunks: list[list[int]]
    weights: list[list[float]]
    token_ids: list[int] = field(default_factory=list)
    texts: list[tuple[str, float]] = field(default_factory=list)
    empty_chunk: tuple[list[int], list[float]] | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def ids_tensor(self) -> torch.Tensor:
        """``[n_chunks, chunk_length + 2]`` long tensor."""
        return torch.tensor(self.chunks, dtype=torch.long)

    def weights_tensor(self) -> torch.Tensor:
        """``[n_chunks, chunk_length + 2]`` float tensor."""
        return torch.tensor(self.weights, dtype=torch.float32)

    def padded_to(self, n_chunks: int) -> WeightedTokens:
        """A copy with empty-prompt chunks appended until it has ``n_chunks`` chunks."""
        if n_chunks < self.n_chunks:
            raise ValueError(f"cannot shrink {self.n_chunks} chunks to {n_chunks}")
        if self.empty_chunk is None:
            raise ValueError("these WeightedTokens carry no empty chunk to pad with")
        extra = n_chunks - self.n_chunks
        ids, weights = self.empty_chunk
        return WeightedTokens(
            chunks=self.chunks + [list(ids) for _ in range(extra)],
            weights=self.weights + [list(weights) for _ in range(extra)],
            token_ids=list(self.token_ids),
            texts=list(self.texts),
            empty_chunk=self.empty_chunk,
        )


class _Chunker:
    """Fills chunks token by token, A1111-style (cut after a late comma when a chunk is full)."""

    def __init__(self, tokenizer: Any, chunk_length: int, comma_backtrack: int) -> None:
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad = self.eos if pad is None else pad
        self.comma = tokenizer.convert_tokens_to_ids(",</w>")
        if self.comma == getattr(tokenizer, "unk_token_id", None):
            self.comma = None
        self.length, self.backtrack = chunk_length, comma_backtrack
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1
        self.chunks: list[list[int]] = []
        self.chunk_weights: list[list[float]] = []

    def frame(self, tokens: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
        fill = self.length - len(tokens)
        ids = [self.bos, *tokens, self.eos] + [self.pad] * fill
        return ids, [1.0, *weights, 1.0] + [1.0] * fill

    def flush(self) -> None:
        ids, weights = self.frame(self.tokens, self.weights)
        self.chunks.append(ids)
        self.chunk_weights.append(weights)
        self.tokens, self.weights, self.last_comma = [], [], -1

    def add(self, token: int, weight: float) -> None:
        full = len(self.tokens) == self.length
        if self.comma is not None and token == self.comma:
            self.last_comma = len(self.tokens)
        elif full and self.backtrack and self.last_comma >= 0 and (
            len(self.tokens) - self.last_comma <= self.backtrack
        ):
            cut = self.last_comma + 1
            tail, tail_weights = self.tokens[cut:], self.weights[cut:]
            self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
            self.flush()
            self.tokens, self.weights = tail, tail_weights
        if len(self.tokens) == self.length:
            self.flush()
        self.tokens.append(token)
        self.weights.append(weight)


def tokenize_weighted(
    prompt: str,
    tokenizer: Any,
    chunk_length: int = CHUNK_LENGTH,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> WeightedTokens:
    """Parse ``prompt`` and cut its tokens into chunks of at most ``chunk_length`` tokens.

    Nothing is truncated: a prompt of 200 tokens gives 3 chunks. ``chunk_length + 2`` must not
    exceed the text encoder's ``max_position_embeddings`` (77 for CLIP).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
    pieces = parse_weighted(prompt)
    texts = [text for text, _ in pieces]
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
    chunker = _Chunker(tokenizer, chunk_length, comma_backtrack)
    all_ids: list[int] = []
    for piece, ids in zip(pieces, encoded["input_ids"]):
        if is_break(piece):
            chunker.flush()
            continue
        for token in ids:
            chunker.add(token, piece[1])
        all_ids.extend(ids)
    if chunker.tokens or not chunker.chunks:
        chunker.flush()
    return WeightedTokens(
        chunks=chunker.chunks,
        weights=chunker.chunk_weights,
        token_ids=all_ids,
        texts=pieces,
        empty_chunk=chunker.frame([], []),
    )


def pad_tokens_to_same_length(*tokens: WeightedTokens) -> list[WeightedTokens]:
    """Append empty-prompt chunks so that all have as many chunks as the longest."""
    n = max(t.n_chunks for t in tokens)
    return [t.padded_to(n) for t in tokens]


# --------------------------------------------------------------------------------------------
# 3. Encoding
# --------------------------------------------------------------------------------------------
def _execution_device(module: torch.nn.Module) -> torch.device:
    try:  # diffusers knows where offloaded (accelerate-hooked) modules run
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(module)
    except (ImportError, AttributeError):
        return next(module.parameters()).device


def _select_hidden(
    output: Any, text_encoder: Any, hidden_state: HiddenState, clip_skip: int | None
) -> torch.Tensor:
    """The hidden states diffusers' SD (``last``) or SDXL (``penultimate``) pipelines use.

    ``clip_skip`` follows diffusers: 1 means one layer earlier than the default (A1111's
    "Clip skip: 2" is ``clip_skip=1``). For ``last`` the earlier layer goes through the final
    layer norm, as in diffusers' StableDiffusionPipeline.
    """
    skip = clip_skip or 0
    if skip < 0:
        raise ValueError(f"clip_skip must be >= 0 or None, got {clip_skip}")
    hidden = output.hidden_states
    if hidden_state == "last":
        if skip == 0:
            return output.last_hidden_state
        index = skip + 1
    elif hidden_state == "penultimate":
        index = skip + 2
    else:
        raise ValueError(f"hidden_state must be 'last' or 'penultimate', got {hidden_state!r}")
    if index > len(hidden) - 1:
        raise ValueError(
            f"clip_skip={clip_skip} with hidden_state={hidden_state!r} needs more layers than "
            f"the text encoder's {len(hidden) - 1}"
        )
    chosen = hidden[-index]
    if hidden_state == "last":
        chosen = _final_layer_norm(text_encoder)(chosen)
    return chosen


def _final_layer_norm(text_encoder: Any) -> torch.nn.Module:
    # transformers 5's CLIPTextModel holds it directly; WithProjection (and transformers 4) under
    # .text_model. diffusers' SD pipeline only tries .text_model (its clip_skip fails on v5).
    for owner in (getattr(text_encoder, "text_model", None), text_encoder):
        norm = getattr(owner, "final_layer_norm", None)
        if norm is not None:
            return norm
    raise ValueError(f"{type(text_encoder).__name__} has no final_layer_norm; use clip_skip=None")


def apply_weights(z: torch.Tensor, weights: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Multiply ``z [n, L, D]`` by ``weights [n, L]`` per position, A1111-style.

    With ``normalize`` each chunk is then rescaled so its mean over all positions and features
    equals the mean before weighting. All-ones weights return ``z`` itself, bit for bit.
    """
    weights = weights.to(device=z.device)
    if bool(torch.all(weights == 1.0)):
        return z
    weighted = z * weights.to(z.dtype).unsqueeze(-1)
    if not normalize:
        return weighted
    before = z.float().mean(dim=(1, 2), keepdim=True)
    after = weighted.float().mean(dim=(1, 2), keepdim=True)
    # A mean that is ~0 next to the values' scale (a final LayerNorm without bias, e.g. a freshly
    # initialised encoder) makes the ratio meaningless noise: leave such a chunk unscaled.
    scale = weighted.float().abs().mean(dim=(1, 2), keepdim=True)
    degenerate = (after.abs() <= 1e-4 * scale) | (before.abs() <= 1e-4 * scale)
    ratio = torch.where(degenerate, torch.ones_like(after), before / after)
    return weighted * ratio.to(z.dtype)


def encode_tokens(
    tokens: WeightedTokens,
    text_encoder: Any,
    *,
    clip_skip: int | None = None,
    normalize: bool = True,
    hidden_state: HiddenState = "last",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode the chunks of ``tokens``; returns ``([1, n*L, D], pooled [1, P] or None)``.

    All chunks go through the encoder as one batch. ``pooled`` is ``text_embeds`` of the FIRST
    chunk for a ``CLIPTextModelWithProjection`` (what SDXL expects), None for ``CLIPTextModel``.
    """
    ids = tokens.ids_tensor()
    limit = getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None)
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(
            f"chunks of {ids.shape[1]} positions exceed the text encoder's "
            f"max_position_embeddings={limit}; use chunk_length <= {limit - 2}"
        )
    with torch.no_grad():
        output = text_encoder(ids.to(_execution_device(text_encoder)), output_hidden_states=True)
        z = _select_hidden(output, text_encoder, hidden_state, clip_skip)
        z = apply_weights(z, tokens.weights_tensor(), normalize)
    pooled = getattr(output, "text_embeds", None)
    if pooled is not None:
        pooled = pooled[:1]
    return z.reshape(1, -1, z.shape[-1]), pooled


def encode_weighted(
    prompt: str,
    tokenizer: Any,
    text_encoder: Any,
    *,
    chunk_length: int = CHUNK_LENGTH,
    clip_skip: int | None = None,
    normalize: bool = True,
    hidden_state: HiddenState = "last",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weighted, chunked embeddings of ``prompt``: ``([1, (chunk_length+2) n, D], pooled)``.

    ``hidden_state="last"`` is what diffusers' SD 1.x/2.x pipelines feed the UNet,
    ``"penultimate"`` what SDXL uses (``hidden_states[-2]``).
    """
    tokens = tokenize_weighted(prompt, tokenizer, chunk_length)
    return encode_tokens(
        tokens, text_encoder, clip_skip=clip_skip, normalize=normalize, hidden_state=hidden_state
    )


def pad_embeddings_to_same_length(
    a: torch.Tensor, b: torch.Tensor, empty_chunk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append copies of ``empty_chunk [1, L, D]`` (the encoded empty prompt) to the shorter.

    diffusers needs positive and negative embeddings of equal shape for classifier-free guidance.
    """
    chunk = empty_chunk.shape[1]
    diff = a.shape[1] - b.shape[1]
    if diff % chunk:
        raise ValueError(
            f"sequence lengths {a.shape[1]} and {b.shape[1]} differ by {abs(diff)}, "
            f"not a multiple of the chunk length {chunk}"
        )
    filler = empty_chunk.to(a.dtype).repeat(1, abs(diff) // chunk, 1)
    if diff > 0:
        b = torch.cat([b, filler.to(b.device)], dim=1)
    elif diff < 0:
        a = torch.cat([a, filler.to(a.device)], dim=1)
    return a, b


def encode_prompt_pair(
    prompt: str,
    negative_prompt: str,
    tokenizer: Any,
    text_encoder: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Positive and negative embeddings of equal length (the shorter padded with empty chunks).

    Returns ``(embeds, negative_embeds, pooled, negative_pooled)``; keyword arguments go to
    :func:`encode_tokens` (``chunk_length`` to :func:`tokenize_weighted`).
    """
    chunk_length = kwargs.pop("chunk_length", CHUNK_LENGTH)
    pos, neg = pad_tokens_to_same_length(
        tokenize_weighted(prompt, tokenizer, chunk_length),
        tokenize_weighted(negative_prompt or "", tokenizer, chunk_length),
    )
    embeds, pooled = encode_tokens(pos, text_encoder, **kwargs)
    negative, negative_pooled = encode_tokens(neg, text_encoder, **kwargs)
    return embeds, negative, pooled, negative_pooled


# --------------------------------------------------------------------------------------------
# 4. Ready-made embeddings for diffusers pipelines
# --------------------------------------------------------------------------------------------
def sd_prompt_embeds(
    pipe: Any,
    prompt: str,
    negative_prompt: str | None = "",
    *,
    clip_skip: int | None = None,
    chunk_length: int = CHUNK_LENGTH,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds)`` for a ``StableDiffusionPipeline`` call."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise SynthexError("this pipeline has no tokenizer/text_encoder to encode prompts with")
    embeds, negative, _, _ = encode_prompt_pair(
        prompt,
        negative_prompt or "",
        pipe.tokenizer,
        pipe.text_encoder,
        chunk_length=chunk_length,
        clip_skip=clip_skip,
        normalize=normalize,
        hidden_state="last",
    )
    return embeds, negative


def _sdxl_encoders(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [
        (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ]
    pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
    if not pairs:
        raise SynthexError("this SDXL pipeline has no tokenizer/text_encoder pair")
    return pairs


def _encode_sdxl_side(
    tokens: list[WeightedTokens], encoders: list[tuple[Any, Any]], **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    parts, pooled = [], None
    for toks, (_, encoder) in zip(tokens, encoders):
        embeds, pool = encode_tokens(toks, encoder, hidden_state="penultimate", **kwargs)
        parts.append(embeds)
        pooled = pool if pool is not None else pooled  # the last encoder with a projection
    if pooled is None:
        raise SynthexError("SDXL needs a text encoder with projection (CLIPTextModelWithProjection)")
    dtype = encoders[-1][1].dtype
    return torch.cat([p.to(dtype) for p in parts], dim=-1), pooled.to(dtype)


def sdxl_prompt_embeds(
    pipe: Any,
    prompt: str,
    negative_prompt: str | None = "",
    *,
    prompt_2: str | None = None,
    negative_prompt_2: str | None = None,
    clip_skip: int | None = None,
    chunk_length: int = CHUNK_LENGTH,
    normalize: bool = True,
    zero_empty_negative: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)`` for SDXL.

    Both text encoders' penultimate hidden states are concatenated on the feature axis; pooled
    embeddings come from the projection encoder's first chunk. An empty negative prompt gives
    zeros when ``zero_empty_negative`` (default: the pipeline's ``force_zeros_for_empty_prompt``),
    like diffusers' default negative prompt and A1111's SDXL handling.
    """
    encoders = _sdxl_encoders(pipe)
    negative_prompt = negative_prompt or ""
    texts = [prompt, prompt_2 or prompt][-len(encoders):]
    negatives = [negative_prompt, negative_prompt_2 or negative_prompt][-len(encoders):]
    all_tokens = pad_tokens_to_same_length(
        *[tokenize_weighted(t, tok, chunk_length) for t, (tok, _) in zip(texts, encoders)],
        *[tokenize_weighted(t, tok, chunk_length) for t, (tok, _) in zip(negatives, encoders)],
    )
    n = len(encoders)
    kwargs = {"clip_skip": clip_skip, "normalize": normalize}
    embeds, pooled = _encode_sdxl_side(all_tokens[:n], encoders, **kwargs)
    if zero_empty_negative is None:
        zero_empty_negative = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    if zero_empty_negative and not any(t.strip() for t in negatives):
        return embeds, torch.zeros_like(embeds), pooled, torch.zeros_like(pooled)
    negative, negative_pooled = _encode_sdxl_side(all_tokens[n:], encoders, **kwargs)
    return embeds, negative, pooled, negative_pooled


def prompt_embeds_for_pipeline(
    pipe: Any, prompt: str, negative_prompt: str | None = "", **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``pipe(**embeds, ...)``: SDXL when the pipeline has
    ``text_encoder_2``, SD 1.x/2.x otherwise. ``kwargs`` go to :func:`sdxl_prompt_embeds` /
    :func:`sd_prompt_embeds`."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        pe, npe, ppe, nppe = sdxl_prompt_embeds(pipe, prompt, negative_prompt, **kwargs)
        return {
            "prompt_embeds": pe,
            "negative_prompt_embeds": npe,
            "pooled_prompt_embeds": ppe,
            "negative_pooled_prompt_embeds": nppe,
        }
    pe, npe = sd_prompt_embeds(pipe, prompt, negative_prompt, **kwargs)
    return {"prompt_embeds": pe, "negative_prompt_embeds": npe}
