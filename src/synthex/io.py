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


# --------------------------------------------------------------------------------------------
# Reading images: the one way every stage opens an image file
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def bomb_checked():
    """Turn PIL's DecompressionBombWarning (more than ``Image.MAX_IMAGE_PIXELS`` pixels) into
    an error, so an image whose header claims a huge size is refused before it is decoded."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def image_read_failure(path: Path | None, exc: BaseException) -> str:
    """The one-line reason an image could not be read."""
    from PIL import Image

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"image header claims too many pixels ({exc}); a decompression bomb or a corrupt "
                f"header (limit {Image.MAX_IMAGE_PIXELS:,} pixels)")
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    try:
        if path is not None and path.is_file() and path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def open_image(source: str | os.PathLike[str] | bytes, *, name: str | None = None):
    """A fully decoded PIL image from a file or bytes, or :class:`~synthex.errors.ImageReadError`
    naming it: missing, empty, not an image, truncated, or a header claiming too many pixels
    (checked before any pixel is decoded). Modes are left as they are."""
    import io as _io

    from PIL import Image

    from synthex.errors import ImageReadError

    path = None if isinstance(source, (bytes, bytearray)) else Path(source)
    label = name or (str(path) if path is not None else "uploaded image")
    try:
        with bomb_checked():
            img = Image.open(_io.BytesIO(bytes(source)) if path is None else path)
            img.load()
        return img
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable file"
        raise ImageReadError(label, image_read_failure(path, exc)) from exc
