"""Russian and Ukrainian clinical text -> the English finding vocabulary.

:func:`map_text` reads a prompt, query or diagnosis written in Russian or Ukrainian (or mixed
with English) and returns a :class:`TextMapping`: the findings with their sides, zones and
grades, the findings the text denies, an English caption in the training-caption format
("Chest x-ray. Cardiomegaly moderate. Pleural effusion left. No pneumothorax.") and the words
the glossary does not know, which are listed, never dropped in silence.

How a text is read:

1. :func:`detect_language`: no Cyrillic letters -> ``en``; otherwise Ukrainian or Russian by
   the letters only one of them has (і ї є ґ vs ы э ъ) and by which glossary knows more words;
   Latin words beside Cyrillic ones make it ``ru+en`` / ``uk+en``.
2. Clauses are split at ``. , ; : ! ?`` and line breaks; in each clause glossary phrases are
   matched longest first over the words' generated forms (:mod:`synthex.text.glossary`), a
   lemmatiser (``simplemma``, when installed) standing in for a word none of the forms cover.
3. A negation denies the findings after it in its clause ("без выпота", "нет пневмоторакса");
   a negation after the last finding denies those before it ("выпот не выявлен"). "with"/"but"
   words ("с", "но", "з", "але") end its reach, "and" words do not.
4. Side, zone and grade words belong to the findings of their part of the clause (parts are cut
   at conjunctions); a part with modifiers only refines its neighbour ("выпот справа и слева" ->
   bilateral). A clause of modifiers only refines the previous clause, as in the English parser.
5. No finding but a normal statement or a denial -> ``normal``; no finding at all -> an error
   that names the text and the fix.

Latin-only text is English and is not mapped; :func:`transliteration_hits` finds Latin words
that spell Russian or Ukrainian terms ("kardiomegaliya"), so that callers can say so clearly.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from synthex.errors import SynthexError
from synthex.phantom.findings import Finding, build_finding, merge_findings
from synthex.text.glossary import LANGUAGES, Entry, Glossary, load_glossary, normalise, tokens

LANG_CHOICES = ("auto", "en", *LANGUAGES)
LANGUAGE_NAMES = {"en": "English", "ru": "Russian", "uk": "Ukrainian"}
_CYRILLIC = re.compile(r"[а-яёіїєґ]", re.IGNORECASE)
_LATIN = re.compile(r"[a-z]{2,}", re.IGNORECASE)
_CLAUSES = re.compile(r"[.,;:!?\n]+")
_WEIGHT = re.compile(r"\(([^():]*)(?::\s*[\d.]+)?\)|\[([^\[\]]*)\]")
# negations that are prepositions: they deny what follows, never what came before
_FORWARD_ONLY = frozenset({"без", "отсутствие", "відсутність", "without", "absence", "free"})
_ATTRIBUTES = {"sides": "side", "zones": "zone", "severity": "severity"}


@dataclass
class TextMapping:
    """What a non-English text was read as."""

    original: str
    language: str  # "ru", "uk", "ru+en", "uk+en" (or "en": not mapped)
    findings: list[Finding]
    negated: list[str]
    english: str
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def mapped(self) -> bool:
        return self.language != "en"

    def shown(self) -> str:
        """``original -> english`` (the line users see)."""
        return f"{self.original.strip()} -> {self.english}"

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original, "language": self.language, "english": self.english,
                "findings": [f.to_dict() for f in self.findings], "negated": list(self.negated),
                "unknown": list(self.unknown), "notes": list(self.notes)}


# --------------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------------
def has_cyrillic(text: str) -> bool:
    return bool(_CYRILLIC.search(text or ""))


def detect_language(text: str) -> str:
    """``en``, ``ru``, ``uk``, or ``ru+en`` / ``uk+en`` for Cyrillic text with English words."""
    if not has_cyrillic(text):
        return "en"
    low = normalise(text)
    score = {"uk": 2 * len(re.findall("[іїєґ]", low)), "ru": 2 * len(re.findall("[ыэъ]", low))}
    words = [w for w in tokens(low) if _CYRILLIC.search(w)]
    for lang in LANGUAGES:
        own = load_glossary(lang).native_forms
        other = load_glossary("uk" if lang == "ru" else "ru").native_forms
        score[lang] += sum(1 for w in words if w in own and w not in other)
    lang = "uk" if score["uk"] > score["ru"] else "ru"
    latin = [w for w in tokens(low) if re.fullmatch("[a-z']{2,}", w)]
    return f"{lang}+en" if latin else lang


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
@dataclass
class _Item:
    kind: str
    value: str
    start: int
    end: int


@functools.lru_cache(maxsize=4096)
def _lemma(word: str, lang: str) -> str | None:
    try:
        import simplemma
    except ImportError:  # optional fallback: generated forms do most of the work
        return None
    try:
        lemma = normalise(simplemma.lemmatize(word, lang=lang))
    except Exception:  # an unknown language code or a broken data file: no lemma, never a crash
        return None
    return lemma if lemma != word else None


def _match_at(glossary: Glossary, words: list[str], i: int) -> tuple[Entry, int] | None:
    best: tuple[int, int, Entry] | None = None  # (length, priority, entry)
    skippable = {"sides", "zones", "severity", "known"}
    for entry in glossary.candidates(words[i]):
        j, k, ok, skipped = i + 1, 1, True, 0
        while k < len(entry.words):
            if j < len(words) and words[j] in entry.words[k]:
                j, k = j + 1, k + 1
                continue
            # up to three side, zone, grade or known words may sit inside a phrase
            # ("сердце умеренно расширено", "воздушность легочной ткани повышена")
            if skipped < 3 and j + 1 < len(words) and _single_kind(glossary, words[j]) in skippable:
                j, skipped = j + 1, skipped + 1
                continue
            ok = False
            break
        if not ok:
            continue
        key = (j - i, _PRIORITY[entry.kind])
        if best is None or key > best[:2]:
            best = (*key, entry)
    return (best[2], i + best[0]) if best else None


_PRIORITY = {kind: n for n, kind in enumerate(reversed(
    ("negated", "findings", "normal", "abnormal", "negation", "severity", "sides", "zones", "conjunctions",
     "known")))}


def _single_kind(glossary: Glossary, word: str) -> str | None:
    kinds = [e.kind for e in glossary.candidates(word) if len(e.words) == 1]
    return max(kinds, key=lambda k: _PRIORITY[k]) if kinds else None


def _items(glossary: Glossary, words: list[str], unknown: list[str], notes: list[str]) -> list[_Item]:
    words = list(words)
    for n, word in enumerate(words):
        if word not in glossary.forms and not word.isdigit():
            lemma = _lemma(word, glossary.lang)
            if lemma and lemma in glossary.forms:
                notes.append(f"{word} read as {lemma} (lemmatiser)")
                words[n] = lemma
    items, i = [], 0
    while i < len(words):
        hit = _match_at(glossary, words, i)
        if hit is None:
            if not words[i].isdigit():
                if words[i] not in unknown:
                    unknown.append(words[i])
                items.append(_Item("unknown", words[i], i, i + 1))
            i += 1
            continue
        entry, end = hit
        if entry.kind == "negation" and words[i] in _FORWARD_ONLY:
            items.append(_Item("negation", "forward", i, end))  # "без ...": denies what follows only
            i = end
            continue
        # words inside the phrase that are side/zone/grade words are read too
        for j in range(i + 1, end - 1):
            if words[j] not in {f for w in entry.words for f in w}:
                inner = _match_at(glossary, words, j)
                if inner and inner[0].kind in _ATTRIBUTES:
                    items.append(_Item(inner[0].kind, inner[0].value, j, j + 1))
        items.append(_Item(entry.kind, entry.value, i, end))
        i = end
    return sorted(items, key=lambda it: it.start)


# --------------------------------------------------------------------------------------------
# Reading clauses
# --------------------------------------------------------------------------------------------
def _clause(items: list[_Item]) -> tuple[list[tuple[str, dict]], list[str], bool, dict]:
    """(positive findings with attributes, denied names, normal statement?, attributes)."""
    negated_at: set[int] = set()
    denied: list[str] = [it.value for it in items if it.kind == "negated"]
    finding_idx = [n for n, it in enumerate(items) if it.kind in ("findings", "abnormal")]
    for n, it in enumerate(items):
        if it.kind != "negation":
            continue
        ahead = [m for m in finding_idx if m > n and not _breaks(items, n, m)]
        if ahead:
            negated_at.update(ahead)
        elif it.value != "forward" and not any(later.kind == "unknown" for later in items[n + 1:]):
            # after the last finding it denies those before it ("выпот не выявлен"); followed by
            # words the glossary does not know, it denies something else ("без динамики")
            negated_at.update(m for m in finding_idx if m < n and not _breaks(items, m, n))
    parts: list[list[_Item]] = [[]]
    for it in items:
        if it.kind == "conjunctions":
            parts.append([])
        else:
            parts[-1].append(it)
    groups = [part for part in parts if part]
    # parts with modifiers only refine a neighbour part that names a finding
    merged: list[list[_Item]] = []
    pending: list[_Item] = []
    for part in groups:
        if any(it.kind == "findings" for it in part):
            merged.append(pending + part)
            pending = []
        elif merged:
            merged[-1].extend(part)
        else:
            pending.extend(part)
    if pending:
        merged.append(pending)
    positives: list[tuple[str, dict]] = []
    for part in merged:
        attrs = _attributes(part)
        for it in part:
            if it.kind == "findings":
                if items.index(it) in negated_at:
                    denied.append(it.value)
                else:
                    positives.append((it.value, attrs))
    # "патологии не выявлено": a denied abnormality is a normal statement
    normal = any(it.kind == "normal" for it in items) or any(
        it.kind == "abnormal" and n in negated_at for n, it in enumerate(items))
    return positives, denied, normal, _attributes(items)


def _breaks(items: list[_Item], a: int, b: int) -> bool:
    return any(it.kind == "conjunctions" and it.value == "with" for it in items[a + 1:b])


def _attributes(part: Sequence[_Item]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    sides = [it.value for it in part if it.kind == "sides"]
    if sides:
        attrs["side"] = "bilateral" if "bilateral" in sides or {"left", "right"} <= set(sides) else sides[0]
    for kind in ("zones", "severity"):
        values = [it.value for it in part if it.kind == kind]
        if values:
            attrs[_ATTRIBUTES[kind]] = values[0]
    return attrs


def map_text(text: str, lang: str = "auto") -> TextMapping:
    """Read ``text`` (Russian, Ukrainian, or mixed with English) into English findings.

    ``lang`` "auto" detects the language; "ru"/"uk" force the glossary. Raises
    :class:`SynthexError` naming the text when it names no finding, no normal statement and no
    denial, and listing the words the glossary did not know.
    """
    if not isinstance(text, str) or not text.strip():
        raise SynthexError("the text to map is empty; write the findings, e.g. 'умеренная кардиомегалия'")
    if lang not in LANG_CHOICES:
        raise SynthexError(f"unknown language {lang!r}; choose one of {', '.join(LANG_CHOICES)}")
    detected = detect_language(text)
    if lang == "auto":
        lang = detected.split("+")[0]
        if lang == "en":
            check_not_transliterated(text)
            raise SynthexError(f"{text!r} has no Cyrillic letters: it is read as English, not mapped "
                               "(pass --lang ru or --lang uk to map it anyway)")
    shown_lang = lang + ("+en" if detected.endswith("+en") else "")
    glossary = load_glossary(lang) if lang != "en" else load_glossary("ru")
    notes: list[str] = []
    if _WEIGHT.search(text):
        notes.append("prompt weights such as (text:1.3) are not carried over to the English text")
    plain = _WEIGHT.sub(lambda m: f" {m.group(1) or m.group(2) or ''} ", text)
    unknown: list[str] = []
    positives: list[Finding] = []
    denied: list[str] = []
    normal = False
    previous: list[tuple[str, dict]] = []
    for clause in _CLAUSES.split(normalise(plain)):
        words = tokens(clause)
        if not words:
            continue
        items = _items(glossary, words, unknown, notes)
        found, no, is_normal, attrs = _clause(items)
        if not found and not no and not is_normal and attrs and previous:
            # a clause of modifiers only ("..., справа") refines the previous clause
            del positives[len(positives) - len(previous):]
            previous = [(name, {**attrs, **old}) for name, old in previous]
            positives += [build_finding(name, a) for name, a in previous]
            continue
        positives += [build_finding(name, a) for name, a in found]
        previous = found
        denied += no
        normal = normal or is_normal
    positives = [f for f in positives if f.name != "normal"]
    if not positives and not (normal or denied):
        known = ", ".join(sorted({e.value for e in glossary.entries if e.kind == "findings"}))
        raise SynthexError(
            f"no finding recognised in {text.strip()!r}"
            + (f" (words not in the {LANGUAGE_NAMES.get(lang, lang)} glossary: {', '.join(unknown)})" if unknown else "")
            + f"; name a finding (known: {known}) or say the study is normal ('норма', 'без патологии'), "
            "or pass --lang en to use the text unchanged")
    findings = merge_findings(positives) if positives else [Finding("normal")]
    present = {f.name for f in findings}
    denied = [name for n, name in enumerate(denied) if name not in present and name not in denied[:n]]
    return TextMapping(text, shown_lang, findings, denied, english_caption(findings, denied), unknown, notes)


def english_caption(findings: Sequence[Finding], negated: Sequence[str] = ()) -> str:
    """The training-caption form: "Chest x-ray. Cardiomegaly moderate. Pleural effusion left. No pneumothorax."."""
    parts = ["Chest x-ray."]
    for f in findings:
        words = [f.name.replace("_", " ").capitalize(), f.side, f"{f.zone} zone" if f.zone else None, f.severity]
        parts.append(" ".join(w for w in words if w) + ".")
    parts += [f"No {name.replace('_', ' ')}." for name in negated if name != "normal"]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Transliteration
# --------------------------------------------------------------------------------------------
_TRANSLIT = {"а": ["a"], "б": ["b"], "в": ["v", "w"], "г": ["g", "h"], "ґ": ["g"], "д": ["d"], "е": ["e", "ye"],
             "є": ["ye", "ie", "je"], "ж": ["zh", "j"], "з": ["z"], "и": ["i", "y"], "і": ["i"], "ї": ["yi", "i", "ji"],
             "й": ["y", "i", "j"], "к": ["k"], "л": ["l"], "м": ["m"], "н": ["n"], "о": ["o"], "п": ["p"], "р": ["r"],
             "с": ["s"], "т": ["t"], "у": ["u"], "ф": ["f"], "х": ["kh", "h"], "ц": ["ts", "c"], "ч": ["ch"],
             "ш": ["sh"], "щ": ["shch", "sch"], "ъ": [""], "ы": ["y", "i"], "ь": ["", "'"], "э": ["e"],
             "ю": ["yu", "iu", "ju"], "я": ["ya", "ia", "ja"], "'": [""]}


def _spellings(word: str, limit: int = 64) -> set[str]:
    out = {""}
    for ch in word:
        options = _TRANSLIT.get(ch, [ch])
        out = {o + t for o in out for t in options}
        if len(out) > limit:
            out = set(sorted(out)[:limit])
    return out


@functools.lru_cache(maxsize=1)
def _translit_table() -> dict[str, str]:
    from synthex.phantom.findings import FILLER_WORDS, attribute_words, finding_synonyms

    english = set(FILLER_WORDS) | {w for p in finding_synonyms() for w in tokens(p)}
    english |= {w for table in attribute_words().values() for p in table for w in tokens(p)}
    table: dict[str, str] = {}
    for lang in LANGUAGES:
        for entry in load_glossary(lang).entries:
            if entry.lang == "en" or entry.kind in ("known", "conjunctions"):
                continue
            for forms in entry.words:
                for form in forms:
                    if len(form) >= 5:
                        for spelling in _spellings(form):
                            if spelling not in english and len(spelling) >= 5:
                                table.setdefault(spelling, form)
    return table


def transliteration_hits(text: str) -> list[tuple[str, str]]:
    """Latin words of ``text`` that spell a Russian/Ukrainian glossary word: ``(word, cyrillic)``."""
    table = _translit_table()
    out = []
    for word in tokens(normalise(text)):
        if word in table and (word, table[word]) not in out:
            out.append((word, table[word]))
    return out


def check_not_transliterated(text: str) -> None:
    """Raise a clear message when Latin text looks like transliterated Russian or Ukrainian."""
    if has_cyrillic(text):
        return
    hits = transliteration_hits(text)
    if hits:
        pairs = ", ".join(f"{w!r} = {c!r}" for w, c in hits[:5])
        raise SynthexError(
            f"the text looks like Russian or Ukrainian written in Latin letters ({pairs}); the models "
            "read English, and the glossary reads Cyrillic: write it in Cyrillic (or in English), "
            "or pass --lang en to use it unchanged")


def localise(text: str, lang: str = "auto") -> tuple[str, TextMapping | None]:
    """The English text to give a model, and the mapping (None when the text is used unchanged).

    "auto": Cyrillic text is mapped, Latin text that spells Russian/Ukrainian words is refused,
    English passes unchanged; "en": unchanged; "ru"/"uk": mapped with that glossary.
    """
    if lang not in LANG_CHOICES:
        raise SynthexError(f"unknown language {lang!r}; choose one of {', '.join(LANG_CHOICES)}")
    if lang == "en" or not isinstance(text, str) or not text.strip():
        return text, None
    if lang == "auto" and not has_cyrillic(text):
        check_not_transliterated(text)
        return text, None
    mapping = map_text(text, lang)
    return mapping.english, mapping
