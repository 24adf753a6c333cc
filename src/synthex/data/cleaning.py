"""Cleaning of radiology report text (findings, impression) as an ordered rule table.

The rules live in a YAML file (``synthex/config/cleaning_rules.yaml`` by default) so that a user
can read why each one exists and add their own. Each rule is a regular expression with either a
replacement (Python ``re.sub`` syntax, ``\\1`` / ``\\g<name>``) or ``null`` meaning "drop the
whole sentence". Rules run in file order.

* ``scope: sentence`` rules see one sentence at a time (the text is split into sentences once);
  ``^`` and ``$`` mean the sentence start and end.
* ``scope: text`` rules see the whole text, its sentences joined by single spaces; they count
  matches rather than sentences and cannot drop.

After the last rule every sentence gets sentence case: its first letter is upper-cased and the
rest is left untouched, so acronyms such as CT, COPD and AP survive.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from synthex.errors import SynthexError

__all__ = [
    "CleaningReport",
    "CleaningRule",
    "Cleaner",
    "DEFAULT_RULES_FILE",
    "load_rules",
    "split_sentences",
]

DEFAULT_RULES_FILE = "cleaning_rules.yaml"
SCOPES = ("sentence", "text")
XXXX = "XXXX"
_RULE_KEYS = {"name", "pattern", "replacement", "reason", "scope"}
_REQUIRED_KEYS = ("name", "pattern", "reason")

# A sentence ends at . ! or ? followed by white space (but not after a list number such as
# "1."), directly followed by a capital letter when a lower-case word precedes ("clear.The"),
# or before a list number even without a period ("Cardiomegaly 2. Opacity ...").
_SENTENCE_BREAK = re.compile(
    r"(?<=[.!?])(?<!\b\d[.])(?<!\b\d\d[.])\s+|(?<=[a-z][.!?])(?=[A-Z][a-z])"
    r"|\s+(?=\d{1,2}\.\s+[A-Za-z])"
)
# Optional leading punctuation and list number, then the first letter of the sentence.
_FIRST_LETTER = re.compile(r"^([^\w]*(?:\d{1,2}[.)]\s+)?[^\w]*)([a-z])")


@dataclass(frozen=True)
class CleaningRule:
    """One row of the rule table; ``replacement=None`` drops every sentence the pattern hits."""

    name: str
    pattern: str
    replacement: str | None
    reason: str
    scope: str = "sentence"

    @property
    def drops(self) -> bool:
        """True when the rule removes whole sentences instead of rewriting them."""
        return self.replacement is None


@dataclass
class CleaningReport:
    """What a :meth:`Cleaner.clean_many` run changed, for the data card.

    ``rule_sentences`` maps each rule name, in rule order, to the sentences it rewrote or dropped
    (for ``scope: text`` rules: the places it matched). ``examples`` holds a few (before, after)
    pairs of changed texts, those with XXXX markers first.
    """

    n_texts: int
    xxxx_before: int
    xxxx_after: int
    rule_sentences: dict[str, int]
    examples: list[tuple[str, str]]
    rule_reasons: dict[str, str] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per rule, in rule order: name, reason, sentences touched."""
        rows = [
            {"name": name, "reason": self.rule_reasons.get(name, ""), "sentences_touched": n}
            for name, n in self.rule_sentences.items()
        ]
        return pd.DataFrame(rows, columns=["name", "reason", "sentences_touched"])


