"""A seeded procedural image world: simple coloured shapes on plain or two-tone backgrounds.

It is the training data of the bundled default model and the ground truth its quality is measured against.
Every scene has a plain-English caption, a parser for such captions (so a checker knows what was asked), and
per-object masks, a depth order and an edge map for later control models.

Layout rules (kept simple so that a caption fully determines what a correct picture looks like):
- positions are the cells of a 3x3 grid; an object is centred in its cell, one object per cell;
- sizes are the object's bounding-box side as a fraction of the image side;
- objects in one scene have distinct colours, and no object shares a colour with the background;
- a two-tone background is split into a left and a right half: "a yellow and blue background" is yellow on
  the left, blue on the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

# Plain names and well separated RGB values: the checker tells them apart by distance.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (250, 130, 200),
    "cyan": (40, 210, 230),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SIZES: dict[str, float] = {"small": 0.15, "large": 0.28}

# Position name -> (column, row) of the 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}

# Pairs never shown in training, so quality can be measured on unseen combinations. Each shape loses one
# colour and one position; every colour and position still appears with the other shapes.
HELD_OUT_SHAPE_COLOUR: frozenset[tuple[str, str]] = frozenset(
    {("circle", "purple"), ("square", "orange"), ("triangle", "cyan"), ("star", "green"), ("ring", "red")}
)
HELD_OUT_SHAPE_POSITION: frozenset[tuple[str, str]] = frozenset(
    {("circle", "bottom right"), ("square", "top"), ("triangle", "left"), ("star", "top left"), ("ring", "bottom")}
)

_SUPERSAMPLE = 4  # draw at 4x and downsample: clean anti-aliased edges, still deterministic
_JITTER = 0.01  # small offset of an object's centre inside its cell, as a fraction of the image side


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class SceneDescription:
    """What a caption says about a scene: objects in caption order and one or two background colours."""

    objects: tuple[ObjectSpec, ...]
    background: tuple[str, ...]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    # Centre and side as fractions of the image side; bbox is derived from them.
    cx: float
    cy: float
    side: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) as fractions of the image side."""
        h = self.side / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class Scene:
    """Objects in draw order (later = in front) on a plain or left/right two-tone background."""

    objects: tuple[SceneObject, ...]
    background: tuple[str, ...] = field(default=("white",))

    def describe(self) -> SceneDescription:
        return SceneDescription(tuple(o.spec() for o in self.objects), self.background)


# --- sampling ---------------------------------------------------------------------------------------------


def held_out_combinations() -> dict[str, frozenset[tuple[str, str]]]:
    """The reserved (shape, colour) and (shape, position) pairs."""
    return {"shape_colour": HELD_OUT_SHAPE_COLOUR, "shape_position": HELD_OUT_SHAPE_POSITION}


def _pair_held_out(shape: str, colour: str, position: str) -> bool:
    return (shape, colour) in HELD_OUT_SHAPE_COLOUR or (shape, position) in HELD_OUT_SHAPE_POSITION


def is_held_out(scene: Scene | SceneDescription) -> bool:
    """True when any object uses a reserved pair."""
    return any(_pair_held_out(o.shape, o.colour, o.position) for o in scene.objects)


def make_object(
    shape: str, colour: str, size: str, position: str, jitter: tuple[float, float] = (0.0, 0.0)
) -> SceneObject:
    col, row = POSITIONS[position]
    return SceneObject(
        shape, colour, size, position, cx=(col + 0.5) / 3 + jitter[0], cy=(row + 0.5) / 3 + jitter[1], side=SIZES[size]
    )


def scene_from_description(desc: SceneDescription) -> Scene:
    """The canonical (unjittered) scene for a description, e.g. a parsed caption."""
    return Scene(tuple(make_object(o.shape, o.colour, o.size, o.position) for o in desc.objects), desc.background)


