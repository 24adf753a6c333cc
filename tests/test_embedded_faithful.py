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


def test_effusion_prompts_draw_effusions_the_normal_prompt_does_not(scored):
    for key in ("effusion_left", "effusion_right"):
        for label in ("pleural_effusion_left", "pleural_effusion_right"):
            assert _p(scored, key, label).mean() > 0.6
            assert _p(scored, key, label).mean() > _p(scored, "normal", label).mean() + 0.4


@pytest.mark.xfail(strict=True, reason="known gap of model v2 (issue 11): effusions are drawn on both sides "
                   "whatever side the prompt names; strict, so it reports when a model starts to pass")
def test_left_effusion_lands_on_the_image_right(scored):
    """The patient's left is the image's right: the classifier's side and the pixels agree."""
    left_l, left_r = _p(scored, "effusion_left", "pleural_effusion_left"), _p(scored, "effusion_left", "pleural_effusion_right")
    right_l, right_r = _p(scored, "effusion_right", "pleural_effusion_left"), _p(scored, "effusion_right", "pleural_effusion_right")
    assert (left_l > left_r + 0.2).all() and (right_r > right_l + 0.2).all()

    def asymmetry(images):  # fluid is bright at the base: lower image-right minus image-left quarter
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
    # measured on v2 at seeds 0-3: cardiomegaly 0.64-0.66, normal 0.49-0.59
    assert cardio.mean() > normal.mean() + 0.05
    assert cardio.min() > normal.max()
    # classifier: cardiomegaly 0.67-0.97 when prompted, 0.16-0.32 on the normal prompt
    assert _p(scored, "cardiomegaly", "cardiomegaly").mean() > _p(scored, "normal", "cardiomegaly").mean() + 0.3
