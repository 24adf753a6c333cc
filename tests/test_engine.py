"""Generation engine: validation, seeds, samplers, LoRAs, callbacks, decoding, OOM retry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthex import __version__
from synthex.errors import SynthexError
from synthex.generate import engine as eng
from synthex.generate.engine import Engine, GenerationRequest, RequestError, parse_seed
from synthex.generate.infotext import format_infotext, parse_infotext, short_hash
from synthex.generate.samplers import SAMPLERS
from synthex.io import addnet_hash
from synthex.models.registry import LoraError
from tests.helpers_tiny import make_lora, one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

PROMPT = "Chest x-ray. (Cardiomegaly:1.5). The lungs are clear."


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def request(kind: str = "sd", **kwargs) -> GenerationRequest:
    kwargs.setdefault("steps", 2)
    return GenerationRequest(kwargs.pop("prompt", PROMPT), model=str(tiny_model_dir(kind)), **kwargs)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field, value, words", [
    ("prompt", "", "prompt: is empty"),
    ("prompt", "   ", "prompt: is empty"),
    ("prompt", None, "prompt: must be text"),
    ("negative_prompt", 3, "negative_prompt: must be text"),
    ("steps", 0, "steps: must be a whole number from 1 to 150"),
    ("steps", 151, "steps"),
    ("steps", 2.5, "steps"),
    ("steps", True, "steps"),
    ("guidance", -0.5, "guidance: must be a number >= 0"),
    ("guidance", float("nan"), "guidance"),
    ("guidance", "7", "guidance"),
    ("seed", -2, "seed: must be a whole number from 0"),
    ("seed", 1.5, "seed"),
    ("seed", "abc", "seed"),
    ("seed", 2**64, "seed: must be a whole number from 0 to"),
    ("sampler", "Euler b", "sampler: Unknown sampler 'Euler b'"),
    ("width", 100, "width: must be a multiple of 8"),
    ("height", 0, "height: must be a multiple of 8"),
    ("height", 8192, "height"),
    ("n", 0, "n: must be a whole number"),
    ("batch_size", 0, "batch_size"),
    ("model", "", "model: must be a preset name or a path"),
    ("device", "quantum", "device: 'quantum' is not a device"),
    ("dtype", "int8", "dtype: must be float32, float16 or bfloat16"),
    ("loras", [("x.safetensors",)], "loras[0]: must be a (name_or_path, scale) pair"),
    ("loras", [("x.safetensors", "strong")], "loras[0]: scale must be a finite number"),
    ("loras", "x.safetensors", "loras: must be a list"),
])
def test_each_bad_value_gets_one_message(field, value, words):
    req = GenerationRequest("chest x-ray")
    setattr(req, field, value)
    with pytest.raises(RequestError) as err:
        req.validate()
    assert len(err.value.problems) == 1, err.value.problems
    assert words in err.value.problems[0]
    assert isinstance(err.value, SynthexError) and isinstance(err.value, ValueError)


def test_all_problems_reported_at_once():
    req = GenerationRequest("", steps=0, guidance=-1, width=10)
    with pytest.raises(RequestError) as err:
        req.validate()
    assert [p.split(":")[0] for p in err.value.problems] == ["prompt", "steps", "guidance", "width"]


@pytest.mark.parametrize("value", [None, -1, "", " ", "-1", "random"])
def test_random_seed_spellings(value):
    assert parse_seed(value) is None


def test_valid_requests_pass():
    GenerationRequest("x", seed=0, guidance=0.0, width=8, height=4096, loras=[("a", 0)]).validate()
    GenerationRequest("x", seed="42", guidance=1.0, dtype="bf16", device="cpu").validate()


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RequestError, match="CUDA is not available"):
        GenerationRequest("x", device="cuda").validate()


def test_device_and_dtype_defaults():
    assert eng.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert eng.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert eng.resolve_dtype(None, torch.device("mps")) == torch.float16
    if not torch.cuda.is_available():
        assert eng.resolve_device(None).type in {"cpu", "mps"}


# ------------------------------------------------------------------------------- seeds
def test_image_k_is_independent_of_batch_size(engine):
    three = engine.generate(request(seed=10, n=3))
    assert three.seeds == [10, 11, 12] and not three.random_seed
    alone = engine.generate(request(seed=12))
    assert np.array_equal(pixels(three.images[2]), pixels(alone.images[0]))
    assert [p.seed for p in three.parameters] == [10, 11, 12]
    assert not np.array_equal(pixels(three.images[0]), pixels(three.images[1]))


def test_batched_generation_matches_up_to_rounding(engine):
    one_by_one = engine.generate(request(seed=3, n=2))
    batched = engine.generate(request(seed=3, n=2, batch_size=2))
    for a, b in zip(one_by_one.images, batched.images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2


def test_random_seed_is_reported_and_reproduces(engine):
    first = engine.generate(request(seed=-1, n=2))
    assert first.random_seed and 0 <= first.seeds[0] < 2**32
    assert first.seeds[1] == first.seeds[0] + 1
    again = engine.generate(request(seed=first.seeds[1]))
    assert np.array_equal(pixels(first.images[1]), pixels(again.images[0]))
    assert engine.generate(request(seed=None)).seeds != engine.generate(request(seed=None)).seeds


# ------------------------------------------------------------------------------- samplers, models
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_two_steps(engine, sampler):
    result = engine.generate(request(sampler=sampler, seed=1, steps=2))
    array = pixels(result.images[0])
    assert array.shape == (64, 64, 3) and array.std() > 0
    assert result.parameters[0].sampler == sampler.replace(" Karras", "")
    assert result.parameters[0].schedule_type == ("Karras" if sampler.endswith("Karras") else
                                                  result.parameters[0].schedule_type)


def test_stochastic_sampler_is_reproducible(engine):
    a = engine.generate(request(sampler="Euler a", seed=5, steps=3))
    b = engine.generate(request(sampler="Euler a", seed=5, steps=3))
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def test_one_channel_model_gives_grayscale(engine):
    result = engine.generate(request("sd-l", seed=0))
    assert result.images[0].mode == "L" and result.images[0].size == (64, 64)


def test_sdxl_with_long_weighted_prompt(engine):
    long_prompt = "Lung opacity. (White opacity:1.5) at the right lung base, " * 10
    result = engine.generate(request("sdxl", prompt=long_prompt, negative_prompt="text", seed=0))
    assert result.images[0].mode == "RGB" and result.images[0].size == (64, 64)


def test_custom_size_and_guidance_off(engine):
    result = engine.generate(request(width=32, height=48, guidance=1.0, seed=0))
    assert result.images[0].size == (32, 48)
    assert (result.parameters[0].width, result.parameters[0].height) == (32, 48)


def test_parameters_and_timings(engine):
    result = engine.generate(request(seed=42, negative_prompt="lateral view", guidance=7.5))
    params = result.parameters[0]
    unet = tiny_model_dir("sd") / "unet" / "diffusion_pytorch_model.safetensors"
    assert (params.model, params.model_hash) == ("sd", short_hash(unet))
    assert (params.sampler, params.schedule_type, params.cfg_scale) == ("DPM++ 2M", "Karras", 7.5)
    text = format_infotext(params)
    assert f"Version: synthex-{__version__}" in text
    assert parse_infotext(text).seed == 42
    assert {"load", "encode", "denoise", "decode", "total"} <= set(result.timings)


# ------------------------------------------------------------------------------- callback
def test_callback_sees_every_step(engine):
    calls = []
    engine.generate(request(seed=0, n=2, steps=3), callback=lambda s, t, x: calls.append((s, t, x.shape)))
    assert [(s, t) for s, t, _ in calls] == [(i, 6) for i in range(1, 7)]
    assert calls[0][2] == (1, 4, 32, 32)


def test_callback_exception_stops_generation(engine):
    def stop(step, total, latents):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.generate(request(seed=0), callback=stop)
    assert engine.generate(request(seed=0)).images  # the engine still works afterwards


# ------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return (make_lora(folder / "first.safetensors", seed=1, text_encoder=True),
            make_lora(folder / "second.safetensors", seed=2))


def test_lora_scales(engine, loras):
    first, second = loras
    base = pixels(engine.generate(request(seed=7)).images[0])
    zero = engine.generate(request(seed=7, loras=[(first, 0.0)]))
    assert np.array_equal(pixels(zero.images[0]), base)
    one = engine.generate(request(seed=7, loras=[(first, 1.0)]))
    assert not np.array_equal(pixels(one.images[0]), base)
    assert one.parameters[0].loras == {"first": (addnet_hash(first)[:12], 1.0)}
    both = engine.generate(request(seed=7, loras=[(first, 1.0), (second, 0.0)]))
    assert np.array_equal(pixels(both.images[0]), pixels(one.images[0]))
    mixed = engine.generate(request(seed=7, loras=[(first, 1.0), (second, 0.7)]))
    assert not np.array_equal(pixels(mixed.images[0]), pixels(one.images[0]))
    assert set(mixed.parameters[0].loras) == {"first", "second"}
    assert "Lora hashes" in format_infotext(mixed.parameters[0])
    again = engine.generate(request(seed=7))  # adapters removed: the base model exactly
    assert np.array_equal(pixels(again.images[0]), base) and again.parameters[0].loras == {}


def test_preset_lora_scale_is_overridable(tmp_path, loras):
    presets = tmp_path / "models.yaml"
    presets.write_text(f"models:\n  tuned:\n    source: {tiny_model_dir('sd')}\n    loras:\n"
                       f"      - {{name: findings, path: {loras[0]}, scale: 0.8}}\n")
    from synthex.models.registry import ModelRegistry

    engine = Engine(ModelRegistry(presets))
    result = engine.generate(GenerationRequest("x", model="tuned", steps=1, seed=0))
    assert result.parameters[0].loras["findings"][1] == 0.8 and result.parameters[0].model == "tuned"
    result = engine.generate(GenerationRequest("x", model="tuned", steps=1, seed=0,
                                               loras=[("findings", 0.3)]))
    assert result.parameters[0].loras["findings"][1] == 0.3


# ------------------------------------------------------------------------------- failures
def test_nan_from_half_vae_is_decoded_again_in_fp32(engine, monkeypatch):
    loaded = engine.load(str(tiny_model_dir("sd")))
    vae = loaded.pipe.vae
    real_decode = vae.decode

    def flaky(z, return_dict=True):
        out = real_decode(z, return_dict=False)[0]
        return (out * float("nan") if vae.dtype == torch.bfloat16 else out,)

    monkeypatch.setattr(vae, "decode", flaky)
    vae.to(torch.bfloat16)
    try:
        images = eng.decode_latents(loaded, torch.randn(1, 4, 32, 32))
    finally:
        vae.to(torch.float32)
        loaded.vae_upcast = False
    assert pixels(images[0]).std() > 0


def test_out_of_memory_retries_in_low_memory_mode(engine, monkeypatch):
    calls = {"denoise": 0, "low": 0}
    real = eng._denoise

    def flaky(*args, **kwargs):
        calls["denoise"] += 1
        if calls["denoise"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(*args, **kwargs)

    def low_memory(loaded):
        calls["low"] += 1

    monkeypatch.setattr(eng, "_denoise", flaky)
    monkeypatch.setattr(eng, "enable_low_memory", low_memory)
    assert engine.generate(request(seed=0)).images
    assert calls == {"denoise": 2, "low": 1}

    def always(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(eng, "_denoise", always)
    with pytest.raises(SynthexError, match="Out of GPU memory .* even with VAE tiling"):
        engine.generate(request(seed=0))


# ------------------------------------------------------------------------------- embedded layout
def test_embedded_architecture_through_the_registry(tmp_path, engine):
    """A folder shaped like the shipped model (own CLIP-style BPE, 1-channel VAE, DDPM schedule)
    loads by path, generates grayscale images, and matches a direct pipeline call bit for bit."""
    emb = pytest.importorskip("synthex.models.embedded")
    try:
        tokenizer = emb.train_tokenizer(["Chest x-ray. Normal. The lungs are clear, no effusion.",
                                         "Chest x-ray. Cardiomegaly, lung opacity."] * 3,
                                        vocab_size=400, min_frequency=1)
        pipe = emb.build_pipeline(emb.build_components(emb.embedded_configs(32, emb.EmbeddedArch.tiny()), tokenizer))
    except (AttributeError, TypeError) as exc:  # the embedded module's API moved
        pytest.skip(f"embedded builder API changed: {exc}")
    pipe.save_pretrained(tmp_path / "embedded")
    prompt = "Chest x-ray. Cardiomegaly, lung opacity."
    result = engine.generate(GenerationRequest(prompt, model=str(tmp_path / "embedded"), steps=3, seed=4))
    assert result.images[0].mode == "L" and result.images[0].size == (32, 32)
    from synthex.generate.samplers import make_scheduler

    loaded = engine.loaded
    loaded.pipe.scheduler = make_scheduler("DPM++ 2M Karras", loaded.base_scheduler)
    direct = loaded.pipe(prompt, num_inference_steps=3, guidance_scale=7.0,
                         generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(pixels(direct), pixels(result.images[0]))
    weighted = engine.generate(GenerationRequest("Chest x-ray. (Cardiomegaly:1.5), lung opacity.",
                                                 model=str(tmp_path / "embedded"), steps=3, seed=4))
    assert not np.array_equal(pixels(weighted.images[0]), pixels(result.images[0]))


# ------------------------------------------------------------------------------- A1111 interop
def test_lora_hash_is_the_addnet_hash(engine, loras):
    first, _ = loras
    result = engine.generate(request(seed=7, loras=[(first, 0.5)]))
    digest = result.parameters[0].loras["first"][0]
    assert digest == addnet_hash(first)[:12] and len(digest) == 12
    assert digest != short_hash(first, 12)  # not the whole-file SHA-256
    text = format_infotext(result.parameters[0])
    assert f'Lora hashes: "first: {digest}"' in text
    assert result.parameters[0].prompt == f"{PROMPT} <lora:first:0.5>"  # A1111 writes the tag


def test_lora_tag_in_prompt_loads_the_lora(engine, loras, tmp_path, monkeypatch):
    first, _ = loras
    monkeypatch.setenv("SYNTHEX_LORA_DIR", str(first.parent))
    by_option = engine.generate(request(seed=7, loras=[(first, 0.7)]))
    by_tag = engine.generate(request(prompt=f"{PROMPT} <lora:first:0.7>", seed=7))
    assert np.array_equal(pixels(by_tag.images[0]), pixels(by_option.images[0]))
    assert by_tag.parameters[0].loras == by_option.parameters[0].loras
    assert by_tag.parameters[0].prompt == by_option.parameters[0].prompt == f"{PROMPT} <lora:first:0.7>"
    # the tag is not text for the model: without LoRA effect (weight 0) it is the plain prompt
    plain = engine.generate(request(seed=7))
    zero = engine.generate(request(prompt=f"{PROMPT} <lora:first:0>", seed=7))
    assert np.array_equal(pixels(zero.images[0]), pixels(plain.images[0]))
    # the same LoRA as an option and a tag is applied once, with the option's scale
    both = engine.generate(request(prompt=f"{PROMPT} <lora:first:0.2>", seed=7, loras=[(first, 0.7)]))
    assert np.array_equal(pixels(both.images[0]), pixels(by_option.images[0]))
    assert list(engine.loaded.loras) == ["first"]
    assert both.parameters[0].prompt == f"{PROMPT} <lora:first:0.7>"


def test_unknown_lora_tag_lists_the_known_ones(engine, loras, monkeypatch):
    monkeypatch.setenv("SYNTHEX_LORA_DIR", str(loras[0].parent))
    with pytest.raises(LoraError, match=r"LoRA 'nope' \(a <lora:...> tag of the prompt\).*known LoRA "
                                        r"names: first, second"):
        engine.generate(request(prompt="x <lora:nope:1>", seed=0))
    with pytest.raises(SynthexError, match="negative prompt: <lora:...> tags work in the prompt only"):
        engine.generate(request(negative_prompt="<lora:first:1>", seed=0))


def test_lora_name_from_the_run_folder(engine, tmp_path):
    lora = make_lora(tmp_path / "opacity-run" / "pytorch_lora_weights.safetensors", seed=4)
    result = engine.generate(request(seed=1, loras=[(lora, 0.6)]))
    assert list(result.parameters[0].loras) == ["opacity-run"]
    assert "<lora:opacity-run:0.6>" in result.parameters[0].prompt


def test_registered_lora_resolves_by_name(tmp_path, loras):
    from synthex.models.registry import ModelRegistry

    presets = tmp_path / "models.yaml"
    presets.write_text(f"models:\n  tuned:\n    source: {tiny_model_dir('sd')}\n    loras:\n"
                       f"      - {{name: findings, path: {loras[0]}, scale: 0.8}}\n")
    engine = Engine(ModelRegistry(presets))
    # a LoRA of another preset, named in a tag while the base model is loaded by path
    result = engine.generate(request(prompt="x <lora:findings:0.4>", seed=0))
    assert result.parameters[0].loras["findings"][1] == 0.4
    assert result.parameters[0].prompt == "x <lora:findings:0.4>"


def test_clip_skip_is_applied_and_recorded(engine):
    one = engine.generate(request(seed=3))
    two = engine.generate(request(seed=3, clip_skip=2))
    assert not np.array_equal(pixels(one.images[0]), pixels(two.images[0]))
    assert two.parameters[0].clip_skip == 2 and "Clip skip: 2" in format_infotext(two.parameters[0])
    assert "Clip skip" not in format_infotext(one.parameters[0])
    with pytest.raises(RequestError, match="clip_skip: must be a whole number from 1 to 12"):
        GenerationRequest("x", clip_skip=0).validate()
    with pytest.raises(RequestError, match="clip_skip: 5 is too deep"):
        engine.generate(request(seed=3, clip_skip=5))


def test_schedule_type_is_used_and_recorded(engine):
    karras = engine.generate(request(seed=3, steps=4, sampler="Euler", schedule_type="karras"))
    assert (karras.parameters[0].sampler, karras.parameters[0].schedule_type) == ("Euler", "Karras")
    plain = engine.generate(request(seed=3, steps=4, sampler="Euler"))
    assert not np.array_equal(pixels(karras.images[0]), pixels(plain.images[0]))
    same = engine.generate(request(seed=3, steps=4, sampler="Euler Karras"))
    assert np.array_equal(pixels(karras.images[0]), pixels(same.images[0]))
    with pytest.raises(RequestError, match="sampler: .*has no Karras schedule"):
        GenerationRequest("x", sampler="Euler a", schedule_type="karras").validate()


def test_request_from_parameters_reads_a1111_fields():
    params = parse_infotext("x <lora:first:0.5>\nNegative prompt:\nSteps: 3, Sampler: DPM++ 2S a, "
                            "Schedule type: Karras, Seed: 1, Clip skip: 2")
    with pytest.raises(SynthexError, match="not supported"):
        eng.request_from_parameters(params)
    req = eng.request_from_parameters(params, sampler="Euler a")  # an override replaces it
    assert (req.sampler, req.clip_skip, req.loras) == ("Euler a", 2, [])
    assert req.prompt == "x <lora:first:0.5>"  # the tag is resolved by the engine
    bad = parse_infotext("x\nSteps: 3, Clip skip: many")
    with pytest.raises(SynthexError, match="Clip skip 'many'"):
        eng.request_from_parameters(bad)
    schedule = eng.request_from_parameters(parse_infotext("x\nSteps: 3, Sampler: Euler, Seed: 1"),
                                           schedule_type="exponential")
    assert (schedule.sampler, schedule.schedule_type) == ("Euler", "exponential")


# --------------------------------------------------------------------------------------------
# One source of defaults (synthex.generate.defaults)
# --------------------------------------------------------------------------------------------
def _typer_defaults(command) -> dict:
    import typer

    app = typer.Typer()
    app.command()(command)
    return {p.name: p for p in typer.main.get_command(app).params}


def test_every_generation_default_comes_from_defaults_module():
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    from synthex.cli.evaluate import evaluate as evaluate_command
    from synthex.cli.generate import (
        compare_command,
        generate_command,
        synthesize_command,
    )
    from synthex.evaluate import EvaluationOptions
    from synthex.generate import defaults as d
    from synthex.generate import samplers
    from synthex.generate.batch import SynthesizeOptions
    from synthex.ui import state

    shared = {"steps": d.DEFAULT_STEPS, "guidance": d.DEFAULT_GUIDANCE, "sampler": d.DEFAULT_SAMPLER,
              "clip_skip": d.DEFAULT_CLIP_SKIP, "model": d.DEFAULT_MODEL, "width": d.DEFAULT_WIDTH,
              "height": d.DEFAULT_HEIGHT}
    assert samplers.DEFAULT_SAMPLER is d.DEFAULT_SAMPLER and samplers.SAMPLERS[0] == d.DEFAULT_SAMPLER
    request = GenerationRequest("x")
    assert {k: getattr(request, k) for k in shared} == shared and request.n == d.DEFAULT_N
    synth = {f.name: f.default for f in dataclasses.fields(SynthesizeOptions)}
    assert {k: synth[k] for k in shared} == shared
    # every field SynthesizeOptions shares with GenerationRequest has the request's default
    # (seed excepted: a batch's base seed is 0, reproducible, where one request draws at random)
    req = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    assert {k: v for k, v in synth.items() if k in req and k != "seed" and v != req[k]} == {}
    evaluation = {f.name: f.default for f in dataclasses.fields(EvaluationOptions)}
    assert (evaluation["steps"], evaluation["guidance"], evaluation["per_prompt"]) == (
        d.DEFAULT_STEPS, d.DEFAULT_GUIDANCE, d.DEFAULT_N)

    # synthex generate: options default to None (so --from keeps the stored values), and the
    # help shows the request's defaults
    gen = _typer_defaults(generate_command)
    assert all(gen[k].default is None for k in ("n", "steps", "guidance", "sampler", "clip_skip", "model"))
    assert {k: gen[k].show_default for k in ("n", "steps", "guidance", "sampler", "clip_skip", "model")} == {
        "n": str(d.DEFAULT_N), "steps": str(d.DEFAULT_STEPS), "guidance": f"{d.DEFAULT_GUIDANCE:g}",
        "sampler": d.DEFAULT_SAMPLER, "clip_skip": str(d.DEFAULT_CLIP_SKIP), "model": d.DEFAULT_MODEL}
    for command in (synthesize_command, compare_command):
        params = _typer_defaults(command)
        assert {k: params[k].default for k in ("steps", "guidance", "sampler", "clip_skip", "model")} == {
            k: shared[k] for k in ("steps", "guidance", "sampler", "clip_skip", "model")}, command.__name__
    ev = _typer_defaults(evaluate_command)
    assert (ev["n"].default, ev["steps"].default, ev["cfg"].default) == (
        d.DEFAULT_N, d.DEFAULT_STEPS, d.DEFAULT_GUIDANCE)

    # the app: its own (thesis) slider defaults, named as such; the rest shared
    controls = state.Controls(prompt="x")
    assert (state.STEPS_RANGE[2], state.GUIDANCE_RANGE[2]) == (d.APP_STEPS, d.APP_GUIDANCE)
    assert (controls.steps, controls.guidance, controls.sampler, controls.n, controls.model) == (
        d.APP_STEPS, d.APP_GUIDANCE, d.DEFAULT_SAMPLER, d.DEFAULT_N, d.DEFAULT_MODEL)
    assert inspect.signature(state.default_model).parameters["registry_default"].default == d.DEFAULT_MODEL

    # and no literal default is written again in the modules that take them from there
    src = Path(d.__file__).resolve().parents[1]
    literal = re.compile(r'"DPM\+\+ 2M Karras"|typer\.Option\((?:20|7\.0|"embedded")\b'
                         r'|^\s+(?:steps|guidance|sampler|clip_skip|model|n): [^=\n]+= *(?:20|7\.[05]|30|1|"[^"]*")$',
                         re.MULTILINE)
    for rel in ("generate/engine.py", "generate/batch.py", "cli/generate.py", "cli/evaluate.py",
                "ui/state.py", "evaluate/run.py", "evaluate/types.py"):
        found = literal.findall((src / rel).read_text(encoding="utf-8"))
        assert not found, f"{rel}: {found} - use synthex.generate.defaults"
