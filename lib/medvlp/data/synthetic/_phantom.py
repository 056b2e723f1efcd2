"""The procedural chest-abdomen CT phantom: anatomy, abnormalities, Hounsfield units, label maps.

World coordinates are millimetres, RAS (+x = patient left, +y = anterior, +z = superior), origin at
the volume centre. A patient has a fixed body habitus and organ layout (``sample_patient``); each
study jitters it, draws its abnormalities and renders them (``render_study``). Everything random
comes from the ``numpy.random.Generator`` passed in, in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvlp.lexicon import AnatomyLexicon

from ._shapes import (
    Grid,
    ellipsoid,
    elliptic_cylinder,
    erode,
    erode_xy,
    rotation,
    smooth3,
    tube,
    upsample_linear,
)

SHAPE: tuple[int, int, int] = (64, 64, 40)
SPACING: tuple[float, float, float] = (6.0, 6.0, 8.0)
GRID = Grid(SHAPE, SPACING)

#: Study-level probability of a fully healthy study; otherwise anatomy k is abnormal with
#: probability n_k * TARGET_PREVALENCE / (mean count_k * (1 - P_HEALTHY)), so every abnormality
#: has a prevalence near TARGET_PREVALENCE and about a quarter of the studies are fully normal.
P_HEALTHY = 0.2
TARGET_PREVALENCE = 0.14
P_SECOND_ABNORMALITY = 0.3
P_TRUNCATED_FOV = 0.05

#: Painting order of the anatomies (a later one wins where two overlap).
PAINT_ORDER = ("lung", "liver", "gallbladder", "spleen", "stomach", "pancreas", "kidney", "heart",
               "esophagus", "aorta")
#: Abnormalities that change an organ as a whole (no lesion mask).
DIFFUSE = frozenset({"cardiomegaly", "fatty_liver", "splenomegaly", "pancreatic_atrophy"})
#: Lesion-mask painting order: large regions first so that small foci stay visible.
LESION_ORDER = ("pleural_effusion", "consolidation", "emphysema", "pericardial_effusion", "aortic_aneurysm",
                "hiatal_hernia", "gastric_wall_thickening", "liver_cyst", "renal_cyst", "gallstone",
                "lung_nodule", "kidney_stone", "aortic_calcification")

# Nominal organ ellipsoids (centre mm, semi-axes mm, rotation z/y in degrees) for a body of
# half-width 160 mm and half-depth 110 mm; centres scale with the body.
_BODY_AX, _BODY_AY = 160.0, 110.0
_ORGANS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float, float]] = {
    "lung_r": ((-77.0, -5.0, 58.0), (51.0, 80.0, 70.0), 0.0, 0.0),
    "lung_l": ((77.0, -5.0, 58.0), (49.0, 80.0, 70.0), 0.0, 0.0),
    "heart": ((15.0, 40.0, 26.0), (52.0, 42.0, 44.0), 35.0, 0.0),
    "liver": ((-58.0, 10.0, -25.0), (72.0, 70.0, 55.0), -10.0, 0.0),
    "gallbladder": ((-35.0, 55.0, -70.0), (14.0, 20.0, 22.0), 30.0, 0.0),
    "spleen": ((95.0, -40.0, -15.0), (28.0, 42.0, 36.0), -30.0, 0.0),
    "stomach": ((50.0, 30.0, -38.0), (38.0, 34.0, 30.0), 20.0, 0.0),
    "pancreas": ((12.0, -5.0, -76.0), (65.0, 12.0, 12.0), -15.0, -12.0),
    "kidney_r": ((-68.0, -50.0, -88.0), (26.0, 26.0, 45.0), 0.0, 0.0),
    "kidney_l": ((68.0, -50.0, -84.0), (26.0, 26.0, 45.0), 0.0, 0.0),
}
_AORTA = ((5.0, 30.0, 45.0), (5.0, 28.0, 80.0), (12.0, 0.0, 93.0), (22.0, -28.0, 83.0), (22.0, -28.0, -100.0))
_AORTA_R = 12.0
_ESOPHAGUS = ((-8.0, -14.0, 98.0), (-8.0, -14.0, 12.0), (25.0, 12.0, -24.0))
_ESOPHAGUS_R = 8.0

# Hounsfield units of the tissues (per-study jitter is added).
HU = {
    "air": -1000.0, "fat": -100.0, "visceral_fat": -90.0, "muscle": 50.0, "lung": -850.0,
    "heart": 45.0, "aorta": 40.0, "esophagus": 35.0, "liver": 60.0, "gallbladder": 8.0, "spleen": 50.0,
    "pancreas": 40.0, "kidney": 35.0, "stomach_wall": 45.0, "fluid": 12.0, "gas": -900.0,
    "cortical_bone": 750.0, "cancellous_bone": 260.0, "rib": 480.0, "disc": 80.0, "csf": 15.0,
}
NOISE_SIGMA = 12.0
NOISE_STEP = 4.0
#: side weight of the 3-tap partial-volume blur [w, 1 - 2w, w] along each axis
BLUR = 0.1


@dataclass
class Organ:
    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray

    def mask(self, scale: float | np.ndarray = 1.0, grow: float = 0.0) -> np.ndarray:
        return ellipsoid(GRID, self.center, self.semi * scale + grow, self.rot)


@dataclass
class Patient:
    """Body habitus and organ layout shared by all studies of one patient."""

    ax: float
    ay: float
    fat: float
    organs: dict[str, Organ]
    aorta: np.ndarray
    esophagus: np.ndarray
    rib_phase: float
    disc_phase: float


@dataclass
class Study:
    """One rendered study. ``volume`` ``[X, Y, Z]`` int16 HU; ``segmentation``/``lesion_mask`` uint8."""

    volume: np.ndarray
    segmentation: np.ndarray
    lesion_mask: np.ndarray
    labels: dict[str, list[str]]
    lesions: list[dict[str, str]]
    facts: dict[str, dict]
    border_touching: list[str]
    truncated: str | None = None


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw a patient's body size and organ layout (positions +- ~2 voxels, sizes +- 10 %)."""
    fx, fy = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.08)
    organs = {}
    for name, (c, s, rz, ry) in _ORGANS.items():
        off = np.clip(rng.normal(0.0, [5.0, 5.0, 4.0]), -10.0, 10.0)
        size = rng.uniform(0.9, 1.1, size=3)
        center = np.array([c[0] * fx, c[1] * fy, c[2]]) + off
        semi = np.array([s[0] * fx, s[1] * fy, s[2]]) * size
        organs[name] = Organ(center, semi, rotation(rz + rng.uniform(-8, 8), ry))
    scale = np.array([fx, fy, 1.0])
    aorta = np.array(_AORTA) * scale + np.append(rng.uniform(-4, 4, 2), 0.0)
    esophagus = np.array(_ESOPHAGUS) * scale + np.append(rng.uniform(-3, 3, 2), 0.0)
    return Patient(_BODY_AX * fx, _BODY_AY * fy, rng.uniform(10.0, 24.0), organs, aorta, esophagus,
                   rng.uniform(0, 24), rng.uniform(0, 32))


