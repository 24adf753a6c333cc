"""More ways to say what an image shows: paraphrased captions for training the search text tower.

The phantom caption styles use a fixed vocabulary; people searching an archive do not. For a
finding list, :func:`paraphrase` writes one caption from a wider lexicon of radiology phrasings
(descriptive signs as well as names: "blunted costophrenic angle" for an effusion, "visible
pleural line" for a pneumothorax), with varied side words ("left-sided", "on the left", "L"),
severity words and sentence frames, plus the finding registry's synonyms. ``synthex train search``
draws one of these instead of a stored caption with probability ``paraphrase`` per pair.

Sides are the patient's. Every phrase names the side for findings that have one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthex.phantom.findings import REGISTRY, Finding

SIDE_FORMS = {"left": ("left", "left-sided", "left sided", "L"), "right": ("right", "right-sided", "right sided", "R"),
              "bilateral": ("bilateral", "both-sided", "bibasilar")}
SIDE_PLACES = {"left": ("on the left", "in the left hemithorax", "of the left side"),
               "right": ("on the right", "in the right hemithorax", "of the right side"),
               "bilateral": ("on both sides", "in both hemithoraces")}
SEVERITY_FORMS = {"mild": ("small", "mild", "minimal", "trace", "subtle", "slight"),
                  "moderate": ("moderate", "moderate-sized", "medium"),
                  "severe": ("large", "severe", "extensive", "marked", "big", "massive")}
ZONE_FORMS = {"upper": ("upper", "apical", "upper zone"), "middle": ("mid", "middle", "perihilar"),
              "lower": ("lower", "basal", "basilar")}
# {s} side adjective, {p} side place phrase, {v} severity word, {z} zone word
LEXICON = {
    "pleural_effusion": ("{v} {s} pleural effusion", "{s} costophrenic angle blunting", "blunted {s} costophrenic angle",
                         "{v} {s} pleural fluid", "fluid layering {p}", "{s} basal fluid with a meniscus",
                         "{s} hydrothorax", "{v} effusion {p}", "meniscus sign {p}", "{s} effusion obscuring the diaphragm",
                         "pleural fluid collection {p}"),
    "opacity": ("{s} {z} airspace opacity", "{v} consolidation {p}", "{s} lung infiltrate", "patchy shadowing {p}",
                "{s} {z} zone pneumonia", "{v} {s} {z} consolidation", "hazy opacity {p}", "{s} airspace disease",
                "alveolar opacity in the {s} lung", "{s} lobar pneumonia"),
    "pneumothorax": ("{v} {s} pneumothorax", "{s} PTX", "pleural line with absent lung markings {p}",
                     "collapsed lung {p}", "free pleural air {p}", "{s} sided pneumothorax with lung edge visible",
                     "{v} apical pneumothorax {p}", "air in the pleural space {p}"),
    "nodule": ("{s} {z} lung nodule", "{v} pulmonary nodule {p}", "round opacity in the {s} lung",
               "{s} {z} nodular density", "solitary pulmonary nodule {p}", "coin lesion {p}", "{s} lung mass",
               "spherical lesion in the {s} {z} zone"),
    "atelectasis": ("{s} {z} atelectasis", "plate-like atelectasis {p}", "{s} basal subsegmental atelectasis",
                    "linear atelectasis in the {s} lung", "{s} volume loss", "discoid atelectasis {p}",
                    "{v} {s} lung collapse", "band-like opacity of atelectasis {p}"),
    "elevated_hemidiaphragm": ("elevated {s} hemidiaphragm", "{s} hemidiaphragm raised", "{v} elevation of the {s} diaphragm",
                               "high {s} hemidiaphragm", "{s} diaphragmatic eventration", "raised dome {p}",
                               "{s} diaphragm sits higher than the other"),
    "calcified_granuloma": ("{s} calcified granuloma", "calcified nodule {p}", "small dense calcification in the {s} lung",
                            "old granulomatous disease {p}", "{s} {z} calcified granulomas", "healed granuloma {p}",
                            "punctate calcified focus in the {s} lung"),
    "scoliosis": ("scoliosis convex to the {s}", "{s} convex thoracic scoliosis", "{v} thoracic curvature convex {p}",
                  "spinal curve with convexity {p}", "{s}-convex scoliosis", "{v} scoliosis, convexity {s}"),
    "pacemaker": ("{s} chest wall pacemaker", "{s} pectoral pacemaker generator", "pacer {p} with leads in the heart",
                  "{s} sided ICD", "cardiac device generator {p}", "dual chamber pacemaker from the {s}",
                  "{s} AICD with transvenous leads"),
    "central_line": ("{s} central venous catheter", "{s} sided CVC", "{s} internal jugular line", "{s} subclavian catheter",
                     "central line inserted from the {s}", "{s} PICC line", "venous catheter {p} ending in the SVC",
                     "{s} port catheter"),
    "cardiomegaly": ("{v} cardiomegaly", "enlarged heart", "{v} cardiac enlargement", "increased cardiothoracic ratio",
                     "heart size is enlarged", "{v} enlargement of the cardiac silhouette", "the heart is large",
                     "cardiac silhouette enlarged", "CTR above normal"),
    "edema": ("{v} pulmonary edema", "interstitial edema", "perihilar haze and vascular congestion",
              "Kerley B lines with edema", "{v} pulmonary venous congestion", "fluid overload in both lungs",
              "bilateral perihilar opacities of edema", "cephalization with interstitial edema"),
    "emphysema": ("{v} emphysema", "hyperinflated lungs", "flattened hemidiaphragms from hyperinflation", "COPD changes",
                  "hyperlucent overexpanded lungs", "{v} hyperinflation", "increased lung volumes with flat diaphragms",
                  "chronic obstructive pulmonary disease"),
    "sternotomy": ("median sternotomy wires", "sternal wires", "post CABG sternotomy", "prior cardiac surgery with sternal sutures",
                   "sternotomy changes", "status post sternotomy", "wires along the sternum"),
}
FAMILY = {"consolidation": "opacity", "airspace_disease": "opacity", "pneumonia": "opacity", "mass": "nodule",
          "congestion": "edema"}
NORMAL_PHRASES = ("normal chest radiograph", "no acute findings", "clear lungs and normal heart size",
                  "unremarkable chest film", "no abnormality seen", "normal study", "lungs clear, no effusion",
                  "no acute cardiopulmonary process", "normal heart and lungs", "chest within normal limits")
FRAMES = ("{x}", "{x}.", "there is {x}", "findings of {x}", "{x} noted", "chest x-ray with {x}", "{x} is seen",
          "evidence of {x}", "{x} present")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def phrase(f: Finding, rng: np.random.Generator) -> str:
    """One phrasing of one (resolved) finding: a lexicon entry or a registry synonym, slots filled."""
    family = FAMILY.get(f.name, f.name)
    spec = REGISTRY[f.name]
    side = f.side or spec.default_side
    templates = LEXICON[family]
    # registry synonyms, except those that carry a side of their own (dextro-/levoscoliosis)
    synonyms = tuple(s for s in spec.synonyms if len(s) > 3 and not s.startswith(("dextro", "levo")))
    if synonyms and rng.random() < 0.25:
        base = _pick(rng, synonyms)
        templates = (f"{{s}} {base}", f"{base} {{p}}") if spec.sides and side else (f"{{v}} {base}", base)
    text = _pick(rng, templates)
    fill = {"s": _pick(rng, SIDE_FORMS[side]) if side else "", "p": _pick(rng, SIDE_PLACES[side]) if side else "",
            "v": _pick(rng, SEVERITY_FORMS[f.severity]) if f.severity else "",
            "z": _pick(rng, ZONE_FORMS[f.zone]) if f.zone else ""}
    return " ".join(text.format(**fill).split())


def paraphrase(findings: Sequence[Finding], rng: np.random.Generator) -> str:
    """A caption for a finding list (empty = normal) in the wider lexicon."""
    findings = [f.resolved() for f in findings if f.name != "normal"]
    if not findings:
        return _pick(rng, NORMAL_PHRASES)
    order = rng.permutation(len(findings))
    parts = [_pick(rng, FRAMES).format(x=phrase(findings[i], rng)) for i in order]
    return _pick(rng, ("; ", ", ", ". ", " and ")).join(parts)
