"""Model registry: presets, family detection, missing-weights messages, LoRA files, freeing."""
from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from synthex.errors import SynthexError
from synthex.generate.engine import Engine, GenerationRequest
from synthex.generate.infotext import short_hash
from synthex.models import registry as reg
from synthex.models.registry import LoraError, ModelNotFoundError, ModelRegistry
from tests.helpers_tiny import make_lora, tiny_model_dir, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv(reg.ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.delenv(reg.MODELS_FILE_ENV, raising=False)
    for env in ("SYNTHEX_SDXL_BASE", "SYNTHEX_SDXL_VAE", "SYNTHEX_LORA_DIR", "SYNTHEX_ROENTGEN"):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture()
def sd_copy(tmp_path) -> Path:
    folder = tmp_path / "sd-copy"
    shutil.copytree(tiny_model_dir("sd"), folder)
    return folder


# ------------------------------------------------------------------------------- presets
def test_packaged_presets():
    registry = ModelRegistry()
    assert registry.default == "embedded"
    assert {"embedded", "sdxl-base", "all-classes", "opacity", "sd15", "roentgen"} <= set(registry.names())
    embedded = registry.resolve(None)
    assert embedded.name == "embedded" and embedded.kind == "folder"
    assert Path(embedded.source) == reg.embedded_dir()
    base = registry.resolve("sdxl-base")
    assert (base.kind, base.family, base.source) == ("hub", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
    assert base.vae == "madebyollin/sdxl-vae-fp16-fix"


def test_lora_presets_extend_sdxl_and_follow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHEX_LORA_DIR", str(tmp_path))
    monkeypatch.setenv("SYNTHEX_SDXL_BASE", str(tmp_path / "sdxl"))
    spec = ModelRegistry().resolve("opacity")
    assert spec.name == "opacity" and spec.family == "sdxl" and spec.kind == "folder"
    assert spec.source == str(tmp_path / "sdxl") and spec.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert [(l.name, l.path, l.scale) for l in spec.loras] == [
        ("opacity", tmp_path / "opacity.safetensors", 0.8)]


def test_user_presets_file(tmp_path):
    presets = tmp_path / "models.yaml"
    presets.write_text(
        f"default: mine\nmodels:\n  mine: {{source: {tiny_model_dir('sd')}}}\n"
        "  loop-a: {base: loop-b}\n  loop-b: {base: loop-a}\n")
    registry = ModelRegistry(presets)
    assert registry.resolve(None).name == "mine" and "sdxl-base" in registry.names()
    with pytest.raises(SynthexError, match="loop"):
        registry.resolve("loop-a")


def test_unknown_model_lists_presets():
    with pytest.raises(ModelNotFoundError, match="neither a preset .*embedded.*sdxl-base"):
        ModelRegistry().resolve("no-such-model")


def test_allow_download_env(monkeypatch):
    monkeypatch.setenv(reg.ALLOW_DOWNLOAD_ENV, "1")
    assert ModelRegistry().allow_download
    monkeypatch.setenv(reg.ALLOW_DOWNLOAD_ENV, "0")
    assert not ModelRegistry().allow_download


# ------------------------------------------------------------------------------- families
@pytest.mark.parametrize("kind, family", [("sd", "sd"), ("sd-l", "sd"), ("sdxl", "sdxl")])
def test_family_detection(kind, family):
    assert reg.detect_family(tiny_model_dir(kind)) == family
    assert reg.missing_files(tiny_model_dir(kind)) == []


def test_unsupported_pipeline_class(sd_copy):
    index = sd_copy / "model_index.json"
    index.write_text(index.read_text().replace("StableDiffusionPipeline", "FluxPipeline"))
    with pytest.raises(SynthexError, match="FluxPipeline.*not supported"):
        reg.detect_family(sd_copy)


def test_load_sdxl_folder():
    loaded = ModelRegistry().load(ModelRegistry().resolve(str(tiny_model_dir("sdxl"))))
    assert loaded.family == "sdxl" and type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    assert loaded.native_size == (64, 64)
    assert loaded.model_hash == short_hash(tiny_model_dir("sdxl") / "unet" / "diffusion_pytorch_model.safetensors")


# ------------------------------------------------------------------------------- missing weights
def test_missing_unet_weights_are_named(sd_copy):
    (sd_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (sd_copy / "tokenizer" / "tokenizer.json").unlink()
    registry = ModelRegistry()
    with pytest.raises(ModelNotFoundError) as err:
        registry.load(registry.resolve(str(sd_copy)))
    message = str(err.value)
    assert "is incomplete" in message and str(sd_copy) in message
    assert "unet/diffusion_pytorch_model.safetensors" in message
    assert "tokenizer/vocab.json" in message and "tokenizer/merges.txt" in message
    assert "vae/" not in message and "Traceback" not in message


def test_missing_folder_lists_expected_files(tmp_path):
    presets = tmp_path / "models.yaml"
    presets.write_text(f"models:\n  gone: {{source: {tmp_path / 'nowhere'}, family: sdxl}}\n")
    with pytest.raises(ModelNotFoundError) as err:
        ModelRegistry(presets).load(ModelRegistry(presets).resolve("gone"))
    message = str(err.value)
    assert "does not exist" in message and "model_index.json" in message
    assert "text_encoder_2/model.safetensors" in message and "unet/config.json" in message


def test_hub_model_not_cached_says_how_to_get_it(tmp_path):
    presets = tmp_path / "models.yaml"
    presets.write_text("models:\n  remote: {source: synthex-tests/not-a-real-repo, family: sdxl, "
                       "local_env: SYNTHEX_REMOTE}\n")
    registry = ModelRegistry(presets)
    with pytest.raises(ModelNotFoundError) as err:
        registry.load(registry.resolve("remote"))
    message = str(err.value)
    assert "not in the Hugging Face cache" in message
    assert "unet/diffusion_pytorch_model.safetensors" in message
    assert "huggingface-cli download synthex-tests/not-a-real-repo" in message
    assert "--local-dir" in message and "SYNTHEX_REMOTE=" in message
    assert "SYNTHEX_ALLOW_DOWNLOAD=1" in message


def test_sdxl_base_offline_message():
    registry = ModelRegistry()
    ok, why = registry.available(registry.resolve("sdxl-base"))
    if ok:
        pytest.skip("SDXL base is in this machine's Hugging Face cache")
    with pytest.raises(ModelNotFoundError, match="stabilityai/stable-diffusion-xl-base-1.0"):
        registry.load(registry.resolve("sdxl-base"))


def test_embedded_model_available_or_explained():
    registry = ModelRegistry()
    ok, why = registry.available(registry.resolve("embedded"))
    if ok:
        assert (reg.embedded_dir() / "model_index.json").is_file()
    else:
        assert "embedded" in why and str(reg.embedded_dir()) in why


def test_pickled_weights_are_not_loaded(sd_copy):
    unet = sd_copy / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_suffix(".bin"))
    assert reg.missing_files(sd_copy) == [
        "unet/diffusion_pytorch_model.safetensors (only pickled .bin weights found; convert them "
        "to safetensors)"]


# ------------------------------------------------------------------------------- single files
def test_lora_given_as_model_is_refused(tmp_path):
    lora = make_lora(tmp_path / "adapter.safetensors")
    registry = ModelRegistry()
    spec = registry.resolve(str(lora))
    assert spec.kind == "file"
    with pytest.raises(SynthexError, match="is a LoRA adapter, not a model"):
        registry.load(spec)


def test_unknown_single_file_is_refused():
    registry = ModelRegistry()
    vae_file = tiny_model_dir("sd") / "vae" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(SynthexError, match="not a Stable Diffusion checkpoint"):
        registry.load(registry.resolve(str(vae_file)))


# ------------------------------------------------------------------------------- LoRA files
@pytest.fixture(scope="module")
def sd_loaded():
    registry = ModelRegistry()
    return registry, registry.load(registry.resolve(str(tiny_model_dir("sd"))))


def test_lora_resolution(tmp_path, sd_loaded):
    registry, loaded = sd_loaded
    lora = make_lora(tmp_path / "my lora.safetensors")
    specs = registry.resolve_loras(loaded.spec, [(str(lora), 0.5), (lora, 1.0)])
    assert [(s.name, s.scale) for s in specs] == [("my_lora", 0.5), ("my_lora_2", 1.0)]
    with pytest.raises(LoraError, match="no such file"):
        registry.resolve_loras(loaded.spec, [(str(tmp_path / "none.safetensors"), 1.0)])


def test_non_lora_file_is_refused(sd_loaded):
    registry, loaded = sd_loaded
    unet = tiny_model_dir("sd") / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(LoraError, match="is not a LoRA adapter"):
        registry.apply_loras(loaded, registry.resolve_loras(loaded.spec, [(unet, 1.0)]))
    assert loaded.loras == {}


def test_pickled_lora_is_refused(tmp_path, sd_loaded):
    registry, loaded = sd_loaded
    fake = tmp_path / "lora.bin"
    fake.write_bytes(b"not read")
    with pytest.raises(LoraError, match="only .safetensors"):
        registry.apply_loras(loaded, registry.resolve_loras(loaded.spec, [(fake, 1.0)]))


def test_lora_for_another_base_is_refused(tmp_path, sd_loaded):
    registry, loaded = sd_loaded
    xl_lora = make_lora(tmp_path / "xl.safetensors", "sdxl")
    with pytest.raises(LoraError, match="does not fit model"):
        registry.apply_loras(loaded, registry.resolve_loras(loaded.spec, [(xl_lora, 1.0)]))
    assert loaded.loras == {} and not any(loaded.pipe.get_list_adapters().values())


# ------------------------------------------------------------------------------- freeing
def test_switching_models_frees_the_previous_one():
    engine = Engine()
    request = GenerationRequest("chest x-ray", model=str(tiny_model_dir("sd")), steps=1)
    engine.generate(request)
    first = weakref.ref(engine.loaded.pipe.unet)
    engine.generate(request)  # same model: cached
    assert engine.loaded.pipe.unet is first()
    request.model = str(tiny_model_dir("sd-l"))
    engine.generate(request)
    gc.collect()
    assert first() is None
    engine.unload()
    assert engine.loaded is None


def test_hash_cache_reuses_results(tmp_path, monkeypatch):
    target = tmp_path / "w.bin"
    target.write_bytes(b"abc" * 100)
    calls = []
    import synthex.io as infotext  # short_hash lives in the low-level io module

    real = infotext.short_hash
    monkeypatch.setattr(infotext, "short_hash", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert reg.cached_short_hash(target, 10) == real(target, 10)
    assert reg.cached_short_hash(target, 10) == real(target, 10)
    assert len(calls) == 1


def test_vae_override_and_missing_vae(tmp_path):
    from tests.helpers_tiny import vae

    vae_dir = tmp_path / "vae-fix"
    replacement = vae()
    replacement.save_pretrained(vae_dir)
    presets = tmp_path / "models.yaml"
    presets.write_text(
        f"models:\n  xl: {{source: {tiny_model_dir('sdxl')}, vae: {vae_dir}}}\n"
        f"  xl-novae: {{source: {tiny_model_dir('sdxl')}, vae: {tmp_path / 'gone'}}}\n")
    registry = ModelRegistry(presets)
    loaded = registry.load(registry.resolve("xl"))
    first = next(iter(replacement.state_dict().values()))
    assert torch.equal(next(iter(loaded.pipe.vae.state_dict().values())), first)
    with pytest.raises(ModelNotFoundError, match="VAE .*gone.* no such folder"):
        registry.load(registry.resolve("xl-novae"))


def test_downloads_only_when_allowed(tmp_path, monkeypatch):
    presets = tmp_path / "models.yaml"
    presets.write_text("models:\n  remote: {source: synthex-tests/not-a-real-repo}\n")
    calls = []

    def fake_download(repo_id, patterns):
        calls.append((repo_id, tuple(patterns)))
        return tiny_model_dir("sd")

    monkeypatch.setattr(reg, "_download", fake_download)
    with pytest.raises(ModelNotFoundError):
        ModelRegistry(presets).load(ModelRegistry(presets).resolve("remote"))
    assert calls == []
    monkeypatch.setenv(reg.ALLOW_DOWNLOAD_ENV, "1")
    registry = ModelRegistry(presets)
    loaded = registry.load(registry.resolve("remote"))
    assert loaded.family == "sd" and calls[0][0] == "synthex-tests/not-a-real-repo"
    assert "*/diffusion_pytorch_model.safetensors" in calls[0][1]
