from __future__ import annotations

import pytest

from synthex.data.prompts import build_prompt, mesh_to_text, token_stats
from synthex.text.clip_tokenizer import clip_bpe_path, load_clip_tokenizer


def test_thesis_prompt_format():
    prompt = build_prompt("Cardiomegaly/borderline;Pulmonary Artery/enlarged",
                          "Borderline cardiomegaly.", "No acute pulmonary findings.")
    assert prompt == ("Chest x-ray. Cardiomegaly borderline. Pulmonary Artery enlarged. "
                      "Borderline cardiomegaly. No acute pulmonary findings.")


def test_normal_trigger_underscore_and_no_indexing():
    assert mesh_to_text("normal") == "Normal."
    assert mesh_to_text("Lung/hypoinflation;Foreign_Bodies/x") == "Lung hypoinflation. Foreign Bodies x."
    assert mesh_to_text("No Indexing") == ""
    assert build_prompt("Opacity/lung/base/right", "A.", "", trigger="Lung opacity.") == \
        "Chest x-ray. Lung opacity. Opacity lung base right. A."


@pytest.mark.skipif(clip_bpe_path() is None, reason="open_clip_torch (CLIP vocabulary) not installed")
def test_clip_tokenizer_is_the_real_one():
    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_token_stats_counts_over_limit():
    stats, counts = token_stats(["Chest x-ray. Normal.", "word " * 100])
    assert stats.n == 2 and stats.over_limit == 1
    assert counts[1] > 77 and stats.mean_excess_when_over == counts[1] - 77
