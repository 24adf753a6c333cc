"""Image -> structured report (issue 14): format, data, the tiny Idefics3 trainer (full, LoRA,
QLoRA), exact resume, inference, CLI, metrics. Tiny models built from configs; no hub."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthex.errors import SynthexError
from synthex.report.format import build_report, caption_text, case_demographics, parse_report

from tests.conftest import write_png

TINY_ARCH = {"image_size": 32, "patch_size": 8, "vision_hidden": 16, "vision_layers": 1, "vision_heads": 2,
             "text_hidden": 32, "text_layers": 1, "text_heads": 2, "intermediate": 64, "vocab_size": 300}
TARGETS = [
    build_report(["cardiomegaly"], caption_text("The heart is enlarged.", "Cardiomegaly.")),
    build_report(["right pleural effusion"], caption_text("Small right pleural effusion.", "Right effusion.")),
    build_report([], caption_text("The lungs are clear. No pleural effusion.", "Normal chest.")),
]


# ---------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------
def test_report_round_trips_through_the_four_fields_in_any_case():
    line = build_report(["mild cardiomegaly", "left opacity"], caption_text("heart is enlarged.", "cardiomegaly"))
    assert line.startswith("Image Labels: [thorax, radiology, chest x-ray, mild cardiomegaly, left opacity] | Gender:")
    for text in (line, line.lower()):
        rep = parse_report(text)
        assert rep.parsed and rep.labels == ["mild cardiomegaly", "left opacity"]
        assert rep.findings == "Heart is enlarged." and rep.impression == "Cardiomegaly"
        assert parse_report(rep.line()).labels == rep.labels
    assert rep.to_dict()["synthetic"] is True and "FINDINGS: Heart is enlarged." in rep.sections()


def test_unparsed_output_is_repaired_and_flagged_not_dropped():
    rep = parse_report("heart is normal. impression: no acute disease")
    assert not rep.parsed and rep.labels == [] and rep.findings == "Heart is normal."
    assert rep.impression == "No acute disease" and parse_report(rep.line()).parsed


@pytest.mark.parametrize("case, expected", [
    ("A 45-year-old woman with cough.", ("Female", "45")),
    ("67 y/o male, shortness of breath", ("Male", "67")),
    ("XXXX-year-old XXXX with chest pain.", ("Unknown", "Unknown")),
    ("Preop bariatric surgery.", ("Unknown", "Unknown")),
    ("He and his wife: she is 40 years old, he is 42 years old", ("Unknown", "Unknown")),
    ("", ("Unknown", "Unknown")),
])
def test_gender_and_age_come_from_the_case_never_the_model(case, expected):
    assert case_demographics(case) == expected
    invented = "Image Labels: [thorax] | Gender: Male | Age: 33 | Image Caption: Findings: clear."
    rep = parse_report(invented, case)
    assert (rep.gender, rep.age) == expected


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _multicare(tmp_path: Path, n: int = 12, bad: bool = True) -> Path:
    rows = []
    for k in range(n):
        write_png(tmp_path / "img" / f"{k}.png", 40, 40, seed=k)
        rows.append({"clinical_case": f"A {30 + k}-year-old man with cough, case {k}.", "image_path": f"img/{k}.png",
                     "expected_output": TARGETS[k % 3], "patient_id": f"p{k // 2}"})
    if bad:
        rows.append({"clinical_case": "x", "image_path": "img/missing.png", "expected_output": TARGETS[0], "patient_id": "q"})
        rows.append({"clinical_case": "x", "image_path": "img/0.png", "expected_output": " ", "patient_id": "q"})
    path = tmp_path / "cases.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_multicare_csv_counts_rejects_and_splits_by_patient(tmp_path):
    from synthex.report.data import load_report_data, patient_split

    data = load_report_data(_multicare(tmp_path))
    assert len(data.examples) == 12 and len(data.rejects) == 2
    assert any("missing.png is missing" in why for _, why in data.rejects)
    assert any("expected_output is empty" in why for _, why in data.rejects)
    by_patient = {}
    for e in data.examples:
        by_patient.setdefault(e.patient, set()).add(e.split)
    assert all(len(s) == 1 for s in by_patient.values())  # a patient's images stay in one split
    shares = [patient_split(f"id{k}", 0) for k in range(2000)]
    assert abs(shares.count("train") / 2000 - 0.7) < 0.05 and abs(shares.count("test") / 2000 - 0.2) < 0.05
    with pytest.raises(SynthexError, match="clinical_case, image_path, expected_output"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        load_report_data(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def phantom_prepared(tmp_path_factory) -> Path:
    from synthex.data.pipeline import PrepareOptions, prepare
    from synthex.phantom.dataset import BuildOptions, build_dataset

    root = tmp_path_factory.mktemp("ph")
    build_dataset(BuildOptions(str(root / "ph"), n=16, size=64, seed=3, progress=False))
    prepare(root / "ds", PrepareOptions(source=str(root / "ph"), preset="unbalanced", size=32, mode="L",
                                        progress=False, card=False))
    return root / "ds"


def test_phantom_targets_say_what_was_drawn(phantom_prepared):
    from synthex.phantom.labels import text_findings
    from synthex.report.data import load_report_data

    data = load_report_data(phantom_prepared)
    assert data.examples and data.counts["reports_kept_whole"] + data.counts.get("reports_rewritten", 0) == len(data.examples)
    for e in data.examples:
        rep = parse_report(e.target)
        assert rep.parsed and rep.gender in ("Unknown", "Male", "Female")
        drawn = {f.name for f in e.truth_findings()}
        assert {f.name for lab in rep.labels for f in text_findings(lab)[0]} == drawn
        assert len(rep.labels) == len(e.truth)


# ---------------------------------------------------------------------------------------------
# training, resume, inference
# ---------------------------------------------------------------------------------------------
def _cfg(**over):
    from synthex.train.report import load_report_config

    values = {"arch": TINY_ARCH, "max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1,
              "max_target_tokens": 48}
    values.update(over)
    return load_report_config(overrides={k: v for k, v in values.items() if k != "arch"} |
                              {f"arch.{k}": v for k, v in values["arch"].items()})


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from synthex.train.report import train_report

    root = tmp_path_factory.mktemp("rep")
    csv_path = _multicare(root)
    result = train_report(csv_path, root / "run", _cfg(), progress=False)
    return root, csv_path, result


def test_training_writes_a_loadable_model_and_lists_rejects(trained):
    from synthex.report.model import ReportModel

    root, csv_path, result = trained
    assert result.trainable == result.parameters > 0 and result.steps == 4
    log = (root / "run" / "training_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]
    assert len((root / "run" / "rejects.csv").read_text().splitlines()) == 3
    info = json.loads((result.model_dir / "synthex_report.json").read_text())
    assert info["synthetic_outputs"] is True and info["step"] == 4
    model = ReportModel.load(str(result.model_dir))
    reports = model.generate([root / "img" / "0.png", root / "img" / "1.png"], ["A 50-year-old woman.", None],
                             max_new_tokens=12)
    assert len(reports) == 2 and reports[0].gender == "Female" and reports[0].age == "50"
    assert reports[1].gender == "Unknown" and all(parse_report(r.line()).parsed for r in reports)
    again = model.generate([root / "img" / "0.png"], ["A 50-year-old woman."], max_new_tokens=12)
    assert again[0].raw == reports[0].raw  # greedy: same image, same report


def test_interrupted_run_resumes_exactly_and_extends(trained, tmp_path):
    from synthex.train.report import train_report

    root, csv_path, _ = trained
    # an interrupted run (killed during step 3, after the step-2 checkpoint), resumed = the uninterrupted run
    def stop(event):
        if event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_report(csv_path, tmp_path / "cut", _cfg(), progress=False, callback=stop)
    assert not (tmp_path / "cut" / "model").exists()
    resumed = train_report(csv_path, tmp_path / "cut", _cfg(), resume=True, progress=False)
    a, b = _weights(resumed.model_dir), _weights(root / "run" / "model")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    rows = (tmp_path / "cut" / "training_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]
    with pytest.raises(SynthexError):
        train_report(csv_path, tmp_path / "cut", _cfg(lr=0.5), resume=True, progress=False)
    longer = train_report(csv_path, tmp_path / "cut", _cfg(max_steps=6), resume=True, progress=False)
    assert longer.steps == 6
    rows = (tmp_path / "cut" / "training_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize("four_bit", [False, True])
def test_lora_and_qlora_on_a_saved_base_train_only_adapters(trained, tmp_path, four_bit):
    pytest.importorskip("bitsandbytes") if four_bit else None
    from synthex.report.model import ReportModel
    from synthex.train.report import train_report

    root, csv_path, result = trained
    cfg = _cfg(base=str(result.model_dir), lora=True, load_in_4bit=four_bit, max_steps=2, lr=1e-2)
    run = train_report(csv_path, tmp_path / "lora", cfg, progress=False)
    assert 0 < run.trainable < run.parameters
    files = {p.name for p in run.model_dir.iterdir()}
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    adapters = _weights(run.model_dir)
    assert adapters and all("lora_" in k for k in adapters)
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapters}
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= targets
    loaded = ReportModel.load(str(result.model_dir), adapter=run.model_dir, load_in_4bit=four_bit)
    assert loaded.generate([root / "img" / "2.png"], max_new_tokens=6)[0].line().startswith("Image Labels:")


def test_missing_model_is_one_message_naming_the_files(tmp_path):
    from synthex.models.registry import ModelNotFoundError, locate_report_model

    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json") as err:
        locate_report_model(str(tmp_path / "m"))
    assert "model.safetensors" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        locate_report_model("someone/not-cached-model-xyz", allow_download=False)


def test_config_refuses_qlora_without_a_base():
    from synthex.errors import ConfigError

    with pytest.raises(ConfigError, match="need a base model"):
        _cfg(lora=True)


# ---------------------------------------------------------------------------------------------
# CLI and metrics
# ---------------------------------------------------------------------------------------------
def test_cli_one_image_and_a_folder_to_csv(trained, tmp_path):
    from synthex.cli import app

    root, _, result = trained
    runner = CliRunner()
    one = runner.invoke(app, ["report", str(root / "img" / "3.png"), "--model", str(result.model_dir), "--json",
                              "--case", "67 y/o male"])
    assert one.exit_code == 0, one.output
    record = json.loads(one.output)
    assert record["synthetic"] is True and record["gender"] == "Male" and record["report"].startswith("Image Labels:")
    out = tmp_path / "r.csv"
    many = runner.invoke(app, ["report", str(root / "img"), "--model", str(result.model_dir), "--out", str(out), "-q"])
    assert many.exit_code == 0, many.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and all(r["synthetic"] == "True" for r in rows)
    refused = runner.invoke(app, ["report", str(root / "img"), "--model", str(result.model_dir), "--out", str(out)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    folder = runner.invoke(app, ["report", str(root / "img"), "--model", str(result.model_dir)])
    assert folder.exit_code == 2 and "--out" in folder.output


def test_clinical_scores_follow_truth_and_side():
    from synthex.phantom.findings import Finding
    from synthex.report.evaluate import score_reports

    truth = [[Finding("pleural_effusion", "right")], [Finding("cardiomegaly")], []]
    right = [parse_report(build_report(["right pleural effusion"], caption_text("Right pleural effusion.", ""))),
             parse_report(build_report(["cardiomegaly"], caption_text("The heart is enlarged.", ""))),
             parse_report(build_report([], caption_text("Lungs are clear. No pleural effusion.", "")))]
    refs = ["Right pleural effusion.", "Cardiomegaly.", "Normal chest."]
    good = score_reports(right, refs, truth, meteor=False)
    assert good["parse_rate"] == 1 and good["clinical_vs_truth"]["micro_f1"] == 1.0
    assert good["laterality_vs_truth"]["sided_sensitivity"] == 1.0
    wrong = [parse_report(build_report(["left pleural effusion"], caption_text("Left pleural effusion.", ""))),
             right[1], parse_report("garbage text")]
    bad = score_reports(wrong, refs, truth, meteor=False)
    assert bad["laterality_vs_truth"]["sided_sensitivity"] == 0.0 and bad["parse_rate"] == pytest.approx(2 / 3)
    assert bad["clinical_vs_truth"]["micro_f1"] < good["clinical_vs_truth"]["micro_f1"]


def test_train_on_the_phantom_set_and_evaluate_task_report(phantom_prepared, tmp_path):
    from synthex.cli import app
    from synthex.train.report import train_report

    run = train_report(phantom_prepared, tmp_path / "run", _cfg(max_steps=2), progress=False)
    assert json.loads((tmp_path / "run" / "data.json").read_text())["train"] == run.n_train > 0
    out = tmp_path / "eval"
    args = ["evaluate", "--task", "report", "--real", str(phantom_prepared), "--model", str(run.model_dir),
            "--n", "2", "--out", str(out), "-q"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 2 and 0 <= results["parse_rate"] <= 1
    assert {"bleu4", "meteor", "rougeL", "cider"} <= set(results["lexical"])
    assert "clinical_vs_truth" in results and "sided_sensitivity" in results["laterality_vs_truth"]
    assert len(list(csv.DictReader((out / "reports.csv").open()))) == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_round_trip_reads_generated_images_back_against_their_prompts(trained):
    from synthex.evaluate.report import _roundtrip_blocks
    from synthex.evaluate.types import DEFAULT_METRICS, METRICS
    from synthex.report.evaluate import round_trip

    root, _, result = trained
    images = [root / "img" / f"{k}.png" for k in range(3)]
    prompts = ["Cardiomegaly.", "Right pleural effusion.", "Normal chest x-ray."]
    r = round_trip(images, prompts, model=str(result.model_dir))
    assert r["n"] == 3 and 0 <= r["parse_rate"] <= 1
    c = r["consistency"]
    assert c["n"] == 3 and c["per_finding"]["cardiomegaly"]["support"] == 1
    assert c["per_finding"]["pleural_effusion_right"]["support"] == 1
    assert any(b.kind == "table" for b in _roundtrip_blocks(r))
    assert "roundtrip" in METRICS and "roundtrip" not in DEFAULT_METRICS
    with pytest.raises(SynthexError, match="one prompt per image"):
        round_trip(images, prompts[:2], model=str(result.model_dir))
