"""Downstream utility: does synthetic data help a classifier that is tested on real images?

The labelled real set is split (by ``test_fraction``, seeded) into a training part and a
held-out test part. The project's small finding classifier (:func:`train_classifier`, the same
architecture as the shipped one, at ``size`` px) is trained three times with the same seed and
schedule -- on real only, real + synthetic, synthetic only -- and each is scored by per-finding
AUROC on the held-out real images (findings without positives or negatives in the test part
are left out and listed).
"""
from __future__ import annotations

import logging

import numpy as np

from synthex.errors import SynthexError
from synthex.phantom.classifier import ClassifierConfig, per_finding_auroc, predict_proba, train_classifier

log = logging.getLogger(__name__)

REGIMES = ("real", "real+synthetic", "synthetic")


def _at(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size:
        return images
    from synthex.evaluate.data import resize_square

    return np.stack([resize_square(im, size) for im in images])


def utility(real_images: np.ndarray, real_labels: np.ndarray, synth_images: np.ndarray, synth_labels: np.ndarray,
            names: tuple[str, ...], rng: np.random.Generator, *, test_fraction: float = 0.5, size: int = 64,
            epochs: int = 6, seed: int = 0, progress: bool = False) -> dict:
    """Per-finding AUROC on held-out real images of classifiers trained on each regime."""
    from tqdm.auto import tqdm

    n = len(real_images)
    order = rng.permutation(n)
    n_test = int(round(test_fraction * n))
    if n_test < 10 or n - n_test < 10:
        raise SynthexError(f"utility: {n} labelled real images give {n_test} test and {n - n_test} training images; "
                           "at least 10 of each are needed: add real images or change the test fraction")
    test, train = order[:n_test], order[n_test:]
    x_real, x_synth = _at(real_images, size), _at(synth_images, size)
    data = {"real": (x_real[train], real_labels[train]),
            "real+synthetic": (np.concatenate([x_real[train], x_synth]),
                               np.concatenate([real_labels[train], synth_labels])),
            "synthetic": (x_synth, synth_labels)}
    y_test = real_labels[test]
    usable = [name for j, name in enumerate(names) if 0 < y_test[:, j].sum() < len(test)]
    out = {"n_train_real": int(len(train)), "n_test_real": int(len(test)), "n_synthetic": int(len(x_synth)),
           "size": size, "epochs": epochs, "findings": usable,
           "left_out": [n_ for n_ in names if n_ not in usable], "regimes": {}}
    for regime in tqdm(REGIMES, desc="utility", disable=not progress, leave=False):
        x, y = data[regime]
        config = ClassifierConfig(names=list(names), size=size)
        model = train_classifier(x, y, config, epochs=epochs, seed=seed, batch_size=max(4, min(32, len(x) // 4)))
        scores = per_finding_auroc(y_test, predict_proba(model, x_real[test]), list(names))
        scores = {k: v for k, v in scores.items() if k in usable}
        out["regimes"][regime] = {"n_train": int(len(x)), "auroc": scores,
                                  "mean_auroc": float(np.mean(list(scores.values()))) if scores else float("nan")}
    return out
