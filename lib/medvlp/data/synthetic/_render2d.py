"""Procedural 2D rendering of the synthetic figure corpus: one background per modality, one painter
per (modality, concept).

Everything is float64 numpy on precomputed pixel grids (no per-pixel Python loops); images are
``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) floats in [0, 1] until :func:`to_uint8`. Anatomy is laid out
in fractions of the panel height/width (so a 128 x 64 compound panel is a narrower body); findings
are sized in pixels of a 128-px image (6-30 px across; effusion/cardiomegaly/ascites larger).
Every panel gets a random pose (rotation, zoom, uneven aspect, shift of the canvas coordinates) and a
smooth illumination field, so that figures of one modality do not share a layout or a perceptual hash.

A painter returns a :class:`Layer`: an alpha map, the colour to blend in, and the finding's
footprint (its mask). :func:`render_panel` places the drawn concepts largest first, retries a
placement that would hide another finding, and builds the label map (value ``i`` = ``findings[i-1]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

RGB_MODALITIES = frozenset({"fundus", "dermoscopy", "histopathology"})

Color = float | tuple[float, float, float] | np.ndarray


# ----------------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``yy, xx``, each ``[H, W]`` float64 (read-only, cached per shape)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@dataclass
class Canvas:
    """The panel being drawn: image, grids, placement regions and named anatomy geometry."""

    img: np.ndarray
    yy: np.ndarray
    xx: np.ndarray
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    geom: dict[str, object] = field(default_factory=dict)

    @property
    def h(self) -> int:
        return self.img.shape[0]

    @property
    def w(self) -> int:
        return self.img.shape[1]


@dataclass
class Layer:
    """One finding: ``alpha`` [H, W] in [0, 1], ``color`` broadcastable to the image, ``foot`` bool [H, W]."""

    alpha: np.ndarray
    color: Color
    foot: np.ndarray


@dataclass
class Panel:
    """A rendered panel: ``pixels`` uint8 [H, W] or [H, W, 3], ``labels`` uint8 [H, W] (0 = none,
    ``i`` = ``findings[i-1]``), ``centers`` concept id -> (y, x) centroid in pixels."""

    pixels: np.ndarray
    labels: np.ndarray
    findings: list[str]
    centers: dict[str, tuple[float, float]]


def _ell(cv: Canvas, cy: float, cx: float, ry: float, rx: float, theta: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (1 on the ellipse boundary) of every pixel, ``[H, W]``."""
    dy = cv.yy - cy
    dx = cv.xx - cx
    if theta:
        c, s = np.cos(theta), np.sin(theta)
        dx, dy = dx * c + dy * s, -dx * s + dy * c
    return np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)


def _dist(cv: Canvas, cy: float, cx: float) -> np.ndarray:
    return np.sqrt((cv.yy - cy) ** 2 + (cv.xx - cx) ** 2)


def _edge(rn: np.ndarray, radius_px: float, soft: float = 1.0) -> np.ndarray:
    """Alpha from a normalised radius: 1 inside, 0 outside, a linear ramp ``soft`` pixels wide."""
    return np.clip((1.0 - rn) * (radius_px / soft) + 0.5, 0.0, 1.0)


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]
            ) -> np.ndarray:
    """Gaussian-filtered white noise scaled to roughly unit standard deviation."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    n = ndimage.gaussian_filter(rng.standard_normal(shape), (sy, sx), mode="reflect")
    return n * (2.0 * np.sqrt(np.pi * sy * sx))


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth large-scale noise ``[H, W]``: a ``cells`` x ``cells`` Gaussian grid, smoothstep-interpolated."""
    g = rng.standard_normal((cells + 1, cells + 1))
    fy = np.arange(h, dtype=np.float64) * (cells / max(h - 1, 1))
    fx = np.arange(w, dtype=np.float64) * (cells / max(w - 1, 1))
    iy = np.minimum(fy.astype(np.int64), cells - 1)
    ix = np.minimum(fx.astype(np.int64), cells - 1)
    ty = fy - iy
    tx = fx - ix
    ty = (ty * ty * (3.0 - 2.0 * ty))[:, None]
    tx = tx * tx * (3.0 - 2.0 * tx)
    rows = g[:, ix] * (1.0 - tx) + g[:, ix + 1] * tx          # [cells + 1, W], then along y
    return rows[iy] * (1.0 - ty) + rows[iy + 1] * ty


def _pick(cv: Canvas, rng: np.random.Generator, region: np.ndarray) -> tuple[float, float] | None:
    """A random point (y, x) in canvas coordinates inside a boolean region; None if it is empty."""
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return None
    k = int(idx[rng.integers(idx.size)])
    return float(cv.yy.flat[k]) + rng.uniform(-0.4, 0.4), float(cv.xx.flat[k]) + rng.uniform(-0.4, 0.4)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=px) if px > 0 else mask


def _blend(img: np.ndarray, alpha: np.ndarray, color: Color) -> np.ndarray:
    """``img * (1 - alpha) + color * alpha`` for grey ``[H, W]`` or RGB ``[H, W, 3]`` images."""
    if img.ndim == 3:
        a = alpha[..., None]
        col = np.asarray(color, dtype=np.float64)
        if col.ndim == 2:
            col = col[..., None]
        return img * (1.0 - a) + col * a
    return img * (1.0 - alpha) + np.asarray(color, dtype=np.float64) * alpha


