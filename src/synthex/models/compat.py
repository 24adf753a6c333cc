"""Weights that every supported library version reads the same way, and a loud failure when
they are not.

transformers 5 saves a CLIP text encoder with the keys ``embeddings.*``, ``encoder.*``,
``final_layer_norm.*``; transformers 4 expects ``text_model.embeddings.*`` and loads a file
without the prefix as a *randomly initialised* encoder, with only a warning. transformers 5
reads the prefixed keys too, so we write the prefixed form (:func:`portable_text_encoders`),
and after every load :func:`check_loaded_weights` compares a sample of each component's tensors
with its file, so a component that did not get its weights stops the load with a message.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from synthex.errors import SynthexError

TEXT_PREFIX = "text_model."
_TEXT_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")
_WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")


def portable_key(key: str) -> str:
    """The transformers 4 name of a CLIP text-encoder tensor (what both 4 and 5 read)."""
    return TEXT_PREFIX + key if key.startswith(_TEXT_ROOTS) else key


def portable_text_encoders(folder: str | Path) -> list[Path]:
    """Rewrite the text encoders of a diffusers folder with keys both transformers 4 and 5 read
    (values, dtypes and metadata unchanged); returns the files rewritten."""
    from safetensors import safe_open
    from safetensors.torch import save as save_bytes

    from synthex.io import atomic_write

    changed = []
    for sub in sorted(Path(folder).glob("text_encoder*")):
        path = sub / "model.safetensors"
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if not any(k.startswith(_TEXT_ROOTS) for k in keys):
                continue
            metadata = handle.metadata() or {"format": "pt"}
            tensors = {portable_key(k): handle.get_tensor(k) for k in keys}
        data = save_bytes(tensors, metadata=metadata)
        atomic_write(path, lambda fh, data=data: fh.write(data))
        changed.append(path)
    return changed


_INNER_TEXT = re.compile(r"(?:^|(?<=\.))text_model\.(?=(?:embeddings|encoder|final_layer_norm)\.)")


def _canonical(key: str) -> str:
    previous = None
    while previous != key:
        previous, key = key, _INNER_TEXT.sub("", key, count=1)
    return key


def remap_text_keys(tensors: dict[str, Any], expected: Iterable[str]) -> dict[str, Any]:
    """``tensors`` renamed to the ``expected`` state-dict keys of a module that holds a CLIP text
    model, whichever transformers named them: ``x.text_model.embeddings.*`` (4.x, early 5.x) and
    ``x.embeddings.*`` (later 5.x) are the same tensor. Keys that match already, or that have no
    unique counterpart, are kept as they are (``load_state_dict`` then names what is missing)."""
    expected = list(expected)
    wanted = set(expected)
    if set(tensors) == wanted:
        return tensors
    by_canon: dict[str, str] = {}
    for key in expected:
        if by_canon.setdefault(_canonical(key), key) != key:
            return tensors  # two expected keys read alike: do not guess
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        target = key if key in wanted else by_canon.get(_canonical(key), key)
        if target in out:
            return tensors
        out[target] = value
    return out


def _component_file(folder: Path, name: str) -> Path | None:
    for file in _WEIGHT_FILES:
        if (folder / name / file).is_file():
            return folder / name / file
    return None


def _sample(keys: list[str], n: int = 6) -> list[str]:
    if len(keys) <= n:
        return keys
    step = (len(keys) - 1) / (n - 1)
    return [keys[round(i * step)] for i in range(n)]


def check_loaded_weights(pipe: Any, folder: str | Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise when a pipeline component does not hold the tensors of its file (loaded randomly
    initialised because the library reads other key names). Checks a few tensors per component;
    ``skip`` names components that were passed in from elsewhere (a preset's separate VAE)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model_index.json"
    names = [k for k, v in json.loads(index.read_text(encoding="utf-8")).items()
             if not k.startswith("_") and isinstance(v, list)] if index.is_file() else []
    for name in (n for n in names if n not in skip):
        module = getattr(pipe, name, None)
        file = _component_file(folder, name)
        if not isinstance(module, torch.nn.Module) or file is None:
            continue
        state = module.state_dict()
        with safe_open(str(file), framework="pt") as handle:
            keys = sorted(handle.keys())
            bad = []
            for key in _sample(keys):
                target = next((k for k in (key, portable_key(key), key.removeprefix(TEXT_PREFIX)) if k in state),
                              None)
                stored = handle.get_tensor(key)
                if target is None:
                    bad.append(f"{key} (no such tensor in the loaded model)")
                    continue
                loaded = state[target].detach().to("cpu", torch.float32)
                if loaded.shape != stored.shape or not torch.allclose(loaded, stored.to(torch.float32),
                                                                      rtol=1e-2, atol=1e-3):
                    bad.append(key)
        if bad:
            import transformers

            raise SynthexError(
                f"{what}: component {name!r} did not load the weights of {file} (e.g. {bad[0]}); it would "
                f"run randomly initialised. This transformers ({transformers.__version__}) reads other key "
                "names than the file was saved with: rewrite the file with "
                "'python -m synthex.models.compat FOLDER' or install the transformers version it was made with")


def main(argv: list[str] | None = None) -> int:
    """``python -m synthex.models.compat FOLDER``: make a diffusers folder's text encoders portable."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m synthex.models.compat DIFFUSERS_FOLDER", file=sys.stderr)
        return 2
    for path in portable_text_encoders(args[0]):
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
