"""Feature extractors for fidelity and privacy, and an on-disk feature cache.

Extractors (``EXTRACTORS``):

- ``synthex`` (default, always available): the shipped phantom finding classifier
  (:mod:`synthex.phantom.classifier`); its 96-d pooled features are the embedding and its 16
  sigmoid outputs are kept too (alignment reuses them, so one pass serves both).
- ``xrv``: torchxrayvision's DenseNet-121 ("all" weights) -> 1024-d features ("FXD"). Needs the
  ``torchxrayvision`` code to import (it imports ``torchvision``) and its weights file on disk
  (``weights=`` or the usual ``~/.torchxrayvision/models_data`` cache). Never downloads.
- ``inception``: the FID Inception-v3 (pool3, 2048-d) from the ``pytorch_fid`` package with its
  weights file on disk. Never downloads.

An unavailable extractor raises :class:`SynthexError` with the reason (``availability()`` lists
them all without raising).

The cache stores one ``.npz`` per (folder, extractor id) holding the SHA-1 of each image file's
bytes and its outputs; a later run only computes images whose hash is not there yet.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from synthex.errors import SynthexError
from synthex.io import atomic_write

log = logging.getLogger(__name__)

CACHE_SUBDIR = Path(".synthex") / "features"
XRV_WEIGHTS = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
XRV_CACHE = Path(os.environ.get("TORCHXRAYVISION_CACHE", Path.home() / ".torchxrayvision")) / "models_data"


class Extractor(Protocol):
    id: str
    """Names the extractor, its weights (hash) and input size: the cache key."""
    dim: int
    computed: int
    """Images computed so far (tests and logs use it to see what the cache saved)."""

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


@dataclass
class SynthexExtractor:
    """The in-project CXR encoder (phantom-trained classifier): ``embedding`` (N, 96) and
    ``probs`` (N, 16)."""

    classifier_dir: Path | None = None
    batch_size: int = 64
    computed: int = 0
    model: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from synthex.phantom.classifier import DEFAULT_CLASSIFIER_DIR, WEIGHTS_FILE, load_classifier

        self.model = load_classifier(self.classifier_dir)
        folder = Path(self.classifier_dir or DEFAULT_CLASSIFIER_DIR)
        self.id = f"synthex-{_file_digest(folder / WEIGHTS_FILE)}-{self.model.config.size}"
        self.dim = int(self.model.config.channels[-1])
        self.names = tuple(self.model.config.names)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from synthex.phantom.classifier import to_tensor

        emb, probs = [], []
        for start in range(0, len(images), self.batch_size):
            x = to_tensor(images[start:start + self.batch_size], self.model.config.size)
            e = self.model.embed(x)
            emb.append(e.numpy())
            probs.append(torch.sigmoid(self.model.head(e)).numpy())
        self.computed += len(images)
        return {"embedding": np.concatenate(emb).astype(np.float32),
                "probs": np.concatenate(probs).astype(np.float32)}


@dataclass
class XRVExtractor:
    """torchxrayvision DenseNet-121 'all' weights, 224 px, pooled 1024-d features."""

    weights: Path | None = None
    batch_size: int = 16
    computed: int = 0
    model: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        path = find_xrv_weights(self.weights)
        try:
            import torchxrayvision as xrv
        except Exception as exc:  # noqa: BLE001 - any import failure makes it unavailable
            raise SynthexError(f"extractor 'xrv': torchxrayvision does not import here ({type(exc).__name__}: "
                               f"{exc}); install torchvision, or use --extractor synthex") from None
        model = xrv.models.DenseNet(weights=None, op_threshs=None)
        model.load_state_dict(_xrv_state(path))
        self.model = model.eval()
        self.id, self.dim = f"xrv-densenet121-all-{_file_digest(path)}-224", 1024

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch.nn.functional as F

        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[start:start + self.batch_size].astype(np.float32))[:, None]
            x = F.interpolate(x / 255.0 * 2048 - 1024, size=(224, 224), mode="area")  # xrv's [-1024, 1024]
            out.append(self.model.features2(x).numpy())
        self.computed += len(images)
        return {"embedding": np.concatenate(out).astype(np.float32)}


@dataclass
class InceptionExtractor:
    """The FID Inception-v3 of ``pytorch_fid`` (its weights must be on disk)."""

    weights: Path | None = None
    batch_size: int = 16
    computed: int = 0
    model: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            from pytorch_fid.inception import InceptionV3  # type: ignore[import-not-found]
        except Exception as exc:  # noqa: BLE001
            raise SynthexError(f"extractor 'inception': pytorch_fid does not import here ({type(exc).__name__}: "
                               f"{exc}); install pytorch-fid with its weights, or use --extractor synthex") from None
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        if not any(hub.glob("pt_inception-2015-12-05*.pth")):
            raise SynthexError(f"extractor 'inception': no FID Inception weights in {hub} (pt_inception-2015-12-05"
                               "-*.pth) and downloads are off; copy the file there, or use --extractor synthex")
        self.model = InceptionV3([3]).eval()
        self.id, self.dim = "inception-pool3-299", 2048

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[start:start + self.batch_size].astype(np.float32) / 255.0)[:, None]
            out.append(self.model(x.repeat(1, 3, 1, 1))[0][:, :, 0, 0].numpy())
        self.computed += len(images)
        return {"embedding": np.concatenate(out).astype(np.float32)}


def _xrv_state(path: Path) -> dict:
    """A state dict from a .safetensors file or a tensors-only .pt; the official download is a
    pickled whole model, which is never unpickled here."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled objects are refused by weights_only
        raise SynthexError(
            f"extractor 'xrv': {path} is not a plain state dict ({type(exc).__name__}); the official file is a "
            "pickled model, which SynTheX-Ray does not unpickle. If you trust it, convert it once: python -c "
            f"\"import torch; torch.save(torch.load('{path}', weights_only=False).state_dict(), 'xrv-all.pt')\" "
            "and pass --xrv-weights xrv-all.pt") from None
    return state


