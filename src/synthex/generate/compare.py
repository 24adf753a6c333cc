"""Two prompts, one seed: both images and their absolute-difference heat map (thesis Fig. 4.4).

Both images are made with the same seed and settings, so the difference shows what the prompt
change did. The heat map is ``|A - B|`` of the grayscale images (in [0, 1]), multiplied by 2 for
visibility, clipped, with matplotlib's ``inferno`` colormap. Outputs, for ``-o FIG.png``:

- ``FIG.png``    the figure: image A, image B, the heat map with a colour bar
- ``FIG.npz``    arrays ``a``, ``b`` (uint8 grayscale), ``diff`` (float32 |A-B| in [0, 1]),
                 ``heatmap`` (float32, amplified and clipped), ``seed``, ``prompt_a``, ``prompt_b``
- ``FIG_a.png``, ``FIG_b.png``  the two images with their generation parameters
"""
from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.engine import Engine, GenerationRequest, resolve_seeds

logger = logging.getLogger(__name__)

AMPLIFY = 2.0
COLORMAP = "inferno"


@dataclass
class CompareResult:
    image_a: Any
    image_b: Any
    diff: np.ndarray
    heatmap: np.ndarray
    seed: int
    figure: Path
    arrays: Path
    images: tuple[Path, Path]


def grayscale(image: Any) -> np.ndarray:
    """A PIL image as a uint8 grayscale array (ITU-R 601 luma, PIL's "L" conversion)."""
    return np.asarray(image.convert("L"), dtype=np.uint8)


def difference_map(a: Any, b: Any, amplify: float = AMPLIFY) -> tuple[np.ndarray, np.ndarray]:
    """``(|A - B| in [0, 1], clip(amplify * |A - B|, 0, 1))`` of two images of equal size."""
    ga, gb = grayscale(a), grayscale(b)
    if ga.shape != gb.shape:
        raise SynthexError(f"images differ in size: {ga.shape[::-1]} vs {gb.shape[::-1]}")
    diff = np.abs(ga.astype(np.float32) - gb.astype(np.float32)) / 255.0
    return diff, np.clip(diff * amplify, 0.0, 1.0)


def render_figure(a: Any, b: Any, heatmap: np.ndarray, titles: tuple[str, str], seed: int,
                  amplify: float = AMPLIFY) -> Any:
    """The three-panel matplotlib Figure (no pyplot: safe in servers and threads)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, 3)
    for ax, image, title in zip(axes[:2], (a, b), titles):
        ax.imshow(grayscale(image), cmap="gray", vmin=0, vmax=255)
        ax.set_title(textwrap.fill(title, 45), fontsize=9)
    shown = axes[2].imshow(heatmap, cmap=COLORMAP, vmin=0.0, vmax=1.0)
    axes[2].set_title(f"|A - B| x {amplify:g} (seed {seed})", fontsize=9)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    figure.suptitle("Synthetic images (research use, not diagnosis)", fontsize=10)
    return figure


def output_paths(figure: str | os.PathLike[str]) -> tuple[Path, Path, Path, Path]:
    """(figure .png, arrays .npz, image A .png, image B .png) for a figure path."""
    figure = Path(figure)
    if figure.suffix.lower() != ".png":
        raise SynthexError(f"{figure}: the comparison figure is written as PNG; give a path ending in .png")
    stem = figure.with_suffix("")
    return figure, stem.with_suffix(".npz"), Path(f"{stem}_a.png"), Path(f"{stem}_b.png")


def _atomic(path: Path, write: Any) -> None:
    """``write(handle)`` into a temp file next to ``path``, then rename it into place."""
    from synthex.io import atomic_write

    atomic_write(path, write)


def compare_prompts(prompt_a: str, prompt_b: str, out: str | os.PathLike[str], *,
                    base: GenerationRequest | None = None, seed: int | str | None = None,
                    engine: Engine | None = None, overwrite: bool = False,
                    amplify: float = AMPLIFY, callback: Any = None) -> CompareResult:
    """Generate both prompts at the same seed (random when None/-1, reported) with the other
    settings of ``base``; write the figure, the arrays and both images."""
    from synthex import SOFTWARE_NAME, __version__
    from synthex.generate.infotext import write_png

    paths = output_paths(out)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    base = base or GenerationRequest(prompt_a)
    value = resolve_seeds(seed if seed is not None else base.seed, 1)[0][0]
    engine = engine or Engine()
    results = [engine.generate(replace(base, prompt=text, seed=value, n=1), callback)
               for text in (prompt_a, prompt_b)]
    image_a, image_b = results[0].images[0], results[1].images[0]
    diff, heatmap = difference_map(image_a, image_b, amplify)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    figure = render_figure(image_a, image_b, heatmap, (f"A: {prompt_a}", f"B: {prompt_b}"), value, amplify)
    info = {"Software": f"{SOFTWARE_NAME} {__version__}", "Synthetic": "true",
            "Description": f"A: {prompt_a}\nB: {prompt_b}\nSeed: {value}"}
    _atomic(paths[0], lambda handle: figure.savefig(handle, format="png", metadata=info))
    _atomic(paths[1], lambda handle: np.savez_compressed(
        handle, a=grayscale(image_a), b=grayscale(image_b), diff=diff, heatmap=heatmap,
        seed=np.int64(value), prompt_a=prompt_a, prompt_b=prompt_b))
    for image, result, path in zip((image_a, image_b), results, paths[2:]):
        write_png(image, path, result.parameters[0], overwrite=overwrite)
    logger.info("compare: mean |A-B| = %.4f, max = %.4f", float(diff.mean()), float(diff.max()))
    return CompareResult(image_a, image_b, diff, heatmap, value, paths[0], paths[1], (paths[2], paths[3]))
