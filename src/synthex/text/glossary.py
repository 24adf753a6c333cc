"""Russian and Ukrainian radiology glossaries: YAML rule tables expanded to every word form.

A glossary (``config/glossary_ru.yaml``, ``config/glossary_uk.yaml``) lists phrases in their
dictionary form under a kind: ``findings`` (canonical finding name -> phrases), ``negated``
(phrases that deny one finding), ``abnormal`` (words for "pathology": denied, they say the
study is normal), ``severity``, ``sides``, ``zones``, ``negation``,
``conjunctions`` and ``known`` (understood, no finding). :func:`word_forms` expands each word by
the language's inflection paradigms (adjectives by their ending, nouns by declension), so that
"плевральным выпотом" matches "плевральный выпот" without a dictionary; a word written with
braces (``расширен{,о,а,ы}``) lists its own forms. Over-generation is harmless here: the forms
are only ever compared with words of a radiology text.

The English vocabulary of :mod:`synthex.phantom.findings` is added to every glossary, so
mixed-language text ("умеренная cardiomegaly") is read too.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from synthex.errors import ConfigError, SynthexError

LANGUAGES = ("ru", "uk")
KINDS = ("negated", "findings", "normal", "abnormal", "negation", "severity", "sides", "zones", "conjunctions",
         "known")
"""Entry kinds in priority order (the earlier wins when two phrases of one length match)."""

_RU_ADJ = ("ый ий ой ая яя ое ее ые ие ого его ому ему ым им ом ем ую юю ых их ыми ими ою ею ей").split()
_UK_ADJ = ("ий ій а я е є і ого ього ої ьої ому ьому им ім у ю их іх ими іми ою ьою").split()
_RU_NOUN = {
    "ия": "ия ии ию ией иею ий иям иями иях".split(),
    "ие": "ие ия ию ием ии ий иям иями иях".split(),
    "ье": "ье ья ью ьем ьи ий ьям ьями ьях".split(),
    "а": ["а", "ы", "и", "е", "у", "ой", "ою", "ам", "ами", "ах", ""],
    "я": ["я", "и", "е", "ю", "ей", "ею", "ям", "ями", "ях", "ь"],
    "ь": ["ь", "и", "ю", "ью", "ей", "ям", "ями", "ях", "я", "ем", "е"],
    "о": ["о", "е", "а", "у", "ом", "ам", "ами", "ах", "ы", ""],
    "е": ["е", "я", "ю", "ем", "ям", "ями", "ях", "ей", ""],
    "й": ["й", "я", "ю", "ем", "е", "и", "ев", "ям", "ями", "ях"],
    "ы": ["ы", "ов", "ам", "ами", "ах", ""],  # plural nouns ("синусы")
    "и": ["и", "ей", "ям", "ями", "ях", "ам", "ами", "ах", "ов", ""],
    "": ["", "а", "у", "ом", "е", "ы", "и", "ов", "ам", "ами", "ах", "ей", "ем", "я", "ю", "ях", "ями"],
}
_UK_NOUN = {
    "ія": "ія ії ію ією ій іям іями іях".split(),
    "я": ["я", "і", "ю", "ям", "ями", "ях", "ь", "ей", "ею", "єю", "ів"],
    "а": ["а", "и", "і", "у", "ою", "ам", "ами", "ах", ""],
    "ь": ["ь", "я", "ю", "ем", "і", "ів", "ям", "ями", "ях", "ю", "ю"],
    "о": ["о", "а", "у", "ом", "і", "ам", "ами", "ах", "ові", ""],
    "и": ["и", "ів", "ам", "ами", "ах", ""],  # plural nouns ("зміни")
    "е": ["е", "я", "ю", "ем", "ям", "ями", "ях", "і", "а", "у", "ом", "ам", "ами", "ах"],
    "": ["", "а", "у", "ом", "ем", "і", "ові", "еві", "и", "ів", "ам", "ами", "ах", "ям", "ями", "ях",
         "ю", "я", "ою"],
}
_VOWELS = set("аеиоуыэюяіїєь")
_BRACES = re.compile(r"^([^{}]*)\{([^{}]*)\}([^{}]*)$")
_TOKEN = re.compile(r"[a-zа-яіїєґ']+|\d+")


def normalise(text: str) -> str:
    """Lower case, ``ё`` -> ``е``, every apostrophe -> ``'``, hyphens and slashes -> space."""
    text = text.lower().replace("ё", "е")
    text = re.sub(r"[’ʼ`´‘]", "'", text)
    return re.sub(r"[-‐‑–—/_]+", " ", text)


def tokens(text: str) -> list[str]:
    """The words and numbers of already-normalised text."""
    return _TOKEN.findall(text)


def word_forms(word: str, lang: str) -> frozenset[str]:
    """Every form of one dictionary word (a braced word gives exactly its listed forms)."""
    word = normalise(word).strip()
    match = _BRACES.match(word)
    if match:
        head, alternatives, tail = match.groups()
        return frozenset(f"{head}{alt.strip()}{tail}" for alt in alternatives.split(","))
    if lang not in LANGUAGES or not re.search("[а-яіїєґ]", word) or len(word) <= 3:
        return frozenset({word})  # English, abbreviations, short function words
    forms = {word}
    adjective = _adjective_endings(word, lang)
    if adjective is not None:
        stem, endings, certain = adjective
        forms.update(stem + e for e in endings)
        if certain:
            return frozenset(forms)
    # a noun (or a word that may be either: "помірна", "нижние"): add its declension too
    table = _RU_NOUN if lang == "ru" else _UK_NOUN
    for ending in sorted(table, key=len, reverse=True):
        if word.endswith(ending) and (ending or word[-1] not in _VOWELS):
            stem = word[: len(word) - len(ending)]
            forms.update(stem + e for e in table[ending])
            break
    return frozenset(forms)


