"""Weights every supported transformers reads the same way, and a loud failure when a model
component loads without its weights (issue 13 item 11)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from synthex.errors import SynthexError
from synthex.models.compat import check_loaded_weights, portable_key, portable_text_encoders
from synthex.models.registry import ModelRegistry, embedded_dir
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)


def _copy(tmp_path: Path, kind: str) -> Path:
    return Path(shutil.copytree(tiny_model_dir(kind), tmp_path / kind))


def _embed(loaded) -> torch.Tensor:
    pipe = loaded.pipe
    ids = pipe.tokenizer(["cardiomegaly"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_shipped_text_encoder_uses_the_keys_transformers_4_and_5_both_read():
    with safe_open(str(embedded_dir() / "text_encoder" / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)


@pytest.mark.parametrize("kind", ["sd-l", "sdxl"])
def test_portable_rewrite_keeps_every_value_and_the_model_loads_the_same(tmp_path, kind):
    folder = _copy(tmp_path, kind)
    registry = ModelRegistry()
    before = _embed(registry.load(registry.resolve(str(folder)), device="cpu"))
    files = sorted((folder).glob("text_encoder*/model.safetensors"))
    old = {f: load_file(f) for f in files}
    assert portable_text_encoders(folder) == [f for f in files if any(portable_key(k) != k for k in old[f])]
    for f in files:
        new = load_file(f)
        assert set(new) == {portable_key(k) for k in old[f]}
        assert all(torch.equal(v, new[portable_key(k)]) for k, v in old[f].items())
    assert portable_text_encoders(folder) == []  # already portable: nothing to do
    after = _embed(registry.load(registry.resolve(str(folder)), device="cpu"))
    assert torch.equal(before, after)


def test_a_component_loaded_without_its_weights_stops_the_load(tmp_path):
    folder = _copy(tmp_path, "sd-l")
    path = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(path)
    save_file({"other_naming." + k: v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    registry = ModelRegistry()
    with pytest.raises(SynthexError, match=r"component 'text_encoder' did not load the weights"):
        registry.load(registry.resolve(str(folder)), device="cpu")


def test_the_check_passes_a_good_pipeline_and_catches_a_changed_tensor(tmp_path):
    folder = _copy(tmp_path, "sd-l")
    registry = ModelRegistry()
    loaded = registry.load(registry.resolve(str(folder)), device="cpu")
    check_loaded_weights(loaded.pipe, folder, "tiny")
    with torch.no_grad():
        for p in loaded.pipe.unet.parameters():
            p.add_(1.0)
    with pytest.raises(SynthexError, match="'unet'"):
        check_loaded_weights(loaded.pipe, folder, "tiny")


def test_search_model_loads_under_either_text_model_naming(tmp_path):
    """transformers 5.0 nests CLIPTextModel's tensors under text_model.text_model.*, 5.23 does
    not; the shipped search model (saved by 5.23) must load on every version we allow."""
    import re

    from synthex.models.compat import remap_text_keys
    from synthex.search.model import DEFAULT_SEARCH_DIR, load_search_model

    folder = Path(shutil.copytree(DEFAULT_SEARCH_DIR, tmp_path / "search"))
    tensors = load_file(folder / "model.safetensors")
    nested = {re.sub(r"^(\w+\.)((?:embeddings|encoder|final_layer_norm)\.)", r"\1text_model.\2", k): v
              for k, v in tensors.items()}
    assert nested.keys() != tensors.keys()
    save_file(nested, str(folder / "model.safetensors"))
    shipped, copy = load_search_model(), load_search_model(folder)
    for (name, a), b in zip(shipped.model.state_dict().items(), copy.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert remap_text_keys(nested, tensors.keys()).keys() == tensors.keys()
    assert remap_text_keys(tensors, nested.keys()).keys() == nested.keys()
    clash = {"text_model.embeddings.w": 1, "embeddings.w": 2}
    assert remap_text_keys(clash, ["text_model.text_model.embeddings.w", "proj"]) is clash  # no guessing
