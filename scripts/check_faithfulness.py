"""How often does a model draw what the prompt asks? Scored by the shipped phantom classifier.

For each finding prompt and for a normal prompt, generate N images at fixed seeds (the same seeds
for every prompt), classify them, and print the detection rate of the prompted finding (share of
images whose probability exceeds the threshold, with counts) next to its rate on the normal
prompt's images, plus the mean probability. A model faithful to the text shows a clearly higher
rate for the prompted finding than for normal.

    python scripts/check_faithfulness.py --model embedded --n 16 --steps 20
"""
from __future__ import annotations

import argparse

import numpy as np

from synthex.generate.engine import Engine, GenerationRequest
from synthex.phantom.classifier import PHANTOM_LABELS, load_classifier, predict_proba

PROMPTS = {
    "normal": "Chest x-ray. Normal. The heart is normal in size. The lungs are clear.",
    "cardiomegaly": "Chest x-ray. Cardiomegaly moderate. The heart is enlarged.",
    "pleural_effusion_right": "Chest x-ray. Pleural Effusion right. Right pleural effusion.",
    "pleural_effusion_left": "Chest x-ray. Pleural Effusion left. Left pleural effusion.",
    "opacity_right": "Chest x-ray. Opacity lung base right. Right basilar opacity.",
    "emphysema": "Chest x-ray. Lung hyperdistention. Emphysema. The lungs are hyperexpanded.",
    "central_line": "Chest x-ray. Catheters, Indwelling right. Right central venous catheter.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    engine, clf = Engine(), load_classifier()
    names = list(PHANTOM_LABELS)
    probs = {}
    for label, prompt in PROMPTS.items():
        result = engine.generate(GenerationRequest(prompt, steps=args.steps, guidance=args.guidance,
                                                   seed=args.seed, n=args.n, model=args.model))
        images = np.stack([np.asarray(im.convert("L")) for im in result.images])
        probs[label] = predict_proba(clf, images)
    print(f"model {args.model}, {args.n} images per prompt, seeds {args.seed}..{args.seed + args.n - 1}, "
          f"{args.steps} steps, CFG {args.guidance}, threshold {args.threshold}")
    print(f"{'finding':24s} {'prompted':>16s} {'normal prompt':>16s} {'mean p (prompted/normal)':>26s}")
    for label in PROMPTS:
        if label == "normal":
            continue
        k = names.index(label)
        hit = int((probs[label][:, k] > args.threshold).sum())
        base = int((probs["normal"][:, k] > args.threshold).sum())
        print(f"{label:24s} {hit:>6d}/{args.n} ({hit / args.n:4.0%}) {base:>6d}/{args.n} ({base / args.n:4.0%}) "
              f"{probs[label][:, k].mean():>12.2f} / {probs['normal'][:, k].mean():.2f}")


if __name__ == "__main__":
    main()
