"""Privacy / memorisation audit: is any synthetic image a near-copy of a training image?

For each synthetic image we find its nearest training image in two spaces:

- pixels: images reduced to 64x64 and blurred (Gaussian, sigma 1 px, so sub-pixel shifts and
  detector noise matter little); distance = sqrt(2 (1 - r)) with r the Pearson correlation
  (the RMS difference of standardised images, so brightness and contrast do not count),
  maximised over shifts of up to 1 px (1.6% of the width) in half-pixel steps so a slightly
  moved copy still counts as a copy: the 10 nearest candidates by unshifted distance are re-scored
  with the shifts;
- features: cosine distance between extractor embeddings.

Threshold calibration, per space: up to ``n_calibration`` training images are copied with small
random changes (shift of up to 1% of the width, contrast x0.9-1.1, brightness +-0.04, Gaussian
noise sigma 0.02 on [0, 1]) and the distance of each copy to its own original is measured
("augmented copies"); the distance of each of those training images to its nearest *other*
training image gives the "distinct images" distribution. The threshold is the 99th percentile of
the copy distances, capped at the 1st percentile of the distinct distances when the two overlap
(the report then says the space does not separate copies from distinct patients).

A synthetic image is flagged as a near-copy when its pixel distance is within the pixel
threshold. The feature space is reported beside it (nearest neighbour, its own threshold and
the share of samples within it) but does not flag on its own: the in-project encoder is trained
to recognise findings, not patients, so on phantoms it does not separate copies from different
patients with the same findings (the calibration numbers in the report show this). The rate
of flagged samples, both thresholds, how well each separates copies from distinct images, and
the closest pairs are reported.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

THUMB = 64
SHIFT = 2  # window margin (px)
MAX_SHIFT = 1  # largest shift searched (px, half-pixel steps); < SHIFT
BLUR = 1.0
CANDIDATES = 10


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, 64*64) standardised float32 rows."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    if x.shape[-1] != THUMB:
        x = F.interpolate(x, size=(THUMB, THUMB), mode="area")
    from scipy import ndimage as ndi

    x = ndi.gaussian_filter(x[:, 0].numpy(), (0, BLUR, BLUR)).reshape(len(images), -1)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(x.std(1, keepdims=True), 1e-6)


def _pixel_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    corr = a @ b.T / a.shape[1]
    return np.sqrt(np.clip(2 * (1 - corr), 0, None))


def _crop(thumbs: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """The centre window of each thumbnail moved by (dy, dx) pixels (half pixels interpolated),
    standardised per row."""
    img = thumbs.reshape(-1, THUMB, THUMB)
    y0, x0 = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - y0, dx - x0

    def window(y: int, x: int) -> np.ndarray:
        return img[:, SHIFT + y:THUMB - SHIFT + y, SHIFT + x:THUMB - SHIFT + x]

    out = (1 - fy) * (1 - fx) * window(y0, x0)
    if fy:
        out = out + fy * (1 - fx) * window(y0 + 1, x0)
    if fx:
        out = out + (1 - fy) * fx * window(y0, x0 + 1)
    if fy and fx:
        out = out + fy * fx * window(y0 + 1, x0 + 1)
    out = out.reshape(len(thumbs), -1)
    out = out - out.mean(1, keepdims=True)
    return out / np.maximum(out.std(1, keepdims=True), 1e-6)


def aligned_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel distance of pairs (a[i], b[i]) of thumbnails, minimised over shifts of b of up to
    MAX_SHIFT px in half-pixel steps (a copy moved by a fraction of a thumbnail pixel still
    matches)."""
    centre = _crop(a, 0, 0)
    best = np.full(len(a), -1.0, dtype=np.float32)
    steps = np.arange(-2 * MAX_SHIFT, 2 * MAX_SHIFT + 1) / 2
    for dy in steps:
        for dx in steps:
            best = np.maximum(best, np.einsum("ij,ij->i", centre, _crop(b, dy, dx)) / centre.shape[1])
    return np.sqrt(np.clip(2 * (1 - best), 0, None))


