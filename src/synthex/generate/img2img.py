"""img2img and inpainting on the engine's loaded model.

:meth:`synthex.generate.engine.Engine.generate` runs a request with ``init_image`` through
:func:`prepare` (read the init image and mask once, work out the working size and the crop) and
:meth:`InitSource.denoise` (an img2img or inpainting pipeline built from the loaded txt2img
pipeline's components: same weights, LoRAs and text encoders, no copy). The engine decodes the
latents itself (:func:`~synthex.generate.engine.decode_latents`) and :meth:`InitSource.finish`
pastes an "Only masked" crop back and blends the result into the original through the blurred
mask, so pixels where the blurred mask is black are exactly the original's.

Sizes: without ``width``/``height`` the working size is the init image's (a multiple of the
VAE factor, else an error naming the fix); with them the init image (and mask) are resized to
it (Lanczos, A1111's "Just resize"). The mask must have the init image's size (an error, not a
silent resize: a mask of another size is usually the wrong file). With ``mask_padding`` set
("Only masked") the mask's bounding box plus the padding is inpainted at the working size and
pasted back: the result then has the init image's size.

A 4-channel UNet inpaints by blending latents (diffusers' inpainting pipeline with
``num_channels_unet == 4``); a 9-channel inpainting UNet gets the mask and masked image as
input. The 1-channel (grayscale) VAE of the embedded model reads grayscale images.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any

from synthex.errors import ImageReadError, SynthexError
from synthex.generate import masks
from synthex.generate.defaults import DEFAULT_MASK_BLUR, DEFAULT_STRENGTH

MAX_MASK_BLUR = 256
HASH_DIGITS = 10
"""``Init image hash`` / ``Mask hash``: the first 10 hex digits of a SHA-256 (as ``Model hash``)."""
NOTHING_SELECTED = "mask: selects nothing: paint the area to repaint white"


# --------------------------------------------------------------------------------------------
# Images and their hashes
# --------------------------------------------------------------------------------------------
def is_image(value: Any) -> bool:
    """True for a PIL image (anything with ``mode``, ``size`` and ``convert``)."""
    return all(hasattr(value, name) for name in ("mode", "size", "convert"))


def read_image(source: Any, field: str) -> Any:
    """A PIL image from a PIL image or a path/bytes (:func:`synthex.io.open_image`);
    SynthexError ``"<field>: ..."`` when it cannot be read."""
    from synthex.io import open_image

    if is_image(source):
        return source
    if isinstance(source, (str, os.PathLike)) and not str(source).strip():
        raise SynthexError(f"{field}: the path is empty; give an image file")
    if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
        raise SynthexError(f"{field}: must be an image path or a PIL image, got "
                           f"{type(source).__name__}")
    if isinstance(source, (bytes, bytearray)):
        source, name = bytes(source), f"{field} (bytes)"
    else:
        source, name = os.path.expanduser(os.fspath(source)), None
    try:
        return open_image(source, name=name)
    except ImageReadError as exc:
        raise SynthexError(f"{field}: cannot read {exc.path}: {exc.reason}") from None


def canonical(image: Any) -> Any:
    """8-bit ``"L"`` for grey images (16-bit ones scaled), ``"RGB"`` for everything else."""
    image = masks.to_8bit(image)
    if image.mode in ("L", "1", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def image_hash(image: Any) -> str:
    """First 10 hex digits of the SHA-256 of the decoded pixels (:func:`canonical`, with mode
    and size): the same picture saved again, or as another format without loss, keeps it."""
    image = canonical(image)
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:HASH_DIGITS]


def hash_matches(stored: str, image: Any) -> bool | None:
    """Whether ``image`` has the stored hash: ours (10 hex digits), or A1111's MD5 of the RGB
    pixels (32 digits). None when the stored text is neither."""
    stored = stored.strip().lower()
    if len(stored) == HASH_DIGITS:
        return image_hash(image) == stored
    if len(stored) == 32:
        return hashlib.md5(canonical(image).convert("RGB").tobytes()).hexdigest() == stored
    return None


# --------------------------------------------------------------------------------------------
# Validation (GenerationRequest.validate)
# --------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numbers(request: Any) -> list[str]:
    problems = []
    strength = request.strength
    if not _number(strength) or not 0 < strength <= 1:
        problems.append(f"strength: must be a number greater than 0 and at most 1 (0.75 is "
                        f"usual), got {strength!r}")
    elif request.init_image is not None and _whole(request.steps) and int(request.steps * strength) < 1:
        problems.append(f"strength: {strength:g} x {request.steps} steps runs no denoising step "
                        "(img2img runs int(steps x strength) steps); raise the strength or steps")
    if not _whole(request.mask_blur) or not 0 <= request.mask_blur <= MAX_MASK_BLUR:
        problems.append(f"mask_blur: must be a whole number of pixels from 0 to {MAX_MASK_BLUR}, "
                        f"got {request.mask_blur!r}")
    padding = request.mask_padding
    if padding is not None and (not _whole(padding) or padding < 0):
        problems.append(f"mask_padding: must be None (inpaint the whole picture) or a whole "
                        f"number of pixels >= 0 (only masked), got {padding!r}")
    if not isinstance(request.invert_mask, bool):
        problems.append(f"invert_mask: must be True or False, got {request.invert_mask!r}")
    return problems


def _size_problem(request: Any, size: tuple[int, int], factor: int = 8) -> str | None:
    width = request.width or size[0]
    height = request.height or size[1]
    if width % factor or height % factor:
        return (f"init_image: its size {size[0]}x{size[1]} gives a working size {width}x{height} "
                f"that is not a multiple of {factor} (the model's VAE factor); pass width and "
                f"height (--width/--height, the image is resized to them), e.g. "
                f"{max(factor, width // factor * factor)}x{max(factor, height // factor * factor)}, "
                "or crop the image")
    return None


def _read(source: Any, field: str, problems: list[str]) -> Any:
    try:
        return read_image(source, field)
    except SynthexError as exc:
        problems.append(str(exc))
        return None


def _check_mask(request: Any, init: Any, problems: list[str]) -> None:
    mask = _read(request.mask, "mask", problems)
    if mask is None:
        return
    if init is not None and mask.size != init.size:
        problems.append(f"mask: its size {mask.width}x{mask.height} differs from the init "
                        f"image's {init.width}x{init.height}; give a mask of the init image's size "
                        "(white = repaint, black = keep), or --mask-rect")
        return
    binary = masks.binary_mask(mask)
    if request.invert_mask is True:
        binary = masks.invert_mask(binary)
    if masks.mask_bbox(binary) is None:
        problems.append(NOTHING_SELECTED + (" (with invert_mask, paint the area to keep white "
                                            "and leave some black)" if request.invert_mask is True else ""))


def check_request(request: Any) -> list[str]:
    """One message per bad img2img/inpainting value of ``request`` (all of them at once)."""
    problems = _check_numbers(request)
    if request.init_image is None:
        if request.mask is not None:
            problems.append("mask: needs an init_image (inpainting repaints part of an init "
                            "image); give init_image (--init-image) or drop the mask")
        return problems
    init = _read(request.init_image, "init_image", problems)
    if init is not None:
        problem = _size_problem(request, init.size)
        if problem:
            problems.append(problem)
    if request.mask is not None:
        _check_mask(request, init, problems)
    return problems


# --------------------------------------------------------------------------------------------
# The prepared init image and mask
# --------------------------------------------------------------------------------------------
@dataclass
class InitSource:
    """What one img2img/inpainting request feeds the pipeline and blends back.

    ``original``: the init image in the model's mode (at the working size, or at its own size
    for "Only masked"); ``image``/``mask``: what the pipeline gets (working size); ``overlay``:
    the blurred mask at the size of the result; ``box``: the "Only masked" crop, else None."""

    original: Any
    image: Any
    size: tuple[int, int]
    strength: float
    init_hash: str
    mask: Any = None
    overlay: Any = None
    box: masks.Box | None = None
    mask_hash: str | None = None
    mask_blur: int | None = None
    mask_padding: int | None = None
    invert_mask: bool = False

    def denoise(self, loaded: Any, request: Any, embeds: dict[str, Any], seeds: list[int],
                progress: Any) -> Any:
        """Latents of ``seeds`` (one CPU generator each), from the img2img/inpaint pipeline."""
        import torch

        from synthex.generate.samplers import make_scheduler

        pipe = derived_pipeline(loaded, inpaint=self.mask is not None)
        pipe.scheduler = make_scheduler(request.sampler, loaded.base_scheduler or loaded.pipe.scheduler,
                                        request.schedule_type)
        kwargs: dict[str, Any] = {
            **embeds, "image": self.image, "strength": float(self.strength),
            "num_images_per_prompt": len(seeds), "num_inference_steps": request.steps,
            "guidance_scale": float(request.guidance), "output_type": "latent",
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            "callback_on_step_end": progress, "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if self.mask is not None:
            kwargs.update(mask_image=self.mask, width=self.size[0], height=self.size[1])
        return pipe(**kwargs).images

    def finish(self, images: list[Any]) -> list[Any]:
        """Decoded images -> results: the crop pasted back, the mask overlay blended in."""
        if self.overlay is None:
            return images
        out = []
        for image in images:
            if self.box is not None:
                image = masks.paste_crop(self.original, image, self.box)
            out.append(masks.composite(self.original, image, self.overlay))
        return out

    def annotate(self, params: Any) -> None:
        """Write the img2img/inpainting fields into one image's GenerationParameters."""
        params.denoising_strength = float(self.strength)
        params.init_image_hash = self.init_hash
        if self.mask is not None:
            params.mask_hash = self.mask_hash
            params.mask_blur = self.mask_blur
            params.mask_padding = self.mask_padding
            params.invert_mask = self.invert_mask


