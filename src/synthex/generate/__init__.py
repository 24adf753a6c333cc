"""Generation: one engine turns a request into an image plus its parameters.

Building blocks (import them from their modules; this package imports nothing heavy itself):

- :mod:`synthex.generate.weighting` - AUTOMATIC1111 prompt weighting ``(word:1.5)``, long prompts
  in 75-token chunks, and prompt embeddings ready for diffusers SD / SDXL pipelines.
- :mod:`synthex.generate.infotext` - the AUTOMATIC1111 ``parameters`` PNG text chunk (write and
  parse), synthetic-image labels, atomic PNG writes, model short hashes.
- :mod:`synthex.generate.samplers` - sampler names as SD users know them ("DPM++ 2M Karras")
  mapped to diffusers schedulers.
"""
from __future__ import annotations
