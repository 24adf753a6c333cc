"""Benchmark: search index build time, memory and query latency at 1k, 10k and 100k images (issue 15).

Renders one phantom caption set of the largest size once (``synthex phantom caption-set``
images with captions, ``runs/bench-search/set-N``), and for each size an imagefolder listing its
first N rows (the images folder is a symlink, nothing is copied). Then, side by side in this run:

- full build (embed every image and report with the shipped dual encoder) vs an incremental
  re-run with nothing changed (stat + reuse): seconds and the ratio;
- index size on disk and in memory (the vectors), peak RSS of this process;
- latency of one text query: the text tower alone, exact search (numpy matrix product + top-k
  over all N) and faiss ``IndexFlatIP`` (exact too, when faiss is installed), median of
  ``--queries`` queries; the target is <= 50 ms per text query at 100k with exact search.

    python benchmarks/bench_search.py [--sizes 1000,10000,100000] [--render-size 64] [--threads 2]

``--render-size 64`` renders small phantoms to save time; the model resizes every image to its
128 px input, so build and query costs are those of real 128 px indexing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

QUERIES = ["left pleural effusion", "cardiomegaly", "right upper lobe nodule", "normal chest x-ray",
           "pacemaker", "blunting of the right costophrenic angle", "emphysema", "left pneumothorax"]


def render(base: Path, n: int, size: int) -> Path:
    from synthex.phantom.caption_set import CaptionSetOptions, build_caption_set

    folder = base / f"set-{n}"
    if not (folder / "metadata.csv").is_file() or not json.loads((folder / "caption_set.json").read_text()).get("complete"):
        t = time.perf_counter()
        build_caption_set(CaptionSetOptions(out=folder, n_random=n, size=size, seed=4242, p_normal=0.12, workers=2))
        print(f"rendered {n} phantoms at {size}px in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def subset(base: Path, full: Path, n: int) -> Path:
    import pandas as pd

    folder = base / f"sub-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        os.symlink((full / "images").resolve(), folder / "images")
    pd.read_csv(full / "metadata.csv").head(n).to_csv(folder / "metadata.csv", index=False)
    return folder


def median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(folder: Path, out: Path, model, repeats: int) -> dict:
    from synthex.search.index import SearchIndex, build_index

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    first = build_index(folder, out, model, progress=False)
    full = time.perf_counter() - t
    t = time.perf_counter()
    build_index(folder, out, model, progress=False)
    incremental = time.perf_counter() - t
    index = SearchIndex(out)
    vectors = [model.embed_texts([QUERIES[i % len(QUERIES)]]) for i in range(repeats)]
    row = {"n": first.n_items, "build_s": full, "images_per_s": first.n_items / full, "rerun_s": incremental,
           "disk_mb": sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20,
           "memory_mb": (index.image.nbytes + index.text.nbytes) / 2**20,
           "encode_ms": median_ms(lambda i: model.embed_texts([QUERIES[i % len(QUERIES)]]), repeats),
           "exact_ms": median_ms(lambda i: index.top_k(vectors[i], 10), repeats)}
    try:
        import faiss  # noqa: F401

        fx = SearchIndex(out, backend="faiss")
        fx.top_k(vectors[0], 10)  # builds the faiss index once
        row["faiss_ms"] = median_ms(lambda i: fx.top_k(vectors[i], 10), repeats)
        row["same_top10"] = all((index.top_k(v, 10)[1] == fx.top_k(v, 10)[1]).all() for v in vectors[:10])
    except ImportError:
        row["faiss_ms"] = None
    row["query_ms"] = row["encode_ms"] + row["exact_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--render-size", type=int, default=64)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "bench-search")
    args = parser.parse_args()
    import torch

    from synthex.search.model import load_search_model

    torch.set_num_threads(args.threads)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    full = render(args.base, sizes[-1], args.render_size)
    model = load_search_model()
    rows = []
    for n in sizes:
        folder = full if n == sizes[-1] else subset(args.base, full, n)
        rows.append(measure(folder, args.base / f"index-{n}", model, args.queries))
        r = rows[-1]
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    print(f"\nsearch index, shipped dual encoder, {args.threads} threads, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print("| images | full build | images/s | re-run, nothing changed | full / re-run | disk | vectors in RAM "
          "| text tower | exact top-10 | faiss top-10 | text query total |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        faiss = f"{r['faiss_ms']:.2f} ms" if r.get("faiss_ms") is not None else "n/a"
        print(f"| {r['n']:,} | {r['build_s']:.1f} s | {r['images_per_s']:.0f} | {r['rerun_s']:.2f} s | "
              f"{r['build_s'] / r['rerun_s']:.0f}x | {r['disk_mb']:.1f} MB | {r['memory_mb']:.1f} MB | "
              f"{r['encode_ms']:.1f} ms | {r['exact_ms']:.2f} ms | {faiss} | {r['query_ms']:.1f} ms |")
    big = rows[-1]
    print(f"\ntarget <= 50 ms per text query at {big['n']:,} (exact): {big['query_ms']:.1f} ms -> "
          f"{'met' if big['query_ms'] <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
