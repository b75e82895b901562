"""The procedural scene world: seeded sampling, captions, rendering and ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from tools.default_model import scenes
from tools.default_model.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    CaptionError,
    ObjectSpec,
    Scene,
    SceneDescription,
    caption,
    depth_order,
    edges,
    held_out_combinations,
    is_held_out,
    make_object,
    object_masks,
    parse_caption,
    render,
    sample_scene,
)


def _many(count: int = 400, **kwargs) -> list[Scene]:
    rng = np.random.default_rng(1234)
    return [sample_scene(rng, **kwargs) for _ in range(count)]


def test_palette_is_wide_enough() -> None:
    assert set(SHAPES) >= {"circle", "square", "triangle", "star", "ring"}
    assert set(COLOURS) >= {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"}
    assert set(SIZES) == {"small", "large"}
    assert set(POSITIONS) == {
        "left", "right", "top", "bottom", "center", "top left", "top right", "bottom left", "bottom right"
    }  # fmt: skip
    # Distinct colours: the checker tells them apart by distance.
    values = np.array(list(COLOURS.values()), dtype=float)
    gaps = np.linalg.norm(values[:, None] - values[None], axis=-1) + np.eye(len(values)) * 1e9
    assert gaps.min() > 60


def test_sampling_and_rendering_are_deterministic() -> None:
    assert sample_scene(7) == sample_scene(7)
    assert sample_scene(np.random.default_rng(7)) == sample_scene(7)
    assert render(sample_scene(7)).tobytes() == render(sample_scene(7)).tobytes()
    assert len({caption(sample_scene(seed)) for seed in range(20)}) > 15


def test_scenes_follow_the_layout_rules() -> None:
    seen: dict[str, set[str]] = {"shape": set(), "colour": set(), "size": set(), "position": set(), "bg": set()}
    counts, two_tone = set(), 0
    for scene in _many():
        objects = scene.objects
        counts.add(len(objects))
        assert 1 <= len(objects) <= 3
        assert len({o.colour for o in objects}) == len(objects)
        assert len({o.position for o in objects}) == len(objects)
        assert not {o.colour for o in objects} & set(scene.background)
        assert len(set(scene.background)) == len(scene.background) in (1, 2)
        two_tone += len(scene.background) == 2
        for o in objects:
            left, top, right, bottom = o.bbox
            assert 0 < left < right < 1 and 0 < top < bottom < 1
            for attr in ("shape", "colour", "size", "position"):
                seen[attr].add(getattr(o, attr))
        seen["bg"].update(scene.background)
        # No overlap at all: boxes are apart.
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                ax0, ay0, ax1, ay1 = a.bbox
                bx0, by0, bx1, by1 = b.bbox
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0
    assert counts == {1, 2, 3}
    assert seen["shape"] == set(SHAPES) and seen["colour"] == set(COLOURS)
    assert seen["size"] == set(SIZES) and seen["position"] == set(POSITIONS)
    assert seen["bg"] == set(COLOURS)  # white and black backgrounds included
    assert 0 < two_tone < 400


def test_caption_reads_like_the_issue_example() -> None:
    scene = Scene(
        (make_object("circle", "red", "small", "top left"), make_object("square", "blue", "large", "center")),
        ("yellow",),
    )
    assert caption(scene) == "a small red circle at the top left and a large blue square, on a yellow background"
    two = Scene((make_object("star", "white", "large", "right"),), ("orange", "black"))
    assert caption(two) == "a large white star on the right, on an orange and black background"


def test_caption_parse_round_trip() -> None:
    for scene in _many(300):
        text = caption(scene)
        assert parse_caption(text) == scene.describe(), text
        assert parse_caption(text.upper() + ".") == scene.describe()


def test_parse_accepts_center_said_aloud_and_rejects_nonsense() -> None:
    desc = parse_caption(
        "a large blue square in the center, a small green ring at the bottom right, on a black background"
    )
    assert desc == SceneDescription(
        (ObjectSpec("square", "blue", "large", "center"), ObjectSpec("ring", "green", "small", "bottom right")),
        ("black",),
    )
    for bad in ("a cat on a mat", "a small red circle", "a huge red circle, on a white background",
                "a small red circle at the far left, on a white background", "a small red circle, on a tartan background"):  # fmt: skip
        with pytest.raises(CaptionError):
            parse_caption(bad)


def test_render_sizes_and_colours() -> None:
    scene = sample_scene(3)
    for size in (64, 256, 512):
        image = render(scene, size)
        assert image.size == (size, size) and image.mode == "RGB"
    pixels = np.asarray(render(scene, 256)).astype(int)
    for o, mask in zip(scene.objects, object_masks(scene, 256), strict=True):
        inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
        assert (np.abs(pixels[inner] - COLOURS[o.colour]).max(axis=1) <= 2).mean() > 0.99


def test_masks_depth_and_edges() -> None:
    for scene in _many(60):
        masks = object_masks(scene, 128)
        assert len(masks) == len(scene.objects)
        total = np.zeros((128, 128), dtype=int)
        for o, mask in zip(scene.objects, masks, strict=True):
            assert mask.shape == (128, 128) and mask.dtype == bool
            left, top, right, bottom = (v * 128 for v in o.bbox)
            ys, xs = np.nonzero(mask)
            assert ys.size > 40
            assert left - 1 <= xs.min() and xs.max() <= right + 1 and top - 1 <= ys.min() and ys.max() <= bottom + 1
            total += mask
        assert total.max() <= 1
        assert depth_order(scene) == list(range(len(scene.objects)))
        edge = edges(scene, 128)
        assert edge.shape == (128, 128) and edge.dtype == bool
        # Every mask boundary is on the edge map, and edges are thin.
        for mask in masks:
            boundary = mask & ~np.roll(mask, 1, 1)
            assert edge[boundary].all()
        assert edge.mean() < 0.2


def test_ring_has_a_hole_and_two_tone_background_has_a_seam() -> None:
    scene = Scene((make_object("ring", "red", "large", "center"),), ("yellow", "blue"))
    (mask,) = object_masks(scene, 256)
    assert not mask[128, 128] and mask[128, 128 + 30]
    pixels = np.asarray(render(scene, 256))
    assert tuple(pixels[128, 128]) in (COLOURS["yellow"], COLOURS["blue"])
    assert tuple(pixels[5, 5]) == COLOURS["yellow"] and tuple(pixels[5, 250]) == COLOURS["blue"]
    assert edges(scene, 256)[5, 127:129].any()


def test_held_out_pairs_never_reach_the_training_sampler() -> None:
    held = held_out_combinations()
    assert held["shape_colour"] and held["shape_position"]
    training = _many(1500, exclude_held_out=True)
    assert not any(is_held_out(s) for s in training)
    pairs_colour = {(o.shape, o.colour) for s in training for o in s.objects}
    pairs_position = {(o.shape, o.position) for s in training for o in s.objects}
    assert not pairs_colour & held["shape_colour"] and not pairs_position & held["shape_position"]
    # Everything else is still taught: each shape with every other colour and position.
    assert len(pairs_colour) == len(SHAPES) * len(COLOURS) - len(held["shape_colour"])
    assert len(pairs_position) == len(SHAPES) * len(POSITIONS) - len(held["shape_position"])
    evaluation = _many(50, require_held_out=True)
    assert all(is_held_out(s) for s in evaluation)
    assert is_held_out(parse_caption(caption(evaluation[0])))


def test_unseeded_sampler_still_works() -> None:
    assert isinstance(sample_scene(), scenes.Scene)
