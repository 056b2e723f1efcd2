"""Vectorised solid shapes on a fixed voxel grid (millimetre coordinates, RAS).

Every shape is evaluated only inside its bounding box and returned as a full boolean mask
``[X, Y, Z]``. Only additions, multiplications and comparisons touch the voxels, so the masks are
the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates in mm: ``x`` ``[X]`` (+ = patient left), ``y`` ``[Y]`` (+ = anterior),
    ``z`` ``[Z]`` (+ = superior). The world origin is the volume centre."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(  # type: ignore[return-value]
            (np.arange(n, dtype=np.float64) - 0.5 * (n - 1)) * s for n, s in zip(self.shape, self.spacing)
        )

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in ``[lo, hi]`` (mm), or None if empty."""
        out = []
        for n, s, a, b in zip(self.shape, self.spacing, lo, hi):
            i0 = max(0, math.ceil(a / s + 0.5 * (n - 1)))
            i1 = min(n, math.floor(b / s + 0.5 * (n - 1)) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def local(self, sl: tuple[slice, slice, slice], center) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Offsets (mm) from ``center`` of the voxels in ``sl``: ``[x,1,1]``, ``[1,y,1]``, ``[1,1,z]``."""
        x, y, z = self.axes
        return (
            (x[sl[0]] - center[0])[:, None, None],
            (y[sl[1]] - center[1])[None, :, None],
            (z[sl[2]] - center[2])[None, None, :],
        )

    def voxel_center(self, index) -> np.ndarray:
        """World position (mm) ``[3]`` of voxel ``index`` (i, j, k)."""
        return np.array([(int(i) - 0.5 * (n - 1)) * s for i, n, s in zip(index, self.shape, self.spacing)])


def rotation(z_deg: float = 0.0, y_deg: float = 0.0) -> np.ndarray:
    """Rotation ``[3, 3]`` about z then y; its columns are the shape's local axes in world coordinates."""
    cz, sz = math.cos(math.radians(z_deg)), math.sin(math.radians(z_deg))
    cy, sy = math.cos(math.radians(y_deg)), math.sin(math.radians(y_deg))
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return ry @ rz


def ellipsoid(grid: Grid, center, semi, rot: np.ndarray | None = None) -> np.ndarray:
    """Solid ellipsoid ``[X, Y, Z]`` bool; ``semi`` are the semi-axes (mm) along the local axes of ``rot``."""
    c = np.asarray(center, dtype=np.float64)
    s = np.maximum(np.asarray(semi, dtype=np.float64), 1e-6)
    r = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    half = np.sqrt(((r * s[None, :]) ** 2).sum(axis=1))
    mask = np.zeros(grid.shape, dtype=bool)
    sl = grid.box(c - half, c + half)
    if sl is None:
        return mask
    dx, dy, dz = grid.local(sl, c)
    acc = None
    for k in range(3):
        u = dx * r[0, k] + dy * r[1, k] + dz * r[2, k] if rot is not None else (dx, dy, dz)[k]
        term = (u * (1.0 / s[k])) ** 2
        acc = term if acc is None else acc + term
    mask[sl] = acc <= 1.0
    return mask


def capsule(grid: Grid, a, b, radius: float) -> np.ndarray:
    """Solid capsule (cylinder with round caps) from ``a`` to ``b`` (mm), ``[X, Y, Z]`` bool."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mask = np.zeros(grid.shape, dtype=bool)
    sl = grid.box(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
    if sl is None:
        return mask
    dx, dy, dz = grid.local(sl, a)
    ab = b - a
    denom = float(ab @ ab)
    t = (dx * ab[0] + dy * ab[1] + dz * ab[2]) * (1.0 / denom) if denom > 0 else dx * 0.0
    t = np.clip(t, 0.0, 1.0)
    d2 = (dx - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dz - t * ab[2]) ** 2
    mask[sl] = d2 <= radius * radius
    return mask


def tube(grid: Grid, points, radius: float) -> np.ndarray:
    """Union of capsules along the polyline ``points`` ``[N, 3]`` (mm)."""
    mask = np.zeros(grid.shape, dtype=bool)
    for a, b in zip(points[:-1], points[1:]):
        mask |= capsule(grid, a, b, radius)
    return mask


def elliptic_cylinder(grid: Grid, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Elliptic cylinder along z through the whole volume, ``[X, Y, Z]`` bool."""
    x, y, _ = grid.axes
    inside = ((x[:, None] - cx) / ax) ** 2 + ((y[None, :] - cy) / ay) ** 2 <= 1.0
    return np.broadcast_to(inside[:, :, None], grid.shape).copy()


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Binary erosion with the 6-neighbourhood, ``steps`` times (voxels outside the volume count as out)."""
    m = mask.copy()
    for _ in range(steps):
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        e[:, :, 1:] &= m[:, :, :-1]
        e[:, :, :-1] &= m[:, :, 1:]
        e[0] = e[-1] = False
        e[:, 0] = e[:, -1] = False
        e[:, :, 0] = e[:, :, -1] = False
        m = e
    return m


def erode_xy(mask: np.ndarray) -> np.ndarray:
    """One in-plane (4-neighbourhood) erosion step."""
    e = mask.copy()
    e[1:] &= mask[:-1]
    e[:-1] &= mask[1:]
    e[:, 1:] &= mask[:, :-1]
    e[:, :-1] &= mask[:, 1:]
    return e


def smooth3(vol: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap blur ``[w, 1-2w, w]`` along each axis, edges replicated (partial-volume effect)."""
    out = vol
    for ax in range(3):
        p = np.concatenate([out.take([0], axis=ax), out, out.take([-1], axis=ax)], axis=ax)
        n = out.shape[ax]
        lo = p.take(np.arange(0, n), axis=ax)
        mid = p.take(np.arange(1, n + 1), axis=ax)
        hi = p.take(np.arange(2, n + 2), axis=ax)
        out = mid * (1.0 - 2.0 * w) + (lo + hi) * w
    return out


def upsample_linear(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of a small grid ``[a, b, c]`` to ``shape`` (corners aligned)."""
    out = coarse
    for ax, n in enumerate(shape):
        m = out.shape[ax]
        pos = np.linspace(0.0, m - 1.0, n)
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, m - 2)
        f = pos - i0
        a = out.take(i0, axis=ax)
        b = out.take(i0 + 1, axis=ax)
        bshape = [1, 1, 1]
        bshape[ax] = n
        f = f.reshape(bshape)
        out = a * (1.0 - f) + b * f
    return out
