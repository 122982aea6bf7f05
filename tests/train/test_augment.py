"""Behaviour of the patch and refinement augmentations (paper 3.4)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from h2gnet.train.augment import (
    PatchAugmentConfig,
    RefineAugmentConfig,
    augment_patch,
    augment_refinement,
    gaussian_blur,
    macenko_stain_augment,
    scale_brightness,
    shift_hue_saturation,
)

OFF = {"p_hflip": 0.0, "p_vflip": 0.0, "p_rot90": 0.0, "p_hsv": 0.0, "p_brightness": 0.0}
REFINE_OFF = {"p_hflip": 0.0, "p_vflip": 0.0, "p_rot90": 0.0, "p_zoom": 0.0, "p_stain": 0.0}


def patch_config(**on: float) -> PatchAugmentConfig:
    return PatchAugmentConfig(**{**OFF, **on})


def refine_config(**on: object) -> RefineAugmentConfig:
    return RefineAugmentConfig(**{**REFINE_OFF, **on})  # type: ignore[arg-type]


def random_patch(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 226, size=(size, size, 3), dtype=np.uint8)


def hsv_float(rgb: np.ndarray) -> np.ndarray:
    """OpenCV float HSV of a uint8 RGB array: H in degrees, S and V scaled to 0–255 units."""
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 1:] *= 255.0
    return hsv


def synthetic_he(size: int = 64, seed: int = 0) -> np.ndarray:
    """Float RGB [0, 1] image built from Ruifrok H and E stain vectors with random concentrations."""
    rng = np.random.default_rng(seed)
    h = np.array([0.65, 0.70, 0.29])
    e = np.array([0.07, 0.99, 0.11])
    stains = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)], axis=1)
    conc = rng.gamma(2.0, 0.3, size=(2, size * size))
    conc[:, : size * size // 4] = 0.0  # a quarter of background
    rgb = 240.0 * np.exp(-stains @ conc)
    return (np.clip(rgb.T.reshape(size, size, 3), 0, 255) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------- patch stage


def test_patch_is_deterministic_from_seed_and_varies_between_seeds() -> None:
    img = random_patch()
    a = augment_patch(img, np.random.default_rng(123))
    b = augment_patch(img, np.random.default_rng(123))
    assert np.array_equal(a, b)
    outputs = {augment_patch(img, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert len(outputs) > 10


def test_patch_does_not_touch_global_numpy_rng_or_input() -> None:
    img = random_patch()
    before = img.copy()
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    for seed in range(10):
        augment_patch(img, np.random.default_rng(seed), PatchAugmentConfig(**dict.fromkeys(OFF, 1.0)))
    assert np.array_equal(np.random.get_state()[1], state)
    assert np.array_equal(img, before)


def test_patch_and_refinement_paths_do_not_import_torch() -> None:
    # DataLoader workers run these; importing torch there would cost memory and start-up time
    code = (
        "import sys, numpy as np\n"
        "from h2gnet.train.augment import RefineAugmentConfig, augment_patch, augment_refinement\n"
        "rng = np.random.default_rng(0)\n"
        "augment_patch(np.zeros((8, 8, 3), np.uint8), rng)\n"
        "img = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32) * 0.6\n"
        "mask = np.zeros((16, 16), np.uint8)\n"
        "augment_refinement(img, img[..., 0], mask, rng, RefineAugmentConfig(p_stain=1.0))\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_patch_geometric_ops_are_exact_numpy_ops() -> None:
    img = random_patch()
    rng = np.random.default_rng(0)
    assert np.array_equal(augment_patch(img, rng, patch_config(p_hflip=1.0)), img[:, ::-1])
    assert np.array_equal(augment_patch(img, rng, patch_config(p_vflip=1.0)), img[::-1])
    rotations = {np.rot90(img, k).tobytes(): k for k in (1, 2, 3)}
    seen = set()
    for seed in range(40):
        out = augment_patch(img, np.random.default_rng(seed), patch_config(p_rot90=1.0))
        assert out.tobytes() in rotations, "rotation must be a lossless k*90 degree turn with k in 1..3"
        seen.add(rotations[out.tobytes()])
    assert seen == {1, 2, 3}
    assert np.array_equal(augment_patch(img, rng, patch_config()), img)


def test_saturation_shift_is_in_uint8_units() -> None:
    # high value (V = 250) keeps 8-bit rounding of the output below one saturation unit
    img = np.array([[[250, 150, 100], [100, 250, 175], [60, 120, 250]]], dtype=np.uint8)
    out = shift_hue_saturation(img, hue_shift=0.0, sat_shift=20.0)
    before, after = hsv_float(img), hsv_float(out)
    assert np.allclose(after[..., 1] - before[..., 1], 20.0, atol=1.0)
    assert np.allclose(after[..., 2], before[..., 2], atol=0.5)  # value untouched
    assert np.allclose(after[..., 0], before[..., 0], atol=1.0)  # hue untouched
    down = hsv_float(shift_hue_saturation(img, 0.0, -20.0))
    assert np.allclose(down[..., 1] - before[..., 1], -20.0, atol=1.0)


def test_hue_shift_is_in_opencv_units_and_wraps_modulo_180() -> None:
    img = np.array([[[250, 150, 100], [100, 250, 175]]], dtype=np.uint8)
    before = hsv_float(img)
    after = hsv_float(shift_hue_saturation(img, hue_shift=20.0, sat_shift=0.0))
    moved = np.mod(after[..., 0] - before[..., 0], 360.0)
    assert np.allclose(moved, 40.0, atol=1.0)  # 20 OpenCV units = 40 degrees
    # a magenta-red at OpenCV hue 170 shifted by +20 lands at hue 10 (wraps at 180)
    hsv8 = np.array([[[170, 200, 240]]], dtype=np.uint8)
    rgb = cv2.cvtColor(hsv8, cv2.COLOR_HSV2RGB)
    wrapped = cv2.cvtColor(shift_hue_saturation(rgb, 20.0, 0.0), cv2.COLOR_RGB2HSV)
    assert abs(int(wrapped[0, 0, 0]) - 10) <= 1


def test_saturation_clips_at_255_and_zero_shift_is_identity() -> None:
    img = np.array([[[250, 10, 10], [128, 128, 128]]], dtype=np.uint8)
    out = hsv_float(shift_hue_saturation(img, 0.0, 20.0))
    assert out[0, 0, 1] == pytest.approx(255.0, abs=0.5)
    patch = random_patch()
    assert np.array_equal(shift_hue_saturation(patch, 0.0, 0.0), patch)


def test_augment_patch_hsv_draws_stay_within_20_units() -> None:
    img = np.full((4, 4, 3), (250, 150, 100), dtype=np.uint8)  # S = 153 units, far from clipping
    base = hsv_float(img)[0, 0]
    sat_moves, hue_moves = [], []
    for seed in range(200):
        out = hsv_float(augment_patch(img, np.random.default_rng(seed), patch_config(p_hsv=1.0)))[0, 0]
        sat_moves.append(out[1] - base[1])
        hue_moves.append((out[0] - base[0] + 180.0) % 360.0 - 180.0)
    sat_moves, hue_moves = np.array(sat_moves), np.array(hue_moves) / 2.0  # degrees -> OpenCV units
    assert np.all(np.abs(sat_moves) <= 21.0) and np.all(np.abs(hue_moves) <= 21.0)
    assert sat_moves.max() > 15 and sat_moves.min() < -15
    assert hue_moves.max() > 15 and hue_moves.min() < -15


def test_brightness_factor_range_and_clipping() -> None:
    img = np.full((4, 4, 3), 200, dtype=np.uint8)
    factors = np.array([
        augment_patch(img, np.random.default_rng(s), patch_config(p_brightness=1.0))[0, 0, 0] / 200.0
        for s in range(300)
    ])
    assert factors.min() >= 0.8 - 0.005 and factors.max() <= 1.2 + 0.005
    assert factors.min() < 0.83 and factors.max() > 1.17
    assert np.array_equal(scale_brightness(np.full((1, 1, 3), 250, np.uint8), 1.2), np.full((1, 1, 3), 255))
    assert np.array_equal(scale_brightness(np.full((1, 1, 3), 100, np.uint8), 0.8), np.full((1, 1, 3), 80))


@pytest.mark.parametrize("op", ["p_hflip", "p_vflip", "p_rot90", "p_hsv", "p_brightness"])
def test_each_patch_op_fires_about_half_the_time(op: str) -> None:
    img = random_patch(size=8)
    config = patch_config(**{op: 0.5})
    n = 2000
    changed = sum(
        not np.array_equal(augment_patch(img, np.random.default_rng(s), config), img) for s in range(n)
    )
    # binomial(2000, 0.5): sd ~ 22; allow ~4.5 sd (tiny HSV/brightness draws may be no-ops)
    assert abs(changed - n / 2) < 100


def test_patch_config_validation() -> None:
    with pytest.raises(ValueError):
        PatchAugmentConfig(p_hflip=1.5)
    with pytest.raises(ValueError):
        PatchAugmentConfig(brightness_range=(1.2, 0.8))
    with pytest.raises(ValueError):
        augment_patch(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_gaussian_blur_spreads_an_edge_by_sigma() -> None:
    img = np.zeros((9, 61, 3), np.uint8)
    img[:, 30:] = 200  # a vertical edge: across it, a blur of σ px turns the step into a Gaussian's integral
    for sigma in (1.0, 2.5):
        profile = gaussian_blur(img, sigma)[4, :, 0].astype(np.float64)
        slope = np.diff(profile)  # the Gaussian itself, centred between columns 29 and 30
        x = np.arange(slope.size) - 29
        assert slope.sum() == pytest.approx(200, abs=1)
        assert (x**2 * slope).sum() / slope.sum() == pytest.approx(sigma**2, rel=0.1)
    assert np.array_equal(gaussian_blur(img, 0.0), img)


def test_blur_is_off_by_default_and_takes_no_draw_then() -> None:
    img = random_patch(size=16)
    assert PatchAugmentConfig().p_blur == 0.0
    off, on_never = np.random.default_rng(3), np.random.default_rng(3)
    a = augment_patch(img, off, PatchAugmentConfig())
    b = augment_patch(img, on_never, PatchAugmentConfig(p_blur=1e-12))
    assert np.array_equal(a, b)  # the blur comes last: the paper's ops drew the same
    assert off.random() != on_never.random()  # only the enabled blur took a draw


def test_blur_fires_about_half_the_time_within_its_sigma_range() -> None:
    img = random_patch(size=16)
    config = patch_config(p_blur=0.5, blur_sigma=(1.0, 2.0))
    outs = [augment_patch(img, np.random.default_rng(s), config) for s in range(400)]
    blurred = [o for o in outs if not np.array_equal(o, img)]
    assert abs(len(blurred) - 200) < 45
    # a blur of σ in [1, 2] px lowers the pixel-to-pixel variation of noise by well over half
    rough = np.abs(np.diff(img.astype(float), axis=1)).mean()
    assert all(np.abs(np.diff(o.astype(float), axis=1)).mean() < 0.5 * rough for o in blurred)


def test_blur_config_validation() -> None:
    for bad in ((-1.0, 1.0), (2.0, 1.0), (0.0, float("nan"))):
        with pytest.raises(ValueError, match="blur_sigma"):
            PatchAugmentConfig(blur_sigma=bad)
    with pytest.raises(ValueError):
        PatchAugmentConfig(p_blur=1.5)


# --------------------------------------------------------------------------- refinement stage


def marker_sample(size: int = 64, row: int = 14, col: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey image, zero heatmap and zero mask, each with the same 5x5 marker block at (row, col).

    White padding (zoom-out) has green = 1, so ``0.5 - green`` isolates the image marker.
    """
    image = np.full((size, size, 3), 0.5, np.float32)
    heatmap = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    block = (slice(row - 2, row + 3), slice(col - 2, col + 3))
    image[block] = (1.0, 0.0, 0.5)  # red-ish marker: the only place where green < 0.5
    heatmap[block] = 1.0
    mask[block] = 1
    return image, heatmap, mask


