"""Where packaged data lives: the real IU X-ray reports and lung masks shipped by torchxrayvision.

torchxrayvision is located with ``importlib.util.find_spec`` so that its (torchvision-dependent)
code is never imported: only its data files are read.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from synthex.errors import DataSourceError

BUNDLED_REPORTS = "NLMCXR_reports.tgz"
BUNDLED_DICOM_METADATA = "nlmcxr_dicom_metadata.csv.gz"
BUNDLED_LUNG_MASKS = "semantic_masks_v7labs_lungs.zip"

_INSTALL_HINT = "install it with: pip install --no-deps torchxrayvision"


def bundled_data_dir() -> Path:
    """Return torchxrayvision's ``data`` folder, or raise a clear error when it is absent."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            "The bundled IU X-ray reports come from the torchxrayvision package, which is not "
            f"installed; {_INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def bundled_file(name: str) -> Path:
    """Return the path of one of torchxrayvision's data files, checking it exists."""
    path = bundled_data_dir() / name
    if not path.is_file():
        raise DataSourceError(
            f"{path} is missing from the installed torchxrayvision; reinstall it ({_INSTALL_HINT})"
        )
    return path


def member_path(folder: str | Path, name: object) -> Path:
    """The file that one row of a data file (``metadata.csv``, a prompts CSV, a projections
    table) names: ``folder / name``, refused with :class:`~synthex.errors.OutsidePathError` when
    the name is empty, absolute (``/etc/passwd``, ``C:\\x``) or climbs out with ``..``.

    The check is on the text, so an image folder that is a symlink inside ``folder`` still works;
    what a data file says can never reach outside it. Backslashes count as separators (CSV files
    written on Windows).
    """
    from pathlib import PurePosixPath, PureWindowsPath

    from synthex.errors import OutsidePathError

    text = "" if name is None else str(name).strip()
    if not text or text.lower() == "nan":
        raise OutsidePathError(folder, text, "the file name is empty")
    posix = text.replace("\\", "/")
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(text).drive or PureWindowsPath(text).root:
        raise OutsidePathError(folder, text, "an absolute path")
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise OutsidePathError(folder, text, "it climbs out of the folder with '..'")
    return Path(folder).joinpath(*[p for p in parts if p != "."])
