"""Models: the shipped default (embedded) model and, elsewhere, the registry of other presets.

- :mod:`synthex.models.embedded` - architecture of the small grayscale text-to-X-ray latent
  diffusion model that ships inside the package (component configs, building a
  ``StableDiffusionPipeline`` from components, where its weights live).

This package imports nothing heavy itself.
"""
from __future__ import annotations
