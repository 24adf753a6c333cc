"""Patient anatomy of the chest X-ray phantom: real lung shapes, patient parameters, normal density.

Three layers, each usable on its own:

1. :class:`LungLibrary` -- the real lung outlines. torchxrayvision ships 517 real lung
   segmentation masks; each is thresholded, reduced to its two largest components, checked
   (two well separated, similar, solid lungs, not cut by the image border), cropped to the
   bounding box of the pair and resampled to a canonical ``GRID x GRID`` frame. The accepted
   masks are cached on disk (packed bits, a few MB) so that only the first use pays the
   decoding (a few seconds). Without torchxrayvision a small parametric library is used and a
   warning is logged.
2. :class:`PatientParams` -- everything that makes one patient differ from another (lung shape,
   size, position, rotation, inspiration, heart size, exposure, noise, ...), drawn from its own
   random stream by :func:`draw_patient` before any finding is looked at.
3. :func:`build_anatomy` -- the normal (or geometrically modified: larger heart, lower or higher
   diaphragm, curved spine) density map of a patient, a float image in which soft tissue is
   about 1, aerated lung far lower and bone and metal higher: "dense = bright".

Coordinates. ``x, y`` are image coordinates in [0, 1] (x to the right, y down). ``u, v`` are
patient coordinates: the image coordinates after undoing the patient's shift and in-plane
rotation; the midline of a centred patient is ``u = 0.5``. Radiological convention: the
patient's RIGHT is on the image's LEFT, so the patient's right lung has the smaller ``u``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import math
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

GRID = 160
"""Side of the canonical lung-mask frame (the pair's bounding box plus a margin)."""
MARGIN = 0.12
"""Margin of the canonical frame around the pair's bounding box, in box widths/heights."""
LIBRARY_VERSION = 2
SIDES = ("right", "left")
"""Patient sides. ``u`` direction of each side: right = image left (-1), left = image right (+1)."""
SIDE_SIGN = {"right": -1.0, "left": 1.0}


# =============================================================================================
# 1. The real lung-shape library
# =============================================================================================
@dataclass(frozen=True)
class LungShape:
    """One accepted real lung mask pair in the canonical frame.

    ``right``/``left`` are boolean ``GRID x GRID`` masks of the patient's right lung (image
    left) and left lung; grid index ``i`` maps to the box coordinate ``-MARGIN + i * STEP``
    (0..1 spans the pair's bounding box). ``aspect`` is the box height over its width.
    """

    name: str
    right: np.ndarray
    left: np.ndarray
    aspect: float


@dataclass(frozen=True)
class ShapeInfo:
    """Landmarks of a :class:`LungShape` in box coordinates (a: 0..1 across, b: 0..1 down)."""

    sdf: dict[str, np.ndarray]  # signed distance (box-width units, > 0 outside) per side
    bottom: dict[str, np.ndarray]  # lowest lung b per grid column (NaN where no lung)
    medial_a: dict[str, float]  # medial edge of each lung at the hilum level
    dome_b: dict[str, float]  # highest point of each diaphragm dome
    cp_b: dict[str, float]  # lowest point of each lung (costophrenic angle)
    centre_a: dict[str, float]  # centre of each lung across


STEP = (1.0 + 2 * MARGIN) / (GRID - 1)
ASPECT_GAIN = 1.1


class LungLibrary:
    """The accepted lung shapes, with lazily computed landmarks (see :class:`ShapeInfo`)."""

    def __init__(self, shapes: list[LungShape], source: str):
        if not shapes:
            raise ValueError("a lung library needs at least one shape")
        self.shapes = tuple(shapes)
        self.source = source
        self._info = functools.lru_cache(maxsize=None)(self._compute_info)

    def __len__(self) -> int:
        return len(self.shapes)

    def info(self, index: int) -> ShapeInfo:
        """Landmarks and signed distance fields of shape ``index`` (cached)."""
        return self._info(index)

    def _compute_info(self, index: int) -> ShapeInfo:
        shape = self.shapes[index]
        sampling = (STEP * shape.aspect, STEP)
        sdf, bottom, medial, dome, cp, centre = {}, {}, {}, {}, {}, {}
        grid_b = -MARGIN + STEP * np.arange(GRID)
        for side in SIDES:
            mask = getattr(shape, side)
            outside = ndi.distance_transform_edt(~mask, sampling=sampling)
            inside = ndi.distance_transform_edt(mask, sampling=sampling)
            sdf[side] = ndi.gaussian_filter((outside - inside).astype(np.float32), 1.3)
            rows = np.where(mask.any(axis=1))[0]
            cols = np.where(mask.any(axis=0))[0]
            last = GRID - 1 - np.argmax(mask[::-1], axis=0)
            bottom[side] = np.where(mask.any(axis=0), grid_b[last], np.nan)
            hilum_row = rows[0] + int(0.38 * (rows[-1] - rows[0]))
            row_cols = np.where(mask[hilum_row])[0]
            medial[side] = float(grid_b[row_cols.max() if side == "right" else row_cols.min()])
            c0, c1 = cols[0], cols[-1]
            core = slice(c0 + (c1 - c0) // 4, c1 - (c1 - c0) // 4 + 1)
            dome[side] = float(np.nanmin(bottom[side][core]))
            cp[side] = float(grid_b[rows[-1]])
            centre[side] = float(grid_b[(c0 + c1) // 2])
        return ShapeInfo(sdf, bottom, medial, dome, cp, centre)


def cache_dir() -> Path:
    """Folder for derived caches: ``$SYNTHEX_CACHE_DIR`` or ``~/.cache/synthex``."""
    env = os.environ.get("SYNTHEX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synthex"


@functools.lru_cache(maxsize=1)
def load_lung_library() -> LungLibrary:
    """The real lung shapes from torchxrayvision's mask zip (cached), or a parametric fallback."""
    from synthex.errors import DataSourceError
    from synthex.paths import BUNDLED_LUNG_MASKS, bundled_file

    try:
        zip_path = bundled_file(BUNDLED_LUNG_MASKS)
    except DataSourceError as err:
        log.warning("real lung masks unavailable (%s); using parametric lung shapes", err)
        return LungLibrary(parametric_shapes(), source="parametric")
    stat = zip_path.stat()
    key = hashlib.sha1(f"{stat.st_size}:{LIBRARY_VERSION}:{GRID}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"phantom_lungs_{key}.npz"
    if cached.is_file():
        try:
            return LungLibrary(_read_cache(cached), source=f"{zip_path.name} (cached)")
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable lung cache %s: %s", cached, err)
    shapes = build_shapes_from_zip(zip_path)
    _write_cache(cached, shapes)
    return LungLibrary(shapes, source=zip_path.name)


def build_shapes_from_zip(zip_path: Path) -> list[LungShape]:
    """Decode, check and canonicalise every mask of the zip; log how many were rejected and why."""
    from PIL import Image

    shapes: list[LungShape] = []
    rejected: dict[str, int] = {}
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
        for name in names:
            with Image.open(io.BytesIO(archive.read(name))) as img:
                img.draft("L", (512, 512))
                gray = img.convert("L")
                scale = 256 / max(gray.size)
                small = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                                    Image.BILINEAR)
            result = canonical_pair(np.asarray(small) > 160, name=Path(name).name)
            if isinstance(result, str):
                rejected[result] = rejected.get(result, 0) + 1
            else:
                shapes.append(result)
    shapes = _drop_duplicates(shapes, rejected)
    log.info("lung library: %d of %d real masks accepted; rejected: %s", len(shapes), len(names), rejected)
    return shapes


def canonical_pair(mask: np.ndarray, name: str = "mask") -> LungShape | str:
    """Check one binary mask image and map it to the canonical frame, or return why not."""
    mask = ndi.binary_fill_holes(mask)
    labels, count = ndi.label(mask)
    if count < 2:
        return "fewer than two lungs"
    areas = np.bincount(labels.ravel())[1:]
    first, second = np.argsort(areas)[::-1][:2]
    if areas[second] < 0.55 * areas[first] or areas[second] < 0.02 * mask.size:
        return "unequal or tiny lungs"
    comps = [labels == first + 1, labels == second + 1]
    comps.sort(key=lambda c: np.nonzero(c)[1].mean())
    right, left = comps
    reason = _check_pair(right, left)
    if reason:
        return reason
    rows = np.where((right | left).any(axis=1))[0]
    cols = np.where((right | left).any(axis=0))[0]
    box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    aspect = (box[1] - box[0]) / (box[3] - box[2])
    return LungShape(name, _resample(right, box), _resample(left, box), float(aspect))


def _check_pair(right: np.ndarray, left: np.ndarray) -> str:
    """Empty string when the pair looks like two sane, separated, complete lungs."""
    h, w = right.shape
    boxes = []
    for comp in (right, left):
        rows = np.where(comp.any(axis=1))[0]
        cols = np.where(comp.any(axis=0))[0]
        if rows[0] == 0 or cols[0] == 0 or rows[-1] == h - 1 or cols[-1] == w - 1:
            return "cut by the image border"
        boxes.append((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    (r0, r1, c0, c1), (l0, l1, d0, d1) = boxes
    pair_w, pair_h = d1 - c0, max(r1, l1) - min(r0, l0)
    if c1 - d0 > 0.02 * pair_w:
        return "lungs overlap"
    if not 0.62 <= pair_h / pair_w <= 1.15:
        return "implausible aspect"
    if abs(r0 - l0) > 0.15 * pair_h or abs(r1 - l1) > 0.2 * pair_h:
        return "lungs at different heights"
    for comp, (a0, a1, b0, b1) in zip((right, left), boxes):
        if not 0.3 <= (b1 - b0) / pair_w <= 0.52 or not 1.2 <= (a1 - a0) / (b1 - b0) <= 3.3:
            return "implausible lung proportions"
        fill = comp.sum() / ((a1 - a0) * (b1 - b0))
        if not 0.45 <= fill <= 0.86 or _solidity(comp) < 0.86:
            return "ragged or hollow lung"
    return ""


def _solidity(comp: np.ndarray) -> float:
    """Area over the area of the row-wise filled region: low for ragged, notched outlines."""
    filled = 0
    for row in comp:
        idx = np.flatnonzero(row)
        if idx.size:
            filled += idx[-1] - idx[0] + 1
    return float(comp.sum() / max(filled, 1))


def _resample(comp: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    r0, r1, c0, c1 = box
    coords = -MARGIN + STEP * np.arange(GRID)
    rows = r0 - 0.5 + coords * (r1 - r0)
    cols = c0 - 0.5 + coords * (c1 - c0)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    smooth = ndi.gaussian_filter(comp.astype(np.float32), 0.7)
    return ndi.map_coordinates(smooth, [rr, cc], order=1, mode="constant") > 0.5


def _drop_duplicates(shapes: list[LungShape], rejected: dict[str, int]) -> list[LungShape]:
    """Remove near-identical masks (the zip holds a few images twice in different formats)."""
    kept: list[LungShape] = []
    sigs: list[np.ndarray] = []
    for shape in shapes:
        sig = (shape.right | shape.left)[::5, ::5]
        if any((sig & s).sum() / max((sig | s).sum(), 1) > 0.97 for s in sigs):
            rejected["duplicate"] = rejected.get("duplicate", 0) + 1
            continue
        kept.append(shape)
        sigs.append(sig)
    return kept


def _write_cache(path: Path, shapes: list[LungShape]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "xb") as handle:
            np.savez_compressed(
                handle,
                names=np.array([s.name for s in shapes]),
                right=np.stack([np.packbits(s.right) for s in shapes]),
                left=np.stack([np.packbits(s.left) for s in shapes]),
                aspect=np.array([s.aspect for s in shapes]),
            )
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not cache the lung library at %s: %s", path, err)


def _read_cache(path: Path) -> list[LungShape]:
    with np.load(path) as data:
        unpack = lambda bits: np.unpackbits(bits)[: GRID * GRID].reshape(GRID, GRID).astype(bool)  # noqa: E731
        return [LungShape(str(n), unpack(r), unpack(l), float(a))
                for n, r, l, a in zip(data["names"], data["right"], data["left"], data["aspect"])]


def parametric_shapes(count: int = 12) -> list[LungShape]:
    """A small library of smooth, lung-like outlines (used when the real masks are missing)."""
    coords = -MARGIN + STEP * np.arange(GRID)
    b, a = np.meshgrid(coords, coords, indexing="ij")
    shapes = []
    for k in range(count):
        gap, bulge = 0.06 + 0.01 * (k % 3), 0.04 * (k % 4)
        masks = {}
        for side, sign in (("right", -1), ("left", 1)):
            t = (a - 0.5) * sign  # 0 at the midline, 0.5 at the outer edge
            top = 0.02 + 0.9 * np.clip(0.5 - t, 0, 0.5) ** 2 + 2.2 * np.clip(t - 0.3, 0, None) ** 2
            outer = 0.5 - 0.5 * np.clip(0.18 - b, 0, None) ** 0.5 * 1.2
            floor = 0.97 - 0.2 * np.exp(-((t - 0.22 - bulge) / 0.12) ** 2) + (0.04 if side == "left" else 0)
            masks[side] = (t > gap / 2) & (t < outer) & (b > top) & (b < floor)
        shapes.append(LungShape(f"parametric_{k}", masks["right"], masks["left"], 0.8 + 0.025 * (k % 5)))
    return shapes


# =============================================================================================
# 2. Patient parameters
# =============================================================================================
@dataclass(frozen=True)
class PatientParams:
    """Everything that makes one phantom patient differ from another (JSON-friendly)."""

    lung_index: int
    lung_name: str
    lung_width: float  # width of the lung pair, fraction of the image width
    lung_top: float  # top of the apices (v)
    inspiration: float  # multiplies the lung height
    shift_x: float
    shift_y: float
    rotation_deg: float
    ctr: float  # cardiothoracic ratio of the normal heart
    heart_right_fraction: float  # right heart border share of the cardiac width
    heart_tilt_deg: float
    mediastinum_width: float  # upper mediastinum width / lung pair width
    chest_wall: float  # soft tissue beyond the ribs, fraction of the image
    neck_width: float
    shoulder_height: float
    air: float  # lucency of the aerated lung
    markings: float  # vascular marking strength
    bone: float  # bone density
    exposure: float  # steepness of the density -> brightness curve
    brightness: float
    gamma: float
    noise: float  # detector noise standard deviation (fraction of full scale)
    blur: float  # smoothing sigma in pixels of a 256 px image
    gastric_bubble: float  # 0 when absent
    breast: float  # breast shadow strength, 0 when absent


def draw_patient(rng: np.random.Generator, library: LungLibrary) -> PatientParams:
    """Draw one patient. The order of the draws is part of the format: append, never reorder."""
    u = rng.uniform
    index = int(rng.integers(len(library)))
    return PatientParams(
        lung_index=index, lung_name=library.shapes[index].name,
        lung_width=u(0.72, 0.82), lung_top=u(0.06, 0.1), inspiration=u(0.93, 1.05),
        shift_x=u(-0.02, 0.02), shift_y=u(-0.015, 0.015), rotation_deg=u(-3.0, 3.0),
        ctr=u(0.40, 0.47), heart_right_fraction=u(0.30, 0.38), heart_tilt_deg=u(24.0, 38.0),
        mediastinum_width=u(0.15, 0.19), chest_wall=u(0.03, 0.06), neck_width=u(0.085, 0.11),
        shoulder_height=u(0.0, 0.05), air=u(0.62, 0.72), markings=u(0.8, 1.2), bone=u(0.85, 1.15),
        exposure=u(1.9, 2.4), brightness=u(-0.04, 0.04), gamma=u(0.9, 1.1), noise=u(0.008, 0.02),
        blur=u(0.55, 0.85), gastric_bubble=float(u(0.6, 1.0) if u() < 0.8 else 0.0),
        breast=float(u(0.3, 1.0) if u() < 0.45 else 0.0),
    )


@dataclass(frozen=True)
class Modifiers:
    """Geometric changes that findings make to the anatomy itself (all zero = normal)."""

    ctr: float | None = None  # cardiothoracic ratio (None: the patient's normal one)
    elevation: dict[str, float] = field(default_factory=dict)  # side -> rise, fraction of lung height
    emphysema: float = 0.0  # 0..1 strength of hyperinflation
    scoliosis: float = 0.0  # signed lateral deviation of the spine (u units; < 0 = image left)

    def changes_lungs(self) -> bool:
        return bool(self.elevation) or self.emphysema > 0


NORMAL = Modifiers()


# =============================================================================================
# 3. Geometry and the normal density map
# =============================================================================================
@functools.lru_cache(maxsize=6)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre image coordinates (x, y) in [0, 1], read-only float32 (cached per size)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.broadcast_to(centres[None, :], (size, size)), np.broadcast_to(centres[:, None], (size, size))
    return x, y


@dataclass
class Frame:
    """The image grid expressed in patient coordinates ``u, v`` (see the module docstring)."""

    size: int
    u: np.ndarray
    v: np.ndarray
    cos: float
    sin: float
    shift: tuple[float, float]

    @classmethod
    def for_patient(cls, patient: PatientParams, size: int) -> Frame:
        x, y = _pixel_grid(size)
        c, s = math.cos(math.radians(patient.rotation_deg)), math.sin(math.radians(patient.rotation_deg))
        dx, dy = x - np.float32(0.5 + patient.shift_x), y - np.float32(0.5 + patient.shift_y)
        u = np.float32(c) * dx + np.float32(s) * dy + np.float32(0.5)
        v = np.float32(-s) * dx + np.float32(c) * dy + np.float32(0.5)
        return cls(size, u, v, c, s, (patient.shift_x, patient.shift_y))

    @property
    def px(self) -> float:
        """One pixel in u/v units."""
        return 1.0 / self.size

    def to_image(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates -> image coordinates in [0, 1]."""
        du, dv = np.asarray(u) - 0.5, np.asarray(v) - 0.5
        return (self.cos * du - self.sin * dv + 0.5 + self.shift[0],
                self.sin * du + self.cos * dv + 0.5 + self.shift[1])

    def window(self, u0: float, u1: float, v0: float, v1: float, pad: int = 2) -> tuple[slice, slice]:
        """Pixel rows/cols covering the patient-coordinate box (clipped to the image; may be empty)."""
        x, y = self.to_image(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        n = self.size
        c0, c1 = int(np.floor(x.min() * n)) - pad, int(np.ceil(x.max() * n)) + pad
        r0, r1 = int(np.floor(y.min() * n)) - pad, int(np.ceil(y.max() * n)) + pad
        return slice(min(max(r0, 0), n), min(max(r1, 0), n)), slice(min(max(c0, 0), n), min(max(c1, 0), n))


@dataclass(frozen=True)
class Placement:
    """Where the lung pair's bounding box lies in patient coordinates.

    The masks' own aspect ratios run low (many source images were resized unevenly), so they
    are stretched by ``ASPECT_GAIN``; the lung pair then fills a typical PA film.
    """

    u0: float
    v0: float
    width: float
    height: float

    @property
    def mid(self) -> float:
        return self.u0 + self.width / 2

    def u(self, a: float) -> float:
        return self.u0 + a * self.width

    def v(self, b: float) -> float:
        return self.v0 + b * self.height

    @classmethod
    def for_patient(cls, patient: PatientParams, aspect: float) -> Placement:
        width, height = patient.lung_width, patient.lung_width * aspect * patient.inspiration * ASPECT_GAIN
        top, lowest, highest = patient.lung_top, 0.86, 0.72  # bounds for the costophrenic angles
        if top + height > lowest:  # tall lungs: shrink to fit
            scale = (lowest - top) / height
            width, height = width * scale, height * scale
        elif top + height < highest:  # short lungs: move down, then enlarge (not wider than 0.86)
            top = min(0.12, highest - height)
            scale = min((highest - top) / height, 0.86 / width)
            width, height = width * max(scale, 1.0), height * max(scale, 1.0)
        return cls(0.5 - width / 2, top, width, height)


@dataclass
class Anatomy:
    """A patient's rendered anatomy: the density map that findings then modify, plus its parts.

    ``lung``/``lung_sdf`` hold each lung's soft mask (0..1) and signed distance in pixels
    (> 0 outside); ``air`` is the aerated fraction actually seen (lungs minus what the heart and
    mediastinum hide); ``markings`` the vascular marking density already added to ``density``;
    ``changed`` the image regions that each geometric modifier altered (for finding masks).
    """

    frame: Frame
    patient: PatientParams
    placement: Placement
    info: ShapeInfo
    modifiers: Modifiers
    density: np.ndarray
    lung: dict[str, np.ndarray]
    lung_sdf: dict[str, np.ndarray]
    air: np.ndarray
    markings: np.ndarray
    heart: np.ndarray
    spine_u: np.ndarray  # spine centre u at each image row's v (function of v, sampled on a grid)
    hila: dict[str, tuple[float, float]]
    changed: dict[str, np.ndarray] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.frame.size

    def lung_box(self, side: str) -> tuple[float, float, float, float]:
        """(u_medial, u_lateral, v_top, v_bottom) of one lung in patient coordinates (normal shape)."""
        info, pl = self.info, self.placement
        cols = np.where(np.isfinite(info.bottom[side]))[0]
        grid = -MARGIN + STEP * cols
        a_med, a_lat = (grid.max(), grid.min()) if side == "right" else (grid.min(), grid.max())
        rows = np.where(np.any(info.sdf[side] <= 0, axis=1))[0]
        top = -MARGIN + STEP * rows[0]
        return pl.u(a_med), pl.u(a_lat), pl.v(top), pl.v(info.cp_b[side])


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth in between: 3x^2 - 2x^3 on the clipped input (a new array)."""
    y = np.clip(x, 0.0, 1.0)
    if not isinstance(y, np.ndarray) or y.ndim == 0:
        return y * y * (3.0 - 2.0 * y)
    sq = y * y
    y *= -2.0
    y += 3.0
    y *= sq
    return y


def build_anatomy(patient: PatientParams, size: int, modifiers: Modifiers = NORMAL,
                  texture_rng: np.random.Generator | None = None, library: LungLibrary | None = None) -> Anatomy:
    """The patient's density map with the geometric ``modifiers`` applied (see the module doc).

    ``texture_rng`` draws the vascular tree; pass a fresh generator from the same seed for the
    same patient so that markings agree between renders with and without findings.
    """
    library = library or load_lung_library()
    shape = library.shapes[patient.lung_index]
    info = library.info(patient.lung_index)
    frame = Frame.for_patient(patient, size)
    place = Placement.for_patient(patient, shape.aspect)
    lungs, sdfs, changed = _lungs(frame, place, info, modifiers)
    heart = _heart(frame, place, info, patient, modifiers)
    if modifiers.ctr is not None:
        normal_heart = _heart(frame, place, info, patient, dataclasses.replace(modifiers, ctr=None))
        changed["heart"] = (np.abs(heart - normal_heart) > 0.01) & (
            (lungs["right"] + lungs["left"]) > 0)
    if modifiers.scoliosis:
        changed["scoliosis"] = _spine_band(frame, place, modifiers.scoliosis)
    mediastinum = _mediastinum(frame, place, patient, info)
    hila = _hila(place, info)
    anatomy = Anatomy(frame, patient, place, info, modifiers, np.zeros((size, size), np.float32), lungs, sdfs,
                      np.zeros((size, size), np.float32), np.zeros((size, size), np.float32), heart,
                      _spine_curve(place, modifiers.scoliosis), hila, changed)
    _compose(anatomy, mediastinum, texture_rng or np.random.default_rng(0))
    return anatomy


_OUTSIDE = np.float32(1e3)


def sample_lung_sdf(frame: Frame, place: Placement, info: ShapeInfo, side: str,
                    warp=None, shrink: tuple[float, float, float] | None = None) -> np.ndarray:
    """Signed distance (pixels, > 0 outside) of one lung over the whole image.

    ``warp(a, b) -> b'`` moves the lung's outline vertically in box coordinates; ``shrink =
    (u_c, v_c, factor)`` collapses the lung towards the point ``(u_c, v_c)``.
    """
    n = frame.size
    a_lo, a_hi = (-0.06, 0.56) if side == "right" else (0.44, 1.06)
    rows, cols = frame.window(place.u(a_lo), place.u(a_hi), place.v(-0.06), place.v(1.35 if warp else 1.06))
    out = np.full((n, n), _OUTSIDE, np.float32)
    u, v = frame.u[rows, cols], frame.v[rows, cols]
    if shrink is not None:
        uc, vc, k = shrink
        u, v = uc + (u - uc) / k, vc + (v - vc) / k
    a = (u - place.u0) / place.width
    b = (v - place.v0) / place.height
    if warp is not None:
        b = warp(a, b)
    coords = np.stack([(b + MARGIN) / STEP, (a + MARGIN) / STEP])
    values = ndi.map_coordinates(info.sdf[side], coords, order=1, mode="nearest", prefilter=False)
    scale = place.width * n * (shrink[2] if shrink is not None else 1.0)
    out[rows, cols] = values * np.float32(scale)
    return out


def lung_warp(info: ShapeInfo, side: str, mods: Modifiers):
    """Vertical warp of one lung for a raised hemidiaphragm and/or hyperinflation (None: none)."""
    rise = mods.elevation.get(side, 0.0)
    emph = mods.emphysema
    if not rise and not emph:
        return None
    grid = -MARGIN + STEP * np.arange(GRID)
    bottom = np.where(np.isfinite(info.bottom[side]), info.bottom[side], info.cp_b[side])
    cp = info.cp_b[side]

    def warp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ramp = smoothstep((b - 0.3) / 0.6)
        if emph:
            drop = 0.12 * emph + 0.85 * emph * np.clip(cp - np.interp(a, grid, bottom), 0, None)
            b = b - drop * ramp
        return b + rise * ramp

    return warp


def _lungs(frame: Frame, place: Placement, info: ShapeInfo, mods: Modifiers):
    """Soft masks and distances of the (possibly warped) lungs, and what the warps changed."""
    lungs, sdfs, changed = {}, {}, {}
    width_px = place.width * frame.size
    for side in SIDES:
        sdf = sample_lung_sdf(frame, place, info, side, lung_warp(info, side, mods))
        sdfs[side], lungs[side] = sdf, np.clip(0.5 - sdf, 0.0, 1.0)
        if mods.changes_lungs():
            normal_sdf = sample_lung_sdf(frame, place, info, side)
            normal = np.clip(0.5 - normal_sdf, 0.0, 1.0)
            moved = np.abs(aeration(normal, normal_sdf, width_px) - aeration(lungs[side], sdf, width_px)) > 0.003
            if side in mods.elevation:
                changed[f"elevation:{side}"] = moved
            if mods.emphysema:
                both = moved | (normal > 0) | (lungs[side] > 0)
                changed["emphysema"] = changed["emphysema"] | both if "emphysema" in changed else both
    return lungs, sdfs, changed


def aeration(lung: np.ndarray, sdf: np.ndarray, width_px: float) -> np.ndarray:
    """Air seen through one lung: less at the pleura (thin lung), more inside."""
    return lung * (0.45 + 0.55 * smoothstep(-sdf / np.float32(0.09 * width_px)))


def _spine_band(frame: Frame, place: Placement, scoliosis: float) -> np.ndarray:
    """Where a curved spine or the normal straight one lies (the region scoliosis changes)."""
    w = 1.4 * spine_half_width(place)
    curve = _spine_curve(place, scoliosis)
    rows, cols = frame.window(place.mid - abs(scoliosis) - w, place.mid + abs(scoliosis) + w, -0.2, 1.2)
    u, v = frame.u[rows, cols], frame.v[rows, cols]
    band = (np.abs(u - place.mid) < w) | (np.abs(u - np.interp(v, SPINE_V, curve)) < w)
    out = np.zeros((frame.size, frame.size), bool)
    out[rows, cols] = band
    return out


def heart_geometry(place: Placement, info: ShapeInfo, patient: PatientParams, mods: Modifiers = NORMAL) -> dict:
    """Centre, semi-axes and tilt of the elliptic heart, ``mods.ctr`` x the thorax width wide.

    The heart rests on the left dome (lower when hyperinflation pushes the dome down).
    """
    ctr = patient.ctr if mods.ctr is None else mods.ctr
    half = ctr * place.width / 2
    phi = math.radians(patient.heart_tilt_deg)
    ratio = 0.74
    a = half / math.sqrt(math.cos(phi) ** 2 + (ratio * math.sin(phi)) ** 2)
    b = ratio * a
    cx = place.mid + half * (1 - 2 * patient.heart_right_fraction)
    drop = 0.12 * mods.emphysema + 0.85 * mods.emphysema * max(info.cp_b["left"] - info.dome_b["left"], 0.0)
    apex_v = place.v(info.dome_b["left"] + 0.5 * drop) - 0.03 * place.height
    cy = apex_v - (a * a - b * b) * math.sin(phi) * math.cos(phi) / half
    return {"cx": cx, "cy": cy, "a": a, "b": b, "phi": phi, "half_width": half, "apex_v": apex_v}


def _heart(frame: Frame, place: Placement, info: ShapeInfo, patient: PatientParams, mods: Modifiers):
    """Soft heart mask: a tilted ellipse over a vertical skirt that reaches down to the diaphragm."""
    g = heart_geometry(place, info, patient, mods)
    out = np.zeros((frame.size, frame.size), np.float32)
    rows, cols = frame.window(g["cx"] - g["a"], g["cx"] + g["a"], g["cy"] - g["a"], 1.2)
    du, dv = frame.u[rows, cols] - g["cx"], frame.v[rows, cols] - g["cy"]
    c, s = math.cos(g["phi"]), math.sin(g["phi"])
    p, q = (c * du + s * dv) / g["a"], (-s * du + c * dv) / g["b"]
    n = np.float32(frame.size)
    ellipse = np.clip(0.5 + (1 - np.sqrt(p * p + q * q)) * np.float32(g["b"]) * n, 0.0, 1.0)
    chord = 1 / math.sqrt((c / g["a"]) ** 2 + (s / g["b"]) ** 2)
    skirt = np.clip(0.5 + (chord - np.abs(du)) * n, 0.0, 1.0) * np.clip(0.5 + dv * n, 0.0, 1.0)
    out[rows, cols] = np.maximum(ellipse, skirt)
    return out


def _mediastinum(frame: Frame, place: Placement, patient: PatientParams, info: ShapeInfo) -> np.ndarray:
    """Superior mediastinum (SVC on the right, aortic knob on the left), fading into the heart."""
    W, H, mid = place.width, place.height, place.mid
    wm = patient.mediastinum_width * W
    rows, cols = frame.window(mid - wm, mid + wm, -0.2, place.v(0.8))
    u, v = frame.u[rows, cols], frame.v[rows, cols]
    edge = np.float32(1.5 / frame.size)
    widen = smoothstep((v - place.v(0.1)) / (0.4 * H))
    right = mid - wm * (0.42 + 0.12 * widen)
    left = mid + wm * 0.40 + 0.035 * W * np.exp(-(((v - place.v(0.2)) / (0.07 * H)) ** 2))  # aortic knob
    band = smoothstep((u - right) / edge + 0.5) * smoothstep((left - u) / edge + 0.5)
    band *= 1 - smoothstep((v - place.v(0.52)) / (0.2 * H))
    out = np.zeros((frame.size, frame.size), np.float32)
    out[rows, cols] = band
    return out


def _hila(place: Placement, info: ShapeInfo) -> dict[str, tuple[float, float]]:
    off = 0.12 * place.width
    return {"right": (place.mid - off, place.v(0.40)), "left": (place.mid + off, place.v(0.37))}


def _spine_curve(place: Placement, scoliosis: float) -> np.ndarray:
    """Spine centre ``u`` sampled at ``v = linspace(-0.2, 1.2, 141)`` (a C-curve when scoliotic)."""
    v = np.linspace(-0.2, 1.2, 141)
    t = np.clip((v - (place.v0 - 0.05)) / (place.height * 1.05), 0.0, 1.0)
    return place.mid + scoliosis * np.sin(np.pi * t)


SPINE_V = np.linspace(-0.2, 1.2, 141)


def spine_half_width(place: Placement) -> float:
    return 0.058 * place.width


# ---------------------------------------------------------------------------------------------
# Density composition
# ---------------------------------------------------------------------------------------------
def _compose(anat: Anatomy, mediastinum: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``anat.density``, ``anat.air`` and ``anat.markings`` (steps 1-6)."""
    f, pl, p, mods = anat.frame, anat.placement, anat.patient, anat.modifiers
    width_px = pl.width * f.size
    # 1. aerated lung: thicker (darker) away from the pleura, hidden behind heart and mediastinum
    air = aeration(anat.lung["right"], anat.lung_sdf["right"], width_px)
    air += aeration(anat.lung["left"], anat.lung_sdf["left"], width_px)
    air *= (1 - 0.86 * anat.heart) * (1 - 0.88 * mediastinum)
    anat.air = air
    # 2. vascular markings, only where aerated lung shows them
    vessels = _vessel_field(anat, rng)
    anat.markings = vessels * air * np.float32(0.16 * p.markings * (1 - 0.55 * mods.emphysema))
    # 3. soft tissue, air, markings
    body = _body(f, pl, p)
    density = body + _breasts(f, pl, p)
    density -= air * np.float32(p.air * (1 + 0.12 * mods.emphysema))
    density += anat.markings
    # 4. bones
    below = smoothstep((f.v - np.float32(pl.v(anat.info.dome_b["right"]))) / np.float32(0.15 * pl.height))
    bones = _ribs(f, pl) * (1 - 0.6 * below) + 1.4 * _clavicles(f, pl)
    bones = bones * (body > 0.2) + 1.5 * _spine(anat) * (1 - 0.65 * below)
    density += bones * np.float32(0.13 * p.bone)
    # lower zones and apices look denser (overlying diaphragm, breasts, shoulder girdle)
    density += air * (0.09 * smoothstep((f.v - np.float32(pl.v(0.45))) / np.float32(0.5 * pl.height))
                      + 0.06 * (1 - smoothstep((f.v - np.float32(pl.v0)) / np.float32(0.2 * pl.height))))
    # 5. airways and the gastric bubble
    density -= 0.14 * _trachea(f, pl, anat.hila)
    if p.gastric_bubble:
        density -= _bubble(f, pl, anat.info) * np.float32(0.28 * p.gastric_bubble) * (1 - anat.lung["left"])
    anat.density = density
    anat.parts["mediastinum"] = mediastinum
    anat.parts["bones"] = bones


def _body(f: Frame, pl: Placement, p: PatientParams) -> np.ndarray:
    """Soft tissue thickness: neck, shoulders and torso with an elliptic cross-section."""
    v = f.v
    torso = pl.width / 2 + p.chest_wall + 0.02 + 0.02 * np.sin(np.pi * np.clip((v - pl.v0) / (1.2 * pl.height), 0, 1))
    shoulder_top = 0.01 + p.shoulder_height
    slope = smoothstep((v - shoulder_top) / 0.13)
    half = p.neck_width + (torso + 0.04 - p.neck_width) * np.sqrt(slope)
    half = half - 0.04 * smoothstep((v - shoulder_top - 0.13) / 0.3)
    q = (f.u - np.float32(pl.mid)) / half
    thick = np.clip(1 - q * q, 0.0, 1.0) ** 0.6
    return thick * (0.93 + 0.1 * smoothstep((v - pl.v(0.9)) / 0.15))


def _breasts(f: Frame, pl: Placement, p: PatientParams) -> np.ndarray:
    out = np.zeros((f.size, f.size), np.float32)
    if not p.breast:
        return out
    for sign in (-1.0, 1.0):
        cu, cv, ru, rv = pl.mid + sign * 0.26 * pl.width, pl.v(0.72), 0.22 * pl.width, 0.3 * pl.height
        rows, cols = f.window(cu - ru, cu + ru, cv - rv, cv + rv)
        u, v = f.u[rows, cols], f.v[rows, cols]
        rho = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
        out[rows, cols] += smoothstep((1 - rho) / 0.25) * smoothstep((v - (cv - rv)) / (1.2 * rv))
    return out * np.float32(0.06 * p.breast)


_NT, _NR, _RMAX = 720, 64, 1.2


def _vessel_texture(rng: np.random.Generator) -> np.ndarray:
    """Branching vessels in polar coordinates (angle x radius in lung heights) for a right lung.

    Angles use a "lateral" convention: 0 points away from the midline, < 0 up, > 0 down.
    """
    tex = np.zeros((_NT, _NR), np.float32)
    theta = np.linspace(-np.pi, np.pi, _NT, endpoint=False, dtype=np.float32)
    radius = np.linspace(0.0, _RMAX, _NR, dtype=np.float32)
    for r0, r1, th0, drift, w0, amp in _vessel_tree(rng):
        j0, j1 = np.searchsorted(radius, [r0, r1])
        if j1 <= j0:
            continue
        r = radius[j0:j1]
        th = th0 + drift * (r - r0)
        aw = (w0 * (1 - 0.45 * (r - r0) / (r1 - r0))) / np.maximum(r, 0.04)
        span = float(np.abs(th - th0).max() + 4 * aw.max())
        i_lo, i_hi = np.searchsorted(theta, [th0 - span, th0 + span])
        idx = np.arange(i_lo - 1, i_hi + 1) % _NT if span < np.pi else np.arange(_NT)
        d = (theta[idx, None] - th[None, :] + np.pi) % (2 * np.pi) - np.pi
        fade = 1 - smoothstep((r - (r1 - 0.12)) / 0.12)
        tex[idx, j0:j1] += amp * fade * np.exp(-0.5 * (d / aw) ** 2)
    return np.clip(tex, 0.0, 1.6)


def _vessel_tree(rng: np.random.Generator) -> list[tuple[float, ...]]:
    """Segments (r0, r1, angle, drift, width, amplitude): trunks that fork, up to three times."""
    segs: list[tuple[float, ...]] = []

    def grow(r0: float, angle: float, width: float, amp: float, depth: int) -> None:
        length = rng.uniform(0.07, 0.18) * (1.3 if depth == 0 else 1.0)
        drift = rng.uniform(-1.2, 1.2)
        segs.append((r0, r0 + length + 0.015, angle, drift, width, amp))
        if depth == 3 or r0 + length > 0.8:
            return
        end = angle + drift * length
        spread = rng.uniform(0.12, 0.35) / (1 + 0.4 * depth)
        for turn in (-1.0, 1.0) if rng.uniform() < 0.85 else (-1.0, 0.0, 1.0):
            grow(r0 + length, end + turn * spread * rng.uniform(0.6, 1.2), width * 0.72, amp * 0.8, depth + 1)

    for lateral in np.linspace(-1.3, 1.4, 7) + rng.uniform(-0.15, 0.15, 7):
        grow(0.0, float(lateral), 0.02, 0.9 * (1 + 0.3 * np.sin(lateral)), 0)  # fuller lower-zone vessels
    return segs


_BANK_SIZE = 48


@functools.lru_cache(maxsize=1)
def _vessel_bank() -> tuple[np.ndarray, ...]:
    """A fixed bank of vascular trees (polar textures), wrapped in angle, built once per process."""
    trees = []
    for k in range(_BANK_SIZE):
        tex = _vessel_texture(np.random.default_rng(np.random.SeedSequence([20261125, k])))
        trees.append(np.concatenate([tex, tex[:1]], axis=0))
    return tuple(trees)


def _vessel_field(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Vascular markings of both lungs: a tree from the bank per lung, turned by a random angle."""
    f, pl = anat.frame, anat.placement
    out = np.zeros((f.size, f.size), np.float32)
    bank = _vessel_bank()
    for side in SIDES:
        padded = bank[int(rng.integers(_BANK_SIZE))]
        turn = np.float32(rng.uniform(-0.12, 0.12))
        hu, hv = anat.hila[side]
        a_lo, a_hi = (-0.05, 0.56) if side == "right" else (0.44, 1.05)
        rows, cols = f.window(pl.u(a_lo), pl.u(a_hi), pl.v(-0.05), pl.v(1.3 if anat.modifiers.emphysema else 1.06))
        du = (f.u[rows, cols] - hu) * np.float32(SIDE_SIGN[side] / pl.height)
        dv = (f.v[rows, cols] - hv) / np.float32(pl.height)
        theta = np.arctan2(dv, du)
        ti = ((theta + np.pi + turn) * (_NT / (2 * np.pi))) % _NT
        ri = np.sqrt(du * du + dv * dv) * ((_NR - 1) / _RMAX)
        out[rows, cols] = ndi.map_coordinates(padded, np.stack([ti, ri]), order=1, mode="nearest", prefilter=False)
    return out


def _tube_profile(q: np.ndarray) -> np.ndarray:
    """Cross-section of a bone seen side-on: a cortical rim brighter than the medulla (|q| < 1)."""
    q2 = np.minimum(q * q, 1.0)
    return np.sqrt(np.sqrt(1 - q2)) * (0.7 + 0.45 * q2 * q2 * q2)


def _ribs(f: Frame, pl: Placement) -> np.ndarray:
    """Posterior rib arcs (bright, arching from the spine) and fainter anterior ribs."""
    H, v0 = pl.height, pl.v0
    wt = 0.52 * pl.width
    t = np.abs(f.u - np.float32(pl.mid)) / np.float32(wt)
    k = np.arange(12)
    levels = v0 + H * (-0.05 + k * 0.086 * (1 + 0.014 * k))

    def arch(tt: np.ndarray, s: np.ndarray) -> np.ndarray:
        depth = np.clip((s - v0) / H, 0.0, 1.0)
        return np.float32(wt) * (-(0.36 - 0.16 * depth) * tt + (0.78 - 0.3 * depth) * tt * tt)

    s = f.v - arch(t, f.v)
    s = f.v - arch(t, s)
    near = np.clip(np.rint(np.interp(s, levels, k)), 0, 11).astype(np.intp)
    half = np.float32(0.019 * H) * (0.8 + 0.45 * t)
    posterior = _tube_profile((s - levels[near].astype(np.float32)) / half)
    posterior *= smoothstep((t - 0.07) / 0.07) * (1 - smoothstep((t - 0.97) / 0.09))
    # anterior ribs leave the lateral wall where the posterior ones end and run down-medially
    ends = levels + arch(np.float32(1.0), levels)
    s2 = f.v - np.float32(0.5 * wt) * np.clip(1 - t, 0.0, 1.0) ** 1.3
    near2 = np.clip(np.rint(np.interp(s2, ends, k)), 0, 11).astype(np.intp)
    q2 = (s2 - ends[near2].astype(np.float32)) / np.float32(0.013 * H)
    anterior = _tube_profile(q2) * (smoothstep((t - 0.3) / 0.12) * (1 - smoothstep((t - 1.0) / 0.06)))
    return posterior + 0.4 * anterior


def _clavicles(f: Frame, pl: Placement) -> np.ndarray:
    out = np.zeros((f.size, f.size), np.float32)
    H, W = pl.height, pl.width
    v_med, v_lat = pl.v(0.17), pl.v(0.05)
    rows, cols = f.window(pl.mid - 0.7 * W, pl.mid + 0.7 * W, v_lat - 0.08, v_med + 0.08)
    u, v = f.u[rows, cols], f.v[rows, cols]
    t = np.abs(u - np.float32(pl.mid)) / np.float32(0.5 * W)
    centre = v_med - (v_med - v_lat) * np.clip(t, 0, 1.3) ** 1.5 + 0.012 * np.sin(2 * np.pi * np.clip(t, 0, 1))
    half = np.float32(0.016) * (1.15 - 0.25 * np.clip(t, 0, 1)) * (W / 0.7)
    prof = _tube_profile((v - centre) / half) * (np.abs(v - centre) < half)
    out[rows, cols] = prof * smoothstep((t - 0.07) / 0.05) * (1 - smoothstep((t - 1.15) / 0.1))
    return out


def _spine(anat: Anatomy) -> np.ndarray:
    """Thoracic vertebrae: bodies with end plates, disc spaces, pedicles and spinous processes."""
    f, pl = anat.frame, anat.placement
    out = np.zeros((f.size, f.size), np.float32)
    w = spine_half_width(pl)
    dev = float(np.abs(anat.spine_u - pl.mid).max())
    rows, cols = f.window(pl.mid - dev - 1.5 * w, pl.mid + dev + 1.5 * w, -0.2, 1.2)
    u, v = f.u[rows, cols], f.v[rows, cols]
    x = (u - np.interp(v, SPINE_V, anat.spine_u).astype(np.float32)) / np.float32(w)
    phase = (v - np.float32(pl.v0)) / np.float32(pl.height / 8.3) + np.float32(0.35)
    fr = phase - np.floor(phase)
    body = smoothstep((1 - np.abs(x)) / 0.12) * (1 - 0.75 * smoothstep((fr - 0.8) / 0.05)
                                                 * (1 - smoothstep((fr - 0.95) / 0.05)))
    plates = np.exp(-((fr - 0.79) / 0.025) ** 2) + np.exp(-((fr - 0.01) / 0.025) ** 2)
    rho = np.sqrt(((np.abs(x) - 0.6) / 0.2) ** 2 + ((fr - 0.3) / 0.17) ** 2)
    pedicles = 0.55 * np.exp(-(rho ** 4)) + 0.25 * np.exp(-((rho - 1) / 0.35) ** 2)
    spinous = np.exp(-((x / 0.1) ** 2 + ((fr - 0.7) / 0.16) ** 2))
    edges = np.exp(-((np.abs(x) - 0.95) / 0.08) ** 2)
    out[rows, cols] = 0.55 * body + 0.2 * plates * body + 0.6 * pedicles + 0.3 * spinous + 0.25 * edges
    return out


def _segment_distance(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))


def _trachea(f: Frame, pl: Placement, hila: dict[str, tuple[float, float]]) -> np.ndarray:
    W = pl.width
    w = 0.028 * W
    carina = (pl.mid - 0.004, pl.v(0.3))
    top = (pl.mid - 0.002, -0.05)
    rows, cols = f.window(pl.mid - 0.2 * W, pl.mid + 0.2 * W, -0.1, pl.v(0.5))
    u, v = f.u[rows, cols], f.v[rows, cols]
    tube = smoothstep((w - _segment_distance(u, v, top, carina)) / (0.35 * w))
    for side, drop in (("right", 0.07), ("left", 0.09)):
        end = (carina[0] + 0.55 * (hila[side][0] - carina[0]), carina[1] + drop * pl.height)
        tube = np.maximum(tube, smoothstep((0.62 * w - _segment_distance(u, v, carina, end)) / (0.3 * w)))
    out = np.zeros((f.size, f.size), np.float32)
    out[rows, cols] = tube
    return out


def _bubble(f: Frame, pl: Placement, info: ShapeInfo) -> np.ndarray:
    cu, cv = pl.u(info.centre_a["left"] + 0.04), pl.v(info.dome_b["left"]) + 0.06 * pl.height
    ru, rv = 0.085 * pl.width, 0.035 * pl.height
    rows, cols = f.window(cu - ru, cu + ru, cv - rv, cv + rv)
    out = np.zeros((f.size, f.size), np.float32)
    rho = np.sqrt(((f.u[rows, cols] - cu) / ru) ** 2 + ((f.v[rows, cols] - cv) / rv) ** 2)
    out[rows, cols] = smoothstep((1 - rho) / 0.25)
    return out
