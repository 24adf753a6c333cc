"""img2img and inpainting: the engine path with tiny models (and the shipped 1-channel model),
masks, validation, infotext, ``generate --from`` reproduction, the CLI flags and batch columns."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthex.cli.generate import app
from synthex.errors import SynthexError
from synthex.generate import masks
from synthex.generate.batch import SynthesizeOptions, synthesize
from synthex.generate.engine import Engine, GenerationRequest, RequestError
from synthex.generate.img2img import image_hash
from synthex.generate.infotext import (
    GenerationParameters,
    format_infotext,
    parse_infotext,
    read_png_parameters,
)
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

PROMPT = "Chest x-ray. (Cardiomegaly:1.5)."
BOX = (16, 16, 40, 40)
runner = CliRunner()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def picture(size: tuple[int, int] = (64, 64), mode: str = "L", seed: int = 0) -> Image.Image:
    """A deterministic grey picture: a smooth gradient with a bright disc and some noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    array = 40 + 120 * x / max(w - 1, 1) + 60 * (((x - w / 2) ** 2 + (y - h / 2) ** 2) < (w / 4) ** 2)
    array = np.clip(array + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
    image = Image.fromarray(array, mode="L")
    return image.convert(mode) if mode != "L" else image


def req(kind: str = "sd-l", **kwargs) -> GenerationRequest:
    kwargs.setdefault("steps", 3)
    kwargs.setdefault("seed", 7)
    model = kwargs.pop("model", str(tiny_model_dir(kind)) if kind != "embedded" else "embedded")
    return GenerationRequest(kwargs.pop("prompt", PROMPT), model=model, **kwargs)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def keep_zone(mask: Image.Image, blur: int) -> np.ndarray:
    """Pixels where the blurred mask is exactly 0: the result must equal the original there."""
    return np.asarray(masks.blur_mask(mask, blur)) == 0


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


# ------------------------------------------------------------------------------- img2img
def test_img2img_low_strength_stays_closer_to_the_init_image(engine):
    """The shipped 1-channel model (grayscale VAE): distance to the init image grows with strength."""
    init = engine.generate(req("embedded", steps=4, seed=1)).images[0]
    distance = {}
    for strength in (0.25, 0.5, 1.0):
        result = engine.generate(req("embedded", steps=4, init_image=init, strength=strength))
        image = result.images[0]
        assert image.mode == "L" and image.size == init.size
        assert result.parameters[0].denoising_strength == strength
        distance[strength] = float(np.abs(arr(image) - arr(init)).mean())
    assert 0 < distance[0.25] < distance[0.5] < distance[1.0]
    assert distance[1.0] > 2 * distance[0.25]


@pytest.mark.parametrize("kind", ["sd-l", "sd", "sdxl"])
def test_img2img_runs_on_every_family_and_reproduces(engine, kind):
    init = picture()
    steps = []
    first = engine.generate(req(kind, init_image=init, strength=0.7),
                            callback=lambda step, total, latents: steps.append((step, total)))
    assert first.images[0].mode == ("L" if kind == "sd-l" else "RGB")
    assert steps and steps[-1][0] == steps[-1][1] == int(3 * 0.7)  # the reduced step count
    again = engine.generate(req(kind, init_image=init, strength=0.7))
    assert np.array_equal(arr(first.images[0]), arr(again.images[0]))
    other_seed = engine.generate(req(kind, init_image=init, strength=0.7, seed=8))
    assert not np.array_equal(arr(first.images[0]), arr(other_seed.images[0]))
    params = first.parameters[0]
    assert params.init_image_hash == image_hash(init) and params.mask_hash is None


def test_given_size_resizes_the_init_image(engine, tmp_path):
    path = save(picture((48, 40)), tmp_path / "small.png")
    result = engine.generate(req(init_image=path, width=64, height=56))
    assert result.images[0].size == (64, 56)
    assert (result.parameters[0].width, result.parameters[0].height) == (64, 56)
    native = engine.generate(req(init_image=path))
    assert native.images[0].size == (48, 40)


# ------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("kind", ["sd-l", "sd", "sdxl"])
def test_inpaint_keeps_pixels_outside_the_blurred_mask(engine, kind):
    init = picture(mode="L" if kind == "sd-l" else "RGB")
    mask = masks.rect_mask(init.size, BOX)
    result = engine.generate(req(kind, init_image=init, mask=mask, strength=1.0))
    out, original = arr(result.images[0]), arr(init)
    keep = keep_zone(mask, 4)
    assert keep.mean() > 0.4
    assert np.array_equal(out[keep], original[keep])
    inside = np.abs(out - original)[22:34, 22:34].mean()
    assert inside > 10, inside
    params = result.parameters[0]
    assert (params.mask_blur, params.mask_hash) == (4, image_hash(mask))


def test_invert_mask_repaints_the_black_part(engine):
    init, mask = picture(), masks.rect_mask((64, 64), BOX)
    result = engine.generate(req(init_image=init, mask=mask, invert_mask=True, strength=1.0, mask_blur=2))
    out, original = arr(result.images[0]), arr(init)
    kept = keep_zone(masks.invert_mask(mask), 2)
    assert kept[24:32, 24:32].all()
    assert np.array_equal(out[kept], original[kept])
    assert np.abs(out - original)[:8, :].mean() > 10
    assert result.parameters[0].invert_mask


def test_only_masked_inpaints_the_crop_and_pastes_it_back(engine):
    init, mask = picture(), masks.rect_mask((64, 64), (24, 28, 36, 36))
    whole = engine.generate(req(init_image=init, mask=mask, strength=1.0))
    crop = engine.generate(req(init_image=init, mask=mask, strength=1.0, mask_padding=4))
    out, original = arr(crop.images[0]), arr(init)
    keep = keep_zone(mask, 4)
    assert np.array_equal(out[keep], original[keep])
    assert np.abs(out - original)[29:35, 25:35].mean() > 10
    assert not np.array_equal(out, arr(whole.images[0]))  # the crop path ran, not the whole one
    assert crop.parameters[0].mask_padding == 4
    # the result keeps the init image's size; the crop ran at the (smaller) working size
    small = engine.generate(req(init_image=init, mask=mask, mask_padding=4, width=32, height=32))
    assert small.images[0].size == (64, 64) and small.parameters[0].width == 32


def test_crop_region_follows_a1111():
    mask = masks.rect_mask((100, 80), (40, 30, 50, 40))  # a 10x10 box
    assert masks.mask_bbox(mask) == (40, 30, 50, 40)
    assert masks.crop_region(mask, 5, (64, 64)) == (35, 25, 55, 45)
    assert masks.crop_region(mask, 5, (128, 64)) == (25, 25, 65, 45)  # widened to 2:1
    assert masks.crop_region(mask, 50, (64, 64)) == (0, 0, 100, 80)  # clamped: no room for 1:1
    edge = masks.rect_mask((100, 80), (0, 0, 10, 10))
    assert masks.crop_region(edge, 0, (128, 64)) == (0, 0, 20, 10)  # shifted inside the image
    with pytest.raises(SynthexError, match="selects nothing"):
        masks.crop_region(Image.new("L", (8, 8)), 4, (8, 8))


def test_mask_helpers():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((2, 3), (0, 0, 0, 255))
    assert masks.mask_bbox(masks.binary_mask(rgba)) == (2, 3, 3, 4)  # the painted alpha
    grey = Image.fromarray(np.array([[100, 129], [128, 255]], dtype=np.uint8))
    assert np.asarray(masks.binary_mask(grey)).tolist() == [[0, 255], [0, 255]]
    wide = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert masks.mask_bbox(masks.binary_mask(wide)) == (0, 0, 4, 4)
    assert masks.parse_rect(" 1, 2,30 ,40") == (1, 2, 30, 40)
    for text in ("1,2,3", "a,b,c,d", "1;2;3;4", ""):
        with pytest.raises(SynthexError, match="four whole numbers"):
            masks.parse_rect(text)
    with pytest.raises(SynthexError, match="is empty"):
        masks.rect_mask((64, 64), (10, 10, 10, 20))
    with pytest.raises(SynthexError, match="does not fit the 64x64"):
        masks.rect_mask((64, 64), (10, 10, 65, 20))
    blurred = np.asarray(masks.blur_mask(masks.rect_mask((32, 32), (12, 12, 20, 20)), 2))
    assert blurred[16, 16] > 200 and 0 < blurred[12, 10] < 255 and blurred[0, 0] == 0


def test_nine_channel_inpainting_unet(engine, tmp_path_factory):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from tests import helpers_tiny as tiny

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=tiny.WIDTH,
        attention_head_dim=(2, 4), norm_num_groups=8)
    base = tiny.sd_pipeline(1)
    pipe = StableDiffusionPipeline(**{**base.components, "unet": unet}, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("inpainting-model")
    pipe.save_pretrained(folder, safe_serialization=True)
    init, mask = picture(), masks.rect_mask((64, 64), BOX)
    result = engine.generate(req(model=str(folder), init_image=init, mask=mask, strength=1.0))
    out, original = arr(result.images[0]), arr(init)
    keep = keep_zone(mask, 4)
    assert np.array_equal(out[keep], original[keep])
    assert np.abs(out - original)[22:34, 22:34].mean() > 10
    with pytest.raises(RequestError, match="inpainting model"):
        engine.generate(req(model=str(folder)))


# ------------------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    out = {"init": save(picture(), folder / "init.png"),
           "mask": save(masks.rect_mask((64, 64), BOX), folder / "mask.png"),
           "black": save(Image.new("L", (64, 64), 0), folder / "black.png"),
           "white": save(Image.new("L", (64, 64), 255), folder / "white.png"),
           "small_mask": save(masks.rect_mask((32, 32), (4, 4, 8, 8)), folder / "small_mask.png"),
           "odd": save(picture((60, 52)), folder / "odd.png"),
           "garbage": folder / "garbage.png", "empty": folder / "empty.png"}
    out["garbage"].write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out["empty"].write_bytes(b"")
    return out


