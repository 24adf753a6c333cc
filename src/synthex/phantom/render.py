"""Render a synthetic frontal (PA) chest radiograph from findings, with exact ground truth.

``render_phantom(findings, seed, size)`` does, in order:

1. draws the patient from the seed's own "patient" stream (lung shape, size, pose, heart,
   exposure, ...), before looking at any finding;
2. turns the geometric findings (cardiomegaly, emphysema, elevated hemidiaphragm, scoliosis)
   into anatomy modifiers and builds the density map (:mod:`synthex.phantom.anatomy`);
3. adds each other finding as a density change drawn from a stream of its own
   (seed, finding name, occurrence), so adding one finding never moves another;
4. blurs, maps density to brightness (dense = bright) and adds detector noise from the seed's
   "noise" stream.

So the same seed with and without a finding shows the same patient, and their difference lies
inside that finding's mask (``result.masks``). Radiological convention: the patient's right is
on the image's left. All randomness comes from ``numpy.random.default_rng`` streams derived from
the seed; no global state is touched.
"""
from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from synthex import SOFTWARE_NAME
from synthex.io import atomic_write
from synthex.errors import OutputExistsError, SynthexError
from synthex.phantom.anatomy import (
    SIDE_SIGN,
    Anatomy,
    Modifiers,
    PatientParams,
    build_anatomy,
    draw_patient,
    heart_geometry,
    lung_warp,
    load_lung_library,
    sample_lung_sdf,
    smoothstep,
)
from synthex.phantom.findings import LOBES, Finding, as_findings

log = logging.getLogger(__name__)

RENDER_VERSION = 1
MIN_SIZE, MAX_SIZE = 64, 4096
GEOMETRIC = ("heart", "emphysema", "diaphragm", "spine")
_EPS = 0.004  # density change below which a pixel does not count as changed

CTR_BY_SEVERITY = {"mild": 0.54, "moderate": 0.60, "severe": 0.67}
EMPHYSEMA_BY_SEVERITY = {"mild": 0.45, "moderate": 0.7, "severe": 1.0}
RISE_BY_SEVERITY = {"mild": 0.08, "moderate": 0.13, "severe": 0.19}
SCOLIOSIS_BY_SEVERITY = {"mild": 0.045, "moderate": 0.07, "severe": 0.1}
EFFUSION_BY_SEVERITY = {"mild": 0.16, "moderate": 0.32, "severe": 0.55}
OPACITY_RADIUS = {"mild": 0.22, "moderate": 0.31, "severe": 0.42}
COLLAPSE_BY_SEVERITY = {"mild": 0.14, "moderate": 0.26, "severe": 0.42}
NODULE_RADIUS = {"nodule": {"mild": 0.013, "moderate": 0.019, "severe": 0.025},
                 "mass": {"mild": 0.035, "moderate": 0.05, "severe": 0.068}}
ZONE_DEPTH = {"upper": 0.22, "middle": 0.48, "lower": 0.74}


@dataclass
class PhantomResult:
    """A rendered phantom.

    ``image``: uint8 (size, size) grayscale. ``truth``: JSON-serialisable ground truth.
    ``masks``: mask key (the finding name, ``name_2`` for a repeat) -> bool (size, size), where
    that finding changes the image. ``anatomy_masks``: lungs, heart, mediastinum, body (only
    with ``return_masks=True``). ``findings``: the resolved findings in mask-key order.
    """

    image: np.ndarray
    truth: dict[str, Any]
    masks: dict[str, np.ndarray]
    findings: list[Finding]
    anatomy_masks: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Change:
    """A density change over a window of the image."""

    rows: slice
    cols: slice
    delta: np.ndarray


def render_phantom(findings: list[Finding] | str | Iterable[Finding | str | Mapping] | None, seed: int,
                   size: int = 256, *, return_masks: bool = False) -> PhantomResult:
    """Render one phantom radiograph. See the module docstring for the procedure."""
    _check_seed_size(seed, size)
    text = findings if isinstance(findings, str) else None
    items = _keyed([f.resolved() for f in as_findings(findings)], seed)
    library = load_lung_library()
    streams = np.random.SeedSequence(seed).spawn(3)
    patient = draw_patient(np.random.default_rng(streams[0]), library)
    modifiers, geo_params = _modifiers(items, patient)
    anat = build_anatomy(patient, size, modifiers, np.random.default_rng(streams[1]), library)
    radius = int(math.ceil(3 * _blur_sigma(patient, size))) + 1
    masks: dict[str, np.ndarray] = {}
    params: dict[str, dict[str, Any]] = {}
    for key, finding, rng in items:
        family = finding.spec.family
        if family in GEOMETRIC:
            support, params[key] = _geometric_support(anat, finding), geo_params[key]
        else:
            changes, params[key] = DRAWERS[family](anat, finding, rng)
            support = _apply(anat, changes)
        masks[key] = dilate(support, radius)
    image = expose(anat.density, patient, np.random.default_rng(streams[2]))
    truth = _truth(text, seed, size, items, params, masks, anat, library.source)
    result = PhantomResult(image, truth, masks, [f for _, f, _ in items])
    if return_masks:
        result.anatomy_masks = _anatomy_masks(anat)
    return result


