"""Finding faces in a picture and restoring each one in place, with nothing downloaded.

Faces are found with OpenCV's bundled Haar cascade for frontal faces (the XML file ships inside the
opencv-python-headless wheel, `cv2.data.haarcascades`). Each face is cut out as a square with a margin around it,
resized to the restorer's 512x512, restored, resized back and pasted over the original through a feathered mask,
so pixels outside the squares never change.

What this does less well than A1111, which uses facexlib (RetinaFace face detection with five landmarks, then an
affine warp that puts the eyes and mouth where GFPGAN/CodeFormer were trained to see them, and a face-parsing
network for the paste mask):
- profile, tilted (more than ~20 degrees) or partly covered faces are often not found at all;
- a found face is not rotated upright or aligned to the landmark template, so the restorer sees it slightly off
  its training position and restores a little less well;
- the paste mask is a feathered square, not a face-shaped parsing mask, so some hair or background right around
  the face is also redrawn.
facexlib is not used because it downloads its detection and parsing weights from the internet the first time it
runs, and nothing here may reach the network at run time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESTORE_SIZE = 512  # GFPGAN and CodeFormer take and give 512x512 faces
MARGIN = 0.4  # extra border around the detected box, as a fraction of its side (the cascade's box is tight)
FEATHER = 0.12  # width of the blended edge of the paste mask, as a fraction of the square's side
CASCADE_FILE = "haarcascade_frontalface_default.xml"

RestoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FaceBox:
    """A detected face: left, top, width, height in pixels of the picture."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Square:
    """The square cut out around a face; it may reach past the picture's edges (that part is padded)."""

    left: int
    top: int
    side: int


@functools.cache
def _cascade():
    import cv2

    path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face detector {CASCADE_FILE} could not be read from {path}")
    return cascade


def find_faces(np_image: np.ndarray) -> list[FaceBox]:
    """Frontal faces in an RGB uint8 HxWx3 picture, largest first."""
    import cv2

    gray = cv2.cvtColor(np_image, cv2.COLOR_RGB2GRAY)  # no histogram equalisation: it depends on the background
    smallest = max(24, min(gray.shape[:2]) // 16)  # ignore specks of texture that look like tiny faces
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [FaceBox(int(x), int(y), int(w), int(h)) for x, y, w, h in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: b.w * b.h, reverse=True)


def square_around(box: FaceBox, margin: float = MARGIN) -> Square:
    side = int(round(max(box.w, box.h) * (1 + 2 * margin)))
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return Square(int(round(cx - side / 2)), int(round(cy - side / 2)), side)


def crop_square(np_image: np.ndarray, sq: Square) -> np.ndarray:
    """The square's pixels; parts outside the picture repeat its edge pixels."""
    h, w = np_image.shape[:2]
    pad_l, pad_t = max(0, -sq.left), max(0, -sq.top)
    pad_r, pad_b = max(0, sq.left + sq.side - w), max(0, sq.top + sq.side - h)
    inside = np_image[max(0, sq.top):min(h, sq.top + sq.side), max(0, sq.left):min(w, sq.left + sq.side)]
    return np.pad(inside, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="edge")


def feather_mask(side: int, feather: float = FEATHER) -> np.ndarray:
    """side x side weights: 1 in the middle, falling linearly to 0 at the square's border."""
    ramp = max(1.0, side * feather)
    dist = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32) + 0.5
    edge = np.clip(dist / ramp, 0.0, 1.0)
    return np.minimum(edge[:, None], edge[None, :])


def paste_square(np_image: np.ndarray, face: np.ndarray, sq: Square) -> np.ndarray:
    """`face` (side x side) blended into a copy of the picture at the square, through the feathered mask."""
    h, w = np_image.shape[:2]
    out = np_image.astype(np.float32)
    mask = feather_mask(sq.side)[:, :, None]
    top, left = max(0, sq.top), max(0, sq.left)
    bottom, right = min(h, sq.top + sq.side), min(w, sq.left + sq.side)
    fy, fx = top - sq.top, left - sq.left
    region = (slice(top, bottom), slice(left, right))
    part = (slice(fy, fy + bottom - top), slice(fx, fx + right - left))
    out[region] = face[part].astype(np.float32) * mask[part] + out[region] * (1.0 - mask[part])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def restore_each_face(np_image: np.ndarray, restore: RestoreFn, size: int = RESTORE_SIZE) -> np.ndarray:
    """Every face found, restored by `restore` (RGB uint8 size x size -> the same) and pasted back. A picture
    without a face the detector finds comes back unchanged."""
    import cv2

    out = np_image
    for box in find_faces(np_image):
        sq = square_around(box)
        crop = crop_square(out, sq)
        shrink = sq.side > size
        face_in = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        restored = restore(face_in)
        face_out = cv2.resize(restored, (sq.side, sq.side), interpolation=cv2.INTER_CUBIC if shrink else cv2.INTER_AREA)
        out = paste_square(out, face_out, sq)
    return out
