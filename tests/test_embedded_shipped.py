"""The embedded default model that ships inside the package: present, small, loadable offline,
and producing grayscale 128x128 images through the engine with reproducible seeds."""
from __future__ import annotations

import numpy as np

from synthex.generate.engine import Engine, GenerationRequest
from synthex.models.embedded import EMBEDDED_DIR


from tests.helpers_tiny import one_thread  # noqa: E402,F401 (autouse: torch on one thread)


def test_shipped_folder_is_complete_and_small():
    assert (EMBEDDED_DIR / "model_index.json").is_file()
    weights = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file()]
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt") for p in weights)  # safetensors only
    assert sum(p.stat().st_size for p in weights) <= 50 * 2**20


def test_default_model_generates_reproducible_grayscale_images():
    engine = Engine()
    request = GenerationRequest("Chest x-ray. Cardiomegaly moderate.", steps=3, seed=11, n=2)
    first = engine.generate(request)
    assert first.seeds == [11, 12]
    assert all(img.mode == "L" and img.size == (128, 128) for img in first.images)
    again = engine.generate(GenerationRequest("Chest x-ray. Cardiomegaly moderate.", steps=3, seed=12))
    assert np.array_equal(np.asarray(first.images[1]), np.asarray(again.images[0]))
    assert first.parameters[0].model and first.parameters[0].model_hash
    arr = np.asarray(first.images[0], dtype=float)
    assert arr.std() > 5  # an image, not a flat field
