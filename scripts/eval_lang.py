"""Russian/Ukrainian glossary on the parallel prompt sets, and the images made from them.

    python scripts/eval_lang.py                       # mapping accuracy, both languages, sets A/B
    python scripts/eval_lang.py --images 40 --steps 20  # + images: mapped vs English prompt

Mapping: a prompt is correct when the glossary reads the same findings, sides and grades from
the translation as the English parser reads from its source (see synthex.text.lang_eval).

Images (--images N, per language, from set B): each pair is generated at the same seed from the
English source and from the translation (the engine maps it), and the phantom classifier reads
both. Reported: how often the classifier's findings (p > 0.5) agree between the translation's
image and the English image, beside the same agreement between two English images at different
seeds (the noise floor of the embedded model), and the mean |p_ru - p_en|.
Writes docs/lang/evaluation.md (every failing row) and .json (the shares).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = {"ru": ROOT / "tests/data/lang/parallel_ru.yaml", "uk": ROOT / "tests/data/lang/parallel_uk.yaml"}


def mapping_tables(args) -> tuple[list[str], dict]:
    from synthex.text.lang_eval import evaluate_parallel, load_parallel

    lines = ["| language | set | prompts | exact (findings + sides + grades) | names | sides | grades | zones | with unknown words |",
             "|---|---|---|---|---|---|---|---|---|"]
    out: dict = {}
    for lang, path in SETS.items():
        rows = load_parallel(path)
        for subset in ("A", "B", "all"):
            chosen = [r for r in rows if subset == "all" or r.get("set") == subset]
            res = evaluate_parallel(chosen)
            out[f"{lang}-{subset}"] = res
            lines.append(f"| {lang} | {subset} | {res['n']} | **{res['exact']:.3f}** | {res['names']:.3f} | "
                         f"{res['sides']:.3f} | {res['grades']:.3f} | {res['zones']:.3f} | {res['with_unknown_words']} |")
    return lines, out


def image_check(args) -> tuple[list[str], dict]:
    from synthex.errors import SynthexError
    from synthex.generate.engine import Engine, GenerationRequest
    from synthex.phantom.classifier import load_classifier, predict_proba
    from synthex.text.lang_eval import load_parallel

    engine = Engine()
    clf = load_classifier()
    names = list(clf.config.names)

    def probs(prompt: str, seed: int, lang: str) -> np.ndarray:
        req = GenerationRequest(prompt, steps=args.steps, seed=seed, lang=lang, model=args.model)
        image = engine.generate(req).images[0]
        return predict_proba(clf, np.asarray(image.convert("L"), dtype=np.uint8)[None])[0]

    lines = ["| language | pairs | findings agree: translation vs English | English vs English (other seed) | mean abs p difference (translation / other seed) |",
             "|---|---|---|---|---|"]
    out: dict = {}
    for lang, path in SETS.items():
        rows = [r for r in load_parallel(path) if r.get("set") == "B"][: args.images]
        agree, floor, diff, dfloor, refused = [], [], [], [], []
        for n, row in enumerate(rows):
            seed = 1000 + n
            try:
                p_tr = probs(row["text"], seed, "auto")
            except SynthexError as exc:  # the glossary read no finding: counted, not hidden
                refused.append(f"{row['id']}: {str(exc)[:80]}")
                continue
            p_en = probs(row["en"], seed, "en")
            p_en2 = probs(row["en"], seed + 7919, "en")
            agree.append(float(np.mean((p_tr > 0.5) == (p_en > 0.5))))
            floor.append(float(np.mean((p_en2 > 0.5) == (p_en > 0.5))))
            diff.append(float(np.mean(np.abs(p_tr - p_en))))
            dfloor.append(float(np.mean(np.abs(p_en2 - p_en))))
            print(f"{lang} {n + 1}/{len(rows)}", file=sys.stderr, end="\r")
        out[lang] = {"pairs": len(agree), "refused": refused, "agree": float(np.mean(agree)), "agree_other_seed": float(np.mean(floor)),
                     "abs_diff": float(np.mean(diff)), "abs_diff_other_seed": float(np.mean(dfloor)),
                     "labels": names}
        lines.append(f"| {lang} | {len(agree)} (+{len(refused)} refused by the glossary) | {np.mean(agree):.3f} | {np.mean(floor):.3f} | "
                     f"{np.mean(diff):.3f} / {np.mean(dfloor):.3f} |")
    return lines, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=0, help="Pairs per language for the image check (0 = skip).")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/lang/evaluation.md")
    args = parser.parse_args()
    lines, data = mapping_tables(args)
    report = ["# Russian / Ukrainian glossary: measured", "",
              "`python scripts/eval_lang.py" + (f" --images {args.images} --steps {args.steps}" if args.images else "") + "`",
              "", "## Mapping to the English findings", "", *lines, ""]
    for key in ("ru-all", "uk-all"):
        wrong = [r for r in data[key]["rows"] if not r["exact"]]
        report += [f"### {key[:2]}: prompts not mapped exactly ({len(wrong)})", ""]
        report += [f"- `{r['id']}` {r['text']!r}: expected `{r['expected']}`, got `{r['mapped'] or r['error'][:120]}`"
                   for r in wrong] or ["- none"]
        top = data[key]["top_unknown"]
        report += ["", "Most frequent words not in the glossary: " + (", ".join(f"{w} ({c})" for w, c in top) or "none"), ""]
    if args.images:
        img_lines, img = image_check(args)
        data["images"] = img
        report += ["## Images from the translation vs from the English source", "",
                   f"Embedded model, {args.steps} steps, one seed per pair (set B); phantom classifier at p > 0.5.", "",
                   *img_lines, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report) + "\n", encoding="utf-8")
    data = {k: ({kk: vv for kk, vv in v.items() if kk != "rows"} if isinstance(v, dict) else v) for k, v in data.items()}
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str),
                                             encoding="utf-8")
    print("\n".join(lines))
    if args.images:
        print("\n".join(img_lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
