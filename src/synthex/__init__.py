"""SynTheX-Ray: clinical text -> synthetic chest X-rays, and the evidence that they are good.

Synthetic images made with this toolkit are for research, not diagnosis.
"""
from __future__ import annotations

__version__ = "0.1.0"
SOFTWARE_NAME = "SynTheX-Ray"
