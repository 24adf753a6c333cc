"""A contact sheet of every finding beside the same patient's normal image, with difference maps.

Bands of tiles: the first tile of each band is the normal image of the gallery seed, the others
show one finding each (default side/zone, moderate severity); under every image is
``|finding - normal| x 2`` in the 'inferno' colormap, as in the thesis' fixed-seed comparison.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from synthex import SOFTWARE_NAME
from synthex.phantom.findings import FINDING_NAMES, Finding
from synthex.phantom.render import RENDER_VERSION, render_phantom, write_png

log = logging.getLogger(__name__)

GALLERY_SEED = 7


def gallery_findings() -> list[Finding]:
    """One finding per canonical name (except normal), with its default attributes."""
    return [Finding(name).resolved() for name in FINDING_NAMES if name != "normal"]


def _inferno() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["inferno"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _label(tile: np.ndarray, text: str, strip: int) -> np.ndarray:
    """The RGB tile with a black caption strip above it."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (tile.shape[1], tile.shape[0] + strip), "black")
    canvas.paste(Image.fromarray(tile), (0, strip))
    font = ImageFont.load_default(size=max(9, int(strip * 0.62)))
    draw = ImageDraw.Draw(canvas)
    while draw.textlength(text, font=font) > tile.shape[1] - 4 and len(text) > 4:
        text = text[:-2]
    draw.text((3, strip * 0.12), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def render_gallery(seed: int = GALLERY_SEED, size: int = 256, findings: list[Finding] | None = None,
                   columns: int = 6) -> np.ndarray:
    """The gallery as an RGB uint8 array (see the module docstring)."""
    findings = gallery_findings() if findings is None else findings
    lut, strip = _inferno(), max(12, size // 12)
    normal = render_phantom([], seed, size).image
    blank = np.zeros((size, size, 3), np.uint8)
    per_band = max(columns - 1, 1)
    bands = []
    for start in range(0, len(findings), per_band):
        group = findings[start:start + per_band]
        tops = [_label(np.stack([normal] * 3, -1), "normal", strip)]
        bottoms = [_label(blank, "|finding - normal| x2", strip)]
        for finding in group:
            image = render_phantom([finding], seed, size).image
            diff = np.clip(np.abs(image.astype(np.int16) - normal.astype(np.int16)) * 2, 0, 255).astype(np.uint8)
            tops.append(_label(np.stack([image] * 3, -1), finding.describe(), strip))
            bottoms.append(_label(lut[diff], f"diff: {finding.name}", strip))
        while len(tops) < columns:
            tops.append(_label(blank, "", strip))
            bottoms.append(_label(blank, "", strip))
        bands.append(np.concatenate([np.concatenate(tops, 1), np.concatenate(bottoms, 1)], 0))
    return np.concatenate(bands, 0)


def save_gallery(path: str | Path, seed: int = GALLERY_SEED, size: int = 256, *, overwrite: bool = False) -> Path:
    """Render the gallery and write it as a PNG marked as synthetic."""
    image = render_gallery(seed, size)
    meta = {"Software": SOFTWARE_NAME, "Synthetic": "true", "Seed": str(seed), "Size": str(size),
            "Description": f"phantom gallery: {', '.join(f.describe() for f in gallery_findings())}",
            "Generator": f"synthex.phantom v{RENDER_VERSION}"}
    log.info("gallery: %d findings at %d px, seed %d", len(gallery_findings()), size, seed)
    return write_png(image, path, meta, overwrite=overwrite)
