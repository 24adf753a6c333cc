"""Pure helpers of the web app (synthex.ui.state): no Streamlit, no model."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from synthex.errors import SynthexError
from synthex.generate.infotext import GenerationParameters, read_png_text
from synthex.ui import state

THESIS_NORMAL = (
    "Normal. (The lungs are clear:1.5) bilaterally. There is no focal consolidation, pleural "
    "effusion, or pneumothorax. The cardiomediastinal silhouette is within normal limits. The "
    "osseous structures are unremarkable. Chest x-ray.")


def test_templates_hold_the_thesis_normal_text_verbatim_and_one_per_finding():
    found = state.templates()
    assert list(found)[0] == state.CUSTOM_TEMPLATE and found[state.CUSTOM_TEMPLATE] == ""
    assert found["Normal (Healthy)"] == THESIS_NORMAL
    for name in ("Cardiomegaly", "Lung opacity", "Pleural effusion", "Pneumothorax", "Atelectasis"):
        assert "chest x-ray" in found[name].lower()
    assert len(found) >= 10


@pytest.mark.parametrize("text, expected", [
    ("Cardiomegaly", "Cardiomegaly. Chest x-ray."),
    ("Cardiomegaly.  ", "Cardiomegaly. Chest x-ray."),
    ("Chest x-ray. Cardiomegaly.", "Chest x-ray. Cardiomegaly."),
    ("Normal. chest X-ray", "Normal. chest X-ray"),
    ("", ""),
])
def test_chest_xray_is_appended_when_missing(text, expected):
    assert state.ensure_suffix(text) == expected


def test_structured_prompt_uses_the_training_format():
    text = state.build_structured_prompt(["Pleural effusion"], "left", "moderate")
    assert text == "Chest x-ray. Pleural Effusion left. Moderate left pleural effusion."
    two = state.build_structured_prompt(["Cardiomegaly", "Lung opacity"], "right", "mild")
    assert two.startswith("Chest x-ray. Cardiomegaly. Opacity lung base right.")
    assert "Mild cardiomegaly." in two and "Mild right airspace opacity." in two
    assert state.build_structured_prompt([]).startswith("Chest x-ray. Normal.")
    assert "bilateral" in state.build_structured_prompt(["Pulmonary edema"])  # its only side
    with pytest.raises(SynthexError, match="unknown finding"):
        state.build_structured_prompt(["Broken leg"])


@pytest.mark.parametrize("text, seed", [("42", 42), (" 7 ", 7), ("", None), ("-1", None)])
def test_seed_text(text, seed):
    assert state.parse_seed_text(text) == (seed, [])


@pytest.mark.parametrize("text", ["abc", "4.2", "-5", "1e9", str(2**63)])
def test_invalid_seed_gives_a_message(text):
    seed, problems = state.parse_seed_text(text)
    assert seed is None and len(problems) == 1 and problems[0].startswith("Invalid seed")


def test_build_request_maps_every_control():
    controls = state.Controls(
        prompt="Cardiomegaly.", negative_prompt=" blurry ", steps=12, guidance=3.5, seed="9",
        sampler="Euler a", size="128x128", n=3, model="/m", loras=[("/l.safetensors", 0.4)])
    request, problems = state.build_request(controls)
    assert problems == []
    assert request.prompt == "Cardiomegaly. Chest x-ray." and request.negative_prompt == "blurry"
    assert (request.steps, request.guidance, request.seed, request.sampler) == (12, 3.5, 9, "Euler a")
    assert (request.width, request.height, request.n, request.model) == (128, 128, 3, "/m")
    assert list(request.loras) == [("/l.safetensors", 0.4)]
    native, _ = state.build_request(state.Controls(prompt="x", seed=""))
    assert native.width is None and native.seed is None


@pytest.mark.parametrize("prompt, seed, needle", [
    ("", "42", "Prompt is empty"),
    ("   ", "42", "Prompt is empty"),
    ("x" * 10_000, "42", "10,000 characters"),
    ("ok", "forty-two", "Invalid seed"),
])
def test_build_request_reports_bad_input(prompt, seed, needle):
    request, problems = state.build_request(state.Controls(prompt=prompt, seed=seed))
    assert request is None and any(needle in p for p in problems)


def test_model_and_lora_path_checks(tmp_path, monkeypatch):
    monkeypatch.setenv(state.ROOTS_ENV, str(tmp_path))
    assert "was not found" in state.check_model_path(str(tmp_path / "nope"))[0]
    assert "is empty" in state.check_model_path("  ")[0]
    (tmp_path / "model.ckpt").write_bytes(b"x")
    assert "not a .safetensors" in state.check_model_path(str(tmp_path / "model.ckpt"))[0]
    assert state.check_model_path(str(tmp_path)) == []
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.bin").write_bytes(b"x")
    rows = [(str(tmp_path / "a.safetensors"), 0.5), ("", 1.0), (str(tmp_path / "missing.safetensors"), 1.0),
            (str(tmp_path / "b.bin"), 1.0), (str(tmp_path), 1.0)]
    problems = state.check_lora_paths(rows)
    assert len(problems) == 3 and "/etc" not in str(state.allowed_roots()) and problems[0].startswith("LoRA 3:") and "LoRA 4:" in problems[1]
    assert state.active_loras(rows[:2], ["opacity"], 0.3) == [("opacity", 0.3),
                                                                (str(tmp_path / "a.safetensors"), 0.5)]


def test_model_choices_and_env_default(monkeypatch):
    monkeypatch.delenv(state.MODEL_ENV, raising=False)
    assert state.default_model("embedded") == "embedded"
    monkeypatch.setenv(state.MODEL_ENV, "/tiny")
    assert state.default_model("embedded") == "/tiny"
    assert state.model_choices(["embedded", "sdxl-base"], "embedded") == [
        "embedded", "sdxl-base", state.CUSTOM_MODEL]


def _params(seed: int = 5) -> GenerationParameters:
    return GenerationParameters(prompt="Chest x-ray. Cardiomegaly.", negative_prompt="noise", steps=10,
                                sampler="DPM++ 2M", schedule_type="Karras", cfg_scale=7.5, seed=seed,
                                width=64, height=64, model="tiny", loras={"a": ("abc", 0.5)})


def test_png_bytes_carry_metadata_and_upload_round_trip(tmp_path):
    data = state.png_bytes(Image.new("L", (8, 8), 128), _params())
    path = tmp_path / "x.png"
    path.write_bytes(data)
    text = read_png_text(path)
    assert text["Synthetic"] == "true" and text["Seed"] == "5" and text["Model"] == "tiny"
    assert text["Description"] == "Chest x-ray. Cardiomegaly." and "Software" in text
    assert "Steps: 10" in text["parameters"]
    params, problems = state.parameters_from_upload(data, "x.png")
    assert problems == [] and params.seed == 5 and params.prompt == "Chest x-ray. Cardiomegaly."
    assert state.download_name(5) == "synthetic_xray_0005.png"


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0JFIF"])
def test_uploads_that_are_not_pngs_give_a_message(data):
    params, problems = state.parameters_from_upload(data, "bad.jpg")
    assert params is None and len(problems) == 1 and "bad.jpg" in problems[0]


def test_upload_of_a_png_without_parameters():
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    params, problems = state.parameters_from_upload(buffer.getvalue(), "plain.png")
    assert params is None and "no 'parameters'" in problems[0]


def test_history_records_newest_first_and_capped():
    class Result:
        parameters = [_params(1), _params(2)]

    records = state.history_records(Result(), [b"1", b"2"])
    assert [r.seed for r in records] == [1, 2] and records[0].sampler == "DPM++ 2M Karras"
    assert records[0].size == "64x64" and records[0].loras == {"a": 0.5}
    history = state.add_history([], records)
    assert [r.seed for r in history] == [2, 1]
    assert len(state.add_history(history, records * 40, limit=50)) == 50
    assert "seed 2" in history[0].label


def test_cli_register_adds_the_ui_command():
    import typer
    from typer.testing import CliRunner

    from synthex.cli.ui import register, streamlit_command
    from synthex.ui import APP_PATH

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command keeps "ui" a named sub-command
        pass

    result = CliRunner().invoke(app, ["ui", "--help"])
    assert result.exit_code == 0 and "--port" in result.output
    command = streamlit_command(8765)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(APP_PATH)
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[command.index("--server.port") + 1] == "8765"


def test_allowed_roots_default_and_override(tmp_path, monkeypatch):
    from synthex.models.registry import ModelRegistry, embedded_dir

    monkeypatch.delenv(state.ROOTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    roots = state.allowed_roots(ModelRegistry())
    assert (tmp_path / "runs").resolve() in roots and embedded_dir().resolve() in roots
    assert state.allowed_path("runs/new-index", roots, must_exist=False) == (tmp_path / "runs/new-index").resolve()
    assert state.allowed_path("runs/../../etc", roots, must_exist=False) is None
    assert state.allowed_path("/etc/passwd", roots) is None
    other = tmp_path / "models"
    other.mkdir()
    monkeypatch.setenv(state.ROOTS_ENV, str(other))
    assert state.allowed_roots()[:2] == [other.resolve(), (tmp_path / "runs").resolve()]


def test_ui_command_checks_allow_root_and_warns_about_the_network(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from synthex.cli import ui as ui_cli

    calls = []
    monkeypatch.setattr(ui_cli.os, "execve", lambda exe, cmd, env: calls.append(env) or (_ for _ in ()).throw(
        typer.Exit(0)))
    app = typer.Typer()
    ui_cli.register(app)
    app.command("version")(lambda: None)
    bad = CliRunner().invoke(app, ["ui", "--allow-root", str(tmp_path / "no-such")])
    assert bad.exit_code != 0 and "not a folder" in str(bad.exception) + bad.output
    ok = CliRunner().invoke(app, ["ui", "--allow-root", str(tmp_path), "--address", "0.0.0.0"])
    assert ok.exit_code == 0, ok.output
    assert calls[-1][state.ROOTS_ENV] == str(tmp_path.resolve()) and "There is no login" in ok.output