# ----------------------------------------------------------------------------------------------
# Loading and validating the rule table
# ----------------------------------------------------------------------------------------------
def _read_rules_text(path: str | Path | None) -> tuple[str, str]:
    """Return (YAML text, label naming the file for error messages)."""
    if path is None:
        res = resources.files("synthex") / "config" / DEFAULT_RULES_FILE
        return res.read_text(encoding="utf-8"), f"packaged {DEFAULT_RULES_FILE}"
    file = Path(path)
    if not file.is_file():
        raise SynthexError(
            f"Cleaning rules file {file} does not exist; pass an existing YAML file."
        )
    try:
        return file.read_text(encoding="utf-8"), str(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise SynthexError(f"Cannot read cleaning rules file {file}: {exc}") from exc


def _rule_entries(text: str, label: str) -> list[Any]:
    """Parse the YAML and return the list of rule mappings (``rules:`` key or a bare list)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SynthexError(f"Cleaning rules file {label} is not valid YAML: {exc}") from exc
    entries = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise SynthexError(
            f"Cleaning rules file {label} must hold a non-empty list under 'rules:' "
            "(each item: name, pattern, replacement, reason, scope)."
        )
    return entries


def _check_regex(rule: CleaningRule, where: str) -> None:
    """Compile the pattern and check the replacement template against it."""
    try:
        compiled = re.compile(rule.pattern, re.MULTILINE)
    except re.error as exc:
        raise SynthexError(
            f"{where}: pattern {rule.pattern!r} is not a valid regex: {exc}"
        ) from exc
    if rule.replacement is not None:
        try:
            compiled.sub(rule.replacement, "")  # parses the template even without a match
        except (re.error, IndexError) as exc:
            raise SynthexError(
                f"{where}: replacement {rule.replacement!r} is invalid for its pattern: {exc}"
            ) from exc


def _parse_rule(entry: Any, index: int, label: str) -> CleaningRule:
    """Turn one YAML mapping into a checked :class:`CleaningRule`."""
    where = f"Cleaning rules file {label}, rule #{index + 1}"
    if not isinstance(entry, dict):
        raise SynthexError(f"{where} must be a mapping with keys {sorted(_RULE_KEYS)}.")
    if isinstance(entry.get("name"), str):
        where += f" ({entry['name']!r})"
    unknown = sorted(set(entry) - _RULE_KEYS)
    if unknown:
        raise SynthexError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_RULE_KEYS)}.")
    missing = [key for key in (*_REQUIRED_KEYS, "replacement") if key not in entry]
    if missing:
        raise SynthexError(
            f"{where}: missing key(s) {missing} (write 'replacement: null' to drop the sentence)."
        )
    rule = CleaningRule(
        name=entry["name"], pattern=entry["pattern"], replacement=entry["replacement"],
        reason=entry["reason"], scope=entry.get("scope", "sentence"),
    )
    _check_rule(rule, where)
    return rule


def _check_rule(rule: CleaningRule, where: str) -> None:
    """Validate types, name, scope and regex of one rule (also used for rules built in code)."""
    not_text = [key for key in ("name", "pattern", "reason", "scope")
                if not isinstance(getattr(rule, key), str)]
    if not_text or not isinstance(rule.replacement, (str, type(None))):
        raise SynthexError(
            f"{where}: {not_text or ['replacement']} must be text (replacement: text or null)."
        )
    if not rule.name.strip():
        raise SynthexError(f"{where}: name must not be empty.")
    if rule.scope not in SCOPES:
        raise SynthexError(f"{where}: scope must be one of {SCOPES}, not {rule.scope!r}.")
    if rule.scope == "text" and rule.drops:
        raise SynthexError(f"{where}: only sentence-scope rules can drop (replacement: null).")
    _check_regex(rule, where)


def _check_unique(rules: Sequence[CleaningRule], label: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise SynthexError(
                f"{label}: rule name {rule.name!r} is repeated; names must be unique."
            )
        seen.add(rule.name)


def load_rules(path: str | Path | None = None) -> tuple[CleaningRule, ...]:
    """Load the ordered rule table from ``path`` (None: the packaged YAML).

    Raises :class:`~synthex.errors.SynthexError` naming the file and the rule when the file is
    missing, is not YAML, or a rule has a bad key, scope, regex or replacement.
    """
    text, label = _read_rules_text(path)
    entries = _rule_entries(text, label)
    rules = tuple(_parse_rule(entry, i, label) for i, entry in enumerate(entries))
    _check_unique(rules, f"Cleaning rules file {label}")
    return rules


# ----------------------------------------------------------------------------------------------
# Applying the rules
# ----------------------------------------------------------------------------------------------
def split_sentences(text: str) -> list[str]:
    """Split report text into stripped, non-empty sentences."""
    return [part.strip() for part in _SENTENCE_BREAK.split(text) if part and part.strip()]


def _sentence_case(sentence: str) -> str:
    """Upper-case the first letter of a sentence, leaving the rest untouched."""
    return _FIRST_LETTER.sub(lambda m: m.group(1) + m.group(2).upper(), sentence, count=1)


def _is_missing(text: object) -> bool:
    if text is None or text is pd.NA:
        return True
    return isinstance(text, float) and math.isnan(text)


def _fold(text: str) -> str:
    """Case-fold like ``re.IGNORECASE`` does for ASCII letters (it also matches i to the dotless
    and the dotted Turkish I, which ``str.casefold`` keeps apart)."""
    if text.isascii():  # O(1) check; the common case
        return text.lower()
    return text.casefold().replace("\u0131", "i").replace("i\u0307", "i")


@dataclass(frozen=True)
class _Compiled:
    """A rule ready to run: its position, regex and a literal that every match must contain."""

    index: int
    rule: CleaningRule
    regex: re.Pattern[str]
    literal: str | None  # case-folded when ``fold``
    fold: bool

    def may_match(self, text: str, folded: str | None = None) -> bool:
        """False only when the text cannot match (it lacks the required literal)."""
        if self.literal is None:
            return True
        if self.fold:
            return self.literal in (_fold(text) if folded is None else folded)
        return self.literal in text


def _literal_runs(items: Iterable[Any], fold: bool, runs: list[tuple[str, bool]]) -> None:
    """Collect runs of ASCII literals that lie on every path through ``items``."""
    from re import _constants as sre  # private, present since Python 3.11

    current: list[str] = []
    for op, arg in items:
        if op == sre.LITERAL and arg < 128:
            current.append(chr(arg))
            continue
        if current:
            runs.append(("".join(current), fold))
            current = []
        if op == sre.SUBPATTERN:  # a plain group: its own sequence is required too
            _, add_flags, del_flags, sub = arg
            sub_fold = bool((fold or add_flags & re.IGNORECASE) and not del_flags & re.IGNORECASE)
            _literal_runs(sub, sub_fold, runs)
    if current:
        runs.append(("".join(current), fold))


def _required_literal(pattern: str) -> tuple[str | None, bool]:
    """The longest literal every match of ``pattern`` contains, to skip texts cheaply.

    Uses the regex parser of the standard library (``re._parser``); if that is unavailable or
    fails, returns ``(None, False)`` and the rule simply runs on every sentence.
    """
    try:
        from re import _parser as sre_parse

        parsed = sre_parse.parse(pattern)
        runs: list[tuple[str, bool]] = []
        _literal_runs(parsed, bool(parsed.state.flags & re.IGNORECASE), runs)
    except Exception:  # noqa: BLE001 - an optimisation only; never fail because of it
        return None, False
    if not runs:
        return None, False
    literal, fold = max(runs, key=lambda run: len(run[0]))
    if len(literal) < 2:
        return None, False
    return (literal.casefold() if fold else literal), fold


def _compile(index: int, rule: CleaningRule) -> _Compiled:
    literal, fold = _required_literal(rule.pattern)
    return _Compiled(index, rule, re.compile(rule.pattern, re.MULTILINE), literal, fold)


@dataclass(frozen=True)
class _Phase:
    """A run of consecutive rules with the same scope."""

    scope: str
    rules: tuple[_Compiled, ...]


def _phases(rules: Sequence[CleaningRule]) -> tuple[_Phase, ...]:
    phases: list[_Phase] = []
    for i, rule in enumerate(rules):
        item = _compile(i, rule)
        if phases and phases[-1].scope == rule.scope:
            phases[-1] = _Phase(rule.scope, phases[-1].rules + (item,))
        else:
            phases.append(_Phase(rule.scope, (item,)))
    return tuple(phases)


def _apply_sentence_rule(item: _Compiled, sentences: list[str]) -> tuple[list[str], int]:
    """Apply one sentence-scope rule to every sentence; return (sentences, number touched)."""
    regex, replacement = item.regex, item.rule.replacement
    out: list[str] = []
    touched = 0
    for sentence in sentences:
        if not item.may_match(sentence):
            out.append(sentence)
        elif replacement is None:
            if regex.search(sentence):
                touched += 1
            else:
                out.append(sentence)
        else:
            new = regex.sub(replacement, sentence)
            touched += new != sentence
            out.append(new)
    return out, touched


class Cleaner:
    """Applies an ordered rule table to report texts.

    ``rules``: None (the packaged table), a path to a YAML rules file, or a sequence of
    :class:`CleaningRule`.
    """

    def __init__(self, rules: Sequence[CleaningRule] | str | Path | None = None) -> None:
        if rules is None or isinstance(rules, (str, Path)):
            rules = load_rules(rules)
        else:
            rules = tuple(rules)
            for i, rule in enumerate(rules):
                _check_rule(rule, f"Cleaning rule #{i + 1} ({rule.name!r})")
            _check_unique(rules, "Cleaning rules given in code")
        self.rules: tuple[CleaningRule, ...] = rules
        self._phases = _phases(rules)

    def clean(self, text: str | None) -> str:
        """Return the cleaned text; None/NaN gives ""."""
        return self._clean(text, [0] * len(self.rules))

    def clean_many(
        self, texts: Iterable[str | None], n_examples: int = 5
    ) -> tuple[list[str], CleaningReport]:
        """Clean every text and report what changed (XXXX counts, sentences per rule)."""
        counts = [0] * len(self.rules)
        cleaned: list[str] = []
        with_marker: list[tuple[str, str]] = []  # examples that show XXXX being resolved
        other: list[tuple[str, str]] = []
        before = after = 0
        for text in texts:
            out = self._clean(text, counts)
            cleaned.append(out)
            raw = "" if _is_missing(text) else str(text)
            n_raw = raw.count(XXXX)
            before += n_raw
            after += out.count(XXXX)
            pool = with_marker if n_raw else other
            if len(pool) < n_examples and out != raw.strip():
                pool.append((raw, out))
        report = CleaningReport(
            n_texts=len(cleaned), xxxx_before=before, xxxx_after=after,
            rule_sentences={rule.name: n for rule, n in zip(self.rules, counts)},
            examples=(with_marker + other)[:n_examples],
            rule_reasons={rule.name: rule.reason for rule in self.rules},
        )
        return cleaned, report

    def _clean(self, text: str | None, counts: list[int]) -> str:
        if _is_missing(text):
            return ""
        if not isinstance(text, str):
            raise TypeError(f"Cleaner.clean expects a string or None, not {type(text).__name__}")
        sentences = split_sentences(text)
        for phase in self._phases:
            if phase.scope == "sentence":
                sentences = self._run_sentence_phase(phase, sentences, counts)
            else:
                sentences = self._run_text_phase(phase, sentences, counts)
        return " ".join(_sentence_case(s) for s in sentences)

    @staticmethod
    def _run_sentence_phase(phase: _Phase, sentences: list[str], counts: list[int]) -> list[str]:
        # A rule whose required literal is absent from the whole text is skipped at once.
        joined = "\n".join(sentences)
        folded: str | None = None
        for item in phase.rules:
            if not sentences:
                break
            if item.fold and folded is None:
                folded = _fold(joined)
            if not item.may_match(joined, folded):
                continue
            sentences, touched = _apply_sentence_rule(item, sentences)
            if touched:
                counts[item.index] += touched
                joined, folded = "\n".join(sentences), None
        return sentences

    @staticmethod
    def _run_text_phase(phase: _Phase, sentences: list[str], counts: list[int]) -> list[str]:
        # The sentences are joined with single spaces and split again only if a rule matched.
        text = " ".join(sentences)
        matched = False
        for item in phase.rules:
            if item.may_match(text):
                text, n = item.regex.subn(item.rule.replacement or "", text)
                counts[item.index] += n
                matched = matched or n > 0
        return split_sentences(text) if matched else sentences
