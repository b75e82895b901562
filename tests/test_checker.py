"""The checker reads pictures against scene descriptions: exact on clean renders, robust to blur and noise."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from tools.default_model.checker import check, summarize
from tools.default_model.scenes import COLOURS, Scene, caption, make_object, object_masks, render, sample_scene


def _degrade(image: Image.Image, rng: np.random.Generator, blur: float = 2.0, noise: float = 10.0) -> Image.Image:
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, noise, blurred.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_clean_renders_score_full_marks() -> None:
    rng = np.random.default_rng(0)
    results = [check(render(scene), caption(scene)) for scene in (sample_scene(rng) for _ in range(200))]
    summary = summarize(results)
    assert summary["overall"] >= 0.99, summary
    assert all(r.background_found == r.background_asked for r in results)


def test_blurred_noisy_renders_still_score_well() -> None:
    rng = np.random.default_rng(1)
    results = []
    for _ in range(200):
        scene = sample_scene(rng)
        results.append(check(_degrade(render(scene), rng), scene))
    summary = summarize(results)
    assert summary["overall"] >= 0.90, summary
    assert min(summary[name] for name in ("shape", "colour", "position", "size")) >= 0.85, summary


def test_any_image_size() -> None:
    scene = sample_scene(5)
    for size in (96, 512):
        assert check(render(scene, size), scene).accuracy == 1.0


def test_recoloured_object_is_a_wrong_colour() -> None:
    scene = Scene(
        (make_object("circle", "red", "small", "top left"), make_object("square", "blue", "large", "center")),
        ("yellow",),
    )
    pixels = np.asarray(render(scene)).copy()
    pixels[object_masks(scene)[0]] = COLOURS["green"]
    result = check(Image.fromarray(pixels), caption(scene))
    circle, square = result.objects
    assert circle.attributes == {"shape": True, "colour": False, "position": True, "size": True}
    assert circle.found is not None and circle.found.colour == "green"
    assert any("wrong colour (found green)" in p for p in result.problems)
    assert all(square.attributes.values())
    assert result.accuracy == 7 / 8


def test_missing_moved_and_resized_objects() -> None:
    asked = Scene(
        (make_object("star", "purple", "large", "top right"), make_object("ring", "white", "small", "left")), ("black",)
    )
    drawn = Scene((make_object("star", "purple", "small", "bottom"),), ("black",))
    result = check(render(drawn), asked)
    star, ring = result.objects
    assert star.attributes == {"shape": True, "colour": True, "position": False, "size": False}
    assert ring.problems == ["missing"] and not any(ring.attributes.values())
    assert result.accuracy == 2 / 8


def test_wrong_shape_is_reported() -> None:
    asked = Scene((make_object("triangle", "orange", "large", "bottom left"),), ("cyan", "white"))
    drawn = Scene((make_object("square", "orange", "large", "bottom left"),), ("cyan", "white"))
    result = check(render(drawn), asked)
    assert result.objects[0].attributes == {"shape": False, "colour": True, "position": True, "size": True}
    assert result.problems == ["large orange triangle: wrong shape (found square)"]
