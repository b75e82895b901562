"""Score a picture against a scene description: is each asked object there, in its colour, place and size?

Classic image analysis only (numpy, scipy.ndimage), so it reads blurry, noisy model outputs of any size:
1. the background colour(s) come from the image border (left and right halves separately: two-tone);
2. every pixel gets its nearest palette colour; pixels of a non-background colour form regions (small
   specks and the thin colour-mixing bands along blurred edges are opened away);
3. asked objects are matched to regions by colour and shape; position comes from the region's centroid
   (grid thirds), size from its extent or area, shape from fill ratio, solidity, its base and a hole (ring).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tools.default_model.scenes import COLOURS, SIZES, ObjectSpec, Scene, SceneDescription, parse_caption

ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "position", "size")

_WORK_SIZE = 256  # every image is analysed at this size, so thresholds are in one scale
_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)
_MAX_COLOUR_DISTANCE = 110.0  # farther than this from every palette colour: belongs to no region
_MIN_REGION_FRACTION = 0.002  # of the image area; smaller components are noise
_SIZE_THRESHOLD = (SIZES["small"] * SIZES["large"]) ** 0.5  # geometric mean: blur shrinks star tips
_POSITION_NAMES = {
    (0, 0): "top left",
    (1, 0): "top",
    (2, 0): "top right",
    (0, 1): "left",
    (1, 1): "center",
    (2, 1): "right",
    (0, 2): "bottom left",
    (1, 2): "bottom",
    (2, 2): "bottom right",
}


@dataclass(frozen=True)
class Region:
    """A connected area of one palette colour that is not background."""

    colour: str
    shape: str
    position: str
    size: str
    area: int


@dataclass
class ObjectScore:
    asked: ObjectSpec
    found: Region | None
    attributes: dict[str, bool]

    @property
    def problems(self) -> list[str]:
        """Plain-English reasons, e.g. "wrong colour (found green)"."""
        if self.found is None:
            return ["missing"]
        out = []
        for name in ATTRIBUTES:
            if not self.attributes[name]:
                word = "wrong shape" if name == "shape" else f"wrong {name}"
                out.append(f"{word} (found {getattr(self.found, name)})")
        return out


@dataclass
class CheckResult:
    objects: list[ObjectScore] = field(default_factory=list)
    background_asked: tuple[str, ...] = ()
    background_found: tuple[str, ...] = ()

    @property
    def correct(self) -> int:
        return sum(sum(o.attributes.values()) for o in self.objects)

    @property
    def total(self) -> int:
        return sum(len(o.attributes) for o in self.objects)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 1.0

    @property
    def problems(self) -> list[str]:
        out = []
        for o in self.objects:
            name = f"{o.asked.size} {o.asked.colour} {o.asked.shape}"
            out.extend(f"{name}: {p}" for p in o.problems)
        return out


# --- image analysis ---------------------------------------------------------------------------------------


def _prepare(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    if rgb.size != (_WORK_SIZE, _WORK_SIZE):
        rgb = rgb.resize((_WORK_SIZE, _WORK_SIZE), Image.Resampling.BILINEAR)
    # A 3x3 median removes pixel noise but keeps edges and corners where they are.
    return np.asarray(rgb.filter(ImageFilter.MedianFilter(3)))


def _build_lookup() -> tuple[np.ndarray, np.ndarray]:
    # Nearest palette colour for every RGB value quantised to 5 bits a channel (error <= 4 per channel):
    # classifying an image is then one table look-up per pixel.
    levels = np.arange(32, dtype=np.float32) * 8 + 3.5
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.linalg.norm(grid[:, None, :] - _PALETTE[None, :, :], axis=-1)
    return dist.argmin(axis=1).astype(np.uint8), dist.min(axis=1).astype(np.float32)


_LOOKUP_INDEX, _LOOKUP_DIST = _build_lookup()


def _labels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette index per pixel, and the distance to it."""
    q = pixels.astype(np.uint8) >> 3
    key = (q[..., 0].astype(np.int32) << 10) | (q[..., 1].astype(np.int32) << 5) | q[..., 2]
    return _LOOKUP_INDEX[key], _LOOKUP_DIST[key]


def _border_colour(labels: np.ndarray, columns: slice) -> int:
    part = labels[:, columns]
    border = np.concatenate([part[:3].ravel(), part[-3:].ravel(), part[:, :3].ravel(), part[:, -3:].ravel()])
    return int(np.bincount(border, minlength=len(_NAMES)).argmax())


def background_colours(labels: np.ndarray) -> tuple[str, ...]:
    """One colour (plain) or two (left, right) read from the border of each half."""
    half = labels.shape[1] // 2
    left = _border_colour(labels, slice(0, half))
    right = _border_colour(labels, slice(half, None))
    return (_NAMES[left],) if left == right else (_NAMES[left], _NAMES[right])


def _solidity(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask & ~ndimage.binary_erosion(mask))
    # Pixel corners, not centres: the hull of small shapes would otherwise be too small.
    pts = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return 1.0
    return float(mask.sum()) / float(hull.volume)


