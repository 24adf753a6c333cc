"""The shipped search dual encoder (synthex/weights/search): offline, small, and it finds what a
query names, on the named side, among phantoms it never saw (rendered here with other seeds)."""
from __future__ import annotations

import numpy as np
import pytest

from synthex.search.model import DEFAULT_SEARCH_DIR, load_search_model
from tests.helpers_tiny import one_thread  # noqa: F401 (autouse: torch on one thread)

CLASSES = {
    "pleural_effusion:left": [{"name": "pleural_effusion", "side": "left", "severity": "moderate"}],
    "pleural_effusion:right": [{"name": "pleural_effusion", "side": "right", "severity": "moderate"}],
    "pneumothorax:left": [{"name": "pneumothorax", "side": "left", "severity": "severe"}],
    "cardiomegaly": [{"name": "cardiomegaly", "severity": "severe"}],
    "normal": [],
}
PER_CLASS = 8


@pytest.fixture(scope="module")
def model():
    return load_search_model()


@pytest.fixture(scope="module")
def gallery():
    from PIL import Image

    from synthex.phantom.findings import Finding
    from synthex.phantom.render import render_phantom

    images, labels = [], []
    for c, (label, findings) in enumerate(CLASSES.items()):
        for j in range(PER_CLASS):
            result = render_phantom([Finding.from_dict(f) for f in findings] or "normal", 9_000_000 + 97 * c + j, 256)
            images.append(np.asarray(Image.fromarray(result.image).resize((128, 128), Image.LANCZOS)))
            labels.append(label)
    return np.stack(images), labels


def test_shipped_files_are_small_safetensors():
    files = [p for p in DEFAULT_SEARCH_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert (DEFAULT_SEARCH_DIR / "model.safetensors").is_file()


@pytest.mark.parametrize("query,label", [
    ("left pleural effusion", "pleural_effusion:left"),
    ("fluid in the right pleural space", "pleural_effusion:right"),
    ("left pneumothorax", "pneumothorax:left"),
    ("enlarged cardiac silhouette", "cardiomegaly"),
    ("no acute cardiopulmonary abnormality", "normal"),
])
def test_text_query_finds_the_named_finding_on_its_side(model, gallery, query, label):
    images, labels = gallery
    scores = model.embed_images(images) @ model.embed_texts([query])[0]
    top = [labels[i] for i in np.argsort(-scores)[:PER_CLASS // 2]]
    assert top.count(label) >= PER_CLASS // 2 - 1, (query, top)


def test_similar_images_share_the_finding_and_side(model, gallery):
    images, labels = gallery
    emb = model.embed_images(images)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nearest = [labels[int(np.argmax(row))] for row in sim]
    agree = np.mean([a == b for a, b in zip(nearest, labels)])
    assert agree >= 0.8, agree