def _resize(image: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def working_size(request: Any, size: tuple[int, int], loaded: Any) -> tuple[int, int]:
    """(width, height) the pipeline runs at: the request's, else the init image's."""
    from synthex.generate.engine import RequestError

    problem = _size_problem(request, size, loaded.vae_scale_factor)
    if problem:
        raise RequestError([f"{problem} (model {loaded.spec.name!r})"])
    return request.width or size[0], request.height or size[1]


def check_model(loaded: Any, request: Any) -> None:
    """A 9-channel inpainting UNet cannot run without a mask: RequestError saying so."""
    from synthex.generate.engine import RequestError

    channels = int(getattr(loaded.pipe.unet.config, "in_channels", 4))
    if channels == 9 and request.mask is None:
        raise RequestError([f"model {loaded.spec.name!r} is an inpainting model (9-channel UNet): "
                            "give an init image and a mask (--init-image, --mask or --mask-rect; "
                            "a rectangle over the whole image repaints all of it)"])


def prepare(request: Any, loaded: Any) -> InitSource | None:
    """The :class:`InitSource` of ``request`` (None for txt2img) on the loaded model."""
    check_model(loaded, request)
    if request.init_image is None:
        return None
    source = read_image(request.init_image, "init_image")
    gray = int(loaded.pipe.vae.config.in_channels) == 1
    original = canonical(source).convert("L" if gray else "RGB")
    size = working_size(request, original.size, loaded)
    common = {"size": size, "strength": float(request.strength), "init_hash": image_hash(source)}
    if request.mask is None:
        image = _resize(original, size)
        return InitSource(original=image, image=image, **common)
    raw = masks.load_mask(read_image(request.mask, "mask"))
    selected = masks.invert_mask(raw) if request.invert_mask else raw
    inpaint = {"mask_hash": image_hash(raw), "mask_blur": int(request.mask_blur),
               "mask_padding": request.mask_padding, "invert_mask": bool(request.invert_mask)}
    if request.mask_padding is None:
        image = _resize(original, size)
        overlay = masks.blur_mask(_binary_at(selected, size), request.mask_blur)
        return InitSource(original=image, image=image, mask=overlay, overlay=overlay, **common,
                          **inpaint)
    overlay = masks.blur_mask(selected, request.mask_blur)
    box = masks.crop_region(overlay, request.mask_padding, size)
    return InitSource(original=original, image=masks.crop_to(original, box, size),
                      mask=masks.crop_to(overlay, box, size), overlay=overlay, box=box, **common,
                      **inpaint)


def _binary_at(mask: Any, size: tuple[int, int]) -> Any:
    from synthex.generate.engine import RequestError

    resized = mask if mask.size == tuple(size) else masks.binary_mask(_resize(mask, size))
    if masks.mask_bbox(resized) is None:
        raise RequestError([f"{NOTHING_SELECTED} (at the working size {size[0]}x{size[1]} the "
                            "painted area vanishes; paint a larger area)"])
    return resized


# --------------------------------------------------------------------------------------------
# Pipelines built from the loaded one
# --------------------------------------------------------------------------------------------
def _pipeline_class(family: str, inpaint: bool) -> Any:
    import diffusers

    if family == "sdxl":
        return (diffusers.StableDiffusionXLInpaintPipeline if inpaint
                else diffusers.StableDiffusionXLImg2ImgPipeline)
    return diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionImg2ImgPipeline


def derived_pipeline(loaded: Any, inpaint: bool) -> Any:
    """An img2img (or inpainting) pipeline sharing the loaded pipeline's modules (its LoRAs,
    offload hooks and dtype included), with image processors fitting its VAE: grayscale for a
    1-channel VAE, RGB otherwise; the mask processor binarizes a grayscale mask."""
    from diffusers.image_processor import VaeImageProcessor

    cls = _pipeline_class(loaded.family, inpaint)
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in loaded.pipe.components.items() if k in accepted}
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = False
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    factor = loaded.vae_scale_factor
    gray = int(loaded.pipe.vae.config.in_channels) == 1
    pipe.image_processor = VaeImageProcessor(vae_scale_factor=factor, do_convert_grayscale=gray,
                                             do_convert_rgb=not gray)
    if inpaint:
        pipe.mask_processor = VaeImageProcessor(vae_scale_factor=factor, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)
    return pipe


