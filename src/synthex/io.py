"""Small file-writing helpers shared by every stage."""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from synthex.errors import SynthexError


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], suffix: str = ".tmp") -> None:
    """Write through a hidden temp file in the same folder (flushed to disk), then rename it
    over ``path``. An interrupted write leaves at most a ``.<name>.<random><suffix>`` file,
    never a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def short_hash(path_or_bytes: str | os.PathLike[str] | bytes, length: int = 10) -> str:
    """First ``length`` hex digits of the SHA-256 of a file or of bytes.

    A1111 writes 10 digits as ``Model hash`` and 12 in ``Lora hashes``.
    """
    digest = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        digest.update(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        if not path.is_file():
            raise SynthexError(f"{path}: no such file to hash")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def _read_source(path_or_bytes: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes)
    path = Path(path_or_bytes)
    if not path.is_file():
        raise SynthexError(f"{path}: no such file to hash")
    return path.read_bytes()


def addnet_hash(path_or_bytes: str | os.PathLike[str] | bytes) -> str:
    """The "addnet" hash of a .safetensors file: SHA-256 (64 hex digits) of the bytes after the
    header, so that editing the metadata does not change it.

    AUTOMATIC1111 writes its first 12 digits in ``Lora hashes``; kohya sd-scripts stores it as
    ``sshs_model_hash``; civitai looks LoRAs up by it.
    """
    data = _read_source(path_or_bytes)
    if len(data) < 8:
        raise SynthexError("not a .safetensors file (shorter than its 8-byte header length)")
    header_len = int.from_bytes(data[:8], "little")
    if 8 + header_len > len(data):
        raise SynthexError("not a .safetensors file (the header length runs past the end of the file)")
    return hashlib.sha256(data[8 + header_len:]).hexdigest()


def addnet_legacy_hash(path_or_bytes: str | os.PathLike[str] | bytes) -> str:
    """kohya's ``sshs_legacy_hash``: 8 hex digits of the SHA-256 of 64 KiB read at offset 1 MiB
    (the old AUTOMATIC1111 model hash; empty input past 1 MiB hashes the empty string)."""
    data = _read_source(path_or_bytes)
    return hashlib.sha256(data[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
