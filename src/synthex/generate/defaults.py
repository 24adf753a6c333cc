"""The one source of generation defaults.

:class:`~synthex.generate.engine.GenerationRequest`, :class:`~synthex.generate.batch.SynthesizeOptions`,
:class:`~synthex.evaluate.EvaluationOptions`, the ``synthex generate | synthesize | compare |
evaluate`` options and the web app (:mod:`synthex.ui.state`) take their defaults from here; a test
(``tests/test_engine.py``) fails when one of them declares its own. This module imports nothing,
so the app's pure helpers can use it without loading torch.
"""
from __future__ import annotations

DEFAULT_STEPS = 20
"""Denoising steps (``--steps``)."""
DEFAULT_GUIDANCE = 7.0
"""Classifier-free guidance scale (``--guidance``/``--cfg``); 1.0 or less turns it off."""
DEFAULT_SAMPLER = "DPM++ 2M Karras"
"""Sampler name, A1111 spelling; also :data:`synthex.generate.samplers.DEFAULT_SAMPLER`."""
DEFAULT_N = 1
"""Images per request (per prompt in batch synthesis and evaluation)."""
DEFAULT_CLIP_SKIP = 1
"""A1111's "Clip skip": 1 = the usual text-encoder layer."""
DEFAULT_MODEL = "embedded"
"""Model preset: the small grayscale model shipped in the package."""
DEFAULT_STRENGTH = 0.75
"""img2img/inpainting denoising strength (``--strength``): 0 keeps the init image, 1 repaints it."""
DEFAULT_MASK_BLUR = 4
"""Inpainting mask blur in pixels (``--mask-blur``), A1111's default."""
DEFAULT_WIDTH: int | None = None
DEFAULT_HEIGHT: int | None = None
"""None: the model's native size."""

APP_STEPS = 30
APP_GUIDANCE = 7.5
"""The web app's slider defaults deliberately follow the thesis app (30 steps, CFG 7.5), not the
CLI's; see docs/ui.md. Everything else in the app uses the defaults above."""

__all__ = ["APP_GUIDANCE", "APP_STEPS", "DEFAULT_CLIP_SKIP", "DEFAULT_GUIDANCE", "DEFAULT_HEIGHT",
           "DEFAULT_MASK_BLUR", "DEFAULT_MODEL", "DEFAULT_N", "DEFAULT_SAMPLER", "DEFAULT_STEPS",
           "DEFAULT_STRENGTH", "DEFAULT_WIDTH"]
