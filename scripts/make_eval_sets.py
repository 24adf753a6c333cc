"""Build the held-out evaluation inputs of the embedded model from a prepared phantom dataset.

    python scripts/make_eval_sets.py --data runs/phantom-ds-128 --out runs [--n-prompts 100]

writes ``runs/eval-test`` (the test split as an imagefolder: the real reference), ``runs/eval-train``
(the train split: the privacy audit's training set) and ``runs/eval-prompts.csv`` (``--n-prompts``
test-split captions drawn at seed 0, with their ``mesh`` column so that prompted findings are the
ones the phantom was drawn with). Existing outputs are refused, never overwritten.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd


def subset(data: Path, out: Path, split: str) -> int:
    table = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    rows = table[table["split"] == split]
    (out / "images").mkdir(parents=True)
    for name in rows["file_name"]:
        shutil.copy2(data / name, out / name)
    rows.to_csv(out / "metadata.csv", index=False)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--n-prompts", type=int, default=100)
    args = parser.parse_args()
    targets = [args.out / "eval-test", args.out / "eval-train", args.out / "eval-prompts.csv"]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise SystemExit(f"refusing to overwrite {', '.join(existing)}; remove them or choose another --out")
    print("test:", subset(args.data, targets[0], "test"), "train:", subset(args.data, targets[1], "train"))
    test = pd.read_csv(targets[0] / "metadata.csv", dtype=str, keep_default_na=False)
    prompts = test.sample(n=min(args.n_prompts, len(test)), random_state=0)
    prompts[["text", "mesh", "uid"]].rename(columns={"text": "prompt"}).to_csv(targets[2], index=False)
    print(f"prompts: {len(prompts)} -> {targets[2]}")


if __name__ == "__main__":
    main()