def _check_seed_size(seed: int, size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthexError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise SynthexError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")


def _keyed(findings: list[Finding], seed: int) -> list[tuple[str, Finding, np.random.Generator]]:
    """(mask key, finding, its own generator); 'normal' must stand alone."""
    if len(findings) > 1 and any(f.name == "normal" for f in findings):
        others = sorted({f.name for f in findings if f.name != "normal"})
        if others:
            raise SynthexError(f"'normal' cannot be combined with other findings ({', '.join(others)})")
        findings = findings[:1]
    counts: dict[str, int] = {}
    out = []
    for finding in findings:
        counts[finding.name] = counts.get(finding.name, 0) + 1
        n = counts[finding.name]
        key = finding.name if n == 1 else f"{finding.name}_{n}"
        entropy = [int(seed), zlib.crc32(finding.name.encode()), n]
        out.append((key, finding, np.random.default_rng(np.random.SeedSequence(entropy))))
    return out


def _blur_sigma(patient: PatientParams, size: int) -> float:
    return patient.blur * size / 256


def _apply(anat: Anatomy, changes: list[Change]) -> np.ndarray:
    support = np.zeros((anat.size, anat.size), bool)
    for ch in changes:
        anat.density[ch.rows, ch.cols] += ch.delta
        support[ch.rows, ch.cols] |= np.abs(ch.delta) > _EPS
    return support


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by ``radius`` pixels (square element), working on its bounding box."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0 or radius <= 0:
        return mask.copy()
    n0, n1 = mask.shape
    r0, r1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, n0)
    c0, c1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, n1)
    out = np.zeros_like(mask)
    out[r0:r1, c0:c1] = ndi.maximum_filter(mask[r0:r1, c0:c1], size=2 * radius + 1)
    return out


