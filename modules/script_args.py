"""Small objects the generation hands to scripts and extensions (A1111 defines them in `modules.scripts`, which
re-exports them): kept here, below `processing`, so the generation needs nothing from the script system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PostprocessImageArgs:
    """`postprocess_image(p, pp)`: a script may replace `pp.image`."""

    image: Any


@dataclass
class PostprocessBatchListArgs:
    """`postprocess_batch_list(p, pp)`: a script may replace, add or drop pictures in `pp.images`."""

    images: list[Any]


@dataclass
class ScriptFile:
    """A script file of the project or of an extension."""

    basedir: str  # the extension (or the project) the script belongs to
    filename: str
    path: str
