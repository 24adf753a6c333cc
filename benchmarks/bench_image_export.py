"""Benchmark: image export throughput, one worker vs several, measured side by side in one run.

Makes N synthetic 16-bit portrait PNGs about the size of the IU X-ray originals (~2048x2500,
12-bit values, smooth anatomy-like structure plus noise) in a temp folder, exports them with
:func:`synthex.data.images.export_images` to each target size with each worker count, and
prints images/s, images/s per worker, the speed-up over one worker and the CPU seconds per
image (this process plus its workers). Wall-clock scaling needs idle cores: when other programs
share the machine, a poor speed-up with flat CPU s/img means contention, not overhead.

    python benchmarks/bench_image_export.py --n 16 --sizes 1024 256 --workers 1 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from synthex.data.images import ExportTask, export_images


def _phantom(width: int, height: int) -> np.ndarray:
    """A smooth chest-like 12-bit pattern (body, two lungs, rib stripes) as float32."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    w, h = float(width), float(height)
    body = np.exp(-(((x - w / 2) / (0.42 * w)) ** 4 + ((y - h / 2) / (0.48 * h)) ** 4))
    lungs = sum(np.exp(-(((x - cx * w) / (0.15 * w)) ** 2 + ((y - 0.45 * h) / (0.25 * h)) ** 2))
                for cx in (0.32, 0.68))
    ribs = 0.08 * np.sin(y / (h / 40) + 0.3 * np.sin(x / (w / 6)))
    return 3000 * body * (1 - 0.6 * lungs + ribs)


def make_sources(folder: Path, count: int, width: int, height: int, seed: int) -> list[ExportTask]:
    """Write ``count`` 16-bit PNGs of slightly varying sizes (crops of one pattern plus fresh
    noise each); return their export tasks."""
    rng = np.random.default_rng(seed)
    pattern = _phantom(width + 32, height + 96)
    tasks = []
    for k in range(count):
        w, h = width + 8 * (k % 5), height + 16 * (k % 7)
        noise = rng.normal(0, 20, (h, w)).astype(np.float32)
        pixels = np.clip(pattern[:h, :w] + noise, 0, 4095).astype(np.uint16)
        path = folder / f"{k:04d}.png"
        Image.fromarray(pixels).save(path, compress_level=1)  # fast to make; decodes alike
        tasks.append(ExportTask(path, f"images/{k}_IM-{k:04d}-0001.png"))
    return tasks


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_export(tasks: list[ExportTask], out: Path, size: int, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh export (the output folder is removed first)."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, start = _cpu_seconds(), time.perf_counter()
    report = export_images(tasks, out, size=size, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    assert report.written == len(tasks) and not report.rejected, report
    return seconds, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of source images")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_image_export_") as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        start = time.perf_counter()
        tasks = make_sources(root / "src", args.n, args.width, args.height, args.seed)
        megabytes = sum(t.source.stat().st_size for t in tasks) / 1e6
        print(f"{args.n} sources ~{args.width}x{args.height} 16-bit PNG ({megabytes:.0f} MB) "
              f"made in {time.perf_counter() - start:.1f} s; os.cpu_count()={os.cpu_count()}")
        print(f"{'size':>5} {'workers':>7} {'seconds':>8} {'img/s':>7} {'img/s/worker':>13} "
              f"{'speed-up':>9} {'cpu s/img':>10}")
        for size in args.sizes:
            base = None
            for workers in args.workers:
                seconds, cpu = time_export(tasks, root / f"out{size}_{workers}", size, workers)
                rate = args.n / seconds
                base = base or rate
                print(f"{size:>5} {workers:>7} {seconds:>8.2f} {rate:>7.2f} "
                      f"{rate / workers:>13.2f} {rate / base:>8.2f}x {cpu / args.n:>10.3f}")
        resume = time.perf_counter()
        export_images(tasks, root / f"out{args.sizes[0]}_{args.workers[0]}",
                      size=args.sizes[0], workers=args.workers[0], progress=False)
        print(f"resume pass (all {args.n} outputs exist): {time.perf_counter() - resume:.3f} s")


if __name__ == "__main__":
    main()
