"""Does a LoRA make the model draw the prompted finding? LoRA scale 0 vs scale 1, same seeds.

For each LoRA and each finding prompt, generate N images at fixed seeds with the LoRA at scale 0
(the base model) and at scale 1, classify them with the shipped phantom classifier and print the
detection rate (probability > threshold) with counts, next to the rate on a normal prompt.

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


def rates(engine, clf, model, lora, scale, prompt, args):
    loras = [(str(lora), scale)] if lora else []
    result = engine.generate(GenerationRequest(prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
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
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    findings = list(PROMPTS) if args.findings == "all" else args.findings.split(",")
    engine, clf = Engine(), load_classifier()
    names = list(PHANTOM_LABELS)
    print(f"model {args.model}; {args.n} images per cell, seeds {args.seed}..{args.seed + args.n - 1}, "
          f"{args.steps} steps, CFG {args.guidance}, threshold {args.threshold}")
    out = {}
    for lora in args.lora:
        print(f"\nLoRA {lora}")
        print(f"{'finding':24s} {'scale':>5s} {'prompted':>14s} {'normal prompt':>14s} {'mean p prompted/normal':>24s}")
        for scale in (0.0, 1.0):
            normal = rates(engine, clf, args.model, lora, scale, NORMAL, args)
            for finding in findings:
                k = names.index(finding)
                probs = rates(engine, clf, args.model, lora, scale, PROMPTS[finding], args)
                hit, base = int((probs[:, k] > args.threshold).sum()), int((normal[:, k] > args.threshold).sum())
                print(f"{finding:24s} {scale:>5.1f} {hit:>5d}/{args.n} ({hit / args.n:4.0%}) {base:>5d}/{args.n} "
                      f"({base / args.n:4.0%}) {probs[:, k].mean():>12.2f} / {normal[:, k].mean():.2f}")
                out.setdefault(str(lora), {}).setdefault(finding, {})[str(scale)] = {
                    "prompted_hits": hit, "normal_hits": base, "n": args.n,
                    "mean_p_prompted": float(probs[:, k].mean()), "mean_p_normal": float(normal[:, k].mean())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
