"""The shipped embedded report model: loads offline by default and reads large findings."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_embedded_report_model_loads_by_default_and_sees_severe_cardiomegaly():
    from synthex.phantom.render import render_phantom
    from synthex.report.evaluate import finding_text
    from synthex.phantom.labels import text_findings
    from synthex.report.model import ReportModel

    model = ReportModel.load()
    assert model.info.get("synthetic_outputs") is True
    images = [Image.fromarray(np.asarray(render_phantom(text, s, 128).image)) for text, s in
              [("severe cardiomegaly", 901), ("severe cardiomegaly", 902), ("normal", 903), ("normal", 904)]]
    reports = model.generate(images)
    assert all(r.parsed for r in reports)
    named = [{f.name for f in text_findings(finding_text(r))[0]} for r in reports]
    # measured: cardiomegaly sensitivity 0.88, specificity 0.92 on the test split; a margin of one image
    assert sum("cardiomegaly" in n for n in named[:2]) >= 1
    assert sum("cardiomegaly" in n for n in named[2:]) <= 1