def centroid(weights: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(weights.shape)
    total = weights.sum()
    return np.array([(rows * weights).sum() / total, (cols * weights).sum() / total])


def test_refinement_geometry_keeps_image_heatmap_and_mask_aligned() -> None:
    image, heatmap, mask = marker_sample()
    areas = set()
    for seed in range(60):
        out_image, out_heatmap, out_mask = augment_refinement(
            image, heatmap, mask, np.random.default_rng(seed),
            refine_config(p_hflip=0.5, p_vflip=0.5, p_rot90=0.5, p_zoom=0.5),
        )
        assert out_image.shape == image.shape
        assert out_heatmap.shape == heatmap.shape and out_mask.shape == mask.shape
        assert out_image.dtype == np.float32 and out_heatmap.dtype == np.float32
        assert out_mask.dtype == np.uint8
        c_mask = centroid((out_mask == 1).astype(float))
        assert np.allclose(centroid(out_heatmap), c_mask, atol=1.0)
        assert np.allclose(centroid(np.clip(0.5 - out_image[..., 1], 0, None)), c_mask, atol=1.0)
        areas.add(int((out_mask == 1).sum()))
    assert len(areas) > 3, "zoom never changed the marker size: zoom not exercised"


def test_refinement_flip_and_rotation_move_marker_to_expected_place() -> None:
    image, heatmap, mask = marker_sample(row=14, col=40)
    rng = np.random.default_rng(0)
    _, _, flipped = augment_refinement(image, heatmap, mask, rng, refine_config(p_hflip=1.0))
    assert np.allclose(centroid(flipped.astype(float)), [14, 63 - 40])
    _, _, flipped = augment_refinement(image, heatmap, mask, rng, refine_config(p_vflip=1.0))
    assert np.allclose(centroid(flipped.astype(float)), [63 - 14, 40])
    expected = {tuple(centroid(np.rot90(mask, k).astype(float))) for k in (1, 2, 3)}
    for seed in range(10):
        _, out_heatmap, out_mask = augment_refinement(
            image, heatmap, mask, np.random.default_rng(seed), refine_config(p_rot90=1.0)
        )
        assert tuple(centroid(out_mask.astype(float))) in expected
        assert np.allclose(centroid(out_heatmap), centroid(out_mask.astype(float)))


def test_refinement_zoom_scales_about_centre_and_pads() -> None:
    image, heatmap, mask = marker_sample(row=14, col=40)
    centre = np.array([31.5, 31.5])
    before = centroid(mask.astype(float)) - centre
    for scale in (1.2, 0.8):
        out_image, out_heatmap, out_mask = augment_refinement(
            image, heatmap, mask, np.random.default_rng(0),
            refine_config(p_zoom=1.0, zoom_range=(scale, scale)),
        )
        assert np.allclose(centroid((out_mask == 1).astype(float)) - centre, scale * before, atol=0.6)
        assert np.allclose(centroid(out_heatmap) - centre, scale * before, atol=0.6)
    # zoomed out: borders padded with white glass / zero heatmap / background label
    assert np.allclose(out_image[0, 0], 1.0) and out_heatmap[0, 0] == 0.0 and out_mask[0, 0] == 0
    assert np.allclose(out_image[32, 10], 0.5)  # inside the shrunken grey content


def test_refinement_zoom_keeps_mask_labels_nearest() -> None:
    cols = np.indices((64, 64))[1]
    mask = ((cols // 3) % 2 * 2).astype(np.uint8)  # many 0 -> 2 edges: interpolation would create 1s
    image = np.full((64, 64, 3), 0.5, np.float32)
    for scale in (1.13, 0.87):
        _, _, out = augment_refinement(
            image, mask.astype(np.float32), mask, np.random.default_rng(0),
            refine_config(p_zoom=1.0, zoom_range=(scale, scale)),
        )
        assert set(np.unique(out)) == {0, 2}
        assert not np.array_equal(out, mask)


def test_refinement_non_square_keeps_size() -> None:
    image = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    heatmap = image[..., 0].copy()
    mask = (heatmap > 0.5).astype(np.uint8)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out = augment_refinement(image, heatmap, mask, rng, refine_config(p_rot90=1.0))
        assert out[0].shape == image.shape and np.array_equal(out[2], np.rot90(mask, 2))


def test_refinement_is_deterministic_from_seed() -> None:
    image = synthetic_he()
    heatmap = image[..., 1].copy()
    mask = (heatmap < 0.6).astype(np.uint8)
    config = RefineAugmentConfig()
    np.random.seed(3)
    state = np.random.get_state()[1].copy()
    for seed in (1, 2, 5):
        a = augment_refinement(image, heatmap, mask, np.random.default_rng(seed), config)
        b = augment_refinement(image, heatmap, mask, np.random.default_rng(seed), config)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(np.random.get_state()[1], state), "global NumPy RNG must not be used"


def test_macenko_changes_colour_keeps_shape_and_range() -> None:
    image = synthetic_he()
    heatmap = np.zeros(image.shape[:2], np.float32)
    mask = np.zeros(image.shape[:2], np.uint8)
    diffs = []
    for seed in range(5):
        out_image, out_heatmap, out_mask = augment_refinement(
            image, heatmap, mask, np.random.default_rng(seed), refine_config(p_stain=1.0)
        )
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        assert np.array_equal(out_heatmap, heatmap) and np.array_equal(out_mask, mask)
        diffs.append(np.abs(out_image - image).mean())
    assert min(diffs) > 0.003 and max(diffs) < 0.2


def test_macenko_without_noise_reconstructs_the_image() -> None:
    image = synthetic_he()
    out = macenko_stain_augment(image, np.random.default_rng(0), sigma1=0.0, sigma2=0.0)
    assert out is not None
    assert np.abs(out - image).max() < 0.02


def test_macenko_skips_blank_uniform_and_near_empty_images() -> None:
    rng = np.random.default_rng(0)
    white = np.ones((64, 64, 3), np.float32)
    black = np.zeros((64, 64, 3), np.float32)
    uniform = np.full((64, 64, 3), (0.6, 0.3, 0.6), np.float32)
    specks = white.copy()
    specks[:3, :3] = (0.5, 0.2, 0.5)
    assert macenko_stain_augment(white, rng, min_tissue_fraction=0.0) is None
    assert macenko_stain_augment(black, rng) is None
    assert macenko_stain_augment(uniform, rng) is None
    assert macenko_stain_augment(specks, rng) is None
    heatmap = np.zeros((64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    for img in (white, black, uniform, specks):
        out, _, _ = augment_refinement(img, heatmap, mask, rng, refine_config(p_stain=1.0))
        assert np.array_equal(out, img)


def test_refinement_input_validation() -> None:
    image = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError):
        bad_heatmap = np.zeros((8, 9), np.float32)
        augment_refinement(image, bad_heatmap, np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        RefineAugmentConfig(zoom_range=(0.0, 1.2))