def expose(density: np.ndarray, patient: PatientParams, rng: np.random.Generator) -> np.ndarray:
    """Density -> uint8 radiograph: detector blur, exposure curve, gamma, signal-dependent noise."""
    size = density.shape[0]
    img = ndi.gaussian_filter(density, _blur_sigma(patient, size), truncate=3.0)
    k = np.float32(0.6 * patient.exposure)
    np.maximum(img, 0, out=img)
    img = (1 - np.exp(-k * img)) * np.float32(1 / (1 - math.exp(-k * 1.7)))
    img = np.clip(img + np.float32(patient.brightness), 0, 1) ** np.float32(patient.gamma)
    noise = rng.standard_normal((size, size), dtype=np.float32)
    img += noise * np.float32(patient.noise) * (0.5 + 0.5 * img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Geometric findings: they change the anatomy itself
# ---------------------------------------------------------------------------------------------
def _modifiers(items, patient: PatientParams) -> tuple[Modifiers, dict[str, dict[str, Any]]]:
    ctr, elevation, emphysema, scoliosis = None, {}, 0.0, 0.0
    params: dict[str, dict[str, Any]] = {}
    for key, f, rng in items:
        family, sev = f.spec.family, f.severity
        if family == "heart":
            target = f.extra.get("ctr", CTR_BY_SEVERITY[sev] + rng.uniform(-0.01, 0.01))
            ctr = max(ctr or 0.0, target)
            params[key] = {"ctr_target": round(target, 4), "ctr_normal": round(patient.ctr, 4)}
        elif family == "diaphragm":
            rise = f.extra.get("rise", RISE_BY_SEVERITY[sev] * rng.uniform(0.9, 1.1))
            elevation[f.side] = max(elevation.get(f.side, 0.0), rise)
            params[key] = {"rise_fraction_of_lung_height": round(rise, 4)}
        elif family == "emphysema":
            emphysema = max(emphysema, EMPHYSEMA_BY_SEVERITY[sev])
            params[key] = {"strength": emphysema}
        elif family == "spine":
            dev = f.extra.get("deviation", SCOLIOSIS_BY_SEVERITY[sev] * rng.uniform(0.9, 1.1))
            scoliosis = SIDE_SIGN[f.side] * dev * patient.lung_width
            params[key] = {"deviation_fraction_of_thorax": round(dev, 4), "convex_to": f.side}
    return Modifiers(ctr, elevation, emphysema, scoliosis), params


def _geometric_support(anat: Anatomy, f: Finding) -> np.ndarray:
    name = {"heart": "heart", "emphysema": "emphysema", "spine": "scoliosis",
            "diaphragm": f"elevation:{f.side}"}[f.spec.family]
    return anat.changed.get(name, np.zeros((anat.size, anat.size), bool))


# ---------------------------------------------------------------------------------------------
# Helpers shared by the drawers
# ---------------------------------------------------------------------------------------------
def _sides(f: Finding) -> list[str]:
    return ["right", "left"] if f.side == "bilateral" else [f.side]


def _lung_at(anat: Anatomy, side: str, u: float, v: float) -> float:
    x, y = anat.frame.to_image(u, v)
    col, row = int(np.clip(x * anat.size, 0, anat.size - 1)), int(np.clip(y * anat.size, 0, anat.size - 1))
    return float(anat.lung[side][row, col])


def _zone_point(anat: Anatomy, f: Finding, side: str, rng: np.random.Generator,
                across: tuple[float, float] = (0.4, 0.62)) -> tuple[float, float]:
    """A point of the finding's zone of one lung, inside the rendered lung."""
    u_med, u_lat, v_top, v_bot = anat.lung_box(side)
    zone = LOBES[f.extra["lobe"]][1] if "lobe" in f.extra else f.zone
    h = v_bot - v_top
    v = v_top + h * (ZONE_DEPTH[zone] + rng.uniform(-0.04, 0.04))
    u = u_med + (u_lat - u_med) * rng.uniform(*across)
    for _ in range(12):  # step towards the lung centre until well inside the lung
        if _lung_at(anat, side, u, v) > 0.99:
            break
        u += 0.2 * ((u_med + u_lat) / 2 - u)
        v += 0.2 * (v_top + 0.5 * h - v)
    return u, v


def _window(anat: Anatomy, u: float, v: float, ru: float, rv: float | None = None) -> tuple[slice, slice]:
    rv = ru if rv is None else rv
    return anat.frame.window(u - ru, u + ru, v - rv, v + rv)


def _side_air(anat: Anatomy, side: str, rows: slice, cols: slice) -> np.ndarray:
    """Aerated lung of one side, as seen (the lungs never overlap, so a mask separates them)."""
    return anat.air[rows, cols] * (anat.lung[side][rows, cols] > 0)


def _noise_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cu: float, cv: float,
                 scale: float, grid: int = 10) -> np.ndarray:
    """Smooth random texture in [0, 1] around (cu, cv) with features about ``scale/grid*3`` wide."""
    values = ndi.gaussian_filter(rng.standard_normal((grid, grid)), 0.8)
    values = (values - values.min()) / max(np.ptp(values), 1e-6)
    gi = ((v - cv) / (2 * scale) + 0.5) * (grid - 1)
    gj = ((u - cu) / (2 * scale) + 0.5) * (grid - 1)
    return ndi.map_coordinates(values.astype(np.float32), [gi, gj], order=1, mode="nearest")


def _img_xy(anat: Anatomy, u: float, v: float) -> list[float]:
    x, y = anat.frame.to_image(u, v)
    return [round(float(x), 4), round(float(y), 4)]


# ---------------------------------------------------------------------------------------------
# Drawers: each returns density changes and the parameters it chose
# ---------------------------------------------------------------------------------------------
# opacity family: (share of the local air replaced, blobs, spread, edge softness, mottling)
OPACITY_STYLE = {
    "opacity": (0.7, 6, 0.6, 0.8, 0.35),
    "consolidation": (0.9, 7, 0.65, 0.45, 0.15),
    "pneumonia": (0.75, 8, 0.7, 0.5, 0.55),
    "airspace_disease": (0.62, 12, 0.8, 0.7, 0.45),
}


def _draw_opacity(anat: Anatomy, f: Finding, rng: np.random.Generator):
    share, blobs, spread, soft, mottle = OPACITY_STYLE[f.name]
    changes, out = [], {}
    for side in _sides(f):
        u_med, u_lat, _, _ = anat.lung_box(side)
        radius = f.extra.get("extent", OPACITY_RADIUS[f.severity]) * abs(u_lat - u_med)
        cu, cv = _zone_point(anat, f, side, rng, across=(0.5, 0.68))
        rows, cols = _window(anat, cu, cv, 2.2 * radius)
        u, v = anat.frame.u[rows, cols], anat.frame.v[rows, cols]
        cloud = np.zeros(u.shape, np.float32)
        for i in range(blobs):
            du, dv = (0.0, 0.0) if i == 0 else rng.normal(0, spread * radius, 2)
            r = radius * (rng.uniform(0.45, 0.6) if i == 0 else rng.uniform(0.3, 0.5))
            cloud += np.exp(-((u - cu - du) ** 2 + (v - cv - dv) ** 2) / np.float32(r * r))
        shape = (1 - np.exp(-1.5 * cloud)) * ((1 - mottle) + mottle * _noise_field(rng, u, v, cu, cv, radius))
        shape = smoothstep((shape - 0.08) / soft)
        delta = shape * (share * anat.patient.air * _side_air(anat, side, rows, cols)
                         - 0.8 * anat.markings[rows, cols] * (anat.lung[side][rows, cols] > 0))
        changes.append(Change(rows, cols, delta))
        out[side] = {"centre_xy": _img_xy(anat, cu, cv), "radius": round(radius, 4)}
    return changes, {"per_side": out, "air_replaced": share}


