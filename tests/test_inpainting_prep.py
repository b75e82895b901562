"""modules.engine.inpainting: mask preparation, "Only masked" regions, overlays, latent masks and the
inpainting-model conditioning. Mask convention under test: 255 / 1 = repaint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.engine import inpainting
from modules.engine.inpainting import InpaintRegion, MaskedContent, PreparedMask


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    x1, y1, x2, y2 = box
    arr = np.zeros((height, width), np.uint8)
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr, "L")


def random_rgb(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def far_from(mask: Image.Image, radius: int) -> np.ndarray:
    """Pixels whose (2*radius+1)-square neighbourhood holds no mask pixel: the separable blur cannot reach them."""
    arr = np.asarray(mask) > 0
    h, w = arr.shape
    padded = np.pad(arr, radius)
    near = np.zeros_like(arr)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            near |= padded[dy : dy + h, dx : dx + w]
    return ~near


# --- prepare_mask -----------------------------------------------------------------------------------------


def test_kernel_size_rule():
    assert [inpainting.gaussian_kernel_size(b) for b in (0, 1, 2, 4, 64)] == [1, 7, 11, 21, 321]


def test_blur_zero_leaves_the_mask_unchanged():
    mask = box_mask(40, 30, (5, 5, 20, 25))
    pm = inpainting.prepare_mask(mask, mask_blur_x=0, mask_blur_y=0)
    assert pm.for_overlay.mode == "L" and np.array_equal(np.asarray(pm.for_overlay), np.asarray(mask))
    assert np.array_equal(np.asarray(pm.for_latent), np.asarray(mask))


def test_invert_flips():
    mask = box_mask(40, 30, (5, 5, 20, 25))
    pm = inpainting.prepare_mask(mask, mask_blur_x=0, mask_blur_y=0, invert=True)
    assert np.array_equal(np.asarray(pm.for_overlay), 255 - np.asarray(mask))


def test_blur_is_separable_gaussian_with_8_bit_passes():
    arr = np.zeros((41, 41), np.uint8)
    arr[20, 20] = 255
    pm = inpainting.prepare_mask(Image.fromarray(arr), mask_blur_x=2, mask_blur_y=3)
    out = np.asarray(pm.for_overlay).astype(int)

    def kernel(sigma: float) -> np.ndarray:
        size = inpainting.gaussian_kernel_size(sigma)
        taps = np.arange(size) - size // 2
        k = np.exp(-(taps**2) / (2 * sigma * sigma))
        return k / k.sum()

    kx, ky = kernel(2), kernel(3)
    row = np.rint(255 * kx)  # the x pass, stored in 8 bits
    expected = np.zeros((41, 41))
    expected[20 - len(ky) // 2 : 21 + len(ky) // 2, 20 - len(kx) // 2 : 21 + len(kx) // 2] = np.rint(
        ky[:, None] * row[None, :]
    )
    assert np.array_equal(out, expected)


def test_blur_x_only_stays_in_the_rows():
    mask = box_mask(90, 40, (20, 10, 70, 30))
    out = np.asarray(inpainting.prepare_mask(mask, mask_blur_x=4, mask_blur_y=0).for_overlay)
    assert (out[:10] == 0).all() and (out[30:] == 0).all()
    assert out[20, 15] > 0 and out[20, 45] == 255 and (out[10:30, 45] == 255).all()


def test_blur_reaches_only_its_kernel_radius():
    mask = box_mask(100, 100, (25, 25, 75, 75))
    out = np.asarray(inpainting.prepare_mask(mask, mask_blur_x=4, mask_blur_y=4).for_overlay)
    radius = inpainting.gaussian_kernel_size(4) // 2
    assert (out[far_from(mask, radius)] == 0).all()
    assert (out[40:60, 40:60] == 255).all() and 0 < out[50, 25] < 255 and 0 < out[50, 24] < out[50, 25]


def test_rgba_alpha_masks_and_mask_round():
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[5:10, 5:10, 3] = 200
    arr[12:15, 12:15, 3] = 100
    rgba = Image.fromarray(arr, "RGBA")
    rounded = np.asarray(inpainting.prepare_mask(rgba, mask_blur_x=0, mask_blur_y=0).for_latent)
    assert (rounded[5:10, 5:10] == 255).all() and (rounded[12:15, 12:15] == 0).all()
    soft = inpainting.prepare_mask(rgba, mask_blur_x=0, mask_blur_y=0, mask_round=False)
    assert soft.round is False and np.array_equal(np.asarray(soft.for_latent), arr[..., 3])


def test_binarized_rounds_at_half():
    mask = Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8), "L")
    assert np.asarray(PreparedMask(mask, mask, round=True).binarized()).tolist() == [[0, 0, 255, 255]]
    assert PreparedMask(mask, mask, round=False).binarized() is mask


def test_array_masks():
    arr = np.zeros((10, 10), bool)
    arr[2:4, 2:4] = True
    pm = inpainting.prepare_mask(arr, mask_blur_x=0, mask_blur_y=0)
    assert np.asarray(pm.for_overlay)[2, 2] == 255 and np.asarray(pm.for_overlay)[5, 5] == 0
    pm = inpainting.prepare_mask(arr.astype(np.float32) * 0.5, mask_blur_x=0, mask_blur_y=0)
    assert np.asarray(pm.for_overlay)[2, 2] == 128


def test_whole_picture_resizes_and_doubles_the_overlay():
    soft = Image.fromarray(np.tile(np.arange(0, 200, 2, dtype=np.uint8), (20, 1)), "L")  # 100 x 20 ramp
    wp = PreparedMask(soft, soft).for_whole_picture(0, 100, 20)
    latent, overlay = np.asarray(wp.for_latent).astype(int), np.asarray(wp.for_overlay).astype(int)
    assert wp.for_latent.size == (100, 20)
    assert np.array_equal(overlay, np.minimum(latent * 2, 255))
    assert overlay[0, 0] == 0 and overlay[0, -1] == 255


# --- "Only masked" ----------------------------------------------------------------------------------------


def test_region_is_padded_expanded_and_cropped_to_processing_size():
    mask = box_mask(200, 150, (60, 50, 100, 70))  # 40 x 20
    region = InpaintRegion.from_mask(mask, 64, 64, padding=4)
    assert region.crop_region == (56, 36, 104, 84)  # 48 x 28 padded, grown to 48 x 48
    assert region.paste_to == (56, 36, 48, 48)
    assert region.crop(random_rgb(200, 150, 0)).size == (64, 64)
    assert region.crop(mask).size == (64, 64)


def test_region_create_crops_image_and_latent_mask():
    image = random_rgb(200, 150, 1)
    pm = inpainting.prepare_mask(box_mask(200, 150, (60, 50, 100, 70)), mask_blur_x=4, mask_blur_y=4)
    region = InpaintRegion.create(image, pm, 96, 64, padding=8)
    assert region.image.size == (96, 64) and region.mask_for_latent.size == (96, 64)
    assert region.mask_for_overlay.size == (200, 150)
    x1, y1, x2, y2 = region.crop_region
    assert abs((x2 - x1) / (y2 - y1) - 96 / 64) < 0.05
    # the region holds every pixel the blurred mask touches
    ys, xs = np.nonzero(np.asarray(pm.for_overlay))
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2


def test_region_for_a_blank_mask_is_none():
    blank = Image.new("L", (50, 50))
    assert InpaintRegion.from_mask(blank, 64, 64) is None
    assert InpaintRegion.create(Image.new("RGB", (50, 50)), PreparedMask(blank, blank), 64, 64) is None


@pytest.mark.parametrize("blur", [0, 4])
def test_paste_back_leaves_everything_outside_the_mask_unchanged(blur):
    original = random_rgb(160, 120, 2)
    mask = box_mask(160, 120, (70, 40, 110, 60))
    pm = inpainting.prepare_mask(mask, mask_blur_x=blur, mask_blur_y=blur)
    region = InpaintRegion.create(original, pm, 64, 64, padding=16)
    generated = random_rgb(64, 64, 3)
    out = np.asarray(region.paste_back(generated, original))
    orig = np.asarray(original)
    x1, y1, x2, y2 = region.crop_region
    outside = np.ones((120, 160), bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], orig[outside])
    unmasked = np.asarray(pm.for_overlay) == 0
    assert np.array_equal(out[unmasked], orig[unmasked])
    # under the fully masked part the generated crop, scaled back to the region, shows
    back = np.asarray(generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS))
    full = np.asarray(pm.for_overlay) == 255
    ys, xs = np.nonzero(full)
    assert np.array_equal(out[ys, xs], back[ys - y1, xs - x1])
    assert np.array_equal(out, np.asarray(inpainting.apply_overlay(generated, original, pm.for_overlay, region)))


# --- apply_overlay ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlay_keeps_unmasked_pixels_bit_identical_without_blur(seed):
    rng = np.random.default_rng(seed)
    original, generated = random_rgb(96, 80, seed), random_rgb(96, 80, seed + 10)
    mask = (rng.random((80, 96)) < 0.3).astype(np.uint8) * 255
    pm = inpainting.prepare_mask(Image.fromarray(mask), mask_blur_x=0, mask_blur_y=0)
    out = np.asarray(inpainting.apply_overlay(generated, original, pm.for_overlay))
    assert np.array_equal(out[mask == 0], np.asarray(original)[mask == 0])
    assert np.array_equal(out[mask == 255], np.asarray(generated)[mask == 255])


@pytest.mark.parametrize("seed", [0, 1])
def test_overlay_with_blur_keeps_pixels_beyond_the_kernel_radius(seed):
    rng = np.random.default_rng(seed)
    original, generated = random_rgb(128, 96, seed), random_rgb(128, 96, seed + 10)
    x, y = (int(v) for v in rng.integers(20, 60, 2))
    mask = box_mask(128, 96, (x, y, x + 30, y + 20))
    pm = inpainting.prepare_mask(mask, mask_blur_x=4, mask_blur_y=4)
    out = np.asarray(inpainting.apply_overlay(generated, original, pm.for_overlay))
    far = far_from(mask, inpainting.gaussian_kernel_size(4) // 2)
    assert far.any() and np.array_equal(out[far], np.asarray(original)[far])
    soft = (np.asarray(pm.for_overlay) > 0) & (np.asarray(pm.for_overlay) < 255)
    diff = out[soft].astype(int)
    lo = np.minimum(np.asarray(original)[soft], np.asarray(generated)[soft])
    hi = np.maximum(np.asarray(original)[soft], np.asarray(generated)[soft])
    assert ((diff >= lo) & (diff <= hi)).all()  # the soft edge blends the two


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        inpainting.apply_overlay(Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32)), Image.new("L", (32, 32)))
    with pytest.raises(ValueError):
        inpainting.apply_overlay(Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32)), Image.new("L", (30, 32)))


# --- masked content ---------------------------------------------------------------------------------------


def test_masked_content_modes():
    image = random_rgb(48, 32, 4)
    mask = box_mask(48, 32, (10, 8, 30, 24))
    assert inpainting.init_image_for_masked_content(image, mask, 1) is image
    filled = inpainting.init_image_for_masked_content(image, mask, MaskedContent.FILL)
    for mode in (2, 3):  # A1111 fills the pixels for the latent modes too
        assert np.array_equal(np.asarray(inpainting.init_image_for_masked_content(image, mask, mode)), filled)
    assert not np.array_equal(np.asarray(filled), np.asarray(image))
    assert [inpainting.needs_latent_fill(m) for m in range(4)] == [False, False, True, True]
    assert [MaskedContent(m).label for m in range(4)] == ["fill", "original", "latent noise", "latent nothing"]


# --- latent space -----------------------------------------------------------------------------------------


def test_latent_mask_size_and_values():
    mask = box_mask(96, 64, (0, 0, 48, 64))  # left half repainted
    nmask = inpainting.latent_mask(mask, 8, 12)
    assert nmask.shape == (1, 1, 8, 12) and nmask.dtype == torch.float32
    assert set(nmask.unique().tolist()) == {0.0, 1.0}
    assert (nmask[..., :6] == 1).all() and (nmask[..., 6:] == 0).all()


def test_latent_mask_soft_without_round():
    soft = inpainting.prepare_mask(box_mask(64, 64, (16, 16, 48, 48)), mask_blur_x=8, mask_blur_y=8).for_latent
    nmask = inpainting.latent_mask(soft, 8, 8, round=False)
    assert 0 <= nmask.min() and nmask.max() <= 1
    assert ((nmask > 0.05) & (nmask < 0.95)).any()
    assert set(inpainting.latent_mask(soft, 8, 8).unique().tolist()) <= {0.0, 1.0}


def test_blend_latents():
    samples, init = torch.full((2, 4, 8, 8), 5.0), torch.full((2, 4, 8, 8), -3.0)
    nmask = inpainting.latent_mask(box_mask(64, 64, (0, 0, 64, 32)), 8, 8)
    out = inpainting.blend_latents(samples, init, 1 - nmask, nmask)
    assert out.shape == samples.shape
    assert (out[..., :4, :] == 5).all() and (out[..., 4:, :] == -3).all()
    half = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(inpainting.blend_latents(samples, init, 1 - half, half), init * 0.75 + samples * 0.25)


def test_apply_latent_fill():
    gen = torch.Generator().manual_seed(0)
    init, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    nmask = inpainting.latent_mask(box_mask(64, 64, (32, 0, 64, 64)), 8, 8)
    under, kept = (slice(None), slice(None), slice(None), slice(4, None)), (Ellipsis, slice(None, 4))
    noisy = inpainting.apply_latent_fill(init, nmask, 2, noise)
    assert torch.equal(noisy[under], noise[under]) and torch.equal(noisy[kept], init[kept])
    zeroed = inpainting.apply_latent_fill(init, nmask, MaskedContent.LATENT_NOTHING)
    assert (zeroed[under] == 0).all() and torch.equal(zeroed[kept], init[kept])
    for mode in (0, 1):
        assert inpainting.apply_latent_fill(init, nmask, mode, noise) is init
    with pytest.raises(ValueError):
        inpainting.apply_latent_fill(init, nmask, 2)


# --- inpainting-model conditioning ------------------------------------------------------------------------


class FakeVae:
    """Stands in for the VAE encoder: 8x average pooling to 4 channels; remembers what it was given."""

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.seen = image
        pooled = F.avg_pool2d(image, 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)


def test_conditioning_shape_and_channels():
    image = torch.rand(2, 3, 64, 96) * 2 - 1
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., :, 48:] = 1
    vae = FakeVae()
    cond = inpainting.inpainting_model_conditioning(image, mask, vae)
    assert cond.shape == (2, 5, 8, 12)
    assert (cond[:, 0, :, 6:] == 1).all() and (cond[:, 0, :, :6] == 0).all()
    assert (vae.seen[..., 48:] == 0).all() and torch.equal(vae.seen[..., :48], image[..., :48])
    assert torch.equal(cond[:, 1:], vae(vae.seen))


def test_conditioning_rounds_and_weights_the_mask():
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    soft = torch.full((1, 1, 16, 16), 0.4)
    vae = FakeVae()
    cond = inpainting.inpainting_model_conditioning(image, soft, vae)
    assert (cond[:, 0] == 0).all() and torch.equal(vae.seen, image)
    inpainting.inpainting_model_conditioning(image, soft, vae, round_mask=False)
    assert torch.allclose(vae.seen, image * 0.6)
    inpainting.inpainting_model_conditioning(image, torch.ones(1, 1, 16, 16), vae, mask_weight=0.0)
    assert torch.equal(vae.seen, image)


def test_conditioning_from_pil_mask_and_without_mask():
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    vae = FakeVae()
    cond = inpainting.inpainting_model_conditioning(image, box_mask(32, 32, (0, 0, 16, 32)), vae)
    assert cond.shape == (1, 5, 4, 4) and (cond[:, 0, :, :2] == 1).all() and (cond[:, 0, :, 2:] == 0).all()
    cond = inpainting.inpainting_model_conditioning(image, None, vae)
    assert (cond[:, 0] == 1).all() and (vae.seen == 0).all()  # no mask: repaint everything, as A1111
