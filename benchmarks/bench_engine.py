"""Engine overhead vs calling the diffusers pipeline directly, one-image time and peak memory.

    python benchmarks/bench_engine.py [--steps 20] [--rounds 5] [--model FOLDER]

Model: the shipped embedded model when ``EMBEDDED_DIR/model_index.json`` exists; otherwise the
embedded ARCHITECTURE with random weights (same compute per step as the trained model), built
with ``synthex.models.embedded``; otherwise the tiny test model. The script says which.

1. Overhead: the same pipeline object, prompt, negative prompt, sampler (DPM++ 2M Karras), steps,
   guidance, size and seed, run through ``Engine.generate`` and through ``pipe(...)`` directly,
   interleaved (ABBA) for ``--rounds`` rounds; medians and their ratio, and whether the two
   images are pixel-identical.
2. One image in a fresh process (``--single``): model load, one image at native size, and peak
   resident memory (``resource.getrusage``), i.e. what ``synthex generate`` costs.
Timings on shared machines vary; the load average is printed so noisy runs can be spotted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Chest x-ray. Normal. (The lungs are clear:1.5) bilaterally. No pleural effusion."
PLAIN_PROMPT = "Chest x-ray. Normal. The lungs are clear bilaterally. No pleural effusion."
NEGATIVE = "lateral view, text"
CAPTIONS = [
    "Chest x-ray. Normal. The lungs are clear bilaterally. No pleural effusion or pneumothorax.",
    "Chest x-ray. Cardiomegaly. The heart is enlarged. Lung opacity at the right base.",
    "Chest x-ray. Lung opacity. Patchy airspace disease in the left lower lobe, small effusion.",
] * 4


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def pick_model(requested: str | None, workdir: Path) -> tuple[str, str]:
    """(model folder, description)."""
    if requested:
        return requested, f"given folder {requested}"
    from synthex.models.registry import embedded_dir

    if (embedded_dir() / "model_index.json").is_file():
        return str(embedded_dir()), f"embedded model (trained, {embedded_dir()})"
    try:
        from synthex.models import embedded as emb

        tokenizer = emb.train_tokenizer(CAPTIONS, vocab_size=600, min_frequency=1)
        components = emb.build_components(emb.embedded_configs(128), tokenizer)
        emb.build_pipeline(components).save_pretrained(workdir / "embedded-arch")
        return str(workdir / "embedded-arch"), ("embedded ARCHITECTURE with random weights, 128 px "
                                                "(the trained model is not shipped yet)")
    except (ImportError, AttributeError, TypeError) as exc:
        sys.path.insert(0, str(ROOT))
        from tests.helpers_tiny import save

        save("sd-l", workdir / "tiny")
        return str(workdir / "tiny"), f"tiny test model, 64 px (embedded builder unavailable: {exc})"


def overhead(model: str, steps: int, rounds: int) -> dict[str, object]:
    import numpy as np
    import torch

    from synthex.generate.engine import Engine, GenerationRequest
    from synthex.generate.samplers import DEFAULT_SAMPLER, make_scheduler

    engine = Engine()
    loaded = engine.load(model)
    pipe, (width, height) = loaded.pipe, loaded.native_size

    def direct(seed: int):
        pipe.scheduler = make_scheduler(DEFAULT_SAMPLER, loaded.base_scheduler)
        return pipe(PLAIN_PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                    guidance_scale=7.0, width=width, height=height,
                    generator=torch.Generator().manual_seed(seed)).images[0]

    def through_engine(seed: int, prompt: str = PLAIN_PROMPT):
        request = GenerationRequest(prompt, NEGATIVE, steps=steps, guidance=7.0, seed=seed, model=model)
        return engine.generate(request).images[0]

    def timed(fn, *args):
        start = time.perf_counter()
        image = fn(*args)
        return time.perf_counter() - start, image

    same = np.array_equal(np.asarray(direct(0)), np.asarray(through_engine(0)))  # also warm-up
    times: dict[str, list[float]] = {"direct": [], "engine": [], "engine_weighted": []}
    for r in range(rounds):
        order = [("direct", direct), ("engine", through_engine)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(fn, r)[0])
        times["engine_weighted"].append(timed(through_engine, r, PROMPT)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [e / d for e, d in zip(times["engine"], times["direct"])]
    return {"size": f"{width}x{height}", "identical_output": same, "median_s": med,
            "overhead_median": med["engine"] / med["direct"] - 1,
            "overhead_paired_median": statistics.median(ratios) - 1, "times": times}


def single(model: str, steps: int) -> None:
    """Fresh-process measurement (printed as JSON for the parent)."""
    import torch

    from synthex.generate.engine import Engine, GenerationRequest

    start = time.perf_counter()
    engine = Engine()
    engine.load(model)
    load_s = time.perf_counter() - start
    tick = time.perf_counter()
    result = engine.generate(GenerationRequest(PROMPT, NEGATIVE, steps=steps, seed=1, model=model))
    print(json.dumps({"load_s": load_s, "image_s": time.perf_counter() - tick,
                      "timings": result.timings, "size": list(result.images[0].size),
                      "mode": result.images[0].mode, "threads": torch.get_num_threads(),
                      "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", help="A diffusers folder (default: see the module docstring).")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice).")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.single:
        single(args.model, args.steps)
        return
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        model, what = pick_model(args.model, Path(tmp))
        print(f"model: {what}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        extra = ["--threads", str(args.threads)] if args.threads else []
        child = subprocess.run([sys.executable, __file__, "--single", "--model", model, "--steps",
                                str(args.steps), *extra], capture_output=True, text=True, check=True)
        one = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"one image, fresh process: imports + model load {one['load_s']:.2f} s, generate "
              f"{one['image_s']:.2f} s ({args.steps} steps, {one['size'][0]}x{one['size'][1]} "
              f"{one['mode']}), peak RSS {one['peak_rss_mib']:.0f} MiB")
        result = overhead(model, args.steps, args.rounds)
    med = result["median_s"]
    print(f"overhead ({args.rounds} interleaved rounds, {result['size']}, {args.steps} steps):")
    print(f"  direct pipe(...)       median {med['direct']:.3f} s")
    print(f"  Engine.generate        median {med['engine']:.3f} s  -> overhead "
          f"{100 * result['overhead_median']:+.1f}% (paired median {100 * result['overhead_paired_median']:+.1f}%)"
          f"  [target <= +5%]")
    print(f"  Engine, weighted prompt median {med['engine_weighted']:.3f} s")
    print(f"  engine and direct images pixel-identical: {result['identical_output']}")
    print(f"peak RSS of this process (both paths, model built here): {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