def _draw_effusion(anat: Anatomy, f: Finding, rng: np.random.Generator):
    changes, out = [], {}
    for side in _sides(f):
        u_med, u_lat, v_top, v_bot = anat.lung_box(side)
        h = v_bot - v_top
        height = f.extra.get("height", EFFUSION_BY_SEVERITY[f.severity] * rng.uniform(0.93, 1.07))
        level = v_bot - height * h
        lo, hi = min(u_med, u_lat), max(u_med, u_lat)
        rows, cols = anat.frame.window(lo - 0.03, hi + 0.03, level - 0.2 * h, v_bot + 0.3 * h)
        u, v = anat.frame.u[rows, cols], anat.frame.v[rows, cols]
        t = np.clip((u - u_med) / (u_lat - u_med), 0, 1)
        top = level - h * (0.2 * t ** 2 + 0.01)  # the meniscus climbs the lateral chest wall
        fill = smoothstep((v - top) / np.float32(0.09 * h)) * (0.8 + 0.2 * smoothstep((v - top) / np.float32(0.3 * h)))
        lung = anat.lung[side][rows, cols]
        delta = fill * (0.97 * anat.patient.air * _side_air(anat, side, rows, cols)
                        - 0.95 * anat.markings[rows, cols] * (lung > 0) + 0.04 * lung)
        changes.append(Change(rows, cols, delta))
        out[side] = {"height_fraction_of_lung": round(height, 4), "level_y": _img_xy(anat, u_lat, level)[1]}
    return changes, {"per_side": out}


def _draw_atelectasis(anat: Anatomy, f: Finding, rng: np.random.Generator):
    count = {"mild": 1, "moderate": 1, "severe": 2}[f.severity]
    thick = {"mild": 0.006, "moderate": 0.0085, "severe": 0.011}[f.severity]
    changes, out = [], {}
    for side in _sides(f):
        u_med, u_lat, _, v_bot = anat.lung_box(side)
        width = abs(u_lat - u_med)
        bands = []
        for i in range(count):
            cu, cv = _zone_point(anat, f, side, rng, across=(0.4, 0.6))
            cv -= i * 0.06 * (v_bot - anat.lung_box(side)[2])
            length, tilt = width * rng.uniform(0.45, 0.6), math.radians(rng.uniform(-14, 14))
            rows, cols = _window(anat, cu, cv, 0.55 * length + 0.02)
            u, v = anat.frame.u[rows, cols] - cu, anat.frame.v[rows, cols] - cv
            along = math.cos(tilt) * u + math.sin(tilt) * v
            across = -math.sin(tilt) * u + math.cos(tilt) * v + 0.006 * np.sin(along / length * 6.0)
            band = np.exp(-((across / thick) ** 2)) * smoothstep((0.5 * length - np.abs(along)) / (0.15 * length))
            lung = anat.lung[side][rows, cols]
            delta = band * (0.8 * anat.patient.air * _side_air(anat, side, rows, cols)
                            - 0.8 * anat.markings[rows, cols] * (lung > 0))
            changes.append(Change(rows, cols, delta))
            bands.append({"centre_xy": _img_xy(anat, cu, cv), "length": round(length, 4),
                          "tilt_deg": round(math.degrees(tilt), 2)})
        out[side] = bands
    return changes, {"per_side": out, "thickness": thick}


def _draw_edema(anat: Anatomy, f: Finding, rng: np.random.Generator):
    level = {"mild": 0.5, "moderate": 0.75, "severe": 1.0}[f.severity]
    haze_share = (0.55 if f.name == "edema" else 0.2) * level
    vessels = (0.9 if f.name == "edema" else 1.3) * level
    changes = []
    for side in ("right", "left"):
        u_med, u_lat, v_top, v_bot = anat.lung_box(side)
        hu, hv = anat.hila[side]
        cu = hu + 0.25 * (u_lat - hu)
        su, sv = 0.55 * abs(u_lat - u_med), 0.32 * (v_bot - v_top)
        rows, cols = _window(anat, cu, hv, 2.5 * su, 2.5 * sv)
        u, v = anat.frame.u[rows, cols], anat.frame.v[rows, cols]
        haze = np.exp(-(((u - cu) / su) ** 2 + ((v - hv) / sv) ** 2))
        upper = 1 + 0.8 * (1 - smoothstep((v - v_top) / np.float32(0.6 * (v_bot - v_top))))
        delta = (haze_share * haze * anat.patient.air * _side_air(anat, side, rows, cols)
                 + vessels * anat.markings[rows, cols] * upper * np.minimum(1.0, 2 * haze + 0.3))
        changes.append(Change(rows, cols, delta))
        if f.name == "edema" and level >= 0.75:
            changes.append(_kerley_lines(anat, side, rng, level))
    return changes, {"haze": round(haze_share, 3), "vascular_gain": round(vessels, 3),
                     "kerley_lines": f.name == "edema" and level >= 0.75}