# --------------------------------------------------------------------------------------------
# --from: the img2img fields of stored parameters
# --------------------------------------------------------------------------------------------
def _verify(stored: str | None, image: Any, what: str, flag: str) -> None:
    if not stored:
        return
    import logging

    match = hash_matches(stored, image)
    if match is None:
        logging.getLogger(__name__).warning("%s hash %r is not one this version reads; not "
                                            "checked", what, stored)
    elif not match:
        raise SynthexError(f"{flag}: it does not match the stored {what} hash {stored} (it has "
                           f"{image_hash(image)}); pass the {what} the image was made from")


def fields_from_parameters(params: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Request fields for ``--from``: strength, mask blur/padding/inversion from ``params``;
    SynthexError naming the missing flag when the image was made from an init image (``Init
    image hash``) or a mask (``Mask hash``) that ``overrides`` do not give, or when a given one
    has another hash."""
    need = []
    if params.init_image_hash and overrides.get("init_image") is None:
        need.append(f"--init-image PATH (Init image hash {params.init_image_hash})")
    if params.mask_hash and overrides.get("mask") is None:
        need.append(f"--mask PATH or the same --mask-rect (Mask hash {params.mask_hash})")
    if need:
        raise SynthexError("the image was made by " + ("inpainting" if params.mask_hash else "img2img")
                           + "; to re-generate it pass " + " and ".join(need))
    if overrides.get("init_image") is not None:
        _verify(params.init_image_hash, read_image(overrides["init_image"], "init_image"),
                "init image", "--init-image")
    if overrides.get("mask") is not None:
        _verify(params.mask_hash, masks.load_mask(read_image(overrides["mask"], "mask")), "mask",
                "--mask")
    fields: dict[str, Any] = {}
    if params.denoising_strength is not None and overrides.get("init_image") is not None:
        fields["strength"] = params.denoising_strength
    if params.mask_blur is not None:
        fields["mask_blur"] = params.mask_blur
    if params.mask_padding is not None:
        fields["mask_padding"] = params.mask_padding
    if params.invert_mask:
        fields["invert_mask"] = True
    return fields


__all__ = ["DEFAULT_MASK_BLUR", "DEFAULT_STRENGTH", "InitSource", "canonical", "check_model",
           "check_request", "derived_pipeline", "fields_from_parameters", "hash_matches",
           "image_hash", "is_image", "prepare", "read_image", "working_size"]