@pytest.mark.parametrize("fields, words", [
    ({"init_image": "missing.png"}, "init_image: cannot read missing.png: file not found"),
    ({"init_image": "garbage"}, "init_image: cannot read"),
    ({"init_image": "empty"}, "empty file (0 bytes)"),
    ({"init_image": 3}, "init_image: must be an image path or a PIL image, got int"),
    ({"init_image": "init", "mask": "garbage"}, "mask: cannot read"),
    ({"mask": "mask"}, "mask: needs an init_image"),
    ({"init_image": "init", "mask": "black"}, "mask: selects nothing: paint the area to repaint white"),
    ({"init_image": "init", "mask": "white", "invert_mask": True}, "selects nothing"),
    ({"init_image": "init", "mask": "small_mask"}, "mask: its size 32x32 differs from the init image's 64x64"),
    ({"init_image": "init", "strength": 0}, "strength: must be a number greater than 0 and at most 1"),
    ({"init_image": "init", "strength": 1.5}, "strength: must be a number greater than 0"),
    ({"init_image": "init", "strength": "strong"}, "strength: must be a number"),
    ({"init_image": "init", "strength": 0.1, "steps": 4}, "strength: 0.1 x 4 steps runs no denoising step"),
    ({"init_image": "init", "mask": "mask", "mask_blur": -1}, "mask_blur: must be a whole number"),
    ({"init_image": "init", "mask": "mask", "mask_padding": -4}, "mask_padding: must be None"),
    ({"init_image": "odd"}, "init_image: its size 60x52 gives a working size 60x52 that is not a "
                            "multiple of 8"),
])
def test_each_bad_input_gets_one_message(files, fields, words):
    fields = {k: files.get(v, v) if isinstance(v, str) and k in ("init_image", "mask") else v
              for k, v in fields.items()}
    with pytest.raises(RequestError) as err:
        GenerationRequest("chest x-ray", **fields).validate()
    assert len(err.value.problems) == 1, err.value.problems
    assert words in err.value.problems[0], err.value.problems[0]


