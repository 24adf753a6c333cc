"""Prompt weighting: parser, chunked tokenization, weighted encoding, tiny SD / SDXL pipelines."""
from __future__ import annotations

import pytest
import torch

from synthex.generate.weighting import (
    BREAK,
    BREAK_WEIGHT,
    apply_weights,
    encode_prompt_pair,
    encode_weighted,
    pad_embeddings_to_same_length,
    parse_weighted,
    prompt_embeds_for_pipeline,
    sd_prompt_embeds,
    sdxl_prompt_embeds,
    tokenize_weighted,
)

THESIS_PROMPT = "Normal. (The lungs are clear:1.5) bilaterally."
WIDTH = 32


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tokenizer():
    from synthex.text.clip_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def _text_config(projection_dim: int = WIDTH, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=projection_dim,
    )


@pytest.fixture(scope="module")
def text_encoder():
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(_text_config()).eval()


@pytest.fixture(scope="module")
def text_encoder_proj():
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(1)
    return CLIPTextModelWithProjection(_text_config()).eval()


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        **extra,
    )


@pytest.fixture(scope="module")
def sd_pipe(tokenizer, text_encoder):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.manual_seed(2)
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(WIDTH),
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def sdxl_pipe(tokenizer, text_encoder, text_encoder_proj):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    time_dim = 8
    torch.manual_seed(3)
    unet = _unet(
        2 * WIDTH,  # both encoders' features concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # pooled text_embeds (projection_dim) + 6 micro-conditioning ids x time_dim
        projection_class_embeddings_input_dim=WIDTH + 6 * time_dim,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_proj,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
    )


def _prompt_of_tokens(tokenizer, n: int) -> str:
    """A radiology-like prompt of exactly n CLIP tokens, commas included."""
    words = "heart size normal , lungs are clear , no focal lung base , chest normal ,".split()
    out = [words[i % len(words)] for i in range(n)]
    prompt = " ".join(out).replace(" ,", ",")
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == n
    return prompt


def _inner(chunk: list[int], eos: int) -> list[int]:
    return chunk[1 : chunk.index(eos, 1)]


