"""Edit a finding into normal phantoms by inpainting, right and left side measured side by side.

    python benchmarks/bench_edit.py [--n 16] [--steps 20] [--strength 1.0] [--sampler "Euler a"]

For each side: the lower zone of that lung is the mask, the prompt is "Chest x-ray. <Side>
pleural effusion.", the embedded model inpaints it and the phantom classifier scores the image
before and after (see synthex.evaluate.edit). Prints one table row per side.
"""
from __future__ import annotations

import argparse

from synthex.evaluate.edit import measure_edit
from synthex.generate.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--finding", default="pleural_effusion")
    args = parser.parse_args()
    engine, seeds = Engine(), list(range(1000, 1000 + args.n))
    keys = ("outside_max", "outside_mean", "inside_signed", "detected_before", "detected_after",
            "p_before", "p_after", "p_other_after", "other_side_after")
    print("| side | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for side in ("right", "left"):
        s = measure_edit(engine, seeds, finding=args.finding, side=side, steps=args.steps,
                         strength=args.strength, sampler=args.sampler).summary()
        print(f"| {side} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
