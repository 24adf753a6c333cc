"""Training: from scratch (the embedded model) and, elsewhere, LoRA fine-tuning.

- :mod:`synthex.train.data` - read an imagefolder (``metadata.csv`` with ``file_name,text``)
  into tensors, listing every rejected row with its reason.
- :mod:`synthex.train.scratch` - ``train_base``: tokenizer -> VAE -> latent cache -> UNet + text
  encoder, with checkpoints, exact resume, a CSV log and validation grids.

This package imports nothing heavy itself.
"""
from __future__ import annotations
