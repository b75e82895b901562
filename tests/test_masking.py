"""modules.masking: crop regions, their expansion to the processing aspect ratio, and the "fill" content."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import masking


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    arr = np.zeros((height, width), np.uint8)
    arr[y1:y2, x1:x2] = 255
    return arr


# --- get_crop_region --------------------------------------------------------------------------------------


def test_crop_region_is_the_exact_box_for_arrays_and_images():
    arr = box_mask(100, 80, (30, 10, 50, 20))
    assert masking.get_crop_region(arr) == (30, 10, 50, 20)
    assert masking.get_crop_region(Image.fromarray(arr)) == (30, 10, 50, 20)
    assert masking.get_crop_region(arr > 0) == (30, 10, 50, 20)


def test_crop_region_counts_any_nonzero_value():
    arr = np.zeros((40, 40), np.uint8)
    arr[5, 7] = 1
    arr[30, 20] = 3
    assert masking.get_crop_region(arr) == (7, 5, 21, 31)


def test_crop_region_padding_and_clamping():
    arr = box_mask(100, 80, (30, 10, 50, 20))
    assert masking.get_crop_region(arr, pad=5) == (25, 5, 55, 25)
    assert masking.get_crop_region(arr, pad=40) == (0, 0, 90, 60)
    assert masking.get_crop_region(arr, pad=1000) == (0, 0, 100, 80)


def test_empty_mask():
    arr = np.zeros((80, 100), np.uint8)
    assert masking.get_crop_region_v2(arr) is None
    x1, y1, x2, y2 = masking.get_crop_region(arr)
    assert x1 >= x2 and y1 >= y2  # A1111's "invalid" box that callers test for


# --- expand_crop_region -----------------------------------------------------------------------------------


def test_expand_grows_height_for_a_wide_box():
    assert masking.expand_crop_region((30, 10, 50, 20), 512, 512, 100, 80) == (30, 5, 50, 25)


def test_expand_grows_width_for_a_tall_box():
    # 10 wide, 40 tall, processing 2:1 -> 80 wide, split 35 / 35 around the box
    assert masking.expand_crop_region((40, 20, 50, 60), 1024, 512, 200, 100) == (5, 20, 85, 60)


def test_expand_slides_back_inside_the_image():
    # at the bottom edge: the growth that would stick out moves to the top
    assert masking.expand_crop_region((30, 70, 50, 80), 512, 512, 100, 80) == (30, 60, 50, 80)
    # at the left edge
    assert masking.expand_crop_region((0, 20, 10, 60), 512, 512, 200, 100) == (0, 20, 40, 60)


def test_expand_clamps_when_the_image_is_too_small():
    x1, y1, x2, y2 = masking.expand_crop_region((0, 5, 100, 15), 512, 512, 100, 20)
    assert (x1, y1, x2, y2) == (0, 0, 100, 20)


def test_expand_keeps_the_aspect_ratio_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        img_w, img_h = (int(v) for v in rng.integers(64, 400, 2))
        proc_w, proc_h = (int(v) * 8 for v in rng.integers(8, 128, 2))
        x1, x2 = sorted(int(v) for v in rng.choice(img_w + 1, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(img_h + 1, 2, replace=False))
        ex1, ey1, ex2, ey2 = masking.expand_crop_region((x1, y1, x2, y2), proc_w, proc_h, img_w, img_h)
        assert 0 <= ex1 <= x1 and 0 <= ey1 <= y1 and x2 <= ex2 <= img_w and y2 <= ey2 <= img_h
        want_w, want_h = (ey2 - ey1) * proc_w / proc_h, (ex2 - ex1) * proc_h / proc_w
        # exact up to int truncation, unless the grown axis had to be clamped to the whole image
        fits_w = abs((ex2 - ex1) - want_w) <= 1 or (ex1 == 0 and ex2 == img_w)
        fits_h = abs((ey2 - ey1) - want_h) <= 1 or (ey1 == 0 and ey2 == img_h)
        assert fits_w or fits_h


def test_expand_refuses_an_empty_box():
    with pytest.raises(ValueError):
        masking.expand_crop_region((10, 10, 10, 20), 512, 512, 100, 100)


# --- fill -------------------------------------------------------------------------------------------------

MAGENTA = (255, 0, 255)


def surrounded_hole(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random colours in 90..160 around a magenta hole marked by the mask."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 161, (96, 128, 3), dtype=np.uint8)
    mask = box_mask(128, 96, (30, 20, 100, 70))
    img[mask > 0] = MAGENTA
    return img, mask


def test_fill_replaces_the_masked_colour_with_surrounding_colours():
    img, mask = surrounded_hole()
    out = np.asarray(masking.fill(Image.fromarray(img), Image.fromarray(mask)))
    hole = out[mask > 0]
    assert not (hole == MAGENTA).all(axis=1).any()
    kept = img[mask == 0]
    assert (hole >= kept.min(axis=0)).all() and (hole <= kept.max(axis=0)).all()


def test_fill_leaves_unmasked_pixels_alone_and_is_deterministic():
    img, mask = surrounded_hole(1)
    first = np.asarray(masking.fill(Image.fromarray(img), Image.fromarray(mask)))
    second = np.asarray(masking.fill(Image.fromarray(img), mask))
    assert np.array_equal(first, second)
    assert np.array_equal(first[mask == 0], img[mask == 0])


def test_fill_is_smooth_between_two_colours():
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :64] = (200, 0, 0)
    img[:, 64:] = (0, 0, 200)
    mask = box_mask(128, 64, (32, 16, 96, 48))
    out = np.asarray(masking.fill(Image.fromarray(img), Image.fromarray(mask))).astype(int)
    row = out[32, 32:96]
    assert (np.diff(row[:, 0]) <= 0).all() and (np.diff(row[:, 2]) >= 0).all()  # a ramp from red to blue
    assert np.abs(np.diff(row, axis=0)).max() <= 16  # no hard seam


def test_fill_blends_partly_masked_pixels():
    img = np.full((32, 32, 3), 100, np.uint8)
    img[8:24, 8:24] = MAGENTA
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 128
    out = np.asarray(masking.fill(Image.fromarray(img), mask)).astype(int)
    # half kept: a mix of the pixel's own magenta and the fill, which is itself a mix with the grey around
    red, green, _ = out[16, 16]
    assert 100 < red < 255 and 0 < green < 100


def test_fill_of_a_wholly_masked_image_changes_nothing():
    img = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = masking.fill(Image.fromarray(img), np.full((16, 24), 255, np.uint8))
    assert np.array_equal(np.asarray(out), img)


def test_fill_rejects_a_mask_of_another_size():
    with pytest.raises(ValueError):
        masking.fill(Image.new("RGB", (10, 10)), np.zeros((11, 10), np.uint8))
