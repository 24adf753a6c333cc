"""Search: relevance labels, ranking metrics and baselines, the dual encoder trainer (a loop
client: exact resume and extension), the incremental index, queries, outputs and evaluation.

Everything runs on a tiny dual encoder trained here for a few steps on 64 px phantoms."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthex.errors import ConfigError, OutputExistsError, SynthexError
from tests.helpers_tiny import one_thread  # noqa: F401 (autouse: torch on one thread)

CLASSES = [([], "Normal chest x-ray. The lungs are clear."),
           ([{"name": "pleural_effusion", "side": "left", "severity": "severe"}], "Large left pleural effusion."),
           ([{"name": "pleural_effusion", "side": "right", "severity": "severe"}], "Large right pleural effusion."),
           ([{"name": "cardiomegaly", "severity": "severe"}], "Severe cardiomegaly.")]


def tiny_config(**kw):
    from synthex.search.train import SearchTrainConfig

    base = dict(max_steps=4, batch_size=8, lr=2e-3, text_lr=2e-3, warmup_steps=1, schedule="constant",
                image_size=32, embed_dim=16,
                arch={"channels": [4, 8], "text_hidden": 16, "text_layers": 1, "text_heads": 2,
                      "text_intermediate": 32},
                init_image=None, init_text=None, freeze_image_stages=0, val_fraction=0.2, validate_every=2,
                checkpoint_every=2, workers=1, caption_columns=["caption_1"])
    base.update(kw)
    return SearchTrainConfig(**base)


def make_folder(root: Path, per_class: int = 5, size: int = 64) -> Path:
    from synthex.phantom.findings import Finding
    from synthex.phantom.render import render_phantom

    rows = []
    (root / "images").mkdir(parents=True)
    for c, (findings, text) in enumerate(CLASSES):
        for j in range(per_class):
            result = render_phantom([Finding.from_dict(f) for f in findings] or "normal", 100 * c + j, size)
            name = f"images/c{c}_{j}.png"
            Image.fromarray(result.image).save(root / name)
            rows.append({"file_name": name, "text": text, "caption_1": text.lower().rstrip("."),
                         "findings": json.dumps(findings), "split": "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("search-data"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    from synthex.search.train import train_search

    run = tmp_path_factory.mktemp("search-run") / "run"
    return train_search(data_dir, run, tiny_config(), progress=False)


@pytest.fixture(scope="module")
def model(trained):
    from synthex.search.model import load_search_model

    return load_search_model(trained.model_dir)


# ----------------------------------------------------------------------------------- labels
def test_label_keys_sides_and_families():
    from synthex.phantom.findings import Finding
    from synthex.search.labels import label_keys, query_relevant, same_labels, specific_keys

    bilateral = label_keys([Finding("pleural_effusion", "bilateral")])
    assert bilateral == {"pleural_effusion", "pleural_effusion:left", "pleural_effusion:right"}
    assert label_keys([]) == {"normal"}
    assert label_keys([Finding("pneumonia", "left")]) == {"opacity", "opacity:left"}  # family merge
    assert label_keys([Finding("edema")]) == {"edema"}  # bilateral-only findings carry no side key
    left = label_keys([Finding("pleural_effusion", "left"), Finding("cardiomegaly")])
    assert query_relevant(frozenset({"pleural_effusion", "pleural_effusion:left"}), left)
    assert not query_relevant(frozenset({"pleural_effusion:right"}), left)
    assert not query_relevant(frozenset({"normal"}), left) and query_relevant(frozenset({"normal"}), label_keys([]))
    assert not same_labels(left, bilateral)
    assert specific_keys(left) == {"pleural_effusion:left", "cardiomegaly"}


# ---------------------------------------------------------------------------------- metrics
def test_score_rankings_known_values_and_skipped_queries():
    from synthex.evaluate.retrieval import score_rankings

    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    relevant = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    m = score_rankings(scores, relevant, ks=(1, 2))
    assert m["n_queries"] == 2 and m["n_skipped"] == 1  # the third query has nothing relevant
    # query 1: relevant at ranks 1 and 3 -> AP (1 + 2/3) / 2; query 2: relevant at rank 4 -> AP 1/4
    assert m["MAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.25) / 2, abs=1e-6)
    assert m["MRR"] == pytest.approx((1 + 0.25) / 2, abs=1e-6)
    assert m["R@1"] == pytest.approx((0.5 + 0) / 2) and m["P@2"] == pytest.approx((0.5 + 0) / 2)
    with pytest.raises(SynthexError, match="same"):
        score_rankings(scores, relevant[:, :3])


def test_bm25_prefers_matching_and_rare_words():
    from synthex.evaluate.retrieval import bm25_scores

    docs = ["left pleural effusion", "right pleural effusion", "normal chest", "cardiomegaly and effusion"]
    s = bm25_scores(["left effusion", "cardiomegaly", "pneumothorax"], docs)
    assert s[0].argmax() == 0 and s[1].argmax() == 3
    assert not s[2].any()  # no shared word: every document scores 0


# ------------------------------------------------------------------------------------ model
def test_model_round_trip_and_bad_folder(trained, model, tmp_path):
    from synthex.search.model import load_search_model

    assert (trained.model_dir / "model.safetensors").is_file() and trained.parameters > 0
    again = load_search_model(trained.model_dir)
    texts = ["left pleural effusion", "normal"]
    assert np.allclose(again.embed_texts(texts), model.embed_texts(texts))
    emb = model.embed_images(np.zeros((3, 50, 50), np.uint8))
    assert emb.shape == (3, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with pytest.raises(SynthexError, match="empty"):
        model.embed_texts(["  "])
    with pytest.raises(SynthexError, match="not a search model folder"):
        load_search_model(tmp_path)
    cfg = json.loads((trained.model_dir / "config.json").read_text())
    cfg["bogus"] = 1
    bad = tmp_path / "bad"
    shutil.copytree(trained.model_dir, bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="bogus"):
        load_search_model(bad)


# ---------------------------------------------------------------------------------- trainer
def test_trainer_resume_and_extension_match_a_straight_run(data_dir, trained, tmp_path):
    """3 steps, then --resume to 4, gives the weights of the straight 4-step run."""
    from safetensors.torch import load_file

    from synthex.search.train import train_search

    run = tmp_path / "r"
    train_search(data_dir, run, tiny_config(max_steps=3), progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_search(data_dir, run, tiny_config(max_steps=4), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train_search(data_dir, run, tiny_config(max_steps=4, lr=1e-2), resume=True, progress=False)
    train_search(data_dir, run, tiny_config(max_steps=4), resume=True, progress=False)
    a = load_file(str(run / "model" / "model.safetensors"))
    b = load_file(str(trained.model_dir / "model.safetensors"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in b)
    log = pd.read_csv(run / "training_log.csv")
    assert list(log["step"]) == [1, 2, 3, 4]  # every step once
    assert (run / "validation.csv").is_file()
    with pytest.raises(ConfigError, match="lower"):
        train_search(data_dir, run, tiny_config(max_steps=2), resume=True, progress=False)


def test_trainer_rejects_bad_config():
    with pytest.raises(ConfigError, match="label_weight"):
        tiny_config(label_weight=1.5)
    with pytest.raises(ConfigError, match="init_image"):
        tiny_config(init_image="imagenet")
    from synthex.search.train import SearchTrainConfig

    with pytest.raises(ConfigError, match="unknown"):
        SearchTrainConfig.from_dict({"max_stepz": 3})


def test_soft_targets_share_mass_with_same_labels():
    import torch

    from synthex.search.train import soft_targets

    t = soft_targets(torch.tensor([0, 0, 1]), 0.5)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert t[0, 1] == pytest.approx(0.25) and t[0, 2] == 0 and t[2, 2] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ index
def test_index_is_incremental_and_lists_rejects(data_dir, model, tmp_path):
    from synthex.search.index import SearchIndex, build_index

    src = tmp_path / "src"
    shutil.copytree(data_dir, src)
    out = tmp_path / "idx"
    first = build_index(src, out, model, progress=False)
    assert (first.n_items, first.n_new, first.n_reused, first.layout) == (20, 20, 0, "imagefolder")
    again = build_index(src, out, model, progress=False)
    assert (again.n_new, again.n_changed, again.n_reused) == (0, 0, 20)
    # change one image's content, touch another without changing it, add a corrupt file, drop a row
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(src / "images/c0_0.png")
    os.utime(src / "images/c1_0.png", ns=(1, 1))
    (src / "images/broken.png").write_bytes(b"not a png")
    meta = pd.read_csv(src / "metadata.csv")
    extra = pd.DataFrame([{"file_name": "images/broken.png", "text": "x"}, {"file_name": "images/gone.png", "text": "y"}])
    pd.concat([meta.iloc[1:], extra]).to_csv(src / "metadata.csv", index=False)
    third = build_index(src, out, model, progress=False)
    assert (third.n_changed, third.n_removed, third.n_new) == (0, 1, 1)  # c0_0 row dropped; broken is new
    reasons = {r["file"]: r["reason"] for r in third.rejects}
    assert "missing" in reasons["images/gone.png"] and "unreadable" in reasons["images/broken.png"]
    index = SearchIndex(out)
    assert len(index) == 19 and index.meta["generation"] == 2  # the unchanged re-run kept generation 1
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "items-2.jsonl", "vectors-2.safetensors"]
    assert json.loads((out / "index.json").read_text())["rejects"] == third.rejects


def test_index_changed_content_is_reembedded(data_dir, model, tmp_path):
    from synthex.search.index import SearchIndex, build_index

    src = tmp_path / "src"
    shutil.copytree(data_dir, src)
    out = tmp_path / "idx"
    build_index(src, out, model, progress=False)
    before = SearchIndex(out).image[0].copy()
    Image.fromarray(np.full((64, 64), 10, np.uint8)).save(src / "images/c0_0.png")
    report = build_index(src, out, model, progress=False)
    assert (report.n_changed, report.n_reused) == (1, 19)
    assert not np.allclose(SearchIndex(out).image[0], before)


def test_index_resumes_from_pending_chunks(data_dir, model, tmp_path, monkeypatch):
    """A build killed after its first chunk keeps the old index and reuses the chunk next time."""
    from synthex.search import index as index_mod

    monkeypatch.setattr(index_mod, "CHUNK", 8)
    calls = {"n": 0}
    real = model.embed_images

    def dying(images, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(images, *a, **kw)

    monkeypatch.setattr(model, "embed_images", dying)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        index_mod.build_index(data_dir, out, model, progress=False)
    assert not (out / "index.json").exists() and len(list((out / "pending").glob("chunk-*.jsonl"))) == 1
    monkeypatch.setattr(model, "embed_images", real)
    embedded = []
    monkeypatch.setattr(model, "embed_images", lambda im, *a, **kw: embedded.append(len(im)) or real(im, *a, **kw))
    report = index_mod.build_index(data_dir, out, model, progress=False)
    assert report.n_items == 20 and sum(embedded) == 12  # the 8 of the first chunk were not redone
    assert not (out / "pending").exists()


def test_index_refuses_foreign_folders_and_other_models(data_dir, model, trained, tmp_path):
    from synthex.search.index import build_index
    from synthex.search.model import load_search_model

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a search index"):
        build_index(data_dir, foreign, model, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "idx"
    build_index(data_dir, out, model, progress=False)
    other = load_search_model(trained.model_dir)
    other.model_id = "someothermodel"
    with pytest.raises(SynthexError, match="--rebuild"):
        build_index(data_dir, out, other, progress=False)
    assert build_index(data_dir, out, other, rebuild=True, progress=False).n_new == 20
    with pytest.raises(SynthexError, match="not a folder"):
        build_index(tmp_path / "nope", tmp_path / "idx2", model, progress=False)


def test_plain_folder_reads_png_prompts(model, tmp_path):
    from synthex.generate.infotext import GenerationParameters, write_png
    from synthex.search.index import build_index

    src = tmp_path / "gen"
    write_png(Image.fromarray(np.zeros((40, 60), np.uint8)), src / "a.png", GenerationParameters(prompt="left effusion"))
    (src / "sub").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / "sub" / "b.jpg")
    (src / ".synthex").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / ".synthex" / "hidden.png")
    report = build_index(src, tmp_path / "idx", model, progress=False)
    assert (report.layout, report.n_items, report.n_reports) == ("plain", 2, 1)


# ------------------------------------------------------------------------------------ query
@pytest.fixture(scope="module")
def index(data_dir, model, tmp_path_factory):
    from synthex.search.index import SearchIndex, build_index

    out = tmp_path_factory.mktemp("search-index") / "idx"
    build_index(data_dir, out, model, progress=False)
    return SearchIndex(out)


def test_text_image_and_report_queries(index, model, data_dir):
    from synthex.search.query import search

    text = search(index, model, "left pleural effusion", k=5)
    assert [h.rank for h in text.hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(text.hits, text.hits[1:]))
    image = data_dir / "images/c1_0.png"
    similar = search(index, model, image=image, k=19)
    assert "images/c1_0.png" not in [h.key for h in similar.hits] and len(similar.hits) == 19
    reports = search(index, model, "cardiomegaly", k=3, mode="reports")
    assert len(reports.hits) == 3 and all(h.report for h in reports.hits)
    arr = search(index, model, image=np.zeros((64, 64, 3), np.uint8), k=2)
    assert len(arr.hits) == 2
    for bad in (dict(text="  "), dict(text="a", image=image)):
        with pytest.raises(SynthexError, match="exactly one"):
            search(index, model, k=3, **bad)
    with pytest.raises(SynthexError, match="--k"):
        search(index, model, "x", k=0)
    with pytest.raises(SynthexError, match="cannot read image"):
        search(index, model, image=data_dir / "metadata.csv", k=2)


def test_exact_and_faiss_backends_agree(index, model):
    faiss = pytest.importorskip("faiss")  # noqa: F841
    from synthex.search.index import SearchIndex

    q = model.embed_texts(["right pleural effusion"])
    a = index.top_k(q, 7)
    b = SearchIndex(index.folder, backend="faiss").top_k(q, 7)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0], atol=1e-5)


def test_results_files_and_contact_sheet(index, model, tmp_path):
    from synthex.search.query import contact_sheet, search, write_results

    result = search(index, model, "normal chest", k=4)
    csv_path = write_results(result, tmp_path / "r.csv")
    table = pd.read_csv(csv_path)
    assert list(table["rank"]) == [1, 2, 3, 4] and set(table["query"]) == {"normal chest"}
    body = json.loads(write_results(result, tmp_path / "r.json").read_text())
    assert body["model_id"] == model.model_id and len(body["hits"]) == 4
    with pytest.raises(OutputExistsError):
        write_results(result, csv_path)
    with pytest.raises(SynthexError, match=".csv or .json"):
        write_results(result, tmp_path / "r.txt")
    sheet = contact_sheet(result, tmp_path / "s.png", thumb=64, columns=2)
    with Image.open(sheet) as im:
        assert im.size == (128, 22 + 2 * (64 + 44)) and "search results" in im.info["Description"]


# ------------------------------------------------------------------------------- evaluation
def test_evaluate_index_has_every_task_and_baseline(index, model, tmp_path):
    from synthex.search.evaluate import Query, evaluate_index, write_evaluation

    queries = [Query("left pleural effusion", frozenset({"pleural_effusion", "pleural_effusion:left"}), "caption"),
               Query("big heart", frozenset({"cardiomegaly"}), "radiologist"),
               Query("pneumothorax", frozenset({"pneumothorax"}), "caption")]  # nothing relevant: skipped
    result = evaluate_index(index, model, queries, progress=False)
    tasks = {(r.task, r.relevance, r.method) for r in result.rows}
    for task in [("text -> image", "labels", "BM25 on reports"), ("image -> image", "labels", "classifier features"),
                 ("image -> report", "labels", "classifier + BM25"), ("image -> report", "exact pair", "dual encoder"),
                 ("report -> image", "exact pair", "random")]:
        assert task in tasks
    t2i = result.get("text -> image", "labels", "dual encoder")
    assert t2i["n_queries"] == 2 and t2i["n_skipped"] == 1
    assert result.get("text -> image", "labels", "BM25 on reports", "radiologist")["n_queries"] == 1
    i2i = result.get("image -> image", "labels", "random")
    assert 0.1 < i2i["MAP"] < 0.5  # 4 equal classes: about 0.25 for a random ranking
    paths = write_evaluation(result, tmp_path)
    assert "| text -> image | labels | dual encoder |" in paths["md"].read_text()
    assert len(pd.read_csv(paths["csv"])) == len(result.rows) and paths["png"].stat().st_size > 0
    with pytest.raises(OutputExistsError):
        write_evaluation(result, tmp_path)


def test_benchmark_set_is_resumable_and_refuses_other_options(tmp_path):
    from synthex.search.evaluate import BENCHMARK_CLASSES, build_benchmark_set

    out = tmp_path / "bench"
    summary = build_benchmark_set(out, per_class=1, size=32, workers=1, progress=False)
    assert summary["n_images"] == len(BENCHMARK_CLASSES)
    table = pd.read_csv(out / "metadata.csv")
    assert set(table["class"]) >= {"normal", "pleural_effusion:left", "pleural_effusion:right"}
    first = (out / table["file_name"][3]).read_bytes()
    (out / table["file_name"][0]).unlink()
    build_benchmark_set(out, per_class=1, size=32, workers=1, progress=False)
    assert (out / table["file_name"][0]).is_file() and (out / table["file_name"][3]).read_bytes() == first
    with pytest.raises(OutputExistsError, match="other options"):
        build_benchmark_set(out, per_class=2, size=32, workers=1, progress=False)


def test_packaged_queries_load_and_name_known_labels():
    from synthex.search.evaluate import BENCHMARK_CLASSES, load_queries

    queries = load_queries()
    classes = {f"{n}:{s}" if s else n for n, s in BENCHMARK_CLASSES}
    assert {q.style for q in queries} == {"caption", "radiologist"}
    for q in queries:
        assert max(q.labels, key=len) in classes, q
    assert len({max(q.labels, key=len) for q in queries}) == len(classes)  # every class is queried


# ------------------------------------------------------------------------------------- CLI
def test_cli_index_query_eval(data_dir, trained, tmp_path):
    from typer.testing import CliRunner

    from synthex.cli import app

    runner = CliRunner()
    idx = tmp_path / "idx"
    res = runner.invoke(app, ["search", "index", str(data_dir), "--out", str(idx), "--model", str(trained.model_dir),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    assert "20 images (imagefolder layout)" in res.output
    res = runner.invoke(app, ["search", "query", str(idx), "right pleural effusion", "--k", "3",
                              "--out", str(tmp_path / "hits.json"), "--sheet", str(tmp_path / "hits.png")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "hits.json").read_text())["hits"]) == 3 and (tmp_path / "hits.png").is_file()
    res = runner.invoke(app, ["search", "eval", str(idx), "--out", str(tmp_path / "ev"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "retrieval.md").is_file()


# ------------------------------------------------------------------------------------- web app
def test_web_app_search_tab(index, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from synthex.ui import APP_PATH

    monkeypatch.setenv("SYNTHEX_SEARCH_INDEX", str(index.folder))
    at = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    assert not at.exception
    at.text_input(key="search_text").set_value("left pleural effusion").run()
    at.button(key="search_go").click().run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "**#1**" in shown and "**#10**" in shown and "left pleural effusion" in shown
    at.radio(key="search_mode").set_value("reports").run()
    at.slider(key="search_k").set_value(3).run()
    at.button(key="search_go").click().run()
    shown = " ".join(m.value for m in at.markdown)
    assert "**#3**" in shown and "**#4**" not in shown


# ------------------------------------------------------------------------------- paraphrases
@pytest.mark.parametrize("name", ["pleural_effusion", "opacity", "pneumothorax", "nodule", "atelectasis", "pacemaker",
                                  "central_line", "scoliosis", "elevated_hemidiaphragm", "calcified_granuloma"])
def test_paraphrases_always_name_the_side_and_never_the_other(name):
    import re

    from synthex.phantom.findings import Finding
    from synthex.search.paraphrase import paraphrase

    rng = np.random.default_rng(3)
    for side, other in (("left", "right"), ("right", "left")):
        for _ in range(40):
            text = paraphrase([Finding(name, side, severity=None)], rng).lower()
            words = set(re.findall(r"[a-z]+", text))
            assert side in words or side[0] in words, text
            assert other not in words and other[0] not in words and not ({"levo", "dextro"} & set(text.split())), text


def test_paraphrase_of_normal_and_of_several_findings():
    from synthex.phantom.findings import Finding
    from synthex.search.paraphrase import LEXICON, paraphrase

    from synthex.evaluate.data import text_findings

    rng = np.random.default_rng(0)
    for _ in range(20):  # a normal study's paraphrase names no finding (negations like "no effusion" are fine)
        assert text_findings(paraphrase([], rng))[0] == []
    texts = {paraphrase([Finding("cardiomegaly"), Finding("pacemaker", "left")], rng) for _ in range(30)}
    assert len(texts) > 20  # varied
    assert {"opacity", "nodule", "edema"} <= set(LEXICON)  # families the merged findings use


def test_init_from_copies_every_weight_and_checks_the_arch(trained):
    import torch

    from synthex.search.model import load_search_model
    from synthex.search.train import _tokenizer, build_model

    cfg = tiny_config(init_from=str(trained.model_dir))
    model = build_model(cfg, _tokenizer(cfg))
    ref = load_search_model(trained.model_dir).model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="architecture"):
        bigger = tiny_config(init_from=str(trained.model_dir), embed_dim=32)
        build_model(bigger, _tokenizer(bigger))
    with pytest.raises(ConfigError, match="paraphrase"):
        tiny_config(paraphrase=2)


def test_training_with_paraphrases_runs_and_is_reproducible(data_dir, tmp_path):
    from safetensors.torch import load_file

    from synthex.search.train import train_search

    a = train_search(data_dir, tmp_path / "a", tiny_config(max_steps=2, paraphrase=1.0), progress=False)
    b = train_search(data_dir, tmp_path / "b", tiny_config(max_steps=2, paraphrase=1.0), progress=False)
    c = train_search(data_dir, tmp_path / "c", tiny_config(max_steps=2, paraphrase=0.0), progress=False)
    wa, wb, wc = (load_file(str(r.model_dir / "model.safetensors")) for r in (a, b, c))
    assert all(torch_equal(wa[k], wb[k]) for k in wa)
    assert not all(torch_equal(wa[k], wc[k]) for k in wa)  # the paraphrased captions changed the text tower


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def test_evaluate_task_retrieval_and_bad_input_messages(data_dir, tmp_path):
    from typer.testing import CliRunner

    from synthex.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--task", "retrieval", "--real", str(data_dir), "--out", str(tmp_path / "e"),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    assert "| image -> image | labels | dual encoder |" in res.output
    res = runner.invoke(app, ["evaluate", "--task", "retrieval", "--out", str(tmp_path / "e2")])
    assert res.exit_code == 2 and "--real" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["search", "query", str(tmp_path / "nothing"), "effusion"])
    assert res.exit_code == 2 and "not a search index" in res.output


def test_kaggle_iu_layout_reports_and_mesh_labels(kaggle_dir, model, tmp_path):
    from synthex.search.index import SearchIndex, build_index

    (kaggle_dir / "images" / "images_normalized" / "5_IM-0005-2001.dcm.png").unlink()
    report = build_index(kaggle_dir, tmp_path / "idx", model, progress=False)
    assert report.layout == "iu" and report.n_items == 24  # 12 patients x 2 + patient 3's extra - 1 missing
    assert [r["file"] for r in report.rejects] == ["5_IM-0005-2001.dcm.png"]
    items = {it["key"].split("/")[-1]: it for it in SearchIndex(tmp_path / "idx").items}
    first = items["1_IM-0001-1001.dcm.png"]
    assert first["report"].startswith("The lungs are clear") and first["report"].endswith("Abnormal.")
    assert "cardiomegaly" in first["labels"] and "opacity:right" in first["labels"]
    assert items["2_IM-0002-1001.dcm.png"]["labels"] == "normal"


def test_russian_and_ukrainian_queries_are_searched_in_english(index, model):
    from synthex.search.query import search

    ru = search(index, model, "Умеренный плевральный выпот справа", k=5)
    assert ru.language == "ru" and ru.original == "Умеренный плевральный выпот справа"
    assert ru.query == "Chest x-ray. Pleural effusion right moderate."
    en = search(index, model, ru.query, k=5, lang="en")
    assert [h.key for h in ru.hits] == [h.key for h in en.hits]
    uk = search(index, model, "Помірний плевральний випіт праворуч", k=5)
    assert uk.language == "uk" and [h.key for h in uk.hits] == [h.key for h in en.hits]
    with pytest.raises(SynthexError, match="Latin letters"):
        search(index, model, "vypot sprava")