def find_xrv_weights(weights: str | Path | None = None) -> Path:
    """The torchxrayvision 'all' DenseNet weights file on disk, or a SynthexError saying where it looked."""
    candidates = [Path(weights)] if weights else [XRV_CACHE / XRV_WEIGHTS]
    for path in candidates:
        if path.is_file():
            return path
    raise SynthexError(f"extractor 'xrv': weights not found at {', '.join(map(str, candidates))} and downloads "
                       "are off; pass --xrv-weights FILE (the densenet121-res224-all .pt), or use --extractor synthex")


EXTRACTORS = {"synthex": SynthexExtractor, "xrv": XRVExtractor, "inception": InceptionExtractor}


def make_extractor(name: str, *, weights: str | Path | None = None) -> Extractor:
    if name not in EXTRACTORS:
        raise SynthexError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    if name == "synthex":
        return SynthexExtractor(Path(weights) if weights else None)
    return EXTRACTORS[name](Path(weights) if weights else None)


def availability(xrv_weights: str | Path | None = None) -> dict[str, str]:
    """Extractor name -> "available" or the reason it is not (loads each to find out)."""
    out = {}
    for name in EXTRACTORS:
        try:
            make_extractor(name, weights=xrv_weights if name == "xrv" else None)
            out[name] = "available"
        except SynthexError as exc:
            out[name] = str(exc)
    return out


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
def cache_dir_for(folder: Path, cache_root: Path | None) -> Path:
    """``<folder>/.synthex/features`` when writable, else ``cache_root/<folder-hash>``."""
    if cache_root is not None:
        key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:10]
        return Path(cache_root) / f"{Path(folder).name}-{key}"
    return Path(folder) / CACHE_SUBDIR


def _read_cache(path: Path) -> dict[str, dict[str, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = [str(k) for k in data["keys"]]
            outputs = {name[4:]: data[name] for name in data.files if name.startswith("out_")}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("feature cache %s unreadable (%s); recomputing", path, exc)
        return {}
    return {k: {name: arr[i] for name, arr in outputs.items()} for i, k in enumerate(keys)}


def _write_cache(path: Path, table: dict[str, dict[str, np.ndarray]]) -> None:
    keys = sorted(table)
    names = sorted(next(iter(table.values()))) if table else []
    arrays = {f"out_{n}": np.stack([table[k][n] for k in keys]) for n in names}
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys, dtype="U40"), **arrays)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def cached_features(extractor: Extractor, images: np.ndarray, hashes: list[str], folder: Path,
                    cache_root: Path | None = None, *, progress: bool = False,
                    chunk: int = 256) -> dict[str, np.ndarray]:
    """Outputs of ``extractor`` for ``images`` (row i has file hash ``hashes[i]``), computing only
    the images whose hash is not cached yet and saving the new ones."""
    from tqdm.auto import tqdm

    path = cache_dir_for(folder, cache_root) / f"{extractor.id}.npz"
    table = _read_cache(path)
    todo = [i for i, h in enumerate(hashes) if h not in table]
    if todo:
        log.info("features (%s): %d cached, computing %d", extractor.id, len(hashes) - len(todo), len(todo))
        for start in tqdm(range(0, len(todo), chunk), desc=f"features {extractor.id.split('-')[0]}",
                          disable=not progress, leave=False):
            idx = todo[start:start + chunk]
            out = extractor(images[idx])
            for j, i in enumerate(idx):
                table[hashes[i]] = {name: arr[j] for name, arr in out.items()}
        try:
            _write_cache(path, table)
        except OSError as exc:
            log.warning("cannot write the feature cache %s (%s); pass --cache DIR", path, exc)
    names = next(iter(table.values())).keys()
    return {name: np.stack([table[h][name] for h in hashes]) for name in names}
