"""Hostile and foreign image files through every reader: ``synthex info``, ``generate --from``
and the web app's PNG-info upload all use ``read_image_text`` / ``read_image_parameters``."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from synthex.cli.generate import app
from synthex.errors import SynthexError
from synthex.generate.infotext import read_png_parameters
from tests.helpers_tiny import one_thread, tiny_model_dir  # noqa: F401 (autouse fixture)

runner = CliRunner()
TEXT = ("Chest x-ray. Normal.\nNegative prompt: lateral view\nSteps: 2, Sampler: Euler, CFG scale: 7, "
        "Seed: 12, Size: 64x64, Model: sd-l")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(*chunks: bytes, side: int = 40000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(chunks)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _bomb_header(path: Path) -> Path:
    path.write_bytes(_png(_chunk(b"tEXt", b"parameters\x00" + TEXT.encode())))
    return path


def _bomb_text(path: Path) -> Path:
    squeeze = zlib.compressobj(9)
    body = b"".join(squeeze.compress(b"A" * (1 << 20)) for _ in range(200)) + squeeze.flush()
    path.write_bytes(_png(_chunk(b"zTXt", b"parameters\x00\x00" + body), side=8))
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_on_a_40000_pixel_header(tmp_path):
    result = invoke("info", _bomb_header(tmp_path / "big.png"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Chest x-ray. Normal.") and "Seed: 12" in result.output


def test_generate_from_a_40000_pixel_header(tmp_path):
    source = _bomb_header(tmp_path / "big.png")
    result = invoke("generate", "--from", source, "-m", tiny_model_dir("sd-l"), "-q")
    assert result.exit_code == 0, result.output
    assert "pixel-identical to" in result.output and ": no" in result.output
    assert read_png_parameters(tmp_path / "big_regen.png").seed == 12


def test_cli_zip_bomb_is_one_error_line(tmp_path):
    source = _bomb_text(tmp_path / "z.png")
    for args in (("info", source), ("generate", "--from", source, "-m", tiny_model_dir("sd-l"))):
        result = invoke(*args)
        assert result.exit_code != 0
        said = result.output + str(result.exception)
        assert "z.png: its 'parameters' text chunk is larger than 1 MiB" in said
        assert isinstance(result.exception, (SynthexError, SystemExit))


def test_app_upload_uses_the_same_reader(tmp_path):
    from synthex.ui import state

    params, problems = state.parameters_from_upload(_bomb_header(tmp_path / "a.png").read_bytes(), "a.png")
    assert problems == [] and params.seed == 12
    params, problems = state.parameters_from_upload(_bomb_text(tmp_path / "b.png").read_bytes(), "b.png")
    assert params is None and len(problems) == 1
    assert "b.png" in problems[0] and "larger than 1 MiB" in problems[0]


def test_cli_main_prints_one_line(tmp_path):
    """The root CLI turns the SynthexError into one line and exit status 2."""
    import subprocess
    import sys

    for source in (_bomb_text(tmp_path / "z.png"), tmp_path / "missing.png"):
        run = subprocess.run([sys.executable, "-m", "synthex.cli", "info", str(source)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and str(source) in lines[0] and "Traceback" not in run.stderr


def test_prepare_style_metadata_is_not_an_image_column():
    from synthex.generate.batch import label_column

    assert label_column("file_name") == "source_image"
    assert label_column("scan_file_name") == "scan_file"
    assert label_column("file_names") == "source_images"
    assert label_column("seed") == "source_seed" and label_column("finding") == "finding"
    assert np.all([not label_column(c).endswith("_file_name") for c in ("a_file_name", "file_name")])
