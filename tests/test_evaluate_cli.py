"""``synthex evaluate`` on the command line (issue 7)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from synthex.cli import app
from tests.evaluate_fixtures import make_folder
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

runner = CliRunner()
FAST = ["--bootstrap", "20", "--utility-epochs", "1", "--ctr-probe", "40", "--quiet"]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("cli") / "real", 30, seed=5)


def test_cli_writes_the_report_and_refuses_to_overwrite(real, tmp_path):
    synth = make_folder(tmp_path / "synth", 30, seed=6)
    out = tmp_path / "report"
    args = ["evaluate", "--real", str(real), "--synthetic", str(synth), "--out", str(out),
            "--metrics", "fidelity,privacy", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "0 of 30 flagged" in result.output
    assert (out / "report.md").read_text().startswith("# SynTheX-Ray evaluation report")
    assert "<table>" in (out / "report.html").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output
    bad = runner.invoke(app, [*args, "--overwrite", "--metrics", "fidelity,beauty"])
    assert bad.exit_code == 2 and "beauty" in bad.output


def test_cli_generates_from_a_model_and_prompts(real, tmp_path):
    prompts = tmp_path / "prompts.csv"
    texts = ["Chest x-ray. Normal.", "Chest x-ray. Moderate cardiomegaly.", "Chest x-ray. Right pleural effusion."]
    pd.DataFrame({"prompt": texts * 4}).to_csv(prompts, index=False)
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--real", str(real), "--model", str(tiny_model_dir("sd-l")),
                                 "--prompts", str(prompts), "--steps", "2", "--out", str(out),
                                 "--metrics", "fidelity,diversity,alignment", *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "synthetic" / "metadata.csv")
    assert len(frame) == 12 and (out / "synthetic" / frame.file_name[0]).is_file()
    report = (out / "report.md").read_text()
    assert "| synthetic |" in report and "## Text-image alignment" in report


def test_cli_reports_unavailable_extractors(real, tmp_path):
    result = runner.invoke(app, ["evaluate", "--check-extractors"])
    assert result.exit_code == 0 and "synthex: available" in result.output
    missing = tmp_path / "none.pt"
    result = runner.invoke(app, ["evaluate", "--real", str(real), "--synthetic", str(real), "--out",
                                 str(tmp_path / "r"), "--extractor", "xrv", "--xrv-weights", str(missing), *FAST])
    assert result.exit_code == 2 and "none.pt" in result.output
