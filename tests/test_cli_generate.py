"""CLI: synthex generate / info / compare (synthesize's CLI runs in test_batch's accelerate test)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from synthex.cli.generate import app, output_files, parse_lora, register
from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.engine import RequestError
from synthex.generate.infotext import read_png_parameters, read_png_text
from synthex.models.registry import LoraError
from tests.helpers_tiny import make_lora, one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

runner = CliRunner()
PROMPT = "Normal. (The lungs are clear:1.5) bilaterally, no effusion. Chest x-ray."


@pytest.fixture(autouse=True)
def _raise_through_the_boundary(monkeypatch):
    """The CLI prints a handled error as one line (tests/test_interop.py checks that); here the
    original exception is re-raised so tests can match its type."""
    from synthex.cli import boundary

    def report(err):
        raise err

    monkeypatch.setattr(boundary, "report", report)


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def gen(out: Path, *extra: str, kind: str = "sd-l"):
    return invoke("generate", PROMPT, "-o", out, "--steps", "2", "-m", tiny_model_dir(kind), "-q", *extra)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


# ------------------------------------------------------------------------------- helpers
def test_parse_lora():
    assert parse_lora("a/b.safetensors:0.8") == ("a/b.safetensors", 0.8)
    assert parse_lora("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora("opacity:-0.5") == ("opacity", -0.5)
    assert parse_lora(r"C:\loras\x.safetensors") == (r"C:\loras\x.safetensors", 1.0)


def test_output_files(tmp_path):
    assert output_files(tmp_path / "x.png", [5]) == [tmp_path / "x.png"]
    assert output_files(tmp_path / "x.png", [5, 6]) == [tmp_path / "x_00.png", tmp_path / "x_01.png"]
    assert output_files(f"{tmp_path}/new/", [5]) == [tmp_path / "new" / "synthetic_xray_5.png"]
    assert output_files(tmp_path, [9]) == [tmp_path / "synthetic_xray_9.png"]
    assert output_files(None, [1], tmp_path / "a.png") == [tmp_path / "a_regen.png"]
    assert output_files(tmp_path / "x.jpg", [1, 2]) == [tmp_path / "x_00.jpg", tmp_path / "x_01.jpg"]
    with pytest.raises(SynthexError, match=r"give a .png, .jpg, .jpeg or .webp file"):
        output_files(tmp_path / "x.tiff", [1])


def test_register_adds_top_level_commands():
    root = typer.Typer()

    @root.command()
    def version() -> None:
        """Existing command."""

    register(root)
    names = set(typer.main.get_command(root).commands)
    assert {"generate", "info", "synthesize", "compare", "version"} <= names


# ------------------------------------------------------------------------------- generate
def test_generate_writes_a1111_pngs_marked_synthetic(tmp_path):
    result = gen(tmp_path / "cxr.png", "--n", "2", "--seed", "41", "--negative", "lateral view",
                 "--sampler", "Euler a", "--cfg", "6.5")
    assert "cxr_00.png  seed 41" in result.output and "cxr_01.png  seed 42" in result.output
    params = read_png_parameters(tmp_path / "cxr_01.png")
    assert (params.prompt, params.negative_prompt, params.seed) == (PROMPT, "lateral view", 42)
    assert (params.steps, params.sampler, params.schedule_type, params.cfg_scale) == (2, "Euler a", None, 6.5)
    assert (params.width, params.height, params.model) == (64, 64, "sd-l") and params.model_hash
    assert params.extra["Version"].startswith("synthex-")
    text = read_png_text(tmp_path / "cxr_00.png")
    assert text["Synthetic"] == "true" and "research" in text["Disclaimer"]
    assert Image.open(tmp_path / "cxr_00.png").mode == "L"


def test_generate_refuses_to_overwrite(tmp_path):
    gen(tmp_path / "a.png", "--seed", "1")
    before = (tmp_path / "a.png").read_bytes()
    with pytest.raises(OutputExistsError, match="already exist"):
        gen(tmp_path / "a.png", "--seed", "2")
    assert (tmp_path / "a.png").read_bytes() == before
    gen(tmp_path / "a.png", "--seed", "2", "--overwrite")
    assert (tmp_path / "a.png").read_bytes() != before


def test_generate_into_folder_with_random_seed(tmp_path):
    result = gen(f"{tmp_path}/out/", "--seed", "-1")
    written = list((tmp_path / "out").glob("synthetic_xray_*.png"))
    assert len(written) == 1 and "(random)" in result.output
    seed = int(written[0].stem.rsplit("_", 1)[1])
    assert read_png_parameters(written[0]).seed == seed


def test_generate_reports_bad_values(tmp_path):
    with pytest.raises(RequestError, match="steps: must be a whole number"):
        gen(tmp_path / "a.png", "--steps", "0")
    with pytest.raises(SynthexError, match="give a PROMPT"):
        invoke("generate", "-o", tmp_path / "a.png")


@pytest.mark.parametrize("kind", ["sd-l", "sd"])
def test_from_png_is_bit_identical(tmp_path, kind):
    gen(tmp_path / "orig.png", "--seed", "1234", "--sampler", "DPM++ 2M SDE Karras", kind=kind)
    result = invoke("generate", "--from", tmp_path / "orig.png", "-o", tmp_path / "again.png",
                    "-m", tiny_model_dir(kind), "-q")
    assert "pixel-identical to" in result.output and ": yes" in result.output
    assert np.array_equal(pixels(tmp_path / "orig.png"), pixels(tmp_path / "again.png"))
    assert read_png_parameters(tmp_path / "again.png") == read_png_parameters(tmp_path / "orig.png")
    invoke("generate", "--from", tmp_path / "orig.png", "--seed", "99", "-o", tmp_path / "other.png",
           "-m", tiny_model_dir(kind), "-q")
    assert read_png_parameters(tmp_path / "other.png").seed == 99


def test_from_png_with_lora(tmp_path):
    lora = make_lora(tmp_path / "opacity.safetensors", seed=3)
    gen(tmp_path / "orig.png", "--seed", "5", "--lora", f"{lora}:0.6", kind="sd")
    assert read_png_parameters(tmp_path / "orig.png").loras["opacity"][1] == 0.6
    assert read_png_parameters(tmp_path / "orig.png").prompt == f"{PROMPT} <lora:opacity:0.6>"
    with pytest.raises(LoraError, match="(?s)'opacity'.*no such file.*known LoRA names.*pass their files again"):
        invoke("generate", "--from", tmp_path / "orig.png", "-m", tiny_model_dir("sd"), "-q")
    invoke("generate", "--from", tmp_path / "orig.png", "--lora", f"{lora}:0.6",
           "-m", tiny_model_dir("sd"), "-q")
    assert np.array_equal(pixels(tmp_path / "orig.png"), pixels(tmp_path / "orig_regen.png"))


# ------------------------------------------------------------------------------- info
def test_info_prints_parameters(tmp_path):
    gen(tmp_path / "a.png", "--seed", "3")
    result = invoke("info", tmp_path / "a.png")
    assert result.output.startswith(PROMPT) and "Seed: 3" in result.output
    assert "Synthetic: true" in result.output
    data = json.loads(invoke("info", tmp_path / "a.png", "--json").output)
    assert data["parameters"]["seed"] == 3 and data["text"]["Synthetic"] == "true"


def test_info_errors_and_models(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(SynthexError, match="no 'parameters' text chunk"):
        invoke("info", tmp_path / "plain.png")
    listing = invoke("info", "--models").output
    assert "sdxl-base" in listing and "embedded (default)" in listing


# ------------------------------------------------------------------------------- compare
def test_compare_writes_figure_and_arrays(tmp_path):
    model = tiny_model_dir("sd-l")
    invoke("compare", "Chest x-ray. Normal.", "Chest x-ray. (Cardiomegaly:1.8).", "--seed", "11",
           "-o", tmp_path / "fig.png", "--steps", "2", "-m", model, "-q")
    for name in ("fig.png", "fig.npz", "fig_a.png", "fig_b.png"):
        assert (tmp_path / name).is_file(), name
    with Image.open(tmp_path / "fig.png") as figure:
        assert figure.size[0] > 600
    arrays = np.load(tmp_path / "fig.npz")
    assert int(arrays["seed"]) == 11 and arrays["a"].shape == arrays["diff"].shape == (64, 64)
    assert arrays["diff"].max() > 0
    assert np.allclose(arrays["heatmap"], np.clip(arrays["diff"] * 2, 0, 1))
    assert np.allclose(arrays["diff"], np.abs(arrays["a"].astype(float) - arrays["b"]) / 255)
    assert read_png_parameters(tmp_path / "fig_b.png").seed == 11

    invoke("compare", "Chest x-ray.", "Chest x-ray.", "--seed", "11", "-o", tmp_path / "same.png",
           "--steps", "2", "-m", model, "-q")
    assert not np.load(tmp_path / "same.npz")["diff"].any()
    with pytest.raises(OutputExistsError):
        invoke("compare", "a", "b", "-o", tmp_path / "same.png", "-m", model, "-q")


# ------------------------------------------------------------------------------- interoperability
def test_from_png_finds_the_lora_by_name_in_the_lora_dir(tmp_path, monkeypatch):
    lora = make_lora(tmp_path / "loras" / "opacity.safetensors", seed=3)
    monkeypatch.setenv("SYNTHEX_LORA_DIR", str(lora.parent))
    gen(tmp_path / "orig.png", "--seed", "5", "--lora", f"{lora}:0.6", kind="sd")
    result = invoke("generate", "--from", tmp_path / "orig.png", "-m", tiny_model_dir("sd"), "-q")
    assert ": yes" in result.output
    # an A1111-style prompt tag alone loads it too, with the tag's weight
    invoke("generate", f"{PROMPT} <lora:opacity:0.6>", "-o", tmp_path / "tag.png", "--seed", "5",
           "--steps", "2", "-m", tiny_model_dir("sd"), "-q")
    assert np.array_equal(pixels(tmp_path / "orig.png"), pixels(tmp_path / "tag.png"))


def test_jpeg_and_webp_output_hold_the_parameters(tmp_path):
    gen(tmp_path / "x.jpg", "--seed", "8")
    with Image.open(tmp_path / "x.jpg") as image:
        assert image.format == "JPEG"
    assert "Seed: 8" in invoke("info", tmp_path / "x.jpg").output
    gen(tmp_path / "w.webp", "--seed", "9", "--n", "2")
    with Image.open(tmp_path / "w_01.webp") as image:
        assert image.format == "WEBP"
    invoke("generate", "--from", tmp_path / "w_01.webp", "-o", tmp_path / "again.png",
           "-m", tiny_model_dir("sd-l"), "-q")
    assert read_png_parameters(tmp_path / "again.png").seed == 10


def test_clip_skip_and_schedule_type_round_trip(tmp_path):
    gen(tmp_path / "a.png", "--seed", "2", "--sampler", "Euler", "--schedule-type", "karras",
        "--clip-skip", "2", kind="sd")
    params = read_png_parameters(tmp_path / "a.png")
    assert (params.sampler, params.schedule_type, params.clip_skip) == ("Euler", "Karras", 2)
    result = invoke("generate", "--from", tmp_path / "a.png", "-m", tiny_model_dir("sd"), "-q")
    assert ": yes" in result.output
    assert read_png_parameters(tmp_path / "a_regen.png") == params


def test_negative_prompt_line_is_always_written(tmp_path):
    gen(tmp_path / "a.png", "--seed", "1")
    assert "\nNegative prompt:\n" in read_png_text(tmp_path / "a.png")["parameters"]


def test_help_shows_defaults():
    import re

    text = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "250"}).output
    for default in ("20", "7", "DPM++ 2M Karras", "1", "random", "embedded", "automatic"):
        assert re.search(rf"default: \(?{re.escape(default)}\)?\]", text), default
    assert "--schedule-type" in text and "--clip-skip" in text


def test_foreign_sampler_needs_an_override(tmp_path):
    path = tmp_path / "a1111.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", f"{PROMPT}\nNegative prompt: text\nSteps: 2, Sampler: DPM++ 2S a, "
                                "Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 64x64, Model: sd-l")
    Image.new("L", (64, 64)).save(path, pnginfo=info)
    with pytest.raises(SynthexError, match="DPM\\+\\+ 2S a' is not supported"):
        invoke("generate", "--from", path, "-m", tiny_model_dir("sd-l"), "-q")
    invoke("generate", "--from", path, "--sampler", "Euler a", "-m", tiny_model_dir("sd-l"), "-q")
    assert read_png_parameters(tmp_path / "a1111_regen.png").sampler == "Euler a"


def test_negative_seeds_other_than_minus_one_are_refused(tmp_path):
    with pytest.raises(RequestError, match="seed: must be a whole number from 0 .* or -1/empty for random"):
        gen(tmp_path / "a.png", "--seed", "-2")
    assert not (tmp_path / "a.png").exists()
    model = tiny_model_dir("sd-l")
    result = invoke("compare", "a", "b", "--seed", "-1", "-o", tmp_path / "fig.png", "--steps", "1",
                    "-m", model, "-q")
    assert "(random)" in result.output
