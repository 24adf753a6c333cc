"""The SynTheX-Ray web app (Streamlit): ``synthex ui`` runs :mod:`synthex.ui.app`.

:mod:`synthex.ui.state` holds the page's pure helpers; all model work goes through
:mod:`synthex.generate.engine`.
"""
from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
"""The Streamlit script (``streamlit run APP_PATH``)."""

__all__ = ["APP_PATH"]
