"""Shared offline fixtures: tiny Kaggle and Open-i layouts built from the real bundled reports."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthex.paths import BUNDLED_REPORTS, bundled_file

# Real report ids chosen for variety: normal, cardiomegaly, opacity/atelectasis, no indexing.
SAMPLE_UIDS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "1000", "1001"]


@pytest.fixture(scope="session")
def bundled_xml() -> dict[str, bytes]:
    """uid -> raw XML bytes of a few real reports."""
    wanted = {f"ecgen-radiology/{u}.xml" for u in SAMPLE_UIDS}
    out = {}
    with tarfile.open(bundled_file(BUNDLED_REPORTS)) as tar:
        for member in tar:
            if member.name in wanted:
                out[Path(member.name).stem] = tar.extractfile(member).read()
    return out


@pytest.fixture()
def openi_dir(tmp_path: Path, bundled_xml: dict[str, bytes]) -> Path:
    folder = tmp_path / "openi" / "ecgen-radiology"
    folder.mkdir(parents=True)
    for uid, data in bundled_xml.items():
        (folder / f"{uid}.xml").write_bytes(data)
    return tmp_path / "openi"


@pytest.fixture()
def openi_tar(tmp_path: Path, bundled_xml: dict[str, bytes]) -> Path:
    path = tmp_path / "reports.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for uid, data in bundled_xml.items():
            info = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_png(path: Path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), mode="L").save(path)


def make_kaggle(root: Path, *, n_patients: int = 12, with_images: bool = True) -> Path:
    """A Kaggle-layout folder: each patient one frontal + one lateral; patient 3 two frontals;
    patient 4 a quality-filter hit; half the patients normal."""
    reports, projections = [], []
    for i in range(1, n_patients + 1):
        normal = i % 2 == 0
        mesh = "normal" if normal else ("Cardiomegaly/mild;Opacity/lung/base/right" if i % 3 else "Opacity/lung/upper lobe/left")
        if i == 4:
            mesh = "Technical Quality of Image Unsatisfactory"
        findings = "The lungs are clear. Heart size normal." + (" XXXX are grossly normal." * (i % 2)) + " x" * i
        reports.append({"uid": i, "MeSH": mesh, "Problems": mesh.split("/")[0], "image": "Xray Chest PA and Lateral",
                        "indication": "Cough", "comparison": "None.", "findings": findings,
                        "impression": "No acute disease." if normal else "Abnormal."})
        names = [(f"{i}_IM-{i:04d}-1001.dcm.png", "Frontal"), (f"{i}_IM-{i:04d}-2001.dcm.png", "Lateral")]
        if i == 3:
            names.append((f"{i}_IM-{i:04d}-3001.dcm.png", "Frontal"))
        for name, proj in names:
            projections.append({"uid": i, "filename": name, "projection": proj})
            if with_images:
                write_png(root / "images" / "images_normalized" / name, 40 + i, 48, seed=i)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(reports).to_csv(root / "indiana_reports.csv", index=False)
    pd.DataFrame(projections).to_csv(root / "indiana_projections.csv", index=False)
    return root


@pytest.fixture()
def kaggle_dir(tmp_path: Path) -> Path:
    return make_kaggle(tmp_path / "kaggle")


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_config(tmp_path_factory):
    """Keep the user's model presets file (``synthex train lora --register``) out of tests."""
    import os

    before = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "SYNTHEX_MODELS_FILE")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    os.environ.pop("SYNTHEX_MODELS_FILE", None)
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