def test_all_problems_at_once_and_good_requests_pass(files):
    bad = GenerationRequest("", init_image=files["garbage"], mask=files["black"], strength=2,
                            mask_blur=-1, mask_padding=-1)
    with pytest.raises(RequestError) as err:
        bad.validate()
    heads = [p.split(":")[0] for p in err.value.problems]
    assert heads == ["prompt", "strength", "mask_blur", "mask_padding", "init_image", "mask"]
    GenerationRequest("x", init_image=files["init"], mask=files["mask"], mask_padding=0).validate()
    GenerationRequest("x", init_image=files["odd"], width=64, height=48).validate()  # resized


# ------------------------------------------------------------------------------- infotext
def test_infotext_round_trip_in_a1111_order():
    params = GenerationParameters(
        prompt="chest x-ray", steps=3, sampler="Euler", cfg_scale=7, seed=5, width=64, height=64,
        model="tiny", model_hash="abcdef0123", clip_skip=2, denoising_strength=0.6,
        init_image_hash="0123456789", mask_hash="9876543210", mask_blur=4, mask_padding=8,
        invert_mask=True, extra={"Prompt language": "ru", "Version": "v1"})
    text = format_infotext(params)
    line = text.splitlines()[-1]
    assert line.startswith("Steps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, "
                           "Model hash: abcdef0123, Model: tiny, Denoising strength: 0.6, "
                           "Clip skip: 2, Init image hash: 0123456789, Mask hash: 9876543210, "
                           "Prompt language: ru, Mask blur: 4, Mask mode: Inpaint not masked, "
                           "Inpaint area: Only masked, Masked area padding: 8, Version: v1")
    assert parse_infotext(text) == params
    plain = GenerationParameters(prompt="x", steps=2, seed=1, extra={"Version": "v1"})
    assert "Denoising" not in format_infotext(plain) and "Mask" not in format_infotext(plain)
    assert parse_infotext(format_infotext(plain)) == plain


