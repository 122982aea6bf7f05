"""Online data augmentation for both training stages (paper section 3.4).

Everything here works on NumPy arrays with OpenCV and takes every random draw
from a caller-supplied :class:`numpy.random.Generator`, so an augmentation is
reproducible from a seed and safe inside DataLoader worker processes (each
worker passes its own Generator; no global RNG state is read or written, and
nothing here imports torch).

Why not an augmentation library: we checked albumentations (2.0.8, project
archived in 2025; its successor AlbumentationsX is dual-licensed), kornia and
torchvision.transforms.v2.  kornia and torchvision work on torch tensors and
express hue/saturation as fractions/factors, not as additive shifts in
OpenCV's 8-bit units; albumentations' ``HueSaturationValue`` does use those
units but draws from its own RNG (seeded through ``Compose``), not from our
Generator, and would be a new dependency of an archived project.  The whole
scheme is a few array operations, so it is written out here.

Patch stage (uint8 RGB patches): independent p = 0.5 horizontal flip,
vertical flip, 90° rotation, HSV shift, multiplicative brightness; and, off
unless asked for (``train-patch --blur-um``), Gaussian blur: the focus
variation between scanners, which the paper's scheme does not cover (Tellez
et al. 2019, the paper's reference 64, count blur among the augmentations
that help models generalise to other centres).

Refinement stage (float RGB thumbnail + heatmap + mask): independent p = 0.5
horizontal flip, vertical flip, 90° rotation, zoom, Macenko stain
augmentation (RGB only; stain matrix estimated with torchstain).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

_LOG = logging.getLogger(__name__)

# OpenCV's float32 HSV uses hue in degrees [0, 360); its uint8 HSV uses hue/2 in [0, 180).
_DEGREES_PER_OPENCV_HUE_UNIT = 2.0
_OPENCV_HUE_PERIOD = 180.0  # uint8 hue units
_OPENCV_SAT_MAX = 255.0  # uint8 saturation units


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _check_range(name: str, bounds: tuple[float, float], *, positive: bool = False) -> None:
    low, high = bounds
    if low > high or (positive and low <= 0):
        extra = " and low > 0" if positive else ""
        raise ValueError(f"{name} must be (low, high) with low <= high{extra}, got {bounds}")


# --------------------------------------------------------------------------- shared geometry


def _flip_rotate_params(
    rng: np.random.Generator, p_hflip: float, p_vflip: float, p_rot90: float
) -> tuple[bool, bool, int]:
    """Draw (hflip, vflip, k) with k quarter turns counter-clockwise (0 = none, else 1..3)."""
    hflip = bool(rng.random() < p_hflip)
    vflip = bool(rng.random() < p_vflip)
    k = int(rng.integers(1, 4)) if rng.random() < p_rot90 else 0
    return hflip, vflip, k


def _flip_rotate(array: np.ndarray, *, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    """Apply flips and ``k`` quarter turns to the first two (row, column) axes; lossless."""
    if hflip:
        array = array[:, ::-1]
    if vflip:
        array = array[::-1, :]
    if k:
        array = np.rot90(array, k, axes=(0, 1))
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- patch stage


@dataclass(frozen=True)
class PatchAugmentConfig:
    """Patch-classifier augmentation (paper 3.4); every op is applied independently.

    Attributes:
        p_hflip, p_vflip: probability of a left-right / up-down flip.
        p_rot90: probability of a rotation by k·90°, k uniform in {1, 2, 3}.
        p_hsv: probability of the HSV shift (hue and saturation shifted together).
        hue_shift: maximum |hue shift| in OpenCV uint8 hue units (0–179, one
            unit = 2°); the shift is uniform in [-hue_shift, hue_shift] and wraps.
        sat_shift: maximum |saturation shift| in uint8 units (0–255); uniform in
            [-sat_shift, sat_shift], result clipped to [0, 255].
        p_brightness: probability of the multiplicative brightness change.
        brightness_range: (low, high) factor multiplying all RGB values (clipped to 255).
        p_blur: probability of a Gaussian blur (0: off, the paper's scheme; no random draw is then taken,
            so the other ops' draws are those of the paper's scheme).
        blur_sigma: (low, high) standard deviation of the blur in px of the augmented patch, uniform.
    """

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_hsv: float = 0.5
    hue_shift: float = 20.0
    sat_shift: float = 20.0
    p_brightness: float = 0.5
    brightness_range: tuple[float, float] = (0.8, 1.2)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("p_hflip", "p_vflip", "p_rot90", "p_hsv", "p_brightness", "p_blur"):
            _check_probability(name, getattr(self, name))
        if self.hue_shift < 0 or self.sat_shift < 0:
            raise ValueError("hue_shift and sat_shift are maximum magnitudes and must be >= 0")
        _check_range("brightness_range", self.brightness_range, positive=True)
        low, high = self.blur_sigma
        if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low <= high):
            raise ValueError(f"blur_sigma must be a range 0 <= low <= high in px, got {self.blur_sigma}")


def shift_hue_saturation(img: np.ndarray, hue_shift: float, sat_shift: float) -> np.ndarray:
    """Shift hue and saturation of a uint8 RGB image, in OpenCV uint8 HSV units.

    ``hue_shift`` is in OpenCV's 8-bit hue units (full circle = 180, so one unit
    is 2°) and wraps around; ``sat_shift`` is in 8-bit saturation units (0–255)
    and the result is clipped to [0, 255]; value (max of R, G, B) is unchanged.
    The conversion runs in float32 HSV so that a zero shift returns the input
    and no 8-bit HSV quantisation is added.
    """
    rgb = img.astype(np.float32) / 255.0
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360), S and V in [0, 1]
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift * _DEGREES_PER_OPENCV_HUE_UNIT, 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] + sat_shift / _OPENCV_SAT_MAX, 0.0, 1.0)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def scale_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Multiply every RGB value of a uint8 image by ``factor``; round and clip to [0, 255]."""
    return np.clip(np.rint(img.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a uint8 RGB image with a Gaussian of standard deviation ``sigma`` px (mirrored borders, so a
    patch's edge is not darkened); ``sigma`` below 0.05 px returns a copy."""
    if sigma < 0.05:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def _validate_patch(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"augment_patch expects a uint8 (H, W, 3) RGB array, got {img.dtype} {img.shape}")


def augment_patch(
    img: np.ndarray, rng: np.random.Generator, config: PatchAugmentConfig | None = None
) -> np.ndarray:
    """Randomly augment one uint8 (H, W, 3) RGB patch; returns a new uint8 array.

    Order: flips → 90° rotation → HSV shift → brightness → blur.  Draws are taken from
    ``rng`` in a fixed order, so the same Generator state gives the same output.
    Blur comes last so that with ``p_blur`` = 0 (no draw) the others draw as before;
    a blur commutes with the brightness factor, and with the hue shift nearly.
    A rotation by 90°/270° swaps H and W (patches are square in practice).
    """
    _validate_patch(img)
    cfg = config or PatchAugmentConfig()
    hflip, vflip, k = _flip_rotate_params(rng, cfg.p_hflip, cfg.p_vflip, cfg.p_rot90)
    out = _flip_rotate(img, hflip=hflip, vflip=vflip, k=k)
    if rng.random() < cfg.p_hsv:
        dh = float(rng.uniform(-cfg.hue_shift, cfg.hue_shift))
        ds = float(rng.uniform(-cfg.sat_shift, cfg.sat_shift))
        out = shift_hue_saturation(out, dh, ds)
    if rng.random() < cfg.p_brightness:
        out = scale_brightness(out, float(rng.uniform(*cfg.brightness_range)))
    if cfg.p_blur > 0 and rng.random() < cfg.p_blur:
        out = gaussian_blur(out, float(rng.uniform(*cfg.blur_sigma)))
    return out if out is not img else img.copy()


# --------------------------------------------------------------------------- refinement stage


@dataclass(frozen=True)
class RefineAugmentConfig:
    """Refinement-network augmentation (paper 3.4); every op is applied independently.

    Attributes:
        p_hflip, p_vflip: probability of a left-right / up-down flip.
        p_rot90: probability of a k·90° rotation, k uniform in {1, 2, 3}
            (only k = 2 on non-square inputs, so the size is kept).
        p_zoom: probability of a zoom about the image centre.
        zoom_range: (low, high) scale factor; > 1 enlarges (content cropped at
            the borders), < 1 shrinks (border padded).  Output size is unchanged.
        image_fill: RGB value in [0, 1] used to pad the image when zooming out
            (1.0 = white, the colour of empty glass); heatmap and mask pad with 0.
        p_stain: probability of Macenko stain augmentation of the RGB channels.
        sigma1: stain-concentration multiplicative noise, factor in [1-σ1, 1+σ1].
        sigma2: stain-concentration additive noise, in [-σ2, σ2] (OD units).
        min_tissue_fraction: skip stain augmentation when fewer than this share
            of pixels have optical density >= 0.15 in every channel (too little
            tissue for a stable stain estimate).
    """

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_zoom: float = 0.5
    zoom_range: tuple[float, float] = (0.8, 1.2)
    image_fill: float = 1.0
    p_stain: float = 0.5
    sigma1: float = 0.1
    sigma2: float = 0.1
    min_tissue_fraction: float = 0.01

    def __post_init__(self) -> None:
        for name in ("p_hflip", "p_vflip", "p_rot90", "p_zoom", "p_stain"):
            _check_probability(name, getattr(self, name))
        _check_range("zoom_range", self.zoom_range, positive=True)
        if not 0.0 <= self.image_fill <= 1.0:
            raise ValueError(f"image_fill must lie in [0, 1], got {self.image_fill}")
        if self.sigma1 < 0 or self.sigma2 < 0:
            raise ValueError("sigma1 and sigma2 must be >= 0")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must lie in [0, 1], got {self.min_tissue_fraction}")


def _zoom_matrix(height: int, width: int, scale: float) -> np.ndarray:
    """2×3 affine matrix scaling by ``scale`` about the image centre (pixel-centre coordinates)."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([[scale, 0.0, (1.0 - scale) * cx], [0.0, scale, (1.0 - scale) * cy]], dtype=np.float64)


def zoom_about_centre(
    array: np.ndarray, scale: float, *, interpolation: int, fill: float | tuple[float, ...]
) -> np.ndarray:
    """Zoom a (H, W) or (H, W, C) array by ``scale`` about its centre, keeping its size.

    ``scale > 1`` enlarges the content (what leaves the frame is cropped);
    ``scale < 1`` shrinks it and pads the border with ``fill``.  Because one
    affine matrix is used for every input, image, heatmap and mask stay aligned;
    pass ``cv2.INTER_NEAREST`` for label masks.
    """
    height, width = array.shape[:2]
    matrix = _zoom_matrix(height, width, scale)
    border = fill if isinstance(fill, tuple) else (fill,) * 4
    return cv2.warpAffine(
        array, matrix, (width, height), flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT, borderValue=border,
    )


def _tissue_fraction(rgb255: np.ndarray, io: float, beta: float) -> float:
    """Share of pixels whose optical density is >= ``beta`` in all three channels."""
    optical_density = -np.log((rgb255.reshape(-1, 3) + 1.0) / io)
    return float(np.mean(np.all(optical_density >= beta, axis=1)))


def _estimate_stains(rgb255: np.ndarray, io: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Macenko stain matrix (3, 2) and concentrations (2, H·W) via torchstain, or None if degenerate."""
    from torchstain.numpy.augmentors import NumpyMacenkoAugmentor  # numpy backend: no torch import

    estimator = NumpyMacenkoAugmentor()
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            estimator.fit(rgb255, Io=io)
    except (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError) as exc:
        _LOG.debug("Macenko stain estimation failed (%s); stain augmentation skipped", exc)
        return None
    stains = np.asarray(estimator.HERef, dtype=np.float64)
    concentrations = np.asarray(estimator.CRef, dtype=np.float64)
    if not (np.isfinite(stains).all() and np.isfinite(concentrations).all()):
        return None
    h, e = stains[:, 0], stains[:, 1]
    cosine = abs(float(h @ e)) / max(float(np.linalg.norm(h) * np.linalg.norm(e)), 1e-12)
    if cosine > 0.999:  # one colour only: the two "stains" coincide
        return None
    return stains, concentrations


def macenko_stain_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma1: float = 0.1,
    sigma2: float = 0.1,
    min_tissue_fraction: float = 0.01,
) -> np.ndarray | None:
    """Macenko stain augmentation of a float (H, W, 3) RGB image in [0, 1].

    The H&E stain matrix and per-pixel stain concentrations are estimated with
    torchstain's NumPy Macenko implementation (Io = 240, α = 1 %, β = 0.15);
    each stain's concentrations are then multiplied by a factor drawn from
    U(1-σ1, 1+σ1) and shifted by U(-σ2, σ2) (Tellez et al. 2018), and the image
    is recomposed with the same stain matrix.  The noise is drawn here from
    ``rng`` rather than by torchstain's ``augment()``, which draws from NumPy's
    global RNG (unseeded and identical across forked DataLoader workers).

    Returns the augmented float32 image in [0, 1], or ``None`` when the image
    has too little tissue or the stain estimate is degenerate (the caller then
    keeps the original image; training never stops on it).
    """
    io = 240.0
    rgb255 = image.astype(np.float64) * 255.0
    if _tissue_fraction(rgb255, io, beta=0.15) < min_tissue_fraction:
        return None
    estimate = _estimate_stains(rgb255, io)
    if estimate is None:
        return None
    stains, concentrations = estimate
    alpha = rng.uniform(1.0 - sigma1, 1.0 + sigma1, size=(2, 1))
    beta = rng.uniform(-sigma2, sigma2, size=(2, 1))
    optical_density = stains @ (concentrations * alpha + beta)  # (3, H·W)
    rgb = io * np.exp(-optical_density)
    out = np.clip(rgb.T.reshape(image.shape) / 255.0, 0.0, 1.0).astype(np.float32)
    return out if np.isfinite(out).all() else None


def _validate_refinement(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be a float (H, W, 3) RGB array in [0, 1], got {image.dtype} {image.shape}"
        )
    if heatmap.shape != image.shape[:2] or mask.shape != image.shape[:2]:
        raise ValueError(
            f"heatmap {heatmap.shape} and mask {mask.shape} must both be (H, W) = {image.shape[:2]}"
        )


def augment_refinement(
    image: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    config: RefineAugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly augment one refinement training sample; returns new arrays.

    Args:
        image: (H, W, 3) float32 RGB thumbnail in [0, 1].
        heatmap: (H, W) float32 tumour probability from the patch stage.
        mask: (H, W) uint8 label mask (class indices).
        rng: source of every random draw.
        config: probabilities and ranges; defaults are the paper's.

    Returns:
        (image float32 (H, W, 3) in [0, 1], heatmap float32 (H, W), mask uint8 (H, W)),
        all with the input size.  Geometric ops move all three together
        (bilinear for image and heatmap, nearest for the mask, so mask labels
        stay in the input's label set); the stain op touches RGB only and is
        applied first, to the unpadded tissue.
    """
    _validate_refinement(image, heatmap, mask)
    cfg = config or RefineAugmentConfig()
    height, width = mask.shape
    out_image = image.astype(np.float32)
    out_heatmap = heatmap.astype(np.float32)
    out_mask = mask.astype(np.uint8)

    if rng.random() < cfg.p_stain:
        stained = macenko_stain_augment(
            out_image, rng, sigma1=cfg.sigma1, sigma2=cfg.sigma2, min_tissue_fraction=cfg.min_tissue_fraction
        )
        if stained is not None:
            out_image = stained

    hflip, vflip, k = _flip_rotate_params(rng, cfg.p_hflip, cfg.p_vflip, cfg.p_rot90)
    if k and height != width:
        k = 2  # a quarter turn would change the size of a non-square sample
    out_image, out_heatmap, out_mask = (
        _flip_rotate(a, hflip=hflip, vflip=vflip, k=k) for a in (out_image, out_heatmap, out_mask)
    )

    if rng.random() < cfg.p_zoom:
        scale = float(rng.uniform(*cfg.zoom_range))
        out_image = zoom_about_centre(
            out_image, scale, interpolation=cv2.INTER_LINEAR, fill=(cfg.image_fill,) * 3
        )
        out_heatmap = zoom_about_centre(out_heatmap, scale, interpolation=cv2.INTER_LINEAR, fill=0.0)
        out_mask = zoom_about_centre(out_mask, scale, interpolation=cv2.INTER_NEAREST, fill=0.0)

    return np.clip(out_image, 0.0, 1.0), out_heatmap, out_mask