# ------------------------------------------------------------------------------------ parser
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(clear:1.5)", [("clear", 1.5)]),
        ("(clear)", [("clear", 1.1)]),
        ("((clear))", [("clear", pytest.approx(1.21))]),
        ("[clear]", [("clear", pytest.approx(1 / 1.1))]),
        ("[[clear]]", [("clear", pytest.approx(1 / 1.21))]),
        ("(Cardiomegaly:1.5)", [("Cardiomegaly", 1.5)]),
        ("(a: 0.5 )", [("a", 0.5)]),
        ("(a:-1)", [("a", -1.0)]),
        (
            THESIS_PROMPT,
            [("Normal. ", 1.0), ("The lungs are clear", 1.5), (" bilaterally.", 1.0)],
        ),
        (
            "a ((b:2) c) d",
            [("a ", 1.0), ("b", pytest.approx(2.2)), (" c", 1.1), (" d", 1.0)],
        ),
        (
            "a [b (c:2)] d",
            [("a ", 1.0), ("b ", pytest.approx(1 / 1.1)), ("c", pytest.approx(2 / 1.1)), (" d", 1.0)],
        ),
        ("", [("", 1.0)]),
    ],
)
def test_parse_forms(prompt, expected):
    assert parse_weighted(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (r"\(x\)", [("(x)", 1.0)]),
        (r"\[x\]", [("[x]", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        (r"(a \(b\):1.3)", [("a (b)", 1.3)]),
        ("50% C:\\path", [("50% C:\\path", 1.0)]),
        ("ratio 1:2", [("ratio 1:2", 1.0)]),
    ],
)
def test_parse_escapes_and_literals(prompt, expected):
    assert parse_weighted(prompt) == expected


def test_parse_unbalanced_like_a1111():
    assert parse_weighted("(open") == [("open", 1.1)]
    assert parse_weighted("a (b [c") == [
        ("a ", 1.0),
        ("b ", 1.1),
        ("c", pytest.approx(1.0)),
    ]
    assert parse_weighted("close) and] :1.5)") == [("close) and] :1.5)", 1.0)]


def test_parse_merges_equal_weights_and_break():
    assert parse_weighted("a (b:1) c") == [("a b c", 1.0)]
    assert parse_weighted("a BREAK (b)") == [("a", 1.0), (BREAK, BREAK_WEIGHT), ("b", 1.1)]
    # a BREAK inside brackets stays a BREAK (A1111 would turn it into text of weight -1.1)
    assert parse_weighted("(a BREAK b)") == [("a", 1.1), (BREAK, BREAK_WEIGHT), ("b", 1.1)]
    assert parse_weighted("BREAKFAST") == [("BREAKFAST", 1.0)]


# ------------------------------------------------------------------------------------ tokenizing
def test_short_prompt_matches_diffusers_tokenization(tokenizer):
    prompt = "Normal. The lungs are clear bilaterally."
    tokens = tokenize_weighted(prompt, tokenizer)
    reference = tokenizer(prompt, padding="max_length", max_length=77).input_ids
    assert tokens.chunks == [reference]
    assert tokens.weights == [[1.0] * 77]


def test_weights_follow_their_tokens(tokenizer):
    tokens = tokenize_weighted(THESIS_PROMPT, tokenizer)
    clear = tokenizer("The lungs are clear", add_special_tokens=False).input_ids
    ids, weights = tokens.chunks[0], tokens.weights[0]
    start = ids.index(clear[0])
    assert ids[start : start + len(clear)] == clear
    assert weights[start : start + len(clear)] == [1.5] * len(clear)
    assert set(weights[:start] + weights[start + len(clear) :]) == {1.0}


def test_long_prompt_is_chunked_not_cut(tokenizer):
    prompt = _prompt_of_tokens(tokenizer, 200)
    tokens = tokenize_weighted(prompt, tokenizer)
    assert tokens.n_chunks == 3
    assert tokens.ids_tensor().shape == (3, 77)
    inner = [t for chunk in tokens.chunks for t in _inner(chunk, tokenizer.eos_token_id)]
    assert inner == tokens.token_ids
    assert inner == tokenizer(prompt, add_special_tokens=False).input_ids
    for chunk in tokens.chunks:
        assert chunk[0] == tokenizer.bos_token_id and len(chunk) == 77


def test_chunk_is_cut_after_a_late_comma(tokenizer):
    head = _prompt_of_tokens(tokenizer, 3).split()[0]  # "heart"
    prompt = " ".join([head] * 70) + ", " + " ".join(["lungs"] * 10)
    tokens = tokenize_weighted(prompt, tokenizer)
    first = _inner(tokens.chunks[0], tokenizer.eos_token_id)
    assert len(first) == 71 and first[-1] == tokenizer.convert_tokens_to_ids(",</w>")
    assert len(_inner(tokens.chunks[1], tokenizer.eos_token_id)) == 10


def test_break_starts_a_new_chunk(tokenizer):
    tokens = tokenize_weighted("heart normal BREAK lungs clear", tokenizer)
    assert tokens.n_chunks == 2
    eos = tokenizer.eos_token_id
    assert tokenizer.decode(_inner(tokens.chunks[1], eos)) == "lungs clear"
    assert tokenize_weighted("", tokenizer).chunks == [[tokenizer.bos_token_id] + [eos] * 76]


# ------------------------------------------------------------------------------------ encoding
def test_unit_weights_give_exactly_the_unweighted_embedding(tokenizer, text_encoder):
    prompt = "Normal. The lungs are clear bilaterally."
    ids = torch.tensor([tokenizer(prompt, padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        out = text_encoder(ids, output_hidden_states=True)
    for text in (prompt, "Normal. (The lungs are clear:1.0) bilaterally."):
        embeds, pooled = encode_weighted(text, tokenizer, text_encoder)
        assert pooled is None
        assert torch.equal(embeds, out.last_hidden_state)
    penultimate, _ = encode_weighted(prompt, tokenizer, text_encoder, hidden_state="penultimate")
    assert torch.equal(penultimate, out.hidden_states[-2])
    skipped, _ = encode_weighted(prompt, tokenizer, text_encoder, clip_skip=1)
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    expected = norm(out.hidden_states[-2])
    assert torch.allclose(skipped, expected)


def test_weighted_tokens_change_most(tokenizer, text_encoder):
    plain, _ = encode_weighted("Normal. The lungs are clear bilaterally.", tokenizer, text_encoder)
    weighted, _ = encode_weighted(THESIS_PROMPT, tokenizer, text_encoder)
    tokens = tokenize_weighted(THESIS_PROMPT, tokenizer)
    assert tokens.chunks[0] == tokenize_weighted("Normal. The lungs are clear bilaterally.",
                                                 tokenizer).chunks[0]
    heavy = torch.tensor(tokens.weights[0]) == 1.5
    change = (weighted - plain).abs()[0].amax(dim=-1)
    assert heavy.sum() == 4
    assert change[heavy].min() > 10 * change[~heavy].max()
    # mean-preserving rescale, per chunk
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    raw, _ = encode_weighted(THESIS_PROMPT, tokenizer, text_encoder, normalize=False)
    assert torch.allclose(raw[0][heavy], 1.5 * plain[0][heavy])
    assert torch.equal(raw[0][~heavy], plain[0][~heavy])


def test_apply_weights_identity_is_bitwise():
    z = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    assert apply_weights(z, torch.ones(2, 5)) is z


def test_long_prompt_embedding_shape_and_pooled(tokenizer, text_encoder_proj):
    prompt = _prompt_of_tokens(tokenizer, 200)
    embeds, pooled = encode_weighted(prompt, tokenizer, text_encoder_proj)
    assert embeds.shape == (1, 231, WIDTH)
    ids = tokenize_weighted(prompt, tokenizer).ids_tensor()[:1]
    with torch.no_grad():
        first = text_encoder_proj(ids)
    assert pooled.shape == (1, WIDTH)
    assert torch.allclose(pooled, first.text_embeds, atol=1e-6)


def test_positive_and_negative_padded_to_equal_length(tokenizer, text_encoder):
    long_prompt = _prompt_of_tokens(tokenizer, 200)
    pos, neg, _, _ = encode_prompt_pair(long_prompt, "blurry", tokenizer, text_encoder)
    assert pos.shape == neg.shape == (1, 231, WIDTH)
    empty, _ = encode_weighted("", tokenizer, text_encoder)
    assert torch.allclose(neg[:, 77:154], empty, atol=1e-5)
    short, _ = encode_weighted("blurry", tokenizer, text_encoder)
    a, b = pad_embeddings_to_same_length(short, pos, empty)
    assert a.shape == b.shape == pos.shape
    assert torch.equal(a[:, :77], short) and torch.equal(a[:, 154:], empty)
    with pytest.raises(ValueError, match="multiple"):
        pad_embeddings_to_same_length(short[:, :70], pos, empty)


def test_bad_arguments(tokenizer, text_encoder):
    with pytest.raises(ValueError, match="hidden_state"):
        encode_weighted("a", tokenizer, text_encoder, hidden_state="first")
    with pytest.raises(ValueError, match="clip_skip"):
        encode_weighted("a", tokenizer, text_encoder, clip_skip=5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        encode_weighted("a", tokenizer, text_encoder, chunk_length=80)


# ------------------------------------------------------------------------------------ pipelines
def test_sd_embeddings_match_diffusers_and_run(sd_pipe, tokenizer):
    prompt = "Normal. The lungs are clear bilaterally."
    pe, npe = sd_prompt_embeds(sd_pipe, prompt, "blurry")
    ref_pe, ref_npe = sd_pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="blurry")
    assert torch.equal(pe, ref_pe) and torch.equal(npe, ref_npe)

    embeds = prompt_embeds_for_pipeline(sd_pipe, _prompt_of_tokens(tokenizer, 200), "blurry")
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (1, 231, 32)
    image = sd_pipe(
        **embeds,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3)


def test_sdxl_embeddings_match_diffusers_and_run(sdxl_pipe, tokenizer):
    prompt = "Normal. The lungs are clear bilaterally."
    pe, npe, ppe, nppe = sdxl_prompt_embeds(sdxl_pipe, prompt, "")
    ref = sdxl_pipe.encode_prompt(prompt, device="cpu", negative_prompt=None)
    for mine, theirs in zip((pe, npe, ppe, nppe), ref):
        assert torch.equal(mine, theirs)
    assert pe.shape == (1, 77, 64) and ppe.shape == (1, 32)
    assert not npe.any()  # empty negative -> zeros (force_zeros_for_empty_prompt)

    embeds = prompt_embeds_for_pipeline(
        sdxl_pipe, "Lung opacity. (White opacity:1.5) lung base right. " * 12, "blurry, noisy"
    )
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape
    assert embeds["prompt_embeds"].shape[1] == 154
    assert embeds["pooled_prompt_embeds"].shape == embeds["negative_pooled_prompt_embeds"].shape
    assert embeds["negative_prompt_embeds"].abs().sum() > 0
    image = sdxl_pipe(
        **embeds,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3)
