"""``synthex ui``: start the Streamlit web app (:mod:`synthex.ui.app`).

Call :func:`register` on the root Typer app to add the command.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from synthex.errors import SynthexError
from synthex.ui.state import ROOTS_ENV

INSTALL_HINT = "The web app needs Streamlit: pip install 'synthex[ui]' (or pip install streamlit)."


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line for the app."""
    from synthex.ui import APP_PATH

    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address,
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def ui(
    port: int = typer.Option(8501, "--port", "-p", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option("localhost", "--address",
                                help="Interface to listen on (0.0.0.0 to serve your network)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model offered first (preset, folder); "
                                             "default: the embedded model."),
    allow_root: Optional[list[Path]] = typer.Option(
        None, "--allow-root", help="Also let the app open models, LoRAs and search indexes by path in this folder "
        "(repeat for several); always allowed: ./runs, the embedded model and the model registry's folders."),
) -> None:
    """Start the web app (Streamlit) on http://ADDRESS:PORT. Images are synthetic, for research."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        typer.secho(f"error: {INSTALL_HINT}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    env = dict(os.environ)
    if model:
        env["SYNTHEX_UI_MODEL"] = model
    if allow_root:
        missing = [str(p) for p in allow_root if not p.is_dir()]
        if missing:
            raise SynthexError(f"--allow-root {', '.join(missing)}: not a folder; name existing folders")
        env[ROOTS_ENV] = os.pathsep.join(str(p.resolve()) for p in allow_root)
    if address not in ("localhost", "127.0.0.1", "::1"):
        typer.secho(f"note: serving on {address}: anyone who can reach port {port} can generate images, use "
                    "this machine's CPU/GPU, and load models and LoRAs from the allowed folders (see "
                    "docs/ui.md, 'Serving to a network'). There is no login.", fg=typer.colors.YELLOW, err=True)
    command = streamlit_command(port, address)
    typer.echo(f"SynTheX-Ray web app on http://{address}:{port} (Ctrl-C stops it)")
    sys.stdout.flush()
    if os.name == "posix":  # become the server: signals (Ctrl-C, SIGTERM) reach it directly
        os.execve(sys.executable, command, env)
    try:
        code = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def register(root_app: typer.Typer) -> None:
    """Add the ``ui`` command to the root ``synthex`` app."""
    root_app.command("ui")(ui)


__all__ = ["INSTALL_HINT", "register", "streamlit_command", "ui"]
