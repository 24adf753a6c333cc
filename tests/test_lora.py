"""train lora: SD / SDXL / embedded LoRAs with tiny models on phantom data; outputs, resume,
caches, kohya export, registry presets, bad input, 2 accelerate processes."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 - one_thread is an autouse fixture
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from synthex.errors import DataSourceError, OutputExistsError, SynthexError
from synthex.generate.engine import Engine, GenerationRequest
from synthex.models.registry import LoraError, ModelRegistry
from synthex.phantom.render import render_phantom
from synthex.train.lora import (
    LORA_FILE,
    LoraTrainConfig,
    LoraTrainingError,
    StepBatches,
    class_weights,
    export_kohya,
    lora_state_dicts,
    read_lora_metadata,
    train_lora,
)
from synthex.train.tblog import read_scalars

TRIGGER = "Lung opacity."


def make_dataset(root: Path, n: int = 12, size: int = 64, positives_every: int = 2) -> Path:
    """Phantom imagefolder: every ``positives_every``-th image has a right basal opacity."""
    (root / "images").mkdir(parents=True)
    rows = ["file_name,text,split,is_normal,labels"]
    for i in range(n):
        sick = i % positives_every == 1
        image = render_phantom("opacity right lower" if sick else "normal", i, size).image
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        text = f"Chest x-ray. {TRIGGER} Opacity lung base right." if sick else "Chest x-ray. Normal. The lungs are clear."
        rows.append(f"images/{i:03d}.png,{text},train,{not sick},{'opacity' if sick else 'normal'}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "prepare.json").write_text('{"options": {"preset": "opacity"}}')
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lora-data") / "ds")


def config(kind: str = "sd-l", **extra) -> LoraTrainConfig:
    values = dict(model=str(tiny_model_dir(kind)), max_steps=3, batch_size=2, gradient_accumulation=2, rank=4,
                  learning_rate=1e-2, checkpoint_every=2, validation_prompts=["Chest x-ray. Lung opacity."],
                  validation_seeds=[0, 1], validation_steps=2, data_workers=1)
    values.update(extra)
    return LoraTrainConfig(**values)


def generate(model: str, lora: Path | None, prompt: str = "Chest x-ray. Lung opacity.") -> np.ndarray:
    request = GenerationRequest(prompt=prompt, steps=2, seed=3, model=model, width=64, height=64,
                                loras=[(str(lora), 1.0)] if lora else [])
    return np.asarray(Engine().generate(request).images[0], dtype=np.float32)


# ------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("kind,text_encoder", [("sd-l", False), ("sd", True), ("sdxl", True)])
def test_lora_trains_saves_and_loads_in_the_engine(tmp_path, dataset, kind, text_encoder):
    out = tmp_path / "run"
    result = train_lora(dataset, out, config(kind, train_text_encoder=text_encoder), progress=False)
    assert result.lora_file == out / LORA_FILE and result.steps == 3 and result.n_images == 12
    tensors = load_file(str(result.lora_file))
    components = {k.split(".")[0] for k in tensors}
    expected = {"unet"} | ({"text_encoder"} if text_encoder else set()) | (
        {"text_encoder_2"} if text_encoder and kind == "sdxl" else set())
    assert components == expected
    ups = [v for k, v in tensors.items() if k.startswith("unet.") and (".lora.up." in k or "lora_B" in k)]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # B starts at zero: it moved
    attn = {k.split(".lora")[0].rsplit(".", 1)[-1] for k in tensors if k.startswith("unet.")}
    assert attn == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    meta = read_lora_metadata(result.lora_file)
    assert meta["synthex.rank"] == "4" and meta["synthex.steps"] == "3" and meta["synthex.trigger"] == TRIGGER
    assert meta["synthex.family"] == ("sdxl" if kind == "sdxl" else "sd") and len(meta["synthex.dataset_sha256"]) == 64
    model = str(tiny_model_dir(kind))
    assert np.abs(generate(model, result.lora_file) - generate(model, None)).max() > 0
    assert (out / "validation.png").is_file() and (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]


def test_alpha_is_folded_into_the_up_weights():
    from tests.helpers_tiny import unet
    from peft import LoraConfig

    model = unet()
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.fill_(1.0)
    state = lora_state_dicts({"unet": model}, LoraTrainConfig(rank=4, alpha=8, target_modules=["to_q"]))["unet"]
    ups = [v for k, v in state.items() if "lora_B" in k]
    assert ups and all(torch.all(v == 2.0) for v in ups)  # alpha / rank = 2


@pytest.mark.parametrize("kind", ["sd-l", "sdxl"])
def test_every_trained_weight_is_loaded_back(tmp_path, dataset, kind):
    """Extra targets (proj_in, feed-forward) and text-encoder LoRA: nothing is dropped on load."""
    from peft.utils import get_peft_model_state_dict

    from synthex.models.registry import LoraSpec

    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]
    result = train_lora(dataset, tmp_path / "run", config(kind, train_text_encoder=True, target_modules=targets),
                        progress=False)
    saved = load_file(str(result.lora_file))
    registry = ModelRegistry()
    loaded = registry.load(registry.resolve(str(tiny_model_dir(kind))))
    registry.apply_loras(loaded, [LoraSpec("x", result.lora_file, 1.0)])
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for component in components:
        state = get_peft_model_state_dict(getattr(loaded.pipe, component), adapter_name="x")
        mine = {k[len(component) + 1:]: v for k, v in saved.items() if k.startswith(component + ".")}
        assert len(state) == len(mine) > 0, component
        for key, value in mine.items():
            torch.testing.assert_close(state[key.replace(".weight", ".weight")], value)
    assert any("proj_in" in k for k in saved) and any("ff.net.2" in k for k in saved)


@pytest.mark.parametrize("kind", ["sd-l", "sdxl"])
def test_kohya_export_gives_the_same_images(tmp_path, dataset, kind):
    result = train_lora(dataset, tmp_path / "run", config(kind, train_text_encoder=True, kohya=True), progress=False)
    kohya = load_file(str(result.kohya_file))
    assert all(k.startswith(("lora_unet_", "lora_te")) for k in kohya)
    assert any(k.endswith(".alpha") for k in kohya) and any(k.endswith(".lora_up.weight") for k in kohya)
    model = str(tiny_model_dir(kind))
    with_kohya = generate(model, result.kohya_file)
    np.testing.assert_allclose(with_kohya, generate(model, result.lora_file), atol=1.0)
    assert np.abs(with_kohya - generate(model, None)).max() > 5.0  # the kohya copy is not ignored
    with pytest.raises(OutputExistsError):
        export_kohya(result.lora_file, result.kohya_file)
    with pytest.raises(SynthexError, match="does not exist"):
        export_kohya(tmp_path / "missing.safetensors", tmp_path / "out.safetensors")


def test_bf16_mixed_precision_keeps_lora_weights_in_float32(tmp_path, dataset):
    result = train_lora(dataset, tmp_path / "run", config("sd-l", mixed_precision="bf16", max_steps=2),
                        progress=False)
    with (tmp_path / "run" / "training_log.csv").open() as fh:
        assert all(np.isfinite(float(r["loss"])) for r in csv.DictReader(fh))
    tensors = load_file(str(result.lora_file))
    assert {v.dtype for v in tensors.values()} == {torch.float32}
    assert (tmp_path / "run" / "validation.png").is_file()


# ------------------------------------------------------------------------------- resume, caches
def test_killed_run_resumes_to_the_same_weights(tmp_path, dataset):
    cfg = config(max_steps=5, checkpoint_every=2, caption_dropout=0.3, min_snr_gamma=5.0, ema_decay=0.9,
                 noise_offset=0.05, dropout=0.1)
    straight = train_lora(dataset, tmp_path / "a", cfg, progress=False)

    def kill(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(dataset, tmp_path / "b", cfg, progress=False, callback=kill)
    assert not (tmp_path / "b" / LORA_FILE).exists()
    with pytest.raises(OutputExistsError, match="--resume"):
        train_lora(dataset, tmp_path / "b", cfg, progress=False)
    resumed = train_lora(dataset, tmp_path / "b", cfg, resume=True, progress=False)
    a, b = load_file(str(straight.lora_file)), load_file(str(resumed.lora_file))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with (tmp_path / "b" / "training_log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4, 5]
    with pytest.raises(LoraTrainingError, match="rank: 4 -> 8"):
        train_lora(dataset, tmp_path / "b", config(max_steps=5, checkpoint_every=2, caption_dropout=0.3,
                                                    min_snr_gamma=5.0, ema_decay=0.9, noise_offset=0.05,
                                                    dropout=0.1, rank=8), resume=True, progress=False)


def test_cached_and_uncached_paths_compute_the_same_loss(tmp_path, dataset):
    cached = train_lora(dataset, tmp_path / "c", config(max_steps=2), progress=False)
    plain = train_lora(dataset, tmp_path / "p", config(max_steps=2, cache_latents=False, cache_text=False), progress=False)
    assert (tmp_path / "c" / "cache" / "latents.safetensors").is_file() and not (tmp_path / "p" / "cache").exists()
    losses = [[float(r["loss"]) for r in csv.DictReader((d / "training_log.csv").open())] for d in (cached.run_dir, plain.run_dir)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-2)
    log = list(csv.DictReader((cached.run_dir / "training_log.csv").open()))
    assert all(float(r["peak_memory_mb"]) > 0 and float(r["images_per_s"]) > 0 for r in log)
    scalars = read_scalars(next((cached.run_dir / "tensorboard").glob("events.out.tfevents.*")))
    tb_loss = [v for step, tag, v in scalars if tag == "train/loss"]
    np.testing.assert_allclose(tb_loss, losses[0], rtol=1e-4)


def test_class_balanced_sampling():
    values = ["normal"] * 90 + ["opacity"] * 10
    weights = class_weights(values)
    assert weights[:90].sum() == pytest.approx(weights[90:].sum())
    batches = StepBatches(0, 100, 8, 2, 1, weights)
    drawn = torch.cat([batches(k).flatten() for k in range(1, 101)])
    share = float((drawn >= 90).float().mean())
    assert 0.4 < share < 0.6  # opacity is 10% of the data, half of the batches
    assert torch.equal(batches(7), StepBatches(0, 100, 8, 2, 1, weights)(7))  # a function of the step
    multi = class_weights(["a;b", "a", "a", "c"])
    assert multi[3] > multi[1]


# ------------------------------------------------------------------------------- registry
def test_register_adds_a_model_preset(tmp_path, dataset):
    result = train_lora(dataset, tmp_path / "run", config(register="my-opacity"), progress=False)
    registry = ModelRegistry()
    assert "my-opacity" in registry.names()
    spec = registry.resolve("my-opacity")
    assert [Path(lora.path) for lora in spec.loras] == [result.lora_file.resolve()]
    image = np.asarray(Engine(registry).generate(GenerationRequest(
        prompt="Chest x-ray. Lung opacity.", steps=2, seed=3, model="my-opacity", width=64, height=64)).images[0])
    np.testing.assert_allclose(image, generate(str(tiny_model_dir("sd-l")), result.lora_file), atol=1.0)
    assert np.abs(image - generate(str(tiny_model_dir("sd-l")), None)).max() > 5.0  # the preset applies it
    with pytest.raises(Exception, match="packaged preset"):
        train_lora(dataset, tmp_path / "run2", config(register="embedded"), progress=False)


def test_lora_for_another_base_is_refused(tmp_path, dataset):
    result = train_lora(dataset, tmp_path / "run", config("sdxl", max_steps=1), progress=False)
    with pytest.raises(LoraError, match="trained for the sdxl model"):
        generate(str(tiny_model_dir("sd-l")), result.lora_file)


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.csv").write_text("file_name,text,split\n")
    with pytest.raises(DataSourceError, match="no row with split"):
        train_lora(empty, tmp_path / "r1", config(), progress=False)
    nocap = tmp_path / "nocap"
    nocap.mkdir()
    (nocap / "metadata.csv").write_text("file_name,split\nimages/a.png,train\n")
    with pytest.raises(DataSourceError, match="lacks the column"):
        train_lora(nocap, tmp_path / "r2", config(), progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "images" / "000.png").write_bytes(b"not a png")
    (broken / "images" / "001.png").unlink()
    result = train_lora(broken, tmp_path / "r3", config(max_steps=1), progress=False)
    assert result.n_images == 10 and len(result.rejects) == 2
    rejects = (tmp_path / "r3" / "rejects.csv").read_text()
    assert "unreadable image" in rejects and "image file not found" in rejects
    for bad in (dict(rank=0), dict(lr_scheduler="sometimes"), dict(mixed_precision="fp8"), dict(crop="left")):
        with pytest.raises(LoraTrainingError):
            config(**bad).validate()
    with pytest.raises(LoraTrainingError, match="fp16 needs a CUDA GPU"):
        train_lora(dataset, tmp_path / "r4", config(mixed_precision="fp16"), progress=False)
    with pytest.raises(LoraTrainingError, match="do not match the UNet"):
        train_lora(dataset, tmp_path / "r5", config(target_modules=["no_such_layer"]), progress=False)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(LoraTrainingError, match="bitsandbytes"):
            train_lora(dataset, tmp_path / "r6", config(use_8bit_adam=True), progress=False)


# ------------------------------------------------------------------------------- CLI
def test_cli_train_lora_and_export(tmp_path, dataset):
    from synthex.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "lora", "--data", str(dataset), "--out", str(out), "--model", str(tiny_model_dir("sd-l")),
            "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation", "1", "--rank", "4", "--quiet",
            "--validation-prompt", "Chest x-ray. Lung opacity.", "--register", "cli-lora"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "LoRA:" in result.output and "registered model preset 'cli-lora'" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2  # one line, no traceback (the CLI's error boundary)
    assert again.exit_code == 2 and "--resume" in again.output
    kohya = runner.invoke(app, ["train", "export-kohya", str(out / LORA_FILE), "--out", str(tmp_path / "k.safetensors")])
    assert kohya.exit_code == 0 and (tmp_path / "k.safetensors").is_file()
    dry = runner.invoke(app, ["train", "lora", "--data", str(dataset), "--out", str(tmp_path / "x"),
                              "--config", "thesis-sdxl", "--dry-run"])
    assert dry.exit_code == 0 and "gradient_accumulation: 4" in dry.output and "use_8bit_adam: true" in dry.output


# ------------------------------------------------------------------------------- accelerate
@pytest.mark.skipif(not Path(sys.executable).with_name("accelerate").exists() and shutil.which("accelerate") is None,
                    reason="accelerate launcher not installed")
def test_two_processes_with_accelerate_launch(tmp_path, dataset):
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher) if launcher.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "synthex.cli",
               "train", "lora", "--data", str(dataset), "--out", str(out), "--model", str(tiny_model_dir("sd-l")),
               "--max-steps", "3", "--batch-size", "1", "--gradient-accumulation", "2", "--rank", "4",
               "--checkpoint-every", "2", "--quiet", "--validation-prompt", "Chest x-ray. Lung opacity."]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (out / LORA_FILE).is_file() and '"world_size": 2' in (out / "state.json").read_text()
    with (out / "training_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["images_per_s"]) > 0
    with pytest.raises(LoraTrainingError, match="started with 2"):
        train_lora(dataset, out, LoraTrainConfig(model=str(tiny_model_dir("sd-l")), max_steps=3, batch_size=1,
                                                 gradient_accumulation=2, rank=4, checkpoint_every=2,
                                                 validation_prompts=["Chest x-ray. Lung opacity."]),
                   resume=True, progress=False)
