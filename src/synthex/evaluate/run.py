"""``evaluate(options) -> EvaluationResult``: every metric of issue 7 in one call, and the report.

Steps: (1) check options and the report folder, (2) generate the synthetic set through the
engine when a model and a prompts file are given, (3) read the sets and agree on labels,
(4) features (cached), (5) the chosen metrics, (6) the Markdown/HTML/JSON report.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthex.errors import OutputExistsError, SynthexError
from synthex.evaluate.data import ImageSet, _read_metadata, common_label_source, label_columns, load_image_set
from synthex.evaluate.features import SynthexExtractor, cached_features, make_extractor
from synthex.evaluate.report import write_report
from synthex.evaluate.types import (METRICS, REPORT_FILES, EvaluationOptions, EvaluationResult, ReportContext,
                                    options_dict)

# The types live in synthex.evaluate.types; they stay importable from here as well.
__all__ = ["METRICS", "REPORT_FILES", "EvaluationOptions", "EvaluationResult", "ReportContext", "evaluate",
           "options_dict"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# 1. Options and the report folder
# --------------------------------------------------------------------------------------------
_AT_LEAST = {"per_prompt": ("--n", 1), "steps": ("--steps", 1), "k": ("k", 1), "bootstrap": ("--bootstrap", 0),
             "kid_subsets": ("kid_subsets", 1), "min_images": ("min_images", 2), "min_per_finding": ("min_per_finding", 1),
             "diversity_pairs": ("diversity_pairs", 1), "privacy_calibration": ("privacy_calibration", 1),
             "ctr_probe_n": ("--ctr-probe", 0), "utility_epochs": ("--utility-epochs", 1),
             "utility_size": ("utility_size", 16), "seed": ("--seed", 0)}


def _check_numbers(o: EvaluationOptions) -> None:
    import math

    for name, (flag, low) in _AT_LEAST.items():
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SynthexError(f"{flag} {value!r}: must be a whole number >= {low}")
    if not math.isfinite(float(o.guidance)) or o.guidance < 0:
        raise SynthexError(f"--cfg {o.guidance!r}: must be a finite number >= 0")
    if not 0 < float(o.utility_test_fraction) < 1:
        raise SynthexError(f"utility_test_fraction {o.utility_test_fraction!r}: must be between 0 and 1")


def same_folder_warnings(o: EvaluationOptions) -> list[str]:
    """A synthetic set that is the real set scores perfectly and says nothing: warn."""
    if o.synthetic is not None and Path(o.synthetic).resolve() == Path(o.real).resolve():
        return [f"--synthetic is the same folder as --real ({o.real}): every metric compares the set with "
                "itself (FID ~0, every image flagged by the privacy audit); pass the synthetic images' folder"]
    return []


def check_options(o: EvaluationOptions) -> None:
    _check_numbers(o)
    bad = [m for m in o.metrics if m not in METRICS]
    if bad or not o.metrics:
        raise SynthexError(f"metrics {bad or '(none)'}: choose from {', '.join(METRICS)}")
    if (o.synthetic is None) == (o.model is None and o.prompts is None):
        raise SynthexError("give either a synthetic folder (--synthetic DIR) or a model and a prompts file "
                           "(--model NAME --prompts FILE), not both or neither")
    if o.synthetic is None and (o.model is None or o.prompts is None):
        raise SynthexError("generating the synthetic set needs both --model and --prompts")
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"report folder {out} is a file; choose a folder")
    if out.is_dir() and any(p.name != "synthetic" for p in out.iterdir()) and not o.overwrite:
        raise OutputExistsError(f"report folder {out} is not empty; choose another --out or pass --overwrite")


def _generate(o: EvaluationOptions) -> Path:
    from synthex.generate.batch import SynthesizeOptions, synthesize

    folder = Path(o.out) / "synthetic"
    result = synthesize(SynthesizeOptions(prompts_file=Path(o.prompts), out=folder, per_prompt=o.per_prompt,
                                          model=o.model, loras=list(o.loras), steps=o.steps, guidance=o.guidance,
                                          seed=o.seed, progress=o.progress))
    if not result.complete:
        raise SynthexError(f"generation stopped at {result.done} of {result.total} images; run again to resume")
    return folder


# --------------------------------------------------------------------------------------------
# 3. Sets and labels
# --------------------------------------------------------------------------------------------
def _columns(folder: Path) -> list[str]:
    frame = _read_metadata(Path(folder)) if Path(folder).is_dir() else None
    return [] if frame is None else list(frame.columns)


def label_column_warnings(real_columns, synth_columns) -> list[str]:
    """Finding columns that only one set has are not used: say so."""
    real_cols, synth_cols = label_columns(real_columns), label_columns(synth_columns)
    if bool(real_cols) == bool(synth_cols):
        return []
    which, cols = ("real", real_cols) if real_cols else ("synthetic", synth_cols)
    return [f"only the {which} metadata.csv has finding columns ({', '.join(sorted(cols))}); they are not used "
            "and labels come from the text or MeSH both sets share (add the same columns to the other set to "
            "use them)"]


def _load_sets(o: EvaluationOptions, synthetic: Path) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    source = o.label_source or common_label_source(_columns(o.real), _columns(synthetic))
    kw = {"min_images": o.min_images, "progress": o.progress}
    real = load_image_set(o.real, "real", label_source=source if _columns(o.real) else None, **kw)
    synth = load_image_set(synthetic, "synthetic", label_source=source if _columns(synthetic) else None, **kw)
    train = None
    if o.train is not None and Path(o.train).resolve() != Path(o.real).resolve():
        train = load_image_set(o.train, "train", label_source=None, **kw)
    return real, synth, train


# --------------------------------------------------------------------------------------------
# 5. Metrics
# --------------------------------------------------------------------------------------------
def _rng(o: EvaluationOptions, name: str) -> np.random.Generator:
    return np.random.default_rng([o.seed, sum(map(ord, name))])


def _fidelity(o, real, synth, feats) -> dict:
    from synthex.evaluate.fidelity import fidelity, per_finding

    fr, fs = feats["main"]["real"]["embedding"], feats["main"]["synthetic"]["embedding"]
    out = fidelity(fr, fs, _rng(o, "fidelity"), k=o.k, bootstrap=o.bootstrap, kid_subsets=o.kid_subsets)
    if real.labels is not None and synth.labels is not None:
        out["per_finding"] = per_finding(fr, fs, real.labels, synth.labels, real.label_names, _rng(o, "per_finding"),
                                         min_count=o.min_per_finding, k=o.k)
    else:
        out["per_finding_skipped"] = "no labels in one of the sets"
    return out


def _diversity(o, real, synth) -> dict:
    from synthex.evaluate.diversity import diversity

    return {"synthetic": diversity(synth.images, synth.texts, _rng(o, "div"), pairs=o.diversity_pairs),
            "real": diversity(real.images, real.texts, _rng(o, "div"), pairs=o.diversity_pairs)}


def _alignment(o, real, synth, feats, extractor) -> dict:
    from synthex.evaluate.alignment import alignment, fit_ctr_probe

    probe = fit_ctr_probe(lambda x: extractor(x)["embedding"], synth.size, _rng(o, "ctr"), n=o.ctr_probe_n) \
        if o.ctr_probe_n else None
    s, r = feats["synthex"]["synthetic"], feats["synthex"]["real"]
    out = {"synthetic": alignment(synth.labels, s["probs"], s["embedding"], synth.label_names, probe)}
    if real.labels is not None:
        out["real"] = alignment(real.labels, r["probs"], r["embedding"], real.label_names, probe)
    if probe is not None:
        out["ctr_probe"] = {k: probe[k] for k in ("n", "heldout_mae", "heldout_r2", "size")}
    return out


def _privacy(o, synth, train, feats, extractor, which) -> dict:
    from synthex.evaluate.privacy import audit

    emb = lambda x: extractor(x)["embedding"]  # noqa: E731
    return audit(synth.images, feats["synthetic"]["embedding"], train.images, feats[which]["embedding"], emb,
                 _rng(o, "privacy"), n_calibration=o.privacy_calibration)


def _utility(o, real, synth) -> dict:
    from synthex.evaluate.utility import utility

    return utility(real.images, real.labels, synth.images, synth.labels, real.label_names, _rng(o, "utility"),
                   test_fraction=o.utility_test_fraction, size=o.utility_size, epochs=o.utility_epochs,
                   seed=o.seed, progress=o.progress)


def _features(o, sets: dict[str, ImageSet], extractors: dict[str, Any]) -> dict:
    return {key: {name: cached_features(ex, s.images, s.hashes, s.folder, o.cache, progress=o.progress)
                  for name, s in sets.items()} for key, ex in extractors.items()}


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def evaluate(options: EvaluationOptions, *, extractors: dict[str, Any] | None = None) -> EvaluationResult:
    """Run the evaluation described by ``options`` and write the report into ``options.out``.

    ``extractors`` ({"synthex": ..., "main": ...}) lets callers reuse loaded extractors (tests
    count their calls to check the cache)."""
    o = options
    check_options(o)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synthetic = Path(o.synthetic) if o.synthetic is not None else _generate(o)
    timings["generate"] = time.perf_counter() - t0
    real, synth, train = _load_sets(o, synthetic)
    warnings = same_folder_warnings(o) + label_column_warnings(_columns(o.real), _columns(synthetic))
    for warning in warnings:
        log.warning("%s", warning)
    timings["read"] = time.perf_counter() - t0 - timings["generate"]
    extractors = dict(extractors or {})
    extractors.setdefault("synthex", SynthexExtractor())
    if "main" not in extractors:
        extractors["main"] = extractors["synthex"] if o.extractor == "synthex" else \
            make_extractor(o.extractor, weights=o.extractor_weights)
    sets = {"real": real, "synthetic": synth, **({"train": train} if train is not None else {})}
    used = {"synthex": extractors["synthex"]}
    if extractors["main"] is not extractors["synthex"]:
        used["main"] = extractors["main"]
    feats = _features(o, sets, used)
    feats.setdefault("main", feats["synthex"])
    timings["features"] = time.perf_counter() - t0 - sum(timings.values())
    results, skipped = {}, {}
    for metric in o.metrics:
        start = time.perf_counter()
        reason = _missing(metric, real, synth)
        if reason:
            skipped[metric] = reason
            log.warning("%s not computed: %s", metric, reason)
            continue
        if metric == "fidelity":
            results[metric] = _fidelity(o, real, synth, feats)
        elif metric == "diversity":
            results[metric] = _diversity(o, real, synth)
        elif metric == "alignment":
            results[metric] = _alignment(o, real, synth, feats, extractors["synthex"])
        elif metric == "privacy":
            results[metric] = _privacy(o, synth, train or real, feats["main"], extractors["main"],
                                       "train" if train is not None else "real")
            _name_pairs(results[metric], synth, train or real)
        elif metric == "utility":
            results[metric] = _utility(o, real, synth)
        elif metric == "roundtrip":
            from synthex.report.evaluate import round_trip

            results[metric] = round_trip(synth.files, synth.texts, model=o.report_model, progress=o.progress)
        timings[metric] = time.perf_counter() - start
    timings["total_before_report"] = time.perf_counter() - t0
    from synthex.evaluate.features import availability

    context = ReportContext(options=o, sets=sets, extractor_id=extractors["main"].id, timings=timings,
                            warnings=warnings, skipped=skipped,
                            extractors={k: v for k, v in availability(o.extractor_weights).items() if k != "synthex"})
    return write_report(Path(o.out), results, context)


def _name_pairs(privacy: dict, synth: ImageSet, train: ImageSet) -> None:
    """File names for the flagged and the closest pairs (the report and results.json list them)."""
    privacy["train_set"] = str(train.folder)
    flagged = np.nonzero(privacy["flagged"])[0]
    privacy["flagged_pairs"] = [{"synthetic": str(synth.files[i]), "train": str(train.files[privacy["pixel_nn"][i]]),
                                 "pixel_distance": float(privacy["pixel_dist"][i])} for i in flagged]
    privacy["closest_pairs"] = [{"synthetic": str(synth.files[i]), "train": str(train.files[j]),
                                 "pixel_distance": dp, "feature_distance": dfeat}
                                for i, j, dp, dfeat in privacy["closest"]]


def _missing(metric: str, real: ImageSet, synth: ImageSet) -> str | None:
    if metric == "alignment" and synth.labels is None:
        return "the synthetic set has no prompts/labels (metadata.csv with text, mesh or finding columns)"
    if metric == "roundtrip" and not synth.texts:
        return "the round trip needs the synthetic set's prompts (metadata.csv with a text column)"
    if metric == "utility" and (real.labels is None or synth.labels is None):
        return "utility needs labels in both sets (metadata.csv with text, mesh or finding columns)"
    return None