def _kerley_lines(anat: Anatomy, side: str, rng: np.random.Generator, level: float) -> Change:
    """Short horizontal septal lines reaching the lateral pleura of the lower zone."""
    u_med, u_lat, v_top, v_bot = anat.lung_box(side)
    h, w = v_bot - v_top, abs(u_lat - u_med)
    rows, cols = anat.frame.window(min(u_med, u_lat), max(u_med, u_lat), v_top + 0.5 * h, v_bot)
    u, v = anat.frame.u[rows, cols], anat.frame.v[rows, cols]
    lines = np.zeros(u.shape, np.float32)
    thick = max(0.0025, 0.8 / anat.size)
    depth = -anat.lung_sdf[side][rows, cols] / anat.size  # distance from the pleura, u units
    lateral = np.clip((u - u_med) / (u_lat - u_med), 0, 1) > 0.55
    for _ in range(int(6 * level) + 2):
        lv = v_top + h * rng.uniform(0.6, 0.85)
        length = w * rng.uniform(0.06, 0.1)
        lines += np.exp(-(((v - lv) / thick) ** 2)) * (1 - smoothstep((depth - length) / (0.3 * length)))
    lung = anat.lung[side][rows, cols]
    return Change(rows, cols, 0.18 * np.minimum(lines, 1) * lung * lateral)


def _draw_pneumothorax(anat: Anatomy, f: Finding, rng: np.random.Generator):
    changes, out = [], {}
    for side in _sides(f):
        u_med, u_lat, v_top, v_bot = anat.lung_box(side)
        h = v_bot - v_top
        collapse = f.extra.get("collapse", COLLAPSE_BY_SEVERITY[f.severity] * rng.uniform(0.92, 1.08))
        centre = (u_med, v_top + 0.8 * h)
        sdf = sample_lung_sdf(anat.frame, anat.placement, anat.info, side,
                              lung_warp(anat.info, side, anat.modifiers), shrink=(*centre, 1 - collapse))
        lo, hi = min(u_med, u_lat), max(u_med, u_lat)
        rows, cols = anat.frame.window(lo - 0.03, hi + 0.03, v_top - 0.05, v_bot + 0.15)
        lung, sdf = anat.lung[side][rows, cols], sdf[rows, cols]
        space = lung * (1 - np.clip(0.5 - sdf, 0, 1))  # pleural air between lung edge and chest wall
        width = max(0.7, anat.size / 320)
        inside = smoothstep((-anat.lung_sdf[side][rows, cols] - 1.0) / 2.0)
        line = np.exp(-((sdf / np.float32(width)) ** 2)) * lung * inside
        delta = (-anat.markings[rows, cols] * (space > 0) * (1 - line) - 0.12 * anat.patient.air * space
                 + 0.24 * line)
        changes.append(Change(rows, cols, delta))
        out[side] = {"collapse_fraction": round(collapse, 4), "collapse_centre_xy": _img_xy(anat, *centre)}
    return changes, {"per_side": out}


def _draw_nodule(anat: Anatomy, f: Finding, rng: np.random.Generator):
    side, scale = f.side, anat.placement.width / 0.73
    radius = f.extra.get("radius", NODULE_RADIUS[f.name][f.severity] * rng.uniform(0.9, 1.1) * scale)
    cu, cv = _zone_point(anat, f, side, rng, across=(0.35, 0.65))
    rows, cols = _window(anat, cu, cv, 1.35 * radius + 3 / anat.size)
    du, dv = anat.frame.u[rows, cols] - cu, anat.frame.v[rows, cols] - cv
    rho = np.sqrt(du * du + dv * dv)
    edge = radius
    if f.name == "mass":  # lobulated outline
        theta = np.arctan2(dv, du)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        edge = radius * (1 + 0.1 * np.sin(3 * theta + p1) + 0.06 * np.sin(5 * theta + p2))
    disc = np.clip(0.5 + (edge - rho) * np.float32(anat.size / 1.2), 0, 1)
    sphere = np.sqrt(np.clip(1 - (rho / edge) ** 2, 0, 1))
    air = _side_air(anat, side, rows, cols)
    delta = disc * (0.6 * anat.patient.air * air + 0.2 * sphere)
    return [Change(rows, cols, delta)], {"centre_xy": _img_xy(anat, cu, cv), "radius": round(radius, 4)}


