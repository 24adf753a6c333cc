"""LoRA training speed and memory: latent + text-embedding caching vs the uncached path.

Both paths train the same LoRA on the same data with the same settings; the uncached path is
what diffusers' example scripts (the thesis' trainer) do at every step: read and decode the
images, resize/crop, VAE-encode them and run the text encoder. Each path runs in its own
subprocess (so each peak RSS is its own), one thread each, the two interleaved ``--repeats``
times; the table shows the median seconds per optimizer step over the timed steps (the first
``--warmup`` steps are not timed), steps/s, the ratio cached/uncached, and peak memory
(resident set on CPU, allocated memory on CUDA). Cache building time is reported apart: it is
paid once per run.

    python benchmarks/bench_lora.py                       # embedded model, 128 px, batch 8
    python benchmarks/bench_lora.py --batch 1 --accum 4   # the thesis' batch shape
    python benchmarks/bench_lora.py --source-size 1024    # images stored larger than trained on
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r'''
import json, sys, time, torch
torch.set_num_threads(1)
from synthex.train.lora import LoraTrainConfig, train_lora
args = json.loads(sys.argv[1])
cfg = LoraTrainConfig(model=args["model"], max_steps=args["steps"], batch_size=args["batch"],
                      gradient_accumulation=args["accum"], rank=8, checkpoint_every=10**6,
                      cache_latents=args["cache"], cache_text=args["cache"], validation_prompts=["x"],
                      validation_seeds=[0], validation_steps=1, data_workers=1, resolution=args["resolution"])
t0 = time.perf_counter()
train_lora(args["data"], args["out"], cfg, progress=False)
print("TOTAL", time.perf_counter() - t0)
'''


def make_data(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    from synthex.phantom.render import render_phantom

    (root / "images").mkdir(parents=True)
    findings = ["normal", "opacity right lower", "cardiomegaly", "left pleural effusion"]
    rows = ["file_name,text"]
    for i in range(n):
        f = findings[i % len(findings)]
        Image.fromarray(render_phantom(f, i, size).image).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,Chest x-ray. {f.capitalize()}. Phantom number {i}.")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def run(args, data: Path, out: Path, cache: bool) -> dict:
    spec = {"model": args.model, "steps": args.warmup + args.steps, "batch": args.batch, "accum": args.accum,
            "cache": cache, "data": str(data), "out": str(out), "resolution": args.resolution}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    with (out / "training_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    timed = [float(r["seconds"]) for r in rows[args.warmup:]]
    return {"s_per_step": statistics.median(timed), "peak_mb": float(rows[-1]["peak_memory_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="preset or diffusers folder (default embedded)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=None,
                        help="side of the stored images (default: the training resolution, as after data prepare)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.images, args.source_size or args.resolution)
        results: dict[bool, list[dict]] = {True: [], False: []}
        t0 = time.perf_counter()
        for rep in range(args.repeats):
            for cache in (False, True):
                results[cache].append(run(args, data, Path(tmp) / f"run-{cache}-{rep}", cache))
        wall = time.perf_counter() - t0
    print(f"LoRA training, model {args.model} at {args.resolution} px from {args.source_size or args.resolution} px "
          f"PNGs, batch {args.batch} x accumulation "
          f"{args.accum}, rank 8, 1 thread, median of {args.steps} timed steps, {args.repeats} interleaved runs "
          f"per path ({wall:.0f} s in all)")
    print(f"{'path':10s} {'s/step':>8s} {'steps/s':>8s} {'peak memory MB':>15s}")
    summary = {}
    for cache in (False, True):
        s = statistics.median(r["s_per_step"] for r in results[cache])
        peak = max(r["peak_mb"] for r in results[cache])
        summary[cache] = s
        print(f"{'cached' if cache else 'uncached':10s} {s:8.3f} {1 / s:8.2f} {peak:15.0f}")
    ratio = summary[False] / summary[True]
    print(f"speed-up from caching: {ratio:.2f}x steps/s (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
