"""Editing a finding into a phantom by inpainting with the shipped embedded model (issue 17 item 4)."""
import numpy as np
import pytest

from synthex.errors import SynthexError
from synthex.evaluate.edit import measure_edit, zone_mask


def test_zone_mask_lower_covers_the_lower_half_and_below():
    lung = np.zeros((64, 64), bool)
    lung[10:50, 8:28] = True
    mask = zone_mask(lung, "lower", pad=2)
    rows, cols = np.nonzero(mask)
    assert rows.min() == 30 - 2 and rows.max() == 49 + 4 + 2
    assert cols.min() == 6 and cols.max() == 29
    upper = zone_mask(lung, "upper", pad=0)
    assert np.nonzero(upper)[0].max() < 30 and not (upper & zone_mask(lung, "lower", pad=0)).any()


def test_zone_mask_bad_inputs():
    with pytest.raises(SynthexError, match="zone must be"):
        zone_mask(np.ones((8, 8), bool), "basal")
    with pytest.raises(SynthexError, match="empty"):
        zone_mask(np.zeros((8, 8), bool))


def test_inpainting_right_effusion_edits_only_the_mask_and_is_detected():
    from synthex.generate.engine import Engine

    report = measure_edit(Engine(), [100, 101, 102], side="right", steps=10)
    summary = report.summary()
    assert summary["outside_max"] == 0  # pixels outside the (blurred) mask are the original's
    assert summary["inside_mean"] > 5 and summary["inside_signed"] > 0  # denser (brighter) inside
    assert summary["detected_before"] == 0
    assert summary["p_after"] > summary["p_before"] + 0.3
    assert summary["detected_after"] >= 2 / 3


def test_measure_edit_refuses_an_unsided_label():
    from synthex.generate.engine import Engine

    with pytest.raises(SynthexError, match="no label"):
        measure_edit(Engine(), [1], finding="cardiomegaly")