def nearest_pixel(query: np.ndarray, ref: np.ndarray, exclude: np.ndarray | None = None,
                  chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``ref`` thumbnail of every ``query`` thumbnail by :func:`aligned_dist`
    (``exclude[i]`` = a ref index query i may not match, e.g. itself)."""
    nn_j, nn_d = np.zeros(len(query), int), np.zeros(len(query))
    k = min(CANDIDATES, len(ref) - (exclude is not None))
    for start in range(0, len(query), chunk):
        d = _pixel_dist(query[start:start + chunk], ref)
        if exclude is not None:
            d[np.arange(len(d)), exclude[start:start + chunk]] = np.inf
        cand = np.argpartition(d, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(start, start + len(d)), k)
        dist = aligned_dist(query[rows], ref[cand.ravel()]).reshape(len(d), k)
        best = dist.argmin(1)
        nn_j[start:start + len(d)] = cand[np.arange(len(d)), best]
        nn_d[start:start + len(d)] = dist[np.arange(len(d)), best]
    return nn_j, nn_d


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cos_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(1 - _unit(a) @ _unit(b).T, 0, None)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small shift / contrast / brightness / noise changes (the calibration 'near copies')."""
    n, size = images.shape[0], images.shape[-1]
    out = np.empty_like(images)
    max_shift = max(1, int(round(0.01 * size)))
    for i in range(n):
        x = images[i].astype(np.float32) / 255.0
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
        x = np.roll(x, (dy, dx), axis=(0, 1))
        x = (x - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.04, 0.04)
        x = x + rng.normal(0, 0.02, x.shape)
        out[i] = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def _threshold(copies: np.ndarray, distinct: np.ndarray) -> dict:
    thr = float(np.percentile(copies, 99))
    cap = float(np.percentile(distinct, 1))
    separated = thr < cap
    thr = min(thr, cap)
    return {"threshold": thr, "separated": bool(separated),
            "copy_recall": float(np.mean(copies <= thr)), "distinct_false_rate": float(np.mean(distinct <= thr)),
            "copies": copies, "distinct": distinct}


def _nearest(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    j = dist.argmin(1)
    return j, dist[np.arange(len(dist)), j]


def calibrate(train_images: np.ndarray, train_emb: np.ndarray, embed: Callable[[np.ndarray], np.ndarray],
              rng: np.random.Generator, n_calibration: int = 200) -> dict:
    """Thresholds per space from augmented copies vs distinct training images."""
    n = len(train_images)
    pick = rng.choice(n, min(n, n_calibration), replace=False)
    aug = augment(train_images[pick], rng)
    thumbs_train, thumbs_aug = thumbnails(train_images), thumbnails(aug)
    pix_copy = aligned_dist(thumbs_aug, thumbs_train[pick])
    pix_distinct = nearest_pixel(thumbs_train[pick], thumbs_train, exclude=pick)[1]
    emb_aug = embed(aug)
    feat_copy = 1 - (_unit(emb_aug) * _unit(train_emb[pick])).sum(1)
    d = _cos_dist(train_emb[pick], train_emb)
    d[np.arange(len(pick)), pick] = np.inf
    feat_distinct = d.min(1)
    return {"pixel": _threshold(pix_copy, pix_distinct), "feature": _threshold(np.clip(feat_copy, 0, None),
                                                                                feat_distinct),
            "n_calibration": int(len(pick)), "thumbs_train": thumbs_train}


def audit(synth_images: np.ndarray, synth_emb: np.ndarray, train_images: np.ndarray, train_emb: np.ndarray,
          embed: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator, *, n_calibration: int = 200,
          top: int = 8) -> dict:
    """Nearest training image of every synthetic image, thresholds, flags and the closest pairs."""
    cal = calibrate(train_images, train_emb, embed, rng, n_calibration)
    thumbs_train = cal.pop("thumbs_train")
    pix_j, pix_d = nearest_pixel(thumbnails(synth_images), thumbs_train)
    feat_j, feat_d = _nearest(_cos_dist(synth_emb, train_emb))
    flag_pix = pix_d <= cal["pixel"]["threshold"]
    flag_feat = feat_d <= cal["feature"]["threshold"]
    flagged = flag_pix
    order = np.argsort(pix_d)[:top]
    return {
        "n_synthetic": int(len(synth_images)), "n_train": int(len(train_images)),
        "calibration": cal, "pixel_nn": pix_j, "pixel_dist": pix_d, "feature_nn": feat_j, "feature_dist": feat_d,
        "flagged": flagged, "flag_rate": float(flagged.mean()), "n_flagged": int(flagged.sum()),
        "flag_rate_pixel_only": float(flag_pix.mean()), "flag_rate_feature_only": float(flag_feat.mean()),
        "closest": [(int(i), int(pix_j[i]), float(pix_d[i]), float(feat_d[i])) for i in order],
    }
