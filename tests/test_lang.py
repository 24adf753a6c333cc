"""Russian and Ukrainian input: glossary forms, mapping, detection, transliteration, the engine,
the CLI, the app's languages, and the parallel test sets (>= 95% mapped like their English)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synthex.errors import SynthexError
from synthex.phantom.captions import NEGATIONS, NORMAL_SENTENCES, REPORT_TEMPLATES, caption_variants, sample_balanced
from synthex.phantom.findings import Finding, parse_findings
from synthex.text.glossary import load_glossary, word_forms
from synthex.text.lang import (detect_language, english_caption, localise, map_text, transliteration_hits)
from synthex.text.lang_eval import compare_row, evaluate_parallel, load_parallel

DATA = Path(__file__).parent / "data" / "lang"


def described(text: str, lang: str = "auto") -> list[str]:
    return [f.describe() for f in map_text(text, lang).findings]


# ------------------------------------------------------------------------------------ forms
def test_generated_forms_cover_cases_gender_and_number():
    assert {"плевральным", "плевральной", "плевральных", "плевральная"} <= word_forms("плевральный", "ru")
    assert {"кардиомегалии", "кардиомегалией"} <= word_forms("кардиомегалия", "ru")
    assert {"выпота", "выпотом", "выпоте"} <= word_forms("выпот", "ru")
    assert {"нижней", "нижних", "нижнюю"} <= word_forms("нижний", "ru")
    assert {"правій", "правої", "правого", "права"} <= word_forms("правий", "uk")
    assert {"помірна", "помірної", "помірну"} <= word_forms("помірний", "uk")
    assert word_forms("вип{іт,оту}", "uk") == {"випіт", "випоту"}  # braces list forms exactly
    assert "плевральным" not in word_forms("плевральный", "uk")  # the paradigms are per language


def test_glossaries_load_with_every_finding():
    from synthex.phantom.findings import FINDING_NAMES

    for lang in ("ru", "uk"):
        glossary = load_glossary(lang)
        native = {e.value for e in glossary.entries if e.lang == lang and e.kind in ("findings", "normal")}
        assert native == set(FINDING_NAMES), (lang, set(FINDING_NAMES) - native)


# ---------------------------------------------------------------------------------- mapping
def test_issue_example_and_its_shown_line():
    mapping = map_text("Умеренная кардиомегалия, слева плевральный выпот")
    assert mapping.language == "ru" and mapping.unknown == []
    assert mapping.english == "Chest x-ray. Cardiomegaly moderate. Pleural effusion left."
    assert mapping.shown() == ("Умеренная кардиомегалия, слева плевральный выпот -> "
                               "Chest x-ray. Cardiomegaly moderate. Pleural effusion left.")


@pytest.mark.parametrize(("text", "expected", "denied"), [
    ("Выпот в левой плевральной полости, небольшой. Пневмоторакса нет.", ["mild left pleural effusion"], ["pneumothorax"]),
    ("Без выпота и пневмоторакса. Затемнение в нижней доле правого лёгкого.", ["right opacity lower zone"],
     ["pleural_effusion", "pneumothorax"]),
    ("Пневмоторакс не выявлен, умеренная кардиомегалия", ["moderate cardiomegaly"], ["pneumothorax"]),
    ("Кардиомегалия без плеврального выпота", ["cardiomegaly"], ["pleural_effusion"]),
    ("Сердце умеренно расширено. Двусторонний плевральный выпот.", ["moderate cardiomegaly", "bilateral pleural effusion"], []),
    ("Выпот справа и слева", ["bilateral pleural effusion"], []),
    ("Лёгкие без очаговых и инфильтративных изменений. Сердце не расширено. Синусы свободны.", ["normal"],
     ["cardiomegaly", "pleural_effusion"]),
    ("Помірна кардіомегалія, випіт у правій плевральній порожнині", ["moderate cardiomegaly", "right pleural effusion"], []),
    ("Невеликий лівобічний пневмоторакс. Плеврального випоту немає.", ["mild left pneumothorax"], ["pleural_effusion"]),
    ("Пневмоторакс не виявлено. Виражений набряк легень.", ["severe edema"], ["pneumothorax"]),
    ("Легені без вогнищевих та інфільтративних змін, серце не розширене", ["normal"], ["cardiomegaly"]),
    ("Кальцинована гранульома у верхній частці лівої легені", ["left calcified granuloma upper zone"], []),
    ("умеренная cardiomegaly, right pleural effusion", ["moderate cardiomegaly", "right pleural effusion"], []),
])
def test_inflections_word_order_and_negations(text, expected, denied):
    mapping = map_text(text)
    assert [f.describe() for f in mapping.findings] == expected
    assert mapping.negated == denied


def test_unknown_words_are_listed_not_dropped_and_no_finding_is_an_error():
    mapping = map_text("Сердце увеличено, какая-то тень непонятной природы")
    assert described("Сердце увеличено") == ["cardiomegaly"]
    assert {"какая", "непонятной", "природы"} <= set(mapping.unknown)
    with pytest.raises(SynthexError, match="no finding recognised in 'что-то странное'.*странное"):
        map_text("что-то странное")
    with pytest.raises(SynthexError, match="empty"):
        map_text("   ")
    with pytest.raises(SynthexError, match="unknown language 'de'"):
        map_text("выпот", "de")


def test_weights_are_noted_and_forced_language():
    mapping = map_text("(Умеренная кардиомегалия:1.4)")
    assert described("(Умеренная кардиомегалия:1.4)") == ["moderate cardiomegaly"]
    assert any("weights" in note for note in mapping.notes)
    # Ukrainian words read with the Russian glossary are unknown, and say so
    assert "випіт" in map_text("Кардиомегалия, випіт", "ru").unknown


def test_detect_language():
    assert detect_language("moderate cardiomegaly") == "en"
    assert detect_language("Умеренный плевральный выпот справа") == "ru"
    assert detect_language("Помірний плевральний випіт праворуч") == "uk"
    assert detect_language("Кардіомегалія") == "uk"  # the letter і
    assert detect_language("Лёгкие: выпот, right pleural effusion") == "ru+en"


def test_english_caption_round_trips_through_the_english_parser():
    rng = np.random.default_rng(0)
    for _ in range(200):
        findings = [f for f in sample_balanced(rng) if f.name != "normal"] or [Finding("normal")]
        caption = english_caption(findings, ["pneumothorax"] if all(f.name != "pneumothorax" for f in findings) else [])
        assert parse_findings(caption) == parse_findings("; ".join(f.describe() for f in findings)), caption


# ---------------------------------------------------------------------------- transliteration
def test_transliteration_is_named_and_english_is_not_flagged():
    with pytest.raises(SynthexError, match="Latin letters.*'kardiomegaliya' = 'кардиомегалия'"):
        localise("kardiomegaliya sprava")
    with pytest.raises(SynthexError, match="Latin letters"):
        localise("vypit pravoruch")
    assert localise("kardiomegaliya", "en") == ("kardiomegaliya", None)  # --lang en: unchanged
    english = [*NORMAL_SENTENCES, *(s for v in NEGATIONS.values() for s in v),
               *(s for v in REPORT_TEMPLATES.values() for s in v)]
    rng = np.random.default_rng(1)
    english += [c for _ in range(100) for c in caption_variants(sample_balanced(rng), rng)]
    flagged = [text for text in english if transliteration_hits(text)]
    assert flagged == []
    assert localise("Moderate left pleural effusion.") == ("Moderate left pleural effusion.", None)


# ----------------------------------------------------------------------------- parallel sets
@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_parallel_set_maps_like_its_english_source(lang):
    rows = load_parallel(DATA / f"parallel_{lang}.yaml")
    assert len(rows) >= 100 and {r["set"] for r in rows} == {"A", "B"}
    result = evaluate_parallel(rows)
    wrong = [(r["id"], r["text"], r["expected"], r["mapped"] or r["error"]) for r in result["rows"] if not r["exact"]]
    assert result["exact"] >= 0.95, wrong
    held_out = evaluate_parallel([r for r in rows if r["set"] == "B"])
    assert held_out["exact"] >= 0.90


def test_compare_row_detects_a_wrong_side():
    row = {"id": "x", "en": "Small right pleural effusion.", "text": "Небольшой левосторонний плевральный выпот."}
    result = compare_row(row)
    assert result["names"] and result["grades"] and not result["sides"] and not result["exact"]


def test_load_parallel_names_bad_rows(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prompts:\n  - {id: a, en: 'Cardiomegaly.', text: ''}\n", encoding="utf-8")
    with pytest.raises(SynthexError, match="lack id, en or text: a"):
        load_parallel(path)


# ------------------------------------------------------------------------------------ engine
def test_engine_maps_russian_prompt_and_records_the_original(tmp_path):
    from synthex.generate.engine import Engine, GenerationRequest, request_from_parameters
    from synthex.generate.infotext import read_png_parameters, write_png

    engine = Engine()
    russian = "Умеренная кардиомегалия, слева плевральный выпот, загадочноеслово"
    result = engine.generate(GenerationRequest(russian, steps=2, seed=5, negative_prompt="пневмоторакс"))
    params = result.parameters[0]
    assert params.prompt == "Chest x-ray. Cardiomegaly moderate. Pleural effusion left."
    assert params.negative_prompt == "Pneumothorax."
    assert params.extra["Original prompt"] == russian and params.extra["Prompt language"] == "ru"
    assert params.extra["Unmapped words"] == "загадочноеслово"
    same = engine.generate(GenerationRequest(params.prompt, steps=2, seed=5, negative_prompt="Pneumothorax.", lang="en"))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(same.images[0]))
    path = write_png(result.images[0], tmp_path / "ru.png", params)
    back = read_png_parameters(path)
    assert back.extra["Original prompt"] == russian and back.prompt == params.prompt
    again = engine.generate(request_from_parameters(back))  # --from: the English text, same image
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    from synthex.generate.engine import RequestError

    with pytest.raises(SynthexError, match="Latin letters"):
        engine.generate(GenerationRequest("kardiomegaliya sprava", steps=1, seed=1))
    with pytest.raises(RequestError, match="lang"):
        GenerationRequest("x", lang="fr").validate()


def test_cli_translate_and_generate(tmp_path):
    from synthex.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["translate", "Помірна кардіомегалія. Пневмотораксу немає.", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["language"] == "uk" and data["english"] == "Chest x-ray. Cardiomegaly moderate. No pneumothorax."
    out = runner.invoke(app, ["translate", "непонятно что"])
    assert out.exit_code == 2 and "no finding recognised" in out.output
    png = tmp_path / "a.png"
    out = runner.invoke(app, ["generate", "Небольшой правосторонний пневмоторакс", "--out", str(png), "--steps", "2",
                              "--seed", "3", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "-> Chest x-ray. Pneumothorax right mild." in out.output
    info = runner.invoke(app, ["info", str(png)])
    assert "Original prompt: Небольшой правосторонний пневмоторакс" in info.output


# ------------------------------------------------------------------------------------ the app
def test_interface_strings_and_templates_in_three_languages():
    from synthex.ui import state

    for key, entry in state.ui_strings().items():
        assert set(entry) == {"en", "uk", "ru"} and all(entry.values()), key
    english = state.templates("en")
    for lang in ("uk", "ru"):
        local = state.templates(lang)
        assert list(local) == list(english)
        for name, text in local.items():
            if name == state.CUSTOM_TEMPLATE:
                continue
            assert text != english[name] and state.template_label(name, lang) != name
            mapping = map_text(text)
            assert mapping.language == lang and mapping.unknown == [], (name, mapping.unknown)


def test_broken_glossary_yaml_is_a_config_error(monkeypatch):
    from synthex.errors import ConfigError
    from synthex.text import glossary

    class Broken:
        def joinpath(self, name):
            return self

        def read_text(self, encoding="utf-8"):
            return "language: ru\nfindings:\n  cardiomegaly: [слово{,а}, ]\n"

    glossary.load_glossary.cache_clear()
    monkeypatch.setattr(glossary.resources, "files", lambda package: Broken())
    try:
        with pytest.raises(ConfigError, match="glossary_ru.yaml is not valid YAML"):
            glossary.load_glossary("ru")
    finally:
        monkeypatch.undo()
        glossary.load_glossary.cache_clear()
    with pytest.raises(SynthexError, match="--lang ru"):
        map_text("moderate cardiomegaly")
