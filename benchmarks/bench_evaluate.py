"""Benchmark: ``synthex evaluate`` on 1,000 real vs 1,000 synthetic 256x256 images (issue 7).

Renders two sets of phantoms once into ``runs/bench-evaluate/`` (different seeds, same finding
mix, ``metadata.csv`` with the finding text), then runs the full evaluation (all five metrics,
default settings) twice in fresh processes: cold (feature caches deleted) and warm (features
cached). Prints wall time and peak RSS of each and whether they meet <= 10 min and <= 4 GiB.

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py [--n 1000] [--size 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def render_sets(base: Path, n: int, size: int) -> tuple[Path, Path]:
    from tests.evaluate_fixtures import make_folder

    out = []
    for name, seed in (("real", 101), ("synthetic", 202)):
        folder = base / f"{name}-{n}-{size}"
        if not (folder / "metadata.csv").is_file():
            t = time.perf_counter()
            make_folder(folder, n, seed, size)
            print(f"rendered {n} {name} phantoms at {size}px in {time.perf_counter() - t:.1f} s")
        out.append(folder)
    return out[0], out[1]


def child(real: str, synth: str, out: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from synthex.evaluate import EvaluationOptions, evaluate

    t = time.perf_counter()
    result = evaluate(EvaluationOptions(real=Path(real), synthetic=Path(synth), out=Path(out), overwrite=True,
                                        progress=False))
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"wall_s": wall, "peak_rss_mib": rss, "timings": result.timings,
                      "fid": result.results["fidelity"]["fid"]}))


def run(real: Path, synth: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(real), str(synth), str(out), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return
    base = ROOT / "runs" / "bench-evaluate"
    real, synth = render_sets(base, args.n, args.size)
    for folder in (real, synth):
        shutil.rmtree(folder / ".synthex", ignore_errors=True)
    cold = run(real, synth, base / "report", args.threads)
    warm = run(real, synth, base / "report", args.threads)
    print(f"\n{args.n} vs {args.n} images at {args.size}px, {args.threads} thread(s), all five metrics")
    print(f"{'':22}{'cold':>10}{'warm':>10}")
    for key in ("read", "features", "fidelity", "diversity", "alignment", "privacy", "utility"):
        print(f"{key + ' (s)':22}{cold['timings'].get(key, 0):10.1f}{warm['timings'].get(key, 0):10.1f}")
    print(f"{'wall (s)':22}{cold['wall_s']:10.1f}{warm['wall_s']:10.1f}")
    print(f"{'peak RSS (MiB)':22}{cold['peak_rss_mib']:10.0f}{warm['peak_rss_mib']:10.0f}")
    worst_t, worst_m = max(cold["wall_s"], warm["wall_s"]), max(cold["peak_rss_mib"], warm["peak_rss_mib"])
    print(f"target <= 600 s: {'met' if worst_t <= 600 else 'MISSED'} ({600 / worst_t:.1f}x headroom); "
          f"target <= 4096 MiB: {'met' if worst_m <= 4096 else 'MISSED'} ({4096 / worst_m:.1f}x headroom)")


if __name__ == "__main__":
    main()
