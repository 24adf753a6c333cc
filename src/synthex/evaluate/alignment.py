"""Text-image alignment: does a generated image show the findings its prompt asked for?

Scored with a multi-label finding classifier (the shipped phantom classifier; its outputs come
from the ``synthex`` extractor pass, so nothing is computed twice):

- per-finding AUROC of the classifier's probability, prompted vs not prompted (chance = 0.5);
- detection rates (probability > 0.5) when prompted and when not;
- the share of pathology prompts whose image the classifier calls normal (every probability
  < 0.5): the thesis' failure mode; and the share whose prompted findings are all missed (a
  classifier that sees a spurious finding everywhere hides the first, not the second);
- laterality: for prompts with a one-sided effusion or opacity, the share of images whose
  classifier probability is higher on the prompted side than on the other;
- cardiothoracic ratio: a ridge-regression probe from the encoder's embedding to the CTR that
  the renderer *measures* on its own masks, fitted on freshly rendered phantoms (its held-out
  error is reported), then applied to generated images: mean estimated CTR for cardiomegaly
  prompts vs the others, and the share above 0.5. This is an estimate read off the image by a
  probe, not a measurement on a segmentation of the generated image.

The same numbers on the real set (its own labels, its own images) are the reference: a
generated set cannot be expected to score better than the classifier does on real images.
"""
from __future__ import annotations

import logging

import numpy as np

from synthex.phantom.classifier import auroc

log = logging.getLogger(__name__)

SIDED = ("pleural_effusion", "opacity")


def finding_scores(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    rows = []
    for j, name in enumerate(names):
        pos = labels[:, j] > 0.5
        rows.append({"finding": name, "n_prompted": int(pos.sum()), "n_not": int((~pos).sum()),
                     "auroc": auroc(pos, probs[:, j]),
                     "detected_prompted": float((probs[pos, j] > 0.5).mean()) if pos.any() else float("nan"),
                     "detected_not": float((probs[~pos, j] > 0.5).mean()) if (~pos).any() else float("nan")})
    return rows


def looks_normal_share(labels: np.ndarray, probs: np.ndarray) -> dict:
    sick = labels.sum(1) > 0
    normal_looking = probs.max(1) < 0.5
    missed = ((probs < 0.5) | (labels < 0.5)).all(1)  # none of the prompted findings detected
    return {"n_pathology": int(sick.sum()),
            "pathology_called_normal": float(normal_looking[sick].mean()) if sick.any() else float("nan"),
            "pathology_all_missed": float(missed[sick].mean()) if sick.any() else float("nan"),
            "n_normal": int((~sick).sum()),
            "normal_called_normal": float(normal_looking[~sick].mean()) if (~sick).any() else float("nan")}


def laterality(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    rows = []
    index = {n: i for i, n in enumerate(names)}
    for base in SIDED:
        r, l = index.get(f"{base}_right"), index.get(f"{base}_left")
        if r is None or l is None:
            continue
        for side, own, other in (("right", r, l), ("left", l, r)):
            mask = (labels[:, own] > 0.5) & (labels[:, other] < 0.5)
            correct = probs[mask, own] > probs[mask, other]
            rows.append({"finding": f"{base}_{side}", "n": int(mask.sum()),
                         "correct_side": float(correct.mean()) if mask.any() else float("nan")})
    return rows


# --------------------------------------------------------------------------------------------
# CTR probe
# --------------------------------------------------------------------------------------------
def fit_ctr_probe(embed, size: int, rng: np.random.Generator, n: int = 400, alpha: float = 1.0) -> dict:
    """Ridge probe embedding -> measured CTR, fitted on ``n`` rendered phantoms (half with
    cardiomegaly of random grade, half with another finding or none); 25% held out."""
    from synthex.phantom.classifier import sample_findings
    from synthex.phantom.findings import Finding
    from synthex.phantom.render import render_phantom

    images, ctr = np.zeros((n, size, size), np.uint8), np.zeros(n)
    for i in range(n):
        findings = sample_findings(rng)
        if i % 2 == 0:
            findings = [f for f in findings if f.name != "cardiomegaly"]
            findings.append(Finding("cardiomegaly", severity=str(rng.choice(["mild", "moderate", "severe"]))))
        result = render_phantom(findings or "normal", int(rng.integers(0, 2**31 - 1)), size)
        images[i], ctr[i] = result.image, result.truth["measurements"]["ctr"]
    x = np.asarray(embed(images), np.float64)
    n_fit = int(0.75 * n)
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-8
    z = (x - mu) / sd
    a = np.c_[z[:n_fit], np.ones(n_fit)]
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ ctr[:n_fit])
    pred = np.c_[z[n_fit:], np.ones(n - n_fit)] @ w
    err = pred - ctr[n_fit:]
    r2 = 1 - (err ** 2).sum() / ((ctr[n_fit:] - ctr[n_fit:].mean()) ** 2).sum()
    return {"w": w, "mu": mu, "sd": sd, "n": n, "heldout_mae": float(np.abs(err).mean()), "heldout_r2": float(r2),
            "size": size}


def predict_ctr(probe: dict, emb: np.ndarray) -> np.ndarray:
    z = (np.asarray(emb, np.float64) - probe["mu"]) / probe["sd"]
    return np.c_[z, np.ones(len(z))] @ probe["w"]


def ctr_check(probe: dict, emb: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict:
    if "cardiomegaly" not in names:
        return {}
    ctr = predict_ctr(probe, emb)
    cardio = labels[:, names.index("cardiomegaly")] > 0.5
    out = {"n_cardiomegaly": int(cardio.sum()), "n_other": int((~cardio).sum())}
    for key, mask in (("cardiomegaly", cardio), ("other", ~cardio)):
        out[f"mean_ctr_{key}"] = float(ctr[mask].mean()) if mask.any() else float("nan")
        out[f"share_ctr_over_0.5_{key}"] = float((ctr[mask] > 0.5).mean()) if mask.any() else float("nan")
    out["auroc_ctr"] = auroc(cardio, ctr)
    return out


def alignment(labels: np.ndarray, probs: np.ndarray, emb: np.ndarray, names: tuple[str, ...],
              probe: dict | None) -> dict:
    """All alignment numbers of one labelled set (synthetic, or the real reference)."""
    out = {"per_finding": finding_scores(labels, probs, names), "normal": looks_normal_share(labels, probs),
           "laterality": laterality(labels, probs, names)}
    values = [r["auroc"] for r in out["per_finding"] if np.isfinite(r["auroc"])]
    out["mean_auroc"] = float(np.mean(values)) if values else float("nan")
    if probe is not None:
        out["ctr"] = ctr_check(probe, emb, labels, names)
    return out