def _choice(rng: np.random.Generator, items: list[str] | tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_scene(
    rng: np.random.Generator | int | None = None, *, exclude_held_out: bool = False, require_held_out: bool = False
) -> Scene:
    """A random scene of one to three objects.

    exclude_held_out: the training sampler; no object uses a reserved pair.
    require_held_out: the evaluation sampler; at least one object does.
    """
    rng = np.random.default_rng(rng)
    while True:
        scene = _sample_once(rng, exclude_held_out)
        if not require_held_out or is_held_out(scene):
            return scene


def _sample_once(rng: np.random.Generator, exclude_held_out: bool) -> Scene:
    count = int(rng.integers(1, 4))
    cells = list(POSITIONS)
    colours = list(COLOURS)
    objects: list[SceneObject] = []
    while len(objects) < count:
        shape = _choice(rng, SHAPES)
        colour = _choice(rng, colours)
        position = _choice(rng, cells)
        size = _choice(rng, tuple(SIZES))
        jitter = (float(rng.uniform(-_JITTER, _JITTER)), float(rng.uniform(-_JITTER, _JITTER)))
        if exclude_held_out and _pair_held_out(shape, colour, position):
            continue
        # Distinct colours and cells; sizes leave a gap between neighbours, so shapes never overlap.
        colours.remove(colour)
        cells.remove(position)
        objects.append(make_object(shape, colour, size, position, jitter))
    free = [c for c in COLOURS if c in colours]
    if rng.random() < 0.35:
        first = _choice(rng, free)
        second = _choice(rng, [c for c in free if c != first])
        background: tuple[str, ...] = (first, second)
    else:
        background = (_choice(rng, free),)
    return Scene(tuple(objects), background)


# --- captions ---------------------------------------------------------------------------------------------

_POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "top left": "at the top left",
    "top right": "at the top right",
    "bottom left": "at the bottom left",
    "bottom right": "at the bottom right",
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(o: ObjectSpec | SceneObject) -> str:
    # The center is left unsaid, as in "a large blue square"; the parser reads a missing position as center.
    where = _POSITION_PHRASES.get(o.position)
    return f"a {o.size} {o.colour} {o.shape}" + (f" {where}" if where else "")


def caption(scene: Scene | SceneDescription) -> str:
    """E.g. "a small red circle at the top left and a large blue square, on a yellow background"."""
    phrases = [_object_phrase(o) for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed}, on {_article(scene.background[0])} {' and '.join(scene.background)} background"


class CaptionError(ValueError):
    pass


def _parse_object(words: list[str]) -> ObjectSpec:
    if words and words[0] in ("a", "an"):
        words = words[1:]
    if len(words) < 3:
        raise CaptionError(f"cannot read object {' '.join(words)!r}")
    size, colour, shape, rest = words[0], words[1], words[2], words[3:]
    if size not in SIZES or colour not in COLOURS or shape not in SHAPES:
        raise CaptionError(f"unknown size, colour or shape in {' '.join(words)!r}")
    if rest and rest[0] in ("at", "on", "in"):
        rest = rest[1:]
    if rest and rest[0] == "the":
        rest = rest[1:]
    position = " ".join(rest) or "center"
    position = {"centre": "center", "middle": "center"}.get(position, position)
    if position not in POSITIONS:
        raise CaptionError(f"unknown position {position!r}")
    return ObjectSpec(shape, colour, size, position)


def parse_caption(text: str) -> SceneDescription:
    """Read a caption written by `caption` (case, spacing and a trailing full stop do not matter)."""
    text = " ".join(text.lower().replace(",", " , ").split()).rstrip(" .")
    head, sep, tail = text.rpartition(" , on ")
    tail = tail.removeprefix("an ").removeprefix("a ")
    if not sep:
        raise CaptionError(f"no background in {text!r}")
    tail_words = tail.split()
    if not tail_words or tail_words[-1] != "background":
        raise CaptionError(f"no background in {text!r}")
    background = tuple(w for w in tail_words[:-1] if w != "and")
    if not 1 <= len(background) <= 2 or any(c not in COLOURS for c in background):
        raise CaptionError(f"unknown background {tail!r}")
    parts = [p for chunk in head.split(" , ") for p in chunk.split(" and ")]
    objects = tuple(_parse_object(p.split()) for p in parts if p.strip())
    if not objects:
        raise CaptionError(f"no objects in {text!r}")
    return SceneDescription(objects, background)


# --- rendering and ground truth ---------------------------------------------------------------------------


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    inner = r * 0.42
    points = []
    for k in range(10):
        angle = -math.pi / 2 + k * math.pi / 5
        rad = r if k % 2 == 0 else inner
        points.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
    return points


def _draw_object(
    draw: ImageDraw.ImageDraw, o: SceneObject, px: int, fill: int | tuple[int, int, int], hole: int | None
) -> None:
    """Draw one object on a canvas px pixels wide; hole is the fill for a ring's centre."""
    left, top, right, bottom = (v * px for v in o.bbox)
    cx, cy, r = o.cx * px, o.cy * px, o.side * px / 2
    if o.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif o.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=fill)
    elif o.shape == "star":
        # Shift down so the star's own extent (tip to lower points) is centred in its box.
        low = r * math.cos(math.pi / 5)
        draw.polygon(_star_points(cx, cy + (r - low) / 2, r), fill=fill)
    elif o.shape == "ring":
        draw.ellipse((left, top, right, bottom), fill=fill)
        inner = r * 0.55
        if hole is not None:
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=hole)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def _background_image(scene: Scene, px: int) -> Image.Image:
    image = Image.new("RGB", (px, px), COLOURS[scene.background[0]])
    if len(scene.background) == 2:
        image.paste(COLOURS[scene.background[1]], (px // 2, 0, px, px))
    return image


def _downsample(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BOX)


def render(scene: Scene, size: int = 256, supersample: int = _SUPERSAMPLE) -> Image.Image:
    """The scene as an RGB image, size x size pixels, drawn at `supersample` times the size and downsampled."""
    px = size * supersample
    image = _background_image(scene, px)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        # A ring's hole shows what is behind it: redraw that part from a copy taken before the ring.
        if o.shape == "ring":
            behind = image.copy()
            _draw_object(draw, o, px, COLOURS[o.colour], None)
            hole = Image.new("L", (px, px), 0)
            _draw_object(ImageDraw.Draw(hole), _ring_hole(o), px, 255, None)
            image.paste(behind, (0, 0), hole)
            draw = ImageDraw.Draw(image)
        else:
            _draw_object(draw, o, px, COLOURS[o.colour], None)
    return _downsample(image, size)


def _ring_hole(o: SceneObject) -> SceneObject:
    return SceneObject("circle", o.colour, o.size, o.position, o.cx, o.cy, o.side * 0.55)


def _object_coverage(o: SceneObject, size: int) -> np.ndarray:
    """Fraction of each pixel the object covers, as floats in [0, 1]."""
    px = size * _SUPERSAMPLE
    canvas = Image.new("L", (px, px), 0)
    _draw_object(ImageDraw.Draw(canvas), o, px, 255, 0)
    return np.asarray(_downsample(canvas, size), dtype=np.float32) / 255.0


def object_masks(scene: Scene, size: int = 256, visible_only: bool = True) -> list[np.ndarray]:
    """One boolean mask per object (draw order), True where the object covers at least half a pixel.

    visible_only: remove the parts hidden by objects drawn later.
    """
    masks = [_object_coverage(o, size) >= 0.5 for o in scene.objects]
    if visible_only:
        for i in range(len(masks)):
            for later in masks[i + 1 :]:
                masks[i] = masks[i] & ~later
    return masks


def depth_order(scene: Scene) -> list[int]:
    """Object indices from back to front (the draw order)."""
    return list(range(len(scene.objects)))


def id_map(scene: Scene, size: int = 256) -> np.ndarray:
    """int array: -1 left/plain background, -2 right half of a two-tone background, i for object i on top."""
    ids = np.full((size, size), -1, dtype=np.int16)
    if len(scene.background) == 2:
        ids[:, size // 2 :] = -2
    for i, mask in enumerate(object_masks(scene, size, visible_only=False)):
        ids[mask] = i
    return ids


def edges(scene: Scene, size: int = 256) -> np.ndarray:
    """Boolean edge map: pixels on the boundary between two regions (objects, background halves)."""
    ids = id_map(scene, size)
    out = np.zeros((size, size), dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]
    vertical = ids[1:, :] != ids[:-1, :]
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    out[1:, :] |= vertical
    out[:-1, :] |= vertical
    return out