def _adjective_endings(word: str, lang: str) -> tuple[str, list[str], bool] | None:
    """(stem, adjective endings, certainly an adjective) for a word that looks like one."""
    if len(word) <= 4:
        return None
    if lang == "ru":
        if word.endswith(("ый", "ий", "ой")):
            return word[:-2], _RU_ADJ, True
        if word.endswith(("ые", "ая", "яя", "ое", "ее", "ие")):  # plural / feminine / neuter forms
            return word[:-2], _RU_ADJ, word[-3] in "кгхжшщч" or not word.endswith("ие")
    if lang == "uk":
        if word.endswith(("ий", "ій")):
            return word[:-2], _UK_ADJ, True
        if word.endswith(("а", "я", "е", "є", "і")):  # feminine / neuter / plural forms, or a noun
            return word[:-1], _UK_ADJ, False
    return None


@dataclass(frozen=True)
class Entry:
    """One glossary phrase: its kind, what it means, and the form sets of its words."""

    kind: str
    value: str  # finding name, side, zone, grade, "and"/"with", or "" (negation, known)
    phrase: str
    words: tuple[frozenset[str], ...]
    lang: str


@dataclass(frozen=True)
class Glossary:
    """Every entry of one language (plus the English vocabulary), indexed by first-word form."""

    lang: str
    name: str
    entries: tuple[Entry, ...]
    by_first: dict[str, tuple[Entry, ...]]
    forms: frozenset[str]
    native_forms: frozenset[str]

    def candidates(self, token: str) -> tuple[Entry, ...]:
        return self.by_first.get(token, ())


def _entries_of(kind: str, body: Any, lang: str, source: str) -> list[Entry]:
    def phrases(value: str, items: Any) -> list[Entry]:
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise ConfigError(f"{source}: {kind}.{value or ''} must be a list of non-empty phrases")
        out = []
        for phrase in items:
            words = tuple(word_forms(w, lang) for w in _split_words(phrase))
            out.append(Entry(kind, value, phrase, words, lang))
        return out

    if kind in ("negation", "known", "abnormal"):
        return phrases("", body)
    if not isinstance(body, dict):
        raise ConfigError(f"{source}: {kind!r} must map a value to a list of phrases")
    out: list[Entry] = []
    for value, items in body.items():
        entry_kind = "normal" if kind == "findings" and value == "normal" else kind
        out.extend(phrases(str(value), items) if entry_kind != "normal" else
                   [Entry("normal", "normal", e.phrase, e.words, lang) for e in phrases("normal", items)])
    return out


def _split_words(phrase: str) -> list[str]:
    """Words of a phrase; a braced word stays one word even when it holds commas."""
    phrase = phrase.replace("ё", "е")
    parts = re.findall(r"[^\s{}]*\{[^{}]*\}[^\s{}]*|[^\s]+", phrase.strip())
    out = []
    for part in parts:
        out.extend([part] if "{" in part else [w for w in re.split(r"[-/]", part) if w])
    return out


def _english_entries() -> list[Entry]:
    from synthex.phantom.findings import FILLER_WORDS, attribute_words, finding_synonyms

    def entry(kind: str, value: str, phrase: str) -> Entry:
        return Entry(kind, value, phrase, tuple(frozenset({w}) for w in tokens(normalise(phrase))), "en")

    out = [entry("normal" if name == "normal" else "findings", name, phrase)
           for phrase, name in finding_synonyms().items() if tokens(normalise(phrase))]
    kinds = {"side": "sides", "zone": "zones", "severity": "severity"}
    for kind, table in attribute_words().items():
        if kind in kinds:
            out += [entry(kinds[kind], value, word) for word, value in table.items()]
    out += [entry("negation", "", w) for w in ("no", "not", "without", "negative for", "free of", "absence of")]
    out += [entry("conjunctions", "and", w) for w in ("and", "or")]
    out += [entry("conjunctions", "with", w) for w in ("with", "but", "plus")]
    out += [entry("known", "", w) for w in sorted(FILLER_WORDS)]
    return out


@functools.lru_cache(maxsize=None)
def load_glossary(lang: str) -> Glossary:
    """The packaged glossary of ``lang`` ("ru" or "uk"), expanded and indexed (cached)."""
    if lang not in LANGUAGES:
        raise SynthexError(f"no glossary for language {lang!r}; available: {', '.join(LANGUAGES)} (and en)")
    source = f"glossary_{lang}.yaml"
    try:
        data = yaml.safe_load(resources.files("synthex.config").joinpath(source).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML ({exc}); quote phrases that hold braces or colons") from exc
    if not isinstance(data, dict) or data.get("language") != lang:
        raise ConfigError(f"{source}: must be a mapping with 'language: {lang}'")
    unknown = set(data) - {"language", "name", *KINDS}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; valid: {', '.join(KINDS)}")
    native: list[Entry] = []
    for kind in KINDS:
        if kind in data and kind != "normal":
            native += _entries_of(kind, data[kind], lang, source)
    entries = native + _english_entries()
    index: dict[str, list[Entry]] = {}
    for entry in entries:
        for form in entry.words[0]:
            index.setdefault(form, []).append(entry)
    forms = frozenset(f for e in entries for w in e.words for f in w)
    native_forms = frozenset(f for e in native for w in e.words for f in w)
    return Glossary(lang, str(data.get("name", lang)), tuple(entries),
                    {k: tuple(v) for k, v in index.items()}, forms, native_forms)
