"""Does a LoRA make the model draw the prompted finding? LoRA scale 0 vs scale 1, same seeds.

For each LoRA and each finding prompt, generate N images at fixed seeds with the LoRA at scale 0
(the base model) and at scale 1, classify them with the shipped phantom classifier and print the
detection rate (probability > threshold) with counts, next to the rate on a normal prompt.

Two thresholds: the classifier's own 0.5 (calibrated on phantoms), and a threshold calibrated on
the model's own output domain: the ``--quantile`` (default 95th percentile) of the finding's
probability on base-model (LoRA scale 0) images of the normal prompt at other seeds (``--seed``
+ 100000 onwards). The second answers "does the prompted image score higher than the base
model's normal images do", which stays meaningful when the generated texture shifts the
classifier's outputs (the embedded model's images score low for cardiomegaly even when the
heart is drawn large, and high for opacity everywhere).

    python scripts/lora_evidence.py --lora runs/lora/opacity/pytorch_lora_weights.safetensors --n 32
    python scripts/lora_evidence.py --lora A.safetensors --lora B.safetensors --findings all --n 32
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from synthex.generate.engine import Engine, GenerationRequest
from synthex.phantom.classifier import PHANTOM_LABELS, load_classifier, predict_proba

NORMAL = "Chest x-ray. Normal. The heart is normal in size. The lungs are clear."
PROMPTS = {
    "opacity_right": "Chest x-ray. Lung opacity. Opacity lung base right. Right basilar airspace opacity.",
    "cardiomegaly": "Chest x-ray. Cardiomegaly moderate. The heart is enlarged.",
    "pleural_effusion_right": "Chest x-ray. Pleural Effusion right. Right pleural effusion.",
    "pleural_effusion_left": "Chest x-ray. Pleural Effusion left. Left pleural effusion.",
}


def rates(engine, clf, model, lora, scale, prompt, args, seed=None):
    loras = [(str(lora), scale)] if lora else []
    seed = args.seed if seed is None else seed
    result = engine.generate(GenerationRequest(prompt, steps=args.steps, guidance=args.guidance, seed=seed,
                                               n=args.n, model=model, loras=loras, batch_size=8))
    images = np.stack([np.asarray(im.convert("L")) for im in result.images])
    return predict_proba(clf, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", action="append", required=True, help="LoRA file (repeatable)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--findings", default="opacity_right", help="comma list of " + ",".join(PROMPTS) + " or all")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    findings = list(PROMPTS) if args.findings == "all" else args.findings.split(",")
    engine, clf = Engine(), load_classifier()
    names = list(PHANTOM_LABELS)
    print(f"model {args.model}; {args.n} images per cell, seeds {args.seed}..{args.seed + args.n - 1}, "
          f"{args.steps} steps, CFG {args.guidance}, threshold {args.threshold}")
    calibration = rates(engine, clf, args.model, None, 0.0, NORMAL, args, seed=args.seed + 100000)
    cal = {f: float(np.quantile(calibration[:, names.index(f)], args.quantile)) for f in findings}
    print("calibrated thresholds (q%.2f of base-model normal-prompt images, seeds %d..): %s" % (
        args.quantile, args.seed + 100000, ", ".join(f"{f} {t:.3f}" for f, t in cal.items())))
    out = {"thresholds": {"fixed": args.threshold, "calibrated": cal}, "n": args.n}
    for lora in args.lora:
        print(f"\nLoRA {lora}")
        print(f"{'finding':24s} {'scale':>5s} {'prompted@0.5':>13s} {'normal@0.5':>11s} {'prompted@cal':>13s} "
              f"{'normal@cal':>11s} {'mean p prompted/normal':>24s}")
        for scale in (0.0, 1.0):
            normal = rates(engine, clf, args.model, lora, scale, NORMAL, args)
            for finding in findings:
                k = names.index(finding)
                probs = rates(engine, clf, args.model, lora, scale, PROMPTS[finding], args)
                cells = {}
                for label, t in (("fixed", args.threshold), ("calibrated", cal[finding])):
                    cells[label] = (int((probs[:, k] > t).sum()), int((normal[:, k] > t).sum()))
                (h, b), (hc, bc) = cells["fixed"], cells["calibrated"]
                print(f"{finding:24s} {scale:>5.1f} {h:>6d}/{args.n:<3d}{h / args.n:4.0%} {b:>4d}/{args.n:<3d}{b / args.n:4.0%} "
                      f"{hc:>6d}/{args.n:<3d}{hc / args.n:4.0%} {bc:>4d}/{args.n:<3d}{bc / args.n:4.0%} "
                      f"{probs[:, k].mean():>12.2f} / {normal[:, k].mean():.2f}")
                out.setdefault(str(lora), {}).setdefault(finding, {})[str(scale)] = {
                    "prompted_hits": h, "normal_hits": b, "prompted_hits_calibrated": hc,
                    "normal_hits_calibrated": bc, "n": args.n,
                    "mean_p_prompted": float(probs[:, k].mean()), "mean_p_normal": float(normal[:, k].mean())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