def _draw_granuloma(anat: Anatomy, f: Finding, rng: np.random.Generator):
    changes, spots = [], []
    for _ in range(int(f.extra.get("count", 1))):
        radius = rng.uniform(0.0065, 0.0085) * anat.placement.width / 0.73
        cu, cv = _zone_point(anat, f, f.side, rng, across=(0.3, 0.7))
        rows, cols = _window(anat, cu, cv, radius + 3 / anat.size)
        rho = np.hypot(anat.frame.u[rows, cols] - cu, anat.frame.v[rows, cols] - cv)
        disc = np.clip(0.5 + (radius - rho) * np.float32(anat.size), 0, 1)
        changes.append(Change(rows, cols, 0.75 * disc * (0.6 + 0.4 * np.sqrt(np.clip(1 - (rho / radius) ** 2, 0, 1)))))
        spots.append({"centre_xy": _img_xy(anat, cu, cv), "radius": round(radius, 4)})
    return changes, {"spots": spots}


# ---------------------------------------------------------------------------------------------
# Devices: metal and radio-opaque tubes
# ---------------------------------------------------------------------------------------------
def _spline(points: list[tuple[float, float]], per_segment: int = 24) -> np.ndarray:
    """Catmull-Rom curve through ``points`` (u, v), as an (N, 2) array."""
    p = np.asarray(points, float)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(p[-2][None, :])
    return np.vstack(out)


def _polyline(anat: Anatomy, curve_uv: np.ndarray, width: float) -> Change:
    """A tube of ``width`` (u units) along a curve: splat points densely, then blur (window only)."""
    n = anat.size
    x, y = anat.frame.to_image(curve_uv[:, 0], curve_uv[:, 1])
    px, py = x * n - 0.5, y * n - 0.5
    seg = np.hypot(np.diff(px), np.diff(py))
    arc = np.concatenate([[0], np.cumsum(seg)])
    steps = np.arange(0, arc[-1], 0.35)
    px, py = np.interp(steps, arc, px), np.interp(steps, arc, py)
    sigma = max(width * n / 2.355, 0.45)
    pad = int(3 * sigma) + 3
    r0, r1 = max(int(py.min()) - pad, 0), min(int(py.max()) + pad + 2, n)
    c0, c1 = max(int(px.min()) - pad, 0), min(int(px.max()) + pad + 2, n)
    acc = np.zeros((r1 - r0, c1 - c0), np.float32)
    fx, fy = px - c0, py - r0
    ix, iy = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = fx - ix, fy - iy
    for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        jx, jy = ix + dx, iy + dy
        ok = (jx >= 0) & (jx < acc.shape[1]) & (jy >= 0) & (jy < acc.shape[0])
        np.add.at(acc, (jy[ok], jx[ok]), 0.35 * w[ok])
    line = ndi.gaussian_filter(acc, sigma, truncate=3.0) * np.float32(math.sqrt(2 * math.pi) * sigma)
    return Change(slice(r0, r1), slice(c0, c1), np.minimum(line, 1.0))


def _draw_pacemaker(anat: Anatomy, f: Finding, rng: np.random.Generator):
    pl, sign = anat.placement, SIDE_SIGN[f.side]
    W, mid = pl.width, pl.mid
    gu, gv = mid + sign * rng.uniform(0.25, 0.3) * W, pl.v(rng.uniform(0.14, 0.2))
    tilt = math.radians(rng.uniform(-15, 15))
    a, b = 0.05 * W, 0.036 * W
    rows, cols = _window(anat, gu, gv, 1.3 * a)
    du, dv = anat.frame.u[rows, cols] - gu, anat.frame.v[rows, cols] - gv
    p, q = math.cos(tilt) * du + math.sin(tilt) * dv, -math.sin(tilt) * du + math.cos(tilt) * dv
    rho = ((p / a) ** 4 + (q / b) ** 4) ** 0.25
    body = np.clip(0.5 + (1 - rho) * np.float32(b * anat.size), 0, 1)
    header = body * (q < -0.45 * b)  # the lead connector block is less dense than the can
    generator = Change(rows, cols, 2.2 * body - 1.2 * header)
    heart = heart_geometry(pl, anat.info, anat.patient, anat.modifiers)
    apex = (heart["cx"] + 0.4 * heart["half_width"], heart["apex_v"] - 0.05 * pl.height)  # right ventricle
    atrium = (mid - 0.06 * W, 0.5 * (pl.v(0.42) + heart["apex_v"]))
    path = [(gu - sign * 0.3 * a, gv - 0.6 * b), (mid + sign * 0.15 * W, pl.v(0.1)),
            (mid - 0.05 * W, pl.v(0.2)), atrium, (mid, heart["apex_v"] - 0.02 * pl.height), apex]
    lead = _polyline(anat, _spline(path), 0.0055 * W / 0.73)
    return [generator, lead], {"generator_xy": _img_xy(anat, gu, gv), "lead_tip_xy": _img_xy(anat, *apex)}


