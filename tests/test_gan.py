"""The GAN baseline: networks, losses, the trainer on the shared loop (log, samples, exact resume,
extension), the sampling command (infotext, metadata.csv that synthex evaluate reads, --prompts
labels, no overwriting) and one-line errors for bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tests.helpers_tiny import one_thread  # noqa: F401 - one_thread is an autouse fixture
from typer.testing import CliRunner

from synthex.cli import app
from synthex.errors import ConfigError, DataSourceError, OutputExistsError, SynthexError
from synthex.models.gan import GanArch, build_discriminator, build_generator, d_loss, g_loss, r1_penalty
from synthex.phantom.classifier import PHANTOM_LABELS

runner = CliRunner()
TINY = {"arch.resolution": 32, "arch.g_channels": 4, "arch.d_channels": 4, "arch.z_dim": 8,
        "arch.embed_dim": 4, "batch_size": 4, "max_steps": 6, "checkpoint_every": 2, "sample_every": 3,
        "sample_columns": 2}
TINY_CLI = ["--resolution", "32", "--batch-size", "4", "-q"]


def make_dataset(root: Path, n: int = 12) -> Path:
    """A prepared-dataset-shaped imagefolder of phantoms: text, mesh and split columns."""
    from synthex.phantom.render import render_phantom

    (root / "images").mkdir(parents=True)
    kinds = [("normal", "Chest x-ray. Normal.", "normal"),
             ("cardiomegaly", "Chest x-ray. Cardiomegaly. The heart is enlarged.", "Cardiomegaly"),
             ("pleural effusion left", "Chest x-ray. Pleural Effusion left.", "Pleural Effusion/left")]
    rows = [("file_name", "text", "split", "mesh")]
    for i in range(n):
        finding, text, mesh = kinds[i % 3]
        Image.fromarray(render_phantom(finding, i, 64).image).save(root / "images" / f"{i:03d}.png")
        rows.append((f"images/{i:03d}.png", text, "train" if i < n - 2 else "test", mesh))
    with (root / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("gan-data") / "ds")


def tiny_config(**extra):
    from synthex.train.gan import load_gan_config

    return load_gan_config(None, {**TINY, **extra})


def train(dataset: Path, run: Path, resume: bool = False, stop_at: int | None = None, **extra):
    from synthex.train.gan import train_gan

    def callback(event):
        if stop_at is not None and event.step == stop_at:
            raise KeyboardInterrupt

    return train_gan(dataset, run, tiny_config(**extra), resume=resume, progress=False, callback=callback)


def weights(run: Path) -> dict[str, torch.Tensor]:
    model = run / "model"
    return {**{f"g.{k}": v for k, v in load_file(str(model / "generator.safetensors")).items()},
            **{f"d.{k}": v for k, v in load_file(str(model / "discriminator.safetensors")).items()}}


def log_rows(run: Path) -> list[dict[str, str]]:
    with (run / "training_log.csv").open(newline="") as fh:
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan-run") / "run"
    train(dataset, run)
    return run


# ------------------------------------------------------------------------------- networks, losses
@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("conditional", [True, False])
def test_shapes(resolution, conditional):
    arch = GanArch(resolution=resolution, g_channels=2, d_channels=2, z_dim=8, embed_dim=4, conditional=conditional)
    g, d = build_generator(arch), build_discriminator(arch)
    y = torch.zeros(3, len(arch.labels)) if conditional else None
    x = g(torch.randn(3, 8), y)
    assert x.shape == (3, 1, resolution, resolution) and x.abs().max() <= 1
    assert d(x, y).shape == (3,)


def test_conditional_projection_head():
    torch.manual_seed(0)
    arch = GanArch(resolution=32, g_channels=4, d_channels=4, z_dim=8, embed_dim=4, spectral_norm=False)
    g, d = build_generator(arch).eval(), build_discriminator(arch).eval()
    x, k = torch.randn(2, 1, 32, 32), len(arch.labels)
    y = torch.zeros(2, k)
    y[0, 0] = y[1, 3] = y[1, 5] = 1
    phi = d.features(x)
    torch.testing.assert_close(d(x, torch.zeros(2, k)), d.head(phi).squeeze(1))
    torch.testing.assert_close(d(x, y) - d(x, torch.zeros(2, k)), (d.embed(y) * phi).sum(1))
    torch.testing.assert_close(d.embed(y)[1], d.embed.weight[:, 3] + d.embed.weight[:, 5])  # sum of embeddings
    z = torch.randn(2, 8)
    assert not torch.allclose(g(z, y), g(z, torch.zeros(2, k)))  # the labels reach the generator
    with pytest.raises(ValueError, match="needs labels"):
        d(x)


def test_spectral_norm_bounds_the_discriminator_layers():
    arch = GanArch(resolution=32, g_channels=4, d_channels=4, z_dim=8, embed_dim=4)
    d = build_discriminator(arch).train()
    for _ in range(30):  # power iterations run in training forwards
        d(torch.randn(2, 1, 32, 32), torch.zeros(2, len(arch.labels)))
    weight = d.convs[1].weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.0, abs=0.05)
    assert "parametrizations.weight.original" in "".join(d.state_dict())
    plain = build_discriminator(GanArch(resolution=32, g_channels=4, d_channels=4, spectral_norm=False))
    assert not any("parametrizations" in k for k in plain.state_dict())


@pytest.mark.parametrize("kind", ["non_saturating", "hinge"])
def test_losses_are_finite_and_r1_is_a_gradient_norm(kind):
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([-3.0, 0.5])
    assert torch.isfinite(d_loss(real, fake, kind)) and torch.isfinite(g_loss(fake, kind))
    if kind == "non_saturating":
        expected = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
        torch.testing.assert_close(d_loss(real, fake, kind), expected)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = (2 * x).flatten(1).sum(1)  # gradient 2 everywhere: ||grad||^2 = 4 * 16
    assert r1_penalty(logits, x).item() == pytest.approx(64.0)


# ------------------------------------------------------------------------------- training
def test_training_logs_gan_columns_samples_and_model(trained):
    with (trained / "training_log.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["step", "stage", "loss", "lr", "seconds", "images_per_s",
                                 "d_loss", "g_loss", "d_real", "d_fake", "r1"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        values = {k: float(r[k]) for k in ("d_loss", "g_loss", "d_real", "d_fake", "loss")}
        assert all(np.isfinite(list(values.values())))
        assert 0 <= values["d_real"] <= 1 and 0 <= values["d_fake"] <= 1
        assert values["loss"] == pytest.approx(values["d_loss"] + values["g_loss"], rel=1e-4)
    grids = sorted(p.name for p in (trained / "samples").iterdir())
    assert grids == ["step_000003.png", "step_000006.png"]
    with Image.open(trained / "samples" / "step_000006.png") as grid:  # one row per finding + normal, 2 columns
        assert grid.size == (2 * 32, (len(PHANTOM_LABELS) + 1) * (32 + 12))
    config = json.loads((trained / "model" / "config.json").read_text())
    assert config["labels"] == list(PHANTOM_LABELS) and config["arch"]["conditional"] is True
    assert config["label_source"] == "mesh" and config["step"] == 6
    assert config["label_counts"]["cardiomegaly"] == 3 and config["label_counts"]["pleural_effusion_left"] == 3
    ckpt = trained / "checkpoints" / "gan" / "step_0000006"
    assert {p.name for p in ckpt.iterdir()} == {"generator.safetensors", "discriminator.safetensors",
                                                "optimizer_g.safetensors", "optimizer_d.safetensors", "state.json"}


def test_labels_follow_the_metadata(dataset):
    from synthex.train.gan import load_gan_data

    data = load_gan_data(dataset, tiny_config())  # train split: 10 rows, from the mesh column
    names = list(PHANTOM_LABELS)
    assert data.label_source == "mesh" and len(data) == 10
    assert data.labels[0].sum() == 0  # normal = all zeros
    assert data.labels[1, names.index("cardiomegaly")] == 1 and data.labels[1].sum() == 1
    assert data.labels[2, names.index("pleural_effusion_left")] == 1 and data.labels[2].sum() == 1
    from_text = load_gan_data(dataset, tiny_config(label_source="text"))
    torch.testing.assert_close(from_text.labels, data.labels)
    plain = load_gan_data(dataset, tiny_config(**{"arch.conditional": False}))
    assert plain.label_source is None and plain.labels.sum() == 0


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(dataset, trained, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(dataset, run, stop_at=5)  # checkpoints at 2 and 4; step 5 is redone
    assert not (run / "model").exists()
    train(dataset, run, resume=True)
    straight, resumed = weights(trained), weights(run)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    assert log_rows(run) == log_rows(trained)  # every step once, the same values


def test_exact_resume_with_k_disc_and_r1(dataset, tmp_path):
    extra = {"k_disc": 2, "r1_gamma": 1.0, "max_steps": 4, "arch.spectral_norm": False}
    train(dataset, tmp_path / "a", **extra)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "b", stop_at=3, **extra)
    train(dataset, tmp_path / "b", resume=True, **extra)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(float(r["r1"]) > 0 for r in log_rows(tmp_path / "a"))


def test_a_larger_max_steps_extends_a_finished_run(dataset, trained, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, max_steps=4)
    train(dataset, run, resume=True, max_steps=6)
    straight, extended = weights(trained), weights(run)
    assert all(torch.equal(straight[k], extended[k]) for k in straight)
    assert [r["step"] for r in log_rows(run)] == ["1", "2", "3", "4", "5", "6"]
    with pytest.raises(SynthexError, match="max_steps can be raised on resume, not lowered"):
        train(dataset, run, resume=True, max_steps=5)
    with pytest.raises(SynthexError, match=r"lr: 0.0002 -> 0.001"):
        train(dataset, run, resume=True, lr=1e-3)
    with pytest.raises(OutputExistsError, match="--resume"):
        train(dataset, run)


def test_training_leaves_the_global_random_state_alone(dataset, tmp_path):
    torch.manual_seed(99)
    before = torch.random.get_rng_state().clone()
    train(dataset, tmp_path / "run", max_steps=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_existing_loop_clients_keep_their_log_and_checkpoint_files(tmp_path):
    from synthex.train.loop import LOG_COLUMNS, TrainingLog

    log = TrainingLog(tmp_path / "log.csv")
    log.append(1, "vae", 0.5, 1e-3, 0.1, 8)
    assert (tmp_path / "log.csv").read_text() == ",".join(LOG_COLUMNS) + "\n1,vae,0.5,0.001,0.1000,80.00\n"


# ------------------------------------------------------------------------------- sampling
def _sample(trained: Path, out: Path, *args: str):
    return runner.invoke(app, ["gan", "sample", "--model", str(trained / "model"), "--out", str(out), "-q", *args])


def test_sample_writes_pngs_with_infotext_and_metadata_evaluate_reads(trained, tmp_path):
    from synthex.evaluate.data import load_image_set
    from synthex.generate.infotext import read_image_parameters, read_image_text

    out = tmp_path / "s"
    result = _sample(trained, out, "--n", "10", "--labels", "effusion,cardiomegaly", "--seed", "7")
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{j:06d}.png" for j in range(10)]
    text = read_image_text(pngs[3])
    assert text["Synthetic"] == "true" and "not diagnosis" in text["Disclaimer"]
    params = read_image_parameters(pngs[3])
    assert params.seed == 10 and params.model == "run" and params.width == 32
    assert params.extra["Labels"] == "cardiomegaly pleural_effusion_right"
    images = load_image_set(out, "synthetic")
    assert len(images) == 10 and images.size == 32 and images.label_source == "text"
    expected = np.zeros(len(PHANTOM_LABELS), np.float32)
    expected[[PHANTOM_LABELS.index("cardiomegaly"), PHANTOM_LABELS.index("pleural_effusion_right")]] = 1
    assert (images.labels == expected).all()
    with (out / "metadata.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:6] == ["file_name", "prompt", "text", "prompt_language", "negative_prompt", "seed"]
    assert {"model", "model_hash", "width", "height", "synthetic", "gan_labels"} <= set(header)


def test_sampling_is_a_function_of_the_seed(trained, tmp_path):
    assert _sample(trained, tmp_path / "a", "--n", "3", "--seed", "5").exit_code == 0
    assert _sample(trained, tmp_path / "b", "--n", "3", "--seed", "4", "--batch-size", "2").exit_code == 0
    a = np.asarray(Image.open(tmp_path / "a" / "images" / "000000.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "images" / "000001.png"))  # seed 5 as well, another batch
    c = np.asarray(Image.open(tmp_path / "b" / "images" / "000000.png"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prompts_labels_are_parsed_like_evaluate_reads_them(trained, tmp_path):
    from synthex.evaluate.data import load_image_set
    from synthex.generate.batch import SynthesizeOptions, plan_jobs, read_prompts

    prompts = tmp_path / "prompts.csv"
    with prompts.open("w", newline="") as fh:
        csv.writer(fh).writerows([("prompt", "uid", "count"),
                                  ("Chest x-ray. Cardiomegaly. Left pleural effusion.", "a", "4"),
                                  ("Chest x-ray. Normal. The lungs are clear.", "b", "3"),
                                  ("Chest x-ray. Right lower lobe opacity. Pacemaker in place.", "c", "3")])
    out = tmp_path / "s"
    result = _sample(trained, out, "--prompts", str(prompts), "--seed", "100")
    assert result.exit_code == 0, result.output
    with (out / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    jobs = plan_jobs(read_prompts(prompts), SynthesizeOptions(prompts, out), 100)  # what synthesize would do
    assert [(r["file_name"], int(r["seed"]), r["prompt"]) for r in rows] == [(j.file_name, j.seed, j.prompt) for j in jobs]
    assert [r["uid"] for r in rows] == ["a"] * 4 + ["b"] * 3 + ["c"] * 3  # other columns carried, as synthesize
    assert rows[0]["gan_labels"] == "cardiomegaly;pleural_effusion_left"
    assert rows[4]["gan_labels"] == "normal"
    assert rows[7]["gan_labels"] == "opacity_right;pacemaker"
    images = load_image_set(out, "synthetic")
    names = list(PHANTOM_LABELS)
    for row, vec in zip(rows, images.labels):  # the labels evaluate reads are those the GAN was given
        assert (";".join(n for n, v in zip(names, vec) if v) or "normal") == row["gan_labels"]


def test_sample_never_overwrites_and_overwrite_touches_only_its_own_files(trained, tmp_path):
    out = tmp_path / "s"
    assert _sample(trained, out, "--n", "4").exit_code == 0
    before = (out / "images" / "000000.png").read_bytes()
    (out / "notes.txt").write_text("mine")
    result = _sample(trained, out, "--n", "4", "--seed", "9")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "images" / "000000.png").read_bytes() == before
    result = _sample(trained, out, "--n", "2", "--seed", "9", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]  # its stale ones go
    assert (out / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "metadata.csv").write_text("file_name,text\nimages/000000.png,x\n")
    result = _sample(trained, foreign, "--n", "2", "--overwrite")
    assert result.exit_code == 2 and "not written by 'synthex gan sample'" in result.output
    assert (foreign / "metadata.csv").read_text() == "file_name,text\nimages/000000.png,x\n"


# ------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def bad(tmp_path_factory, dataset) -> Path:
    root = tmp_path_factory.mktemp("gan-bad")
    (root / "nofiles").mkdir()
    (root / "nofiles" / "metadata.csv").write_text("file_name,text\nimages/a.png,Chest x-ray. Normal.\n")
    (root / "nolabels").mkdir()
    (root / "nolabels" / "metadata.csv").write_text("file_name,caption\na.png,x\n")
    (root / "bad.yaml").write_text("arch:\n  resolution: 64\n  widht: 3\n")
    (root / "list.yaml").write_text("- a\n")
    return root


@pytest.mark.parametrize("args, needle", [
    (["--data", "{r}/nowhere"], "does not exist"),
    (["--data", "{r}/nofiles"], "no usable image"),
    (["--data", "{r}/nolabels"], "lacks the column"),
    (["--data", "{d}", "--config", "{r}/bad.yaml"], "arch.widht"),
    (["--data", "{d}", "--config", "{r}/list.yaml"], "must hold a mapping"),
    (["--data", "{d}", "--config", "{r}/missing.yaml"], "does not exist"),
    (["--data", "{d}", "--resolution", "48"], "must be one of (32, 64, 128)"),
    (["--data", "{d}", "--k-disc", "0"], "k_disc 0 must be >= 1"),
    (["--data", "{d}", "--r1", "-1"], "r1_gamma"),
])
def test_train_gan_bad_inputs_exit_2_with_one_line(bad, dataset, args, needle):
    argv = ["train", "gan", "--out", str(bad / "out"), *TINY_CLI, *(a.format(r=bad, d=dataset) for a in args)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert needle in result.output and "Traceback" not in result.output, result.output
    assert not (bad / "out").exists()


def test_conditional_gan_needs_labels(tmp_path):
    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "images" / "a.png")
    (folder / "metadata.csv").write_text("file_name,text,caption\nimages/a.png,x,y\n")
    from synthex.train.gan import load_gan_data

    with pytest.raises(DataSourceError, match="--unconditional"):
        load_gan_data(folder, tiny_config(label_source="mesh"))
    with pytest.raises(ConfigError, match="label_source"):
        tiny_config(label_source="tags")


def test_train_gan_cli_trains_resumes_and_dry_runs(dataset, tmp_path):
    out = tmp_path / "run"
    base = ["train", "gan", "--data", str(dataset), "--out", str(out), *TINY_CLI, "--max-steps", "2", "--seed", "3"]
    result = runner.invoke(app, [*base, "--unconditional", "--no-spectral-norm", "--k-disc", "2", "--r1", "0.5",
                                 "--dry-run"])
    assert result.exit_code == 0 and "conditional: false" in result.output and "k_disc: 2" in result.output
    assert "spectral_norm: false" in result.output and "r1_gamma: 0.5" in result.output
    assert not out.exists()
    result = runner.invoke(app, [*base, "--unconditional"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model" / "config.json").read_text())["arch"]["conditional"] is False
    again = runner.invoke(app, [*base, "--unconditional"])
    assert again.exit_code == 2 and "--resume" in again.output
    longer = runner.invoke(app, [*base[:-4], "--max-steps", "3", "--seed", "3", "--unconditional", "--resume"])
    assert longer.exit_code == 0, longer.output
    assert json.loads((out / "model" / "config.json").read_text())["step"] == 3
    sample = _sample(out.parent / "run", tmp_path / "s", "--labels", "cardiomegaly")
    assert sample.exit_code == 2 and "unconditional" in sample.output


@pytest.mark.parametrize("args, needle", [
    (["--model", "{r}/nowhere"], "does not exist"),
    (["--model", "{r}"], "is not a GAN model folder"),
    (["--model", "{m}", "--labels", "banana"], "names none of the model's findings"),
    (["--model", "{m}", "--labels", "normal", "--prompts", "{r}/p.csv"], "not both"),
    (["--model", "{m}", "--prompts", "{r}/missing.csv"], "prompts file not found"),
    (["--model", "{m}", "--n", "0"], "--n 0 must be >= 1"),
])
def test_gan_sample_bad_inputs_exit_2_with_one_line(trained, tmp_path, args, needle):
    argv = ["gan", "sample", "--out", str(tmp_path / "o"), "-q",
            *(a.format(r=tmp_path, m=trained / "model") for a in args)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert needle in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o").exists()