def _jitter(p: Patient, rng: np.random.Generator) -> Patient:
    """A study's copy of the patient layout: organs moved by up to 3 mm (breathing, positioning)."""
    organs = {k: Organ(o.center + rng.uniform(-3, 3, 3), o.semi.copy(), o.rot) for k, o in p.organs.items()}
    return Patient(p.ax, p.ay, p.fat, organs, p.aorta.copy(), p.esophagus.copy(), p.rib_phase, p.disc_phase)


def _shift_z(p: Patient, dz: float) -> None:
    for o in p.organs.values():
        o.center[2] += dz
    p.aorta[:, 2] += dz
    p.esophagus[:, 2] += dz
    p.rib_phase += dz
    p.disc_phase += dz


def draw_labels(rng: np.random.Generator, lex: AnatomyLexicon) -> dict[str, list[str]]:
    """Abnormal anatomies and their 1-2 abnormalities: ``{anatomy_id: sorted abnormality ids}``."""
    healthy = rng.random() < P_HEALTHY
    labels: dict[str, list[str]] = {}
    for a in lex.anatomies:
        options = [x.id for x in lex.abnormalities_of(a.id)]
        mean_count = 1.0 if len(options) == 1 else 1.0 + P_SECOND_ABNORMALITY
        q = min(0.9, len(options) * TARGET_PREVALENCE / (mean_count * (1.0 - P_HEALTHY)))
        u_abnormal, u_count = rng.random(), rng.random()
        perm = rng.permutation(len(options))
        if healthy or u_abnormal >= q or not options:
            labels[a.id] = []
            continue
        k = 2 if (len(options) > 1 and u_count < P_SECOND_ABNORMALITY) else 1
        labels[a.id] = sorted(options[i] for i in perm[:k])
    return labels


