"""``synthex train base``: data checks, pure helpers, a tiny end-to-end run, exact resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from synthex.errors import DataSourceError, OutputExistsError, SynthexError  # noqa: E402
from synthex.models.embedded import EmbeddedArch  # noqa: E402
from synthex.train.data import load_imagefolder  # noqa: E402
from synthex.train.scratch import (  # noqa: E402
    BatchOrder,
    StepEvent,
    drop_captions,
    load_config,
    load_optimizer,
    lr_factor,
    save_optimizer,
    train_base,
)

CAPTIONS = ["No acute cardiopulmonary abnormality.", "Cardiomegaly.", "Right lower lobe opacity.",
            "Left pleural effusion."]


from tests.helpers_tiny import one_thread  # noqa: E402,F401 (autouse: torch on one thread)


def make_imagefolder(root: Path, n: int = 10, size: int = 32) -> Path:
    """``n`` training PNGs (alternating L and RGB) + 2 test rows, with captions."""
    rows = []
    for i in range(n + 2):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 255, (size, size), dtype=np.uint8)
        image = Image.fromarray(arr, mode="L")
        (root / "img").mkdir(parents=True, exist_ok=True)
        (image if i % 2 else image.convert("RGB")).save(root / "img" / f"{i}.png")
        rows.append({"file_name": f"img/{i}.png", "text": CAPTIONS[i % 4], "split": "train" if i < n else "test"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def tiny_config(**overrides):
    values = {
        "resolution": 32, "vocab_size": 600, "vae.max_steps": 4, "vae.batch_size": 2,
        "vae.checkpoint_every": 2, "unet.max_steps": 5, "unet.batch_size": 4, "unet.checkpoint_every": 2,
        "unet.validate_every": 0, "validation.steps": 2, "validation.seeds": [0, 1],
        "validation.prompts": ["cardiomegaly", "effusion"], "data_workers": 1,
    }
    values.update(overrides)
    cfg = load_config(None, values)
    cfg.arch = EmbeddedArch.tiny()
    return cfg


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "ds")


# ----------------------------------------------------------------------------- data
def test_missing_text_column_is_named(tmp_path):
    root = make_imagefolder(tmp_path / "ds", n=2)
    pd.read_csv(root / "metadata.csv").drop(columns=["text"]).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DataSourceError, match=r"\['text'\]"):
        load_imagefolder(root, 32)


def test_missing_metadata_or_folder_is_named(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        load_imagefolder(tmp_path / "nowhere", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="metadata.csv is missing"):
        load_imagefolder(tmp_path / "empty", 32)


def test_bad_rows_are_counted_listed_and_written(tmp_path, dataset):
    (dataset / "img" / "1.png").write_bytes(b"not a png")
    (dataset / "img" / "2.png").unlink()
    table = pd.read_csv(dataset / "metadata.csv")
    table.loc[3, "text"] = ""
    table.to_csv(dataset / "metadata.csv", index=False)
    data = load_imagefolder(dataset, 32)
    assert len(data) == 7 and len(data.rejects) == 3
    reasons = {r.file_name: r.reason for r in data.rejects}
    assert reasons["img/1.png"].startswith("unreadable image")
    assert reasons["img/2.png"] == "image file not found"
    assert reasons["img/3.png"] == "empty caption"
    with pytest.raises(DataSourceError, match="3 of 10 rows"):
        load_imagefolder(dataset, 32, strict=True)
    # the trainer lists them in the run's rejects.csv
    with pytest.raises(_Stop):
        train_base(dataset, tmp_path / "run", tiny_config(), progress=False, callback=_stop_at("vae", 1))
    listed = pd.read_csv(tmp_path / "run" / "rejects.csv")
    assert sorted(listed["file_name"]) == ["img/1.png", "img/2.png", "img/3.png"]


def test_images_become_square_grayscale_uint8(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    Image.fromarray(np.full((40, 60), 1000, dtype=np.uint16)).save(root / "wide16.png")
    Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "red.png")
    pd.DataFrame({"file_name": ["wide16.png", "red.png"], "text": ["a", "b"]}).to_csv(root / "metadata.csv", index=False)
    data = load_imagefolder(root, 16, split=None)
    assert data.images.shape == (2, 1, 16, 16) and data.images.dtype == torch.uint8
    assert int(data.images[0].float().mean()) == round(1000 / 257)
    assert data.pixels([0, 1]).min() >= -1 and data.pixels([0, 1]).max() <= 1


def test_unknown_split_is_refused(dataset):
    with pytest.raises(DataSourceError, match="split == 'validation'"):
        load_imagefolder(dataset, 32, split="validation")


# ----------------------------------------------------------------------------- helpers
def test_caption_dropout_empties_about_p_and_is_seeded():
    captions = [f"caption {i}" for i in range(20000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    rate = sum(c == "" for c in dropped) / len(captions)
    assert 0.09 < rate < 0.11
    assert dropped == drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    assert drop_captions(captions[:50], 0.0, torch.Generator()) == captions[:50]
    kept = [c for c in dropped if c]
    assert set(kept) <= set(captions)


def test_batch_order_visits_every_item_once_per_epoch():
    order = BatchOrder(seed=1, stage="unet", n_items=10, batch_size=5)
    first_epoch = torch.cat([order.indices(1), order.indices(2)])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert torch.equal(order.indices(3), BatchOrder(1, "unet", 10, 5).indices(3))


def test_lr_warms_up_then_decays():
    assert lr_factor(5, 100, 10, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(70, 100, 10, "constant", 0.1) == 1.0


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    load_optimizer(fresh, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    for k in a["state"][0]:
        assert torch.equal(torch.as_tensor(a["state"][0][k]), torch.as_tensor(b["state"][0][k]))


def test_unknown_config_key_is_named():
    with pytest.raises(SynthexError, match="vae.max_step"):
        load_config(None, {"vae.max_step": 3})


# ----------------------------------------------------------------------------- end to end
def test_tiny_run_makes_a_loadable_grayscale_pipeline(tmp_path, dataset):
    from diffusers import StableDiffusionPipeline

    events: list[StepEvent] = []
    result = train_base(dataset, tmp_path / "run", tiny_config(), progress=False, callback=events.append)
    assert result.n_images == 10 and not result.rejects
    assert [e.step for e in events if e.stage == "unet"] == [1, 2, 3, 4, 5]
    run = tmp_path / "run"
    for name in ("config.yaml", "training_log.csv", "validation.png", "samples/vae_reconstructions.png",
                 "pipeline/model_index.json", "pipeline/tokenizer/tokenizer.json"):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))
    from safetensors import safe_open

    with safe_open(str(run / "pipeline/text_encoder/model.safetensors"), framework="pt") as handle:
        assert all(k.startswith("text_model.") for k in handle.keys())  # transformers 4 and 5 both read these
    log = pd.read_csv(run / "training_log.csv")
    assert list(log.columns) == ["step", "stage", "loss", "lr", "seconds", "images_per_s"]
    assert log[log.stage == "vae"].step.tolist() == [1, 2, 3, 4]
    pipe = StableDiffusionPipeline.from_pretrained(str(result.pipeline_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(result.scaling_factor)
    image = pipe("right lower lobe opacity", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.mode == "L" and image.size == (32, 32)


class _Stop(Exception):
    pass


def _stop_at(stage: str, step: int):
    def callback(event: StepEvent) -> None:
        if event.stage == stage and event.step == step:
            raise _Stop()
    return callback


def test_interrupted_runs_resume_exactly(tmp_path, dataset):
    from safetensors.torch import load_file

    cfg = tiny_config()
    train_base(dataset, tmp_path / "straight", cfg, progress=False)
    for stage, step in (("vae", 3), ("unet", 3), ("unet", 5)):  # 3 and 5: after a checkpoint at 2 and 4
        with pytest.raises(_Stop):
            train_base(dataset, tmp_path / "resumed", cfg, resume=True, progress=False, callback=_stop_at(stage, step))
    train_base(dataset, tmp_path / "resumed", cfg, resume=True, progress=False)

    log = pd.read_csv(tmp_path / "resumed" / "training_log.csv")
    for stage, n in (("vae", 4), ("unet", 5)):
        assert log[log.stage == stage].step.tolist() == list(range(1, n + 1))
    straight = pd.read_csv(tmp_path / "straight" / "training_log.csv")
    assert np.allclose(straight.loss, log.loss, rtol=1e-5, atol=0)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a = load_file(str(tmp_path / "straight" / "pipeline" / part))
        b = load_file(str(tmp_path / "resumed" / "pipeline" / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_resume_with_another_config_is_refused(tmp_path, dataset):
    with pytest.raises(_Stop):
        train_base(dataset, tmp_path / "run", tiny_config(), progress=False, callback=_stop_at("vae", 1))
    with pytest.raises(SynthexError, match=r"unet.max_steps: 5 -> 4 \(a budget can be raised"):
        train_base(dataset, tmp_path / "run", tiny_config(**{"unet.max_steps": 4}), resume=True, progress=False)
    with pytest.raises(SynthexError, match=r"unet.lr: 0.0005 -> 0.001"):
        train_base(dataset, tmp_path / "run", tiny_config(**{"unet.lr": 1e-3}), resume=True, progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_base(dataset, tmp_path / "run", tiny_config(), progress=False)
    # validation settings and checkpoint frequency do not change the weights: allowed
    relaxed = tiny_config(**{"validation.seeds": [5], "unet.checkpoint_every": 3})
    result = train_base(dataset, tmp_path / "run", relaxed, resume=True, progress=False)
    assert result.pipeline_dir.is_dir()


def test_cli_dry_run_and_tiny_run(tmp_path, dataset):
    import yaml
    from typer.testing import CliRunner

    from synthex.cli.train import app

    cfg = tiny_config().to_dict()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    dry = runner.invoke(app, ["base", "--data", str(dataset), "--out", str(tmp_path / "run"), "--config",
                              str(tmp_path / "tiny.yaml"), "--max-steps-unet", "3", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert yaml.safe_load(dry.output)["unet"]["max_steps"] == 3
    assert not (tmp_path / "run").exists()
    done = runner.invoke(app, ["base", "--data", str(dataset), "--out", str(tmp_path / "run"), "--config",
                               str(tmp_path / "tiny.yaml"), "--max-steps-unet", "3", "--quiet"])
    assert done.exit_code == 0, done.output
    assert "pipeline:" in done.output and (tmp_path / "run" / "pipeline" / "model_index.json").is_file()
