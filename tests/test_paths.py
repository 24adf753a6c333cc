"""One path check for every file named inside a data file (issue 13)."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthex.errors import DataSourceError, OutsidePathError
from synthex.paths import member_path


@pytest.mark.parametrize("name, expected", [
    ("a.png", "a.png"), ("images/b.png", "images/b.png"), ("./c.png", "c.png"), ("images\\d.png", "images/d.png"),
])
def test_relative_names_stay_inside(name, expected):
    assert member_path(Path("/data"), name) == Path("/data") / expected


@pytest.mark.parametrize("name, why", [
    ("../x.png", "climbs out"), ("a/../../b.png", "climbs out"), ("..\\..\\etc\\passwd", "climbs out"),
    ("/etc/passwd", "absolute"), ("C:\\Windows\\x.png", "absolute"), ("\\\\server\\share\\x.png", "absolute"),
    ("", "empty"), ("   ", "empty"), (None, "empty"),
])
def test_names_reaching_outside_are_refused_with_the_reason(name, why):
    with pytest.raises(OutsidePathError, match=why) as info:
        member_path(Path("/data"), name)
    assert isinstance(info.value, DataSourceError) and "/data" in str(info.value)


def _bomb_png(path: Path) -> Path:
    """A valid PNG header that claims 40000 x 40000 pixels (1.6 gigapixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_every_stage_opens_images_the_one_checked_way(tmp_path):
    """A decompression-bomb header or an empty file is a reject with its reason in evaluate,
    train and search (the search index used to stop with an internal error)."""
    import numpy as np
    from PIL import Image

    from synthex.errors import ImageReadError
    from synthex.evaluate.data import load_image_set
    from synthex.io import open_image
    from synthex.train.data import load_imagefolder

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(10):
        Image.fromarray(np.full((32, 32), 20 * i, np.uint8)).save(folder / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,cardiomegaly")
    _bomb_png(folder / "images" / "bomb.png")
    (folder / "images" / "empty.png").write_bytes(b"")
    rows += ["images/bomb.png,effusion", "images/empty.png,effusion"]
    (folder / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    with pytest.raises(ImageReadError, match="too many pixels"):
        open_image(folder / "images" / "bomb.png")
    with pytest.raises(ImageReadError, match="empty file"):
        open_image(folder / "images" / "empty.png")
    with pytest.raises(ImageReadError, match="uploaded image"):
        open_image(b"not an image")
    evaluated = load_image_set(folder, "real")
    reasons = {Path(p).name: why for p, why in evaluated.rejects}
    assert len(evaluated) == 10 and "too many pixels" in reasons["bomb.png"] and "empty" in reasons["empty.png"]
    trained = load_imagefolder(folder, 32, split=None)
    reasons = {Path(r.file_name).name: r.reason for r in trained.rejects}
    assert len(trained.file_names) == 10 and "too many pixels" in reasons["bomb.png"]
    from typer.testing import CliRunner

    from synthex.cli import app

    result = CliRunner().invoke(app, ["search", "index", str(folder), "--out", str(tmp_path / "index"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "not indexed: 2 file(s)" in result.output and "internal error" not in result.output