def test_parses_a1111_inpainting_fields_and_aliases():
    a1111 = parse_infotext("sleeve\nSteps: 20, Seed: 1, Denoising strength: 0.44, Mask blur: 7, "
                           "Inpaint area: Only masked, Masked area padding: 48, Mask mode: Inpaint masked")
    assert (a1111.denoising_strength, a1111.mask_blur, a1111.mask_padding, a1111.invert_mask) == (
        0.44, 7, 48, False)
    assert a1111.extra == {}
    whole = parse_infotext("x\nSteps: 20, Seed: 1, Inpaint area: Whole picture, Masked area padding: 32")
    assert whole.mask_padding is None
    ours = parse_infotext("x\nSteps: 2, Seed: 1, Mask padding: 5, Inverted mask: true")
    assert (ours.mask_padding, ours.invert_mask) == (5, True)
    broken = parse_infotext("x\nSteps: 2, Seed: 1, Denoising strength: lots, Mask blur: -3")
    assert broken.denoising_strength is None and broken.mask_blur is None
    assert broken.extra == {"Denoising strength": "lots", "Mask blur": "-3"}


# ------------------------------------------------------------------------------- CLI
def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def cli_ok(*args: Any) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result


def test_from_reproduces_an_inpainted_image_bit_identically(tmp_path, files):
    model = tiny_model_dir("sd-l")
    common = ("--steps", "3", "-m", model, "-q")
    cli_ok("generate", PROMPT, "-o", tmp_path / "a.png", "--seed", "11", "--init-image", files["init"],
           "--mask-rect", "16,16,40,40", "--mask-padding", "6", "--mask-blur", "3",
           "--invert-mask", "--strength", "0.8", *common)
    params = read_png_parameters(tmp_path / "a.png")
    assert (params.denoising_strength, params.mask_blur, params.mask_padding, params.invert_mask) == (
        0.8, 3, 6, True)
    again = cli_ok("generate", "--from", tmp_path / "a.png", "-o", tmp_path / "b.png", "--init-image",
                   files["init"], "--mask", files["mask"], "-m", model, "-q")
    assert "pixel-identical to" in again.output and ": yes" in again.output
    a, b = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png"))
    assert np.array_equal(a, b)
    other = cli_ok("generate", "--from", tmp_path / "a.png", "-o", tmp_path / "c.png", "--init-image",
                   files["init"], "--mask", files["mask"], "--strength", "0.5", "-m", model, "-q")
    assert ": no" in other.output  # an override changes the image


def test_from_names_the_missing_flag_and_checks_hashes(tmp_path, files):
    model = tiny_model_dir("sd-l")
    cli_ok("generate", PROMPT, "-o", tmp_path / "a.png", "--seed", "1", "--init-image", files["init"],
           "--mask", files["mask"], "--steps", "2", "-m", model, "-q")
    source = tmp_path / "a.png"
    missing = cli("generate", "--from", source, "-m", model, "-q")
    assert missing.exit_code == 2
    assert "--init-image PATH" in missing.output and "--mask PATH" in missing.output
    no_mask = cli("generate", "--from", source, "--init-image", files["init"], "-m", model, "-q")
    assert no_mask.exit_code == 2 and "--mask PATH" in no_mask.output
    assert "--init-image PATH" not in no_mask.output
    wrong = cli("generate", "--from", source, "--init-image", files["odd"], "--mask", files["mask"],
                "-m", model, "-q")
    assert wrong.exit_code == 2 and "does not match the stored init image hash" in wrong.output
    wrong_mask = cli("generate", "--from", source, "--init-image", files["init"], "--mask-rect",
                     "0,0,8,8", "-m", model, "-q")
    assert wrong_mask.exit_code == 2 and "stored mask hash" in wrong_mask.output