def _rgb(c: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(c, dtype=np.float64)


def _mix(a: Color, b: Color, t: np.ndarray) -> np.ndarray:
    """Per-pixel colour between ``a`` (t = 0) and ``b`` (t = 1): ``[H, W, 3]``."""
    t3 = np.clip(t, 0.0, 1.0)[..., None]
    return _rgb(a) * (1.0 - t3) + _rgb(b) * t3


def _spots(cv: Canvas, centers: list[tuple[float, float]], radii: list[float], pad: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Alpha (union of hard-edged disks) and footprint (disks grown by ``pad`` px) of small spots."""
    alpha = np.zeros((cv.h, cv.w))
    foot = np.zeros((cv.h, cv.w), dtype=bool)
    for (y, x), r in zip(centers, radii):
        d = _dist(cv, y, x)
        alpha = np.maximum(alpha, np.clip(r - d + 0.5, 0.0, 1.0))
        foot |= d <= r + pad
    return alpha, foot


def _cluster(rng: np.random.Generator, c: tuple[float, float], n: int, spread: float
             ) -> list[tuple[float, float]]:
    ang = rng.uniform(0, 2 * np.pi, n)
    rad = spread * np.sqrt(rng.uniform(0.0, 1.0, n))
    return [(c[0] + float(r * np.sin(a)), c[1] + float(r * np.cos(a))) for a, r in zip(ang, rad)]


def _blob(cv: Canvas, rng: np.random.Generator, c: tuple[float, float], radius: float, rough: float,
          aspect: float = 1.0, soft: float = 1.5) -> np.ndarray:
    """Alpha of an irregular blob of mean ``radius`` px whose border wobbles by ``rough`` (fraction)."""
    theta = rng.uniform(0, np.pi)
    rn = _ell(cv, c[0], c[1], radius * aspect, radius, theta)
    phi = np.arctan2(cv.yy - c[0], cv.xx - c[1])
    k = rng.integers(2, 5, size=3)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    amp = rng.uniform(0.3, 1.0, size=3)
    wob = sum(a * np.cos(kk * phi + p) for a, kk, p in zip(amp, k, ph)) / amp.sum()
    return _edge(rn / (1.0 + rough * wob), radius, soft)


# -------------------------------------------------------------------------------------- chest X-ray
def _bg_chest(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    cv = Canvas(np.full((h, w), 0.05), yy, xx)
    cx = w * (0.5 + rng.uniform(-0.03, 0.03))
    torso = _edge(_ell(cv, h * 0.62, cx, h * 0.68, w * 0.5 * rng.uniform(0.9, 1.0)), w * 0.45, 3.0)
    cv.img = _blend(cv.img, torso, 0.40 + rng.uniform(-0.04, 0.04))
    # hemidiaphragms: domes, lower laterally; the patient's right (image left) sits higher
    dome_y = {s: h * (rng.uniform(0.70, 0.75) - (0.02 if s < 0 else 0.0)) for s in (-1, 1)}
    lungs = {}
    alpha_l = np.zeros((h, w))
    texture = _smooth(rng, (h, w), 1.2)
    for s in (-1, 1):
        lcx = cx + s * w * rng.uniform(0.19, 0.22)
        lcy = h * rng.uniform(0.42, 0.46)
        lry, lrx = h * rng.uniform(0.28, 0.32), w * rng.uniform(0.135, 0.165)
        theta = s * rng.uniform(0.03, 0.12)
        dome = dome_y[s] + 0.05 * h * ((xx - lcx) / lrx) ** 2
        rn = _ell(cv, lcy, lcx, lry, lrx, theta)
        a = _edge(rn, lrx, 2.0) * np.clip((dome - yy) / 1.5 + 0.5, 0.0, 1.0)
        lungs[s] = (lcy, lcx, lry, lrx, theta)
        cv.regions[f"lung{s:+d}"] = a > 0.5
        alpha_l = np.maximum(alpha_l, a)
    hil = np.zeros((h, w))                                      # hilar vessels: brighter medially
    for s in (-1, 1):
        lcy, lcx, _, lrx, _ = lungs[s]
        d2 = (xx - (lcx - s * 0.7 * lrx)) ** 2 + (yy - lcy - 0.05 * h) ** 2
        hil += np.exp(-d2 / (2 * (0.45 * lrx) ** 2))
    lung_val = 0.13 + rng.uniform(-0.03, 0.03) + 0.035 * texture + 0.12 * hil
    cv.img = _blend(cv.img, alpha_l, lung_val)
    # posterior ribs: bright bands sloping down laterally
    spacing = h * rng.uniform(0.075, 0.09)
    phase = (yy - 0.9 * h * ((xx - cx) / w) ** 2) / spacing + rng.uniform(0, 1)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6
    cv.img = cv.img + 0.10 * ribs * torso * (yy < h * 0.78)
    # mediastinum + trachea, heart, abdomen below the diaphragm, spine
    med = _edge(np.abs(xx - cx) / (w * rng.uniform(0.06, 0.075)), w * 0.07, 2.0) * (yy < h * 0.7)
    cv.img = _blend(cv.img, med, 0.58)
    cv.img = _blend(cv.img, _edge(np.abs(xx - cx) / (w * 0.018), w * 0.018, 1.0) * (yy < h * 0.33), 0.22)
    heart = (h * rng.uniform(0.60, 0.64), cx + w * rng.uniform(0.03, 0.05),
             h * rng.uniform(0.11, 0.13), w * rng.uniform(0.12, 0.145))
    cv.img = _blend(cv.img, _edge(_ell(cv, *heart), heart[3], 2.0), 0.58)
    dome_all = np.where(xx < cx, dome_y[-1] + 0.05 * h * ((xx - lungs[-1][1]) / lungs[-1][3]) ** 2,
                        dome_y[1] + 0.05 * h * ((xx - lungs[1][1]) / lungs[1][3]) ** 2)
    cv.img = _blend(cv.img, np.clip((yy - dome_all) / 2.0 + 0.5, 0, 1) * torso, 0.52)
    cv.img = cv.img + 0.05 * _edge(np.abs(xx - cx) / (w * 0.05), w * 0.05, 2.0) * torso
    cv.regions["lung"] = cv.regions["lung-1"] | cv.regions["lung+1"]
    cv.geom.update(cx=cx, lungs=lungs, dome_y=dome_y, heart=heart)
    return cv


def _cxr_dome(cv: Canvas, s: int) -> np.ndarray:
    lcy, lcx, lry, lrx, _ = cv.geom["lungs"][s]
    return cv.geom["dome_y"][s] + 0.05 * cv.h * ((cv.xx - lcx) / lrx) ** 2


def _cxr_effusion(cv: Canvas, rng: np.random.Generator) -> Layer:
    s = int(rng.choice((-1, 1)))
    lcy, lcx, lry, lrx, theta = cv.geom["lungs"][s]
    dome = _cxr_dome(cv, s)
    depth = cv.h * rng.uniform(0.09, 0.18)
    lat = np.clip(s * (cv.xx - lcx) / lrx, 0.0, 1.0)
    level = dome - depth - 0.6 * depth * lat                    # meniscus: climbs laterally
    region = (_ell(cv, lcy, lcx, lry, lrx, theta) < 1.05) & (cv.yy > level) & (cv.yy < dome + 3)
    alpha = ndimage.gaussian_filter(region.astype(np.float64), 1.0)
    color = 0.58 + 0.05 * np.clip((cv.yy - level) / depth, 0, 1)
    return Layer(alpha, color, alpha > 0.5)


def _cxr_pneumothorax(cv: Canvas, rng: np.random.Generator) -> Layer:
    s = int(rng.choice((-1, 1)))
    lcy, lcx, lry, lrx, theta = cv.geom["lungs"][s]
    rn = _ell(cv, lcy, lcx, lry, lrx, theta)
    phi = np.arctan2((cv.yy - lcy) / lry, s * (cv.xx - lcx) / lrx)     # 0 = lateral, -pi/2 = apex
    phi0 = -np.pi / 2 + rng.uniform(0.2, 1.1)
    t = rng.uniform(0.22, 0.36) * np.clip(np.cos(phi - phi0), 0.0, 1.0) ** 1.5
    crescent = (rn < 1.0) & (rn > 1.0 - t) & cv.regions[f"lung{s:+d}"]
    line = (np.abs(rn - (1.0 - t)) < 0.035) & (t > 0.04) & (rn < 1.0)
    alpha = crescent.astype(np.float64)
    alpha = np.maximum(alpha, 0.9 * line)
    color = np.where(line & ~crescent, 0.5, 0.02)
    return Layer(alpha, color, crescent | (line & (alpha > 0.5)))


def _cxr_cardiomegaly(cv: Canvas, rng: np.random.Generator) -> Layer:
    cy0, cx0, _, _ = cv.geom["heart"]
    ry, rx = cv.h * rng.uniform(0.15, 0.185), cv.w * rng.uniform(0.22, 0.27)
    rn = _ell(cv, cy0 + cv.h * rng.uniform(0.0, 0.02), cx0 + cv.w * rng.uniform(0.02, 0.05), ry, rx,
              rng.uniform(-0.15, 0.05))
    alpha = _edge(rn, rx, 2.0)
    return Layer(alpha, 0.6 + rng.uniform(-0.03, 0.03), alpha > 0.5)


def _cxr_consolidation(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["lung"], 4))
    if c is None:
        return None
    radius = rng.uniform(7.0, 12.0)
    n = _smooth(rng, (cv.h, cv.w), 2.0)
    rn = _dist(cv, *c) / radius - 0.22 * n
    lung = ndimage.gaussian_filter(cv.regions["lung"].astype(np.float64), 1.0)
    alpha = np.clip((1.0 - rn) * 3.0, 0.0, 1.0) * lung
    color = 0.5 + rng.uniform(-0.04, 0.04) + 0.05 * _smooth(rng, (cv.h, cv.w), 1.0)
    return Layer(alpha, color, alpha > 0.5)


def _cxr_nodule(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    r = rng.uniform(2.8, 4.5)
    c = _pick(cv, rng, _erode(cv.regions["lung"], int(np.ceil(r)) + 1))
    if c is None:
        return None
    d = _dist(cv, *c)
    alpha = np.clip(r - d + 0.5, 0.0, 1.0)
    color = rng.uniform(0.82, 0.95) - 0.12 * np.clip(d / r, 0, 1) ** 2
    return Layer(alpha, color, d <= r + 0.5)


# ---------------------------------------------------------------------------------------- CT slice
def _bg_ct(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    cv = Canvas(np.zeros((h, w)), yy, xx)
    cy, cx = h * rng.uniform(0.48, 0.53), w * rng.uniform(0.47, 0.53)
    bry, brx = h * rng.uniform(0.31, 0.43), w * rng.uniform(0.37, 0.48)
    rb = _ell(cv, cy, cx, bry, brx)
    table_y = cy + bry + h * rng.uniform(0.03, 0.09)                            # scanner table
    cv.img = _blend(cv.img, _edge(np.abs(yy - table_y - 0.002 * (xx - cx) ** 2) / 1.5, 1.5, 1.0), 0.5)
    if rng.random() < 0.35:                                                     # arms down
        for s in (-1, 1):
            arm = _ell(cv, cy + h * rng.uniform(-0.05, 0.1), cx + s * (brx + w * rng.uniform(0.06, 0.1)),
                       h * rng.uniform(0.08, 0.11), w * rng.uniform(0.05, 0.07))
            cv.img = _blend(cv.img, _edge(arm, w * 0.05, 1.2), 0.42)
            cv.img = _blend(cv.img, _edge(arm / 0.35, w * 0.02, 1.0), 0.9)
    cv.img = _blend(cv.img, _edge(rb, brx, 1.5), 0.22)                          # subcutaneous fat
    cv.img = _blend(cv.img, _edge(rb / 0.9, brx * 0.9, 1.5), 0.46)                 # muscle wall
    interior = rb < 0.84
    tex = _smooth(rng, (h, w), 2.5)
    bowel = _edge(rb / 0.84, brx * 0.84, 1.5)
    cv.img = _blend(cv.img, bowel, np.where(tex > 0.3, 0.45, 0.27) + 0.02 * tex)  # bowel loops in fat
    gas = (_smooth(rng, (h, w), 1.0) > 2.3) & (rb < 0.7)
    cv.img = np.where(gas, 0.03, cv.img)
    jit = lambda a: a * rng.uniform(0.9, 1.1)  # noqa: E731
    liver = (cy - h * 0.06, cx - w * 0.19, jit(h * 0.2), jit(w * 0.19), rng.uniform(-0.3, 0.1))
    r_liver = _ell(cv, *liver)
    cv.img = _blend(cv.img, _edge(r_liver, liver[3], 1.2) * interior, 0.56 + 0.015 * tex)
    spleen = (cy + h * 0.02, cx + w * 0.29, jit(h * 0.1), jit(w * 0.065), rng.uniform(-0.4, 0.0))
    cv.img = _blend(cv.img, _edge(_ell(cv, *spleen), spleen[3], 1.2) * interior, 0.54)
    retro = (cy + h * 0.13, cx, h * 0.1, w * 0.14)                                # retroperitoneal fat
    cv.img = _blend(cv.img, _edge(_ell(cv, *retro), retro[3], 2.0), 0.22)
    kidneys = {}
    for s in (-1, 1):
        k = (cy + h * 0.13, cx + s * w * 0.17, jit(h * 0.085), jit(w * 0.05), s * rng.uniform(0.2, 0.45))
        rk = _ell(cv, *k)
        cv.img = _blend(cv.img, _edge(rk, k[3], 1.0), 0.62)
        cv.img = _blend(cv.img, _edge(_ell(cv, k[0], k[1] - s * k[3] * 0.45, k[2] * 0.35, k[3] * 0.35), 2.0),
                        0.3)
        kidneys[s] = k
        cv.regions[f"kidney{s:+d}"] = rk < 0.75
    lungs = {}
    for s in (-1, 1):
        lg = (cy + h * 0.22, cx + s * w * 0.27, h * 0.11, w * 0.14, 0.0)
        a = _edge(_ell(cv, *lg), lg[3], 1.2) * _edge(rb / 0.84, brx, 1.0)
        cv.img = _blend(cv.img, a, 0.05 + 0.03 * _smooth(rng, (h, w), 0.8))
        lungs[s] = a > 0.5
    aorta = (cy + h * 0.12, cx + w * 0.02, w * 0.035 + 1.0)
    cv.img = _blend(cv.img, np.clip(aorta[2] - _dist(cv, aorta[0], aorta[1]) + 0.5, 0, 1), 0.64)
    ivc = _ell(cv, aorta[0] - h * 0.01, cx - w * 0.06, aorta[2] * 0.9, aorta[2] * 1.2)
    cv.img = _blend(cv.img, _edge(ivc, aorta[2], 1.0), 0.5)
    vert = (cy + h * 0.25, cx, h * 0.065, w * 0.06)
    rv = _ell(cv, *vert)
    cv.img = _blend(cv.img, _edge(rv, vert[3], 1.0), 0.95)
    cv.img = _blend(cv.img, _edge(rv / 0.7, vert[3] * 0.7, 1.0), 0.72)
    for s in (-1, 1):                                                               # paraspinal muscles
        cv.img = _blend(cv.img, _edge(_ell(cv, vert[0] + h * 0.05, cx + s * w * 0.1, h * 0.06, w * 0.06),
                                      w * 0.06, 1.5) * interior, 0.46)
    cv.regions["lung"] = _erode(lungs[-1] | lungs[1], 1)
    cv.regions["liver"] = (r_liver < 0.85) & interior & ~(lungs[-1] | lungs[1])
    cv.regions["kidney"] = cv.regions["kidney-1"] | cv.regions["kidney+1"]
    d_ao = _dist(cv, aorta[0], aorta[1])
    cv.regions["nodes"] = ((d_ao > aorta[2] + 4) & (d_ao < aorta[2] + 14) & (rv > 1.4) & (rb < 0.8)
                           & (np.abs(yy - aorta[0]) < h * 0.12) & _erode(cv.img < 0.3, 2))   # in fat
    for s in (-1, 1):
        cv.regions["nodes"] &= _ell(cv, *kidneys[s]) > 1.3
    cv.regions["soft"] = (r_liver < 0.7) | (_ell(cv, *spleen) < 0.6)
    cv.geom.update(body=(cy, cx, bry, brx), aorta=aorta, liver=liver, kidneys=kidneys)
    return cv


def _ct_nodule(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    r = rng.uniform(2.6, 4.2)
    c = _pick(cv, rng, _erode(cv.regions["lung"], 1))
    if c is None:
        return None
    d = _dist(cv, *c)
    return Layer(np.clip(r - d + 0.5, 0, 1), rng.uniform(0.55, 0.68), d <= r + 0.5)


def _ct_liver_lesion(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    r = rng.uniform(4.5, 8.5)
    c = _pick(cv, rng, _erode(cv.regions["liver"], int(r * 0.8)))
    if c is None:
        return None
    rn = _ell(cv, c[0], c[1], r * rng.uniform(0.75, 1.0), r, rng.uniform(0, np.pi))
    alpha = _edge(rn, r, 1.5)
    rim = rng.random() < 0.4
    color = np.where(rim & (rn > 0.75), 0.62, rng.uniform(0.28, 0.36))
    return Layer(alpha, color, alpha > 0.5)


def _ct_kidney_stone(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["kidney"], 1))
    if c is None:
        return None
    r = rng.uniform(2.2, 3.4)
    rn = _ell(cv, c[0], c[1], r * rng.uniform(0.6, 0.9), r, rng.uniform(0, np.pi))
    alpha = _edge(rn, r, 0.7)
    return Layer(alpha, 1.0, rn <= 1.0 + 0.5 / r)


def _ct_ascites(cv: Canvas, rng: np.random.Generator) -> Layer:
    cy, cx, bry, brx = cv.geom["body"]
    rb = _ell(cv, cy, cx, bry, brx)
    phi = np.arctan2((cv.yy - cy) / bry, (cv.xx - cx) / brx)
    phi0 = -np.pi / 2 - rng.uniform(0.2, 1.1)                # anterior, on the liver side
    half = rng.uniform(0.6, 1.0)
    dphi = np.abs((phi - phi0 + np.pi) % (2 * np.pi) - np.pi)
    outer = 0.835
    inner = outer - rng.uniform(0.09, 0.16) * np.clip(1.0 - (dphi / half) ** 2, 0.0, 1.0)
    band = (rb < outer) & (rb > inner) & (dphi < half)
    alpha = ndimage.gaussian_filter(band.astype(np.float64), 0.7)
    return Layer(alpha, 0.36 + rng.uniform(-0.02, 0.02), alpha > 0.5)


def _ct_lymphadenopathy(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["nodes"])
    if c is None:
        return None
    n = int(rng.integers(2, 5))
    centers = [c, *_cluster(rng, c, n - 1, 5.0)]
    alpha = np.zeros((cv.h, cv.w))
    foot = np.zeros((cv.h, cv.w), dtype=bool)
    for y, x in centers:
        r = rng.uniform(2.4, 3.8)
        rn = _ell(cv, y, x, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, np.pi))
        alpha = np.maximum(alpha, _edge(rn, r, 1.0))
        foot |= rn <= 1.0 + 0.5 / r
    return Layer(alpha, 0.55 + rng.uniform(-0.03, 0.03), foot)


def _ct_calcification(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    if rng.random() < 0.6:                                  # atherosclerotic: on the aortic wall
        ay, ax, ar = cv.geom["aorta"]
        a0 = rng.uniform(0, 2 * np.pi)
        n = int(rng.integers(2, 4))
        angs = a0 + np.arange(n) * rng.uniform(0.5, 0.8)
        centers = [(ay + ar * float(np.sin(a)), ax + ar * float(np.cos(a))) for a in angs]
    else:                                                   # granuloma in liver or spleen
        c = _pick(cv, rng, cv.regions["soft"])
        if c is None:
            return None
        centers = [c, *_cluster(rng, c, int(rng.integers(1, 3)), 3.5)]
    radii = [float(rng.uniform(1.1, 1.7)) for _ in centers]
    alpha, foot = _spots(cv, centers, radii, 1.0)
    return Layer(alpha, 1.0, foot)


# --------------------------------------------------------------------------------------- brain MRI
def _bg_brain(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    cv = Canvas(np.zeros((h, w)), yy, xx)
    cy, cx = h * rng.uniform(0.48, 0.53), w * rng.uniform(0.47, 0.53)
    ry = h * rng.uniform(0.34, 0.47)
    rx = min(ry * rng.uniform(0.72, 0.92), w * 0.46)
    rot = rng.uniform(-0.08, 0.08)
    egg = rng.uniform(-0.12, 0.12)                          # head wider at the back or at the front
    r = _ell(cv, cy, cx, ry, rx, rot) / (1.0 + egg * np.clip((yy - cy) / ry, -1.0, 1.0))
    scalp, skull = rng.uniform(0.92, 0.96), rng.uniform(0.86, 0.91)
    cv.img = _blend(cv.img, _edge(r, rx, 1.0), rng.uniform(0.4, 0.75))          # scalp
    cv.img = _blend(cv.img, _edge(r / scalp, rx, 1.0), 0.06)                      # skull
    cv.img = _blend(cv.img, _edge(r / skull, rx, 1.0), 0.14)                      # CSF rim
    brain = _edge(r / (skull - 0.03), rx, 1.0)
    lf = _lowfreq(rng, h, w, 4)
    sulci = np.abs(_smooth(rng, (h, w), 2.2)) < 0.13
    gm = np.where(sulci & (r > 0.5), 0.16, 0.52 + rng.uniform(-0.06, 0.06))
    cv.img = _blend(cv.img, brain, gm)
    wm = _edge(r / (rng.uniform(0.52, 0.68) + 0.05 * lf), rx * 0.6, 2.0)
    cv.img = _blend(cv.img, wm, 0.38 + rng.uniform(-0.03, 0.03))
    fis = _edge(np.abs(cv.xx - cx - (cv.yy - cy) * np.tan(rot)) / 0.8, 1.0, 1.0) * (r > 0.55) * (r < 0.88)
    cv.img = _blend(cv.img, fis, 0.12)
    vent = np.zeros((h, w))
    vsep = w * rng.uniform(0.03, 0.06)
    vry = h * rng.uniform(0.07, 0.16)
    for s in (-1, 1):
        rv = _ell(cv, cy - h * 0.02, cx + s * vsep, vry, w * rng.uniform(0.025, 0.04), rot - s * 0.25)
        vent = np.maximum(vent, _edge(rv, w * 0.03, 1.0))
    cv.img = _blend(cv.img, vent, 0.06)
    inside = r < 0.8
    vmask = vent > 0.5
    near = ndimage.binary_dilation(vmask, iterations=7) & ~ndimage.binary_dilation(vmask, iterations=2)
    cv.regions["brain"] = inside & ~ndimage.binary_dilation(vmask, iterations=2)
    cv.regions["deep"] = (r < 0.5) & ~ndimage.binary_dilation(vmask, iterations=3)
    cv.regions["periventricular"] = near & inside
    cv.geom.update(head=(cy, cx, ry, rx, rot))
    return cv


def _mri_tumor(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    radius = rng.uniform(6.0, 10.0)
    c = _pick(cv, rng, _erode(cv.regions["brain"], int(radius * 0.7)))
    if c is None:
        return None
    d = _dist(cv, *c)
    n = _smooth(rng, (cv.h, cv.w), 1.5)
    rn = d / radius - 0.12 * n
    edema = np.clip((1.0 - d / (radius + 5.0)) * 3.0, 0, 1) * 0.6
    mass = _edge(rn, radius, 1.0)
    alpha = np.maximum(edema, mass)
    color = np.where(rn < 0.55, 0.2, np.where(rn < 1.0, 0.88, 0.68))
    return Layer(alpha, color, mass > 0.5)


def _mri_hemorrhage(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    radius = rng.uniform(4.5, 8.0)
    c = _pick(cv, rng, _erode(cv.regions["brain"], int(radius * 0.8)))
    if c is None:
        return None
    rn = _ell(cv, c[0], c[1], radius * rng.uniform(0.65, 1.0), radius, rng.uniform(0, np.pi))
    alpha = _edge(rn, radius, 0.8)
    color = np.where(rn > 1.0 - 1.2 / radius, 0.08, rng.uniform(0.92, 0.99))
    return Layer(alpha, color, alpha > 0.5)


def _mri_infarct(cv: Canvas, rng: np.random.Generator) -> Layer:
    cy, cx, ry, rx, rot = cv.geom["head"]
    r = _ell(cv, cy, cx, ry, rx, rot)
    phi = np.arctan2((cv.yy - cy) / ry, (cv.xx - cx) / rx)
    phi0 = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.2, 0.32)
    dphi = np.abs((phi - phi0 + np.pi) % (2 * np.pi) - np.pi)
    r0 = rng.uniform(0.38, 0.5)
    wedge = (dphi < half * np.clip((r - r0) / 0.15, 0.3, 1.0)) & (r > r0) & (r < 0.86)
    alpha = ndimage.gaussian_filter(wedge.astype(np.float64), 0.8)
    color = 0.72 + rng.uniform(-0.04, 0.04) + 0.04 * _smooth(rng, (cv.h, cv.w), 1.0)
    return Layer(alpha, color, alpha > 0.5)


def _mri_wml(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    n = int(rng.integers(2, 6))
    alpha = np.zeros((cv.h, cv.w))
    foot = np.zeros((cv.h, cv.w), dtype=bool)
    for _ in range(n):
        c = _pick(cv, rng, cv.regions["periventricular"])
        if c is None:
            return None
        r = rng.uniform(1.8, 3.2)
        rn = _ell(cv, c[0], c[1], r * rng.uniform(0.5, 0.8), r, rng.uniform(0, np.pi))
        alpha = np.maximum(alpha, _edge(rn, r, 1.2))
        foot |= rn <= 1.0 + 0.5 / r
    return Layer(alpha * 0.95, rng.uniform(0.74, 0.84), foot)


def _mri_calcification(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["deep"])
    if c is None:
        return None
    r = rng.uniform(1.5, 2.3)
    d = _dist(cv, *c)
    halo = r + rng.uniform(1.5, 2.2)
    alpha = np.clip(halo - d + 0.5, 0, 1)
    color = np.where(d <= r, 1.0, 0.03)
    return Layer(alpha, color, d <= halo)


# ------------------------------------------------------------------------------------------ fundus
def _bg_fundus(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    cv = Canvas(np.zeros((h, w, 3)), yy, xx)
    scale = np.sqrt(h * w) / 128.0
    # the camera's field of view is fixed to the frame (pixel grid), the retina under it is posed
    py, px = _grid(h, w)
    fy, fx = h * rng.uniform(0.48, 0.52), w * rng.uniform(0.48, 0.52)
    rad = min(h, w) * rng.uniform(0.44, 0.5)
    r = np.sqrt((py - fy) ** 2 + (px - fx) ** 2) / rad
    fov = _edge(r, rad, 1.5)
    if rng.random() < 0.5:                                  # field of view cut flat at top and bottom
        cut = rad * rng.uniform(0.78, 0.94)
        fov = fov * np.clip(cut - np.abs(py - fy) + 0.5, 0.0, 1.0)
    base = np.array([rng.uniform(0.72, 0.9), rng.uniform(0.27, 0.4), rng.uniform(0.07, 0.16)])
    lf = _lowfreq(rng, h, w, 5)
    vign = 1.0 - 0.35 * np.clip(r, 0, 1) ** 2
    retina = base * (vign + 0.05 * lf)[..., None]
    side = rng.choice((-1.0, 1.0))                          # which eye: disc left or right of centre
    dcy, dcx = h * rng.uniform(0.44, 0.56), w * (0.5 + side * rng.uniform(0.2, 0.25))
    rd = rng.uniform(7.5, 9.5) * scale
    mcy, mcx = dcy + rng.uniform(-3, 3) * scale, dcx - side * w * rng.uniform(0.3, 0.35)
    mac = np.exp(-((yy - mcy) ** 2 + (xx - mcx) ** 2) / (2 * (10.0 * scale) ** 2))
    retina = retina * (1.0 - 0.3 * mac)[..., None]
    cv.img = retina * fov[..., None]
    dd = _dist(cv, dcy, dcx)
    cv.img = _blend(cv.img, np.clip((rd - dd) / 2.0 + 0.5, 0, 1), (0.97, 0.8, 0.52))
    rc = rd * rng.uniform(0.25, 0.4)
    cv.img = _blend(cv.img, np.clip((rc - dd) / 1.5 + 0.5, 0, 1), (1.0, 0.94, 0.8))
    # vessels: arcs from the disc, temporal arcades bending around the macula, plus branches
    phi = np.arctan2(yy - dcy, xx - dcx)
    towards = np.arctan2(mcy - dcy, mcx - dcx)
    starts = [towards - 0.9, towards + 0.9, towards + np.pi - 0.7, towards + np.pi + 0.7]
    bends = [0.55, -0.55, -0.3, 0.3]
    vessels = []
    for a0, b in zip(starts, bends):
        a0 += rng.uniform(-0.2, 0.2)
        b *= rng.uniform(0.7, 1.3)
        vessels.append((a0, b, 0.0, rng.uniform(1.3, 1.9) * scale))
        rb = rng.uniform(12, 22) * scale
        vessels.append((a0 + b * rb / 40.0 + rng.choice((-1, 1)) * rng.uniform(0.4, 0.7),
                        b * rng.uniform(0.3, 0.8), rb, rng.uniform(0.8, 1.2) * scale))
    valpha = np.zeros((h, w))
    for a0, b, rstart, width in vessels:
        theta = a0 + b * (dd - rstart) / 40.0
        dist = np.abs((phi - theta + np.pi) % (2 * np.pi) - np.pi) * dd
        wdt = width * np.clip(1.0 - 0.5 * dd / (0.6 * min(h, w) * 1.0), 0.4, 1.0)
        valpha = np.maximum(valpha, np.clip(wdt / 2 - dist + 0.5, 0, 1) * (dd > max(rstart, 0.5 * rd)))
    cv.img = _blend(cv.img, valpha * fov * 0.85, (0.48, 0.06, 0.04))
    inside = (r < 0.86) & _erode(fov > 0.5, 4)
    cv.regions["retina"] = inside & (dd > rd + 5 * scale)
    cv.regions["macula"] = inside & (_dist(cv, mcy, mcx) < 16 * scale) & (dd > rd + 5 * scale)
    cv.geom.update(disc=(dcy, dcx, rd), macula=(mcy, mcx), scale=scale)
    return cv


def _fundus_microaneurysm(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["macula"] if rng.random() < 0.5 else cv.regions["retina"])
    if c is None:
        return None
    n = int(rng.integers(2, 6))
    centers = [c, *_cluster(rng, c, n - 1, 7.0)]
    alpha, foot = _spots(cv, centers, [float(rng.uniform(1.2, 1.8)) for _ in centers], 1.0)
    return Layer(alpha, (0.42, 0.02, 0.03), foot)


def _fundus_hard_exudate(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["macula"] if rng.random() < 0.7 else cv.regions["retina"])
    if c is None:
        return None
    n = int(rng.integers(4, 10))
    ring = rng.uniform(4.0, 8.0)
    a0 = rng.uniform(0, 2 * np.pi)
    angs = a0 + rng.uniform(0, rng.uniform(2.5, 2 * np.pi), n)
    centers = [(c[0] + ring * float(np.sin(a)) + rng.uniform(-1, 1), c[1] + ring * float(np.cos(a))
                + rng.uniform(-1, 1)) for a in angs]
    alpha, foot = _spots(cv, centers, [float(rng.uniform(1.0, 2.1)) for _ in centers], 1.0)
    return Layer(alpha, (1.0, 0.93, 0.32), foot)


def _fundus_drusen(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["macula"])
    if c is None:
        return None
    n = int(rng.integers(4, 9))
    centers = [c, *_cluster(rng, c, n - 1, 10.0)]
    alpha = np.zeros((cv.h, cv.w))
    foot = np.zeros((cv.h, cv.w), dtype=bool)
    for y, x in centers:
        r = rng.uniform(1.8, 3.0)
        d = _dist(cv, y, x)
        alpha = np.maximum(alpha, 0.85 * np.sqrt(np.clip(1.0 - (d / (r + 0.5)) ** 2, 0, 1)))
        foot |= d <= r
    return Layer(alpha, (0.96, 0.86, 0.64), foot)


def _fundus_cupping(cv: Canvas, rng: np.random.Generator) -> Layer:
    dcy, dcx, rd = cv.geom["disc"]
    rc = rd * rng.uniform(0.68, 0.85)
    d = _dist(cv, dcy + rng.uniform(-0.5, 0.5), dcx + rng.uniform(-0.5, 0.5))
    alpha = np.clip((rc - d) / 1.0 + 0.5, 0, 1)
    return Layer(alpha, (1.0, 0.97, 0.9), d <= rc)


# -------------------------------------------------------------------------------------- dermoscopy
def _bg_derm(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    red = rng.uniform(0.78, 0.93)
    green = red * rng.uniform(0.68, 0.78)
    skin = np.array([red, green, green * rng.uniform(0.8, 0.92)])
    lf = _lowfreq(rng, h, w, 4)
    fine = _smooth(rng, (h, w), 0.8)
    cv = Canvas(skin * (1.0 + 0.03 * lf + 0.012 * fine)[..., None], yy, xx)
    cy, cx = h * (0.5 + rng.uniform(-0.1, 0.1)), w * (0.5 + rng.uniform(-0.1, 0.1))
    radius = min(rng.uniform(10.0, 16.0), 0.26 * w)
    theta = rng.uniform(0, np.pi)
    nevus = _blob(cv, rng, (cy, cx), radius, 0.06, rng.uniform(0.8, 1.0), 3.0)
    net = 0.5 + 0.5 * np.cos(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 4.5) \
        * np.cos(2 * np.pi * (-xx * np.sin(theta) + yy * np.cos(theta)) / 4.5)
    brown = _rgb((0.62, 0.42, 0.3)) * rng.uniform(0.88, 1.1)
    cv.img = _blend(cv.img, nevus, brown * (1.0 - 0.08 * net)[..., None])
    for _ in range(int(rng.integers(0, 3))):                                    # hairs
        a = rng.uniform(0, np.pi)
        py, px = rng.uniform(0, h), rng.uniform(0, w)
        u = (xx - px) * np.cos(a) + (yy - py) * np.sin(a)
        v = -(xx - px) * np.sin(a) + (yy - py) * np.cos(a)
        dist = np.abs(v - rng.uniform(-0.01, 0.01) * u ** 2)
        cv.img = _blend(cv.img, np.clip(0.9 - dist, 0, 1) * 0.85 * (np.abs(u) < rng.uniform(30, 90)),
                        (0.16, 0.1, 0.08))
    vign = _edge(_ell(cv, h / 2, w / 2, h * 0.72, w * 0.72), min(h, w) * 0.72, 6.0)
    cv.img = cv.img * (0.12 + 0.88 * vign)[..., None]
    cv.regions["lesion"] = _erode(nevus > 0.5, 2)
    cv.geom.update(lesion=(cy, cx, radius))
    return cv


def _derm_melanoma(cv: Canvas, rng: np.random.Generator) -> Layer:
    cy, cx, r0 = cv.geom["lesion"]
    radius = min(rng.uniform(14.0, 20.0), 0.3 * cv.w)
    c = (cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3))
    alpha = _blob(cv, rng, c, radius, rng.uniform(0.18, 0.3), rng.uniform(0.75, 1.0), 1.3)
    t = 1.0 / (1.0 + np.exp(-1.5 * _lowfreq(rng, cv.h, cv.w, 6)))
    color = _mix((0.36, 0.2, 0.12), (0.1, 0.07, 0.08), t)
    red = _lowfreq(rng, cv.h, cv.w, 5) > 1.4
    color = np.where(red[..., None], _rgb((0.6, 0.27, 0.22)), color)
    foot = alpha > 0.5
    cv.regions["lesion"] = _erode(foot, 3)
    return Layer(alpha, color, foot)


def _derm_veil(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["lesion"])
    if c is None:
        return None
    alpha = _blob(cv, rng, c, rng.uniform(6.0, 9.5), 0.25, rng.uniform(0.7, 1.0), 2.0)
    haze = 0.04 * _smooth(rng, (cv.h, cv.w), 1.0)
    color = _rgb((0.6, 0.68, 0.84)) + haze[..., None]
    return Layer(alpha * 0.92, color, alpha > 0.5)


def _derm_network(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["lesion"])
    if c is None:
        return None
    alpha = _blob(cv, rng, c, rng.uniform(7.0, 10.5), 0.2, rng.uniform(0.75, 1.0), 1.5)
    p = rng.uniform(5.0, 6.5)
    n1, n2 = _smooth(rng, (cv.h, cv.w), 2.0), _smooth(rng, (cv.h, cv.w), 2.0)
    gx = np.abs(np.sin(np.pi * (cv.xx + 1.2 * n1) / p))
    gy = np.abs(np.sin(np.pi * (cv.yy + 1.2 * n2) / p))
    lines = np.minimum(gx, gy) < 0.38
    color = np.where(lines[..., None], _rgb((0.17, 0.1, 0.07)), _rgb((0.6, 0.42, 0.3)))
    return Layer(alpha, color, alpha > 0.5)


def _derm_globules(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, cv.regions["lesion"])
    if c is None:
        return None
    n = int(rng.integers(4, 9))
    centers = [c, *_cluster(rng, c, n - 1, 8.0)]
    alpha, foot = _spots(cv, centers, [float(rng.uniform(1.4, 2.3)) for _ in centers], 1.0)
    return Layer(alpha, (0.27, 0.13, 0.08), foot)


# ---------------------------------------------------------------------------------- histopathology
def _nuclei_field(rng: np.random.Generator, h: int, w: int, density: float, sigma: float | tuple[float, float]
                  ) -> np.ndarray:
    """Soft nuclei map in [0, 1]: random impulses blurred by ``sigma`` and thresholded."""
    n = int(density * h * w)
    imp = np.zeros((h, w))
    np.add.at(imp, (rng.integers(0, h, n), rng.integers(0, w, n)), rng.uniform(0.8, 1.5, n))
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    f = ndimage.gaussian_filter(imp, (sy, sx), mode="reflect") * (2 * np.pi * sy * sx)
    return np.clip((f - 0.4) * 4.0, 0.0, 1.0)


def _bg_histo(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> Canvas:
    h, w = yy.shape
    stroma = np.array([rng.uniform(0.9, 0.97), rng.uniform(0.62, 0.74), rng.uniform(0.76, 0.86)])
    sig = (0.7, 4.0) if rng.random() < 0.5 else (4.0, 0.7)
    streak = _smooth(rng, (h, w), sig)
    lf = _lowfreq(rng, h, w, 4)
    cv = Canvas(stroma * (1.0 - 0.05 * np.clip(streak, -2, 2) - 0.03 * lf)[..., None], yy, xx)
    for _ in range(int(rng.integers(0, 4))):                                    # vacuoles / fat
        c = (rng.uniform(0, h), rng.uniform(0, w))
        cv.img = _blend(cv.img, _blob(cv, rng, c, rng.uniform(3.0, 7.0), 0.2, 1.0, 1.0), (0.97, 0.94, 0.96))
    nuc = _nuclei_field(rng, h, w, rng.uniform(0.003, 0.005), 1.6)
    nuc = np.maximum(nuc, _nuclei_field(rng, h, w, 0.0015, (0.7, 2.0) if rng.random() < 0.5 else (2.0, 0.7)))
    purple = _rgb((0.44, 0.26, 0.6)) * rng.uniform(0.9, 1.1)
    cv.img = _blend(cv.img, 0.85 * nuc, purple)
    cv.regions["tissue"] = np.ones((h, w), dtype=bool)
    return cv


def _histo_mitosis(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["tissue"], 7))
    if c is None:
        return None
    th = rng.uniform(0, np.pi)
    sep = rng.uniform(2.0, 3.0)
    halo = _ell(cv, c[0], c[1], 4.0, sep + 3.5, th)
    alpha = _edge(halo, 4.0, 1.0) * 0.9
    color = np.broadcast_to(_rgb((0.96, 0.88, 0.93)), (cv.h, cv.w, 3)).copy()
    n = _smooth(rng, (cv.h, cv.w), 0.6)
    for s in (-1, 1):
        cy, cx = c[0] + s * sep * np.sin(th), c[1] + s * sep * np.cos(th)
        r = rng.uniform(1.6, 2.3)
        clump = _ell(cv, cy, cx, r * 1.2, r * 0.7, th) - 0.15 * n < 1.0
        color[clump] = (0.16, 0.05, 0.26)
        alpha = np.where(clump, 1.0, alpha)
    return Layer(alpha, color, alpha > 0.5)


def _histo_necrosis(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["tissue"], 8))
    if c is None:
        return None
    alpha = _blob(cv, rng, c, rng.uniform(9.0, 14.0), 0.25, rng.uniform(0.7, 1.0), 2.0)
    debris = rng.standard_normal((cv.h, cv.w)) > 1.75
    color = _rgb((0.87, 0.74, 0.8)) + 0.03 * _smooth(rng, (cv.h, cv.w), 1.5)[..., None]
    color = np.where(debris[..., None], _rgb((0.36, 0.2, 0.45)), color)
    return Layer(alpha, color, alpha > 0.5)


def _histo_lymphocytes(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["tissue"], 6))
    if c is None:
        return None
    alpha = _blob(cv, rng, c, rng.uniform(7.0, 12.0), 0.25, rng.uniform(0.7, 1.0), 1.5)
    dots = _nuclei_field(rng, cv.h, cv.w, 0.09, 0.75)
    color = _mix((0.8, 0.6, 0.78), (0.2, 0.16, 0.48), 0.35 + 0.65 * dots)
    return Layer(alpha, color, alpha > 0.5)


def _histo_gland(cv: Canvas, rng: np.random.Generator) -> Layer | None:
    c = _pick(cv, rng, _erode(cv.regions["tissue"], 8))
    if c is None:
        return None
    a = rng.uniform(3.0, 5.5)
    aspect = rng.uniform(0.6, 1.0)
    th = rng.uniform(0, np.pi)
    t = rng.uniform(3.5, 4.5)
    outer = _blob(cv, rng, c, a + t, 0.12, aspect, 1.0)
    lumen = _edge(_ell(cv, c[0], c[1], a * aspect, a, th), a, 1.0)
    phi = np.arctan2(cv.yy - c[0], cv.xx - c[1])
    k = max(6, int(2 * np.pi * (a + t / 2) / 2.6))
    pal = 0.5 + 0.5 * np.cos(k * phi)
    color = _mix((0.3, 0.14, 0.48), (0.55, 0.35, 0.65), 0.6 * pal)
    color = _blend(color, lumen, (0.97, 0.95, 0.97))
    return Layer(outer, color, outer > 0.5)


# ------------------------------------------------------------------------------------- registries
Painter = Callable[[Canvas, np.random.Generator], "Layer | None"]

BACKGROUNDS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], Canvas]] = {
    "chest_xray": _bg_chest,
    "ct_slice": _bg_ct,
    "brain_mri": _bg_brain,
    "fundus": _bg_fundus,
    "dermoscopy": _bg_derm,
    "histopathology": _bg_histo,
}

PAINTERS: dict[str, dict[str, Painter]] = {
    "chest_xray": {"MC001": _cxr_effusion, "MC002": _cxr_pneumothorax, "MC003": _cxr_cardiomegaly,
                   "MC004": _cxr_consolidation, "MC005": _cxr_nodule},
    "ct_slice": {"MC005": _ct_nodule, "MC006": _ct_liver_lesion, "MC007": _ct_kidney_stone,
                 "MC008": _ct_ascites, "MC009": _ct_lymphadenopathy, "MC026": _ct_calcification},
    "brain_mri": {"MC010": _mri_tumor, "MC011": _mri_hemorrhage, "MC012": _mri_infarct,
                  "MC013": _mri_wml, "MC026": _mri_calcification},
    "fundus": {"MC014": _fundus_microaneurysm, "MC015": _fundus_hard_exudate, "MC016": _fundus_drusen,
               "MC017": _fundus_cupping},
    "dermoscopy": {"MC018": _derm_melanoma, "MC019": _derm_veil, "MC020": _derm_network,
                   "MC021": _derm_globules},
    "histopathology": {"MC022": _histo_mitosis, "MC023": _histo_necrosis, "MC024": _histo_lymphocytes,
                       "MC025": _histo_gland},
}

# Drawing order: large regions first so small findings stay visible on top of them.
_DEPTH = {"MC003": 0, "MC001": 0, "MC008": 0, "MC018": 0, "MC023": 0, "MC002": 1, "MC004": 1, "MC012": 1,
          "MC024": 1, "MC010": 1}
# A finding may lie inside these (a dermoscopic structure inside the melanoma it belongs to).
_CONTAINERS = {"MC019": frozenset({"MC018"}), "MC020": frozenset({"MC018"}), "MC021": frozenset({"MC018"})}
_MAX_TRIES = 12


# Per-image pose: (max rotation [rad], zoom range, max shift [fraction of the panel]).
_POSE = {"chest_xray": (0.1, (0.82, 1.18), 0.1), "ct_slice": (0.2, (0.8, 1.25), 0.12),
         "brain_mri": (0.35, (0.8, 1.25), 0.1), "fundus": (0.5, (0.9, 1.1), 0.08),
         "dermoscopy": (np.pi, (0.85, 1.2), 0.1), "histopathology": (np.pi, (0.8, 1.25), 0.5)}


def _posed_grid(rng: np.random.Generator, modality: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates ``yy, xx`` [H, W] of every pixel under a random rotation, zoom and shift of the
    anatomy, so that no two figures share a layout (and a perceptual hash)."""
    max_rot, (z0, z1), max_shift = _POSE[modality]
    th, zoom = rng.uniform(-max_rot, max_rot), rng.uniform(z0, z1)
    aspect = np.exp(rng.uniform(-0.15, 0.15))                 # figure panels are often resized unevenly
    ty, tx = rng.uniform(-max_shift, max_shift) * h, rng.uniform(-max_shift, max_shift) * w
    yy, xx = _grid(h, w)
    dy, dx = (yy - h / 2 - ty) / aspect, (xx - w / 2 - tx) * aspect
    c, s = np.cos(th) / zoom, np.sin(th) / zoom
    return h / 2 + dy * c - dx * s, w / 2 + dy * s + dx * c


# Amplitude range of the smooth illumination field (exposure gradient, MRI bias field, uneven flash).
_LIGHT = {"chest_xray": (0.1, 0.25), "ct_slice": (0.1, 0.25), "brain_mri": (0.25, 0.5),
          "fundus": (0.25, 0.45), "dermoscopy": (0.2, 0.4), "histopathology": (0.05, 0.15)}


def _finish(img: np.ndarray, rng: np.random.Generator, modality: str) -> np.ndarray:
    """Per-image acquisition variation (gamma, contrast, brightness, per-channel gain) and noise."""
    x = np.clip(img, 0.0, 1.0)
    field = _lowfreq(rng, x.shape[0], x.shape[1], 2) + 0.5 * _lowfreq(rng, x.shape[0], x.shape[1], 3)
    light = np.clip(1.0 + rng.uniform(*_LIGHT[modality]) * field, 0.5, 1.5)
    if x.ndim == 2:
        x = x ** rng.uniform(0.85, 1.18)
        x = ((x - 0.5) * rng.uniform(0.88, 1.12) + 0.5 + rng.uniform(-0.05, 0.05)) * light
        return x + rng.uniform(0.006, 0.018) * rng.standard_normal(x.shape)
    x = (x * rng.uniform(0.93, 1.07, size=3) + rng.uniform(-0.04, 0.04)) * light[..., None]
    return x + (rng.uniform(0.005, 0.014) * rng.standard_normal(x.shape[:2]))[..., None]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Quantise a [0, 1] float image to uint8 (round half to even, clipped)."""
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _fits(layer: Layer, labels: np.ndarray, drawn: list[str], cid: str) -> bool:
    """Placement rule: the new footprint overlaps other findings by at most 15 % of its area (its
    containers excepted) and leaves every earlier finding at least half of its pixels."""
    n = int(layer.foot.sum())
    if n < 3:
        return False
    allowed = _CONTAINERS.get(cid, frozenset())
    over = labels[layer.foot]
    hidden = 0
    for j, other in enumerate(drawn, start=1):
        k = int((over == j).sum())
        if k == 0:
            continue
        if k > 0.5 * int((labels == j).sum()):
            return False
        if other not in allowed:
            hidden += k
    return hidden <= 0.15 * n


def render_panel(modality: str, concept_ids: list[str], rng: np.random.Generator,
                 shape: tuple[int, int] = (128, 128)) -> Panel:
    """Draw one panel of ``modality`` (``shape`` = (H, W) pixels) with the given findings.

    A finding that cannot be placed without hiding another (after a few tries) is left out, so
    ``Panel.findings`` (draw order, largest first) is the truth, not ``concept_ids``.
    """
    if modality not in BACKGROUNDS:
        raise ValueError(f"unknown modality {modality!r}; known: {sorted(BACKGROUNDS)}")
    h, w = shape
    # separate streams: the background and the acquisition noise do not depend on the findings drawn,
    # so a finding is the only difference between two renderings from the same generator state
    bg_rng, finding_rng, finish_rng = rng.spawn(3)
    cv = BACKGROUNDS[modality](bg_rng, *_posed_grid(bg_rng, modality, h, w))
    painters = PAINTERS[modality]
    order = sorted(concept_ids, key=lambda c: (_DEPTH.get(c, 2), concept_ids.index(c)))
    labels = np.zeros((h, w), dtype=np.uint8)
    drawn: list[str] = []
    centers: dict[str, tuple[float, float]] = {}
    for cid in order:
        if cid not in painters:
            raise ValueError(f"concept {cid!r} is not drawn in modality {modality!r}")
        for _ in range(_MAX_TRIES):
            layer = painters[cid](cv, finding_rng)
            if layer is not None and _fits(layer, labels, drawn, cid):
                break
        else:
            continue
        cv.img = _blend(cv.img, layer.alpha, layer.color)
        labels[layer.foot] = len(drawn) + 1
        drawn.append(cid)
        ys, xs = np.nonzero(layer.foot)
        centers[cid] = (float(ys.mean()), float(xs.mean()))
    return Panel(to_uint8(_finish(cv.img, finish_rng, modality)), labels, drawn, centers)
