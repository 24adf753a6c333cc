"""Small file-writing helpers shared by every stage."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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