def _draw_central_line(anat: Anatomy, f: Finding, rng: np.random.Generator):
    pl, sign = anat.placement, SIDE_SIGN[f.side]
    W, mid = pl.width, pl.mid
    tip = (mid - 0.045 * W, pl.v(rng.uniform(0.36, 0.42)))
    if f.side == "right":
        path = [(mid - 0.11 * W, -0.02), (mid - 0.09 * W, pl.v(0.05)), (mid - 0.06 * W, pl.v(0.2)), tip]
    else:
        path = [(mid + 0.11 * W, -0.02), (mid + 0.095 * W, pl.v(0.06)), (mid + 0.03 * W, pl.v(0.2)),
                (mid - 0.025 * W, pl.v(0.27)), tip]
    line = _polyline(anat, _spline(path), 0.007 * W / 0.73)
    line.delta *= 0.75
    return [line], {"tip_xy": _img_xy(anat, *tip), "entry": "internal jugular", "side_sign": sign}


def _draw_sternotomy(anat: Anatomy, f: Finding, rng: np.random.Generator):
    pl = anat.placement
    count = int(rng.integers(5, 8))
    changes, wires = [], []
    for i, t in enumerate(np.linspace(0.16, 0.62, count)):
        cu, cv = pl.mid + rng.normal(0, 0.006) * pl.width, pl.v(t + rng.uniform(-0.015, 0.015))
        rx, ry = 0.026 * pl.width, 0.009 * pl.width
        rows, cols = _window(anat, cu, cv, 1.6 * rx)
        du, dv = anat.frame.u[rows, cols] - cu, anat.frame.v[rows, cols] - cv
        tilt = math.radians(rng.uniform(-8, 8))
        p, q = math.cos(tilt) * du + math.sin(tilt) * dv, -math.sin(tilt) * du + math.cos(tilt) * dv
        rho = np.sqrt((p / rx) ** 2 + (q / ry) ** 2)
        thick = max(0.0025 * pl.width / 0.73, 0.6 / anat.size) / ry
        ring = np.exp(-(((rho - 1) / thick) ** 2))
        knot = np.exp(-(((p - rx) ** 2 + q ** 2) / (1.8 * ry) ** 2))  # twisted ends
        changes.append(Change(rows, cols, 1.6 * np.minimum(ring + knot, 1.0)))
        wires.append(_img_xy(anat, cu, cv))
    return changes, {"wires_xy": wires}


def _draw_nothing(anat: Anatomy, f: Finding, rng: np.random.Generator):
    return [], {}


DRAWERS: dict[str, Callable[[Anatomy, Finding, np.random.Generator], tuple[list[Change], dict]]] = {
    "normal": _draw_nothing,
    "opacity": _draw_opacity,
    "effusion": _draw_effusion,
    "atelectasis": _draw_atelectasis,
    "edema": _draw_edema,
    "pneumothorax": _draw_pneumothorax,
    "nodule": _draw_nodule,
    "granuloma": _draw_granuloma,
    "device": lambda anat, f, rng: _DEVICE_DRAWERS[f.name](anat, f, rng),
}
_DEVICE_DRAWERS = {"pacemaker": _draw_pacemaker, "central_line": _draw_central_line, "sternotomy": _draw_sternotomy}


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------
def measure_ctr(anat: Anatomy) -> dict[str, float]:
    """Cardiothoracic ratio measured on the rendered masks, as a radiologist would.

    Cardiac width = largest extent of the heart border right of the midline where it meets
    aerated right lung, plus the same on the left; thorax width = widest span of the lungs.
    """
    heart = anat.heart > 0.5
    right, left = anat.lung["right"] > 0.5, anat.lung["left"] > 0.5
    rows = np.nonzero(heart.any(axis=1))[0]
    lung_cols = np.nonzero((right | left).any(axis=0))[0]
    if rows.size == 0 or lung_cols.size == 0:
        return {"ctr": float("nan"), "cardiac_width_px": 0.0, "thorax_width_px": 0.0}
    band = heart[rows]
    first = np.argmax(band, axis=1)
    last = band.shape[1] - 1 - np.argmax(band[:, ::-1], axis=1)
    n = anat.size
    ok_r = right[rows, np.clip(first - 2, 0, n - 1)]  # heart border against aerated lung
    ok_l = left[rows, np.clip(last + 2, 0, n - 1)]
    lo = first[ok_r].min() if ok_r.any() else first.min()
    hi = last[ok_l].max() if ok_l.any() else last.max()
    cardiac, thorax = float(hi - lo + 1), float(lung_cols[-1] - lung_cols[0] + 1)
    return {"ctr": round(cardiac / thorax, 4), "cardiac_width_px": cardiac, "thorax_width_px": thorax}


