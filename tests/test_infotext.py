"""A1111 ``parameters`` infotext: format, parse, PNG write/read with synthetic labels."""
from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from synthex import __version__
from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.infotext import (
    DISCLAIMER,
    MAX_TEXT_CHUNK,
    GenerationParameters,
    format_infotext,
    lora_tags,
    parse_infotext,
    read_image_parameters,
    read_image_text,
    read_png_parameters,
    read_png_text,
    short_hash,
    strip_lora_tags,
    with_lora_tags,
    write_image,
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
    # always written: ComfyUI's A1111 import does nothing without the line
    assert no_negative.split("\n")[1] == "Negative prompt:" and "CFG scale: 7.5," in no_negative
    assert parse_infotext(no_negative).negative_prompt == ""


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
        clip_skip=2,
        extra={"Note": 'a, b: "c"\nd', "Hires upscale": "2"},  # Denoising strength is a field now
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
    assert params.clip_skip == 2  # kept, not dropped
    assert params.denoising_strength == 0.3  # hires fix's; --from uses it with --init-image only
    assert params.extra == {
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
    with pytest.raises(SynthexError, match="a.jpg has no 'parameters'"):
        read_png_parameters(jpeg)
    gif = tmp_path / "a.gif"
    _image().save(gif, format="GIF")
    with pytest.raises(SynthexError, match="a.gif is not a PNG, JPEG or WebP image"):
        read_png_parameters(gif)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(SynthexError, match="junk.png is not a PNG, JPEG or WebP"):
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


# ------------------------------------------------------------------------------- hostile files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(*chunks: bytes, width: int = 40000, height: int = 40000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(chunks)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def test_huge_header_is_not_decoded(tmp_path):
    """A header claiming 40000x40000 pixels (PIL: DecompressionBombError) reads fine."""
    text = format_infotext(_params())
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(_chunk(b"tEXt", b"parameters\x00" + text.encode("latin-1"))))
    assert read_image_parameters(path) == parse_infotext(text)
    assert read_png_text(path)["parameters"] == text


def test_zip_bomb_text_chunk_is_refused_by_name(tmp_path):
    """A zTXt 'parameters' chunk inflating to 200 MB: one SynthexError naming the file."""
    squeeze = zlib.compressobj(9)
    block = b"A" * (1 << 20)
    body = b"".join(squeeze.compress(block) for _ in range(200)) + squeeze.flush()
    path = tmp_path / "ztxt.png"
    path.write_bytes(_png(_chunk(b"zTXt", b"parameters\x00\x00" + body),
                          _chunk(b"tEXt", b"Software\x00x"), width=8, height=8))
    with pytest.raises(SynthexError, match=r"ztxt.png: its 'parameters' text chunk is larger than 1 MiB"):
        read_image_parameters(path)
    other = tmp_path / "other.png"  # an oversized chunk under another key is skipped
    other.write_bytes(_png(_chunk(b"zTXt", b"Comment\x00\x00" + body),
                           _chunk(b"tEXt", b"parameters\x00a cat\nSteps: 3"), width=8, height=8))
    assert read_image_parameters(other).steps == 3 and "Comment" not in read_image_text(other)


def test_oversized_raw_text_chunk_is_not_read(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png(_chunk(b"tEXt", b"parameters\x00" + b"x" * (MAX_TEXT_CHUNK + 10))))
    with pytest.raises(SynthexError, match="big.png: its 'parameters' text chunk is larger"):
        read_image_text(path)


@pytest.mark.parametrize("data, words", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR", "truncated"),
    (b"\x89PNG\r\n\x1a\n", "truncated"),
    (b"\xff\xd8\xff\xe1\x00\x40Exif", "truncated"),
])
def test_damaged_files_give_one_error_naming_the_file(tmp_path, data, words):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(SynthexError, match=words) as err:
        read_image_text(path)
    assert str(path) in str(err.value)


def test_damaged_ztxt_is_a_synthex_error(tmp_path):
    path = tmp_path / "z.png"
    path.write_bytes(_png(_chunk(b"zTXt", b"parameters\x00\x00not zlib"), width=8, height=8))
    with pytest.raises(SynthexError, match="z.png is not a readable image .*damaged zTXt"):
        read_image_text(path)


# ------------------------------------------------------------------------------- JPEG / WebP
@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_write_image_jpeg_webp_with_exif_user_comment(tmp_path, suffix, fmt):
    params = _params(prompt="Pleuraerguss rechts, Größe: 3 cm\n肺野清晰")
    path = write_image(_image(), tmp_path / f"x{suffix}", params)
    with Image.open(path) as image:
        assert image.format == fmt  # real JPEG/WebP bytes, not PNG under another name
        comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"UNICODE\x00"  # A1111 (piexif) layout: UTF-16BE after the code
    assert comment[8:].decode("utf-16-be") == format_infotext(params)
    assert read_image_parameters(path) == _with_version(params)
    text = read_image_text(path)
    assert text["Synthetic"] == "true" and text["Disclaimer"] == DISCLAIMER
    with pytest.raises(OutputExistsError):
        write_image(_image(), path, params)
    with pytest.raises(SynthexError, match=r"x.tiff: images are written as .png, .jpg/.jpeg or .webp"):
        write_image(_image(), tmp_path / "x.tiff", params)


def test_a1111_style_little_endian_and_plain_comments(tmp_path):
    from synthex.generate.infotext import _decode_user_comment

    assert _decode_user_comment(b"UNICODE\x00" + "a, b".encode("utf-16-le")) == "a, b"
    assert _decode_user_comment(b"ASCII\x00\x00\x00Steps: 3") == "Steps: 3"
    assert _decode_user_comment(b"Steps: 3") == "Steps: 3"


# ------------------------------------------------------------------------------- LoRA tags
def test_lora_tags_and_round_trip():
    prompt = "Lung opacity <lora:opacity:0.8>, frontal <LORA:all:1.5:0.5> <lora:bare>"
    assert lora_tags(prompt) == [("opacity", 0.8), ("all", 1.5), ("bare", 1.0)]
    assert strip_lora_tags(prompt) == "Lung opacity, frontal"
    assert strip_lora_tags("no tags  ") == "no tags  "  # unchanged without tags
    tagged = with_lora_tags(prompt, {"opacity": 0.5, "all": 1.5, "extra": 1.0})
    assert tagged == "Lung opacity <lora:opacity:0.5>, frontal <lora:all:1.5> <lora:extra:1>"
    assert strip_lora_tags(tagged) == strip_lora_tags(prompt)
    assert with_lora_tags("a", {}) == "a"
    with pytest.raises(SynthexError, match="weight 'strong' is not a number"):
        lora_tags("x <lora:a:strong>")
    with pytest.raises(SynthexError, match="hypernet networks are not supported"):
        strip_lora_tags("x <hypernet:h:1>")


def test_clip_skip_is_a_field():
    params = parse_infotext("a\nNegative prompt:\nSteps: 3, Clip skip: 2, Seed: 1")
    assert params.clip_skip == 2 and "Clip skip" not in params.extra
    assert "Clip skip: 2" in format_infotext(params)
    assert "Clip skip" not in format_infotext(GenerationParameters(prompt="a", clip_skip=1))
    bad = parse_infotext("a\nSteps: 3, Clip skip: 0")
    assert bad.clip_skip is None and bad.extra["Clip skip"] == "0"
