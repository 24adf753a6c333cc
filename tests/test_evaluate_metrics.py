"""Self-checks of the evaluation metrics on rendered phantoms (issue 7)."""
from __future__ import annotations

import numpy as np
import pytest

from synthex.evaluate.alignment import alignment, fit_ctr_probe
from synthex.evaluate.diversity import diversity, ms_ssim
from synthex.evaluate.features import SynthexExtractor
from synthex.evaluate.fidelity import fid, fidelity, kid, prdc
from synthex.evaluate.privacy import audit
from synthex.phantom.classifier import PHANTOM_LABELS, render_training_set
from tests.helpers_tiny import one_thread  # noqa: F401 (autouse fixture)

SIZE = 64


@pytest.fixture(scope="module")
def extractor() -> SynthexExtractor:
    return SynthexExtractor()


@pytest.fixture(scope="module")
def mixed(extractor):
    """Two independent samples of the same finding mix, and one of another mix."""
    a1, y1, _ = render_training_set(80, SIZE, seed=11)
    a2, y2, _ = render_training_set(80, SIZE, seed=12)
    b, yb, _ = render_training_set(80, SIZE, seed=13, pool=("cardiomegaly", "pleural_effusion", "edema"))
    return {name: (x, y, extractor(x)) for name, x, y in (("a1", a1, y1), ("a2", a2, y2), ("b", b, yb))}


def test_set_against_itself_is_perfect(mixed):
    x, _, out = mixed["a1"]
    emb = out["embedding"]
    assert fid(emb, emb) == pytest.approx(0.0, abs=1e-6)
    result = fidelity(emb, emb, np.random.default_rng(0), bootstrap=50, kid_subsets=20)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)
    assert result["fid_lo"] == pytest.approx(0.0, abs=1e-6)
    # KID against itself is near 0 (slightly negative: independent subsets of one set share images)
    assert abs(result["kid"]) < 0.1 * kid(emb, mixed["b"][2]["embedding"], np.random.default_rng(0))["kid"]
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0
    assert result["density"] == pytest.approx(6 / 5)  # own ball + on average k others, over k = 5
    assert result["warnings"], "80 images with 96-d features must warn about an unstable FID"
    d1 = diversity(x, None, np.random.default_rng(3))
    d2 = diversity(x.copy(), None, np.random.default_rng(3))
    assert d1["across_prompts"] == d2["across_prompts"]


def test_fid_ranks_same_mix_below_other_mix_and_noise(mixed, extractor):
    same = fid(mixed["a1"][2]["embedding"], mixed["a2"][2]["embedding"])
    other = fid(mixed["a1"][2]["embedding"], mixed["b"][2]["embedding"])
    noise_images = np.random.default_rng(0).integers(0, 256, (80, SIZE, SIZE), dtype=np.uint8)
    noise = fid(mixed["a1"][2]["embedding"], extractor(noise_images)["embedding"])
    assert other > 3 * same
    assert noise > 10 * other
    p = prdc(mixed["a1"][2]["embedding"], extractor(noise_images)["embedding"])
    assert p["precision"] < 0.1 and p["coverage"] < 0.1


def test_fid_bootstrap_interval_contains_the_estimate(mixed):
    r = fidelity(mixed["a1"][2]["embedding"], mixed["b"][2]["embedding"], np.random.default_rng(1), bootstrap=100,
                 kid_subsets=20)
    assert r["fid_lo"] <= r["fid"] <= r["fid_hi"]
    assert r["kid_lo"] <= r["kid"] <= r["kid_hi"] and r["kid_std"] > 0


def test_ms_ssim_identity_collapse_and_noise(mixed):
    x = mixed["a1"][0]
    assert np.allclose(ms_ssim(x[:4], x[:4]), 1.0, atol=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, x[:4].shape, dtype=np.uint8)
    assert ms_ssim(x[:4], noise).max() < 0.2
    collapsed = np.repeat(x[:5], 4, axis=0)  # 5 prompts, 4 identical "seeds" each
    prompts = [f"p{i // 4}" for i in range(20)]
    d = diversity(collapsed, prompts, np.random.default_rng(0))
    assert d["within_prompt"] == pytest.approx(1.0, abs=1e-5)
    assert d["across_prompts"] < 0.95
    healthy = diversity(x[:20], prompts, np.random.default_rng(0))
    assert healthy["within_prompt"] < 0.95


def test_privacy_flags_every_copy_and_no_fresh_sample(mixed, extractor):
    train, _, train_out = mixed["a1"]
    emb = lambda im: extractor(im)["embedding"]  # noqa: E731
    copies = train[::4]
    r = audit(copies, emb(copies), train, train_out["embedding"], emb, np.random.default_rng(0), n_calibration=80)
    assert r["n_flagged"] == len(copies)
    assert np.array_equal(r["pixel_nn"], np.arange(0, len(train), 4))
    fresh, _, fresh_out = mixed["a2"]
    r = audit(fresh, fresh_out["embedding"], train, train_out["embedding"], emb, np.random.default_rng(0),
              n_calibration=80)
    assert r["n_flagged"] == 0
    assert r["calibration"]["pixel"]["copy_recall"] > 0.9


def test_alignment_on_phantoms_matches_rendered_truth(extractor):
    images, labels, _ = render_training_set(120, 128, seed=21)
    out = extractor(images)
    probe = fit_ctr_probe(lambda im: extractor(im)["embedding"], 128, np.random.default_rng(0), n=160)
    good = alignment(labels, out["probs"], out["embedding"], PHANTOM_LABELS, probe)
    assert good["mean_auroc"] > 0.9
    assert good["normal"]["pathology_called_normal"] < 0.15
    assert good["normal"]["pathology_all_missed"] < 0.2
    assert good["ctr"]["mean_ctr_cardiomegaly"] > good["ctr"]["mean_ctr_other"] + 0.05
    sided = [row for row in good["laterality"] if row["n"] >= 3]
    assert sided and all(row["correct_side"] >= 0.75 for row in sided)
    shuffled = labels[np.random.default_rng(0).permutation(len(labels))]
    bad = alignment(shuffled, out["probs"], out["embedding"], PHANTOM_LABELS, None)
    assert bad["mean_auroc"] < 0.7
    assert bad["normal"]["pathology_all_missed"] > 0.5