def _pick(rng: np.random.Generator, mask: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """World position (mm) of a random voxel of ``mask`` (or of ``fallback`` when ``mask`` is empty)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0 and fallback is not None:
        idx = np.flatnonzero(fallback)
    if idx.size == 0:
        raise RuntimeError("phantom: no voxel to place a lesion in (empty organ mask)")
    flat = int(idx[rng.integers(idx.size)])
    return GRID.voxel_center(np.unravel_index(flat, SHAPE))


def _ball(center, radius_xyz) -> np.ndarray:
    return ellipsoid(GRID, center, radius_xyz)


class _Canvas:
    """HU volume plus anatomy labels being painted."""

    def __init__(self) -> None:
        self.hu = np.full(SHAPE, HU["air"], dtype=np.float64)
        self.seg = np.zeros(SHAPE, dtype=np.uint8)

    def paint(self, mask: np.ndarray, hu: float | np.ndarray, label: int | None = None) -> None:
        self.hu[mask] = hu if np.isscalar(hu) else hu[mask]
        if label is not None:
            self.seg[mask] = label


def _paint_body(cv: _Canvas, p: Patient, tone: dict[str, float]) -> np.ndarray:
    """Body wall, visceral fat, spine, paraspinal muscles and ribs. Returns the body mask."""
    x, y, z = GRID.axes
    fx, fy = p.ax / _BODY_AX, p.ay / _BODY_AY
    body = elliptic_cylinder(GRID, 0.0, 0.0, p.ax, p.ay)
    cv.paint(body, tone["fat"])
    cv.paint(elliptic_cylinder(GRID, 0.0, 0.0, p.ax - p.fat, p.ay - p.fat), tone["muscle"])
    inner_ax, inner_ay = p.ax - p.fat - 10.0, p.ay - p.fat - 10.0
    cv.paint(elliptic_cylinder(GRID, 0.0, 0.0, inner_ax, inner_ay), tone["visceral_fat"])
    # Ribs: an elliptic ring in every third slice above the costal margin; sternum in front.
    zz = z[None, None, :]
    ring = elliptic_cylinder(GRID, 0.0, 0.0, inner_ax + 4.0, inner_ay + 4.0) & ~elliptic_cylinder(
        GRID, 0.0, 0.0, inner_ax - 4.0, inner_ay - 4.0)
    band = ((zz - p.rib_phase) % 24.0 < 8.0) & (zz > -70.0)
    away_from_spine = ~((np.abs(x)[:, None, None] < 35.0) & (y[None, :, None] < 0.0))
    ribs = ring & band & away_from_spine
    cv.paint(ribs, HU["rib"])
    sternum = ellipsoid(GRID, (0.0, inner_ay - 2.0, 60.0), (14.0, 7.0, 90.0))
    cv.paint(sternum & body, HU["rib"])
    for sx in (-1.0, 1.0):
        cv.paint(ellipsoid(GRID, (sx * 35.0 * fx, -85.0 * fy, 0.0), (22.0, 16.0, 1e4)), tone["muscle"])
    vb_c = (0.0, -55.0 * fy, 0.0)
    vert = ellipsoid(GRID, vb_c, (20.0, 20.0, 1e4))
    disc = ((zz - p.disc_phase) % 32.0 < 8.0) & np.ones(SHAPE, dtype=bool)
    cv.paint(vert, HU["cortical_bone"])
    cv.paint(ellipsoid(GRID, vb_c, (14.0, 14.0, 1e4)), HU["cancellous_bone"])
    cv.paint(vert & disc, HU["disc"])
    arch_c = (0.0, -85.0 * fy, 0.0)
    cv.paint(ellipsoid(GRID, arch_c, (17.0, 15.0, 1e4)), HU["cortical_bone"])
    cv.paint(ellipsoid(GRID, (0.0, -102.0 * fy, 0.0), (5.0, 10.0, 1e4)) & body, HU["cortical_bone"])
    cv.paint(ellipsoid(GRID, arch_c, (9.0, 8.0, 1e4)), HU["csf"])
    return body


def _paint_organs(cv: _Canvas, p: Patient, labels: dict[str, list[str]], label_of: dict[str, int],
                  tone: dict[str, float], rng: np.random.Generator, facts: dict[str, dict],
                  regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Paint the 10 anatomies (with their shape-changing abnormalities) in ``PAINT_ORDER``.

    Fills ``regions`` with the raw masks of structural lesions and returns helper masks
    (``lung_r``, ``lung_l``, ``kidney_r``, ``kidney_l``).
    """
    o = p.organs
    _, y, _ = GRID.axes
    abn = {a for v in labels.values() for a in v}
    helpers: dict[str, np.ndarray] = {}
    for name in PAINT_ORDER:
        lab = label_of[name]
        if name == "lung":
            for side in ("lung_r", "lung_l"):
                m = o[side].mask()
                helpers[side] = m
                # dependent (posterior) lung is slightly denser
                cv.paint(m, np.broadcast_to(tone["lung"] - 0.15 * y[None, :, None], SHAPE), lab)
        elif name == "liver":
            liver_hu = tone["liver"]
            if "fatty_liver" in abn:
                liver_hu = float(rng.uniform(-20.0, 10.0))
                facts["fatty_liver"] = {"degree": "moderate" if liver_hu < -5 else "mild", "hu": liver_hu}
            cv.paint(o["liver"].mask(), liver_hu, lab)
        elif name == "gallbladder":
            cv.paint(o["gallbladder"].mask(), tone["gallbladder"], lab)
        elif name == "spleen":
            sp = o["spleen"]
            if "splenomegaly" in abn:
                f = float(rng.uniform(1.35, 1.45))
                sp = Organ(sp.center + np.array([-6.0, 8.0, -10.0]), sp.semi * f, sp.rot)
                facts["splenomegaly"] = {"length_cm": round(2.0 * float(sp.semi.max()) / 10.0, 1)}
            cv.paint(sp.mask(), tone["spleen"], lab)
        elif name == "stomach":
            _paint_stomach(cv, o["stomach"], lab, tone, "gastric_wall_thickening" in abn, rng, facts, regions)
        elif name == "pancreas":
            pa = o["pancreas"]
            hu = tone["pancreas"]
            if "pancreatic_atrophy" in abn:
                f = float(rng.uniform(0.5, 0.6))
                pa = Organ(pa.center, np.maximum(pa.semi * np.array([0.92, f, f]), 6.5), pa.rot)
                hu = hu - 15.0
                facts["pancreatic_atrophy"] = {"degree": "diffuse"}
            cv.paint(pa.mask(), hu, lab)
        elif name == "kidney":
            for side in ("kidney_r", "kidney_l"):
                m = o[side].mask()
                helpers[side] = m
                cv.paint(m, tone["kidney"], lab)
        elif name == "heart":
            he = o["heart"]
            if "cardiomegaly" in abn:
                f = float(rng.uniform(1.25, 1.35))
                he = Organ(he.center + np.array([8.0, 0.0, -6.0]), he.semi * f, he.rot)
                facts["cardiomegaly"] = {"degree": "moderate" if f > 1.3 else "mild"}
            core = he.mask()
            if "pericardial_effusion" in abn:
                t = float(rng.uniform(8.0, 15.0))
                rim = he.mask(grow=t) & ~core
                cv.paint(rim, HU["fluid"], lab)
                regions["pericardial_effusion"] = rim
                facts["pericardial_effusion"] = {"amount": "moderate" if t > 11.5 else "small",
                                                 "thickness_cm": round(t / 10.0, 1)}
            cv.paint(core, tone["heart"], lab)
        elif name == "esophagus":
            m = tube(GRID, p.esophagus, _ESOPHAGUS_R)
            cv.paint(m, tone["esophagus"], lab)
            if "hiatal_hernia" in abn:
                _paint_hernia(cv, p, lab, tone, rng, facts, regions)
        elif name == "aorta":
            m = tube(GRID, p.aorta, _AORTA_R)
            if "aortic_aneurysm" in abn:
                thoracic = rng.random() < 0.4
                z0 = float(rng.uniform(15.0, 60.0) if thoracic else rng.uniform(-85.0, -45.0))
                r = float(rng.uniform(20.0, 30.0))
                line = p.aorta[-2] + (p.aorta[-1] - p.aorta[-2]) * ((z0 - p.aorta[-2][2]) /
                                                                     (p.aorta[-1][2] - p.aorta[-2][2]))
                c = line + np.array([2.0, 0.6 * (r - _AORTA_R), 0.0])
                bulge = ellipsoid(GRID, c, (r, r, float(rng.uniform(24.0, 36.0))))
                m = m | bulge
                regions["aortic_aneurysm"] = bulge
                facts["aortic_aneurysm"] = {"diameter_cm": round(2.0 * r / 10.0, 1),
                                            "location": "thoracic" if thoracic else "abdominal"}
            cv.paint(m, tone["aorta"], lab)
    return helpers


def _paint_stomach(cv: _Canvas, st: Organ, lab: int, tone: dict[str, float], thick: bool,
                   rng: np.random.Generator, facts: dict[str, dict], regions: dict[str, np.ndarray]) -> None:
    x, y, _ = GRID.axes
    outer = st.mask()
    lumen = st.mask(grow=-7.0)
    cv.paint(outer, tone["stomach_wall"], lab)
    if thick:
        t = float(rng.uniform(14.0, 22.0))
        antrum = rng.random() < 0.5
        sector = (x[:, None, None] < st.center[0]) if antrum else (x[:, None, None] >= st.center[0])
        sector = np.broadcast_to(sector, SHAPE)
        wall = outer & ~st.mask(grow=-t) & sector
        lumen = lumen & ~wall
        cv.paint(wall, float(rng.uniform(85.0, 105.0)))
        regions["gastric_wall_thickening"] = wall
        facts["gastric_wall_thickening"] = {"thickness_cm": round(t / 10.0, 1),
                                            "location": "antrum" if antrum else "body"}
    gas_level = st.center[1] + 0.35 * st.semi[1]
    gas = lumen & (y[None, :, None] > gas_level)
    cv.paint(lumen & ~gas, HU["fluid"])
    cv.paint(gas, HU["gas"])


def _paint_hernia(cv: _Canvas, p: Patient, lab: int, tone: dict[str, float], rng: np.random.Generator,
                  facts: dict[str, dict], regions: dict[str, np.ndarray]) -> None:
    """Hiatal hernia: a gas/fluid-filled bulge at the lower end of the esophagus, above the hiatus."""
    base = p.esophagus[1]
    semi = np.array([rng.uniform(18.0, 26.0), rng.uniform(16.0, 22.0), rng.uniform(20.0, 30.0)])
    c = base + np.array([10.0, 4.0, -semi[2] * 0.4])
    bulge = ellipsoid(GRID, c, semi)
    inner = ellipsoid(GRID, c, semi - 7.0)
    _, _, z = GRID.axes
    gas = inner & (z[None, None, :] >= c[2])
    cv.paint(bulge, tone["stomach_wall"], lab)
    cv.paint(inner & ~gas, HU["fluid"])
    cv.paint(gas, -800.0)
    regions["hiatal_hernia"] = bulge
    facts["hiatal_hernia"] = {"size_cm": round(2.0 * float(semi.max()) / 10.0, 1),
                              "amount": "moderate" if semi.max() > 24 else "small"}


def _focal_lesions(cv: _Canvas, p: Patient, labels: dict[str, list[str]], label_of: dict[str, int],
                   helpers: dict[str, np.ndarray], rng: np.random.Generator, facts: dict[str, dict],
                   regions: dict[str, np.ndarray]) -> None:
    """Draw the focal abnormalities placed inside the finished anatomy labels (HU + raw regions)."""
    _, y, z = GRID.axes
    seg = cv.seg
    abn = {a for v in labels.values() for a in v}
    lung = seg == label_of["lung"]
    lung_c = 0.5 * (p.organs["lung_r"].center + p.organs["lung_l"].center)
    sides = {"right": lung & helpers["lung_r"], "left": lung & helpers["lung_l"]}
    taken = np.zeros(SHAPE, dtype=bool)

    if "pleural_effusion" in abn:
        which = ["right", "left", "bilateral"][int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
        frac = float(rng.uniform(0.08, 0.2))
        eff = np.zeros(SHAPE, dtype=bool)
        for s in (("right", "left") if which == "bilateral" else (which,)):
            m = sides[s]
            score = np.broadcast_to(y[None, :, None] + 0.8 * z[None, None, :], SHAPE)
            vals = score[m]
            if vals.size:
                eff |= m & (score <= np.quantile(vals, frac))
        cv.paint(eff, HU["fluid"])
        regions["pleural_effusion"] = eff
        taken |= eff
        facts["pleural_effusion"] = {"side": which, "amount": "moderate" if frac > 0.14 else "small"}
    if "consolidation" in abn:
        free = erode(lung & ~taken, 1)
        low = free & (z[None, None, :] < lung_c[2])
        c = _pick(rng, low if rng.random() < 0.7 else free, lung)
        r = rng.uniform(14.0, 26.0, size=3)
        m = _ball(c, r) & lung & ~taken
        cv.paint(m, float(rng.uniform(0.0, 40.0)))
        regions["consolidation"] = m
        taken |= m
        facts["consolidation"] = {"side": "right" if c[0] < 0 else "left", "lobe": _lobe(c, p)}
    if "emphysema" in abn:
        upper = lung & ~taken & (z[None, None, :] > lung_c[2] - 10.0)
        n = int(rng.integers(3, 7))
        m = np.zeros(SHAPE, dtype=bool)
        for _ in range(n):
            m |= _ball(_pick(rng, upper, lung), rng.uniform(9.0, 16.0, size=3))
        m &= lung & ~taken
        cv.paint(m, -950.0)
        regions["emphysema"] = m
        taken |= m
        facts["emphysema"] = {"degree": "moderate" if n >= 5 else "mild"}
    if "lung_nodule" in abn:
        free = erode(lung & ~taken, 2)
        c = _pick(rng, free, lung & ~taken) + rng.uniform(-2.0, 2.0, size=3)
        r = float(rng.uniform(5.0, 11.0))
        m = _ball(c, (r, r, r)) & lung
        cv.paint(m, float(rng.uniform(30.0, 70.0)))
        regions["lung_nodule"] = m
        facts["lung_nodule"] = {"side": "right" if c[0] < 0 else "left", "lobe": _lobe(c, p),
                                "size_mm": round(2.0 * r)}
    if "liver_cyst" in abn:
        liver = seg == label_of["liver"]
        c = _pick(rng, erode(liver, 2), liver)
        r = float(rng.uniform(8.0, 18.0))
        m = _ball(c, (r, r, r)) & liver
        cv.paint(m, float(rng.uniform(0.0, 10.0)))
        regions["liver_cyst"] = m
        facts["liver_cyst"] = {"size_mm": round(2.0 * r), "segment": _liver_segment(c, p)}
    if "gallstone" in abn:
        gb = seg == label_of["gallbladder"]
        ys = np.broadcast_to(y[None, :, None], SHAPE)
        core = erode_xy(gb)
        dep = core & (ys <= np.quantile(ys[core], 0.5)) if core.any() else gb
        c = _pick(rng, dep, gb)
        r = float(rng.uniform(5.0, 8.0))
        m = _ball(c, (r, r, r)) & gb
        cv.paint(m, float(rng.uniform(300.0, 500.0)))
        regions["gallstone"] = m
        facts["gallstone"] = {"size_mm": round(2.0 * r)}
    if "renal_cyst" in abn or "kidney_stone" in abn:
        kid = seg == label_of["kidney"]
        for ab in ("renal_cyst", "kidney_stone"):
            if ab not in abn:
                continue
            side = "right" if rng.random() < 0.5 else "left"
            km = kid & helpers["kidney_" + side[0]]
            if ab == "renal_cyst":
                c = _pick(rng, erode(km, 1), km)
                r = float(rng.uniform(7.0, 14.0))
                m = _ball(c, (r, r, r)) & kid
                cv.paint(m, float(rng.uniform(0.0, 10.0)))
                kc = p.organs["kidney_" + side[0]].center
                pole = ("upper pole" if c[2] > kc[2] + 15 else "lower pole" if c[2] < kc[2] - 15
                        else "interpolar region")
                facts[ab] = {"side": side, "size_mm": round(2.0 * r), "pole": pole}
            else:
                # one voxel in-plane; z semi-axis < 8 mm and an off-centre z position: 1-2 slices
                r, rz = float(rng.uniform(3.0, 4.5)), float(rng.uniform(4.0, 7.9))
                off = np.append(rng.uniform(-1.5, 1.5, size=2), rng.uniform(-0.6, 0.6) * rz)
                c = _pick(rng, erode(km, 2), km) + off
                m = _ball(c, (r, r, rz)) & kid
                cv.paint(m, float(rng.uniform(1100.0, 1600.0)))
                facts[ab] = {"side": side, "size_mm": round(2.0 * r)}
            regions[ab] = m
    if "aortic_calcification" in abn:
        ao = seg == label_of["aorta"]
        wall = ao & ~erode_xy(ao) & (z[None, None, :] < p.aorta[2][2])
        idx = np.flatnonzero(wall if wall.any() else ao)
        n = int(rng.integers(4, 11))
        pick = rng.choice(idx, size=min(n, idx.size), replace=False)
        m = np.zeros(SHAPE, dtype=bool)
        m.flat[np.sort(pick)] = True
        cv.hu[m] = rng.uniform(900.0, 1400.0, size=int(m.sum()))
        regions["aortic_calcification"] = m
        zc = float(np.mean(np.broadcast_to(z[None, None, :], SHAPE)[m]))
        facts["aortic_calcification"] = {"degree": "extensive" if n >= 8 else "scattered",
                                         "location": "thoracic" if zc > 0 else "abdominal"}


def _lobe(c: np.ndarray, p: Patient) -> str:
    side = "lung_r" if c[0] < 0 else "lung_l"
    lc = p.organs[side].center
    if side == "lung_r" and abs(c[2] - lc[2]) < 12.0 and c[1] > lc[1]:
        return "middle"
    return "upper" if c[2] > lc[2] else "lower"


def _liver_segment(c: np.ndarray, p: Patient) -> str:
    lc = p.organs["liver"].center
    if c[0] > lc[0] + 30.0:
        return "2" if c[1] < lc[1] else ("3" if c[2] < lc[2] else "4")
    if c[1] > lc[1]:
        return "8" if c[2] > lc[2] else "5"
    return "7" if c[2] > lc[2] else "6"


def touching_labels(seg: np.ndarray) -> set[int]:
    """Labels present on any face of the volume."""
    faces = (seg[0], seg[-1], seg[:, 0], seg[:, -1], seg[:, :, 0], seg[:, :, -1])
    return {int(v) for f in faces for v in np.unique(f) if v}


def render_study(rng: np.random.Generator, patient: Patient, lex: AnatomyLexicon) -> Study:
    """Draw one study of ``patient``: abnormalities, HU volume, anatomy labels and lesion masks."""
    label_of = {a.id: a.label for a in lex.anatomies}
    labels = draw_labels(rng, lex)
    p = _jitter(patient, rng)
    truncated = None
    if rng.random() < P_TRUNCATED_FOV:
        zmax = 0.5 * (SHAPE[2] - 1) * SPACING[2]
        if rng.random() < 0.5:
            top = max(o.center[2] + o.semi[2] for k, o in p.organs.items() if k.startswith("lung"))
            _shift_z(p, zmax - top + rng.uniform(3.0, 12.0))
            truncated = "superior"
        else:
            bottom = min(o.center[2] - o.semi[2] for k, o in p.organs.items() if k.startswith("kidney"))
            _shift_z(p, -zmax - bottom - rng.uniform(3.0, 12.0))
            truncated = "inferior"
    tone = {k: v + float(rng.uniform(-4.0, 4.0)) for k, v in HU.items()}
    tone["lung"] = HU["lung"] + float(rng.uniform(-20.0, 20.0))

    cv = _Canvas()
    facts: dict[str, dict] = {}
    regions: dict[str, np.ndarray] = {}
    body = _paint_body(cv, p, tone)
    helpers = _paint_organs(cv, p, labels, label_of, tone, rng, facts, regions)
    _focal_lesions(cv, p, labels, label_of, helpers, rng, facts, regions)

    # lesion label map: raw regions cut to the final anatomy label, large ones painted first
    anat_of = {x.id: x.anatomy for x in lex.abnormalities}
    order = [x.id for x in lex.abnormalities if x.id in regions]
    lesions = [{"abnormality": a, "anatomy": anat_of[a]} for a in order]
    lesion_mask = np.zeros(SHAPE, dtype=np.uint8)
    for a in LESION_ORDER:
        if a in regions:
            lesion_mask[regions[a] & (cv.seg == label_of[anat_of[a]])] = order.index(a) + 1
    for i, a in enumerate(order):
        if not (lesion_mask == i + 1).any():
            raise RuntimeError(f"phantom: lesion {a!r} vanished from the lesion mask")

    # acquisition: smooth intensity drift, partial volume blur, quantised noise
    drift = upsample_linear(rng.normal(0.0, 1.0, size=(4, 4, 3)), SHAPE)
    lungs = cv.seg == label_of["lung"]
    hu = cv.hu + drift * np.where(lungs, 15.0, 5.0) * body
    hu = smooth3(hu, BLUR)
    noise = np.round(rng.normal(0.0, NOISE_SIGMA / NOISE_STEP, size=SHAPE)) * NOISE_STEP
    noise *= np.where(body, 1.0, 0.25)
    vol = np.clip(np.round(hu) + noise, -1024, 3071).astype(np.int16)

    present = np.bincount(cv.seg.ravel(), minlength=256)
    missing = [a.id for a in lex.anatomies if present[a.label] == 0]
    if missing:
        raise RuntimeError(f"phantom: anatomies {missing} vanished from the label map")
    touching = touching_labels(cv.seg)
    border = [a.id for a in lex.anatomies if a.label in touching]
    return Study(vol, cv.seg, lesion_mask, labels, lesions, facts, border, truncated)
