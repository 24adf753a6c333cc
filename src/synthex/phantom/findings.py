"""Findings the phantom can draw: the vocabulary, the :class:`Finding` record and a text parser.

A finding has a canonical ``name`` (see :data:`FINDING_NAMES`), and where meaningful a ``side``
(the PATIENT's side: "left", "right" or "bilateral"), a ``zone`` ("upper", "middle", "lower")
and a ``severity`` ("mild", "moderate", "severe"; "small"/"large" are accepted for sizes).
``extra`` holds optional numeric overrides (e.g. ``{"ctr": 0.62}`` for cardiomegaly).

:func:`parse_findings` reads free text such as ``"moderate left pleural effusion; opacity right
lower zone"`` or MeSH-style ``"Cardiomegaly/mild; Pleural Effusion/right"``. Clauses are split at
``, ; . / newline`` and at "and"/"with"; negated clauses ("no pneumothorax") are skipped; a clause
that names no known finding raises :class:`~synthex.errors.SynthexError` listing the valid names.
Missing side/zone/severity get fixed defaults (:meth:`Finding.resolved`), never random ones.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synthex.errors import SynthexError

log = logging.getLogger(__name__)

SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower")
SEVERITIES = ("mild", "moderate", "severe")
LOBES = {"RUL": ("right", "upper"), "RML": ("right", "middle"), "RLL": ("right", "lower"),
         "LUL": ("left", "upper"), "LINGULA": ("left", "middle"), "LLL": ("left", "lower")}


@dataclass(frozen=True)
class FindingSpec:
    """How one finding is named, drawn and parameterised."""

    name: str
    family: str  # which renderer draws it
    description: str
    synonyms: tuple[str, ...] = ()
    sides: tuple[str, ...] = ()  # allowed sides; empty = takes no side
    default_side: str | None = None
    zoned: bool = False
    default_zone: str | None = None
    graded: bool = False
    extra: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # numeric extras and ranges

    @property
    def lateral(self) -> bool:
        """True when the finding can sit on one side only (left/right)."""
        return "left" in self.sides


_LR = ("right", "left")
_LRB = ("right", "left", "bilateral")
_OPACITY_EXTRA = {"extent": (0.05, 0.7)}  # radius as a fraction of the lung width
_SPECS = (
    FindingSpec("normal", "normal", "no abnormality",
                ("no acute cardiopulmonary abnormality", "no acute cardiopulmonary disease",
                 "no acute cardiopulmonary process", "no acute disease", "no active disease",
                 "no abnormality", "unremarkable", "unremarkable chest", "within normal limits",
                 "clear lungs", "lungs are clear", "healthy")),
    FindingSpec("cardiomegaly", "heart", "enlarged cardiac silhouette; CTR set by severity",
                ("enlarged heart", "heart enlarged", "heart is enlarged", "cardiac enlargement",
                 "enlarged cardiac silhouette", "cardiac silhouette is enlarged", "enlarged heart size",
                 "heart size is enlarged", "large heart", "cardiomegalies", "enlargement of the cardiac silhouette",
                 "enlarged cardiac contour", "cardiac contour is enlarged", "heart is large"),
                graded=True, extra={"ctr": (0.3, 0.85)}),
    FindingSpec("pleural_effusion", "effusion", "basal fluid with a meniscus, blunted costophrenic angle",
                ("pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid",
                 "hydrothorax"),
                sides=_LRB, default_side="right", graded=True, extra={"height": (0.05, 0.8)}),
    FindingSpec("opacity", "opacity", "focal airspace opacity",
                ("lung opacity", "lung opacities", "opacities", "airspace opacity", "air space opacity",
                 "airspace opacities", "pulmonary opacity", "density", "densities", "infiltrate",
                 "infiltrates", "infiltration", "hazy opacity"),
                sides=_LRB, default_side="right", zoned=True, default_zone="lower", graded=True,
                extra=_OPACITY_EXTRA),
    FindingSpec("consolidation", "opacity", "dense homogeneous airspace opacity",
                ("consolidations", "lobar consolidation", "airspace consolidation", "consolidative opacity"),
                sides=_LRB, default_side="right", zoned=True, default_zone="lower", graded=True,
                extra=_OPACITY_EXTRA),
    FindingSpec("airspace_disease", "opacity", "ill-defined multifocal airspace opacity",
                ("airspace disease", "air space disease", "alveolar disease", "airspace process"),
                sides=_LRB, default_side="right", zoned=True, default_zone="lower", graded=True,
                extra=_OPACITY_EXTRA),
    FindingSpec("pneumonia", "opacity", "patchy mottled airspace opacity",
                ("pneumonias", "bronchopneumonia", "lobar pneumonia", "pneumonitis", "infection"),
                sides=_LRB, default_side="right", zoned=True, default_zone="lower", graded=True,
                extra=_OPACITY_EXTRA),
    FindingSpec("atelectasis", "atelectasis", "plate-like (discoid) band of collapse",
                ("pulmonary atelectasis", "atelectases", "atelectatic changes", "atelectatic change",
                 "platelike atelectasis", "plate like atelectasis", "discoid atelectasis",
                 "linear atelectasis", "subsegmental atelectasis", "atelectatic"),
                sides=_LRB, default_side="right", zoned=True, default_zone="lower", graded=True),
    FindingSpec("edema", "edema", "bilateral perihilar haze, vascular prominence, septal lines",
                ("pulmonary edema", "interstitial edema", "alveolar edema", "oedema", "pulmonary oedema",
                 "fluid overload"),
                sides=("bilateral",), default_side="bilateral", graded=True),
    FindingSpec("congestion", "edema", "vascular prominence with a faint perihilar haze",
                ("pulmonary congestion", "vascular congestion", "pulmonary vascular congestion",
                 "pulmonary venous congestion", "vascular prominence", "cephalization"),
                sides=("bilateral",), default_side="bilateral", graded=True),
    FindingSpec("pneumothorax", "pneumothorax", "visible pleural line, no lung markings beyond it",
                ("pneumothoraces", "ptx"), sides=_LRB, default_side="right", graded=True,
                extra={"collapse": (0.03, 0.7)}),
    FindingSpec("nodule", "nodule", "round soft-tissue nodule",
                ("pulmonary nodule", "lung nodule", "nodules", "nodular opacity", "nodular density"),
                sides=_LR, default_side="right", zoned=True, default_zone="upper", graded=True,
                extra={"radius": (0.004, 0.05)}),
    FindingSpec("mass", "nodule", "large lobulated mass",
                ("lung mass", "pulmonary mass", "masses", "mass lesion", "tumor", "tumour"),
                sides=_LR, default_side="right", zoned=True, default_zone="upper", graded=True,
                extra={"radius": (0.02, 0.15)}),
    FindingSpec("calcified_granuloma", "granuloma", "small very dense calcified nodule",
                ("calcified granuloma", "calcified granulomas", "granuloma", "granulomas",
                 "granulomatous disease", "calcified nodule", "calcified nodules", "calcinosis"),
                sides=_LR, default_side="right", zoned=True, default_zone="middle",
                extra={"count": (1, 8)}),
    FindingSpec("emphysema", "emphysema", "hyperinflated lucent lungs with flattened domes",
                ("hyperinflation", "hyperinflated lungs", "hyperinflated", "hyperexpansion",
                 "hyperexpanded lungs", "hyperexpanded", "hyperaeration", "hyperdistention",
                 "lung hyperdistention", "copd", "chronic obstructive pulmonary disease",
                 "pulmonary emphysema", "emphysematous changes", "flattened diaphragm",
                 "flattened hemidiaphragms", "flattened diaphragms"),
                sides=("bilateral",), default_side="bilateral", graded=True),
    FindingSpec("elevated_hemidiaphragm", "diaphragm", "one raised diaphragm dome",
                ("elevated hemidiaphragm", "elevated diaphragm", "diaphragm elevated",
                 "hemidiaphragm elevated", "hemidiaphragm is elevated", "raised hemidiaphragm",
                 "elevation of the hemidiaphragm", "hemidiaphragm elevation", "diaphragmatic elevation",
                 "eventration", "diaphragm eventration"),
                sides=_LR, default_side="right", graded=True, extra={"rise": (0.02, 0.3)}),
    FindingSpec("scoliosis", "spine", "lateral curvature of the thoracic spine (side = convexity)",
                ("thoracic scoliosis", "spinal curvature", "curvature of the spine", "dextroscoliosis",
                 "levoscoliosis", "dextrocurvature", "levocurvature"),
                sides=_LR, default_side="right", graded=True, extra={"deviation": (0.005, 0.12)}),
    FindingSpec("pacemaker", "device", "pacemaker generator with a lead into the heart",
                ("cardiac pacemaker", "pacer", "pacemaker defibrillator", "defibrillator", "icd", "aicd",
                 "implantable cardioverter defibrillator", "cardiac device", "pacemaker leads"),
                sides=_LR, default_side="left"),
    FindingSpec("central_line", "device", "central venous catheter ending at the cavoatrial junction",
                ("central line", "central venous catheter", "central venous line", "cvc", "picc",
                 "picc line", "port", "port a cath", "catheter", "venous catheter", "jugular catheter",
                 "subclavian catheter", "dialysis catheter"),
                sides=_LR, default_side="right"),
    FindingSpec("sternotomy", "device", "median sternotomy wires",
                ("median sternotomy", "sternotomy wires", "sternal wires", "sternal sutures", "cabg",
                 "post cabg", "coronary artery bypass", "sternotomy changes")),
)
REGISTRY: dict[str, FindingSpec] = {spec.name: spec for spec in _SPECS}
FINDING_NAMES: tuple[str, ...] = tuple(REGISTRY)
"""Canonical finding names, in gallery order."""


def finding_names() -> list[str]:
    """The canonical finding names."""
    return list(FINDING_NAMES)


def finding_synonyms() -> dict[str, str]:
    """Every accepted phrase (normalised) -> canonical name, including the names themselves."""
    return dict(_phrase_table())


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", text.lower())).strip()


@functools.lru_cache(maxsize=1)
def _phrase_table() -> tuple[tuple[str, str], ...]:
    table = {}
    for spec in _SPECS:
        for phrase in (spec.name, *spec.synonyms):
            table[_norm(phrase)] = spec.name
    return tuple(table.items())


def _unknown(what: str, value: object, valid: Iterable[str]) -> SynthexError:
    return SynthexError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")


def finding_spec(name: str) -> FindingSpec:
    """The spec of a finding given its name or any synonym; raises listing the valid names."""
    key = _norm(str(name))
    for phrase, canonical in _phrase_table():
        if phrase == key:
            return REGISTRY[canonical]
    raise _unknown("finding name", name, FINDING_NAMES)


_SEVERITY_WORDS = {
    "mild": ("mild", "mildly", "minimal", "minimally", "minor", "slight", "slightly", "small", "tiny",
             "trace", "borderline", "subtle"),
    "moderate": ("moderate", "moderately", "medium", "moderate sized", "moderate size"),
    "severe": ("severe", "severely", "large", "marked", "markedly", "massive", "extensive", "big",
               "significant", "significantly", "substantial", "large sized", "huge"),
}
_SIDE_WORDS = {
    "bilateral": ("bilateral", "bilaterally", "both", "bibasilar", "bibasal", "biapical", "bilat"),
    "right": ("right", "rt", "dextroscoliosis", "dextrocurvature"),
    "left": ("left", "lt", "levoscoliosis", "levocurvature"),
}
_ZONE_WORDS = {
    "upper": ("upper", "apical", "apex", "apices", "biapical", "superior"),
    "middle": ("middle", "mid", "midlung", "perihilar", "central"),
    "lower": ("lower", "base", "bases", "basal", "basilar", "bibasilar", "bibasal", "inferior"),
}
_LOBE_WORDS = {"RUL": ("rul", "right upper lobe"), "RML": ("rml", "right middle lobe"),
               "RLL": ("rll", "right lower lobe"), "LUL": ("lul", "left upper lobe"),
               "LINGULA": ("lingula", "lingular"), "LLL": ("lll", "left lower lobe")}


def _canon_word(value: str | None, table: Mapping[str, tuple[str, ...]], what: str) -> str | None:
    if value is None:
        return None
    key = _norm(str(value))
    for canonical, words in table.items():
        if key == canonical or key in words:
            return canonical
    raise _unknown(what, value, table)


@dataclass(frozen=True)
class Finding:
    """One finding to draw. Synonyms are accepted and stored under the canonical name.

    ``side`` is the patient's side ("right" = image left). ``None`` attributes are filled by
    :meth:`resolved` with the finding's fixed defaults. Attributes that the finding does not
    take (e.g. a side for cardiomegaly) are an error.
    """

    name: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = finding_spec(self.name)
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731
        set_("name", spec.name)
        side = _canon_word(self.side, {s: _SIDE_WORDS[s] for s in SIDES}, "side")
        if side is not None and side not in spec.sides:
            allowed = ", ".join(spec.sides) if spec.sides else "none"
            raise SynthexError(f"{spec.name} cannot take side {side!r} (allowed sides: {allowed})")
        set_("side", side)
        zone = _canon_word(self.zone, _ZONE_WORDS, "zone")
        if zone is not None and not spec.zoned:
            raise SynthexError(f"{spec.name} takes no zone (zoned findings: {', '.join(_zoned())})")
        set_("zone", zone)
        severity = _canon_word(self.severity, _SEVERITY_WORDS, "severity")
        if severity is not None and not spec.graded:
            raise SynthexError(f"{spec.name} takes no severity (graded findings: {', '.join(_graded())})")
        set_("severity", severity)
        set_("extra", _check_extra(spec, dict(self.extra or {})))

    @property
    def spec(self) -> FindingSpec:
        return REGISTRY[self.name]

    def resolved(self) -> Finding:
        """This finding with every missing attribute set to its fixed default."""
        spec = self.spec
        return Finding(self.name, self.side or spec.default_side,
                       self.zone or spec.default_zone, self.severity or ("moderate" if spec.graded else None),
                       self.extra)

    def describe(self) -> str:
        """Readable text that :func:`parse_findings` maps back to this finding."""
        words = [self.severity, self.side, self.name.replace("_", " ")]
        text = " ".join(w for w in words if w)
        return f"{text} {self.zone} zone" if self.zone else text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "side": self.side, "zone": self.zone, "severity": self.severity,
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        unknown = set(data) - {"name", "side", "zone", "severity", "extra"}
        if unknown:
            raise SynthexError(f"unknown finding field(s) {sorted(unknown)}; valid: name, side, zone, severity, extra")
        return cls(data["name"], data.get("side"), data.get("zone"), data.get("severity"), data.get("extra") or {})


def _zoned() -> list[str]:
    return [s.name for s in _SPECS if s.zoned]


def _graded() -> list[str]:
    return [s.name for s in _SPECS if s.graded]


def _check_extra(spec: FindingSpec, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key == "lobe" and spec.zoned:
            lobe = str(value).upper()
            if lobe not in LOBES:
                raise _unknown("lobe", value, LOBES)
            out[key] = lobe
            continue
        if key not in spec.extra:
            valid = [*spec.extra, *(["lobe"] if spec.zoned else [])]
            raise SynthexError(f"{spec.name} takes no parameter {key!r}; valid: {', '.join(valid) or 'none'}")
        lo, hi = spec.extra[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise SynthexError(f"{spec.name} parameter {key}={value!r} must be a number in [{lo}, {hi}]")
        out[key] = int(value) if key == "count" else float(value)
    return out


def as_findings(value: str | Finding | Mapping | Iterable[str | Finding | Mapping] | None) -> list[Finding]:
    """Accept text, a Finding, a dict, or a list of those; return the findings (not resolved)."""
    if value is None:
        return []
    if isinstance(value, str):
        return parse_findings(value)
    if isinstance(value, Finding):
        return [value]
    if isinstance(value, Mapping):
        return [Finding.from_dict(value)]
    out: list[Finding] = []
    for item in value:
        if isinstance(item, (str, Finding, Mapping)):
            out.extend(as_findings(item))
        else:
            raise SynthexError(f"cannot read a finding from {item!r}; give text, a Finding or a dict")
    return out


# ---------------------------------------------------------------------------------------------
# Free-text parser
# ---------------------------------------------------------------------------------------------
_CLAUSE_SPLIT = re.compile(r"[,;.:\n]+|\b(?:and|with|plus|also|but|however|although|though|whereas)\b")
_PLAIN_SIDES = re.compile(r"\b(?:right|left|bilateral|bilaterally|both|rt|lt|bilat)\b")
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of|resolved|resolution of|absence of|removed)\b")
# Grading adverbs between the words of a finding phrase ("the heart is mildly enlarged"): removed
# before the phrase is matched; the grade itself is still read from the clause.
_ADVERBS = re.compile(r"\b(?:mildly|minimally|slightly|moderately|markedly|severely|significantly|"
                      r"substantially|massively|extensively|greatly|borderline)\b")
_FILLER = frozenset(
    "convex convexity thoracic spine sided lead leads heart place tip cavoatrial junction "
    "a an the of in at on to is are was were be there seen noted present evidence suggestive consistent "
    "suspicious for possible probable likely new acute chronic stable unchanged old again zone zones lung "
    "lungs field fields lobe lobes side sided hemithorax region chest x ray xray radiograph radiography cxr "
    "pa ap frontal view views film image findings finding impression study exam examination".split())


def _alternation(phrases: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(set(phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in ordered) + r")\b")


@functools.lru_cache(maxsize=1)
def _patterns() -> dict[str, Any]:
    word_maps = {"lobe": _LOBE_WORDS, "side": _SIDE_WORDS, "zone": _ZONE_WORDS, "severity": _SEVERITY_WORDS}
    lookups = {kind: {w: canon for canon, words in table.items() for w in (*words, canon.lower())}
               for kind, table in word_maps.items()}
    return {"finding": _alternation(p for p, _ in _phrase_table()),
            "lookups": lookups,
            "modifiers": {kind: _alternation(lk) for kind, lk in lookups.items()}}


def parse_findings(text: str) -> list[Finding]:
    """Parse free text into findings (unresolved: missing attributes stay ``None``).

    Raises :class:`SynthexError` when a clause names no known finding, listing the valid names.
    "normal" on its own gives ``[Finding("normal")]``; "normal" together with a finding is an error.
    """
    if not isinstance(text, str):
        raise SynthexError(f"findings text must be a string, got {type(text).__name__}")
    found: list[Finding] = []
    denied: dict[str, str] = {}
    affirmed: dict[str, str] = {}
    previous: tuple[list[str], dict[str, str]] | None = None
    original = text
    text = _norm(text.replace("/", " ")).replace("x ray", "xray")
    text = re.sub(r"\b(?:right and left|left and right|right and left sided)\b", "bilateral", text)
    text = _negated_lists(text)
    for clause in _CLAUSE_SPLIT.split(text):
        clause = (clause or "").strip()
        if not clause:
            continue
        names = _clause_findings(clause, denied)
        if names is None:  # modifiers only ("..., right lower zone"): they refine the previous clause
            if previous:
                del found[len(found) - len(previous[0]):]
                attrs = {**_clause_attributes(clause), **previous[1]}
                _check_attributes(previous[0], attrs, clause, original)
                found.extend(_build(name, attrs) for name in previous[0])
                previous = (previous[0], attrs)
            continue
        attrs = _clause_attributes(clause)
        _check_attributes(names, attrs, clause, original)
        found.extend(_build(name, attrs) for name in names)
        affirmed.update((name, (clause, attrs.get("side"))) for name in names)
        previous = (names, attrs) if names else None
    for name in sorted(set(denied) & set(affirmed)):
        (said_no, no_side), (said_yes, yes_side) = (denied[name], _clause_attributes(denied[name]).get("side")), \
            affirmed[name]
        if no_side is None or yes_side is None or no_side == yes_side:  # "no left X, right X" is fine
            raise SynthexError(f"{original!r} both denies and states {name.replace('_', ' ')} ({said_no!r} vs "
                               f"{said_yes!r}); keep one of the two")
    return _merge(found)


_SENTENCE_SPLIT = re.compile(r"([.;:\n]+)")
_LIST_END = re.compile(r"\b(?:or|nor)\b")
_SCOPE_END = re.compile(r"\b(?:but|however|although|though|except|while|which|whereas|yet)\b")


def _negated_lists(text: str) -> str:
    """A negation governs the whole list it opens: "no consolidation, pneumothorax or effusion"
    denies all three. Within a sentence, the commas / "and" between a negation word and the last
    "or"/"nor" of the list (before any "but", "however", ...) are joined into one clause; a list
    without "or" is left alone ("no effusion, stable cardiomegaly" keeps the cardiomegaly)."""
    parts = _SENTENCE_SPLIT.split(text)
    for k in range(0, len(parts), 2):
        sentence = parts[k]
        neg = _NEGATION.search(sentence)
        if not neg:
            continue
        stop = _SCOPE_END.search(sentence, neg.end())
        scope_end = stop.start() if stop else len(sentence)
        ends = [m for m in _LIST_END.finditer(sentence, neg.end(), scope_end)]
        if not ends:
            continue
        cut = ends[-1].start()
        middle = re.sub(r",|\band\b|\bwith\b", " or ", sentence[neg.end():cut])
        parts[k] = sentence[:neg.end()] + middle + sentence[cut:]
    return "".join(parts)


def _check_attributes(names: list[str], attrs: dict[str, str], clause: str, original: str) -> None:
    """A grade or side that no finding of its clause can take is an error, not silently dropped."""
    severities = {_patterns()["lookups"]["severity"][m.group(0)]
                  for m in _patterns()["modifiers"]["severity"].finditer(
                      _patterns()["finding"].sub(" ", re.sub(r"\s+", " ", _PLAIN_SIDES.sub(" ", clause))))}
    graded = [n for n in names if REGISTRY[n].graded]
    if len(severities) > 1 and graded:
        raise SynthexError(f"{original!r}: {clause!r} gives {' and '.join(sorted(severities))} for the same "
                           "finding; keep one grade (or give each finding its own clause: 'mild A, severe B')")
    side = attrs.get("side")
    explicit_side = bool(_PLAIN_SIDES.search(clause)) or bool(_patterns()["modifiers"]["side"].search(clause))
    if side and explicit_side and "lobe" not in attrs and names and "normal" not in names \
            and not any(side in REGISTRY[n].sides for n in names):
        takes = sorted({s for n in names for s in REGISTRY[n].sides})
        what = ", ".join(n.replace("_", " ") for n in names)
        raise SynthexError(f"{original!r}: {what} has no side {side!r} ("
                           + (f"it takes {', '.join(takes)}" if takes else "it is not lateral")
                           + f"); drop {side!r} or name a finding that has a side")


def _clause_findings(clause: str, denied: dict[str, str] | None = None) -> list[str] | None:
    """Canonical names named (and not negated) in a clause; None when it holds only modifiers.
    Negated names are recorded in ``denied`` (name -> clause)."""
    bare = re.sub(r"\s+", " ", _ADVERBS.sub(" ", _PLAIN_SIDES.sub(" ", clause))).strip()
    matches = list(_patterns()["finding"].finditer(bare))
    if not matches:
        rest = [w for w in re.findall(r"[a-z0-9]+", clause) if w not in _FILLER]
        if _NEGATION.search(clause) or not rest:
            return []
        if _only_modifiers(clause):
            return None
        raise _unknown("finding name", clause, FINDING_NAMES)
    table = dict(_phrase_table())
    names = []
    for match in matches:
        canonical = table[match.group(0)]
        if canonical != "normal" and _NEGATION.search(bare[: match.start()]):
            log.debug("skipping negated finding %r in %r", canonical, clause)
            if denied is not None:
                denied.setdefault(canonical, clause)
            continue
        names.append(canonical)
    return names


def _only_modifiers(clause: str) -> bool:
    rest = clause
    for pattern in _patterns()["modifiers"].values():
        rest = pattern.sub(" ", rest)
    return not [w for w in re.findall(r"[a-z0-9]+", rest) if w not in _FILLER]


def _clause_attributes(clause: str) -> dict[str, str]:
    """Side, zone, severity and lobe words of a clause (finding phrases count too: dextroscoliosis)."""
    pats = _patterns()
    attrs: dict[str, str] = {}
    # severity words inside a finding phrase ("large heart") do not grade it
    outside = pats["finding"].sub(" ", re.sub(r"\s+", " ", _PLAIN_SIDES.sub(" ", clause)))
    for kind in ("lobe", "side", "zone", "severity"):
        source = outside if kind == "severity" else clause
        hits = [pats["lookups"][kind][m.group(0)] for m in pats["modifiers"][kind].finditer(source)]
        if kind == "side" and {"left", "right"} <= set(hits):
            attrs[kind] = "bilateral"
        elif hits:
            attrs[kind] = "bilateral" if "bilateral" in hits else hits[0]
    if "lobe" in attrs:
        side, zone = LOBES[attrs["lobe"]]
        attrs.setdefault("side", side)
        attrs["zone"] = zone
    return attrs


def _build(canonical: str, attrs: dict[str, str]) -> Finding:
    """A Finding with the clause attributes that this finding takes (others are ignored)."""
    spec = REGISTRY[canonical]
    side = attrs.get("side") if attrs.get("side") in spec.sides else None
    zone = attrs.get("zone") if spec.zoned else None
    severity = attrs.get("severity") if spec.graded else None
    extra = {"lobe": attrs["lobe"]} if spec.zoned and "lobe" in attrs else {}
    return Finding(canonical, side, zone, severity, extra)


def _merge(found: list[Finding]) -> list[Finding]:
    """Drop exact duplicates and unspecified copies of a more specific finding of the same name."""
    if any(f.name == "normal" for f in found):
        others = sorted({f.name for f in found if f.name != "normal"})
        if others:
            raise SynthexError(f"'normal' cannot be combined with other findings ({', '.join(others)})")
        return [Finding("normal")]
    out: list[Finding] = []
    for f in found:
        if f in out:
            continue
        if any(g.name == f.name and _subsumes(g, f) for g in found if g is not f and g != f):
            continue
        out.append(f)
    return out


def attribute_words() -> dict[str, dict[str, str]]:
    """The parser's modifier tables: kind ("side", "zone", "severity", "lobe") -> word -> canonical value."""
    return {kind: dict(table) for kind, table in _patterns()["lookups"].items()}


FILLER_WORDS: frozenset[str] = _FILLER
"""Words the parser reads as carrying no finding ("the", "lung", "seen", ...)."""
build_finding = _build
merge_findings = _merge


def _subsumes(specific: Finding, vague: Finding) -> bool:
    """True when ``vague`` leaves unset what ``specific`` sets, and agrees on everything else."""
    pairs = [(specific.side, vague.side), (specific.zone, vague.zone), (specific.severity, vague.severity)]
    agrees = all(v is None or v == s for s, v in pairs)
    return agrees and any(v is None and s is not None for s, v in pairs) and not vague.extra
