"""Training hardening: the checkpoint reader with fallback, option and file validation, folder
kinds, the kohya metadata, the global random state."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 - one_thread is an autouse fixture
from typer.testing import CliRunner

from synthex.errors import ConfigError, DataSourceError, OutputExistsError, SynthexError
from synthex.io import addnet_hash, addnet_legacy_hash
from synthex.train.loop import LoopSpec, RunContext, TrainingLog, run_loop


# ------------------------------------------------------------------------------- checkpoint reader
@dataclass
class _Settings:
    max_steps: int = 6
    batch_size: int = 4
    lr: float = 1e-2
    warmup_steps: int = 1
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 2


def _loop_run(run_dir: Path, max_steps: int = 6, keep: int = 3, stop_at: int | None = None) -> dict:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 1, generator=gen)
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)

    def loss_fn(indices, g):
        return ((model(x[indices] + 0.1 * torch.randn(x[indices].shape, generator=g)) - y[indices]) ** 2).mean()

    def callback(event):
        if stop_at is not None and event.step == stop_at:
            raise KeyboardInterrupt

    spec = LoopSpec("toy", {"model": model}, [{"params": list(model.parameters()), "base_lr": 1e-2}], loss_fn, 16,
                    _Settings(max_steps=max_steps), ema_decay=0.9)
    ctx = RunContext(run_dir, 0, TrainingLog(run_dir / "training_log.csv"), keep, False, callback)
    run_dir.mkdir(parents=True, exist_ok=True)
    return {k: v.clone() for k, v in run_loop(spec, ctx)["model"].state_dict().items()}


def _truncate(path: Path, keep_bytes: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep_bytes is None else keep_bytes])


@pytest.mark.parametrize("broken", ["model.safetensors", "ema_model.safetensors", "optimizer.safetensors",
                                    "state.json"])
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, broken):
    straight = _loop_run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _loop_run(tmp_path / "run", stop_at=5)  # checkpoints at 2 and 4
    folder = tmp_path / "run" / "checkpoints" / "toy"
    _truncate(folder / "step_0000004" / broken, 0 if broken == "state.json" else None)
    with caplog.at_level(logging.WARNING):
        resumed = _loop_run(tmp_path / "run")
    text = caplog.text
    assert "step_0000004" in text and broken in text and "step_0000002" in text
    assert (folder / "unreadable_step_0000004").is_dir()  # kept aside, out of the way of pruning
    for key in straight:  # exact resume from the older checkpoint
        torch.testing.assert_close(straight[key], resumed[key], rtol=0, atol=0)


def test_no_readable_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _loop_run(tmp_path / "run", stop_at=5)
    folder = tmp_path / "run" / "checkpoints" / "toy"
    _truncate(folder / "step_0000004" / "model.safetensors")
    (folder / "step_0000002" / "state.json").write_text("")
    with pytest.raises(SynthexError, match=r"no readable checkpoint in .*toy.*step_0000004.*step_0000002"):
        _loop_run(tmp_path / "run")


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    from synthex.train.checkpoints import checkpoint_dirs, write_checkpoint

    folder = tmp_path / "c"
    (folder / "step_0000009").mkdir(parents=True)  # a stray newer folder (e.g. from another budget)
    for step in (2, 4, 6):
        write_checkpoint(folder, step, {}, lambda tmp: None, keep=1)
        assert (folder / f"step_{step:07d}").is_dir()
    assert [p.name for p in checkpoint_dirs(folder)] == ["step_0000006", "step_0000009"]


# ------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tests.test_lora import make_dataset

    return make_dataset(tmp_path_factory.mktemp("hard-data") / "ds")


def _lora_config(kind: str = "sd-l", **extra):
    from tests.test_lora import config

    return config(kind, **extra)


def test_lora_resume_skips_a_truncated_checkpoint_and_stays_exact(tmp_path, dataset, caplog):
    from synthex.train.lora import LORA_FILE, train_lora

    cfg = _lora_config(max_steps=4, checkpoint_every=2, keep_checkpoints=3, ema_decay=0.9, dropout=0.1,
                       validation_prompts=[], kohya=False)
    straight = train_lora(dataset, tmp_path / "a", cfg, progress=False)
    expected = load_file(str(straight.lora_file))
    ckpt = tmp_path / "a" / "checkpoints"
    _truncate(ckpt / "step_0000004" / "optimizer.safetensors")
    (tmp_path / "a" / LORA_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        resumed = train_lora(dataset, tmp_path / "a", cfg, resume=True, progress=False)
    assert "step_0000004" in caplog.text and "optimizer.safetensors" in caplog.text
    got = load_file(str(resumed.lora_file))
    for key in expected:
        torch.testing.assert_close(expected[key], got[key], rtol=1e-5, atol=1e-6)
    # every checkpoint unreadable: one error naming the folder
    for step in ("step_0000002", "step_0000004"):
        (ckpt / step / "state.json").write_text("")
    with pytest.raises(SynthexError, match="no readable checkpoint in .*checkpoints"):
        train_lora(dataset, tmp_path / "a", cfg, resume=True, progress=False)


def test_training_leaves_the_global_random_state_alone(tmp_path, dataset):
    from synthex.train.lora import train_lora

    torch.manual_seed(1234)
    before = torch.random.get_rng_state().clone()
    train_lora(dataset, tmp_path / "r", _lora_config(max_steps=2, dropout=0.1, validation_prompts=[]), progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_folder_of_the_other_trainer_is_named(tmp_path, dataset):
    from synthex.train.lora import train_lora
    from synthex.train.scratch import load_config, train_base

    lora_dir = tmp_path / "lora"
    train_lora(dataset, lora_dir, _lora_config(max_steps=1, validation_prompts=[]), progress=False)
    with pytest.raises(OutputExistsError, match=r"is a LoRA training folder.*resume it with `synthex train lora --resume`"):
        train_base(dataset, lora_dir, load_config(None, {"resolution": 32}), resume=True, progress=False)
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "config.yaml").write_text(json.dumps(load_config(None, {}).to_dict()))  # a base folder of old
    (base_dir / "state.json").write_text('{"done": []}')
    with pytest.raises(OutputExistsError, match=r"base-model training folder.*resume it with `synthex train base"):
        train_lora(dataset, base_dir, _lora_config(max_steps=1), resume=True, progress=False)


# ------------------------------------------------------------------------------- kohya export
def test_kohya_export_writes_kohya_metadata_and_hashes(tmp_path, dataset):
    from synthex.train.kohya import export_kohya
    from synthex.train.lora import train_lora

    run = tmp_path / "opacity-run"
    result = train_lora(dataset, run, _lora_config("sdxl", max_steps=3, kohya=True, train_text_encoder=True,
                                                    validation_prompts=[], alpha=8.0, noise_offset=0.05),
                        progress=False)
    with safe_open(str(result.kohya_file), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert all(isinstance(v, str) for v in meta.values())
    expected = {
        "ss_output_name": "opacity-run", "ss_network_module": "networks.lora", "ss_network_dim": "4",
        "ss_network_alpha": "4", "ss_v2": "False", "ss_base_model_version": "sdxl_base_v1-0",
        "ss_resolution": "(64, 64)", "ss_learning_rate": "0.01", "ss_unet_lr": "0.01", "ss_text_encoder_lr": "0.01",
        "ss_num_train_images": "12", "ss_batch_size_per_device": "2", "ss_gradient_accumulation_steps": "2",
        "ss_total_batch_size": "4", "ss_num_batches_per_epoch": "6", "ss_num_epochs": "1",
        "ss_max_train_steps": "3", "ss_steps": "3", "ss_lr_scheduler": "constant", "ss_lr_warmup_steps": "0",
        "ss_seed": "42", "ss_noise_offset": "0.05", "ss_mixed_precision": "no", "ss_cache_latents": "True",
        "ss_sd_model_name": "sdxl", "ss_max_grad_norm": "1.0", "ss_flip_aug": "False",
        "ss_optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)", "ss_num_reg_images": "0",
    }
    for key, value in expected.items():
        assert meta.get(key) == value, (key, meta.get(key))
    args = json.loads(meta["ss_network_args"])
    assert args["trained_alpha"] == "8.0" and args["alpha_folded"] == "true"
    tags = json.loads(meta["ss_tag_frequency"])
    assert list(tags) == ["ds"] and sum(tags["ds"].values()) == 12
    assert json.loads(meta["ss_dataset_dirs"]) == {"ds": {"n_repeats": 1, "img_count": 12}}
    assert float(meta["ss_training_started_at"]) > 0 and int(meta["ss_session_id"]) >= 0
    assert meta["synthex.family"] == "sdxl"  # our keys are kept
    # the hashes, the kohya way: the file re-saved with only its ss_* metadata
    ss_only = save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_model_hash"] == addnet_hash(ss_only) == addnet_hash(result.kohya_file)
    assert meta["sshs_legacy_hash"] == addnet_legacy_hash(ss_only)
    # a standalone export of the same file gives the same training metadata
    again = export_kohya(result.lora_file, tmp_path / "k.safetensors", name="my-lora")
    with safe_open(str(again), framework="pt") as fh:
        meta2 = fh.metadata()
    assert meta2["ss_output_name"] == "my-lora" and meta2["ss_tag_frequency"] == meta["ss_tag_frequency"]


def test_kohya_export_refuses_files_that_are_not_safetensors(tmp_path):
    from synthex.cli.train import app

    bad = tmp_path / "lora.safetensors"
    bad.write_text("not a safetensors file")
    runner = CliRunner()
    result = runner.invoke(app, ["export-kohya", str(bad), "--out", str(tmp_path / "k.safetensors")])
    assert result.exit_code == 2
    message = str(result.exception) if isinstance(result.exception, SynthexError) else result.output
    assert "not a readable .safetensors LoRA file" in message and str(bad) in message
    from synthex.train.kohya import export_kohya

    with pytest.raises(SynthexError, match="must end with .safetensors"):
        export_kohya(bad, tmp_path / "k.ckpt")


# ------------------------------------------------------------------------------- options and files
@pytest.mark.parametrize("override,match", [
    ({"resolution": 100}, "resolution 100 must be a positive multiple of 16"),
    ({"resolution": 0}, "resolution 0"),
    ({"unet.lr": float("nan")}, "unet.lr nan must be a finite number > 0"),
    ({"vae.lr": float("inf")}, "vae.lr inf"),
    ({"unet.batch_size": 0}, "unet.batch_size 0 must be >= 1"),
    ({"unet.ema_decay": 1.5}, r"unet.ema_decay 1.5 must be in \[0, 1\)"),
    ({"unet.noise_offset": -1.0}, "unet.noise_offset -1.0"),
    ({"seed": "abc"}, "seed is 'abc', which is not an integer"),
])
def test_base_options_are_validated(override, match):
    from synthex.train.scratch import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


@pytest.mark.parametrize("option,match", [
    ("learning_rate", "learning_rate nan must be a finite number > 0"),
    ("noise_offset", "noise_offset nan"),
    ("min_snr_gamma", "min_snr_gamma nan"),
    ("alpha", "alpha nan"),
    ("grad_clip", "grad_clip nan"),
    ("validation_guidance", "validation_guidance nan"),
])
def test_lora_numbers_are_validated(option, match):
    from synthex.train.lora import load_lora_config

    with pytest.raises(ConfigError, match=match):
        load_lora_config(None, {option: float("nan")})
    with pytest.raises(ConfigError, match="warmup_steps -1"):
        load_lora_config(None, {"warmup_steps": -1})


@pytest.mark.parametrize("text,match", [
    ("rank: [1, 2\n", r"is not valid YAML .*line"),
    ("- rank\n- 4\n", "must hold a mapping"),
    ("rank: four\n", "rank is 'four', which is not an integer"),
    ("learning_rate: fast\n", "learning_rate is 'fast', which is not a number"),
    ("target_modules: to_q\n", "target_modules is 'to_q', which is not a list of strings"),
])
def test_malformed_lora_config_names_the_key_and_file(tmp_path, text, match):
    from synthex.train.lora import load_lora_config

    path = tmp_path / "lora.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_lora_config(path)
    assert str(path) in str(err.value)


def test_yaml_numbers_in_e_notation_are_read_as_numbers(tmp_path):
    from synthex.train.lora import load_lora_config

    path = tmp_path / "lora.yaml"
    path.write_text("learning_rate: 1e-4\n")  # YAML 1.1 reads this as a string
    assert load_lora_config(path).learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize("text,match", [
    ("vae: 3\n", "vae is 3; it must be a mapping"),
    ("unet:\n  lr: quick\n", "unet.lr is 'quick', which is not a number"),
    ("[1, 2]\n", "must hold a mapping"),
    ("resolution: 100\n", "resolution 100 must be a positive multiple"),
])
def test_malformed_base_config_names_the_key_and_file(tmp_path, text, match):
    from synthex.train.scratch import load_config

    path = tmp_path / "base.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_latin1_metadata_csv_is_named(tmp_path):
    from synthex.train.data import read_metadata
    from synthex.train.scratch import load_config, train_base

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "metadata.csv").write_bytes("file_name,text\na.png,Cardiomégalie.\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"metadata.csv is not UTF-8 text .*line 2.*save it as UTF-8"):
        read_metadata(folder)
    with pytest.raises(DataSourceError, match="save it as UTF-8"):
        train_base(folder, tmp_path / "run", load_config(None, {"resolution": 32}), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written before the dataset was read


def test_cli_threads_and_empty_run_state_are_one_line_errors(tmp_path, dataset):
    from synthex.cli.train import app

    runner = CliRunner()
    result = runner.invoke(app, ["lora", "--data", str(dataset), "--out", str(tmp_path / "x"),
                                 "--threads", "-1", "--model", str(tiny_model_dir("sd-l"))])
    assert result.exit_code == 2
    import yaml

    from synthex.train.lora import train_lora

    run = tmp_path / "run"
    run.mkdir()
    cfg = _lora_config(max_steps=1)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "state.json").write_text("")
    with pytest.raises(SynthexError, match="state.json is empty or corrupt"):
        train_lora(dataset, run, cfg, resume=True, progress=False)


def test_truncated_cache_is_rebuilt(tmp_path, dataset, caplog):
    from synthex.train.lora import train_lora

    run = tmp_path / "run"
    train_lora(dataset, run, _lora_config(max_steps=1, validation_prompts=[]), progress=False)
    _truncate(run / "cache" / "latents.safetensors")
    with caplog.at_level(logging.WARNING):
        result = train_lora(dataset, run, _lora_config(max_steps=2, validation_prompts=[]), resume=True,
                            progress=False)
    assert "latents.safetensors is unreadable" in caplog.text and result.steps == 2
    assert load_file(str(run / "cache" / "latents.safetensors"))["mean"].shape[0] == 12


def test_training_rows_naming_files_outside_the_folder_are_rejected(tmp_path):
    """The one path check (paths.member_path) for every file a data file names."""
    import numpy as np
    from PIL import Image

    from synthex.train.data import load_imagefolder

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(tmp_path / "outside.png")
    (data / "metadata.csv").write_text("file_name,text\nimages/a.png,cardiomegaly\n../outside.png,effusion\n"
                                       f"{tmp_path / 'outside.png'},effusion\nimages\\a.png,normal\n")
    loaded = load_imagefolder(data, 32, split=None)
    assert loaded.file_names == ["images/a.png", "images\\a.png"]
    reasons = {r.file_name: r.reason for r in loaded.rejects}
    assert "climbs out" in reasons["../outside.png"] and "absolute" in reasons[str(tmp_path / "outside.png")]
