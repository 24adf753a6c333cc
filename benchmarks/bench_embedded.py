"""Benchmark the embedded model on this machine's CPU; every ratio is measured in one run.

1. UNet-stage training step (UNet + text encoder, AdamW) with cached latents vs. encoding the
   batch with the VAE at every step (no latent cache), side by side, and their ratio;
2. VAE training step and UNet step at 128 px vs 256 px (why 128 px is the default);
3. inference: 20 DPM++ 2M steps at 128 px with classifier-free guidance (batch 2 per step);
4. parameter counts, float32 size, and peak RSS.

    python benchmarks/bench_embedded.py                # default architecture (a few minutes)
    python benchmarks/bench_embedded.py --tiny --steps 2 --no-resolution   # smoke test

Times are the best (and median) of ``--steps`` timed steps after ``--warmup`` untimed ones;
the best time is the least disturbed by other jobs on a shared machine; read the ratios first.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from synthex.models.embedded import (
    EmbeddedArch,
    build_components,
    build_pipeline,
    count_parameters,
    embedded_configs,
    tokenize,
    train_tokenizer,
)

CAPTIONS = ["No acute cardiopulmonary abnormality. The lungs are clear.", "Cardiomegaly.",
            "Right lower lobe opacity.", "Large left pleural effusion.", "Mild pulmonary edema."] * 40


def timed(fn, steps: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def make_components(resolution: int, arch: EmbeddedArch):
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=3000)
    return build_components(embedded_configs(resolution, arch), tokenizer, torch.Generator().manual_seed(0))


def unet_step_fn(c, batch: int, resolution: int, cached: bool):
    """One UNet-stage training step; without the cache, the batch is VAE-encoded first."""
    unet, te, vae, sched = c["unet"], c["text_encoder"], c["vae"], c["scheduler"]
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = tokenize(c["tokenizer"], CAPTIONS[:batch] * (batch // len(CAPTIONS[:batch]) + 1))[:batch]
    side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    mean = torch.randn(batch, vae.config.latent_channels, side, side, generator=gen)
    pixels = torch.rand(batch, 1, resolution, resolution, generator=gen) * 2 - 1

    def step():
        if cached:
            latents = mean + 0.01 * torch.randn(mean.shape, generator=gen)
        else:
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample(generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        pred = unet(sched.add_noise(latents, noise, t), t, te(ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def vae_step_fn(vae, batch: int, resolution: int):
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, resolution, resolution, generator=gen) * 2 - 1

    def step():
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = (rec - x).abs().mean() + 1e-5 * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_caching(c, args) -> None:
    res = args.resolution
    print(f"\n## UNet-stage training step, batch {args.batch_size}, {res} px (s/step, median | best)")
    cached = timed(unet_step_fn(c, args.batch_size, res, cached=True), args.steps, args.warmup)
    uncached = timed(unet_step_fn(c, args.batch_size, res, cached=False), args.steps, args.warmup)
    print(f"{'cached latents':<22}{'VAE encode each step':<24}{'speed-up (best | median)':<20}")
    print(f"{cached[0]:6.3f} | {cached[1]:6.3f}     {uncached[0]:6.3f} | {uncached[1]:6.3f}       "
          f"{uncached[1] / cached[1]:5.2f}x | {uncached[0] / cached[0]:5.2f}x")
    print(f"images/s (best): {args.batch_size / cached[1]:.1f} cached vs {args.batch_size / uncached[1]:.1f} uncached")


def bench_resolutions(arch, args) -> None:
    print(f"\n## Resolution cost (s/step, best): VAE batch {args.vae_batch_size}, UNet batch {args.batch_size}")
    rows = {}
    for res in (128, 256):
        comp = make_components(res, arch)
        vae_t = timed(vae_step_fn(comp["vae"], args.vae_batch_size, res), args.steps, args.warmup)[1]
        unet_t = timed(unet_step_fn(comp, args.batch_size, res, cached=True), args.steps, args.warmup)[1]
        rows[res] = (vae_t, unet_t)
        print(f"{res:4d} px: VAE {vae_t:6.3f}   UNet (cached) {unet_t:6.3f}")
    print(f"256/128 ratio: VAE {rows[256][0] / rows[128][0]:.2f}x, UNet {rows[256][1] / rows[128][1]:.2f}x")


def bench_inference(c, args) -> None:
    from diffusers import DPMSolverMultistepScheduler

    pipe = build_pipeline(c)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval()

    def generate():
        pipe("Right lower lobe opacity.", num_inference_steps=20, guidance_scale=4.0,
             generator=torch.Generator().manual_seed(0), height=args.resolution, width=args.resolution)
    med, best = timed(generate, args.steps, 1)
    print(f"\n## Inference: 20 DPM++ 2M steps, CFG 4.0, {args.resolution} px, 1 image")
    print(f"{best:.2f} s per image (median {med:.2f} s), {1000 * best / 20:.0f} ms per step (UNet batch 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vae-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny architecture (smoke test)")
    parser.add_argument("--no-resolution", action="store_true", help="skip the 128 vs 256 px section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = EmbeddedArch.tiny() if args.tiny else EmbeddedArch()
    c = make_components(args.resolution, arch)
    params = count_parameters(c)
    print(f"# Embedded model on CPU ({torch.get_num_threads()} threads, torch {torch.__version__})")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items())
          + f"; float32 weights {sum(params.values()) * 4 / 2**20:.1f} MiB")
    bench_caching(c, args)
    bench_inference(c, args)
    print(f"\npeak RSS so far ({args.resolution} px): {peak_rss_mib():.0f} MiB")
    if not args.no_resolution:
        bench_resolutions(arch, args)
        print(f"\npeak RSS with the 256 px steps: {peak_rss_mib():.0f} MiB")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
