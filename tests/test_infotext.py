"""A1111 ``parameters`` infotext: format, parse, PNG write/read with synthetic labels."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from synthex import __version__
from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.infotext import (
    DISCLAIMER,
    GenerationParameters,
    format_infotext,
    parse_infotext,
    read_png_parameters,
    read_png_text,
    short_hash,
    write_png,
)
from synthex.generate.samplers import sampler_from_infotext, split_sampler_name


def _params(**changes) -> GenerationParameters:
    sampler, schedule = split_sampler_name("DPM++ 2M Karras")
    base = dict(
        prompt="Normal. (The lungs are clear:1.5) bilaterally.",
        negative_prompt="blurry, lateral view",
        steps=20,
        sampler=sampler,
        schedule_type=schedule,
        cfg_scale=7.0,
        seed=42,
        width=256,
        height=256,
        model="name",
        model_hash="abcdef1234",
        loras={"a": ("0123456789ab", 0.8), "b": ("ba9876543210", 1.0)},
    )
    base.update(changes)
    return GenerationParameters(**base)


def _with_version(params: GenerationParameters) -> GenerationParameters:
    """What parsing gives back: the Version field lands in extra."""
    extra = {**params.extra, "Version": params.extra.get("Version", f"synthex-{__version__}")}
    return GenerationParameters(**{**vars(params), "extra": extra})


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (16, 24), dtype=np.uint8), mode="L")


def test_format_matches_a1111_layout():
    text = format_infotext(_params())
    assert text.split("\n") == [
        "Normal. (The lungs are clear:1.5) bilaterally.",
        "Negative prompt: blurry, lateral view",
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, "
        "Size: 256x256, Model hash: abcdef1234, Model: name, "
        'Lora hashes: "a: 0123456789ab, b: ba9876543210", Lora scales: "a: 0.8, b: 1", '
        f"Version: synthex-{__version__}",
    ]
    no_negative = format_infotext(_params(negative_prompt="", loras={}, cfg_scale=7.5))
    assert "Negative prompt" not in no_negative and "CFG scale: 7.5," in no_negative


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("Cardiomegaly, mild: (heart:1.5), \"quoted\" words", 'bad "anatomy", text: none'),
        ("Line one,\nline two: Steps: 20, Seed: 1\nline three", "neg one\nneg two, x: y"),
        ("Pleuraerguss rechts – Größe 3 cm; 肺野清晰 ✓ ‘curly’", "überbelichtet, ½ contrast"),
        ("", "only a negative"),
        ("only a prompt", ""),
        ("", ""),
    ],
)
def test_round_trip_tricky_prompts(prompt, negative):
    params = _params(
        prompt=prompt,
        negative_prompt=negative,
        model='chest, "xl": v1',
        extra={"Clip skip": "2", "Note": 'a, b: "c"\nd', "Denoising strength": "0.5"},
    )
    assert parse_infotext(format_infotext(params)) == _with_version(params)


def test_round_trip_minimal_and_foreign_version():
    minimal = GenerationParameters(prompt="a", steps=20)
    assert parse_infotext(format_infotext(minimal)) == GenerationParameters(
        prompt="a", steps=20, extra={"Version": f"synthex-{__version__}"}
    )
    foreign = _params(extra={"Version": "v1.10.1"})
    text = format_infotext(foreign)
    assert text.endswith("Version: v1.10.1") and parse_infotext(text) == foreign


A1111_TEXT = """Lung opacity. (White opacity:1.5) lung base right.
Chest x-ray, frontal <lora:opacity_lora:0.8>
Negative prompt: lateral view, (text:1.2), watermark
BadDream
Steps: 35, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.3, Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, TI hashes: "BadDream: 758aac443515, easynegative: c74b4e810b03", Lora hashes: "opacity_lora: 0123456789ab, all_classes: a1b2c3d4e5f6", Version: v1.10.1"""


def test_parse_realistic_a1111_text():
    params = parse_infotext(A1111_TEXT)
    assert params.prompt == (
        "Lung opacity. (White opacity:1.5) lung base right.\n"
        "Chest x-ray, frontal <lora:opacity_lora:0.8>"
    )
    assert params.negative_prompt == "lateral view, (text:1.2), watermark\nBadDream"
    assert (params.steps, params.cfg_scale, params.seed) == (35, 7.0, 1234567890)
    assert (params.sampler, params.schedule_type) == ("DPM++ 2M", "Karras")
    assert sampler_from_infotext(params.sampler, params.schedule_type) == "DPM++ 2M Karras"
    assert (params.width, params.height) == (1024, 1024)
    assert (params.model, params.model_hash) == ("sd_xl_base_1.0", "31e35c80fc")
    assert params.loras == {
        "opacity_lora": ("0123456789ab", 0.8),  # scale from the <lora:...> tag
        "all_classes": ("a1b2c3d4e5f6", None),
    }
    assert params.extra == {
        "Denoising strength": "0.3",
        "Clip skip": "2",
        "Hires upscale": "2",
        "Hires upscaler": "Latent",
        "TI hashes": "BadDream: 758aac443515, easynegative: c74b4e810b03",
        "Version": "v1.10.1",
    }


def test_parse_old_style_and_odd_inputs():
    old = parse_infotext("a cat\r\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1")
    assert old.prompt == "a cat" and old.schedule_type is None
    assert sampler_from_infotext(old.sampler, old.schedule_type) == "DPM++ 2M Karras"
    assert parse_infotext("Finding: opacity") == GenerationParameters(prompt="Finding: opacity")
    assert parse_infotext("no parameters here").prompt == "no parameters here"
    bad = parse_infotext("x\nSteps: many, Size: big, Seed: 3")
    assert bad.steps is None and bad.seed == 3
    assert bad.extra == {"Steps": "many", "Size": "big"}


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="LoRA name"):
        format_infotext(_params(loras={"a,b": ("0" * 12, 1.0)}))
    with pytest.raises(ValueError, match="duplicates"):
        format_infotext(_params(extra={"Seed": "1"}))
    with pytest.raises(ValueError, match="extra key"):
        format_infotext(_params(extra={"a: b": "1"}))


def test_write_png_labels_and_round_trip(tmp_path):
    params = _params(prompt="Pleuraerguss rechts, Größe: 3 cm\n肺野清晰")
    path = write_png(_image(), tmp_path / "out" / "synthetic_xray_0001.png", params)
    assert read_png_parameters(path) == _with_version(params)
    text = read_png_text(path)
    assert text["Synthetic"] == "true" and text["Disclaimer"] == DISCLAIMER
    assert text["Software"] == f"SynTheX-Ray {__version__}"
    assert text["Description"] == params.prompt
    assert (text["Seed"], text["Model"]) == ("42", "name")
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image), np.asarray(_image()))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    assert path.stat().st_mode & 0o644 == 0o644

    other = write_png(_image(), tmp_path / "real.png", params, description="d", synthetic=False)
    text = read_png_text(other)
    assert text["Synthetic"] == "false" and "Disclaimer" not in text
    assert text["Description"] == "d"


def test_write_png_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.png"
    write_png(_image(), path, _params(seed=1))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_png(_image(), path, _params(seed=2))
    assert read_png_parameters(path).seed == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    write_png(_image(), path, _params(seed=2), overwrite=True)
    assert read_png_parameters(path).seed == 2
    with pytest.raises(SynthexError, match=r"\.png"):
        write_png(_image(), tmp_path / "x.jpg", _params())


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(SynthexError, match="no such file"):
        read_png_parameters(tmp_path / "missing.png")
    jpeg = tmp_path / "a.jpg"
    _image().save(jpeg, format="JPEG")
    with pytest.raises(SynthexError, match="not a PNG"):
        read_png_parameters(jpeg)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(SynthexError, match="not a readable PNG"):
        read_png_parameters(junk)
    plain = tmp_path / "plain.png"
    _image().save(plain)
    with pytest.raises(SynthexError, match="no 'parameters' text chunk"):
        read_png_parameters(plain)


def test_short_hash(tmp_path):
    data = b"safetensors bytes"
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert short_hash(data) == short_hash(path) == short_hash(str(path)) == expected[:10]
    assert short_hash(path, length=12) == expected[:12]
    with pytest.raises(SynthexError):
        short_hash(tmp_path / "nope.safetensors")
