"""One row per prompted finding (sides, grades), one column per seed: what a model draws.

    python scripts/finding_grid.py --model embedded -o docs/img/embedded_findings_grid.png --seeds 0 1 2 3

Every row uses the same seeds, so a column shows one "patient" under every prompt. Each row is
labelled with its prompt; the image is marked synthetic in its PNG metadata. An existing output is
refused unless --overwrite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from synthex.generate.engine import Engine, GenerationRequest

ROWS = [
    "Chest x-ray. Normal. The heart size is normal. The lungs are clear.",
    "Chest x-ray. Cardiomegaly mild. The heart is mildly enlarged.",
    "Chest x-ray. Cardiomegaly moderate. Moderate cardiomegaly.",
    "Chest x-ray. Cardiomegaly severe. The heart is markedly enlarged.",
    "Chest x-ray. Pleural Effusion right mild. Small right pleural effusion.",
    "Chest x-ray. Pleural Effusion right moderate. Moderate right pleural effusion.",
    "Chest x-ray. Pleural Effusion right severe. Large right pleural effusion.",
    "Chest x-ray. Pleural Effusion left mild. Small left pleural effusion.",
    "Chest x-ray. Pleural Effusion left moderate. Moderate left pleural effusion.",
    "Chest x-ray. Pleural Effusion left severe. Large left pleural effusion.",
    "Chest x-ray. Opacity lung base right. Right lower lobe airspace opacity.",
    "Chest x-ray. Opacity lung base left. Left lower lobe airspace opacity.",
    "Chest x-ray. Pneumothorax right severe. Large right pneumothorax.",
    "Chest x-ray. Pneumothorax left severe. Large left pneumothorax.",
    "Chest x-ray. Pulmonary Edema bilateral severe. Severe pulmonary edema.",
    "Chest x-ray. Pulmonary Emphysema. The lungs are hyperexpanded.",
    "Chest x-ray. Diaphragm elevated right. Elevated right hemidiaphragm.",
    "Chest x-ray. Scoliosis right severe. Thoracic scoliosis.",
    "Chest x-ray. Catheters, Indwelling right. Right central venous catheter.",
    "Chest x-ray. Pacemaker left. Left chest wall pacemaker.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite to replace it")
    engine = Engine()
    rows = []
    for prompt in ROWS:
        images = [engine.generate(GenerationRequest(prompt, steps=args.steps, guidance=args.cfg, seed=s,
                                                    model=args.model)).images[0] for s in args.seeds]
        rows.append(images)
        print(prompt)
    w, h = rows[0][0].size
    label_w = 330
    grid = Image.new("L", (label_w + w * len(args.seeds), h * len(rows)), color=0)
    draw = ImageDraw.Draw(grid)
    for i, (prompt, images) in enumerate(zip(ROWS, rows)):
        text = prompt.replace("Chest x-ray. ", "")
        draw.multiline_text((4, i * h + 4), "\n".join(text[k:k + 52] for k in range(0, len(text), 52)), fill=255)
        for j, image in enumerate(images):
            grid.paste(image.convert("L"), (label_w + j * w, i * h))
    info = PngInfo()
    info.add_text("Synthetic", "true")
    info.add_text("Description", f"SYNTHETIC images, research only, not for diagnosis; model {args.model}, "
                                 f"seeds {args.seeds}, {args.steps} steps, CFG {args.cfg}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, pnginfo=info)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
