"""The CLI's one error boundary: failures read as one line naming the path and the fix, with no
traceback, whether a command runs from the console script or a CliRunner."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from synthex.cli import app
from synthex.cli.boundary import message_for, report

runner = CliRunner()


def _invoke(args):
    result = runner.invoke(app, args)
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_out_under_a_file_is_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    result, text = _invoke(["phantom", "render", "normal", "--out", str(blocker / "x.png"), "--size", "64"])
    assert result.exit_code == 2, text
    assert "error:" in text and str(blocker) in text and "Traceback" not in text
    assert blocker.read_text() == "mine"


def test_full_disk_names_the_file_and_says_free_space(tmp_path, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "x.png"
    result, text = _invoke(["phantom", "render", "normal", "--out", str(out), "--size", "64"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert result.exit_code == 2, text
    assert str(out) in text and "free space or choose another --out" in text
    assert not out.exists() and not list(tmp_path.iterdir()), "a failed write leaves no partial file"


def test_synthex_errors_and_usage_errors_keep_their_exit_status(tmp_path):
    out = tmp_path / "x.png"
    assert _invoke(["phantom", "render", "normal", "--out", str(out), "--size", "64"])[0].exit_code == 0
    result, text = _invoke(["phantom", "render", "normal", "--out", str(out), "--size", "64"])
    assert result.exit_code == 2 and "already exists" in text and "--overwrite" in text
    assert _invoke(["phantom", "render", "--help"])[0].exit_code == 0
    assert _invoke(["no-such-command"])[0].exit_code == 2


@pytest.mark.parametrize("err, status, words", [
    (MemoryError(), 2, "out of memory"),
    (torch.OutOfMemoryError("CUDA out of memory"), 2, "--batch-size"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/out/x.png"), 2, "/srv/out/x.png"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such"), 2, "check the path"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), 2, "save it as UTF-8"),
])
def test_each_class_of_failure_has_its_line(err, status, words):
    text, code = message_for(err)
    assert code == status and words in text


def test_a_bug_says_so_and_the_traceback_is_one_flag_away(capsys):
    assert report(RuntimeError("boom")) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "boom" in err and "--verbose" in err
    from synthex.cli import boundary

    boundary.show_tracebacks(True)
    try:
        with pytest.raises(RuntimeError):
            report(RuntimeError("boom"))
    finally:
        boundary.show_tracebacks(False)


def test_console_entry_point_prints_no_traceback(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-c", "from synthex.cli import main; main()", "phantom", "render",
                           "normal", "--out", str(blocker / "x.png"), "--size", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(blocker) in proc.stderr
