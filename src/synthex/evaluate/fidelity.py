"""Fidelity: FID, KID, precision / recall / density / coverage, bootstrap intervals.

All functions take feature matrices (N, D) of the real and the synthetic set and a
``numpy.random.Generator`` (never the global state).

- FID: ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2), the matrix square root
  taken by symmetric eigendecomposition (real and stable; equal to the usual sqrtm form).
- KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over
  random subsets of min(1000, n/2) images (mean, std and 2.5/97.5 percentiles over subsets).
- PRDC (Naeem et al. 2020) with k nearest neighbours (default 5) in Euclidean feature space.
- Bootstrap: FID recomputed on resampled (with replacement) real and synthetic sets, the
  percentile interval shifted by the resampling bias (duplicates inflate FID); PRDC
  intervals resample the per-sample indicators (the k-NN balls stay fixed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    root = _psd_sqrt(s1)
    inner = root @ s2 @ root
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0, None)).sum())
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets."""
    return frechet_distance(*_stats(real), *_stats(fake))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, *, subsets: int = 100,
        subset_size: int = 1000) -> dict[str, float]:
    """KID over random subsets (without replacement) of ``min(subset_size, n // 2)`` images, n
    the smaller set, so that subsets differ and their spread means something."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = max(2, min(subset_size, min(len(real), len(fake)) // 2))
    values = np.array([_mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                                      fake[rng.choice(len(fake), m, replace=False)]) for _ in range(subsets)])
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "kid_lo": float(np.percentile(values, 2.5)),
            "kid_hi": float(np.percentile(values, 97.5)), "subset_size": int(m), "subsets": int(subsets)}


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.clip(d, 0, None)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = _sq_dists(x, x)
    return np.sqrt(np.partition(d, k, axis=1)[:, k])  # index 0 is the point itself


@dataclass
class PRDCIndicators:
    in_real: np.ndarray   # per fake: inside some real k-NN ball (precision)
    count: np.ndarray     # per fake: number of real balls containing it / k (density)
    in_fake: np.ndarray   # per real: inside some fake k-NN ball (recall)
    covered: np.ndarray   # per real: nearest fake inside its own ball (coverage)


def prdc_indicators(real: np.ndarray, fake: np.ndarray, k: int = 5) -> PRDCIndicators:
    k_eff = min(k, len(real) - 1, len(fake) - 1)
    r_real, r_fake = _kth_radius(real, k_eff), _kth_radius(fake, k_eff)
    d = np.sqrt(_sq_dists(real, fake))  # (n_real, n_fake)
    inside = d <= r_real[:, None]
    return PRDCIndicators(inside.any(0), inside.sum(0) / k_eff, (d <= r_fake[None, :]).any(1),
                          d.min(1) <= r_real)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, rng: np.random.Generator | None = None,
         bootstrap: int = 0) -> dict[str, float]:
    """Precision, recall, density, coverage; with ``bootstrap`` > 0 also ``<name>_lo/_hi``."""
    ind = prdc_indicators(real, fake, k)
    parts = {"precision": ind.in_real, "recall": ind.in_fake, "density": ind.count, "coverage": ind.covered}
    out = {name: float(np.mean(v)) for name, v in parts.items()}
    if bootstrap and rng is not None:
        for name, v in parts.items():
            v = np.asarray(v, np.float64)
            boots = v[rng.integers(0, len(v), (bootstrap, len(v)))].mean(1)
            out[f"{name}_lo"], out[f"{name}_hi"] = (float(q) for q in np.percentile(boots, [2.5, 97.5]))
    out["k"] = int(min(k, len(real) - 1, len(fake) - 1))
    return out


def fid_bootstrap(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, n: int = 200) -> dict[str, float]:
    """Bias-corrected percentile bootstrap: resampling with replacement duplicates images, which
    inflates FID, so the percentile interval is shifted by (bootstrap mean - point estimate)."""
    point = fid(real, fake)
    values = np.array([fid(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
                       for _ in range(n)])
    bias = float(values.mean()) - point
    lo, hi = (float(q) - bias for q in np.percentile(values, [2.5, 97.5]))
    return {"fid_lo": max(0.0, lo), "fid_hi": max(0.0, hi), "fid_boot_bias": bias, "bootstrap": int(n)}


def stable_fid_min(dim: int) -> int:
    """Sample size below which FID is flagged as unstable: 10 samples per feature dimension
    (and at least 200), so the covariance estimate is well conditioned."""
    return max(200, 10 * dim)


def fidelity(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, *, k: int = 5,
             bootstrap: int = 200, kid_subsets: int = 100) -> dict:
    """All fidelity numbers for two feature sets, with intervals and warnings."""
    out: dict = {"n_real": len(real), "n_synthetic": len(fake), "dim": int(real.shape[1]), "warnings": []}
    out["fid"] = fid(real, fake)
    if bootstrap:
        out.update(fid_bootstrap(real, fake, rng, bootstrap))
    out.update(kid(real, fake, rng, subsets=kid_subsets))
    out.update(prdc(real, fake, k, rng, bootstrap))
    need = stable_fid_min(real.shape[1])
    if min(len(real), len(fake)) < need:
        out["warnings"].append(
            f"FID on {min(len(real), len(fake))} images with {real.shape[1]}-d features is unstable and biased "
            f"upwards (want >= {need} per set); compare KID and the bootstrap interval, not the FID point value")
    return out


def per_finding(real: np.ndarray, fake: np.ndarray, real_labels: np.ndarray, fake_labels: np.ndarray,
                names: tuple[str, ...], rng: np.random.Generator, *, min_count: int = 10, k: int = 5) -> list[dict]:
    """FID/KID/precision/recall within each finding (and 'normal' = no finding), for findings with
    at least ``min_count`` images in both sets; the others are listed with their counts."""
    rows = []
    groups = [(name, real_labels[:, j] > 0.5, fake_labels[:, j] > 0.5) for j, name in enumerate(names)]
    groups.insert(0, ("normal", real_labels.sum(1) == 0, fake_labels.sum(1) == 0))
    for name, rmask, fmask in groups:
        row = {"finding": name, "n_real": int(rmask.sum()), "n_synthetic": int(fmask.sum())}
        if min(row["n_real"], row["n_synthetic"]) >= min_count:
            r, f = real[rmask], fake[fmask]
            row["fid"] = fid(r, f)
            row["kid"] = kid(r, f, rng, subsets=20)["kid"]
            p = prdc(r, f, k)
            row["precision"], row["recall"] = p["precision"], p["recall"]
        elif row["n_real"] or row["n_synthetic"]:
            row["skipped"] = f"fewer than {min_count} images in one set"
        else:
            continue
        rows.append(row)
    return rows
