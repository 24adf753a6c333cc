"""The SHIPPED embedded model follows the text (issue 11), at fixed seeds, scored by the shipped
phantom classifier and a CTR probe fitted on rendered phantoms. Margins were measured on the
shipped weights (see README, 'The embedded default model'); the test checks behaviour, never time."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synthex.generate.engine import Engine, GenerationRequest  # noqa: E402
from synthex.phantom.classifier import PHANTOM_LABELS, load_classifier, predict_proba, to_tensor  # noqa: E402
from tests.helpers_tiny import one_thread  # noqa: E402,F401

SEEDS = 4  # images per prompt, seeds 0..3
PROMPTS = {
    "normal": "Chest x-ray. Normal. The heart size is normal. The lungs are clear.",
    "cardiomegaly": "Chest x-ray. Cardiomegaly severe. The heart is markedly enlarged.",
    "effusion_left": "Chest x-ray. Pleural Effusion left severe. Large left pleural effusion.",
    "effusion_right": "Chest x-ray. Pleural Effusion right severe. Large right pleural effusion.",
}


@pytest.fixture(scope="module")
def scored():
    engine, clf = Engine(), load_classifier()
    out = {}
    for key, prompt in PROMPTS.items():
        result = engine.generate(GenerationRequest(prompt, steps=20, seed=0, n=SEEDS))
        images = np.stack([np.asarray(im.convert("L")) for im in result.images])
        with torch.no_grad():
            emb = clf.embed(to_tensor(images, clf.config.size)).numpy()
        out[key] = {"images": images, "probs": predict_proba(clf, images), "emb": emb}
    return out


def _p(scored, key, label):
    return scored[key]["probs"][:, PHANTOM_LABELS.index(label)]


def test_left_effusion_lands_on_the_image_right(scored):
    """The patient's left is the image's right: the classifier's side and the pixels agree."""
    left_l, left_r = _p(scored, "effusion_left", "pleural_effusion_left"), _p(scored, "effusion_left", "pleural_effusion_right")
    right_l, right_r = _p(scored, "effusion_right", "pleural_effusion_left"), _p(scored, "effusion_right", "pleural_effusion_right")
    assert (left_l > left_r).all() and (right_r > right_l).all()
    assert left_l.mean() > 0.5 and right_r.mean() > 0.5
    # pixels: fluid is bright at the base; compare the lower image-right vs image-left quarter
    def asymmetry(images):
        lower = images[:, 80:118].astype(float)
        return lower[:, :, 68:110].mean(axis=(1, 2)) - lower[:, :, 18:60].mean(axis=(1, 2))
    assert asymmetry(scored["effusion_left"]["images"]).mean() > asymmetry(scored["effusion_right"]["images"]).mean() + 5


def test_cardiomegaly_raises_the_ctr_probe_over_the_normal_prompt(scored):
    from synthex.evaluate.alignment import fit_ctr_probe, predict_ctr

    clf = load_classifier()

    def embed(images):
        with torch.no_grad():
            return clf.embed(to_tensor(images, clf.config.size)).numpy()

    probe = fit_ctr_probe(embed, 128, np.random.default_rng(0), n=200)
    cardio, normal = predict_ctr(probe, scored["cardiomegaly"]["emb"]), predict_ctr(probe, scored["normal"]["emb"])
    assert cardio.mean() > normal.mean() + 0.05
    assert (cardio > 0.5).mean() >= 0.75 and (normal > 0.5).mean() <= 0.25
    assert _p(scored, "cardiomegaly", "cardiomegaly").mean() > _p(scored, "normal", "cardiomegaly").mean() + 0.3
