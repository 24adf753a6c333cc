"""The embedded model's architecture: configs, tokenizer, pipeline build/save/reload (offline)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from synthex.models.embedded import (  # noqa: E402
    EMBEDDED_DIR,
    MAX_TOKENS,
    EmbeddedArch,
    build_components,
    build_pipeline,
    count_parameters,
    embedded_configs,
    load_tokenizer,
    save_tokenizer,
    tokenize,
    train_tokenizer,
)

CAPTIONS = [
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Cardiomegaly. No pleural effusion.",
    "Right lower lobe opacity, likely atelectasis.",
    "Large left pleural effusion with adjacent atelectasis.",
] * 20


from tests.helpers_tiny import one_thread  # noqa: E402,F401 (autouse: torch on one thread)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CAPTIONS, vocab_size=700)


def test_default_configs_give_32x32x4_latents_at_128px():
    cfg = embedded_configs(128)
    assert cfg["vae"]["in_channels"] == cfg["vae"]["out_channels"] == 1
    assert cfg["vae"]["latent_channels"] == 4 and len(cfg["vae"]["block_out_channels"]) == 3
    assert cfg["unet"]["sample_size"] == 32 and cfg["unet"]["cross_attention_dim"] == 128
    assert cfg["text_encoder"]["max_position_embeddings"] == MAX_TOKENS
    assert cfg["scheduler"]["prediction_type"] == "epsilon"
    assert EMBEDDED_DIR.parts[-2:] == ("weights", "embedded")


@pytest.mark.parametrize("resolution", [0, 100, 130])
def test_resolution_must_fit_the_architecture(resolution):
    with pytest.raises(ValueError, match=str(resolution)):
        embedded_configs(resolution)


def test_unknown_arch_key_is_named():
    with pytest.raises(ValueError, match="unet_width"):
        EmbeddedArch.from_dict({"unet_width": 3})


def test_default_model_fits_the_50_mb_budget_in_float32():
    tok = train_tokenizer(CAPTIONS, vocab_size=3000)
    params = count_parameters(build_components(embedded_configs(128), tok))
    total = sum(params.values())
    assert params["unet"] > params["vae"] > params["text_encoder"] > 0
    assert total * 4 < 45 * 2**20, params


def test_tokenizer_pads_truncates_and_never_fails(tokenizer):
    ids = tokenize(tokenizer, ["cardiomegaly", "word " * 300, "zzqx ☃ 日本 unseenword"])
    assert ids.shape == (3, MAX_TOKENS)
    assert ids[0, 0] == tokenizer.bos_token_id and ids[0, -1] == tokenizer.pad_token_id
    assert ids[1, -1] == tokenizer.eos_token_id  # truncated, still ends with the end token
    assert tokenizer.decode(ids[2], skip_special_tokens=True) == "zzqx ☃ 日本 unseenword"
    # domain words are single tokens
    assert len(tokenizer("cardiomegaly", add_special_tokens=False).input_ids) == 1


def test_tokenizer_files_reload_identically(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    save_tokenizer(tokenizer, tmp_path / "tok")
    texts = ["Right lower lobe opacity.", "unknown wordz 123", ""]
    ref = tokenize(tokenizer, texts)
    hub_style = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert hub_style.model_max_length == MAX_TOKENS
    assert torch.equal(tokenize(hub_style, texts), ref)
    assert torch.equal(tokenize(load_tokenizer(tmp_path / "tok"), texts), ref)


def test_build_components_is_seeded_and_leaves_global_rng_alone(tokenizer):
    cfg = embedded_configs(32, EmbeddedArch.tiny())
    before = torch.random.get_rng_state()
    a = build_components(cfg, tokenizer, torch.Generator().manual_seed(3))
    b = build_components(cfg, tokenizer, torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in ("vae", "unet", "text_encoder"):
        for (k, x), (_, y) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert torch.equal(x, y), (name, k)


def test_pipeline_saves_reloads_and_makes_a_grayscale_image(tokenizer, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = build_pipeline(build_components(embedded_configs(32, EmbeddedArch.tiny()), tokenizer))
    pipe.save_pretrained(str(tmp_path / "pipe"), safe_serialization=True)
    save_tokenizer(tokenizer, tmp_path / "pipe" / "tokenizer")
    assert not list((tmp_path / "pipe").rglob("*.bin"))
    again = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipe"), local_files_only=True)
    again.set_progress_bar_config(disable=True)
    assert again.tokenizer.model_max_length == MAX_TOKENS
    out = again("cardiomegaly", negative_prompt="", num_inference_steps=2, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0))
    image = out.images[0]
    assert image.mode == "L" and image.size == (32, 32)
