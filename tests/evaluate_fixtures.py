"""Tiny imagefolders of rendered phantoms for the evaluation tests (no network, no model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from synthex.phantom.classifier import sample_findings
from synthex.phantom.render import render_phantom


def phantom_text(findings) -> str:
    if not findings:
        return "Chest x-ray. Normal."
    return "Chest x-ray. " + " ".join(f.describe().capitalize() + "." for f in findings)


def make_folder(root: Path, n: int, seed: int, size: int = 64, pool: tuple[str, ...] | None = None,
                p_normal: float = 0.3, images: np.ndarray | None = None, texts: list[str] | None = None) -> Path:
    """An imagefolder (images/*.png + metadata.csv with file_name,text) of ``n`` phantoms with random
    findings drawn from ``pool``, or of the given ``images``/``texts``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        if images is None:
            findings = sample_findings(rng, pool, p_normal)
            result = render_phantom(findings or "normal", int(rng.integers(0, 2**31 - 1)), size)
            image, text = result.image, phantom_text(result.findings if findings else [])
        else:
            image, text = images[i], texts[i]
        name = f"images/{i:04d}.png"
        Image.fromarray(image).save(root / name)
        rows.append({"file_name": name, "text": text})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def read_folder(root: Path) -> tuple[np.ndarray, list[str]]:
    frame = pd.read_csv(root / "metadata.csv")
    return np.stack([np.asarray(Image.open(root / f)) for f in frame.file_name]), list(frame.text)
