"""Benchmark: phantom renderer throughput on ONE core.

Targets (issue "phantom renderer"): at least 20 images/s at 256 x 256 and 2 images/s at
1024 x 1024 on a single core. The process pins itself to one CPU and sets the BLAS/OpenMP thread
counts to 1 before numpy loads. Each image has a different seed and one finding, cycling through
every finding name (normal included), so the mix covers every drawer. The lung library is loaded
(and cached) before timing; the best of ``--repeats`` runs is reported with its ratio to target.

    python benchmarks/bench_phantom.py [--repeats 3]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import time  # noqa: E402

from synthex.phantom.anatomy import load_lung_library  # noqa: E402
from synthex.phantom.findings import FINDING_NAMES  # noqa: E402
from synthex.phantom.render import render_phantom  # noqa: E402

TARGETS = {256: (20.0, 60), 1024: (2.0, 20)}  # size -> (images/s target, images per run)


def run(size: int, count: int) -> float:
    """Images per second for ``count`` renders at ``size``."""
    start = time.perf_counter()
    for i in range(count):
        render_phantom(FINDING_NAMES[i % len(FINDING_NAMES)], 1000 + i, size)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    library = load_lung_library()
    print(f"lung library: {len(library)} shapes from {library.source} ({time.perf_counter() - t0:.2f} s)")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else "?"
    print(f"pinned to CPU(s) {sorted(cpus) if cpus != '?' else cpus}")
    for size, (target, count) in TARGETS.items():
        render_phantom("normal", 0, size)  # warm the per-size grids
        best = max(run(size, count) for _ in range(args.repeats))
        print(f"{size:5d} px: {best:7.2f} images/s (target {target:g}/s, ratio {best / target:.2f}x, "
              f"{1000 / best:.1f} ms/image)")


if __name__ == "__main__":
    main()
