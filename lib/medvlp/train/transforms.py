"""Training / evaluation transforms: 2D figures, 3D CT volumes, and CT volumes as 2D slices.

Every random choice is drawn from a ``numpy.random.Generator`` that the data stream seeds per
sample from ``(seed, stage, epoch, position)``, so a sample is augmented the same way whatever the
number of ranks or loader workers, and again after a resume. ``rng=None`` means evaluation: no
randomness at all.

Flips default to off in ``params.yaml``: captions and reports state laterality ("right lower lobe"),
which a left-right flip would contradict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, ScaleIntensityRanged, Spacingd, SpatialCrop, SpatialPad
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

#: fVLM's CT intensity window in Hounsfield units, mapped linearly to [0, 1] (values outside clipped).
HU_WINDOW = (-1150.0, 350.0)


# ------------------------------------------------------------------------------------------------ 2D

def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W]`` (grey), ``[H, W, 3]`` or ``[H, W, 4]`` -> float32 ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[:, :, :3]
    else:
        raise ValueError(f"image: expected [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    chw = arr.transpose(2, 0, 1).astype(np.float32)  # numpy: no intra-op thread pool for small images
    if arr.dtype == np.uint8:
        chw *= 1.0 / 255.0
    return torch.from_numpy(np.ascontiguousarray(chw))


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a random area fraction in ``scale`` with an aspect
    ratio (w / h) log-uniform in ``ratio``; after 10 misses, the largest centred crop within ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageTransform:
    """A 2D figure -> normalised ``[3, S, S]`` float32 tensor for the image tower.

    Training (``rng`` given): random resized crop to ``S x S`` (area fraction in ``scale``, aspect in
    ``ratio``), horizontal / vertical flips with the given probabilities, brightness and contrast
    jitter (multipliers uniform in ``1 +- brightness`` / ``1 +- contrast``). Evaluation (``rng=None``):
    resize the shorter side to S and take the centre crop (open_clip's evaluation transform). Both
    end with the CLIP mean/std normalisation (what open_clip-pretrained towers expect).

    Args:
        image_size: S, the image tower's input size.
    """

    def __init__(self, image_size: int, *, scale: Sequence[float] = (0.8, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip_prob: float = 0.0, vflip_prob: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0,
                 mean: Sequence[float] = OPENAI_DATASET_MEAN, std: Sequence[float] = OPENAI_DATASET_STD):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"image augment scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
        self.size = int(image_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip_prob, self.vflip_prob = float(hflip_prob), float(vflip_prob)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        x = image_to_tensor(image)
        size = [self.size, self.size]
        if rng is None:
            x = TF.center_crop(TF.resize(x, self.size, antialias=True), size)
        else:
            top, left, h, w = random_resized_crop_box(x.shape[1], x.shape[2], self.scale, self.ratio, rng)
            x = TF.resized_crop(x, top, left, h, w, size, antialias=True)
            if rng.random() < self.hflip_prob:
                x = x.flip(-1)
            if rng.random() < self.vflip_prob:
                x = x.flip(-2)
            if self.brightness > 0:
                x = x * rng.uniform(1 - self.brightness, 1 + self.brightness)
            if self.contrast > 0:
                mean = x.mean()
                x = (x - mean) * rng.uniform(1 - self.contrast, 1 + self.contrast) + mean
            x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------------------------------ 3D

def foreground_window(mask: torch.Tensor, size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Start / end (exclusive) of a ``size`` window centred on the bounding box of ``mask`` [X, Y, Z].

    The window is shifted to stay inside the volume where the volume is large enough, and clipped to
    it where it is not (the caller pads). An empty mask centres the window on the volume.
    """
    shape = mask.shape
    start, end = [], []
    for axis, (n, s) in enumerate(zip(shape, size)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = mask.any(dim=other).nonzero()  # [k, 1] indices along this axis holding foreground
        centre = (hit.min().item() + hit.max().item() + 1) / 2 if hit.numel() else n / 2
        lo = min(max(int(round(centre - s / 2)), 0), max(n - s, 0))
        start.append(lo)
        end.append(min(lo + s, n))
    return start, end


class VolumeTransform:
    """A CT volume in HU and its anatomy label map -> model inputs, with MONAI transforms.

    1. ``Orientationd`` to RAS (uses the affine; volumes from ``medvlp.data.io`` already are RAS);
    2. optional ``Spacingd`` resampling to ``pixdim`` mm (bilinear for the volume, nearest for labels);
    3. ``ScaleIntensityRanged``: HU window ``hu_window`` -> [0, 1], clipped;
    4. crop a ``spatial_size`` window centred on the union of all anatomy masks (label > 0), and pad
       (symmetric, value 0 = the bottom of the window / background label) where the volume is smaller;
    5. training only: flip along each axis in ``flip_axes`` with probability ``flip_prob``.

    Anatomies cut by the crop touch its border afterwards; the fVLM model marks them invalid.

    Args:
        spatial_size: (X, Y, Z) voxels of the model input.
    """

    def __init__(self, spatial_size: Sequence[int], *, hu_window: Sequence[float] = HU_WINDOW,
                 pixdim: Sequence[float] | None = None, flip_prob: float = 0.0,
                 flip_axes: Sequence[int] = (0,)):
        self.size = [int(s) for s in spatial_size]
        if len(self.size) != 3:
            raise ValueError(f"spatial_size must have 3 values (X, Y, Z), got {spatial_size}")
        keys = ("volume", "label")
        # labels given explicitly: nibabel's convention (RAS+ = towards Right, Anterior, Superior)
        steps = [Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
        if pixdim is not None:
            steps.append(Spacingd(keys=keys, pixdim=tuple(pixdim), mode=("bilinear", "nearest")))
        steps.append(ScaleIntensityRanged(keys="volume", a_min=float(hu_window[0]), a_max=float(hu_window[1]),
                                          b_min=0.0, b_max=1.0, clip=True))
        self.prepare = Compose(steps)
        self.pad = SpatialPad(self.size, method="symmetric", mode="constant")
        self.flip_prob, self.flip_axes = float(flip_prob), tuple(int(a) for a in flip_axes)

    def __call__(self, volume: np.ndarray, label_map: np.ndarray, affine: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """volume ``[X, Y, Z]`` (HU), label_map ``[X, Y, Z]`` (ints), affine ``[4, 4]`` (None = identity)
        -> (float32 ``[1, *spatial_size]`` in [0, 1], int64 ``[*spatial_size]``)."""
        if np.shape(volume) != np.shape(label_map) or np.ndim(volume) != 3:
            raise ValueError(f"volume {np.shape(volume)} and label_map {np.shape(label_map)} must be the "
                             "same [X, Y, Z] shape")
        aff = torch.eye(4, dtype=torch.float64) if affine is None else torch.as_tensor(affine).double()
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32))[None]
        lab = torch.as_tensor(np.asarray(label_map).astype(np.int64))[None]
        data = {"volume": MetaTensor(vol, affine=aff), "label": MetaTensor(lab, affine=aff)}
        data = self.prepare(data)
        vol, lab = _plain(data["volume"]).float(), _plain(data["label"])
        start, end = foreground_window(lab[0] > 0, self.size)
        crop = SpatialCrop(roi_start=start, roi_end=end)
        vol, lab = _plain(self.pad(crop(vol))), _plain(self.pad(crop(lab)))
        if rng is not None:
            for axis in self.flip_axes:
                if rng.random() < self.flip_prob:
                    vol, lab = vol.flip(axis + 1), lab.flip(axis + 1)
        lab = lab[0] if not lab.is_floating_point() else lab[0].round()  # Spacingd may return floats
        return vol.contiguous(), lab.long().contiguous()


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor (MONAI's metadata is not needed past the transforms)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def volume_to_slices(volume: torch.Tensor, image_size: int, stride: int = 1,
                     mean: Sequence[float] = OPENAI_DATASET_MEAN,
                     std: Sequence[float] = OPENAI_DATASET_STD) -> torch.Tensor:
    """Axial slices of RAS volumes as 2D images for a 2D image tower (RadCLIP).

    Slice ``z`` is shown in the radiological convention (rows anterior -> posterior, columns patient
    right -> left, i.e. the patient's right on the image's left), resized to ``image_size`` when the
    in-plane size differs, replicated to 3 channels and CLIP-normalised like the 2D figures.

    Args:
        volume: ``[B, 1, X, Y, Z]`` in [0, 1].
        stride: keep every ``stride``-th slice (from slice 0).

    Returns:
        ``[B, S, 3, image_size, image_size]`` with ``S = ceil(Z / stride)``.
    """
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ValueError(f"volume: expected [B, 1, X, Y, Z], got {list(volume.shape)}")
    v = volume[:, 0, :, :, ::stride]  # [B, X, Y, S]
    b, x, y, s = v.shape
    # [B, S, Y, X], both in-plane axes reversed: row 0 = most anterior, column 0 = most right (max X)
    slices = v.permute(0, 3, 2, 1).flip(-1, -2).reshape(b * s, 1, y, x)
    if (y, x) != (image_size, image_size):
        slices = F.interpolate(slices, size=(image_size, image_size), mode="bilinear", align_corners=False)
    m = torch.tensor(mean, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=slices.dtype, device=slices.device).view(1, 3, 1, 1)
    slices = (slices.expand(-1, 3, -1, -1) - m) / sd
    return slices.reshape(b, s, 3, image_size, image_size)