@pytest.mark.parametrize("args, words", [
    (("--mask-rect", "1,2,3"), "four whole numbers x0,y0,x1,y1"),
    (("--mask-rect", "10,10,80,20"), "does not fit the 64x64 init image"),
    (("--mask-rect", "30,10,20,20"), "is empty"),
    (("--mask-rect", "1,1,8,8", "--mask", "MASK"), "either --mask PATH or --mask-rect"),
    (("--strength", "0"), "strength: must be a number greater than 0"),
    (("--mask", "BLACK"), "mask: selects nothing"),
    (("--mask-blur", "-2", "--mask", "MASK"), "mask_blur: must be a whole number"),
])
def test_cli_bad_inputs_exit_2(tmp_path, files, args, words):
    args = [str(files["mask"]) if a == "MASK" else str(files["black"]) if a == "BLACK" else a
            for a in args]
    result = cli("generate", PROMPT, "-o", tmp_path / "x.png", "--init-image", files["init"],
                 "-m", tiny_model_dir("sd-l"), "-q", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
    no_init = cli("generate", PROMPT, "--mask-rect", "1,1,8,8", "-m", tiny_model_dir("sd-l"))
    assert no_init.exit_code == 2 and "--mask-rect needs --init-image" in no_init.output


def test_cli_mask_rect_inpaints_the_rectangle(tmp_path, files):
    cli_ok("generate", PROMPT, "-o", tmp_path / "r.png", "--init-image", files["init"],
           "--mask-rect", "16,16,40,40", "--strength", "1", "--steps", "2", "-m",
           tiny_model_dir("sd-l"), "-q")
    out, original = arr(Image.open(tmp_path / "r.png")), arr(Image.open(files["init"]))
    keep = keep_zone(masks.rect_mask((64, 64), BOX), 4)
    assert np.array_equal(out[keep], original[keep])
    assert np.abs(out - original)[22:34, 22:34].mean() > 10


# ------------------------------------------------------------------------------- batch
def batch_options(prompts: Path, out: Path, **kwargs) -> SynthesizeOptions:
    return SynthesizeOptions(prompts_file=prompts, out=out, steps=2, progress=False,
                             model=str(tiny_model_dir("sd-l")), **kwargs)


def test_batch_columns(tmp_path, engine):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    save(picture(), inputs / "init.png")
    save(masks.rect_mask((64, 64), BOX), inputs / "mask.png")
    rows = [{"prompt": PROMPT, "init_image": "", "mask": "", "strength": ""},
            {"prompt": PROMPT, "init_image": "inputs/init.png", "mask": "", "strength": "0.6"},
            {"prompt": PROMPT, "init_image": "inputs/init.png", "mask": "inputs/mask.png",
             "strength": "1"}]
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame(rows).to_csv(prompts, index=False)
    result = synthesize(batch_options(prompts, tmp_path / "out"), engine)
    assert result.complete and result.done == 3
    params = [read_png_parameters(tmp_path / "out" / "images" / f"{j:06d}.png") for j in range(3)]
    assert params[0].denoising_strength is None and params[0].init_image_hash is None
    assert params[1].denoising_strength == 0.6 and params[1].mask_hash is None
    assert params[2].mask_hash == image_hash(masks.rect_mask((64, 64), BOX))
    out = arr(Image.open(tmp_path / "out" / "images" / "000002.png"))
    keep = keep_zone(masks.rect_mask((64, 64), BOX), 4)
    assert np.array_equal(out[keep], arr(picture())[keep])
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert lines[2]["mask"] == "inputs/mask.png"  # carried as a label column


def test_batch_bad_rows_are_listed_and_nothing_is_written(tmp_path, engine):
    save(picture(), tmp_path / "init.png")
    rows = [{"prompt": PROMPT, "init_image": "init.png", "mask": "", "strength": "0.5"},
            {"prompt": PROMPT, "init_image": "nowhere.png", "mask": "", "strength": ""},
            {"prompt": PROMPT, "init_image": "init.png", "mask": "", "strength": "lots"},
            {"prompt": PROMPT, "init_image": "", "mask": "init.png", "strength": ""}]
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame(rows).to_csv(prompts, index=False)
    with pytest.raises(RequestError) as err:
        synthesize(batch_options(prompts, tmp_path / "out"), engine)
    text = str(err.value)
    assert "prompts.csv, row 2: init_image: cannot read" in text and "nowhere.png" in text
    assert "prompts.csv, row 3: strength: must be a number" in text and "'lots'" in text
    assert "prompts.csv, row 4: mask: needs an init_image" in text
    assert "row 1:" not in text and "3 of 4 rows rejected" in text
    assert not (tmp_path / "out").exists()
