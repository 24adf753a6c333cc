"""The WebUI-lab experiments, measured: steps x sampler, CFG scale, output size and prompt style.

    python benchmarks/bench_experiments.py --real runs/eval-test --prompts runs/eval-prompts.csv \
        --out runs/experiments [--n-prompts 60] [--only steps cfg size style] [--model embedded]

Every configuration makes the same ``--n-prompts`` prompts (held-out test-split captions with
their ``mesh`` labels, seed 0, one image each) with ``synthesize`` and is scored by
``synthex evaluate`` against the real test phantoms (fidelity, diversity, alignment; all on the
phantom encoder), so the figures are comparable with the README's evaluation of the embedded
model. Measured side by side in one run:

1. **steps**: 10/20/30/40/50 steps x ``--samplers`` at CFG 7.5 -> FID, KID, coverage, mean
   per-finding AUROC (prompted vs not) and seconds per image. Question answered: is DPM++ 2M
   Karras at 20 steps as good as the thesis' 35-40?
2. **cfg**: CFG 1/3/5/7.5/10/15 at 20 steps of the default sampler -> alignment vs diversity
   (MS-SSIM across prompts; lower = more varied) and coverage.
3. **size**: 64..384 px -> seconds per image (denoise + decode, model already loaded) and the
   exponent of time ~ pixels^a.
4. **style**: the same findings as real report text (the test caption), as a structured caption
   written from the labels ("Chest x-ray. Cardiomegaly. Right pleural effusion."), and the
   structured caption with A1111 weights ``(term:1.3)`` -> alignment and FID.

Each configuration's images and scores are kept under ``--out/configs/NAME``; an interrupted run
started again reuses finished configurations (and synthesize resumes half-made ones). Writes
``experiments.md``, ``experiments.json`` and ``experiments_*.png`` in ``--out``. FID on ~60
images is biased upwards (the report says so); compare configurations with each other, and
trust KID and AUROC over the FID point value. Timings on shared machines vary; the load average
is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

STEPS = (10, 20, 30, 40, 50)
SAMPLERS = ("DPM++ 2M Karras", "Euler a", "DDIM")
CFGS = (1.0, 3.0, 5.0, 7.5, 10.0, 15.0)
SIZES = (64, 128, 192, 256, 384)
STYLES = ("report", "structured", "weighted")
WEIGHT = 1.3


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def structured_caption(mesh: str, rules, rng: np.random.Generator, weight: float | None) -> str:
    """A caption written from the ``mesh`` labels; with ``weight``, each finding term weighted."""
    from synthex.phantom.captions import mesh_term
    from synthex.phantom.dataset import mesh_to_findings

    findings, _ = mesh_to_findings(mesh, rules)
    terms = [mesh_term(f, rng) for f in findings if f.name != "normal"]
    if not terms:
        return "Chest x-ray. Normal." if weight is None else f"Chest x-ray. (Normal:{weight})."
    if weight is None:
        return "Chest x-ray. " + " ".join(t + "." for t in terms)
    return "Chest x-ray. " + " ".join(f"({t}:{weight})." for t in terms)


def prompt_files(prompts: Path, n: int, out: Path) -> dict[str, Path]:
    """``n`` prompts (the first ``n`` rows) in each style; the labels (``mesh``) are unchanged."""
    from synthex.phantom.dataset import load_mesh_rules

    table = pd.read_csv(prompts, dtype=str, keep_default_na=False)
    column = "prompt" if "prompt" in table.columns else "text"
    if "mesh" not in table.columns:
        raise SystemExit(f"{prompts}: needs a 'mesh' column (labels); make it with scripts/make_eval_sets.py")
    table = table.head(n).reset_index(drop=True)
    rules = load_mesh_rules()
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for style in STYLES:
        frame = table[[column, "mesh"]].rename(columns={column: "prompt"})
        if style != "report":
            rng = np.random.default_rng(0)
            frame["prompt"] = [structured_caption(m, rules, rng, WEIGHT if style == "weighted" else None)
                               for m in frame["mesh"]]
        files[style] = out / f"prompts_{style}.csv"
        frame.to_csv(files[style], index=False)
    return files


# --------------------------------------------------------------------------------------------
# One configuration: synthesize, then evaluate
# --------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def run_config(files: dict[str, Path], style: str, args, engine, extractors, **settings) -> dict:
    """Images for one configuration and their scores (cached in ``configs/NAME/result.json``).

    NAME is a function of the prompt style and the settings, so a configuration shared by two
    experiments (20 steps of DPM++ 2M Karras at CFG 7.5 on report text) is made and scored once.
    """
    name = _slug(f"{style}-{settings['sampler']}-{settings['steps']}-cfg{settings['guidance']:g}")
    prompts = files[style]
    from synthex.evaluate.run import evaluate
    from synthex.evaluate.types import EvaluationOptions
    from synthex.generate.batch import SynthesizeOptions, synthesize

    folder = args.out / "configs" / name
    done = folder / "result.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("images") != args.n_prompts:
            raise SystemExit(f"{folder} holds {row.get('images')} images, not --n-prompts {args.n_prompts}: "
                             "use another --out (or delete that folder) to measure at a new size")
        return row
    t0 = time.perf_counter()
    result = synthesize(SynthesizeOptions(prompts_file=prompts, out=folder / "images", per_prompt=1,
                                          model=args.model, seed=0, progress=False, **settings), engine)
    seconds = time.perf_counter() - t0
    scores = evaluate(EvaluationOptions(real=args.real, out=folder / "eval", synthetic=folder / "images",
                                        metrics=("fidelity", "diversity", "alignment"), bootstrap=50,
                                        kid_subsets=50, ctr_probe_n=0, overwrite=True, progress=False),
                      extractors=extractors).results
    row = {"name": name, **{k: v for k, v in settings.items()}, "images": result.done,
           "seconds_per_image": seconds / max(1, result.generated) if result.generated == result.done else None,
           **summary(scores)}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=1))
    print(f"  {name}: " + ", ".join(f"{k} {_fmt(row[k])}" for k in ("fid", "kid", "coverage", "auroc",
                                                                     "ms_ssim_across", "seconds_per_image")))
    return row


def summary(results: dict) -> dict:
    fid, div, ali = results.get("fidelity", {}), results.get("diversity", {}), results.get("alignment", {})
    synth = div.get("synthetic", {})
    return {"fid": fid.get("fid"), "kid": fid.get("kid"), "precision": fid.get("precision"),
            "recall": fid.get("recall"), "coverage": fid.get("coverage"),
            "auroc": ali.get("synthetic", {}).get("mean_auroc"),
            "ms_ssim_across": synth.get("across_prompts"),
            "normal_looks_normal": ali.get("synthetic", {}).get("normal", {}).get("normal_called_normal")}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) and abs(value) < 10 else f"{value:.1f}" \
        if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# The four experiments
# --------------------------------------------------------------------------------------------
def steps_experiment(files, args, engine, extractors) -> list[dict]:
    rows = []
    for sampler in args.samplers:
        for steps in STEPS:
            rows.append(run_config(files, "report", args, engine, extractors,
                                   steps=steps, sampler=sampler, guidance=7.5))
    return rows


def cfg_experiment(files, args, engine, extractors) -> list[dict]:
    return [run_config(files, "report", args, engine, extractors, steps=20,
                       sampler=SAMPLERS[0], guidance=cfg) for cfg in CFGS]


def style_experiment(files, args, engine, extractors) -> list[dict]:
    return [dict(run_config(files, style, args, engine, extractors, steps=20,
                            sampler=SAMPLERS[0], guidance=7.5), style=style) for style in STYLES]


def size_experiment(args, engine) -> list[dict]:
    """Seconds per image at each size (the model loaded once; the first image per size is a warm-up)."""
    from synthex.generate.engine import GenerationRequest

    rows = []
    prompt = "Chest x-ray. Cardiomegaly. Right pleural effusion."
    for size in SIZES:
        request = GenerationRequest(prompt, steps=20, sampler=SAMPLERS[0], guidance=7.5, seed=0, width=size,
                                    height=size, n=1, model=args.model)
        engine.generate(request)
        times = []
        for k in range(args.size_rounds):
            request.seed = k + 1
            timings = engine.generate(request).timings
            times.append(timings["denoise"] + timings["decode"])
        rows.append({"size": size, "pixels": size * size, "seconds_per_image": float(np.median(times))})
        print(f"  size {size}: {rows[-1]['seconds_per_image']:.3f} s/image")
    base = next(r for r in rows if r["size"] == 128)
    for r in rows:
        r["time_vs_128"] = r["seconds_per_image"] / base["seconds_per_image"]
        r["pixels_vs_128"] = r["pixels"] / base["pixels"]
    return rows


def size_exponent(rows: list[dict]) -> float:
    x = np.log([r["pixels"] for r in rows])
    y = np.log([r["seconds_per_image"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def write_report(out: Path, results: dict, meta: dict) -> None:
    lines = [f"# Generation experiments ({meta['model']}, {meta['n_prompts']} prompts x 1 image per configuration)",
             "", f"Real reference: `{meta['real']}`; scores from `synthex evaluate` on the phantom encoder. "
             f"Load average at start {meta['load']}. FID on this few images is biased upwards: compare rows.", ""]
    if "steps" in results:
        lines += ["## Steps x sampler (CFG 7.5)", "",
                  *_table(results["steps"], ["sampler", "steps", "fid", "kid", "coverage", "auroc",
                                             "seconds_per_image"]), ""]
    if "cfg" in results:
        lines += ["## CFG scale (20 steps, DPM++ 2M Karras)", "",
                  *_table(results["cfg"], ["guidance", "auroc", "normal_looks_normal", "ms_ssim_across",
                                           "coverage", "fid"]), ""]
    if "size" in results:
        lines += ["## Output size -> time (20 steps, model loaded)", "",
                  *_table(results["size"], ["size", "pixels_vs_128", "seconds_per_image", "time_vs_128"]), "",
                  f"time ~ pixels^{results['size_exponent']:.2f}", ""]
    if "style" in results:
        lines += ["## Prompt style (20 steps, CFG 7.5)", "",
                  *_table(results["style"], ["style", "auroc", "normal_looks_normal", "fid", "kid", "coverage"]), ""]
    (out / "experiments.md").write_text("\n".join(lines) + "\n")
    (out / "experiments.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    plot(out, results)


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("steps", "cfg", "size", "style") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        rows = results[key]
        if key == "steps":
            for sampler in dict.fromkeys(r["sampler"] for r in rows):
                sub = [r for r in rows if r["sampler"] == sampler]
                ax.plot([r["steps"] for r in sub], [r["auroc"] for r in sub], marker="o", label=sampler)
            ax.set(xlabel="steps", ylabel="mean per-finding AUROC", title="steps x sampler")
            ax.legend(fontsize=7)
        elif key == "cfg":
            ax.plot([r["guidance"] for r in rows], [r["auroc"] for r in rows], marker="o", label="AUROC")
            ax.plot([r["guidance"] for r in rows], [r["ms_ssim_across"] for r in rows], marker="s",
                    label="MS-SSIM across prompts")
            ax.set(xlabel="CFG scale", title="alignment vs diversity")
            ax.legend(fontsize=7)
        elif key == "size":
            ax.loglog([r["pixels"] for r in rows], [r["seconds_per_image"] for r in rows], marker="o")
            ax.set(xlabel="pixels", ylabel="s / image", title=f"size -> time (~px^{results['size_exponent']:.2f})")
        else:
            ax.bar([r["style"] for r in rows], [r["auroc"] for r in rows])
            ax.set(ylabel="mean per-finding AUROC", title="prompt style", ylim=(0.5, 1))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "experiments.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("runs/eval-test"))
    parser.add_argument("--prompts", type=Path, default=Path("runs/eval-prompts.csv"))
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--n-prompts", type=int, default=60)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--size-rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=("steps", "cfg", "size", "style"),
                        default=["steps", "cfg", "size", "style"])
    args = parser.parse_args()
    for path in (args.real, args.prompts):
        if not path.exists():
            raise SystemExit(f"{path} does not exist; build it with scripts/make_eval_sets.py (see the README)")
    from synthex.evaluate.features import SynthexExtractor
    from synthex.generate.engine import Engine

    engine, extractors = Engine(), {"synthex": SynthexExtractor()}
    engine.load(args.model)  # loaded once, outside every configuration's seconds per image
    files = prompt_files(args.prompts, args.n_prompts, args.out)
    meta = {"model": args.model, "n_prompts": args.n_prompts, "real": str(args.real),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "threads": os.environ.get("OMP_NUM_THREADS")}
    results: dict = {}
    t0 = time.perf_counter()
    for key in args.only:
        print(f"{key} ...", flush=True)
        if key == "size":
            results["size"] = size_experiment(args, engine)
            results["size_exponent"] = size_exponent(results["size"])
        else:
            results[key] = {"steps": steps_experiment, "cfg": cfg_experiment,
                            "style": style_experiment}[key](files, args, engine, extractors)
    meta["seconds"] = time.perf_counter() - t0
    write_report(args.out, results, meta)
    print((args.out / "experiments.md").read_text())


if __name__ == "__main__":
    main()
