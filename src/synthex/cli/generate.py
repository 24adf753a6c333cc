"""``synthex generate | info | synthesize | compare``: images from text, their parameters,
synthetic datasets and prompt difference maps.

The commands are defined on this module's ``app`` (run it alone with
``python -m synthex.cli.generate``, e.g. under ``accelerate launch``) and added to the root
``synthex`` app by :func:`register`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import typer

from synthex.cli.boundary import BoundaryGroup
from synthex.errors import OutputExistsError, SynthexError
from synthex.generate.defaults import (
    DEFAULT_CLIP_SKIP,
    DEFAULT_GUIDANCE,
    DEFAULT_MASK_BLUR,
    DEFAULT_MODEL,
    DEFAULT_N,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
)

app = typer.Typer(cls=BoundaryGroup, help="Generate synthetic chest X-rays (research use, not diagnosis).",
                  no_args_is_help=True, pretty_exceptions_enable=False)

MODEL_HELP = "Model preset (see 'synthex info --models'), diffusers folder or hub id."
LORA_HELP = ("LoRA file, a preset LoRA name or a file name in $SYNTHEX_LORA_DIR, with optional "
             "strength: PATH[:SCALE]. Repeatable. <lora:name:0.8> in the prompt works too.")
SAMPLER_HELP = ("DPM++ 2M (SDE) (Karras), DPM++ 2M SDE Heun, DPM++ 3M SDE, DPM++ SDE (needs torchsde), "
                "DPM2, DPM2 a, Euler, Euler a, Heun, LMS, DDIM, PLMS, UniPC, LCM, DDPM.")
SCHEDULE_HELP = ("Noise schedule: automatic (A1111's default for the sampler), uniform, karras, "
                 "exponential, beta, sgm_uniform.")
CLIP_SKIP_HELP = "A1111's Clip skip: 1 = the usual text-encoder layer, 2 = one layer earlier, ..."
DEFAULT_NAME = "synthetic_xray_{seed}.png"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def parse_lora(text: str) -> tuple[str, float]:
    """``"path/x.safetensors:0.8"`` -> ``("path/x.safetensors", 0.8)``; no scale -> 1.0."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _quiet_libraries() -> None:
    """No third-party loading bars / load reports on the console (ours stay)."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _engine(allow_download: bool) -> Any:
    from synthex.generate.engine import Engine
    from synthex.models.registry import ModelRegistry

    _quiet_libraries()
    return Engine(ModelRegistry(allow_download=True if allow_download else None))


def _progress(total_hint: int, quiet: bool) -> tuple[Any, Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total_hint, disable=quiet, unit="step", leave=False)

    def callback(step: int, total: int, latents: Any) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    return bar, callback


def output_files(out: str | os.PathLike[str] | None, seeds: list[int],
                 source: Path | None = None) -> list[Path]:
    """Where ``generate`` writes: ``-o OUT.png`` (OUT_00.png... for several images; ``.jpg``,
    ``.jpeg`` and ``.webp`` too, with the parameters in EXIF), ``-o DIR/`` or an existing folder
    (DIR/synthetic_xray_SEED.png), else the current folder; ``--from IMG.png`` alone writes
    IMG_regen.png."""
    from synthex.generate.infotext import IMAGE_SUFFIXES

    if out is None and source is not None and len(seeds) == 1:
        return [source.with_name(f"{source.stem}_regen.png")]
    raw = "" if out is None else str(out)
    if out is None or raw.endswith(("/", os.sep)) or Path(raw).is_dir():
        folder = Path(raw) if raw else Path.cwd()
        return [folder / DEFAULT_NAME.format(seed=seed) for seed in seeds]
    path = Path(raw)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise SynthexError(f"-o {raw}: give a .png, .jpg, .jpeg or .webp file, or a folder ending "
                           "in '/'")
    if len(seeds) == 1:
        return [path]
    width = max(2, len(str(len(seeds) - 1)))
    return [path.with_name(f"{path.stem}_{k:0{width}d}{path.suffix}") for k in range(len(seeds))]


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to "
                                "replace, or choose another -o")


def _loras(values: list[str] | None) -> list[tuple[str, float]] | None:
    return [parse_lora(v) for v in values] if values else None


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------
def _build_request(prompt: str | None, source: Path | None, fields: dict[str, Any]) -> Any:
    from synthex.generate.engine import GenerationRequest, request_from_parameters
    from synthex.generate.infotext import read_image_parameters

    if source is not None:
        params = read_image_parameters(source)
        if prompt:
            fields["prompt"] = prompt
        return request_from_parameters(params, **fields), params
    if not prompt:
        raise SynthexError("give a PROMPT to generate from, or --from IMG.png to re-generate an image")
    defaults = {k: v for k, v in fields.items() if v is not None}
    return GenerationRequest(prompt=prompt, **defaults), None


def _mask_inputs(init_image: Path | None, mask: Path | None, rect: str | None) -> Any:
    """The ``mask`` of the request: the --mask file, a --mask-rect mask of the init image's size,
    or None; SynthexError (exit 2) for a bad rectangle or a rectangle without an init image."""
    if rect is None:
        return mask
    from synthex.generate.img2img import read_image
    from synthex.generate.masks import parse_rect, rect_mask

    if mask is not None:
        raise SynthexError("give either --mask PATH or --mask-rect x0,y0,x1,y1, not both")
    if init_image is None:
        raise SynthexError("--mask-rect needs --init-image: the rectangle is in its pixels")
    box = parse_rect(rect)
    return rect_mask(read_image(init_image, "--init-image").size, box)


def _warn(text: str) -> None:
    typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)


def _same_pixels(source: Path, image: Any) -> bool:
    """Compare without decoding a source whose header claims another size (or a huge one)."""
    import warnings

    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as original:
                if original.size != image.size or original.mode != image.mode:
                    return False
                return bool(np.array_equal(np.asarray(original), np.asarray(image)))
    except Exception:  # a damaged or hostile source: it cannot be the same image
        return False


def _report_source(source: Path, params: Any, result_params: Any, engine: Any, image: Any) -> None:
    if params.model_hash and engine.loaded.model_hash and params.model_hash != engine.loaded.model_hash:
        _warn(f"{source} was made with model hash {params.model_hash}; this model's hash is "
              f"{engine.loaded.model_hash}, so the image will differ")
    for name, (digest, _) in params.loras.items():
        now = result_params.loras.get(name, (None, None))[0]
        if digest and now and digest != now:
            _warn(f"{source} was made with LoRA {name} of hash {digest}; the LoRA loaded now has "
                  f"hash {now}, so the image will differ")
    same = _same_pixels(source, image)
    typer.echo(f"pixel-identical to {source}: {'yes' if same else 'no'}")


def _load(engine: Any, request: Any, source: Path | None) -> None:
    """Load the model first (errors before any progress bar); for --from, say what to pass."""
    from synthex.models.registry import LoraError, ModelNotFoundError

    try:
        engine.load_for(request)
    except ModelNotFoundError as exc:
        if source is None:
            raise
        raise ModelNotFoundError(f"{exc}\n{source} was made with model {request.model!r}; pass "
                                 "--model FOLDER to re-generate it with that model's files") from exc
    except LoraError as exc:
        if source is None:
            raise
        from synthex.generate.infotext import lora_tags

        names = [str(name) for name, _ in request.loras] + [n for n, _ in lora_tags(request.prompt)]
        raise LoraError(f"{exc}\n{source} names LoRA(s) {names}; pass their files again with "
                        "--lora PATH:SCALE") from exc


LANG_HELP = ("Prompt language: auto (Cyrillic Russian/Ukrainian is mapped to English through the "
             "glossary), en (use the text unchanged), ru, uk.")


def show_mapping(text: str, lang: str, what: str = "prompt") -> None:
    """Print how a Russian/Ukrainian text was read (and the words the glossary did not know)."""
    from synthex.text.lang import localise

    _, mapping = localise(text, lang)
    if mapping is None:
        return
    typer.echo(f"{what} ({mapping.language}): {mapping.shown()}", err=True)
    if mapping.unknown:
        typer.echo(f"  not in the glossary (ignored): {', '.join(mapping.unknown)}", err=True)


@app.command("translate")
def translate_command(
    text: str = typer.Argument(..., help='Russian or Ukrainian clinical text, e.g. "Умеренная кардиомегалия".'),
    lang: str = typer.Option("auto", "--lang", help="auto (detect), ru or uk."),
    as_json: bool = typer.Option(False, "--json", help="Print the mapping as JSON."),
) -> None:
    """Show how a Russian/Ukrainian text maps to the English finding vocabulary (the glossary)."""
    from synthex.text.lang import map_text

    mapping = map_text(text, lang)
    if as_json:
        typer.echo(json.dumps(mapping.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(mapping.shown())
    typer.echo(f"language: {mapping.language}")
    typer.echo("findings: " + "; ".join(f.describe() for f in mapping.findings))
    if mapping.negated:
        typer.echo("denied: " + ", ".join(mapping.negated))
    if mapping.unknown:
        typer.echo("not in the glossary (ignored): " + ", ".join(mapping.unknown))
    for note in mapping.notes:
        typer.echo(f"note: {note}")


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(None, help="Clinical description; A1111 weighting like (clear:1.5) works."),
    out: str = typer.Option(None, "--out", "-o", show_default="current folder",
                            help="OUT.png, OUT.jpg or OUT.webp (OUT_00.png... when --n > 1) or DIR/."),
    n: int = typer.Option(None, "--n", "-n", show_default=str(DEFAULT_N), help="Number of images (seeds SEED, SEED+1, ...)."),
    seed: str = typer.Option(None, "--seed", "-s", show_default="random",
                             help="Seed 0..2^63-1; -1 or empty = random (printed and stored)."),
    steps: int = typer.Option(None, "--steps", show_default=str(DEFAULT_STEPS), help="Denoising steps, 1-150."),
    guidance: float = typer.Option(None, "--guidance", "--cfg", show_default=f"{DEFAULT_GUIDANCE:g}", help="CFG scale (1 = off)."),
    sampler: str = typer.Option(None, "--sampler", show_default=DEFAULT_SAMPLER, help=SAMPLER_HELP),
    schedule_type: str = typer.Option(None, "--schedule-type", show_default="the sampler name's, else uniform",
                                      help=SCHEDULE_HELP),
    clip_skip: int = typer.Option(None, "--clip-skip", show_default=str(DEFAULT_CLIP_SKIP), help=CLIP_SKIP_HELP),
    negative: str = typer.Option(None, "--negative", "--negative-prompt", show_default="empty", help="Negative prompt."),
    width: int = typer.Option(None, "--width", show_default="the model's native size", help="Multiple of 8."),
    height: int = typer.Option(None, "--height", show_default="the model's native size", help="Multiple of 8."),
    model: str = typer.Option(None, "--model", "-m", show_default=DEFAULT_MODEL, help=MODEL_HELP),
    lora: list[str] = typer.Option(None, "--lora", show_default="none", help=LORA_HELP),
    source: Path = typer.Option(None, "--from", help="Re-generate from this image's parameters (PNG, JPEG, WebP)."),
    batch_size: int = typer.Option(None, "--batch-size", show_default="1", help="Images per forward pass (GPU speed)."),
    device: str = typer.Option(None, "--device", show_default="automatic", help="cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option(None, "--dtype", show_default="automatic", help="float32, float16, bfloat16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    allow_download: bool = typer.Option(False, "--allow-download", help="Allow downloading hub models."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    lang: str = typer.Option("auto", "--lang", help=LANG_HELP),
    init_image: Path = typer.Option(None, "--init-image", help="img2img: start from this image "
                                    "(its size unless --width/--height, then resized)."),
    strength: float = typer.Option(None, "--strength", "--denoising-strength",
                                   show_default=f"{DEFAULT_STRENGTH:g}",
                                   help="img2img/inpainting strength, 0 < F <= 1 (1 = repaint all)."),
    mask: Path = typer.Option(None, "--mask", help="Inpainting mask of the init image's size: "
                              "white = repaint, black = keep."),
    mask_rect: str = typer.Option(None, "--mask-rect", help="Inpaint the rectangle x0,y0,x1,y1 "
                                  "(init-image pixels, x1/y1 exclusive) instead of a --mask file."),
    mask_blur: int = typer.Option(None, "--mask-blur", show_default=str(DEFAULT_MASK_BLUR),
                                  help="Mask edge blur in pixels."),
    mask_padding: int = typer.Option(None, "--mask-padding", show_default="whole picture",
                                     help="Only masked: inpaint the mask's box plus N pixels at "
                                          "the working size, then paste it back."),
    invert_mask: bool = typer.Option(False, "--invert-mask", help="Repaint the black part of the mask."),
) -> None:
    """Generate one or a few images and save them (PNG, JPEG or WebP) with A1111 parameters;
    img2img with --init-image, inpainting with --mask or --mask-rect."""
    from synthex.generate.engine import resolve_seeds
    from synthex.generate.infotext import write_image

    fields = {"n": n, "seed": seed, "steps": steps, "guidance": guidance, "sampler": sampler,
              "schedule_type": schedule_type, "clip_skip": clip_skip,
              "negative_prompt": negative, "width": width, "height": height, "model": model,
              "loras": _loras(lora), "batch_size": batch_size, "device": device, "dtype": dtype,
              "lang": lang, "init_image": init_image, "strength": strength,
              "mask": _mask_inputs(init_image, mask, mask_rect), "mask_blur": mask_blur,
              "mask_padding": mask_padding, "invert_mask": True if invert_mask else None}
    request, params = _build_request(prompt, source, fields)
    request.validate()
    from synthex.generate.infotext import strip_lora_tags

    show_mapping(strip_lora_tags(request.prompt), request.lang)
    seeds, drawn = resolve_seeds(request.seed, request.n)
    request.seed = seeds[0]
    paths = output_files(out, seeds, source)
    _refuse_existing(paths, overwrite)
    engine = _engine(allow_download)
    _load(engine, request, source)
    bar, callback = _progress(request.steps * request.n, quiet)
    try:
        result = engine.generate(request, callback)
    finally:
        bar.close()
    for image, image_params, path in zip(result.images, result.parameters, paths):
        write_image(image, path, image_params, overwrite=overwrite)
        typer.echo(f"{path}  seed {image_params.seed}{' (random)' if drawn else ''}")
    typer.echo(f"{len(paths)} image(s) in {result.timings['total']:.1f} s "
               f"(model {engine.loaded.spec.name}, {request.steps} steps)")
    if source is not None and len(paths) == 1:
        _report_source(source, params, result.parameters[0], engine, result.images[0])


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------
def _print_models() -> None:
    from synthex.models.registry import ModelRegistry

    registry = ModelRegistry()
    for name in registry.names():
        try:
            spec = registry.resolve(name)
            ok, where = registry.available(spec)
        except SynthexError as exc:
            ok, where, spec = False, str(exc).splitlines()[0], None
        mark = "ok     " if ok else "missing"
        default = " (default)" if name == registry.default else ""
        description = spec.description if spec else ""
        typer.echo(f"{mark}  {name}{default}: {description}\n         {where}")


@app.command("info")
def info_command(
    image: Path = typer.Argument(None, help="A PNG/JPEG/WebP written by SynTheX-Ray or AUTOMATIC1111."),
    as_json: bool = typer.Option(False, "--json", help="Print the parsed parameters as JSON."),
    models: bool = typer.Option(False, "--models", help="List model presets and whether their files are here."),
) -> None:
    """Print the generation parameters stored in a PNG (or list the model presets)."""
    from dataclasses import asdict

    from synthex.generate.infotext import (
        PARAMETERS_KEY,
        parse_infotext,
        read_image_text,
    )

    if models:
        _print_models()
        return
    if image is None:
        raise SynthexError("give an IMAGE.png (or --models)")
    chunks = read_image_text(image)
    text = chunks.get(PARAMETERS_KEY)
    if text is None:
        raise SynthexError(f"{image} has no '{PARAMETERS_KEY}' text chunk: it was not written by "
                           "SynTheX-Ray or AUTOMATIC1111, or its metadata was stripped")
    if as_json:
        others = {k: v for k, v in chunks.items() if k != PARAMETERS_KEY}
        typer.echo(json.dumps({"parameters": asdict(parse_infotext(text)), "text": others},
                              indent=2, ensure_ascii=False))
        return
    typer.echo(text)
    for key, value in chunks.items():
        if key not in (PARAMETERS_KEY, "Description"):
            typer.echo(f"{key}: {value}")


# --------------------------------------------------------------------------------------------
# synthesize
# --------------------------------------------------------------------------------------------
@app.command("synthesize")
def synthesize_command(
    prompts: Path = typer.Option(..., "--prompts", "-p", help="CSV or JSONL with a 'prompt' or 'text' column."),
    out: Path = typer.Option(..., "--out", "-o", help="Output imagefolder."),
    per_prompt: int = typer.Option(None, "--per-prompt", help="Images per row (default: the 'count' column, else 1)."),
    counts_column: str = typer.Option(None, "--counts-column", help="Column holding images per row."),
    per_class: int = typer.Option(None, "--per-class", help="Images per value of --class-column."),
    class_column: str = typer.Option(None, "--class-column", help="Finding-class column for --per-class."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    lora: list[str] = typer.Option(None, "--lora", help=LORA_HELP),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps"),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, "--guidance", "--cfg"),
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help=SAMPLER_HELP),
    schedule_type: str = typer.Option(None, "--schedule-type", show_default="the sampler name's, else uniform",
                                      help=SCHEDULE_HELP),
    clip_skip: int = typer.Option(DEFAULT_CLIP_SKIP, "--clip-skip", help=CLIP_SKIP_HELP),
    negative: str = typer.Option("", "--negative", help="Negative prompt for rows without one."),
    width: int = typer.Option(None, "--width", show_default="the model's native size"),
    height: int = typer.Option(None, "--height", show_default="the model's native size"),
    seed: str = typer.Option("0", "--seed", help="Base seed: image j gets seed+j (-1: random, stored in "
                             "synthesize.json and kept on resume)."),
    max_images: int = typer.Option(None, "--max-images", help="Stop after this many new images per process."),
    device: str = typer.Option(None, "--device"),
    dtype: str = typer.Option(None, "--dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again, deleting a previous run in --out."),
    allow_download: bool = typer.Option(False, "--allow-download"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build a synthetic imagefolder from a prompts file; resumable, multi-process with accelerate."""
    from synthex.generate.batch import SynthesizeOptions, synthesize

    options = SynthesizeOptions(
        prompts_file=prompts, out=out, per_prompt=per_prompt, counts_column=counts_column,
        per_class=per_class, class_column=class_column, model=model, loras=_loras(lora) or [],
        steps=steps, guidance=guidance, sampler=sampler, schedule_type=schedule_type,
        clip_skip=clip_skip, negative_prompt=negative, width=width,
        height=height, seed=seed, device=device, dtype=dtype, max_images=max_images,
        overwrite=overwrite, progress=not quiet)
    result = synthesize(options, _engine(allow_download))
    if result.metadata_csv is None:  # not the main process
        return
    state = "complete" if result.complete else "incomplete: run the same command again to resume"
    who = "now" if result.processes == 1 else f"now by process 0 of {result.processes}"
    typer.echo(f"{result.done} of {result.total} images in {result.out} ({result.generated} made "
               f"{who}; {state})\nbase seed {result.base_seed}{' (random)' if result.random_seed else ''}"
               f"\nmetadata: {result.metadata_csv}, {result.metadata_jsonl}")


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------
@app.command("compare")
def compare_command(
    prompt_a: str = typer.Argument(..., help="First prompt (image A)."),
    prompt_b: str = typer.Argument(..., help="Second prompt (image B)."),
    out: Path = typer.Option(..., "--out", "-o", help="Figure FIG.png (FIG.npz, FIG_a.png, FIG_b.png beside it)."),
    seed: str = typer.Option(None, "--seed", "-s", help="Shared seed; -1 or empty = random (reported)."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps"),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, "--guidance", "--cfg"),
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help=SAMPLER_HELP),
    schedule_type: str = typer.Option(None, "--schedule-type", show_default="the sampler name's, else uniform",
                                      help=SCHEDULE_HELP),
    clip_skip: int = typer.Option(DEFAULT_CLIP_SKIP, "--clip-skip", help=CLIP_SKIP_HELP),
    negative: str = typer.Option("", "--negative"),
    width: int = typer.Option(None, "--width", show_default="the model's native size"),
    height: int = typer.Option(None, "--height", show_default="the model's native size"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    lora: list[str] = typer.Option(None, "--lora", help=LORA_HELP),
    device: str = typer.Option(None, "--device", show_default="automatic"),
    dtype: str = typer.Option(None, "--dtype", show_default="automatic"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    allow_download: bool = typer.Option(False, "--allow-download"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Both prompts at the same seed plus their |A-B| heat map (thesis Fig. 4.4)."""
    from synthex.generate.compare import compare_prompts
    from synthex.generate.engine import GenerationRequest, parse_seed

    base = GenerationRequest(prompt_a, negative_prompt=negative, steps=steps, guidance=guidance,
                             sampler=sampler, schedule_type=schedule_type, clip_skip=clip_skip,
                             width=width, height=height, model=model,
                             loras=_loras(lora) or [], device=device, dtype=dtype)
    drawn = parse_seed(seed) is None
    bar, callback = _progress(2 * steps, quiet)
    try:
        result = compare_prompts(prompt_a, prompt_b, out, base=base, seed=seed,
                                 engine=_engine(allow_download), overwrite=overwrite, callback=callback)
    finally:
        bar.close()
    typer.echo(f"{result.figure}\n{result.arrays}\n{result.images[0]}\n{result.images[1]}")
    typer.echo(f"seed {result.seed}{' (random)' if drawn else ''}; mean |A-B| {result.diff.mean():.4f}, "
               f"max {result.diff.max():.4f}")


# --------------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------------
COMMANDS = {"generate": generate_command, "info": info_command, "synthesize": synthesize_command,
            "compare": compare_command, "translate": translate_command}


def register(root_app: typer.Typer) -> None:
    """Add ``generate``, ``info``, ``synthesize`` and ``compare`` to the root ``synthex`` app."""
    for name, function in COMMANDS.items():
        root_app.command(name)(function)


@app.callback()
def _callback(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """``python -m synthex.cli.generate ...`` (used under ``accelerate launch``)."""
    from synthex.cli import run

    run(app)


if __name__ == "__main__":
    main()
