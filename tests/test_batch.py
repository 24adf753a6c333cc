"""synthesize: prompts files, the job plan, imagefolder output, resume, 2 accelerate processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.batch import (
    SynthesizeOptions,
    plan_jobs,
    read_prompts,
    read_records,
    synthesize,
)
from synthex.generate.engine import Engine
from synthex.generate.infotext import read_png_text
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

ROWS = [
    {"prompt": "Chest x-ray. Normal. (The lungs are clear:1.5).", "label": "normal", "count": 2},
    {"prompt": "Chest x-ray. Cardiomegaly.", "label": "cardiomegaly", "count": 1},
    {"prompt": "Chest x-ray. Lung opacity at the right base.", "label": "opacity", "count": 2},
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture()
def prompts_csv(tmp_path) -> Path:
    path = tmp_path / "prompts.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    return path


def options(prompts: Path, out: Path, **kwargs) -> SynthesizeOptions:
    kwargs.setdefault("steps", 1)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("model", str(tiny_model_dir("sd-l")))
    return SynthesizeOptions(prompts_file=prompts, out=out, **kwargs)


def metadata(out: Path) -> tuple[pd.DataFrame, list[dict]]:
    frame = pd.read_csv(out / "metadata.csv")
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return frame, lines


# ------------------------------------------------------------------------------- prompt files
def test_reads_csv_and_jsonl(tmp_path, prompts_csv):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps({**r, "labels": [r["label"]]}) for r in ROWS) + "\n\n")
    assert list(read_prompts(prompts_csv)["label"]) == ["normal", "cardiomegaly", "opacity"]
    assert read_prompts(jsonl)["labels"][0] == ["normal"]


@pytest.mark.parametrize("name, content, words", [
    ("p.csv", "", "prompts file is empty"),
    ("p.csv", "prompt,label\n", "has no rows"),
    ("p.txt", "hello", "must be a .csv or .jsonl"),
    ("p.jsonl", '{"prompt": "a"}\n{oops\n', "line 2: not valid JSON"),
    ("p.jsonl", '["a"]\n', "line 1: each line must be a JSON object"),
])
def test_prompt_file_errors(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SynthexError, match=words) as err:
        plan_jobs(read_prompts(path), options(path, tmp_path / "out"), 0)
    assert str(path) in str(err.value)


def test_missing_prompt_column_names_file_and_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("caption,label\nx,normal\n")
    with pytest.raises(SynthexError, match=r"p.csv: no 'prompt' or 'text' column; columns found: caption, label"):
        plan_jobs(read_prompts(path), options(path, tmp_path), 0)


@pytest.mark.parametrize("count, words", [("two", "row 2, column 'count'"), ("-1", "row 2"), ("1.5", "row 2")])
def test_bad_counts_name_row_and_column(tmp_path, count, words):
    path = tmp_path / "p.csv"
    path.write_text(f"prompt,count\na,1\nb,{count}\n")
    with pytest.raises(SynthexError, match=words):
        plan_jobs(read_prompts(path), options(path, tmp_path), 0)


def test_other_plan_errors(tmp_path, prompts_csv):
    frame = read_prompts(prompts_csv)
    with pytest.raises(SynthexError, match="counts column 'n_images' not found"):
        plan_jobs(frame, options(prompts_csv, tmp_path, counts_column="n_images"), 0)
    with pytest.raises(SynthexError, match="per_class needs class_column"):
        plan_jobs(frame, options(prompts_csv, tmp_path, per_class=2, class_column="nope"), 0)
    with pytest.raises(SynthexError, match="only one of"):
        plan_jobs(frame, options(prompts_csv, tmp_path, per_class=2, per_prompt=1), 0)
    empty = tmp_path / "e.csv"
    empty.write_text("prompt,count\n ,1\n")
    with pytest.raises(SynthexError, match="row 1, column 'prompt': empty prompt"):
        plan_jobs(read_prompts(empty), options(empty, tmp_path), 0)


# ------------------------------------------------------------------------------- job plan
def test_plan_is_deterministic(prompts_csv, tmp_path):
    frame = read_prompts(prompts_csv)
    jobs = plan_jobs(frame, options(prompts_csv, tmp_path), 100)
    assert [j.row for j in jobs] == [0, 0, 1, 2, 2]
    assert [j.seed for j in jobs] == [100, 101, 102, 103, 104]
    assert [j.file_name for j in jobs][:2] == ["images/000000.png", "images/000001.png"]
    assert jobs[0].labels == {"label": "normal"}
    assert [j.row for j in plan_jobs(frame, options(prompts_csv, tmp_path, per_prompt=1), 0)] == [0, 1, 2]


def test_per_class_counts_round_robin(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"text": f"prompt {i}", "finding": f, "file_name": f"real/{i}.png"}
            for i, f in enumerate(["normal", "normal", "opacity"])]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    jobs = plan_jobs(read_prompts(path), options(path, tmp_path, per_class=3, class_column="finding"), 0)
    assert [j.row for j in jobs] == [0, 0, 1, 2, 2, 2]
    assert jobs[0].labels == {"finding": "normal", "source_image": "real/0.png"}


# ------------------------------------------------------------------------------- running
def test_builds_an_imagefolder(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    result = synthesize(options(prompts_csv, out, seed=7, negative_prompt="lateral view"), engine)
    assert (result.total, result.done, result.generated, result.complete) == (5, 5, 5, True)
    frame, lines = metadata(out)
    assert list(frame["file_name"]) == [f"images/{i:06d}.png" for i in range(5)]
    assert list(frame["seed"]) == [7, 8, 9, 10, 11]
    assert list(frame["label"]) == ["normal", "normal", "cardiomegaly", "opacity", "opacity"]
    assert frame["synthetic"].all() and (frame["prompt"] == frame["text"]).all()
    assert set(frame["negative_prompt"]) == {"lateral view"} and "count" not in frame.columns
    assert lines == json.loads(frame.to_json(orient="records")) or len(lines) == 5
    assert all(line["synthetic"] is True for line in lines)
    text = read_png_text(out / "images" / "000003.png")
    assert text["Synthetic"] == "true" and "Seed: 10" in text["parameters"]
    config = json.loads((out / "synthesize.json").read_text())
    assert config["base_seed"] == 7 and config["total"] == 5
    import os

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 5 and ds[3]["seed"] == 10


def test_resume_after_interruption_has_no_duplicate_or_lost_row(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    seen = []

    def crash_after_two(job):
        seen.append(job.index)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(options(prompts_csv, out), engine, on_image=crash_after_two)
    first_bytes = (out / "images" / "000000.png").read_bytes()

    steps = []

    def crash_mid_image(step, total, latents):  # dies inside the 2nd image of this run
        steps.append(step)
        if len(steps) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(options(prompts_csv, out), engine, step_callback=crash_mid_image)
    assert sorted(read_records(out)) == [0, 1, 2]
    # an image written but never recorded is made again, not counted twice
    (out / "images" / "000003.png").write_bytes(first_bytes)
    with (out / ".synthex" / "records-0.jsonl").open("a") as handle:
        handle.write('{"job": 4, "file_na')  # torn last line

    result = synthesize(options(prompts_csv, out), engine)
    assert result.complete and result.generated == 2 and result.done == 5
    frame, lines = metadata(out)
    assert list(frame["file_name"]) == [f"images/{i:06d}.png" for i in range(5)]
    assert len(lines) == 5 and frame["file_name"].is_unique
    assert (out / "images" / "000000.png").read_bytes() == first_bytes
    assert (out / "images" / "000003.png").read_bytes() != first_bytes

    fresh = tmp_path / "fresh"
    synthesize(options(prompts_csv, fresh), engine)
    for i in range(5):  # resumed images equal those of an uninterrupted run
        name = f"images/{i:06d}.png"
        assert (fresh / name).read_bytes() == (out / name).read_bytes()


def test_max_images_then_resume(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    partial = synthesize(options(prompts_csv, out, max_images=3), engine)
    assert (partial.done, partial.complete) == (3, False)
    assert len(metadata(out)[0]) == 3
    rest = synthesize(options(prompts_csv, out), engine)
    assert (rest.done, rest.generated, rest.complete) == (5, 2, True)


def test_resume_with_other_settings_is_refused(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    synthesize(options(prompts_csv, out, max_images=1), engine)
    with pytest.raises(OutputExistsError, match="other settings .*steps: 1 then, 2 now"):
        synthesize(options(prompts_csv, out, steps=2), engine)
    result = synthesize(options(prompts_csv, out, steps=2, max_images=1, overwrite=True), engine)
    assert result.done == 1 and json.loads((out / "synthesize.json").read_text())["steps"] == 2


def test_random_base_seed_is_kept_on_resume(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    synthesize(options(prompts_csv, out, seed=-1, max_images=2), engine)
    base = json.loads((out / "synthesize.json").read_text())["base_seed"]
    synthesize(options(prompts_csv, out, seed=-1), engine)
    assert list(metadata(out)[0]["seed"]) == [base + i for i in range(5)]


def test_foreign_folder_is_refused(tmp_path, prompts_csv, engine):
    out = tmp_path / "dataset"
    (out / "images").mkdir(parents=True)
    (out / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(OutputExistsError, match="not a synthesize run"):
        synthesize(options(prompts_csv, out), engine)


def _load_imagefolder(out: Path, cache: Path):
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(cache))


def test_prepare_output_as_prompts_loads_with_datasets(tmp_path, engine):
    """A metadata.csv from `synthex data prepare` (file_name, text, ...) as prompts: the output
    must not hold a second image column (source_file_name was one) and still load."""
    path = tmp_path / "prepared" / "metadata.csv"
    path.parent.mkdir()
    pd.DataFrame([{"file_name": f"images/{i}.png", "text": f"Chest x-ray. Finding {i}.", "uid": i,
                   "image_id": f"{i}_IM", "split": "train", "is_normal": i == 0, "labels": "normal",
                   "mesh": "normal", "projection": "Frontal", "width": 512, "xray_file_name": "x.png",
                   "image": "y.png"} for i in range(2)]).to_csv(path, index=False)
    out = tmp_path / "synthetic"
    synthesize(options(path, out, seed=3), engine)
    frame, _ = metadata(out)
    columns = list(frame.columns)
    assert "source_file_name" not in columns and not any(c.endswith("_file_name") for c in columns[1:])
    assert list(frame["source_image"]) == ["images/0.png", "images/1.png"]
    assert list(frame["source_width"]) == [512, 512] and list(frame["width"]) == [64, 64]
    assert list(frame["xray_file"]) == ["x.png", "x.png"] and "source_image_2" in columns
    ds = _load_imagefolder(out, tmp_path / "hf-cache")
    assert len(ds) == 2 and ds[1]["seed"] == 4 and ds[0]["image"].size == (64, 64)
    assert ds[0]["source_image"] == "images/0.png"


@pytest.mark.parametrize("change, words", [
    ({"steps": 0}, "steps: must be a whole number from 1 to 150"),
    ({"seed": "-5"}, "seed: must be a whole number from 0"),
    ({"sampler": "Euler b"}, "Unknown sampler 'Euler b'"),
    ({"model": "/no/such/model"}, "neither a preset"),
])
def test_refused_run_writes_nothing(tmp_path, prompts_csv, engine, change, words):
    out = tmp_path / "synthetic"
    with pytest.raises(SynthexError, match=words):
        synthesize(options(prompts_csv, out, **change), engine)
    assert not out.exists() or not any(out.iterdir())
    result = synthesize(options(prompts_csv, out, max_images=1), engine)  # the corrected command
    assert result.done == 1


def test_bad_row_is_refused_before_writing(tmp_path, engine):
    path = tmp_path / "p.csv"
    path.write_text("prompt\nChest x-ray.\nChest x-ray. <lora:nowhere:0.5>\n")
    out = tmp_path / "synthetic"
    with pytest.raises(SynthexError, match=r"p.csv, row 2: LoRA 'nowhere'"):
        synthesize(options(path, out), engine)
    assert not out.exists()


def test_random_seed_is_recorded(tmp_path, prompts_csv, engine):
    out = tmp_path / "synthetic"
    result = synthesize(options(prompts_csv, out, seed="-1", max_images=1), engine)
    config = json.loads((out / "synthesize.json").read_text())
    assert result.random_seed and result.base_seed == config["base_seed"] and config["random_seed"]
    assert metadata(out)[0]["seed"][0] == config["base_seed"]
    fixed = synthesize(options(prompts_csv, tmp_path / "fixed", seed=5, max_images=1), engine)
    assert not fixed.random_seed and fixed.base_seed == 5


def test_latin1_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,label\nÉpanchement pleural,effusion\n".encode("latin-1"))
    with pytest.raises(SynthexError, match=r"latin1.csv: not UTF-8 text .*save the file as UTF-8"):
        read_prompts(path)
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes('{"prompt": "Épanchement"}\n'.encode("latin-1"))
    with pytest.raises(SynthexError, match="latin1.jsonl: not UTF-8 text"):
        read_prompts(jsonl)
    bom = tmp_path / "excel.csv"  # Excel's "CSV UTF-8" starts with a byte-order mark
    bom.write_bytes("prompt,label\nÉpanchement,effusion\n".encode("utf-8-sig"))
    assert list(read_prompts(bom).columns) == ["prompt", "label"]


# ------------------------------------------------------------------------------- accelerate
@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate launcher not installed")
def test_two_processes_with_accelerate_launch(tmp_path, prompts_csv):
    out = tmp_path / "synthetic"
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher) if launcher.exists() else "accelerate", "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "synthex.cli.generate", "synthesize",
               "--prompts", str(prompts_csv), "--out", str(out), "--model",
               str(tiny_model_dir("sd-l")), "--steps", "1", "--quiet", "--device", "cpu"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    records = {rank: (out / ".synthex" / f"records-{rank}.jsonl").read_text().splitlines() for rank in (0, 1)}
    assert len(records[0]) == 3 and len(records[1]) == 2  # jobs 0,2,4 and 1,3
    frame, lines = metadata(out)
    assert list(frame["file_name"]) == [f"images/{i:06d}.png" for i in range(5)]
    assert list(frame["seed"]) == [0, 1, 2, 3, 4] and len(lines) == 5
    assert "5 of 5 images" in run.stdout
