"""Diversity: MS-SSIM between pairs of images, within a prompt and across prompts.

MS-SSIM (Wang et al. 2003) with an 11-tap Gaussian window (sigma 1.5) on images in [0, 1]. The
standard five scales need images of at least 176 px; smaller images use as many scales as fit
(the smallest scale at least 11 px) with the standard weights renormalised, so values are
comparable only between sets of the same size (the report states the size and scale count).

Higher mean MS-SSIM = more similar pairs = less diversity. Within-prompt pairs near 1 mean mode
collapse (every seed gives the same image); the across-prompt mean should match the real set's
random-pair mean.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN, SIGMA = 11, 1.5
C1, C2 = 0.01 ** 2, 0.03 ** 2


def _window() -> torch.Tensor:
    x = torch.arange(WIN, dtype=torch.float64) - WIN // 2
    g = torch.exp(-(x ** 2) / (2 * SIGMA ** 2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def _ssim_cs(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    saa = _blur(a * a, g) - mu_a ** 2
    sbb = _blur(b * b, g) - mu_b ** 2
    sab = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * sab + C2) / (saa + sbb + C2)
    lum = (2 * mu_a * mu_b + C1) / (mu_a ** 2 + mu_b ** 2 + C1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def n_scales(size: int) -> int:
    return max(1, min(len(WEIGHTS), int(np.floor(np.log2(size / WIN))) + 1))


@torch.no_grad()
def ms_ssim(a: np.ndarray, b: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]); uint8 (N, S, S) inputs, values in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"MS-SSIM needs equal shapes, got {a.shape} and {b.shape}")
    scales = n_scales(a.shape[-1])
    w = torch.tensor(WEIGHTS[:scales], dtype=torch.float32)
    w = w / w.sum()
    g = _window()
    out = []
    for start in range(0, len(a), batch_size):
        x = torch.from_numpy(a[start:start + batch_size].astype(np.float32) / 255.0)[:, None]
        y = torch.from_numpy(b[start:start + batch_size].astype(np.float32) / 255.0)[:, None]
        values = []
        for s in range(scales):
            ssim, cs = _ssim_cs(x, y, g)
            values.append(torch.relu(ssim if s == scales - 1 else cs))
            if s < scales - 1:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        stacked = torch.stack(values, dim=1)
        out.append(torch.prod(stacked ** w[None, :], dim=1))
    return torch.cat(out).numpy() if out else np.zeros(0)


def _pairs(groups: list[np.ndarray], rng: np.random.Generator, n: int, within: bool) -> np.ndarray:
    """Up to ``n`` distinct index pairs, both in one group (within) or in two different groups."""
    if within:
        pool = [(int(i), int(j)) for g in groups if len(g) > 1 for k, i in enumerate(g) for j in g[k + 1:]]
        if len(pool) > n:
            pool = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
        return np.array(pool, dtype=int).reshape(-1, 2)
    label = np.empty(sum(len(g) for g in groups), dtype=int)
    for gi, g in enumerate(groups):
        label[g] = gi
    if len(groups) < 2:
        return np.zeros((0, 2), int)
    pairs, tries = set(), 0
    while len(pairs) < n and tries < 20 * n:
        i, j = (int(v) for v in rng.integers(0, len(label), 2))
        tries += 1
        if label[i] != label[j]:
            pairs.add((min(i, j), max(i, j)))
    return np.array(sorted(pairs), dtype=int).reshape(-1, 2)


def diversity(images: np.ndarray, prompts: list[str] | None, rng: np.random.Generator, *,
              pairs: int = 200, size: int = 128) -> dict:
    """Mean MS-SSIM within prompts and across prompts (or over random pairs when every image has
    its own prompt / no prompts are known). Images larger than ``size`` are downsampled first."""
    if images.shape[-1] > size:
        from synthex.evaluate.data import resize_square

        images = np.stack([resize_square(im, size) for im in images])
    keys = prompts if prompts is not None else [str(i) for i in range(len(images))]
    index: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    groups = [np.array(v) for v in index.values()]
    out = {"size": int(images.shape[-1]), "scales": n_scales(images.shape[-1]), "prompts": len(groups)}
    for name, within in (("within_prompt", True), ("across_prompts", False)):
        idx = _pairs(groups, rng, pairs, within)
        if len(idx) == 0:
            out[name] = None
            out[f"{name}_pairs"] = 0
            continue
        values = ms_ssim(images[idx[:, 0]], images[idx[:, 1]])
        out[name], out[f"{name}_std"], out[f"{name}_pairs"] = float(values.mean()), float(values.std()), len(idx)
        out[f"{name}_values"] = values
    return out
