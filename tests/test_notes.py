"""Diagnosis -> note: condition text, data sources and rejects, the tokenizer, the embedding-space
diffusion model (loss, DDIM/DDPM, clamping, self-conditioning, guidance, per-row seeds), the
GPT-2 baseline, the trainer on the shared loop (exact resume, extension, folder checks), the
model folder, the resumable batch command and one-line errors for bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers_tiny import one_thread  # noqa: F401 - one_thread is an autouse fixture
from typer.testing import CliRunner

from synthex.cli import app
from synthex.errors import ConfigError, DataSourceError, OutputExistsError, SynthexError
from synthex.notes.data import build_tokenizer, condition_text, decode, encode, load_csv_pairs

runner = CliRunner()
TINY = {"arch.max_len": 16, "arch.cond_len": 8, "arch.emb_dim": 8, "arch.d_model": 32, "arch.layers": 1,
        "arch.heads": 2, "arch.diffusion_steps": 50, "batch_size": 4, "max_steps": 4, "checkpoint_every": 2,
        "warmup_steps": 0, "min_count": 1}
TINY_AR = {"model": "ar", "arch.max_len": 16, "arch.cond_len": 8, "arch.n_embd": 16, "arch.n_layer": 1,
           "arch.n_head": 2, "batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "warmup_steps": 0,
           "min_count": 1}
PAIRS = [("Cardiomegaly/mild", "The heart is mildly enlarged. No pleural effusion."),
         ("Pleural Effusion/right", "Small right pleural effusion. Heart size is normal."),
         ("normal", "The lungs are clear. No acute cardiopulmonary abnormality."),
         ("Pneumothorax/left", "Small left pneumothorax. No effusion.")]


def write_csv(path: Path, rows, header=("diagnosis", "note")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def notes_csv(tmp_path_factory) -> Path:
    rows = [(d, n, "train") for d, n in PAIRS * 3] + [(PAIRS[0][0], PAIRS[0][1], "test")]
    return write_csv(tmp_path_factory.mktemp("notes") / "medical_dataset.csv", rows, ("diagnosis", "note", "split"))


def config(**extra):
    from synthex.train.note import load_note_config

    return load_note_config(None, {**TINY, **extra})


def train(data, run: Path, resume: bool = False, stop_at: int | None = None, **extra):
    from synthex.train.note import load_note_config, train_note

    base = TINY_AR if extra.pop("ar", False) else TINY

    def callback(event):
        if stop_at is not None and event.step == stop_at:
            raise KeyboardInterrupt

    return train_note(data, run, load_note_config(None, {**base, **extra}), resume=resume, progress=False,
                      callback=callback)


@pytest.fixture(scope="module")
def trained(notes_csv, tmp_path_factory) -> Path:
    return train(notes_csv, tmp_path_factory.mktemp("run") / "run").model_dir


# ---------------------------------------------------------------------------------- condition
@pytest.mark.parametrize("text", ["Pleural Effusion/right", "right pleural effusion", "effusion, right",
                                  "Effusion on the right side"])
def test_phrasings_of_one_diagnosis_give_one_condition(text):
    assert condition_text(text) == "pleural effusion right"


def test_condition_keeps_grades_sides_unknown_terms_and_reads_russian():
    assert condition_text("Cardiomegaly/mild; Pleural Effusion/right") == "cardiomegaly mild ; pleural effusion right"
    assert condition_text("Opacity/lung/base/left") == "opacity left lower"
    assert condition_text("Thoracic Vertebrae/degenerative") == "thoracic vertebrae degenerative"
    assert condition_text("normal") == "normal"
    assert condition_text("умеренная кардиомегалия") == "cardiomegaly moderate"
    with pytest.raises(SynthexError, match="diagnosis is empty"):
        condition_text("   ")


# ---------------------------------------------------------------------------------- data
def test_csv_rejects_are_counted_and_named(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("Cardiomegaly", "Big heart."), ("", "x"), ("normal", " "),
                                          ("normal", "Clear lungs.")])
    data = load_csv_pairs(path)
    assert len(data.pairs) == 2
    assert data.rejects == [("row 3", "empty diagnosis"), ("row 4", "empty note")]
    assert {p.split for p in data.pairs} <= {"train", "val", "test"}


def test_csv_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(DataSourceError, match="no column 'note'.*--note-column"):
        load_csv_pairs(write_csv(tmp_path / "a.csv", [("x", "y")], ("diagnosis", "text")))
    with pytest.raises(DataSourceError, match="does not exist"):
        load_csv_pairs(tmp_path / "missing.csv")
    with pytest.raises(DataSourceError, match="split column has"):
        load_csv_pairs(write_csv(tmp_path / "b.csv", [("x", "y", "training")], ("diagnosis", "note", "split")))
    with pytest.raises(DataSourceError, match="no usable rows"):
        load_csv_pairs(write_csv(tmp_path / "c.csv", [("", "y")]))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataSourceError, match="UTF-8"):
        load_csv_pairs(tmp_path / "bin.csv")


def test_iu_pairs_are_split_by_patient_and_empty_reports_are_rejects():
    from synthex.notes.data import load_iu_pairs

    data = load_iu_pairs()
    assert len(data.pairs) + len(data.rejects) == 3851  # one report per patient (README: 3,851 common uids)
    assert data.rejects and all(why == "empty note" for _, why in data.rejects)
    uids = {s: {p.uid for p in data.split(s)} for s in ("train", "val", "test")}
    assert not (uids["train"] & uids["test"]) and not (uids["train"] & uids["val"])
    assert 0.65 < len(uids["train"]) / len(data.pairs) < 0.75


def test_tokenizer_round_trip():
    tok = build_tokenizer([n for _, n in PAIRS], min_count=1)
    assert [tok.id_to_token(i) for i in range(6)] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[NULL]"]
    ids, cut = encode(tok, PAIRS[1][1], 32)
    assert not cut and len(ids) == 32
    assert decode(tok, ids) == PAIRS[1][1]
    ids, cut = encode(tok, PAIRS[1][1], 4)
    assert cut and len(ids) == 4
    assert decode(tok, encode(tok, "zebra heart", 8)[0]) == "[UNK] heart"  # unknown words stay visible


# ---------------------------------------------------------------------------------- diffusion
def tiny_diffusion(**arch):
    from synthex.notes.diffusion import NoteDiffusion, NoteDiffusionArch, build_denoiser

    a = NoteDiffusionArch(max_len=12, cond_len=6, emb_dim=8, d_model=32, layers=1, heads=2, diffusion_steps=50, **arch)
    torch.manual_seed(0)
    return NoteDiffusion(build_denoiser(a, 40), a)


@pytest.mark.parametrize("arch", [{}, {"conditioning": "prefix"}, {"objective": "eps", "self_condition": False},
                                  {"schedule": "cosine", "cond_layers": 0}])
def test_diffusion_loss_trains_every_variant(arch):
    d = tiny_diffusion(**arch)
    ids, cond = torch.randint(6, 40, (4, 12)), torch.randint(6, 40, (4, 6))
    gen = torch.Generator().manual_seed(0)
    loss, parts = d.loss(ids, cond, gen)
    loss.backward()
    assert torch.isfinite(loss) and parts["mse"] > 0 and parts["nll"] > 0
    assert d.model.embedding.weight.grad.abs().sum() > 0  # the rounding term reaches the embeddings
    d.model.eval()
    out = d.sample(cond[:2], steps=5, gen=torch.Generator().manual_seed(1))
    assert out.shape == (2, 12) and out.dtype == torch.long


def test_ddim_is_deterministic_and_per_row_noise_is_independent_of_the_batch():
    d = tiny_diffusion()
    d.model.eval()
    cond = torch.randint(6, 40, (3, 6))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    a = d.sample(cond, steps=8, gen=gens())
    assert torch.equal(a, d.sample(cond, steps=8, gen=gens()))
    alone = d.sample(cond[1:2], steps=8, gen=[torch.Generator().manual_seed(2)])
    assert torch.equal(alone[0], a[1])
    ddpm1 = d.sample(cond, steps=8, sampler="ddpm", gen=torch.Generator().manual_seed(5))
    ddpm2 = d.sample(cond, steps=8, sampler="ddpm", gen=torch.Generator().manual_seed(6))
    assert not torch.equal(ddpm1, ddpm2)  # ancestral sampling draws fresh noise


def test_trace_guidance_and_sampler_errors():
    d = tiny_diffusion()
    d.model.eval()
    cond = torch.randint(6, 40, (2, 6))
    ids, trace = d.sample(cond, steps=10, trace_every=3, guidance=3.0, gen=torch.Generator().manual_seed(0))
    assert [t for t, _ in trace][0] == 50 and len(trace) == 4 and torch.equal(trace[-1][1], ids)
    with pytest.raises(ConfigError, match="sampler 'plms'"):
        d.sample(cond, steps=3, sampler="plms")


def test_clamped_x0_is_always_a_token_embedding():
    d = tiny_diffusion()
    x = torch.randn(2, 12, 8)
    for rounding in ("logits", "l2"):
        ids, emb = d.nearest(x, rounding)
        assert torch.equal(emb, d.model.embedding.weight[ids])
    exact = d.model.embedding.weight[torch.tensor([[7, 8, 9]])]
    assert d.nearest(exact, "l2")[0].tolist() == [[7, 8, 9]]
    clamped = d.sample(torch.randint(6, 40, (2, 6)), steps=4, clamp=True, rounding="l2",
                       gen=torch.Generator().manual_seed(0))
    assert clamped.shape == (2, 12)
    with pytest.raises(ConfigError, match="rounding 'cosine'"):
        d.sample(torch.randint(6, 40, (1, 6)), steps=2, rounding="cosine")


def test_diffusion_learns_the_note_of_each_diagnosis(tmp_path):
    """A tiny model overfits four pairs: each diagnosis gets its own note back (DDIM 20 steps)."""
    rows = [(d, n, "train") for d, n in PAIRS] * 4
    data = write_csv(tmp_path / "four.csv", rows, ("diagnosis", "note", "split"))
    result = train(data, tmp_path / "run", **{"max_steps": 300, "lr": 3e-3, "batch_size": 8, "arch.d_model": 64,
                                              "arch.layers": 2, "arch.dropout": 0.0, "arch.cond_dropout": 0.0,
                                              "ema_decay": 0.0, "checkpoint_every": 300, "schedule": "constant"})
    from synthex.notes.model import NoteModel

    notes = NoteModel.load(result.model_dir).generate([d for d, _ in PAIRS], steps=20, guidance=1.0)  # no null branch trained
    right = sum(n.text == want for n, (_, want) in zip(notes, PAIRS))
    assert right >= 3, [n.text for n in notes]


# ---------------------------------------------------------------------------------- trainer
def test_resumed_run_matches_an_uninterrupted_one_and_extends(notes_csv, tmp_path):
    straight = train(notes_csv, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(notes_csv, tmp_path / "b", stop_at=3)  # killed in step 3; the step-2 checkpoint is there
    resumed = train(notes_csv, tmp_path / "b", resume=True)
    wa, wb = (load_file(str(r.model_dir / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = list(csv.DictReader((tmp_path / "b" / "training_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[0]["mse"] and rows[0]["nll"]
    longer = train(notes_csv, tmp_path / "b", resume=True, max_steps=6)
    assert longer.steps == 6 and json.loads((longer.model_dir / "note_model.json").read_text())["step"] == 6
    data = json.loads((tmp_path / "b" / "data.json").read_text())
    assert data["train_pairs"] == 12 and data["truncated"] == 0


def test_run_folder_checks(notes_csv, tmp_path):
    train(notes_csv, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(notes_csv, tmp_path / "run")
    with pytest.raises(SynthexError, match="different configuration.*arch.layers"):
        train(notes_csv, tmp_path / "run", resume=True, **{"arch.layers": 2})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="not empty"):
        train(notes_csv, tmp_path / "other")
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown arch keys.*widht"):
        config(**{"arch.widht": 3})
    with pytest.raises(ConfigError, match="arch.conditioning 'side'"):
        config(**{"arch.conditioning": "side"})
    with pytest.raises(ConfigError, match="model 'lstm'"):
        config(model="lstm")
    with pytest.raises(ConfigError, match="lr"):
        config(lr=-1.0)


def test_ar_baseline_trains_generates_and_scores(notes_csv, tmp_path):
    from synthex.notes.ar import perplexity
    from synthex.notes.model import NoteModel

    result = train(notes_csv, tmp_path / "ar", ar=True)
    model = NoteModel.load(result.model_dir)
    assert model.kind == "ar"
    notes = model.generate(["Cardiomegaly/mild", "normal"], n=2, seed=3)
    assert len(notes) == 4 and all(n.sampler == "ar" and n.synthetic for n in notes)
    again = model.generate(["normal"], n=1, seed=4)  # note k=1 of the call above, alone
    assert again[0].text == notes[3].text
    ppl = perplexity(model.module, model.tok, ["cardiomegaly mild"], [PAIRS[0][1]], model.arch)
    assert 1.0 < ppl < 10 * model.tok.get_vocab_size()
    from transformers import GPT2LMHeadModel

    assert isinstance(model.module, GPT2LMHeadModel)


# ---------------------------------------------------------------------------------- model folder
def test_model_folder_is_labelled_synthetic_and_reproducible(trained):
    from synthex.notes.model import NoteModel

    body = json.loads((trained / "note_model.json").read_text())
    assert body["synthetic"] is True and body["kind"] == "diffusion" and "research" in body["intended_use"]
    model = NoteModel.load(trained)
    a = model.generate(["Cardiomegaly/mild", "normal"], n=2, seed=7, steps=5, trace_every=2)
    b = model.generate(["normal"], n=1, seed=8, steps=5)
    assert [n.seed for n in a] == [7, 8, 7, 8] and a[3].text == b[0].text
    assert a[0].trace and a[0].trace[-1][1] == a[0].text
    assert all(n.synthetic for n in a)


def test_broken_model_folders_are_clear_errors(trained, tmp_path):
    from synthex.notes.model import NoteModel

    with pytest.raises(SynthexError, match="not a note model folder"):
        NoteModel.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("note_model.json", "tokenizer.json"):
        (broken / name).write_bytes((trained / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(SynthexError, match="weights do not load"):
        NoteModel.load(broken)


# ---------------------------------------------------------------------------------- CLI
def test_cli_prints_notes_and_json(trained):
    result = runner.invoke(app, ["note", "Cardiomegaly/mild", "right pleural effusion", "--model", str(trained),
                                 "--steps", "5", "--trace", "2"])
    assert result.exit_code == 0, result.output
    assert "# Cardiomegaly/mild  (condition: cardiomegaly mild" in result.output and "synthetic" in result.output
    assert "t=  50:" in result.output
    result = runner.invoke(app, ["note", "normal", "--model", str(trained), "--steps", "5", "--json", "--n", "2"])
    records = json.loads(result.output)
    assert [r["seed"] for r in records] == [0, 1] and all(r["synthetic"] for r in records)


def test_batch_notes_resume_and_protect_files(trained, tmp_path):
    from synthex.notes.batch import NoteBatchOptions, write_notes
    from synthex.notes.model import NoteModel

    listing = tmp_path / "diagnoses.txt"
    listing.write_text("Cardiomegaly/mild\n\nnormal\nPleural Effusion/left\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["note", "--diagnoses", str(listing), "--out", str(out), "--model", str(trained), "--steps", "4", "-q"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "3 written" in first.output and "1 empty rows skipped: line 2" in first.output
    lines = (out / "notes.jsonl").read_text().splitlines()
    (out / "notes.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed while writing note 3
    again = runner.invoke(app, args)
    assert "1 written, 2 already there" in again.output, again.output
    with (out / "notes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["diagnosis"] for r in rows] == ["Cardiomegaly/mild", "normal", "Pleural Effusion/left"]
    assert all(r["synthetic"] == "True" for r in rows)
    with (out / "prompts.csv").open() as fh:
        prompts = list(csv.DictReader(fh))
    assert prompts[0]["prompt"].startswith("Chest x-ray. Cardiomegaly mild.") and prompts[0]["note"] == rows[0]["note"]
    other = runner.invoke(app, args + ["--seed", "5"])
    assert other.exit_code == 2 and "other options" in other.output
    (out / "mine.txt").write_text("keep")
    model = NoteModel.load(trained)
    result = write_notes(["normal"], NoteBatchOptions(out, seed=5, steps=4, overwrite=True), model)
    assert result.written == 1 and (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("args, message", [
    (["note"], "give a diagnosis"),
    (["note", "normal", "--sampler", "plms"], "--sampler 'plms'"),
    (["note", "--diagnoses", "x.txt"], "needs --out"),
    (["note", "normal", "--images"], "--images needs --out"),
    (["note", "normal", "--model", "no/such/folder"], "not a note model folder"),
    (["note", "  ", "--model", "MODEL"], "diagnosis is empty"),
    (["note", "normal", "--model", "MODEL", "--n", "0"], "--n must be >= 1"),
    (["note", "--diagnoses", "missing.csv", "--out", "o", "--model", "MODEL"], "does not exist"),
    (["train", "note", "--data", "missing.csv", "--out", "o"], "does not exist"),
    (["train", "note", "--out", "o", "--set", "arch.layers"], "KEY=VALUE"),
    (["train", "note", "--out", "o", "--model", "rnn"], "model 'rnn'"),
])
def test_bad_inputs_exit_2_with_one_line(args, message, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(trained) if a == "MODEL" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------------- pretrained
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT (WordPiece vocabulary of the test notes' words) saved as a local HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert") / "tiny-clinicalbert"
    folder.mkdir()
    words = sorted({w.strip(".,").lower() for _, n in PAIRS for w in n.split()} | {"heart", "##s", "effusion"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "/", ";", *words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(folder))
    return folder


def test_embeddings_from_a_local_pretrained_encoder(notes_csv, tiny_bert, tmp_path):
    from synthex.notes.data import load_tokenizer
    from synthex.notes.pretrained import word_vectors
    from synthex.train.note import _build

    cfg = config(pretrained_embeddings=str(tiny_bert))
    result = train(notes_csv, tmp_path / "run", pretrained_embeddings=str(tiny_bert))
    assert result.steps == 4
    tok = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    module = _build(cfg, tok)
    words = [tok.id_to_token(i) for i in range(6, tok.get_vocab_size())]
    want = word_vectors(tiny_bert, words, cfg.model_arch().emb_dim)
    assert torch.allclose(module.embedding.weight[6:], want)
    assert torch.allclose(want.std(0), torch.ones(want.shape[1]), atol=1e-4)  # the scale the noise assumes
    plain = _build(config(), tok)
    assert not torch.allclose(plain.embedding.weight[6:], want)


def test_missing_pretrained_encoder_is_one_clear_error(notes_csv, tiny_bert, tmp_path):
    with pytest.raises(SynthexError, match="does not exist.*nothing is downloaded"):
        train(notes_csv, tmp_path / "a", pretrained_embeddings=str(tmp_path / "nope"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    with pytest.raises(SynthexError, match="lacks model.safetensors"):
        train(notes_csv, tmp_path / "b", pretrained_embeddings=str(partial))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_damaged_batch_manifest_is_one_clear_error(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.json").write_text("{not json")
    result = runner.invoke(app, ["note", "normal", "--out", str(out), "--model", str(trained), "--steps", "3", "-q"])
    assert result.exit_code == 2 and "damaged" in result.output and "--overwrite" in result.output
