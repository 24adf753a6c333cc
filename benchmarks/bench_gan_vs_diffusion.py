"""Time per image: the finding-conditional GAN vs the embedded diffusion model, side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_gan_vs_diffusion.py                 # ~1 min on 1 core
    OMP_NUM_THREADS=1 python benchmarks/bench_gan_vs_diffusion.py --figure docs/img/gan_vs_diffusion.png

Both models run in this one process on the same prompts (the first rows of ``--prompts``,
``runs/eval-prompts.csv`` by default), on the CPU, with ``--threads`` torch threads (default 1):

- GAN (``--gan-model``, the folder ``synthex gan sample --model`` takes): labels parsed from each
  prompt exactly as ``synthex gan sample --prompts`` parses them, ``z`` from the image's seed, the
  same ``synthex.generate.gan.generate_images`` call; timed one image per forward pass (latency) and
  all ``--n-gan`` images in one pass (``gan sample`` batches 64 at a time);
- diffusion: ``Engine.generate`` at the ``synthex generate`` defaults (model ``embedded``, 20 steps
  DPM++ 2M Karras, CFG 7, native 128 px, batch 1), one request per image.

Model time only: loading is timed separately, and PNG writing (the same for both) is left out.
Each side gets ``--warmup`` untimed images first; the per-image figure is the median (the minimum
is printed too: on a shared machine it is the least disturbed). ``--figure PATH`` also writes a
labelled grid: one row per prompt of ``--figure-rows``, GAN seeds 0..k-1 on the left, diffusion
seeds 0..k-1 on the right (the GAN's 64 px upscaled to 128 px, nearest neighbour).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# eval-prompts.csv rows: "Normal.", severe cardiomegaly, left effusion (+ left airspace disease),
# right middle-lobe opacity, left upper-lobe opacity (the file has no right-effusion prompt)
FIGURE_ROWS = (70, 47, 60, 22, 57)
ROW_NAMES = {70: "normal", 47: "cardiomegaly", 60: "left effusion", 22: "right opacity", 57: "left opacity"}


def median_min(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def read_prompts(path: Path) -> list[str]:
    from synthex.generate.batch import read_prompts as read

    frame = read(path)
    column = "prompt" if "prompt" in frame.columns else "text"
    return [str(p).strip() for p in frame[column]]


# --------------------------------------------------------------------------------------------
# GAN
# --------------------------------------------------------------------------------------------
def gan_jobs(generator, prompts: list[str], seeds: list[int]):
    """``GanJob`` s as ``synthex gan sample --prompts`` builds them (labels parsed from the text)."""
    import numpy as np

    from synthex.generate.gan import GanJob
    from synthex.phantom.labels import text_labels

    names = list(generator.arch.labels)
    jobs = []
    for j, (prompt, seed) in enumerate(zip(prompts, seeds)):
        vec = text_labels(prompt, names)[0] if generator.arch.conditional else np.zeros(len(names), np.float32)
        jobs.append(GanJob(j, f"{j:06d}.png", seed, prompt, vec))
    return jobs


def bench_gan(model: Path, prompts: list[str], n: int, warmup: int) -> dict:
    from synthex.generate.gan import generate_images
    from synthex.models.gan import count_parameters, load_gan

    t0 = time.perf_counter()
    generator, disc, _ = load_gan(model, discriminator=True)
    load = time.perf_counter() - t0
    jobs = gan_jobs(generator, [prompts[j % len(prompts)] for j in range(n)], list(range(n)))
    cond = generator.arch.conditional
    for job in jobs[:warmup]:
        generate_images(generator, [job], cond)
    single = []
    for job in jobs:
        t0 = time.perf_counter()
        generate_images(generator, [job], cond)
        single.append(time.perf_counter() - t0)
    batched = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate_images(generator, jobs, cond)
        batched.append((time.perf_counter() - t0) / n)
    return {"load": load, "single": median_min(single), "batched": median_min(batched),
            "resolution": generator.arch.resolution, "params_g": count_parameters(generator),
            "params_d": count_parameters(disc), "generator": generator}


# --------------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------------
def make_engine():
    from synthex.cli.generate import _quiet_libraries
    from synthex.generate.engine import Engine

    _quiet_libraries()
    return Engine()


def bench_diffusion(engine, prompts: list[str], n: int, warmup: int) -> dict:
    from synthex.generate.engine import GenerationRequest

    t0 = time.perf_counter()
    loaded = engine.load_for(GenerationRequest(prompt=prompts[0], device="cpu"))
    load = time.perf_counter() - t0
    for j in range(warmup):
        engine.generate(GenerationRequest(prompt=prompts[j % len(prompts)], seed=j, device="cpu"))
    times, request = [], None
    for j in range(n):
        request = GenerationRequest(prompt=prompts[j % len(prompts)], seed=j, device="cpu")
        t0 = time.perf_counter()
        engine.generate(request)
        times.append(time.perf_counter() - t0)
    pipe = loaded.pipe
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    return {"load": load, "single": median_min(times), "params": params, "model": loaded.spec.name,
            "steps": request.steps, "sampler": request.sampler, "guidance": request.guidance,
            "size": loaded.native_size}


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------
def make_figure(path: Path, generator, engine, prompts: list[str], rows: list[int], k: int) -> None:
    from PIL import Image, ImageDraw, ImageFont

    from synthex.generate.engine import GenerationRequest
    from synthex.generate.gan import generate_images

    cell, pad, left, top, gap = 128, 4, 118, 40, 16
    width = left + 2 * k * (cell + pad) + gap
    height = top + len(rows) * (cell + pad)
    sheet = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    x_diff = left + k * (cell + pad) + gap
    draw.text((left, 4), f"conditional GAN ({generator.arch.resolution} px, upscaled)", fill=0, font=font)
    draw.text((x_diff, 4), "embedded diffusion v2 (128 px)", fill=0, font=font)
    for c in range(k):
        draw.text((left + c * (cell + pad) + 2, 22), f"seed {c}", fill=90, font=font)
        draw.text((x_diff + c * (cell + pad) + 2, 22), f"seed {c}", fill=90, font=font)
    for r, row in enumerate(rows):
        prompt = prompts[row]
        y = top + r * (cell + pad)
        draw.text((4, y + cell // 2 - 16), ROW_NAMES.get(row, f"prompt {row}"), fill=0, font=font)
        draw.text((4, y + cell // 2 + 2), f"(row {row})", fill=90, font=font)
        pixels = generate_images(generator, gan_jobs(generator, [prompt] * k, list(range(k))),
                                 generator.arch.conditional)
        for c, p in enumerate(pixels):
            tile = Image.fromarray(p, mode="L").resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (left + c * (cell + pad), y))
        result = engine.generate(GenerationRequest(prompt=prompt, seed=0, n=k, device="cpu"))
        for c, image in enumerate(result.images):
            sheet.paste(image.convert("L").resize((cell, cell)), (x_diff + c * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    print(f"figure: {path} ({path.stat().st_size / 1024:.0f} KB, {len(rows)} prompts x {k} seeds per model)")
    for row in rows:
        print(f"  row {row}: {prompts[row][:100]}{'...' if len(prompts[row]) > 100 else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan-model", type=Path, default=ROOT / "runs/gan/model")
    parser.add_argument("--prompts", type=Path, default=ROOT / "runs/eval-prompts.csv")
    parser.add_argument("--n-gan", type=int, default=16, help="GAN images timed")
    parser.add_argument("--n-diffusion", type=int, default=4, help="diffusion images timed")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    parser.add_argument("--figure", type=Path, default=None, help="also write the side-by-side figure here")
    parser.add_argument("--figure-rows", type=int, nargs="+", default=list(FIGURE_ROWS),
                        help="rows of --prompts in the figure")
    parser.add_argument("--figure-seeds", type=int, default=2, help="images per prompt and model in the figure")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s); "
          f"load average {os.getloadavg()[0]:.2f}; prompts: {args.prompts} ({len(prompts)} rows)")

    gan = bench_gan(args.gan_model, prompts, args.n_gan, args.warmup)
    engine = make_engine()
    diff = bench_diffusion(engine, prompts, args.n_diffusion, args.warmup)

    g1, g1min = gan["single"]
    gb, gbmin = gan["batched"]
    d1, d1min = diff["single"]
    w, h = diff["size"]
    print()
    print("| model | images timed | s / image, median (min) | load s | parameters |")
    print("|---|---:|---:|---:|---:|")
    print(f"| conditional GAN, {gan['resolution']} px, batch 1 | {args.n_gan} | {g1:.4f} ({g1min:.4f}) | "
          f"{gan['load']:.2f} | G {gan['params_g'] / 1e6:.2f}M (D {gan['params_d'] / 1e6:.2f}M, training only) |")
    print(f"| conditional GAN, {gan['resolution']} px, batch {args.n_gan} | {args.n_gan} x 3 | "
          f"{gb:.4f} ({gbmin:.4f}) | - | - |")
    p = diff["params"]
    print(f"| diffusion '{diff['model']}', {w}x{h} px, {diff['steps']} steps {diff['sampler']}, "
          f"CFG {diff['guidance']:g}, batch 1 | {args.n_diffusion} | {d1:.3f} ({d1min:.3f}) | {diff['load']:.2f} | "
          f"{sum(p.values()) / 1e6:.2f}M (UNet {p['unet'] / 1e6:.2f}M, VAE {p['vae'] / 1e6:.2f}M, "
          f"text {p['text_encoder'] / 1e6:.2f}M) |")
    print()
    print(f"diffusion / GAN time per image: {d1 / g1:.0f}x at batch 1, {d1 / gb:.0f}x against the batched GAN "
          f"(GAN output has {(gan['resolution'] / w) ** 2:.2f}x the diffusion model's pixels)")

    if args.figure is not None:
        print()
        make_figure(args.figure, gan["generator"], engine, prompts, args.figure_rows, args.figure_seeds)


if __name__ == "__main__":
    sys.exit(main())
