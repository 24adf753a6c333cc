"""Inpainting masks: reading, rectangles, blur, bounding boxes and the "Only masked" crop.

A mask is a PIL image of mode ``"L"``: white (255) = repaint, black (0) = keep, the
AUTOMATIC1111 convention. :func:`load_mask` and :func:`binary_mask` make any image such a
binary mask the way A1111 does (an RGBA image with a painted alpha channel uses the alpha;
otherwise grey values above 128 count as white). Blurred masks (:func:`blur_mask`) hold the
soft edge used to blend the generated pixels into the original (:func:`composite`): where the
blurred mask is 0 the result is exactly the original pixel.

"Only masked" inpainting (A1111's *Inpaint area: Only masked*) crops the mask's bounding box
plus a padding, widened to the aspect ratio of the working size (:func:`crop_region`), inpaints
that crop at the working size and pastes it back (:func:`paste_crop`).
"""
from __future__ import annotations

import os
import re
from typing import Any

from synthex.errors import SynthexError

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive (PIL's crop box)."""

WHITE_ABOVE = 128
"""Grey values above this are "repaint" (A1111's ``create_binary_mask``)."""
_RECT = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")


def binary_mask(image: Any) -> Any:
    """``image`` as a 0/255 mode-"L" mask: an RGBA/LA image whose alpha is used (not all
    opaque) gives its alpha channel, anything else its grey values; > 128 is white."""
    if image.mode in ("RGBA", "LA", "PA") and image.getchannel("A").getextrema() != (255, 255):
        grey = image.getchannel("A")
    else:
        grey = to_8bit(image).convert("L")
    return grey.point(lambda v: 255 if v > WHITE_ABOVE else 0)


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(image: Any) -> Any:
    """16-bit/32-bit grey images (16-bit PNG X-rays) as mode "L", scaled by their bit depth
    (PIL's own conversion clips them at 255); other images unchanged."""
    import numpy as np
    from PIL import Image

    if image.mode not in _WIDE_MODES:
        return image
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
        array = array * scale
    else:
        array = array / 257.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else array
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def load_mask(source: str | os.PathLike[str] | bytes | Any, *, name: str | None = None) -> Any:
    """A binary mask (:func:`binary_mask`) from a path, bytes or a PIL image; an unreadable file
    raises :class:`~synthex.errors.ImageReadError` (via :func:`synthex.io.open_image`)."""
    from synthex.io import open_image

    image = source if hasattr(source, "getchannel") else open_image(source, name=name)
    return binary_mask(image)


def invert_mask(mask: Any) -> Any:
    """White <-> black (A1111's *Mask mode: Inpaint not masked*)."""
    from PIL import ImageOps

    return ImageOps.invert(mask.convert("L"))


def parse_rect(text: str) -> Box:
    """``"x0,y0,x1,y1"`` -> a box; SynthexError saying how to write it otherwise."""
    match = _RECT.match(text or "")
    if match is None:
        raise SynthexError(f"--mask-rect {text!r}: give four whole numbers x0,y0,x1,y1 (pixels of "
                           "the init image, x1/y1 exclusive), e.g. --mask-rect 16,16,48,40")
    x0, y0, x1, y1 = (int(v) for v in match.groups())
    return x0, y0, x1, y1


def check_box(box: Box, size: tuple[int, int]) -> str | None:
    """None when ``box`` is a non-empty rectangle inside an image of ``size``, else why not."""
    x0, y0, x1, y1 = box
    width, height = size
    if x0 >= x1 or y0 >= y1:
        return (f"rectangle {x0},{y0},{x1},{y1} is empty: x0 < x1 and y0 < y1 are needed "
                "(x1/y1 are exclusive)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return (f"rectangle {x0},{y0},{x1},{y1} does not fit the {width}x{height} init image "
                f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})")
    return None


def rect_mask(size: tuple[int, int], box: Box) -> Any:
    """A ``size`` mask, white inside ``box`` (x1/y1 exclusive) and black elsewhere;
    SynthexError for a box that is empty or outside the image."""
    from PIL import Image, ImageDraw

    problem = check_box(box, size)
    if problem:
        raise SynthexError(f"--mask-rect: {problem}")
    mask = Image.new("L", size, 0)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    return mask


def blur_mask(mask: Any, radius: int) -> Any:
    """The mask with a Gaussian blur of ``radius`` pixels (0: unchanged), A1111's mask blur."""
    from PIL import ImageFilter

    if radius <= 0:
        return mask.convert("L")
    return mask.convert("L").filter(ImageFilter.GaussianBlur(radius))


def mask_bbox(mask: Any) -> Box | None:
    """The bounding box of the non-black pixels, or None when the mask selects nothing."""
    return mask.convert("L").getbbox()


def _fit_axis(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to ``want`` pixels around its centre, shifted to stay inside [0, limit)."""
    want = min(max(want, hi - lo), limit)
    grow = want - (hi - lo)
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return max(lo, 0), min(hi, limit)


def crop_region(mask: Any, padding: int, target: tuple[int, int]) -> Box:
    """A1111's "Only masked" crop: the mask's bounding box plus ``padding`` pixels, clamped to
    the image, then widened (never shrunk) to the aspect ratio of ``target`` (the working
    width, height) where the image allows. SynthexError when the mask selects nothing."""
    box = mask_bbox(mask)
    if box is None:
        raise SynthexError("mask selects nothing: paint the area to repaint white")
    width, height = mask.size
    x0, y0 = max(box[0] - padding, 0), max(box[1] - padding, 0)
    x1, y1 = min(box[2] + padding, width), min(box[3] + padding, height)
    ratio = target[0] / target[1]
    if (x1 - x0) / (y1 - y0) > ratio:
        y0, y1 = _fit_axis(y0, y1, round((x1 - x0) / ratio), height)
    else:
        x0, x1 = _fit_axis(x0, x1, round((y1 - y0) * ratio), width)
    return x0, y0, x1, y1


def crop_to(image: Any, box: Box, size: tuple[int, int], *, mask: bool = False) -> Any:
    """``image`` cropped to ``box`` and resized to ``size`` (Lanczos; a mask stays binary)."""
    from PIL import Image

    crop = image.crop(box)
    if crop.size == tuple(size):
        return crop
    resized = crop.resize(size, Image.Resampling.LANCZOS)
    return binary_mask(resized) if mask else resized


def paste_crop(base: Any, patch: Any, box: Box) -> Any:
    """A copy of ``base`` with ``patch`` resized (Lanczos) to ``box`` and pasted there."""
    from PIL import Image

    size = (box[2] - box[0], box[3] - box[1])
    out = base.copy()
    out.paste(patch.convert(base.mode).resize(size, Image.Resampling.LANCZOS), box[:2])
    return out


def composite(original: Any, generated: Any, mask: Any) -> Any:
    """``generated`` where the (blurred) mask is white, ``original`` where it is black, blended
    in between (A1111's mask overlay). Pixels under mask 0 are exactly the original's."""
    from PIL import Image

    return Image.composite(generated.convert(original.mode), original, mask.convert("L"))


__all__ = ["Box", "binary_mask", "blur_mask", "check_box", "composite", "crop_region", "crop_to",
           "invert_mask", "load_mask", "mask_bbox", "paste_crop", "parse_rect", "rect_mask",
           "to_8bit"]