def _mask_summary(mask: np.ndarray) -> dict[str, Any]:
    n = mask.shape[0]
    count = int(mask.sum())
    if count == 0:
        return {"mask_pixels": 0, "mask_fraction": 0.0, "centroid_xy": None, "image_half": None}
    rows, cols = np.nonzero(mask)
    right_share = float((cols >= n / 2).mean())
    half = "right" if right_share > 0.8 else "left" if right_share < 0.2 else "both"
    return {"mask_pixels": count, "mask_fraction": round(count / mask.size, 5),
            "centroid_xy": [round(float(cols.mean() + 0.5) / n, 4), round(float(rows.mean() + 0.5) / n, 4)],
            "image_half": half}


def _truth(text, seed, size, items, params, masks, anat: Anatomy, source: str) -> dict[str, Any]:
    findings = []
    for key, f, _ in items:
        entry = {"key": key, **f.to_dict(), "family": f.spec.family, "text": f.describe(),
                 "params": params.get(key, {}), **_mask_summary(masks[key])}
        if f.side in ("left", "right"):
            entry["expected_image_half"] = "left" if f.side == "right" else "right"
        findings.append(entry)
    labels = sorted({f.name for _, f, _ in items if f.name != "normal"}) or ["normal"]
    pl = anat.placement
    return {
        "synthetic": True, "software": SOFTWARE_NAME, "renderer": "synthex.phantom", "version": RENDER_VERSION,
        "seed": int(seed), "size": int(size), "text": text,
        "orientation": "PA; the patient's right is on the image's left",
        "labels": labels, "findings": findings,
        "patient": {**asdict(anat.patient), "lung_source": source,
                    "lung_box": {"u0": round(pl.u0, 4), "v0": round(pl.v0, 4),
                                 "width": round(pl.width, 4), "height": round(pl.height, 4)}},
        "measurements": {**measure_ctr(anat), "normal_ctr": round(anat.patient.ctr, 4)},
    }


def _anatomy_masks(anat: Anatomy) -> dict[str, np.ndarray]:
    body = anat.density > 0.05
    return {"lung_right": anat.lung["right"] > 0.5, "lung_left": anat.lung["left"] > 0.5,
            "heart": anat.heart > 0.5, "mediastinum": anat.parts["mediastinum"] > 0.5, "body": body}


# ---------------------------------------------------------------------------------------------
# Files: PNG marked as synthetic, truth JSON
# ---------------------------------------------------------------------------------------------
def png_metadata(result: PhantomResult, text: str | None = None) -> dict[str, str]:
    """PNG text chunks that mark a phantom as synthetic and say how to make it again."""
    description = text if text is not None else (result.truth.get("text")
                                                 or ", ".join(f.describe() for f in result.findings) or "normal")
    return {"Software": SOFTWARE_NAME, "Synthetic": "true", "Description": description,
            "Seed": str(result.truth["seed"]), "Size": str(result.truth["size"]),
            "Generator": f"synthex.phantom v{RENDER_VERSION}",
            "Findings": json.dumps([f.to_dict() for f in result.findings])}


def write_png(image: np.ndarray, path: str | Path, metadata: Mapping[str, str], *, overwrite: bool = False) -> Path:
    """Write a grayscale or RGB uint8 image as PNG with text chunks, atomically.

    Refuses to replace an existing file unless ``overwrite`` (raises OutputExistsError).
    """
    from PIL import Image, PngImagePlugin

    path = Path(path)
    _refuse_overwrite([path], overwrite)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value)) if not str(value).isascii() else info.add_text(key, str(value))
    _atomic(path, lambda handle: Image.fromarray(image).save(handle, format="PNG", pnginfo=info))
    return path


def save_phantom(result: PhantomResult, png_path: str | Path, *, truth_path: str | Path | None = None,
                 text: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the phantom PNG (metadata from :func:`png_metadata`) and optionally its truth JSON.

    Both targets are checked before anything is written, so a refusal leaves no partial output.
    """
    targets = [Path(png_path)] + ([Path(truth_path)] if truth_path is not None else [])
    _refuse_overwrite(targets, overwrite)
    written = [write_png(result.image, targets[0], png_metadata(result, text), overwrite=True)]
    if truth_path is not None:
        body = json.dumps(result.truth, indent=2).encode("utf-8") + b"\n"
        _atomic(targets[1], lambda handle: handle.write(body))
        written.append(targets[1])
    return written


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exists; pass --overwrite to replace it")


def _atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a hidden temp file in the same folder, then rename over ``path``."""
    atomic_write(path, write)
