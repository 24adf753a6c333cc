"""Diagnosis -> note: one table of DDIM vs DDPM, with and without self-conditioning, vs the AR
baseline, on held-out IU X-ray test-split patients; and DDIM's speed-up over 1,000 DDPM steps,
measured side by side in this run.

    OMP_NUM_THREADS=2 python benchmarks/bench_notes.py --n 200 --n-ddpm 40 --out docs/notes

``--diffusion`` / ``--ar`` / ``--no-sc`` pick model folders (default: the shipped models; ``--no-sc``
a model trained with ``--no-self-condition``, optional). The "real notes" row scores the held-out
reference notes themselves against their diagnoses: the ceiling of diagnosis consistency the
finding parser allows on this data. Writes ``OUT/notes_eval.csv``, ``OUT/notes_eval.md`` and
``OUT/examples.md`` (a few notes per row, labelled synthetic).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _test_set(n: int, seed: int = 0):
    import numpy as np

    from synthex.notes.data import load_iu_pairs

    data = load_iu_pairs()
    test, train = data.split("test"), data.split("train")
    rng = np.random.default_rng(seed)
    abnormal = [p for p in test if p.diagnosis.lower() != "normal"]
    normal = [p for p in test if p.diagnosis.lower() == "normal"]
    k = min(len(abnormal), int(round(n * 0.75)))
    pick = [abnormal[i] for i in rng.permutation(len(abnormal))[:k]]
    pick += [normal[i] for i in rng.permutation(len(normal))[: n - k]]
    return pick, [p.note for p in train]


def _generate(model, pairs, **kw):
    t0 = time.perf_counter()
    notes = model.generate([p.diagnosis for p in pairs], **kw)
    return [x.text for x in notes], (time.perf_counter() - t0) / len(pairs)


def _markdown(frame) -> str:
    def cell(v):
        return "" if v is None or v != v else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test diagnoses (3/4 abnormal)")
    parser.add_argument("--n-ddpm", type=int, default=40, help="of them, sampled with 1,000 DDPM steps")
    parser.add_argument("--diffusion", default="diffusion")
    parser.add_argument("--ar", default="ar")
    parser.add_argument("--no-sc", default=None, help="a diffusion model trained without self-conditioning")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-notes"))
    args = parser.parse_args()

    import pandas as pd

    from synthex.notes.ar import perplexity
    from synthex.notes.data import condition_text
    from synthex.notes.evaluate import score_notes
    from synthex.notes.model import NoteModel

    pairs, train_notes = _test_set(args.n)
    ar = NoteModel.load(args.ar)

    def fluency(diagnoses, texts):
        return perplexity(ar.module, ar.tok, [condition_text(d) for d in diagnoses], texts, ar.arch)

    rows, examples = [], {}
    runs = [("real notes (ceiling)", None, {}, pairs)]
    diff = NoteModel.load(args.diffusion)
    runs += [("diffusion, self-cond, DDIM 50", diff, dict(sampler="ddim", steps=50, guidance=args.guidance), pairs),
             ("diffusion, self-cond, DDIM 50 (same subset as DDPM)", diff,
              dict(sampler="ddim", steps=50, guidance=args.guidance), pairs[: args.n_ddpm]),
             ("diffusion, self-cond, DDPM 1000", diff, dict(sampler="ddpm", steps=1000, guidance=args.guidance),
              pairs[: args.n_ddpm])]
    runs += [("diffusion, self-cond, DDIM 50, no CFG", diff, dict(sampler="ddim", steps=50, guidance=1.0), pairs)]
    runs += [("diffusion, DDIM 50, self-cond input off at sampling (same weights)", diff,
              dict(sampler="ddim", steps=50, guidance=args.guidance, self_condition=False), pairs)]
    if args.no_sc:
        nosc = NoteModel.load(args.no_sc)
        runs += [("diffusion, no self-cond, DDIM 50", nosc, dict(sampler="ddim", steps=50, guidance=args.guidance), pairs)]
    runs += [("AR baseline (GPT-2, top-p 0.9)", ar, dict(top_p=0.9), pairs)]
    for name, model, kw, subset in runs:
        if model is None:
            texts, seconds = [p.note for p in subset], float("nan")
        else:
            texts, seconds = _generate(model, subset, **kw)
        print(f"{name}: {len(texts)} notes, {seconds:.3f} s/note", flush=True)
        row = {"run": name, "s_per_note": seconds}
        row.update(score_notes(texts, [p.diagnosis for p in subset], [p.note for p in subset], train_notes,
                               fluency=fluency))
        rows.append(row)
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out / "notes_eval.csv", index=False)  # kept if a later row fails
        examples[name] = list(zip([p.diagnosis for p in subset[:4]], texts[:4]))
    table = pd.DataFrame(rows)
    ddim = table.loc[table.run.str.contains("same subset"), "s_per_note"].item()
    ddpm = table.loc[table.run.str.endswith("DDPM 1000"), "s_per_note"].item()
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "notes_eval.csv", index=False)
    keep = ["run", "n", "consistency_f1", "consistency_f1_single", "consistency_f1_pairs", "laterality",
            "normal_agreement", "bleu1", "bleu4", "meteor", "rougeL", "cider", "distinct_2", "self_bleu",
            "exact_copy", "longest_shared_ngram", "perplexity_ar", "s_per_note"]
    md = _markdown(table[[c for c in keep if c in table]])
    speed = f"DDIM 50 vs DDPM 1000 on the same {args.n_ddpm} diagnoses: {ddpm / ddim:.1f}x faster per note"
    single = []
    for k in range(5):  # one note alone (the CLI / app case), DDIM 50 with CFG: 100 denoiser calls
        t0 = time.perf_counter()
        diff.generate(["Cardiomegaly/mild; Pleural Effusion/right"], seed=k, guidance=args.guidance)
        single.append(time.perf_counter() - t0)
    speed += f"\none note alone, DDIM 50, CFG {args.guidance:g}: median {sorted(single)[2]:.2f} s (target <= 1 s)"
    (args.out / "notes_eval.md").write_text(md + "\n\n" + speed + "\n", encoding="utf-8")
    lines = ["# Example notes (synthetic, for research only)\n"]
    for name, items in examples.items():
        lines.append(f"## {name}\n")
        lines += [f"- **{d}**: {t}" for d, t in items] + [""]
    (args.out / "examples.md").write_text("\n".join(lines), encoding="utf-8")
    print(md)
    print(speed)


if __name__ == "__main__":
    main()