def classify_shape(mask: np.ndarray) -> str:
    """circle, square, triangle, star or ring from a region's boolean mask."""
    filled = ndimage.binary_fill_holes(mask)
    area = float(filled.sum())
    if 1.0 - mask.sum() / area > 0.12:
        return "ring"
    ys, xs = np.nonzero(filled)
    top, height = ys.min(), np.ptp(ys) + 1
    fill = area / (height * (np.ptp(xs) + 1))
    solidity = _solidity(filled)
    if fill < 0.66:
        # A triangle (apex up) has a full base; a star ends in two separate points. Blur fills a small
        # star's notches, so the base tells them apart better than convexity alone.
        base = filled[top + int(height * 0.8) : top + height, xs.min() : xs.max() + 1].mean()
        return "triangle" if base >= 0.65 and solidity >= 0.8 else "star"
    if solidity < 0.75:
        return "star"
    return "circle" if fill < 0.82 else "square"


def _position(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    col = min(int(xs.mean() / w * 3), 2)
    row = min(int(ys.mean() / h * 3), 2)
    return _POSITION_NAMES[(col, row)]


# Per shape: its extent and the square root of its area, each over its box side (see scenes._draw_object).
_NOMINAL = {
    "circle": (1.0, 0.886),
    "ring": (1.0, 0.886),
    "square": (1.0, 1.0),
    "triangle": (1.0, 0.707),
    "star": (0.91, 0.55),
}


def _size(mask: np.ndarray, shape: str) -> str:
    """small or large from the box side the region implies.

    Blur eats a star's tips and shrinks its extent, but hardly changes its area: take the larger estimate.
    """
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    extent_ratio, area_ratio = _NOMINAL[shape]
    extent = max(np.ptp(ys) + 1, np.ptp(xs) + 1) / extent_ratio
    from_area = np.sqrt(filled.sum()) / area_ratio
    side = max(extent, from_area) / mask.shape[0]
    return "small" if side < _SIZE_THRESHOLD else "large"


def find_regions(image: Image.Image) -> tuple[tuple[str, ...], list[Region]]:
    """Background colour(s) and the non-background regions of an image."""
    labels, dist = _labels(_prepare(image))
    background = background_colours(labels)
    regions: list[Region] = []
    min_area = _MIN_REGION_FRACTION * labels.size
    for index, name in enumerate(_NAMES):
        if name in background:
            continue
        mask = (labels == index) & (dist < _MAX_COLOUR_DISTANCE)
        if mask.sum() < min_area:
            continue
        # Opening removes the 1-3 px bands that blurring leaves where two colours meet.
        opened = ndimage.binary_opening(mask, iterations=2)
        components, count = ndimage.label(opened)
        for k in range(1, count + 1):
            # Grow back what opening cut off (star tips, square corners), but only into this colour.
            part = ndimage.binary_dilation(components == k, iterations=3, mask=mask)
            area = int(part.sum())
            if area < min_area:
                continue
            shape = classify_shape(part)
            regions.append(Region(name, shape, _position(part), _size(part, shape), area))
    return background, regions


# --- scoring ----------------------------------------------------------------------------------------------


def _score(asked: ObjectSpec, region: Region | None) -> ObjectScore:
    if region is None:
        return ObjectScore(asked, None, {name: False for name in ATTRIBUTES})
    return ObjectScore(asked, region, {name: getattr(region, name) == getattr(asked, name) for name in ATTRIBUTES})


def _match(asked: list[ObjectSpec], regions: list[Region]) -> list[Region | None]:
    """Greedy matching: colour and shape, then colour alone, then shape alone (a recoloured object)."""
    free = sorted(regions, key=lambda r: -r.area)  # bigger first: specks lose to the real object
    found: list[Region | None] = [None] * len(asked)
    rules = (
        lambda a, r: r.colour == a.colour and r.shape == a.shape,
        lambda a, r: r.colour == a.colour,
        lambda a, r: r.shape == a.shape and r.position == a.position,
        lambda a, r: r.shape == a.shape,
        lambda a, r: r.position == a.position,
    )
    for rule in rules:
        for i, a in enumerate(asked):
            if found[i] is not None:
                continue
            for r in free:
                if rule(a, r):
                    found[i] = r
                    free.remove(r)
                    break
    return found


def check(image: Image.Image, asked: str | SceneDescription | Scene) -> CheckResult:
    """Score each asked attribute of each object (shape present, colour, position, size)."""
    if isinstance(asked, str):
        asked = parse_caption(asked)
    elif isinstance(asked, Scene):
        asked = asked.describe()
    background, regions = find_regions(image)
    found = _match(list(asked.objects), regions)
    return CheckResult(
        [_score(a, r) for a, r in zip(asked.objects, found, strict=True)],
        background_asked=asked.background,
        background_found=background,
    )


def summarize(results: list[CheckResult]) -> dict[str, float]:
    """Overall and per-attribute accuracy over many checks."""
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for result in results:
        for o in result.objects:
            for name, ok in o.attributes.items():
                counts[name] += int(ok)
                totals[name] += 1
    out = {name: counts[name] / totals[name] for name in ATTRIBUTES if totals[name]}
    out["overall"] = sum(counts.values()) / max(1, sum(totals.values()))
    return out
